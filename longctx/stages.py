"""Training on from an earlier run: progressive context extension (Gradient's Llama-3 1048k, LWM).

A stage starts from the folder of the one before it in one of two ways:
- merge: the earlier stages are merged into the base weights and a fresh LoRA trains on top; each
  stage folder holds a small adapter, and its training record lists the stages under it, so
  `--peft_model STAGE` and the merge script apply the whole chain in order;
- continue: the same adapter and norms keep training at the new length; the stage folder alone
  holds everything learnt so far.
"""

from __future__ import annotations

from pathlib import Path

from longctx.errors import check_choice
from longctx.lora import load_trainable_params, trainable_params_path
from longctx.training_record import adapter_chain

START_MODES = ("merge", "continue")


def check_start_mode(mode: str) -> None:
    check_choice("--start_mode", mode, START_MODES)


def check_start(folder: str | Path, mode: str) -> None:
    check_start_mode(mode)
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--start_from {folder}: no such folder")


def stages_below(folder: str | Path, mode: str) -> list[Path]:
    """The folders merged into the base before a stage that starts from `folder` trains."""
    chain = adapter_chain(folder)
    return chain if mode == "merge" else chain[:-1]


def apply_earlier_stages(model, folder: str | Path, mode: str):
    """Merge the stages below the new one into `model`; in continue mode also load `folder`'s norms and
    embeddings, whose training goes on (its adapter is picked up by longctx.lora.setup_lora)."""
    from longctx.merging import merge_adapters

    check_start(folder, mode)
    model = merge_adapters(model, stages_below(folder, mode), require_trainable_params=False)
    if mode == "continue" and trainable_params_path(folder) is not None:
        load_trainable_params(model, folder)
    return model
