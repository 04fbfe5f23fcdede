"""LoRA+ (LongLoRA): LoRA on the attention projections plus trainable embeddings and norms.

LongLoRA found plain LoRA cannot close the gap to full fine-tuning for context extension; making the
embedding and normalisation layers trainable (a few percent of the parameters) does. Those extra
weights are not part of a PEFT adapter, so they are saved beside it as `trainable_params.safetensors`
under the base model's own parameter names, which load straight into the base model.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from longctx.internals import quiet_known_library_noise

quiet_known_library_noise()  # before PEFT imports bitsandbytes; see longctx.internals

# longctx's modules take PEFT's names from here, so the line above runs before PEFT is first imported
from peft import (  # noqa: E402
    LoraConfig,
    PeftConfig,  # noqa: F401 - for longctx.adapter_fit
    PeftModel,
    get_peft_model,
    inject_adapter_in_model,  # noqa: F401 - for longctx.adapter_fit
    prepare_model_for_kbit_training,
)
from safetensors.torch import load_file, save_file  # noqa: E402

from longctx.errors import first_line  # noqa: E402
from longctx.io import atomic_file  # noqa: E402
from longctx.pickles import check_pickle  # noqa: E402
from longctx.wrappers import unwrap_model  # noqa: E402

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
TRAINABLE_PARAMS_FILE = "trainable_params.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # what PEFT writes, newest first
LONGLORA_TRAINABLE_PARAMS_FILE = "trainable_params.bin"  # what LongLoRA's get_trainable_weights.py writes

# How PEFT names things. A PeftModel's parameter is `base_model.model.<base name>`; LoRA adds
# `<layer>.lora_A.<adapter>.weight` and moves the layer's own weight to `<layer>.base_layer.weight`;
# on disk the adapter name is dropped (`<layer>.lora_A.weight`). Training wrappers add a leading
# `module.` (DDP, DeepSpeed) or `_orig_mod.` (torch.compile).
PEFT_PREFIX = ("base_model", "model")
LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")
WRAPPER_PARTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def parse_names(names: str | list[str] | None) -> list[str]:
    """'embed,norm' -> ['embed', 'norm']; empty strings and None give []."""
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    return [name.strip() for name in names if name.strip()]


def attention_lora_targets(config) -> list[str]:
    """LoRA's default targets, the attention projections: q/k/v/o_proj, or GPT-NeoX's (LongLoRA's choice there)."""
    if getattr(config, "model_type", None) == "gpt_neox":
        return ["query_key_value", "dense"]  # LongLoRA adds `dense` so GPT-NeoX's output projection trains as Llama's
    return list(ATTENTION_PROJECTIONS)


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


def parse_parameter_name(name: str) -> tuple[str, str, str | None]:
    """Classify a (possibly PEFT-wrapped) parameter name by its dotted structure.

    Returns (kind, key, adapter_name):
    - ("lora", PEFT's on-disk adapter key, e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`,
      the adapter name found in memory or None);
    - ("base", the base model's parameter name, e.g. `model.layers.0.self_attn.q_proj.weight`, None);
    - ("copy", name, None) for PEFT's frozen `original_module` copies, which belong to neither.
    """
    parts = [part for part in name.split(".") if part not in WRAPPER_PARTS]
    while parts and parts[0] == "module":
        parts = parts[1:]
    if tuple(parts[:2]) == PEFT_PREFIX:
        parts = parts[2:]
    for index, part in enumerate(parts):
        if part in LORA_PARTS:
            module, rest = parts[:index], parts[index + 1 :]
            adapter_name = None
            if rest and rest[0] not in ("weight", "bias"):  # in memory: lora_A.<adapter>.weight
                adapter_name, rest = rest[0], rest[1:]
            return "lora", ".".join([*PEFT_PREFIX, *module, part, *rest]), adapter_name
        if part == "original_module":
            return "copy", name, None
        if part == "modules_to_save":  # PEFT's trained copy of a whole module: <module>.modules_to_save.<adapter>.*
            parts = parts[:index] + parts[index + 2 :]
            break
    return "base", ".".join(part for part in parts if part != "base_layer"), None


def base_parameter_name(name: str) -> str:
    """The base model's name for a parameter of a model with LoRA layers injected (drops `base_layer`)."""
    kind, key, _ = parse_parameter_name(name)
    return key if kind == "base" else name


def setup_lora(
    model,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target: str | list[str] = "q_proj,k_proj,v_proj,o_proj",
    trainable_params: str | list[str] = "embed,norm",
    continue_from: str | Path | None = None,
):
    """Wrap `model` for LoRA+ training: a PEFT LoRA adapter plus the named full-rank parameters.

    `continue_from`: an adapter folder whose LoRA keeps training (its own rank and targets) instead of a
    fresh one (longctx.stages, continue mode).

    A 4-bit (QLoRA) model is first prepared by PEFT's `prepare_model_for_kbit_training` (non-quantized
    weights in float32, everything frozen); gradient checkpointing stays with the Trainer's flags.
    The embeddings and norms then train at full precision as in LoRA+ (LongQLoRA).
    """
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(target),
        bias="none",
        task_type="CAUSAL_LM",
    )
    if continue_from is not None:
        model = PeftModel.from_pretrained(model, str(continue_from), is_trainable=True)
    else:
        model = get_peft_model(model, config)
    mark_trainable(model, trainable_params)
    return model


def _trainable_non_lora_parameters(model):
    return (
        (name, parameter)
        for name, parameter in unwrap_model(model).named_parameters()
        if parameter.requires_grad and "lora_" not in name
    )


def has_trainable_params(model) -> bool:
    """Whether LoRA+ trains full-rank weights beside the adapter (cheap: copies nothing)."""
    return any(True for _ in _trainable_non_lora_parameters(model))


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """Trainable non-LoRA weights under the base model's parameter names (e.g. model.norm.weight)."""
    return {
        base_parameter_name(name): parameter.detach().cpu().contiguous()
        for name, parameter in _trainable_non_lora_parameters(model)
    }


def save_safetensors_atomic(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a safetensors file through a temporary sibling, so a crash never leaves half a file."""
    # clone: tied weights share storage, which safetensors refuses to write twice
    tensors = {name: tensor.clone().contiguous() for name, tensor in state.items()}
    with atomic_file(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    return Path(path)


def save_trainable_params(model, folder: str | Path) -> Path | None:
    """Write `trainable_params.safetensors` into `folder` (nothing when LoRA alone is trained).

    Under DeepSpeed ZeRO-3 each process holds only a slice of the larger weights (empty tensors
    here); no file is written then, rather than one that silently lacks the embeddings:
    get_trainable_weights.py rebuilds them from the DeepSpeed checkpoint.
    """
    state = trainable_state_dict(model)
    if not state:
        return None
    partitioned = [name for name, tensor in state.items() if tensor.numel() == 0]
    if partitioned:
        warnings.warn(
            f"{partitioned[0]} is partitioned by ZeRO-3, so {TRAINABLE_PARAMS_FILE} is not written to {folder}; "
            "run get_trainable_weights.py on the checkpoint to rebuild it",
            stacklevel=2,
        )
        return None
    return save_safetensors_atomic(state, Path(folder) / TRAINABLE_PARAMS_FILE)


def trainable_params_path(folder: str | Path) -> Path | None:
    """The trainable params file in an adapter folder: ours, else LongLoRA's `trainable_params.bin`."""
    for name in (TRAINABLE_PARAMS_FILE, LONGLORA_TRAINABLE_PARAMS_FILE):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or a PyTorch .bin file (tensors only, never arbitrary pickles)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        check_pickle(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torn, truncated or foreign files fail in many library-specific ways
        reason = first_line(error)
        raise ValueError(f"cannot read {path}: {reason}") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"cannot read {path}: it is not a state dict of tensors")
    return state


def _across_layers(name: str) -> str:
    """`model.layers.3.input_layernorm.weight` -> `model.layers.*.input_layernorm.weight`."""
    return re.sub(r"\.\d+\.", ".*.", name)


def check_trainable_params(model, state: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.nn.Parameter]:
    """Every name must exist in the base model with the same shape, and a weight saved for some layers must
    be there for all of them (a file from a model with fewer layers would load half); returns the parameters."""
    parameters = {base_parameter_name(name): p for name, p in unwrap_model(model).named_parameters()}
    for name, tensor in state.items():
        if name not in parameters:
            raise ValueError(f"{source}: parameter {name} does not exist in this model")
        if parameters[name].shape != tensor.shape:
            raise ValueError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the model has {tuple(parameters[name].shape)}"
            )
    saved = {_across_layers(name) for name in state}
    missing = [name for name in parameters if _across_layers(name) in saved and name not in state]
    if missing:
        raise ValueError(
            f"{source} lacks {missing[0]}, which it holds for other layers (from a model with fewer layers?)"
        )
    return parameters


def load_trainable_params(model, path: str | Path) -> list[str]:
    """Load a `trainable_params.safetensors` file (or the one in a folder) into the base model.

    A folder may hold LongLoRA's `trainable_params.bin` instead. Every name must exist with the same
    shape, so weights from another base model fail loudly.
    """
    path = Path(path)
    if path.is_dir():
        path = trainable_params_path(path) or path / TRAINABLE_PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"trainable params file not found: {path}")
    state = read_weights_file(path)
    parameters = check_trainable_params(model, state, path)
    with torch.no_grad():
        for name, tensor in state.items():
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
