r"""Needle in a haystack: a sentence hidden at depths 0-100% of real text, by length (LongAlign, ChunkLlama).

The needle (default: "The best thing to do in San Francisco is eat a sandwich and sit in Dolores
Park on a sunny day.") is placed at each --depths percentage of book text cut to each length
(--interval ... --max_tokens tokens, whole sentences); the model answers --question greedily, and a
cell passes when the reply contains --answer (exact words; case and punctuation aside). Writes a
depth x length heatmap PNG and the JSON of every reply.

The bundled SmolLM2 on the bundled held-out book, 1k-8k tokens, 11 depths:
    python needle_in_haystack.py --max_tokens 8192 --interval 1024 --output_json outputs/needle/smollm2.json

The three held-out books (data/pg19_eval), 3 haystacks per cell, a fine-tuned 16k model (its RoPE
comes from its folder):
    python needle_in_haystack.py --haystack data/pg19_eval --num_tests 3 --max_tokens 16384 --interval 2048 \
        --peft_model outputs/smollm2-16k --output_json outputs/needle/16k.json

Your own needle: --needle "..." --question "..." --answer "..." --answer_prefix "..." (the answer
must be part of the needle). Without --context_size, RoPE is scaled to reach --max_tokens.
"""

import time

from longctx.args import NeedleArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.data import default_eval_data
from longctx.outputs import check_result_files
from longctx.reading_model import load_for_inference
from longctx.retrieval import answer_correct, needle_case, read_haystack, report_retrieval, run_retrieval, split_sentences


def main():
    (args,) = parse_dataclasses((NeedleArguments,), __doc__)
    started = time.perf_counter()
    haystack_path = args.haystack or default_eval_data()
    plot = check_result_files(args.output_json, args.plot, {"--haystack": haystack_path}, args.overwrite)
    sentences = split_sentences(read_haystack(haystack_path))
    model, tokenizer = load_for_inference(args.reading_model(args.max_tokens))

    def make_case(length, depth, test):
        # each test's haystack starts at another place in the books
        offset = test * len(sentences) // args.num_tests
        return needle_case(
            tokenizer, length, depth, sentences, offset, args.needle, args.question, args.answer, args.answer_prefix
        )

    records = run_retrieval(model, tokenizer, args.lengths, args.depth_fractions, args.num_tests, make_case, answer_correct)
    config = {
        **args.result_config(model),
        "haystack": haystack_path,
        "lengths": args.lengths,
        "seconds": time.perf_counter() - started,
    }
    report_retrieval(
        records, config, args.depth_fractions, args.output_json, plot, title=f"needle in a haystack: {args.base_model}"
    )


if __name__ == "__main__":
    run_cli(main)
