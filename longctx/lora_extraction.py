"""LoRA extraction: turn a fully fine-tuned model into a rank-r adapter by truncated SVD of weight deltas.

For each linear layer the delta W_tuned - W_base (out x in) is factored as U S V^T; keeping the r
largest singular values gives the best rank-r approximation in Frobenius norm (Eckart-Young), whose
relative error is sqrt(sum_{i>r} s_i^2 / sum_i s_i^2). The factors are split evenly, B = U_r S_r^1/2
and A = S_r^1/2 V_r^T, with lora_alpha = r so PEFT's scale alpha / r is 1. This is how the rank-32
Llama-3 1048k adapter was cut from Gradient's fully fine-tuned model (mergekit's extract_lora).

Weights outside linear layers (embeddings, norms, an untied output head) that changed are kept at full
rank in trainable_params.safetensors, the LoRA+ layout, so merging gives back the tuned model up to
the discarded singular values. Layers with fewer than r rows or columns are stored exactly (their
factors are zero-padded to r). The SVD runs in float64; a full-rank delta comes back with a relative
error below 1e-6 once stored in float32.

The command line is `python -m longctx.extract_lora`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from longctx.io import atomic_folder, write_json_atomic
from longctx.lora import PEFT_PREFIX, TRAINABLE_PARAMS_FILE, LoraConfig, parse_names, save_safetensors_atomic
from longctx.modeling import resolve_model_path

REPORT_FILE = "extraction_report.json"


@dataclass
class LayerError:
    name: str
    shape: tuple[int, int]
    rank: int  # singular values kept: min(r, out, in)
    relative_error: float  # ||delta - B A||_F / ||delta||_F, measured on the stored factors
    discarded: float  # the same predicted from the singular values left out (Eckart-Young)
    delta_norm: float


def low_rank_factors(
    delta: torch.Tensor, rank: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """delta (out, in) -> (A (rank, in), B (out, rank), singular values kept, predicted relative error)."""
    left, singular, right = torch.linalg.svd(delta.double(), full_matrices=False)
    kept = min(rank, singular.numel())
    root = singular[:kept].sqrt()
    lora_a = torch.zeros(rank, delta.shape[1], dtype=torch.float64)
    lora_b = torch.zeros(delta.shape[0], rank, dtype=torch.float64)
    lora_a[:kept] = root[:, None] * right[:kept]  # (kept, in)
    lora_b[:, :kept] = left[:, :kept] * root  # (out, kept)
    total = singular.square().sum()
    discarded = (singular[kept:].square().sum() / total).sqrt().item() if total > 0 else 0.0
    return lora_a.to(dtype).contiguous(), lora_b.to(dtype).contiguous(), kept, discarded


def target_linear_layers(model, target: str | list[str]) -> dict[str, torch.nn.Linear]:
    """Linear layers to factor: all of them but the output head (`all-linear`), or those with the given leaf names."""
    head = model.get_output_embeddings()
    names = None if target == "all-linear" else set(parse_names(target))
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not head
        and (names is None or name.split(".")[-1] in names)
    }
    if not layers:
        raise ValueError(f"--target {target} matches no linear layer of the base model")
    return layers


def extract_lora(
    base_model: torch.nn.Module,
    tuned_model: torch.nn.Module,
    rank: int,
    target: str | list[str] = "all-linear",
    trainable_params: str | list[str] = "embed,norm",
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], LoraConfig, list[LayerError], list[str]]:
    """(adapter weights, trainable params, LoRA config, per-layer errors, changed weights left out)."""
    if rank <= 0:
        raise ValueError(f"--rank must be positive (got {rank})")
    tuned_parameters = dict(tuned_model.named_parameters())
    layers = target_linear_layers(base_model, target)
    adapter, errors, covered = {}, [], set()
    for name, layer in layers.items():
        tuned_weight = tuned_parameters.get(f"{name}.weight")
        if tuned_weight is None or tuned_weight.shape != layer.weight.shape:
            found = "missing" if tuned_weight is None else f"shaped {tuple(tuned_weight.shape)}"
            raise ValueError(
                f"the tuned model does not match the base: {name}.weight is {found}, "
                f"the base has {tuple(layer.weight.shape)}"
            )
        delta = tuned_weight.detach().double() - layer.weight.detach().double()
        lora_a, lora_b, kept, discarded = low_rank_factors(delta, rank, dtype)
        norm = delta.norm().item()
        measured = ((delta - lora_b.double() @ lora_a.double()).norm().item() / norm) if norm > 0 else 0.0
        prefix = ".".join([*PEFT_PREFIX, name])
        adapter[f"{prefix}.lora_A.weight"] = lora_a
        adapter[f"{prefix}.lora_B.weight"] = lora_b
        errors.append(LayerError(name, tuple(layer.weight.shape), kept, measured, discarded, norm))
        covered.add(f"{name}.weight")

    keys = parse_names(trainable_params)
    trainable, left_out = {}, []
    for name, parameter in base_model.named_parameters():
        if name in covered:
            continue
        tuned = tuned_parameters.get(name)
        if tuned is None or tuned.shape != parameter.shape:
            raise ValueError(f"the tuned model does not match the base: {name} is missing or shaped differently")
        if torch.equal(tuned, parameter):
            continue
        if any(key in name for key in keys):
            trainable[name] = tuned.detach().to(dtype).contiguous()
        else:
            left_out.append(name)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=sorted({name.split(".")[-1] for name in layers}),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return adapter, trainable, config, errors, left_out


def load_weights(model_name_or_path: str) -> torch.nn.Module:
    """The model alone, in float32 (no tokenizer needed: a tuned folder may have none)."""
    return AutoModelForCausalLM.from_pretrained(
        resolve_model_path(model_name_or_path), dtype=torch.float32, local_files_only=True
    ).eval()


def save_extracted(save_path: Path, adapter, trainable, config: LoraConfig, report: dict) -> Path:
    """Write the adapter folder through a temporary sibling, renamed into place only when complete."""
    with atomic_folder(save_path) as staging:
        save_safetensors_atomic(adapter, staging / "adapter_model.safetensors")
        config.save_pretrained(staging)
        if trainable:
            save_safetensors_atomic(trainable, staging / TRAINABLE_PARAMS_FILE)
        write_json_atomic(staging / REPORT_FILE, report)
    return save_path
