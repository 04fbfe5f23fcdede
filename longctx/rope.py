"""RoPE scaling: rescale rotary positions so a model reads past its pretraining window.

transformers 5 keeps RoPE settings in `config.rope_parameters` (LongLoRA's
`config.rope_scaling = {"type": "linear", ...}` crashes there); this module is the one place that
writes them. Methods:

- linear: position interpolation (Chen et al. 2023, "Extending Context Window of Large Language
  Models via Positional Interpolation"), with LongLoRA's integer factor rule.
- dynamic: dynamic NTK scaling (bloc97 / emozilla 2023): the base grows with the current length.
- yarn: YaRN (Peng et al. 2023), per-frequency ramp between interpolation and extrapolation plus an
  attention temperature.
- llama3: Llama 3.1's smooth per-wavelength interpolation.
- theta: NTK-aware base change (bloc97 2023; Gradient's long Llama-3 models raise rope_theta):
  base' = base * factor ** (dim / (dim - 2)), no other change.

Where the window is recorded: linear and dynamic keep `max_position_embeddings` at the original
length (transformers' dynamic formula reads it as the original), so the usable window is
max_position_embeddings x factor. yarn and llama3 follow Llama 3.1's convention: the original goes in
`rope_parameters["original_max_position_embeddings"]` and `max_position_embeddings` becomes the new
window. theta records nothing but the base, so `max_position_embeddings` becomes the new window.
`context_window(config)` reads all of these back.
"""

from __future__ import annotations

import math

ROPE_METHODS = ("none", "linear", "dynamic", "yarn", "llama3", "theta")
_FACTOR_TYPES = ("linear", "dynamic")
_ORIGINAL_WINDOW_TYPES = ("yarn", "llama3", "longrope")


def rope_parameters(config) -> dict:
    """A copy of the config's (single, not per-layer) RoPE parameters in transformers 5's format."""
    if hasattr(config, "standardize_rope_params"):
        config.standardize_rope_params()
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    parameters.setdefault("rope_type", "default")
    if "rope_theta" not in parameters:
        parameters["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return parameters


def rotary_dim(config) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head_dim * rope_parameters(config).get("partial_rotary_factor", 1.0))


def original_window(config) -> int:
    """The pretraining window before any scaling this config carries."""
    parameters = rope_parameters(config)
    if parameters["rope_type"] in _ORIGINAL_WINDOW_TYPES and parameters.get("original_max_position_embeddings"):
        return int(parameters["original_max_position_embeddings"])
    return int(config.max_position_embeddings)


def context_window(config) -> int:
    """The number of tokens the (possibly extended) config is meant to read."""
    parameters = rope_parameters(config)
    if parameters["rope_type"] in _FACTOR_TYPES:
        return int(config.max_position_embeddings * parameters.get("factor", 1.0))
    if parameters["rope_type"] in _ORIGINAL_WINDOW_TYPES:
        scaled = original_window(config) * parameters.get("factor", 1.0)
        return int(max(config.max_position_embeddings, scaled))
    return int(config.max_position_embeddings)


def _set(config, parameters: dict, max_position_embeddings: int | None = None):
    config.rope_parameters = parameters
    if max_position_embeddings is not None:
        config.max_position_embeddings = int(max_position_embeddings)
    if hasattr(config, "validate_rope"):
        config.validate_rope()
    return config


def extend_context(config, context_size: int, method: str = "linear", **options):
    """Write RoPE scaling for `context_size` tokens into `config.rope_parameters`; returns the config.

    A config whose window already covers `context_size` is returned unchanged. `options` override the
    method's settings: `factor` for all, `rope_theta` for theta, and transformers' own keys
    (`beta_fast`, `beta_slow`, `attention_factor`, `low_freq_factor`, `high_freq_factor`, ...).
    """
    if method not in ROPE_METHODS:
        raise ValueError(f"unknown RoPE method {method!r}; choose one of {', '.join(ROPE_METHODS)}")
    if context_size <= 0:
        raise ValueError(f"context size must be positive (got {context_size})")
    if "factor" in options and options["factor"] is not None and options["factor"] < 1:
        raise ValueError(f"RoPE factor must be at least 1 (got {options['factor']})")
    if method == "none" or (context_size <= context_window(config) and "factor" not in options and "rope_theta" not in options):
        return config
    parameters = rope_parameters(config)
    base = parameters["rope_theta"]
    keep = {key: parameters[key] for key in ("rope_theta", "partial_rotary_factor") if key in parameters}
    factor = options.pop("factor", None)

    if method == "linear":
        # LongLoRA: factor = ceil(context / (max_position_embeddings x existing factor)), on top of the existing one
        existing = parameters.get("factor", 1.0) if parameters["rope_type"] == "linear" else 1.0
        if factor is None:
            factor = existing * math.ceil(context_size / (config.max_position_embeddings * existing))
        return _set(config, {**keep, "rope_type": "linear", "factor": float(factor)})
    if method == "dynamic":
        factor = factor or context_size / config.max_position_embeddings
        return _set(config, {**keep, "rope_type": "dynamic", "factor": float(factor)})
    if method == "theta":
        new_base = options.pop("rope_theta", None)
        if new_base is None:
            factor = factor or context_size / config.max_position_embeddings
            dim = rotary_dim(config)
            new_base = base * factor ** (dim / (dim - 2))
        return _set(config, {**keep, "rope_type": "default", "rope_theta": float(new_base)}, max(context_size, config.max_position_embeddings))

    original = original_window(config)
    factor = float(factor or context_size / original)
    if method == "yarn":
        new = {**keep, "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    else:  # llama3; Llama 3.1's published defaults
        new = {**keep, "rope_type": "llama3", "factor": factor, "original_max_position_embeddings": original,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    new.update(options)
    return _set(config, new, max(context_size, int(original * factor)))
