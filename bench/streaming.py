"""StreamingLLM cache against the default growing cache: decoding speed and KV size as a generation runs long.

Greedy generation of --new_tokens after a book prompt, once with transformers' DynamicCache and once
with longctx's StreamingCache (--start_size sinks + --recent_size recent tokens). Prints, per block of
--report_every tokens, the decoding speed and the tokens held in the cache, and whether both caches
gave the same tokens until the first eviction (they must). Timings need an otherwise idle machine.

    python bench/streaming.py --new_tokens 4096 --recent_size 1020 --output_json bench/streaming/smollm2.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import DynamicCache, StoppingCriteria

from longctx.io import write_json_atomic
from longctx.modeling import load_model_and_tokenizer
from longctx.streaming import StreamingCache

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "data" / "pg19_eval" / "pg19test_29973.txt"


class StepClock(StoppingCriteria):
    """Records the time and the cache size after each generated token; never stops generation."""

    def __init__(self, cache):
        self.cache, self.times, self.sizes = cache, [], []

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(time.perf_counter())
        stored = self.cache.stored_length() if isinstance(self.cache, StreamingCache) else self.cache.get_seq_length()
        self.sizes.append(stored)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def run(model, prompt, cache, new_tokens):
    clock = StepClock(cache)
    started = time.perf_counter()
    output = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        past_key_values=cache,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        stopping_criteria=[clock],
    )
    return output[0, prompt.shape[1] :].tolist(), started, clock


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompt_tokens", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=4096)
    parser.add_argument("--start_size", type=int, default=4)
    parser.add_argument("--recent_size", type=int, default=1020)
    parser.add_argument("--report_every", type=int, default=512)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    text = BOOK.read_text(encoding="utf-8")
    prompt = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][: args.prompt_tokens]])
    config = model.config
    bytes_per_token = (
        2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        * model.dtype.itemsize
    )

    results = {}
    for name, cache in (
        ("dynamic", DynamicCache(config=config)),
        ("streaming", StreamingCache(model, args.start_size, args.recent_size)),
    ):
        tokens, started, clock = run(model, prompt, cache, args.new_tokens)
        blocks = []
        for end in range(args.report_every, args.new_tokens + 1, args.report_every):
            begin_time = clock.times[end - args.report_every - 1] if end > args.report_every else started
            seconds = clock.times[end - 1] - begin_time
            blocks.append(
                {
                    "tokens": end,
                    "tokens_per_s": args.report_every / seconds,
                    "cache_tokens": clock.sizes[end - 1],
                    "kv_mib": clock.sizes[end - 1] * bytes_per_token / 2**20,
                }
            )
        results[name] = {"tokens": tokens, "blocks": blocks, "seconds": clock.times[-1] - started}

    first_eviction = max(args.start_size + args.recent_size - args.prompt_tokens, 0)
    same_until_eviction = (
        results["dynamic"]["tokens"][:first_eviction] == results["streaming"]["tokens"][:first_eviction]
    )
    print(
        f"model {args.model}, prompt {args.prompt_tokens} tokens, cache {args.start_size} + {args.recent_size}, "
        f"{torch.get_num_threads()} threads, {model.dtype}"
    )
    print(f"same tokens until the first eviction ({first_eviction} tokens): {same_until_eviction}")
    print(
        "| generated | dynamic tok/s | dynamic cache (tokens, MiB) | streaming tok/s | streaming cache (tokens, MiB) |"
    )
    print("|---|---|---|---|---|")
    for plain, streamed in zip(results["dynamic"]["blocks"], results["streaming"]["blocks"]):
        print(
            f"| {plain['tokens']} | {plain['tokens_per_s']:.1f} | {plain['cache_tokens']}, {plain['kv_mib']:.1f} | "
            f"{streamed['tokens_per_s']:.1f} | {streamed['cache_tokens']}, {streamed['kv_mib']:.1f} |"
        )
    if args.output_json:
        for result in results.values():
            result.pop("tokens")
        write_json_atomic(
            args.output_json, {"config": vars(args), "same_until_eviction": same_until_eviction, **results}
        )


if __name__ == "__main__":
    main()
