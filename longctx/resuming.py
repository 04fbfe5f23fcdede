"""Where a training run writes and where it resumes from, checked before any work starts.

--output_dir must not hold another run (its adapter would be replaced and --save_total_limit would
delete its checkpoints); --resume_from_checkpoint takes a complete checkpoint only (one a kill left
half-written is skipped, longctx.checkpoints.missing_from_checkpoint), and one from another run or
with unsafe or damaged pickles is refused before the Trainer or DeepSpeed reads it.
"""

from __future__ import annotations

import os

from longctx.internals import sort_checkpoints
from longctx.lora import PeftModel, has_trainable_params, load_trainable_params
from longctx.outputs import check_output_folder
from longctx.wrappers import unwrap_model


def check_output_dir(train_args, inputs: dict) -> None:
    """Before any work: --output_dir must be a writable folder that is none of the run's `inputs` (flag ->
    path), and empty unless the run resumes or --overwrite_output_dir is given.

    Another run's adapter there would be replaced silently, and the Trainer's --save_total_limit would
    delete its checkpoint-N folders as if they were this run's. Checked on the main process only, so
    no process sees another's probe file.
    """
    if train_args.process_index != 0:
        return
    check_output_folder(
        "--output_dir",
        train_args.output_dir,
        inputs,
        reuse=bool(resume_asked(train_args.resume_from_checkpoint) or train_args.overwrite_output_dir),
        reuse_hint="pass --resume_from_checkpoint latest to continue the run there, --overwrite_output_dir True "
        "to write over it, or choose a new folder",
    )


def resume_asked(resume_from_checkpoint: str | bool | None) -> bool:
    return resume_from_checkpoint not in (None, False, "", "False", "false")


def resolve_resume_checkpoint(
    resume_from_checkpoint: str | bool | None,
    output_dir: str,
    trainable_params: bool = False,
    training_record: bool = False,
) -> str | None:
    """A complete checkpoint folder to resume from: a path, or True/'latest' for the newest complete one in output_dir.

    Complete is `longctx.checkpoints.missing_from_checkpoint` (with what this run saves: trainable params,
    a training record); a folder left half-written by a run killed while saving is skipped with a note,
    and refused when named explicitly.
    """
    from longctx.checkpoints import missing_from_checkpoint

    if not resume_asked(resume_from_checkpoint):
        return None
    expected = {"trainable_params": trainable_params, "training_record": training_record}
    if resume_from_checkpoint in (True, "True", "true", "latest"):
        checkpoints = sort_checkpoints(output_dir) if os.path.isdir(output_dir) else []
        if not checkpoints:
            raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint-* folder in {output_dir}")
        for checkpoint in reversed(checkpoints):
            missing = missing_from_checkpoint(checkpoint, **expected)
            if not missing:
                return checkpoint
            print(f"{checkpoint} is incomplete (no {missing[0]}: stopped while saving it); skipped", flush=True)
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}")
    if not os.path.isdir(resume_from_checkpoint):
        raise FileNotFoundError(f"--resume_from_checkpoint: {resume_from_checkpoint} is not a folder")
    missing = missing_from_checkpoint(resume_from_checkpoint, **expected)
    if missing:
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint} is incomplete (no {missing[0]}: the run was stopped "
            "while saving it); resume from an earlier checkpoint, or pass latest"
        )
    return resume_from_checkpoint


def check_resumable(model, checkpoint: str) -> None:
    """Before the Trainer or DeepSpeed reads a checkpoint: its pickles are data only and undamaged
    (longctx.pickles), and its adapter is this run's (same base model, --lora_r and --lora_target)."""
    from longctx.adapter_fit import adapter_weight_shapes, check_adapter_weights, read_adapter_weights
    from longctx.pickles import check_checkpoint_pickles

    check_checkpoint_pickles(checkpoint)
    if isinstance(model, PeftModel):
        state = read_adapter_weights(checkpoint)
        shapes = adapter_weight_shapes(unwrap_model(model).config, model.peft_config[model.active_adapter])
        try:
            check_adapter_weights(state, shapes, checkpoint)
        except ValueError as error:
            raise ValueError(
                f"--resume_from_checkpoint {error}; resume with the run's own --model_name_or_path, --lora_r "
                "and --lora_target"
            ) from None


def restore_trainable_params(model, checkpoint: str, deepspeed: bool = False) -> None:
    """PEFT checkpoints restore only the adapter; load the embeddings/norms saved beside it.

    DeepSpeed checkpoints hold the whole module state and DeepSpeed restores it, so nothing is done then.
    """
    if has_trainable_params(model) and not deepspeed:
        load_trainable_params(model, checkpoint)
