r"""Passkey retrieval accuracy by prompt length (LongLoRA's passkey_retrivial.py; its spelling kept).

A random key (1-50000) hides in filler text at a random depth ("The grass is green. The sky is
blue. ..."); the model is asked for it and decodes greedily; a test passes when the first number of
the reply is the key. Lengths run --interval, 2 x --interval, ... up to --max_tokens, --num_tests
keys each.

The bundled SmolLM2 at 1k-8k tokens, 5 keys per length:
    python passkey_retrivial.py --max_tokens 8192 --interval 1024 --num_tests 5 \
        --output_json outputs/passkey/smollm2.json

Keys at fixed depths (a depth x length heatmap), beyond the native window with YaRN:
    python passkey_retrivial.py --max_tokens 16384 --interval 4096 --depths 0,25,50,75,100 \
        --context_size 16384 --rope_method yarn --output_json outputs/passkey/yarn-16k.json

LongLoRA's command (a fine-tuned adapter, RoPE scaled as in training):
    python passkey_retrivial.py --context_size 32768 --base_model path/to/Llama-2-7b-hf \
        --peft_model path/to/checkpoint --max_tokens 32768 --interval 1000

Without --context_size, RoPE is scaled to reach --max_tokens (a no-op within the native window).
"""

import time

from longctx.args import RetrievalArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.outputs import check_result_files
from longctx.reading_model import load_for_inference
from longctx.retrieval import passkey_case, passkey_correct, report_retrieval, run_retrieval


def main():
    (args,) = parse_dataclasses((RetrievalArguments,), __doc__)
    started = time.perf_counter()
    plot = check_result_files(args.output_json, args.plot, overwrite=args.overwrite)
    model, tokenizer = load_for_inference(args.reading_model(args.max_tokens))

    def make_case(length, depth, test):
        # LongLoRA seeds test i with i: the same keys at every length
        return passkey_case(tokenizer, length, depth, seed=args.seed * 1_000_003 + test)

    depths = args.depth_fractions or [None]
    records = run_retrieval(model, tokenizer, args.lengths, depths, args.num_tests, make_case, passkey_correct)
    config = {**args.result_config(model), "lengths": args.lengths, "seconds": time.perf_counter() - started}
    report_retrieval(records, config, args.depth_fractions, args.output_json, plot, title=f"passkey retrieval: {args.base_model}")


if __name__ == "__main__":
    run_cli(main)
