r"""demo.py under load: several clients at once, each asking about its own uploaded document for a while.

Each client (a gradio_client session, in its own thread) uploads a passage of a different bundled
book with one fact of its own hidden in the middle (a pass key), then asks for it again and again in
one conversation, starting a new one with a fresh upload when the conversation fills the window.
Greedy answers depend on their own conversation only, so an answer naming another client's key
means material or KV cache leaked between sessions. Reported per client: answers, how many name
its own key and how many another's (must be 0), latency (median, max), the queue positions the
server reported while it waited; and the server's memory (RSS, with --server_pid) over the run.

    python demo.py --port 8898 --temperature 0 --max_gen_len 32 --cached_conversations 2 &
    python bench/demo_load.py --url http://127.0.0.1:8898 --server_pid $! --clients 4 --duration_s 600 \
        --output_json bench/demo_load/smollm2.json

tests/test_demo.py drives the same clients for two rounds against a tiny model.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from pathlib import Path

from longctx.demo_client import ask_and_watch

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What is the pass key of the vault? Answer with the number."
RETRY_MARKERS = ("window", "Upload a document first")  # a full conversation, or a session the server forgot


def make_documents(count: int, tokens: int, seed: int) -> list[tuple[str, str]]:
    """(passage, pass key) per client: ~`tokens` tokens of a different bundled book, the key in the middle."""
    from longctx.retrieval import split_sentences

    books = sorted((ROOT / "data" / "pg19").glob("*.txt"))
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        sentences = split_sentences(" ".join(books[index % len(books)].read_text(encoding="utf-8").split()))
        start = rng.randrange(len(sentences) // 2)
        passage, chars = [], 0
        while chars < tokens * 4:  # ~4 characters a token
            passage.append(sentences[start + len(passage)])
            chars += len(passage[-1])
        key = str(rng.randint(10_000, 99_999))
        passage.insert(len(passage) // 2, f"The pass key of the vault is {key}. Remember it.")
        documents.append((" ".join(passage), key))
    return documents


def run_client(url: str, index: int, document: Path, keys: list[str], stop_at: float, records: list) -> None:
    """One user: upload, ask until `stop_at`, start over with a fresh upload when the conversation is refused."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(url, verbose=False)
    chat: list = []
    client.predict(handle_file(str(document)), api_name="/load_document")
    while time.monotonic() < stop_at:
        began = time.monotonic()
        try:
            chat, answer, positions = ask_and_watch(client, QUESTION, chat)
        except AppError as error:
            if not any(marker in str(error) for marker in RETRY_MARKERS):
                raise
            client.predict(handle_file(str(document)), api_name="/load_document")
            chat = []
            continue
        records.append({
            "client": index,
            "seconds": time.monotonic() - began,
            "queue_positions": sorted(set(positions)),
            "own_key": keys[index] in answer,
            "other_key": any(key in answer for number, key in enumerate(keys) if number != index),
            "answer": answer,
        })


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def summary(records: list[dict], clients: int) -> list[dict]:
    rows = []
    for index in range(clients):
        mine = [record for record in records if record["client"] == index]
        seconds = [record["seconds"] for record in mine] or [float("nan")]
        rows.append({
            "client": index,
            "answers": len(mine),
            "own_key": sum(record["own_key"] for record in mine),
            "other_key": sum(record["other_key"] for record in mine),
            "median_seconds": statistics.median(seconds),
            "max_seconds": max(seconds),
            "waited_in_queue": sum(bool(record["queue_positions"]) for record in mine),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="a running demo.py, e.g. http://127.0.0.1:8898")
    parser.add_argument("--server_pid", type=int, default=None, help="demo.py's process id, to sample its memory")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration_s", type=float, default=600)
    parser.add_argument("--document_tokens", type=int, default=1500, help="approximate length of each passage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()
    from longctx.io import write_json_atomic
    from longctx.outputs import check_output_file
    from longctx.plots import format_table

    check_output_file("--output_json", args.output_json)
    documents = make_documents(args.clients, args.document_tokens, args.seed)
    keys = [key for _, key in documents]
    folder = Path(args.output_json).with_suffix("") if args.output_json else Path("outputs/demo_load")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (text, _) in enumerate(documents):
        paths.append(folder / f"client{index}.txt")
        paths[-1].write_text(text, encoding="utf-8")

    records, memory, failures = [], [], []
    stop_at = time.monotonic() + args.duration_s

    def client(index: int) -> None:
        try:
            run_client(args.url, index, paths[index], keys, stop_at, records)
        except Exception as error:  # noqa: BLE001 - reported with the client's number
            failures.append({"client": index, "error": repr(error)})

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(args.clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        if args.server_pid:
            memory.append({"seconds": time.monotonic() - began, "rss_mib": rss_mib(args.server_pid)})
        time.sleep(5)
    rows = summary(records, args.clients)
    cells = [[f"{value:.2f}" if isinstance(value, float) else value for value in row.values()] for row in rows]
    print(format_table(list(rows[0]), cells))
    if memory:
        sizes = [sample["rss_mib"] for sample in memory if sample["rss_mib"] is not None]
        print(f"server RSS: {sizes[0]:.0f} MiB at the start, {max(sizes):.0f} MiB at most, {sizes[-1]:.0f} MiB at the end")
    for failure in failures:
        print(f"client {failure['client']} failed: {failure['error']}")
    if args.output_json:
        config = {**vars(args), "keys": keys}
        results = {"config": config, "summary": rows, "memory": memory, "failures": failures, "records": records}
        write_json_atomic(args.output_json, results)
        print(f"results written to {args.output_json}")


if __name__ == "__main__":
    main()
