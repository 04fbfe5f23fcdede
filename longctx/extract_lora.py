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

    python -m longctx.extract_lora --base smollm2 --tuned outputs/smollm2-16k-full --rank 32 \
        --save_path outputs/smollm2-16k-lora32
    python merge_lora_weights_and_save_hf_model.py --base_model smollm2 \
        --peft_model outputs/smollm2-16k-lora32 --context_size 16384 --save_path outputs/smollm2-16k-again
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from longctx.cli import parse_dataclasses, run_cli
from longctx.io import atomic_folder, write_json_atomic
from longctx.lora import PEFT_PREFIX, TRAINABLE_PARAMS_FILE, parse_names, save_safetensors_atomic
from longctx.modeling import DTYPES, parse_dtype, resolve_model_path
from longctx.outputs import check_output_folder
from longctx.rope import context_window, rope_parameters

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


@dataclass
class Arguments:
    base: str = field(metadata={"help": "base model: 'smollm2', a local HF folder or a cached hub id"})
    tuned: str = field(metadata={"help": "the fully fine-tuned model (same architecture as --base)"})
    save_path: str = field(metadata={"help": "new folder for the adapter"})
    rank: int = field(default=32, metadata={"help": "LoRA rank r"})
    target: str = field(default="all-linear", metadata={"help": "linear layers to factor: all-linear or leaf names"})
    trainable_params: str = field(
        default="embed,norm", metadata={"help": "changed non-linear weights kept at full rank ('' for none)"}
    )
    dtype: str = field(default="float32", metadata={"help": f"dtype of the saved factors: {', '.join(DTYPES)}"})

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"--rank must be positive (got {self.rank})")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype} is not one of {', '.join(DTYPES)}")


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_dataclasses((Arguments,), __doc__, argv)
    save_path = check_output_folder("--save_path", args.save_path, {"--base": args.base, "--tuned": args.tuned})
    base, tuned = load_weights(args.base), load_weights(args.tuned)
    adapter, trainable, config, errors, left_out = extract_lora(
        base, tuned, args.rank, args.target, args.trainable_params, parse_dtype(args.dtype)
    )
    config.base_model_name_or_path = args.base
    report = {
        "base": args.base,
        "tuned": args.tuned,
        "rank": args.rank,
        "tuned_context_window": context_window(tuned.config),
        "tuned_rope_parameters": rope_parameters(tuned.config),
        "trainable_params": sorted(trainable),
        "changed_but_left_out": left_out,
        "layers": [asdict(error) for error in errors],
    }
    save_extracted(save_path, adapter, trainable, config, report)
    width = max(len(error.name) for error in errors)
    print(f"{'layer':<{width}}  {'shape':>11}  rank  relative error")
    for error in errors:
        shape = "x".join(map(str, error.shape))
        print(f"{error.name:<{width}}  {shape:>11}  {error.rank:>4}  {error.relative_error:.3e}")
    worst = max(errors, key=lambda error: error.relative_error)
    print(f"worst relative error {worst.relative_error:.3e} ({worst.name}); {len(trainable)} weights kept at full rank")
    if left_out:
        print(f"warning: {len(left_out)} changed weights not captured (e.g. {left_out[0]}); "
              "see --target and --trainable_params")
    print(
        f"saved to {save_path}; merge with --context_size {report['tuned_context_window']} "
        f"(the tuned model's RoPE: {report['tuned_rope_parameters']})"
    )


if __name__ == "__main__":
    run_cli(main)
