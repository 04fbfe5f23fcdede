"""RoPE scaling: rescale rotary positions so a model reads past its pretraining window.

transformers 5 keeps RoPE settings in `config.rope_parameters` (LongLoRA's
`config.rope_scaling = {"type": "linear", ...}` crashes there); this module is the one place that
writes them. Methods (`ROPE_METHODS`):

- linear: position interpolation (Chen et al. 2023, "Extending Context Window of Large Language
  Models via Positional Interpolation"), with LongLoRA's integer factor rule.
- dynamic: dynamic NTK scaling (emozilla 2023, after bloc97's NTK-aware RoPE): the base grows with
  the length of the sequence being read.
- yarn: YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language
  Models"): per-frequency ramp between interpolation and extrapolation, plus an attention temperature.
- llama3: Llama 3.1's RoPE (Meta 2024, "The Llama 3 Herd of Models"): low frequencies interpolated,
  high frequencies kept, a smooth blend between two wavelengths.
- theta: NTK-aware base change (bloc97 2023, "NTK-Aware Scaled RoPE"; Gradient's long-context Llama-3
  models raise rope_theta the same way): base' = base * factor ** (dim / (dim - 2)), nothing else.
- none: leave the config alone (so scripts can pass `--rope_method none`).

How the window is recorded, per rope type (`context_window` reads all of them back):

- linear, yarn, llama3, theta: `max_position_embeddings` becomes the new window, so generation and
  other tools see it. The pretraining window is kept where transformers expects it: in
  `rope_parameters["original_max_position_embeddings"]` for yarn and llama3, which read it there.
  linear and default rope reject that key (a warning on every load), so linear keeps it in the
  config attribute `original_max_position_embeddings` instead; it lets a second extension apply
  LongLoRA's rule to the pretraining window rather than to the already extended one. theta needs no
  record: the raised base is the whole change, and extensions compose on the current window.
- dynamic: `max_position_embeddings` stays the pretraining window, because transformers' dynamic
  NTK reads it as the original length (base' = base * (factor * seq_len / max_position_embeddings -
  (factor - 1)) ** (dim / (dim - 2)) once seq_len exceeds it); writing the new window there would
  leave the frequencies unscaled up to it. The usable window is max_position_embeddings * factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from numbers import Integral

import torch
from transformers import PreTrainedConfig

ROPE_METHODS = ("none", "linear", "dynamic", "yarn", "llama3", "theta")


@dataclass(frozen=True)
class RopeRequest:
    """The RoPE scaling a run asks for, before it meets a model or an adapter's training record.

    `method` None means not chosen: an adapter's record decides, else `with_default_method`; `factor`
    and `theta` None mean derived from the target length (`extend_context`).
    """

    method: str | None = None
    factor: float | None = None
    theta: float | None = None

    def options(self) -> dict:
        """`extend_context`'s keywords for the parameters given."""
        given = {"factor": self.factor, "rope_theta": self.theta}
        return {key: value for key, value in given.items() if value is not None}

    def with_default_method(self, dca: bool = False) -> RopeRequest:
        """The method when none is asked for: theta when a base is given, none under Dual Chunk Attention
        (it keeps every distance inside the window), else linear (LongLoRA's rule)."""
        if self.method is not None:
            return self
        return replace(self, method="theta" if self.theta is not None else "none" if dca else "linear")


def _method_options(method: str) -> tuple[str, ...]:
    """The `**options` each method accepts; anything else is a typo worth an error."""
    match method:
        case "yarn":
            return ("factor", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate")
        case "llama3":
            return ("factor", "low_freq_factor", "high_freq_factor")
        case "theta":
            return ("factor", "rope_theta")
        case _:
            return ("factor",)


def _rope_type(method: str) -> str:
    """The `rope_type` a method writes (theta only changes the base of plain RoPE)."""
    return "default" if method == "theta" else method


def rope_parameters(config: PreTrainedConfig) -> dict:
    """A copy of the config's RoPE parameters in transformers 5's flat format.

    Per-layer (nested) parameters, as in models mixing sliding and full attention, are refused: one
    factor for all layers would silently rescale layers that were never meant to be.
    """
    config.standardize_rope_params()
    parameters = getattr(config, "rope_parameters", None) or {}
    if config.nested_rope_parameter_keys(parameters):
        raise ValueError("per-layer rope_parameters are not supported; extend_context needs one RoPE for all layers")
    parameters = dict(parameters)
    parameters.setdefault("rope_type", "default")
    parameters.setdefault("rope_theta", getattr(config, "default_theta", 10_000.0))
    return parameters


def rotary_dim(config: PreTrainedConfig) -> int:
    """Number of rotated channels per head: head_dim times partial_rotary_factor."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = rope_parameters(config).get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None)
    return int(head_dim * (partial or 1.0))


def pretraining_window(config: PreTrainedConfig) -> int:
    """The window the rotary frequencies were trained for, before the scaling this config carries.

    A linear config without our record (LongLoRA's checkpoints never changed
    `max_position_embeddings`) counts `max_position_embeddings` as that window, as LongLoRA does.
    """
    parameters = rope_parameters(config)
    match parameters["rope_type"]:
        case "linear":
            original = getattr(config, "original_max_position_embeddings", None)
        case "yarn" | "llama3" | "longrope":
            original = parameters.get("original_max_position_embeddings")
        case _:
            original = None
    return int(original or config.max_position_embeddings)


def context_window(config: PreTrainedConfig) -> int:
    """The number of tokens a (possibly extended) config is meant to read; check `--seq_len` against it.

    The larger of `max_position_embeddings` and pretraining window x factor. This reads our own
    configs (where the two agree, except for dynamic, where only the product holds the new window)
    and others' alike: LongLoRA's (linear factor 8 on an unchanged 4096), Qwen's yarn recipe (factor
    4 on an unchanged 32768), Llama 3.1's (max_position_embeddings already 16x the original 8192).
    """
    factor = rope_parameters(config).get("factor") or 1.0
    return max(int(config.max_position_embeddings), round(pretraining_window(config) * factor))


def _check_request(config: PreTrainedConfig, context_size: int, method: str, options: dict) -> None:
    """Reject bad arguments before anything is written, each with one line naming what is allowed."""
    if method not in ROPE_METHODS:
        raise ValueError(f"unknown RoPE method {method!r}; choose one of {', '.join(ROPE_METHODS)}")
    if isinstance(context_size, bool) or not isinstance(context_size, Integral) or context_size <= 0:
        raise ValueError(f"context_size must be a positive integer (got {context_size!r})")
    if method == "none":
        return
    allowed = _method_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for RoPE method {method!r}; allowed: {', '.join(allowed)}"
        )
    if "factor" in options and not options["factor"] >= 1:
        raise ValueError(f"RoPE factor must be at least 1 (got {options['factor']})")
    if "factor" in options and "rope_theta" in options:
        raise ValueError("give the theta method either factor or rope_theta, not both")
    if "rope_theta" in options and not options["rope_theta"] > 0:
        raise ValueError(f"rope_theta must be positive (got {options['rope_theta']})")
    current = rope_parameters(config)["rope_type"]
    if current not in ("default", _rope_type(method)):
        raise ValueError(
            f"config already uses rope_type {current!r}; method {method!r} applies only to 'default' "
            f"or {_rope_type(method)!r} RoPE"
        )


def _linear(config: PreTrainedConfig, parameters: dict, context_size: int, options: dict) -> tuple[dict, int]:
    """Position interpolation with LongLoRA's rule, composed with any linear factor already there.

    LongLoRA writes factor = ceil(context / (max_position_embeddings x existing)), which replaces the
    existing factor and so shrinks the window whenever one was there (x2 then 4x context gives x2, a
    2x window). Interpolation composes by multiplication, so the factor written is existing x that
    ceil, and the window is pretraining window x factor >= context_size. `factor=` sets the total.
    """
    original = pretraining_window(config)
    existing = parameters.get("factor", 1.0) if parameters["rope_type"] == "linear" else 1.0
    factor = float(options.get("factor", existing * math.ceil(context_size / (original * existing))))
    config.original_max_position_embeddings = original
    return {**parameters, "rope_type": "linear", "factor": factor}, max(context_size, round(original * factor))


def _dynamic(config: PreTrainedConfig, parameters: dict, context_size: int, options: dict) -> tuple[dict, int]:
    """Dynamic NTK: factor = context / window; `max_position_embeddings` must stay the original (see module doc).

    transformers' formula gives the pure NTK ratio seq_len / window at factor 1 and a stronger one
    (factor^2 - factor + 1 at seq_len = factor x window) above it; factor is kept in its meaning of
    "reads factor x window tokens", so the window it implies must cover context_size.
    """
    original = int(config.max_position_embeddings)
    factor = float(options.get("factor", context_size / original))
    if round(original * factor) < context_size:
        raise ValueError(
            f"dynamic NTK factor {factor} covers {round(original * factor)} tokens, fewer than context_size "
            f"{context_size}; use factor >= {context_size / original}"
        )
    return {**parameters, "rope_type": "dynamic", "factor": factor}, original


def _yarn_or_llama3(
    config: PreTrainedConfig, parameters: dict, context_size: int, options: dict, rope_type: str
) -> tuple[dict, int]:
    """YaRN or Llama 3.1 RoPE: factor = context / pretraining window unless `factor=` is given.

    Defaults are the published ones (YaRN: beta_fast 32, beta_slow 1; Llama 3.1: low_freq_factor 1,
    high_freq_factor 4), written out so the saved config says what it does; settings already in a
    config of the same type are kept, options override both.
    """
    original = pretraining_window(config)
    factor = float(options.get("factor", context_size / original))
    if rope_type == "yarn":
        defaults = {"beta_fast": 32.0, "beta_slow": 1.0}
    else:
        defaults = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    same_type = parameters["rope_type"] == rope_type
    shared = ("rope_theta", "partial_rotary_factor")
    kept = {key: value for key, value in parameters.items() if same_type or key in shared}
    computed = {"rope_type": rope_type, "factor": factor, "original_max_position_embeddings": original}
    new = {**defaults, **kept, **options, **computed}
    if rope_type == "llama3" and not new["high_freq_factor"] > new["low_freq_factor"]:
        raise ValueError(
            f"llama3 RoPE needs high_freq_factor > low_freq_factor "
            f"(got {new['high_freq_factor']} and {new['low_freq_factor']})"
        )
    if rope_type == "yarn" and not new["beta_fast"] > new["beta_slow"]:
        raise ValueError(f"yarn RoPE needs beta_fast > beta_slow (got {new['beta_fast']} and {new['beta_slow']})")
    return new, max(context_size, round(original * factor))


def _theta(config: PreTrainedConfig, parameters: dict, context_size: int, options: dict) -> tuple[dict, int]:
    """NTK-aware base change: base' = base x factor^(dim / (dim - 2)), factor = context / current window.

    The exponent makes the lowest frequency exactly 1/factor of its old value (it interpolates like
    PI) while the highest stays put (it extrapolates), bloc97's argument. Base changes compose by
    multiplication, so a theta-extended config extends again from its current window. `rope_theta=`
    gives the new base directly (e.g. Gradient's published values).
    """
    window = context_window(config)
    if "rope_theta" in options:
        return {**parameters, "rope_type": "default", "rope_theta": float(options["rope_theta"])}, context_size
    factor = float(options.get("factor", context_size / window))
    dim = rotary_dim(config)
    new_theta = parameters["rope_theta"] * factor ** (dim / (dim - 2))
    return {**parameters, "rope_type": "default", "rope_theta": new_theta}, max(context_size, round(window * factor))


def extend_context(
    config: PreTrainedConfig, context_size: int, method: str = "linear", **options
) -> PreTrainedConfig:
    """Write RoPE scaling for `context_size` tokens into `config.rope_parameters`, in place; returns the config.

    The config is left unchanged when `method` is "none" or `context_window(config)` already covers
    `context_size` (so re-running on an extended checkpoint never scales twice). Otherwise
    `max_position_embeddings` becomes the new window, except for dynamic (see the module doc).
    `options`: `factor` (all methods: the factor written, relative to the pretraining window;
    theta: relative to the current window), `rope_theta` (theta), and transformers' keys for yarn
    (`beta_fast`, `beta_slow`, `attention_factor`, `mscale`, `mscale_all_dim`, `truncate`) and llama3
    (`low_freq_factor`, `high_freq_factor`). Options set to None count as not given. Bad values raise
    ValueError before anything is written, as does stacking one scaling type on another.
    """
    options = {key: value for key, value in options.items() if value is not None}
    _check_request(config, context_size, method, options)
    if method == "none" or context_size <= context_window(config):
        return config
    parameters = rope_parameters(config)
    match method:
        case "linear":
            new_parameters, max_positions = _linear(config, parameters, context_size, options)
        case "dynamic":
            new_parameters, max_positions = _dynamic(config, parameters, context_size, options)
        case "theta":
            new_parameters, max_positions = _theta(config, parameters, context_size, options)
        case _:
            new_parameters, max_positions = _yarn_or_llama3(config, parameters, context_size, options, method)
    config.rope_parameters = new_parameters
    config.max_position_embeddings = int(max_positions)
    config.validate_rope()
    return config


def rotate_by(states: torch.Tensor, shift: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Move RoPE'd `states` (batch, heads, seq, head_dim) by `shift[seq]` positions (Llama's rotate_half layout).

    RoPE rotations compose, R(a) R(b) = R(a + b): the streaming cache moves kept keys this way and
    Dual Chunk Attention moves queries to its other position sets.

    Pure rotation: the attention scaling some RoPE variants fold into cos/sin (YaRN) is already in the states.
    Only the first 2 * len(inv_freq) dimensions rotate (partial rotary models keep the rest as is).
    """
    rotary_dim = 2 * inv_freq.shape[0]
    angles = shift.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]  # (seq, rotary_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)  # (seq, rotary_dim)
    cos, sin = angles.cos().to(states.dtype), angles.sin().to(states.dtype)
    rotary, rest = states[..., :rotary_dim], states[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = torch.cat((-rotary[..., half:], rotary[..., :half]), dim=-1)
    return torch.cat((rotary * cos + rotated_half * sin, rest), dim=-1)
