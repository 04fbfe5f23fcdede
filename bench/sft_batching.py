"""Benchmark LongAlign's batching of SFT data: naive, pack and sort on a long-tailed length mix.

The same samples (random tokens, long-tailed lengths as `longctx.qa_data` draws them, the last
--answer_tokens of each as the answer) go through one epoch of training steps (forward + backward of
the chunked loss, full-rank gradients, no optimizer) with each batch method. Printed per method:
batches, padding fraction (deterministic: computed from the batches), real tokens per second
(padding excluded) and the speed-up over naive. Results also go to --output_json.

    python bench/sft_batching.py                                   # SmolLM2, rows up to 4096, 24 samples
    python bench/sft_batching.py --max_length 16384 --num_samples 48 --batch_size 1
    python bench/sft_batching.py --padding_only                    # padding fractions only, no model

Packed rows hold the token budget of a padded batch (--batch_size x --max_length), one row per batch.

S²-Attn (LongLoRA's SFT group rule) is on unless --full_attn; packed documents keep their own groups.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

METHODS = ("naive", "pack", "sort")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="'smollm2', a local HF folder or a .gguf file")
    parser.add_argument("--max_length", type=int, default=4096, help="longest sample and packed row, in tokens")
    parser.add_argument("--min_length", type=int, default=128, help="shortest sample in tokens")
    parser.add_argument("--num_samples", type=int, default=24)
    parser.add_argument("--batch_size", type=int, default=2, help="rows per batch; pack fills one row of batch_size x max_length")
    parser.add_argument("--answer_tokens", type=int, default=16)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--full_attn", action="store_true", help="full attention instead of S²-Attn")
    parser.add_argument("--padding_only", action="store_true", help="only the padding fractions (no model, no timing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    args.methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"--methods: unknown {', '.join(sorted(unknown))} (choose from {', '.join(METHODS)})")
    if not 2 <= args.min_length <= args.max_length or args.answer_tokens >= args.min_length:
        parser.error("need answer_tokens < min_length <= max_length")
    return args


def make_samples(args, vocab_size: int):
    from longctx.qa_data import long_tailed_length
    from longctx.loss import IGNORE_INDEX
    from longctx.sft_data import SFTSample

    rng = random.Random(args.seed)
    samples = []
    for _ in range(args.num_samples):
        length = min(args.max_length, long_tailed_length(rng, args.min_length, args.max_length))
        ids = [rng.randrange(3, vocab_size) for _ in range(length)]
        answer_start = length - args.answer_tokens
        samples.append(SFTSample(ids, [IGNORE_INDEX] * answer_start + ids[answer_start:]))
    return samples


def plan_batches(samples, method: str, args) -> list[list[int]]:
    """Dataset rows grouped into batches, in the order a training epoch would see them."""
    from longctx.sft_batching import build_sft_dataset, sorted_batch_order

    # pack: one row per batch holding the token budget of a padded batch (LongAlign packs a batch's budget)
    budget = args.max_length * args.batch_size if method == "pack" else args.max_length
    rows_per_batch = 1 if method == "pack" else args.batch_size
    dataset = build_sft_dataset(samples, method, budget, pack_loss=True)
    lengths = dataset.row_lengths()
    if method == "sort":
        order = sorted_batch_order(lengths, rows_per_batch, args.seed)
    else:
        order = list(range(len(dataset)))
        random.Random(args.seed).shuffle(order)
    batches = [order[start : start + rows_per_batch] for start in range(0, len(order), rows_per_batch)]
    return dataset, batches


def run_method(model, samples, method: str, args) -> dict:
    from longctx.loss import causal_lm_loss
    from longctx.sft_batching import collate_sft, padding_fraction

    dataset, batches = plan_batches(samples, method, args)
    lengths = dataset.row_lengths()
    result = {
        "method": method,
        "rows": len(dataset),
        "batches": len(batches),
        "real_tokens": sum(lengths),
        "padded_tokens": sum(len(batch) * max(lengths[i] for i in batch) for batch in batches),
        "padding_fraction": padding_fraction([[lengths[i] for i in batch] for batch in batches]),
    }
    if model is None:
        return result
    from tqdm.auto import tqdm

    began = time.perf_counter()
    for batch_rows in tqdm(batches, desc=method, unit="batch"):
        batch = collate_sft([dataset[i] for i in batch_rows], pad_token_id=0)
        total, _ = causal_lm_loss(
            model, batch["input_ids"], batch["labels"], position_ids=batch["position_ids"], weights=batch["loss_weights"]
        )
        (total / batch["num_sequences"]).backward()
        model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - began
    result.update(seconds=seconds, tokens_per_second=result["real_tokens"] / seconds)
    return result


def main(argv=None):
    args = parse_args(argv)
    from longctx.io import write_json_atomic
    from longctx.plots import format_table

    model = None
    vocab_size = 32000  # token ids only matter when a model runs
    if not args.padding_only:
        from longctx.attention import LONGLORA_SFT_GROUP_SIZE, enable_s2_attn
        from longctx.modeling import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(args.model, context_size=args.max_length)
        model.train()
        model.gradient_checkpointing_enable({"use_reentrant": False})
        if not args.full_attn:
            enable_s2_attn(model, sft_group_size=LONGLORA_SFT_GROUP_SIZE)
        vocab_size = model.config.vocab_size
    samples = make_samples(args, vocab_size)
    if model is not None:  # warm-up (first-call allocations and kernel choices), so no method pays for it
        run_method(model, samples[:1], "naive", argparse.Namespace(**{**vars(args), "batch_size": 1}))
    results = [run_method(model, samples, method, args) for method in args.methods]
    naive = next((r for r in results if r["method"] == "naive" and "seconds" in r), None)
    rows = []
    for r in results:
        speed = f"{r['tokens_per_second']:.0f}" if "seconds" in r else "-"
        speedup = f"{naive['seconds'] / r['seconds']:.2f}x" if naive and "seconds" in r else "-"
        rows.append([r["method"], r["rows"], r["batches"], f"{100 * r['padding_fraction']:.1f}%", speed, speedup])
    lengths = sorted(len(sample) for sample in samples)
    print(
        f"{len(samples)} samples, {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}), "
        f"batch size {args.batch_size}, rows up to {args.max_length}"
    )
    print(format_table(["method", "rows", "batches", "padding", "real tokens/s", "speed-up vs naive"], rows))
    if args.output_json:
        config = {k: v for k, v in vars(args).items() if k != "output_json"}
        write_json_atomic(args.output_json, {"config": config, "sample_lengths": lengths, "results": results})


if __name__ == "__main__":
    main()
