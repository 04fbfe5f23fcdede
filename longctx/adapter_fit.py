"""Is an adapter made for this model? Checked before PEFT loads it, so a mismatch is one line, not a silent half-load.

PEFT loads a missing LoRA weight silently (that layer stays at zero: an adapter from a model with fewer
layers is applied to half the model) and a wrongly shaped one with a line per weight. Here the
adapter's weights are compared with the ones PEFT's own rules would put on the model (injected into a
skeleton on the meta device, nothing allocated), and the first mismatch is named with the file.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from longctx.errors import first_line
from longctx.lora import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILES,
    LoraConfig,
    PeftConfig,
    inject_adapter_in_model,
    parse_parameter_name,
    read_weights_file,
)
from longctx.wrappers import unwrap_model


def load_adapter_config(folder: str | Path) -> LoraConfig:
    """The adapter config of a PEFT folder; a missing or garbled file is one error naming it."""
    path = Path(folder) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: no {ADAPTER_CONFIG_FILE}")
    try:
        return PeftConfig.from_pretrained(str(folder))
    except Exception as error:  # JSON, unknown fields or PEFT types fail inside PEFT in several ways
        reason = first_line(error)
        raise ValueError(f"cannot read {path}: {reason}") from None


def read_adapter_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The adapter's weights under PEFT's on-disk names (`read_weights_file`: a torn file is one error naming it)."""
    for name in ADAPTER_WEIGHTS_FILES:
        if (Path(folder) / name).is_file():
            return read_weights_file(Path(folder) / name)
    raise FileNotFoundError(f"{folder} holds no adapter weights ({' or '.join(ADAPTER_WEIGHTS_FILES)})")


def adapter_weight_shapes(config, lora_config: LoraConfig) -> dict[str, tuple[int, ...]]:
    """PEFT's on-disk name and shape of every LoRA weight `lora_config` puts on a model built from `config`.

    PEFT itself injects the adapter into a skeleton on the meta device, so its own rules (target
    modules, layers_to_transform, rank_pattern) decide, and nothing is allocated or read.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    config.quantization_config = None  # a 4-bit base has the same logical shapes
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    inject_adapter_in_model(copy.deepcopy(lora_config), skeleton, low_cpu_mem_usage=True)
    shapes = {}
    for name, parameter in skeleton.named_parameters():
        kind, key, _ = parse_parameter_name(name)
        if kind == "lora":
            shapes[key] = tuple(parameter.shape)
    return shapes


def check_adapter_weights(
    state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], source: str | Path
) -> None:
    """An adapter must hold exactly the LoRA weights the model takes (`adapter_weight_shapes`), shaped alike.

    PEFT loads a missing weight silently (that LoRA layer stays at zero: an adapter from a model with
    fewer layers is applied to half the model) and wrong shapes with one line per weight; here either
    is one line naming the file and the first mismatch.
    """
    lora = {name: tensor for name, tensor in state.items() if parse_parameter_name(name)[0] == "lora"}
    if not lora:
        raise ValueError(f"{source}: the adapter holds no LoRA weights")
    for name, tensor in lora.items():
        if name not in shapes:
            raise ValueError(f"{source}: {name} has no place in this model (an adapter for another base model?)")
        if tuple(tensor.shape) != shapes[name]:
            raise ValueError(
                f"{source}: adapter built for another base model or LoRA rank: {name} has shape "
                f"{tuple(tensor.shape)}, this model takes {shapes[name]}"
            )
    missing = [name for name in shapes if name not in lora]
    if missing:
        raise ValueError(
            f"{source} holds {len(lora)} of the {len(shapes)} LoRA weights this model takes; {missing[0]} is missing "
            "(an adapter from a model with fewer layers, or other target modules?)"
        )


def check_adapter_fits(model, folder: str | Path) -> None:
    """Before PEFT loads the adapter in `folder` into `model`: readable, and made for this model."""
    shapes = adapter_weight_shapes(unwrap_model(model).config, load_adapter_config(folder))
    check_adapter_weights(read_adapter_weights(folder), shapes, folder)
