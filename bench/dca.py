"""Training-free extension of SmolLM2 (native 8192): perplexity by RoPE scaling method and Dual Chunk
Attention, and the prefill time of DCA against plain SDPA.

Perplexity: one window from each book's start, every token scored, fp32, one forward at the longest
length giving every shorter one (longctx.length_curves). Dynamic NTK rescales with the total length,
so it runs once per length beyond the native window (within it, it equals no scaling). `sliding` is
the reference with no long context (longctx.length_curves.sliding_window_losses). Results go to
--output_json after every (book, method), and finished pairs are skipped on a re-run, so a long
table can be built one method at a time:

    flock /tmp/longctx-heavy.lock python bench/dca.py --suite perplexity --methods dca \\
        --output_json bench/dca/perplexity.json
    python bench/dca.py --suite perplexity --methods none,linear:4,dynamic:4,yarn:4,theta:4,dca,sliding \\
        --books data/pg19_eval/pg19test_29973.txt,data/pg19_eval/pg19test_30752.txt \\
        --output_json bench/dca/perplexity.json

Prefill time (a TIMING: run it on an idle machine): the decoder's forward over a whole prompt,
median of --repeats, DCA against the same model with SDPA:

    python bench/dca.py --suite prefill --seq_lens 16384,32768 --repeats 2 --output_json bench/dca/prefill.json

Passkey retrieval goes through passkey_retrivial.py (see bench/RESULTS.md for the commands).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

from longctx.length_curves import book_tokens, per_book_table, perplexity_table, prefix_losses, sliding_window_losses

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_BOOKS = "data/pg19_eval/pg19test_29973.txt,data/pg19_eval/pg19test_30752.txt,data/pg19_eval/pg19test_41603.txt"
DEFAULT_METHODS = "none,linear:4,dynamic:4,yarn:4,theta:4,dca,sliding"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["perplexity", "prefill"], default="perplexity")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated: none, dca, sliding (native windows, no long context), or rope method:factor")
    parser.add_argument("--books", default=DEFAULT_BOOKS, help="comma-separated .txt files (paths from the repo root)")
    parser.add_argument("--seq_lens", default="4096,8192,16384,32768", help="lengths in tokens, comma-separated")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--pretraining_length", type=int, default=None, help="DCA's unit (default: the native window)")
    parser.add_argument("--repeats", type=int, default=2, help="prefill: timed repeats after a short warm-up (median)")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    args.seq_lens = sorted({int(length) for length in args.seq_lens.split(",")})
    args.methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    args.books = [book.strip() for book in args.books.split(",") if book.strip()]
    return args


def load(args, method: str, context_size: int):
    """SmolLM2 read with one method: 'none', 'dca', or '<rope method>:<factor>'."""
    from longctx.reading_model import DualChunkSizes, ReadingModel, load_for_inference
    from longctx.rope import RopeRequest

    if method in ("none", "dca"):
        dca = DualChunkSizes(args.pretraining_length) if method == "dca" else None
        return load_for_inference(ReadingModel(args.model, rope=RopeRequest("none"), dca=dca))
    rope_method, _, factor = method.partition(":")
    rope = RopeRequest(rope_method, float(factor) if factor else None)
    return load_for_inference(ReadingModel(args.model, context_size=context_size, rope=rope))


def perplexity_suite(args) -> dict:
    from longctx.io import write_json_atomic
    from longctx.modeling import load_tokenizer, resolve_model_path

    output = Path(args.output_json) if args.output_json else None
    results = json.loads(output.read_text()) if output and output.exists() else {"runs": []}
    done = {(run["book"], run["method"]) for run in results["runs"]}
    tokenizer = load_tokenizer(resolve_model_path(args.model))
    longest = args.seq_lens[-1]
    for book in args.books:
        input_ids = book_tokens(ROOT / book, tokenizer, longest)
        for method in args.methods:
            if (book, method) in done:
                continue
            began = time.perf_counter()
            if method == "sliding":
                model, _ = load(args, "none", longest)
                window = args.pretraining_length or model.config.max_position_embeddings
                means = sliding_window_losses(model, input_ids, args.seq_lens, window)
            elif method.startswith("dynamic"):  # length-dependent: a fresh model and forward per length
                means = {}
                for length in args.seq_lens:
                    model, _ = load(args, method, length)
                    means.update(prefix_losses(model, input_ids[:, :length], [length]))
            else:
                model, _ = load(args, method, longest)
                means = prefix_losses(model, input_ids, args.seq_lens)
            run = {
                "book": book,
                "method": method,
                "perplexity": {str(length): math.exp(loss) for length, loss in means.items()},
                "seconds": time.perf_counter() - began,
            }
            results["runs"].append(run)
            if output:
                write_json_atomic(output, results)
            print(json.dumps(run), flush=True)
    print(per_book_table(results["runs"], args.seq_lens), perplexity_table(results["runs"], args.seq_lens), sep="\n\n")
    return results


def prefill_suite(args) -> dict:
    """Median decoder forward time over a prompt, SDPA and DCA on the same weights."""
    import torch

    from longctx.chunk_attention import disable_dual_chunk_attention, enable_dual_chunk_attention
    from longctx.loss import final_hidden_states
    from longctx.reading_model import load_for_inference

    model, tokenizer = load_for_inference(ReadingModel(args.model, rope=RopeRequest("none")))
    input_ids = book_tokens(ROOT / args.books[0], tokenizer, args.seq_lens[-1])
    rows = []
    for length in args.seq_lens:
        row = {"seq_len": length}
        for name in ("sdpa", "dca"):
            if name == "dca":
                enable_dual_chunk_attention(model, args.pretraining_length)
            else:
                disable_dual_chunk_attention(model)
            times = []
            with torch.no_grad():
                final_hidden_states(model, input_ids=input_ids[:, : min(length, 2048)])  # warm-up
                for _ in range(args.repeats):
                    began = time.perf_counter()
                    final_hidden_states(model, input_ids=input_ids[:, :length])
                    times.append(time.perf_counter() - began)
            row[f"{name}_seconds"] = statistics.median(times)
        row["dca_over_sdpa"] = row["dca_seconds"] / row["sdpa_seconds"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("| seq_len | SDPA s | DCA s | DCA / SDPA |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['seq_len']} | {row['sdpa_seconds']:.1f} | {row['dca_seconds']:.1f} | {row['dca_over_sdpa']:.2f} |")
    results = {"rows": rows, "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if args.output_json:
        from longctx.io import write_json_atomic

        write_json_atomic(args.output_json, results)
    return results


def main(argv=None):
    args = parse_args(argv)
    (perplexity_suite if args.suite == "perplexity" else prefill_suite)(args)


if __name__ == "__main__":
    main()
