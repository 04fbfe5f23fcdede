"""transformers' Trainer with the two things long-context LoRA+ training needs on top.

1. The loss is computed in chunks (`longctx.loss`), never from a whole row of full-vocabulary logits.
   Batches may carry `loss_weights` and `num_sequences` (LongAlign's loss weighting, longctx.sft_batching):
   the loss is then divided by the sequences of the whole accumulated batch rather than its tokens.
2. Checkpoints hold `trainable_params.safetensors` (embeddings, norms) beside the PEFT adapter, and a
   resumed run loads them back, so an interrupted run loses only the steps since its last save. A
   checkpoint left half-written by a kill is skipped, and one from another run (another base model,
   --lora_r, --lora_target) or with unsafe or damaged pickles is refused before anything loads it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, set_seed

from longctx.internals import PREFIX_CHECKPOINT_DIR, TrainerHooks
from longctx.lora import has_trainable_params, save_trainable_params
from longctx.loss import DEFAULT_CHUNK_SIZE, causal_lm_loss
from longctx.pickles import safe_unpickling
from longctx.resuming import check_resumable, resolve_resume_checkpoint, restore_trainable_params
from longctx.stages import apply_earlier_stages, check_start, stages_below
from longctx.training_record import TrainingRecord, read_record, record_from_model, write_record
from longctx.wrappers import unwrap_model


class LongContextTrainer(TrainerHooks, Trainer):
    """Trainer whose loss is chunked over positions and already normalised over the accumulated batch."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_chunk_size: int = DEFAULT_CHUNK_SIZE, train_sampler=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_chunk_size = loss_chunk_size
        self.train_sampler = train_sampler  # e.g. longctx.sft_batching.SortedBatchSampler

    def custom_train_sampler(self):
        return self.train_sampler

    def custom_num_items_in_batch(self, batch_samples, device):
        """Sequences over all micro-batches of one optimizer step, all processes (weighted loss); None: the
        Trainer's own count of target tokens."""
        if not batch_samples or "num_sequences" not in batch_samples[0]:
            return None
        num_sequences = sum(torch.as_tensor(batch["num_sequences"]) for batch in batch_samples).to(device)
        if self.args.world_size > 1:
            num_sequences = self.accelerator.gather(num_sequences).sum()
        return num_sequences

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum, targets = causal_lm_loss(
            model,
            inputs["input_ids"],
            inputs["labels"],
            attention_mask=inputs.get("attention_mask"),
            position_ids=inputs.get("position_ids"),
            weights=inputs.get("loss_weights"),
            chunk_size=self.loss_chunk_size,
        )
        if "num_sequences" in inputs and num_items_in_batch is None:
            loss = loss_sum / inputs["num_sequences"] / self.args.gradient_accumulation_steps
        elif num_items_in_batch is None:
            loss = loss_sum / targets.clamp(min=1) / self.args.gradient_accumulation_steps
        else:
            # gradients are averaged over processes, so scale the global-token mean back up
            loss = loss_sum / num_items_in_batch * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss


def gathered_trainable_params(model):
    """Context in which every process holds the full trainable weights, even under DeepSpeed ZeRO-3.

    ZeRO-3 leaves each process a slice of a weight (an empty tensor outside DeepSpeed's hooks); the
    gather is collective, so every process must enter it. Without ZeRO-3 it does nothing.
    """
    partitioned = [p for p in unwrap_model(model).parameters() if p.requires_grad and hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def save_trainable_params_from_all_processes(model, folder: str | Path, is_main_process: bool) -> None:
    """`save_trainable_params` for distributed runs: all processes gather, the main one writes."""
    with gathered_trainable_params(model):
        if is_main_process:
            save_trainable_params(model, folder)


class SaveTrainableParamsCallback(TrainerCallback):
    """Write trainable_params.safetensors and the training record into every checkpoint folder the Trainer saves.

    They go in before the Trainer's own files, at the end of the step (or epoch) that saves, so a
    checkpoint is complete once trainer_state.json, the Trainer's last file, is there
    (longctx.checkpoints.missing_from_checkpoint), and --save_total_limit, applied right after it,
    never deletes the previous checkpoint while the new one still lacks them. A save decided later
    (on a new best metric) gets them just after the Trainer's files.
    """

    def __init__(self, record: TrainingRecord | None = None):
        self.record = record
        self.written_step = None

    def write(self, args, state, model) -> None:
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if model is not None and has_trainable_params(model):
            save_trainable_params_from_all_processes(model, checkpoint, state.is_world_process_zero)
        if self.record is not None and state.is_world_process_zero:
            write_record(checkpoint, self.record)
        self.written_step = state.global_step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save:
            self.write(args, state, model)
        return control

    on_epoch_end = on_step_end

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.written_step != state.global_step:
            self.write(args, state, model)
        return control


# ---------------------------------------------------------------------------------------------
# The steps fine-tune.py and supervised-fine-tune.py share


def load_training_model(model_args, train_args):
    """Model and tokenizer with RoPE scaled to --model_max_length (and QLoRA's 4-bit base when asked).

    A tokenizer without a pad token gets LongLoRA's `[PAD]` (longctx.special_tokens), so the trained
    embeddings have LongLoRA's rows and its scripts and ours read each other's weights.
    """
    from longctx.modeling import load_model_and_tokenizer
    from longctx.sequence_parallel import check_sequence_parallel
    from longctx.special_tokens import add_pad_token
    from longctx.upstream import check_model_type

    if model_args.load_in_4bit and not train_args.low_rank_training:
        raise ValueError("--load_in_4bit trains LoRA+ on a frozen 4-bit base; it needs --low_rank_training True")
    if model_args.start_from and model_args.load_in_4bit:
        raise ValueError("--start_from merges earlier stages into the weights; it does not work with --load_in_4bit")
    if model_args.start_from:
        check_start(model_args.start_from, model_args.start_mode)
    check_sequence_parallel(model_args.model_name_or_path, train_args, model_args.cache_dir)
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path,
        train_args.model_max_length,
        model_args.rope_request(),
        model_args.weight_loading(),
        training_record=read_record(model_args.start_from),
    )
    check_model_type(model_args.model_type, model.config)
    add_pad_token(model, tokenizer)  # before earlier stages merge: theirs have the same rows
    if model_args.start_from:
        model = apply_earlier_stages(model, model_args.start_from, model_args.start_mode)
    return model, tokenizer


def continued_adapter(model_args) -> str | None:
    """The adapter whose training goes on (--start_mode continue), else None: a fresh LoRA."""
    return model_args.start_from if model_args.start_from and model_args.start_mode == "continue" else None


def training_record(model, model_args, train_args) -> TrainingRecord:
    """What the output folder must remember to be read back right: RoPE as loaded, length, attention."""
    below = stages_below(model_args.start_from, model_args.start_mode) if model_args.start_from else []
    return record_from_model(
        model.config,
        rope_method=model_args.rope_method,
        model_max_length=train_args.model_max_length,
        attention="full" if train_args.use_full_attn else "s2_attn",
        base_model=model_args.model_name_or_path,
        base_adapters=[str(folder.resolve()) for folder in below],
        group_size_ratio=train_args.group_size_ratio,
        group_size=train_args.group_size,
        trainable_params=train_args.trainable_params if train_args.low_rank_training else None,
    )


def prepare_for_training(model, train_args, sft_group_size: int | None = None, continue_from: str | None = None):
    """S²-Attn (unless --use_full_attn) and LoRA+ (with --low_rank_training; `continue_from` an adapter
    folder whose LoRA trains on); returns (model, trainable count).

    --seed is applied first: LoRA's initialisation draws random numbers, and the Trainer seeds only
    once it is built, after them.
    """
    from longctx.attention import enable_s2_attn
    from longctx.lora import attention_lora_targets, count_parameters, setup_lora

    set_seed(train_args.seed)

    if not train_args.use_full_attn:
        enable_s2_attn(
            model, train_args.group_size_ratio, train_args.group_size, train_args.use_flash_attn, sft_group_size=sft_group_size
        )
    if train_args.low_rank_training:
        model = setup_lora(
            model,
            r=train_args.lora_r,
            alpha=train_args.lora_alpha,
            dropout=train_args.lora_dropout,
            target=train_args.lora_target or attention_lora_targets(model.config),
            trainable_params=train_args.trainable_params,
            continue_from=continue_from,
        )
    trainable, total = count_parameters(model)
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)", flush=True)
    return model, trainable


def train_and_save(model, train_args, train_dataset, data_collator, tokenizer, train_sampler=None, record=None):
    """Train (resuming when asked), then save the adapter, trainable params and training record to --output_dir."""
    trainer_class = LongContextTrainer
    if getattr(train_args, "sequence_parallel_size", 1) > 1:
        from longctx.sequence_parallel_trainer import SequenceParallelTrainer as trainer_class
    trainer = trainer_class(
        model=model,
        args=train_args,
        train_dataset=train_dataset,
        data_collator=data_collator,
        processing_class=tokenizer,
        callbacks=[SaveTrainableParamsCallback(record)],
        loss_chunk_size=train_args.loss_chunk_size,
        train_sampler=train_sampler,
    )
    checkpoint = resolve_resume_checkpoint(
        train_args.resume_from_checkpoint,
        train_args.output_dir,
        trainable_params=has_trainable_params(model) and not train_args.deepspeed,
        training_record=record is not None,
    )
    if checkpoint:
        check_resumable(model, checkpoint)
        restore_trainable_params(model, checkpoint, deepspeed=bool(train_args.deepspeed))
    with safe_unpickling() if checkpoint else contextlib.nullcontext():  # DeepSpeed loads with weights_only=False
        result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(train_args.output_dir)
    if train_args.low_rank_training:
        save_trainable_params_from_all_processes(model, train_args.output_dir, train_args.process_index == 0)
    if record is not None and train_args.process_index == 0:
        write_record(train_args.output_dir, record)
    return result, trainer


def report_training(
    summary: dict, result, started: float, output_dir: str, results_name: str, comparison: str | None = None
) -> None:
    """Add the steps, loss and seconds of a run (`result` of Trainer.train, `started` a perf_counter) to
    its summary, write it as JSON into output_dir and print the headline lines."""
    import json
    import time

    from longctx.io import write_json_atomic

    train_seconds = result.metrics.get("train_runtime")
    summary.update(
        steps=result.global_step,
        train_loss=result.training_loss,
        train_seconds=train_seconds,
        seconds_per_step=train_seconds / result.global_step if train_seconds and result.global_step else None,
        seconds=time.perf_counter() - started,
    )
    write_json_atomic(Path(output_dir) / results_name, summary)
    print(json.dumps({key: summary[key] for key in ("steps", "train_loss", "seconds")}))
    if comparison:
        print(comparison)
    print(f"adapter and trainable params saved in {output_dir}")
