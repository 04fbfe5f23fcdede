"""Long instruction tuning with S²-Attn and LoRA+ (LongLoRA's supervised-fine-tune.py, LongAlign's batching).

Data: LongAlpaca JSON ({instruction, output[, input]}) or chat JSONL ({"messages": [...]}), rendered
with the tokenizer's chat template (or --prompt_template llama2, LongLoRA's [INST] format); loss only
on answer tokens. Samples over --model_max_length are cut in the middle of their material, never
through the question or the answer. S²-Attn follows LongLoRA's SFT rule (lengths that are multiples
of 4096 use --group_size_ratio, others groups of 8192) unless --group_size is given.
--batch_method pack|sort with --pack_loss are LongAlign's packing, sorted batching and loss weighting.

Quick start on a CPU (bundled SmolLM2-135M, QA built from the bundled books, 16k tokens):
    python -m longctx.build_qa_data --output outputs/sft-data/train.json --num_samples 64
    python -m longctx.build_qa_data --output outputs/sft-data/heldout.json --books data/pg19_eval \\
        --num_samples 16 --max_tokens 4096 --seed 1
    python supervised-fine-tune.py --data_path outputs/sft-data/train.json --model_max_length 16384 \\
        --batch_method pack --pack_loss True --max_steps 6 --learning_rate 1e-3 --warmup_steps 0 \\
        --eval_data_path outputs/sft-data/heldout.json --output_dir outputs/smollm2-16k-sft

One GPU node (LongLoRA's LongAlpaca recipe, on a model already extended by fine-tune.py):
    torchrun --nproc_per_node=8 supervised-fine-tune.py --model_name_or_path path/to/Llama-2-7b-longlora-32k-merged \\
        --bf16 True --output_dir outputs/llama2-7b-32k-sft --model_max_length 32768 --use_flash_attn True \\
        --data_path LongAlpaca-12k.json --prompt_template llama2 --batch_method sort \\
        --low_rank_training True --num_train_epochs 5 --per_device_train_batch_size 1 \\
        --gradient_accumulation_steps 8 --learning_rate 2e-5 --warmup_steps 20 --deepspeed ds_configs/stage2.json
"""

import functools
import time

from transformers.integrations import is_deepspeed_zero3_enabled

from longctx.args import ModelArguments, QACheckArguments, SFTDataArguments, SFTTrainingArguments
from longctx.attention import LONGLORA_SFT_GROUP_SIZE, disable_s2_attn
from longctx.cli import parse_dataclasses, run_cli
from longctx.plots import plot_loss_curve
from longctx.prompts import usable_template
from longctx.qa_data import load_questions, qa_accuracy
from longctx.resuming import check_output_dir
from longctx.sft_batching import SortedBatchSampler, build_sft_dataset, collate_sft
from longctx.sft_data import load_sft_samples
from longctx.trainer import (
    continued_adapter,
    load_training_model,
    prepare_for_training,
    report_training,
    train_and_save,
    training_record,
)


def accuracy_check(model, tokenizer, questions, template: str, check_args, is_main_process: bool) -> dict | None:
    if questions is None or not is_main_process:
        return None
    return qa_accuracy(model, tokenizer, questions, template, check_args.eval_max_new_tokens)


def main():
    model_args, data_args, check_args, train_args = parse_dataclasses(
        (ModelArguments, SFTDataArguments, QACheckArguments, SFTTrainingArguments), __doc__
    )
    started = time.perf_counter()
    inputs = {"--model_name_or_path": model_args.model_name_or_path, "--data_path": data_args.data_path}
    check_output_dir(train_args, {**inputs, "--eval_data_path": check_args.eval_data_path})
    model, tokenizer = load_training_model(model_args, train_args)
    data_args.prompt_template = usable_template(tokenizer, data_args.prompt_template)
    samples, stats = load_sft_samples(
        data_args.data_path, tokenizer, train_args.model_max_length, data_args.prompt_template, data_args.max_train_samples
    )
    print(stats.summary(), flush=True)
    dataset = build_sft_dataset(samples, data_args.batch_method, train_args.model_max_length, data_args.pack_loss)
    batch_size = train_args.per_device_train_batch_size
    sampler = None
    if data_args.batch_method == "sort":
        sampler = SortedBatchSampler(dataset.row_lengths(), batch_size, seed=train_args.seed)
    questions = None
    if check_args.eval_data_path and is_deepspeed_zero3_enabled():
        print("ZeRO-3 splits every weight across processes: no before/after accuracy check; run python -m longctx.qa_accuracy")
    elif check_args.eval_data_path:
        questions = load_questions(check_args.eval_data_path, check_args.eval_samples, data_args.prompt_template)
    is_main_process = train_args.process_index == 0
    before = accuracy_check(model, tokenizer, questions, data_args.prompt_template, check_args, is_main_process)

    sft_group_size = None if train_args.group_size else LONGLORA_SFT_GROUP_SIZE
    record = training_record(model, model_args, train_args)
    model, trainable = prepare_for_training(
        model, train_args, sft_group_size=sft_group_size, continue_from=continued_adapter(model_args)
    )
    collator = functools.partial(
        collate_sft, pad_token_id=tokenizer.pad_token_id or 0, pad_to_multiple_of=train_args.sequence_parallel_size
    )
    result, trainer = train_and_save(
        model, train_args, dataset, collator, tokenizer, train_sampler=sampler, record=record
    )

    disable_s2_attn(model)
    after = accuracy_check(model, tokenizer, questions, data_args.prompt_template, check_args, is_main_process)
    if not is_main_process:
        return
    losses = [{"step": entry["step"], "loss": entry["loss"]} for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "model": model_args.model_name_or_path,
        "model_max_length": train_args.model_max_length,
        "batch_method": data_args.batch_method,
        "pack_loss": data_args.pack_loss,
        "samples": len(samples),
        "records_skipped": dict(stats.skipped),
        "samples_cut": stats.cut,
        "rows": len(dataset),
        "trainable_parameters": trainable,
        "loss_curve": losses,
        "accuracy_before": before,
        "accuracy_after": after,
    }
    if losses:
        plot_loss_curve(losses, f"{train_args.output_dir}/loss.png", title=f"SFT loss, {train_args.model_max_length} tokens")
    comparison = None
    if before and after:
        comparison = f"held-out accuracy: before {before['correct']}/{before['questions']}, after {after['correct']}/{after['questions']}"
    report_training(summary, result, started, train_args.output_dir, "sft-results.json", comparison)


if __name__ == "__main__":
    run_cli(main)
