"""transformers' Trainer with the two things long-context LoRA+ training needs on top.

1. The loss is computed in chunks (`longctx.loss`), never from a whole row of full-vocabulary logits.
2. Checkpoints hold `trainable_params.safetensors` (embeddings, norms) beside the PEFT adapter, and a
   resumed run loads them back, so an interrupted run loses only the steps since its last save.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from longctx.loss import DEFAULT_CHUNK_SIZE, causal_lm_loss
from longctx.lora import base_model_of, has_trainable_params, load_trainable_params, save_trainable_params


class LongContextTrainer(Trainer):
    """Trainer whose loss is chunked over positions and already normalised over the accumulated batch."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_chunk_size: int = DEFAULT_CHUNK_SIZE, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_chunk_size = loss_chunk_size

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
        if num_items_in_batch is None:
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
    partitioned = [p for p in base_model_of(model).parameters() if p.requires_grad and hasattr(p, "ds_id")]
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
    """Write trainable_params.safetensors into every checkpoint folder the Trainer saves."""

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is not None and has_trainable_params(model):
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            save_trainable_params_from_all_processes(model, checkpoint, state.is_world_process_zero)
        return control


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """A checkpoint folder to resume from: a path, or True/'latest' for the newest in output_dir."""
    if resume_from_checkpoint in (None, False, "", "False", "false"):
        return None
    if resume_from_checkpoint in (True, "True", "true", "latest"):
        checkpoint = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if checkpoint is None:
            raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint-* folder in {output_dir}")
        return checkpoint
    if not os.path.isdir(resume_from_checkpoint):
        raise FileNotFoundError(f"--resume_from_checkpoint: {resume_from_checkpoint} is not a folder")
    return resume_from_checkpoint


def restore_trainable_params(model, checkpoint: str, deepspeed: bool = False) -> None:
    """PEFT checkpoints restore only the adapter; load the embeddings/norms saved beside it.

    DeepSpeed checkpoints hold the whole module state and DeepSpeed restores it, so nothing is done then.
    """
    if has_trainable_params(model) and not deepspeed:
        load_trainable_params(model, checkpoint)
