r"""Perplexity at one or several context lengths (LongLoRA's eval.py, plus standard strided scoring).

The bundled SmolLM2 on the bundled held-out book, 2k/4k/8k tokens, bounded to the first 12k tokens:
    python eval.py --seq_len 2048,4096,8192 --max_tokens 12288 --scoring strided --sliding_window 1024 \
        --output_json outputs/eval/smollm2.json

A model fine-tuned with fine-tune.py (RoPE scaled as in training, adapter + trainable params applied):
    python eval.py --seq_len 16384 --context_size 16384 --base_model smollm2 \
        --peft_model outputs/smollm2-16k --data_path data/pg19_eval --output_json outputs/eval/16k.json

LongLoRA's command on a GPU (token file from `python -m longctx.tokenize_data`):
    python eval.py --seq_len 32768 --context_size 32768 --batch_size 1 --flash_attn True \
        --base_model path/to/Llama-2-7b-hf --peft_model path/to/checkpoint --data_path pg19/test.bin

--scoring longlora (default) averages the losses of windows starting every --sliding_window tokens;
--scoring strided scores each token once with the longest context a window allows. Without
--context_size, RoPE is scaled to reach the longest --seq_len (a no-op within the native window);
--rope_method none evaluates the unscaled model. Several processes: eval_distributed.py.
"""

import time

from longctx.args import PerplexityArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.data import default_eval_data, token_stream
from longctx.evaluation import check_lengths, evaluate_perplexity, report_perplexity
from longctx.modeling import load_tokenizer, resolve_model_path
from longctx.outputs import check_result_files
from longctx.reading_model import load_for_inference


def main():
    (args,) = parse_dataclasses((PerplexityArguments,), __doc__)
    started = time.perf_counter()
    data_path = args.data_path or default_eval_data()
    plot = check_result_files(args.output_json, args.plot, {"--data_path": data_path}, args.overwrite)
    tokenizer = load_tokenizer(resolve_model_path(args.base_model, args.cache_dir), args.cache_dir)
    tokens = token_stream(data_path, tokenizer, args.token_dtype, args.max_tokens)
    check_lengths(len(tokens), args.seq_lens, args.scoring, args.sliding_window, data_path)
    model, _ = load_for_inference(args.reading_model(args.seq_lens[-1]))
    print(f"{len(tokens):,} tokens from {data_path}; scoring {args.scoring}, stride {args.sliding_window}", flush=True)
    results = [
        evaluate_perplexity(
            model, tokens, seq_len, args.scoring, args.sliding_window, args.batch_size, refresh_every=args.progress_bar_fresh_rate
        )
        for seq_len in args.seq_lens
    ]
    config = {**args.result_config(model), "data_path": data_path, "data_tokens": len(tokens), "processes": 1}
    config["seconds"] = time.perf_counter() - started
    report_perplexity(results, config, args.output_json, plot)


if __name__ == "__main__":
    run_cli(main)
