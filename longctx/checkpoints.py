"""Reading a LoRA+ training checkpoint back as an adapter plus trainable params (get_trainable_weights.py).

A checkpoint folder comes in one of three layouts, tried in this order:

1. DeepSpeed ZeRO-2/3 (`global_stepN/*model_states.pt` + optimizer shards, and a `latest` file):
   consolidated to float32 by DeepSpeed's own `get_fp32_state_dict_from_zero_checkpoint`, which also
   rebuilds parameters that ZeRO-3 partitioned across processes. Files saved beside it from a ZeRO-3
   model may hold empty partitions, so the consolidated weights win.
2. A full state dict of the PEFT-wrapped model: LongLoRA's `pytorch_model.bin`, `model.safetensors`,
   or their sharded `.index.json` forms.
3. Already split, as longctx's fine-tune.py saves every checkpoint: `adapter_model.safetensors` (or
   `.bin`) plus `trainable_params.safetensors` (or LongLoRA's `.bin`).

Names are matched by their dotted structure (`longctx.lora.parse_parameter_name`): PEFT, DDP,
DeepSpeed and torch.compile prefixes and LoRA's `base_layer` / adapter-name parts are recognised
wherever they sit. LongLoRA's script cut the first 17 characters off each name instead, which breaks
silently on any other prefix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig
from transformers import AutoConfig, AutoModelForCausalLM

from longctx.adapter_fit import adapter_weight_shapes, check_adapter_weights
from longctx.errors import first_line
from longctx.internals import OPTIMIZER_NAME, TRAINER_STATE_NAME
from longctx.io import write_json_atomic
from longctx.lora import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILES,
    LONGLORA_TRAINABLE_PARAMS_FILE,
    TRAINABLE_PARAMS_FILE,
    check_trainable_params,
    parse_names,
    parse_parameter_name,
    read_weights_file,
    save_safetensors_atomic,
    trainable_params_path,
)
from longctx.modeling import load_tokenizer, resolve_model_path
from longctx.outputs import check_output_file
from longctx.pickles import check_checkpoint_pickles, safe_unpickling
from longctx.special_tokens import add_tokens_for_trainable_params
from longctx.training_record import RECORD_FILE

ADAPTER_WEIGHTS_FILE = ADAPTER_WEIGHTS_FILES[0]
FULL_STATE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class SplitCheckpoint:
    """What a checkpoint holds, in the files a PEFT adapter folder with LoRA+ weights needs."""

    adapter: dict[str, torch.Tensor]  # PEFT's on-disk names: base_model.model.<layer>.lora_A.weight
    trainable: dict[str, torch.Tensor]  # base model names: model.norm.weight
    adapter_config: dict
    source: str


def matches(name: str, keys: list[str]) -> bool:
    """The rule `--trainable_params` uses in training (longctx.lora.mark_trainable): a name part."""
    return any(key in name for key in keys)


def split_state_dict(state: dict[str, torch.Tensor], keys: list[str], source: str) -> tuple[dict, dict]:
    """(adapter weights under PEFT's on-disk names, trainable weights under base names) of a full state dict."""
    adapter, trainable, adapter_names = {}, {}, set()
    for name, tensor in state.items():
        kind, key, adapter_name = parse_parameter_name(name)
        if kind == "lora":
            adapter[key] = tensor
            if adapter_name is not None:
                adapter_names.add(adapter_name)
        elif kind == "base" and matches(key, keys):
            trainable[key] = tensor
    if len(adapter_names) > 1:
        raise ValueError(f"{source} holds several adapters ({', '.join(sorted(adapter_names))}); expected one")
    return adapter, trainable


def zero_checkpoint_tag(folder: Path) -> str | None:
    """The DeepSpeed tag (`global_stepN`) of a ZeRO checkpoint in `folder`: from `latest`, else the newest."""
    latest = folder / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        if (folder / tag).is_dir():
            return tag
    steps = [d for d in folder.glob("global_step*") if d.is_dir() and any(d.glob("*model_states.pt"))]
    if not steps:
        return None
    return max(steps, key=lambda d: int(re.sub(r"\D", "", d.name) or 0)).name


def missing_from_checkpoint(
    folder: str | Path, trainable_params: bool = False, training_record: bool = False
) -> list[str]:
    """What a training checkpoint folder lacks to be complete (empty when it is complete): the one definition.

    The Trainer writes a checkpoint file by file (the weights, the optimizer or DeepSpeed's
    `global_stepN/`, scheduler and RNG states, then trainer_state.json), and then
    SaveTrainableParamsCallback adds trainable_params.safetensors and the training record. A run
    killed while saving leaves a folder without the later files; resuming from it would lose the
    embeddings/norms or the RoPE record. `trainable_params`: the run saves embed/norm weights beside the
    adapter (not under DeepSpeed, whose own state holds them); `training_record`: the run writes a record.
    """
    folder = Path(folder)
    missing = []
    has_adapter = any((folder / name).is_file() for name in ADAPTER_WEIGHTS_FILES)
    if not has_adapter and not any((folder / name).is_file() for name in (*FULL_STATE_FILES, *INDEX_FILES)):
        missing.append(ADAPTER_WEIGHTS_FILE)
    elif has_adapter and not (folder / ADAPTER_CONFIG_FILE).is_file():
        missing.append(ADAPTER_CONFIG_FILE)
    if not ((folder / OPTIMIZER_NAME).is_file() or (folder / "latest").is_file()):
        missing.append(OPTIMIZER_NAME)
    try:
        json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        missing.append(TRAINER_STATE_NAME)
    if trainable_params and trainable_params_path(folder) is None:
        missing.append(TRAINABLE_PARAMS_FILE)
    if training_record and not (folder / RECORD_FILE).is_file():
        missing.append(RECORD_FILE)
    return missing


def consolidate_zero_checkpoint(folder: Path, tag: str) -> dict[str, torch.Tensor]:
    """DeepSpeed's own consolidation of ZeRO-2/3 shards into one float32 state dict (frozen weights included),
    its pickles checked first and loaded with the weights-only unpickler (longctx.pickles)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    check_checkpoint_pickles(folder)  # DeepSpeed unpickles with weights_only=False
    try:
        with safe_unpickling():
            return dict(get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag, exclude_frozen_parameters=False))
    except Exception as error:  # torn shards fail inside DeepSpeed in many ways
        reason = first_line(error)
        raise ValueError(f"cannot consolidate the DeepSpeed checkpoint {folder / tag}: {reason}") from None


def checkpoint_layout(folder: Path) -> str | None:
    """Which layout of the module doc a folder holds, by its file names alone: "deepspeed", "full", "split" or None."""
    if zero_checkpoint_tag(folder):
        return "deepspeed"
    if any((folder / name).is_file() for name in (*INDEX_FILES, *FULL_STATE_FILES)):
        return "full"
    if any((folder / name).is_file() for name in ADAPTER_WEIGHTS_FILES):
        return "split"
    return None


def read_full_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], str] | None:
    """A full state dict saved as one file or as shards listed in an index; None when there is none."""
    for name in INDEX_FILES:
        index_path = folder / name
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (ValueError, KeyError):
                raise ValueError(f"cannot read {index_path}: not a weight index with a weight_map") from None
            state = {}
            for shard in sorted(set(weight_map.values())):
                state.update(read_weights_file(folder / shard))
            return state, str(index_path)
    for name in FULL_STATE_FILES:
        if (folder / name).is_file():
            return read_weights_file(folder / name), str(folder / name)
    return None


def read_adapter_config(folder: Path) -> dict:
    """adapter_config.json of the checkpoint, else of its parent (LongLoRA keeps it in output_dir only)."""
    for candidate in (folder / ADAPTER_CONFIG_FILE, folder.parent / ADAPTER_CONFIG_FILE):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except ValueError:
                raise ValueError(f"cannot read {candidate}: not JSON") from None
    raise FileNotFoundError(f"no {ADAPTER_CONFIG_FILE} in {folder} or its parent folder")


def read_split_checkpoint(folder: Path, keys: list[str]) -> tuple[dict, dict, str]:
    """Layout 3: adapter and trainable params already in separate files."""
    adapter_file = next(folder / name for name in ADAPTER_WEIGHTS_FILES if (folder / name).is_file())
    adapter = read_weights_file(adapter_file)
    if not keys:
        return adapter, {}, str(adapter_file)
    trainable_file = trainable_params_path(folder)
    if trainable_file is None:
        raise FileNotFoundError(
            f"{folder} has the LoRA adapter but no {TRAINABLE_PARAMS_FILE}: the {','.join(keys)} weights trained "
            "beside it were not saved (pass --trainable_params '' if only LoRA was trained)"
        )
    trainable = {name: t for name, t in read_weights_file(trainable_file).items() if matches(name, keys)}
    empty = [name for name, tensor in trainable.items() if tensor.numel() == 0]
    if empty:
        raise ValueError(f"{trainable_file}: {empty[0]} is empty (saved from a ZeRO-3 partition)")
    return adapter, trainable, str(trainable_file)


def read_checkpoint(folder: str | Path, trainable_params: str | list[str] = "embed,norm") -> SplitCheckpoint:
    """Read any supported checkpoint layout (see the module doc) into adapter + trainable weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    keys = parse_names(trainable_params)
    layout = checkpoint_layout(folder)
    if layout is None:
        raise FileNotFoundError(
            f"{folder} holds no checkpoint: looked for global_step*/ (DeepSpeed), model.safetensors or "
            "pytorch_model.bin (or their .index.json), and adapter_model.safetensors"
        )
    adapter_config = read_adapter_config(folder)
    if layout == "deepspeed":
        tag = zero_checkpoint_tag(folder)
        source = f"DeepSpeed checkpoint {folder / tag}"
        adapter, trainable = split_state_dict(consolidate_zero_checkpoint(folder, tag), keys, source)
    elif layout == "full":
        state, source = read_full_state_dict(folder)
        adapter, trainable = split_state_dict(state, keys, source)
    else:
        adapter, trainable, source = read_split_checkpoint(folder, keys)
    if not adapter:
        raise ValueError(
            f"{source} holds no LoRA weights (full fine-tuning?); "
            "turn a fully fine-tuned model into an adapter with `python -m longctx.extract_lora`"
        )
    for key in keys:
        if not any(key in name for name in trainable):
            raise ValueError(f"--trainable_params {key} matches no weight in {source}")
    return SplitCheckpoint(adapter, trainable, adapter_config, source)


def check_against_base(split: SplitCheckpoint, base_model: str | None = None) -> str | None:
    """Check names and shapes against the base model's structure, built on the meta device (no weights read).

    The base is `base_model`, else the adapter config's `base_model_name_or_path` when it can be
    found locally; returns the base checked against, or None when there was none to check.
    """
    name = base_model or split.adapter_config.get("base_model_name_or_path")
    if not name:
        return None
    try:
        model_path = resolve_model_path(name)
    except FileNotFoundError:
        if base_model:
            raise
        return None
    config = AutoConfig.from_pretrained(model_path, local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
        add_tokens_for_trainable_params(skeleton, load_tokenizer(model_path), split.trainable)  # LongLoRA's [PAD] row
    check_trainable_params(skeleton, split.trainable, split.source)
    try:
        lora_config = PeftConfig.from_peft_type(**split.adapter_config)
    except Exception as error:  # unknown fields or PEFT types fail inside PEFT in several ways
        raise ValueError(f"the {ADAPTER_CONFIG_FILE} of {split.source} is not a PEFT adapter config ({error})") from None
    check_adapter_weights(split.adapter, adapter_weight_shapes(config, lora_config), split.source)
    return name


def check_split_outputs(checkpoint: str | Path, output_dir: str | Path, trainable_params: str, overwrite: bool) -> bool:
    """Before anything is read, check the files `write_split_checkpoint` will write as outputs: never a
    file being read, never an existing file unless `overwrite`, in a writable folder.

    Returns False when there is nothing to write: `output_dir` is an already split checkpoint itself
    (rewriting its files could only lose weights that --trainable_params leaves out).
    """
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    in_place = output_dir.is_dir() and os.path.samefile(checkpoint, output_dir)
    if checkpoint_layout(checkpoint) == "split":
        if in_place:
            return False
        read = [checkpoint / name for name in (*ADAPTER_WEIGHTS_FILES, TRAINABLE_PARAMS_FILE, LONGLORA_TRAINABLE_PARAMS_FILE)]
    else:
        read = []
    if in_place:  # LongLoRA's default: the split files go into the checkpoint they are read from, replacing
        return True  # the Trainer's own copies of the same weights (adapter_config.json is the one read)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder")
    names = [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE] + ([TRAINABLE_PARAMS_FILE] if parse_names(trainable_params) else [])
    for name in names:
        check_output_file("--output_dir", output_dir / name, {"--checkpoint_path": read}, overwrite)
    return True


def write_split_checkpoint(split: SplitCheckpoint, output_dir: str | Path) -> list[Path]:
    """Write adapter_model.safetensors, adapter_config.json and trainable_params.safetensors, each atomically."""
    output_dir = Path(output_dir)
    written = [
        save_safetensors_atomic(split.adapter, output_dir / ADAPTER_WEIGHTS_FILE),
        write_json_atomic(output_dir / ADAPTER_CONFIG_FILE, split.adapter_config),
    ]
    if split.trainable:
        written.append(save_safetensors_atomic(split.trainable, output_dir / TRAINABLE_PARAMS_FILE))
    return written
