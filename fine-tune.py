r"""Continued pretraining at a long context with S²-Attn and LoRA+ (LongLoRA's fine-tune.py).

RoPE is rescaled to --model_max_length, the model trains with shifted sparse attention and LoRA+
(LoRA on attention plus trainable embeddings and norms), and a perplexity check with full attention
runs on held-out text before and after. Checkpoints hold the adapter and trainable_params.safetensors.
Like LongLoRA, a tokenizer without a pad token (Llama-2's) gets `[PAD]` first, so the embeddings have
LongLoRA's rows and its released LoRA+ weights and ours load into each other (longctx.special_tokens).

Quick start on a CPU (bundled SmolLM2-135M and PG19 books, 16k tokens = twice the native window):
    python fine-tune.py --model_max_length 16384 --max_steps 3 --learning_rate 1e-3 --warmup_steps 0 \
        --output_dir outputs/smollm2-16k

One GPU node (LongLoRA's recipe; add --use_flash_attn True when flash-attn is installed):
    torchrun --nproc_per_node=8 fine-tune.py --model_name_or_path path/to/Llama-2-7b-hf --bf16 True \
        --output_dir outputs/llama2-7b-32k --model_max_length 32768 --use_flash_attn True \
        --low_rank_training True --trainable_params embed,norm --num_train_epochs 1 \
        --per_device_train_batch_size 1 --gradient_accumulation_steps 8 --learning_rate 2e-5 \
        --warmup_steps 20 --max_steps 1000 --save_steps 100 --deepspeed ds_configs/stage2.json \
        --data_path path/to/redpajama.bin

QLoRA (LongQLoRA): add --load_in_4bit True (NF4, double quantization; --bnb_4bit_compute_dtype bfloat16);
S²-Attn and RoPE scaling work as above, and the embed/norm weights still train and save in full precision.

Resume an interrupted run with --resume_from_checkpoint latest (or a checkpoint-N folder).
"""

import time

from transformers.integrations import is_deepspeed_zero3_enabled

from longctx.args import DataArguments, LongContextTrainingArguments, ModelArguments, PerplexityCheckArguments
from longctx.attention import disable_s2_attn
from longctx.cli import parse_dataclasses, run_cli
from longctx.data import collate_rows, default_eval_data, default_pretraining_data, load_pretraining_dataset
from longctx.evaluation import rows_perplexity
from longctx.resuming import check_output_dir
from longctx.trainer import (
    continued_adapter,
    load_training_model,
    prepare_for_training,
    report_training,
    train_and_save,
    training_record,
)


def perplexity_check(model, rows, is_main_process: bool) -> dict | None:
    """Full-attention perplexity on the held-out rows, on the main process only."""
    if rows is None or not is_main_process:
        return None
    return rows_perplexity(model, rows)


def training_free_check(model_args, train_args, rows, before: dict | None) -> dict | None:
    """What a flag gets without training on the same rows: YaRN at the training's length (the best
    training-free RoPE scaling on held-out books, bench/RESULTS.md). The check before training is that
    figure when the run itself starts from untrained YaRN; otherwise it costs one more load and pass."""
    if before is None or model_args.load_in_4bit:  # a second full-precision copy is what QLoRA avoids
        return None
    if model_args.rope_method == "yarn" and not model_args.start_from:
        return {**before, "method": "yarn"}
    from longctx.modeling import WeightLoading, load_model_and_tokenizer
    from longctx.rope import RopeRequest

    model, _ = load_model_and_tokenizer(
        model_args.model_name_or_path,
        train_args.model_max_length,
        RopeRequest("yarn"),
        WeightLoading(dtype=model_args.dtype, cache_dir=model_args.cache_dir),
    )
    return {**rows_perplexity(model, rows), "method": "yarn"}


def main():
    model_args, data_args, check_args, train_args = parse_dataclasses(
        (ModelArguments, DataArguments, PerplexityCheckArguments, LongContextTrainingArguments), __doc__
    )
    started = time.perf_counter()
    inputs = {"--model_name_or_path": model_args.model_name_or_path, "--data_path": data_args.data_path}
    check_output_dir(train_args, {**inputs, "--eval_data_path": check_args.eval_data_path})
    model, tokenizer = load_training_model(model_args, train_args)
    train_rows = load_pretraining_dataset(
        data_args.data_path or default_pretraining_data(),
        tokenizer,
        train_args.model_max_length,
        token_dtype=data_args.token_dtype,
        max_rows=data_args.max_train_rows,
    )
    eval_rows = None
    if is_deepspeed_zero3_enabled() and not check_args.skip_eval:
        print("ZeRO-3 splits every weight across processes: no before/after perplexity check; run eval.py on the adapter")
    elif train_args.sequence_parallel_size > 1 and not check_args.skip_eval:
        print("--sequence_parallel_size: a row is more than one process holds, so no before/after perplexity check on "
              "one; run eval.py on the adapter")
    elif not check_args.skip_eval:
        eval_rows = load_pretraining_dataset(
            check_args.eval_data_path or default_eval_data(),
            tokenizer,
            check_args.eval_seq_len or train_args.model_max_length,
            max_rows=check_args.eval_windows,
            flag="--eval_data_path",
        )
    is_main_process = train_args.process_index == 0
    before = perplexity_check(model, eval_rows, is_main_process)
    training_free = training_free_check(model_args, train_args, eval_rows, before)

    record = training_record(model, model_args, train_args)
    model, trainable = prepare_for_training(model, train_args, continue_from=continued_adapter(model_args))
    result, _ = train_and_save(model, train_args, train_rows, collate_rows, tokenizer, record=record)

    disable_s2_attn(model)
    after = perplexity_check(model, eval_rows, is_main_process)
    if not is_main_process:
        return
    summary = {
        "model": model_args.model_name_or_path,
        "model_max_length": train_args.model_max_length,
        "rope": model.config.rope_parameters if hasattr(model, "config") else None,
        "s2_attn": not train_args.use_full_attn,
        "trainable_parameters": trainable,
        "train_rows": len(train_rows),
        "perplexity_training_free": training_free,
        "perplexity_before": before,
        "perplexity_after": after,
    }
    comparison = None
    if before and after:
        reference = f"YaRN without training {training_free['perplexity']:.2f}, " if training_free else ""
        comparison = (
            f"perplexity @ {before['seq_len']} tokens of held-out text: {reference}"
            f"before {before['perplexity']:.2f}, after {after['perplexity']:.2f}"
        )
    report_training(summary, result, started, train_args.output_dir, "fine-tune-results.json", comparison)


if __name__ == "__main__":
    run_cli(main)
