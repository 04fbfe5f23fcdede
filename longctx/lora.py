"""LoRA+ (LongLoRA): LoRA on the attention projections plus trainable embeddings and norms.

LongLoRA found plain LoRA cannot close the gap to full fine-tuning for context extension; making the
embedding and normalisation layers trainable (a few percent of the parameters) does. Those extra
weights are not part of a PEFT adapter, so they are saved beside it as `trainable_params.safetensors`
under the base model's own parameter names, which load straight into the base model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
TRAINABLE_PARAMS_FILE = "trainable_params.safetensors"


def parse_names(names: str | list[str] | None) -> list[str]:
    """'embed,norm' -> ['embed', 'norm']; empty strings and None give []."""
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    return [name.strip() for name in names if name.strip()]


def lora_target_modules(target: str | list[str]) -> str | list[str]:
    """`all-linear` passes through to PEFT (every linear layer but the output head); else a name list."""
    if target == "all-linear":
        return target
    return parse_names(target) or ATTENTION_PROJECTIONS


def mark_trainable(model: torch.nn.Module, trainable_params: str | list[str]) -> list[str]:
    """Unfreeze every parameter whose name contains one of the given substrings; returns their names.

    Tied input/output embeddings are one tensor, so training `embed` trains the output head too.
    """
    keys = parse_names(trainable_params)
    names = []
    for name, parameter in model.named_parameters():
        if any(key in name for key in keys) and "lora_" not in name:
            parameter.requires_grad_(True)
            names.append(name)
    if keys and not names:
        raise ValueError(f"--trainable_params {','.join(keys)} matches no parameter of this model")
    return names


def setup_lora(
    model,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target: str | list[str] = "q_proj,k_proj,v_proj,o_proj",
    trainable_params: str | list[str] = "embed,norm",
):
    """Wrap `model` for LoRA+ training: a PEFT LoRA adapter plus the named full-rank parameters."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(target),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    mark_trainable(model, trainable_params)
    return model


def base_model_of(model) -> torch.nn.Module:
    """The transformers model under PEFT (or the model itself when it is not wrapped)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """Trainable non-LoRA weights under the base model's parameter names (e.g. model.norm.weight)."""
    return {
        name: parameter.detach().cpu().contiguous()
        for name, parameter in base_model_of(model).named_parameters()
        if parameter.requires_grad and "lora_" not in name
    }


def save_trainable_params(model, folder: str | Path) -> Path | None:
    """Write `trainable_params.safetensors` into `folder` (nothing when LoRA alone is trained)."""
    state = trainable_state_dict(model)
    if not state:
        return None
    path = Path(folder) / TRAINABLE_PARAMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    save_file(state, str(temporary), metadata={"format": "pt"})
    temporary.replace(path)
    return path


def load_trainable_params(model, path: str | Path) -> list[str]:
    """Load a `trainable_params.safetensors` file (or the one in a folder) into the base model.

    Every name must exist with the same shape, so weights from another base model fail loudly.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TRAINABLE_PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"trainable params file not found: {path}")
    state = load_file(str(path))
    parameters = dict(base_model_of(model).named_parameters())
    for name, tensor in state.items():
        if name not in parameters:
            raise ValueError(f"{path}: parameter {name} does not exist in this model")
        if parameters[name].shape != tensor.shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the model has {tuple(parameters[name].shape)}"
            )
        with torch.no_grad():
            parameters[name].copy_(tensor)
    return list(state)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied tensors counted once."""
    seen, trainable, total = set(), 0, 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total
