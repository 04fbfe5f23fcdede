r"""Does training pay off? A longctx-trained adapter against every training-free reader, same tokens.

Perplexity against length on the held-out books (data/pg19_eval: never trained on), one window from
each book's start, every token scored, fp32, one forward per (book, method) at the method's longest
length (longctx.length_curves: shorter lengths are prefixes; dynamic NTK, which rescales with the
length, gets one forward per length). Methods:

- native: the model as it is (no RoPE change), up to twice its window;
- sliding: the native model through windows of its own length advancing by half (no long context: the
  reference a long-context reader must beat to show the far text helps);
- linear:F, dynamic:F, yarn:F, theta:F: RoPE scaling by F without training, up to F x the window
  (dynamic only past the window: within it, it is the native model);
- dca: Dual Chunk Attention without training (ChunkLlama), to the longest length;
- trained: the --peft_model folder as it was trained (its longctx_training.json), up to its length;
- trained+dca: the same with DCA in units of its training length, to the longest length;
- trained+sliding: the same weights and RoPE through windows of the native length advancing by half
  (as sliding): what the trained model gets without the far context, so trained below it means the
  far text helps, not only the training text.

Results go to --output_json after every (book, method), finished pairs are skipped on a re-run, and a
PNG of perplexity against length (mean over books) goes beside it:

    python bench/extend.py --peft_model runs/extend/16k --output_json bench/extend/perplexity.json
    python bench/extend.py --peft_model runs/extend/16k --methods trained+dca --seq_lens 2048,4096,8192,16384,32768,65536 \
        --books data/pg19_eval/pg19test_29973.txt --output_json bench/extend/perplexity.json

Passkey retrieval at 8k and 16k goes through passkey_retrivial.py (commands in bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from longctx.length_curves import book_tokens, per_book_table, perplexity_table, prefix_losses, sliding_window_losses

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_BOOKS = ",".join(f"data/pg19_eval/pg19test_{book}.txt" for book in ("29973", "30752", "41603"))
DEFAULT_METHODS = "native,sliding,linear:2,dynamic:2,yarn:2,theta:2,dca,trained,trained+dca"
TRAINED = ("trained", "trained+dca", "trained+sliding")
SLIDING = ("sliding", "trained+sliding")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peft_model", default=None, help="the trained adapter folder (needed by trained, trained+dca)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated, see above")
    parser.add_argument("--books", default=DEFAULT_BOOKS, help="comma-separated .txt files (paths from the repo root)")
    parser.add_argument("--seq_lens", default="2048,4096,8192,16384,32768", help="lengths in tokens, comma-separated")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--output_json", default="bench/extend/perplexity.json")
    parser.add_argument(
        "--reuse",
        default=None,
        help="a bench/dca.py JSON whose (book, method) runs are taken instead of recomputed: same code path and tokens "
        "(its 'none' is 'native'); each reused run names its source",
    )
    args = parser.parse_args(argv)
    args.seq_lens = sorted({int(length) for length in args.seq_lens.split(",")})
    args.methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    args.books = [book.strip() for book in args.books.split(",") if book.strip()]
    if any(method in TRAINED for method in args.methods) and not args.peft_model:
        parser.error(f"methods {', '.join(TRAINED)} need --peft_model")
    return args


def reach(args, method: str, native_window: int, trained_length: int | None) -> int:
    """The longest length a method is read at: what it was made for (twice the window for native)."""
    name, _, factor = method.partition(":")
    if name == "native":
        return 2 * native_window
    if name == "trained":
        return trained_length
    if factor:
        return round(native_window * float(factor))
    return args.seq_lens[-1]  # sliding, dca, trained+dca, trained+sliding: any length


def load(args, method: str, context_size: int):
    from longctx.reading_model import DualChunkSizes, ReadingModel, load_for_inference
    from longctx.rope import RopeRequest

    name, _, factor = method.partition(":")
    dca = DualChunkSizes() if name in ("dca", "trained+dca") else None
    if name in ("native", "sliding", "dca"):
        return load_for_inference(ReadingModel(args.model, rope=RopeRequest("none"), dca=dca))
    if name == "trained+sliding":  # RoPE exactly as trained, whatever the lengths read
        return load_for_inference(ReadingModel(args.model, peft_model=args.peft_model))
    if name in TRAINED:
        return load_for_inference(
            ReadingModel(args.model, peft_model=args.peft_model, context_size=context_size, dca=dca)
        )
    return load_for_inference(
        ReadingModel(args.model, context_size=context_size, rope=RopeRequest(name, float(factor)))
    )


def method_losses(args, method: str, input_ids, lengths: list[int], native_window: int) -> dict[int, float]:
    if method in SLIDING:
        model, _ = load(args, method, lengths[-1])
        return sliding_window_losses(model, input_ids, lengths, native_window)
    if method.startswith("dynamic"):  # length-dependent: a fresh model and forward per length past the window
        means = {}  # (within the window dynamic NTK does not scale: it is the native model there)
        for length in [length for length in lengths if length > native_window]:
            model, _ = load(args, method, length)
            means.update(prefix_losses(model, input_ids[:, :length], [length]))
        return means
    model, _ = load(args, method, lengths[-1])
    return prefix_losses(model, input_ids[:, : lengths[-1]], lengths)


def reused_runs(path: str, methods: list[str], done: set) -> list[dict]:
    """bench/dca.py's runs of the methods asked for, under this script's method names."""
    runs = []
    for run in json.loads(Path(path).read_text())["runs"]:
        method = "native" if run["method"] == "none" else run["method"]
        if method in methods and (run["book"], method) not in done:
            runs.append({**run, "method": method, "source": path})
    return runs


def main(argv=None):
    from transformers import AutoConfig

    from longctx.io import write_json_atomic
    from longctx.modeling import load_tokenizer, resolve_model_path
    from longctx.plots import plot_perplexity
    from longctx.training_record import read_record

    args = parse_args(argv)
    output = Path(args.output_json)
    results = json.loads(output.read_text()) if output.exists() else {"runs": []}
    if args.reuse:
        results["runs"] += reused_runs(args.reuse, args.methods, {(run["book"], run["method"]) for run in results["runs"]})
    done = {(run["book"], run["method"]) for run in results["runs"]}
    model_path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_path)
    native_window = AutoConfig.from_pretrained(model_path, local_files_only=True).max_position_embeddings
    record = read_record(args.peft_model) if args.peft_model else None
    trained_length = record.model_max_length if record else None
    for book in args.books:
        input_ids = book_tokens(ROOT / book, tokenizer, args.seq_lens[-1])
        for method in args.methods:
            lengths = [length for length in args.seq_lens if length <= reach(args, method, native_window, trained_length)]
            if (book, method) in done or not lengths:
                continue
            began = time.perf_counter()
            means = method_losses(args, method, input_ids, lengths, native_window)
            run = {
                "book": book,
                "method": method,
                "perplexity": {str(length): math.exp(loss) for length, loss in means.items()},
                "seconds": time.perf_counter() - began,
            }
            if method in TRAINED:
                run["peft_model"] = args.peft_model
            results["runs"].append(run)
            write_json_atomic(output, results)
            print(json.dumps(run), flush=True)
    runs = results["runs"]
    lengths = sorted({int(length) for run in runs for length in run["perplexity"]})
    print(per_book_table(runs, lengths), perplexity_table(runs, lengths), sep="\n\n")
    points = []
    for method in dict.fromkeys(run["method"] for run in runs):
        chosen = [run for run in runs if run["method"] == method]
        for length in lengths:
            values = [run["perplexity"][str(length)] for run in chosen if str(length) in run["perplexity"]]
            if len(values) == len(chosen):  # only points every book has, so a line never mixes book sets
                points.append({"method": method, "seq_len": length, "perplexity": sum(values) / len(values)})
    title = f"SmolLM2-135M, held-out PG19 ({len({run['book'] for run in runs})} books): perplexity of the first L tokens"
    print(f"plot: {plot_perplexity(points, output.with_suffix('.png'), title, series='method')}")


if __name__ == "__main__":
    main()
