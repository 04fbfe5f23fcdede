r"""Perplexity at one or several context lengths under torchrun: eval.py's windows shared among processes.

Each process loads the model and scores every world_size-th window; the window losses are gathered
and summed in window order, so the figures equal eval.py's. CPU (gloo), 2 processes:
    torchrun --nproc_per_node=2 eval_distributed.py --seq_len 2048,4096 --max_tokens 8192 \
        --output_json outputs/eval/smollm2-2proc.json

8 GPUs (NCCL), LongLoRA's setting:
    torchrun --nproc_per_node=8 eval_distributed.py --seq_len 32768 --context_size 32768 --flash_attn True \
        --base_model path/to/Llama-2-7b-hf --peft_model path/to/checkpoint --data_path pg19/test.bin \
        --output_json outputs/eval/32k.json

The flags are eval.py's (`--help`); only rank 0 prints the table and writes the JSON and plot.
"""

import time

from longctx.args import PerplexityArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.data import default_eval_data, token_stream
from longctx.evaluation import (
    check_lengths,
    evaluate_perplexity,
    init_distributed,
    report_perplexity,
)
from longctx.modeling import load_tokenizer, resolve_model_path
from longctx.outputs import check_result_files
from longctx.reading_model import load_for_inference


def main():
    (args,) = parse_dataclasses((PerplexityArguments,), __doc__)
    started = time.perf_counter()
    rank, world_size, device = init_distributed()  # run_cli ends the process group
    data_path = args.data_path or default_eval_data()
    if args.device_map:
        raise ValueError("--device_map spreads one model over the GPUs: use eval.py; here each process holds a whole model")
    plot = check_result_files(args.output_json, args.plot, {"--data_path": data_path}, args.overwrite)
    tokenizer = load_tokenizer(resolve_model_path(args.base_model, args.cache_dir), args.cache_dir)
    tokens = token_stream(data_path, tokenizer, args.token_dtype, args.max_tokens)
    check_lengths(len(tokens), args.seq_lens, args.scoring, args.sliding_window, data_path)
    model, _ = load_for_inference(args.reading_model(args.seq_lens[-1], device=device))
    results = [
        evaluate_perplexity(
            model, tokens, seq_len, args.scoring, args.sliding_window, args.batch_size,
            rank=rank, world_size=world_size, progress=rank == 0, refresh_every=args.progress_bar_fresh_rate,
        )
        for seq_len in args.seq_lens
    ]
    if rank == 0:
        config = {**args.result_config(model), "data_path": data_path, "data_tokens": len(tokens), "processes": world_size}
        config["seconds"] = time.perf_counter() - started
        report_perplexity(results, config, args.output_json, plot)


if __name__ == "__main__":
    run_cli(main)
