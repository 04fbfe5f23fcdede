"""PyTorch pickle files (.pt, .pth, .bin) are loaded only when they hold tensors and plain data.

`torch.load(weights_only=False)` runs whatever a crafted file asks for, and DeepSpeed loads its
checkpoints that way (the consolidation behind get_trainable_weights.py, and resuming under
--deepspeed). So every pickle longctx, the Trainer or DeepSpeed is about to load is first read
statically with `torch.serialization.get_unsafe_globals_in_checkpoint` (which executes nothing) and
refused when it names anything beyond torch's own allow-list, numpy's RNG state (as transformers
allows it) and DeepSpeed's checkpoint records; the load itself then runs under `safe_unpickling()`,
which forces torch's weights-only unpickler on every `torch.load`, whatever its caller asked for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from longctx.errors import first_line

PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
NEVER_LOADED = ("training_args.bin",)  # the Trainer saves its arguments there but never reads them back
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def safe_unpickling() -> Iterator[None]:
    """Every `torch.load` inside uses the weights-only unpickler, with the allow-list above added."""
    from longctx.internals import deepspeed_checkpoint_classes, numpy_rng_safe_globals

    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with numpy_rng_safe_globals(), torch.serialization.safe_globals(deepspeed_checkpoint_classes()):
            yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous


def check_pickle(path: str | Path) -> None:
    """Refuse, without unpickling it, a file that is not torch.save's format or would load more than data."""
    path = Path(path)
    with safe_unpickling():
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as error:  # noqa: BLE001 - truncated zips and raw pickles fail in several ways
            reason = first_line(error)
            raise ValueError(f"cannot read {path}: not a file torch.save wrote, or damaged ({reason})") from None
    if unsafe:
        raise ValueError(
            f"refusing to load {path}: it names {sorted(unsafe)[0]}, not a tensor or plain data "
            "(a pickle that can run code); only load checkpoints you made"
        )


def check_checkpoint_pickles(folder: str | Path) -> None:
    """`check_pickle` on every pickle of a checkpoint folder and its DeepSpeed `global_step*/` folders.

    DeepSpeed's `latest` file names the folder it loads; it must be one inside this checkpoint.
    """
    folder = Path(folder)
    latest = folder / "latest"
    if latest.is_file():
        tag = latest.read_text(errors="replace").strip()
        if not tag or Path(tag).name != tag or tag in (".", "..") or not (folder / tag).is_dir():
            raise ValueError(f"{latest} names {tag!r}, not a DeepSpeed folder inside {folder}; it is not loaded")
    files = [*folder.iterdir(), *(file for tag in folder.glob("global_step*") if tag.is_dir() for file in tag.iterdir())]
    for file in sorted(files):
        if file.is_file() and file.suffix in PICKLE_SUFFIXES and file.name not in NEVER_LOADED:
            check_pickle(file)
