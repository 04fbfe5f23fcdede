"""RoPE scaling: the frequencies the model builds from an extended config, against references written here.

References follow the papers (PI: Chen et al. 2023; NTK-aware: bloc97 2023; YaRN: Peng et al. 2023;
Llama 3.1's RoPE) in float64 with math, not transformers' code; the comparisons use float32 tolerance.
"""

import logging
import math

import pytest
import torch
from transformers import AutoConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from longctx.rope import ROPE_METHODS, context_window, extend_context, rotary_dim
from tests.tiny_models import tiny_llama_config

DIM = 16  # the tiny config's head_dim: hidden 64 / 4 heads
BASE = 10000.0
SCALING_METHODS = [method for method in ROPE_METHODS if method != "none"]


def plain_inv_freq(base: float = BASE, dim: int = DIM) -> torch.Tensor:
    """theta_i = base^(-2i/dim), the unscaled RoPE frequencies (Su et al. 2021)."""
    return torch.tensor([base ** (-2 * i / dim) for i in range(dim // 2)], dtype=torch.float64)


def rotary(config, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """inv_freq and attention scaling as the model's rotary embedding holds them after reading `seq_len` tokens."""
    embedding = LlamaRotaryEmbedding(config)
    if seq_len is not None:  # dynamic scaling updates itself from the positions it sees
        embedding(torch.zeros(1, 1, 1), torch.arange(seq_len)[None])
    return embedding.inv_freq.double(), embedding.attention_scaling


def assert_freqs(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0.0)


def smollm2_shaped_config(**overrides):
    """Head dim 64, rope_theta 1e5, 8192 positions: SmolLM2's RoPE in a model too small to matter."""
    settings = dict(hidden_size=256, max_position_embeddings=8192)
    settings.update(overrides)
    config = tiny_llama_config(**settings)
    config.rope_parameters = {"rope_theta": 100000.0, "rope_type": "default"}
    return config


# --- linear: position interpolation ---------------------------------------------------------------


def test_linear_factor_is_the_ceil_of_the_ratio():
    config = extend_context(tiny_llama_config(), 150, "linear")  # 150 / 64 = 2.34 -> 3
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 3.0
    assert config.max_position_embeddings == 192 and config.original_max_position_embeddings == 64
    assert context_window(config) == 192
    inv_freq, scaling = rotary(config)
    assert_freqs(inv_freq, plain_inv_freq() / 3)
    assert scaling == 1.0


def test_linear_interpolates_positions():
    """PI: position p of the extended model looks exactly like position p / factor of the original."""
    extended = LlamaRotaryEmbedding(extend_context(tiny_llama_config(), 256, "linear"))  # x4
    cos, sin = extended(torch.zeros(1, 1, 1), torch.tensor([[4 * 37 + 2]]))
    angles = (37 + 0.5) * plain_inv_freq()
    torch.testing.assert_close(cos[0, 0].double(), torch.cat([angles.cos(), angles.cos()]), rtol=0, atol=1e-5)
    torch.testing.assert_close(sin[0, 0].double(), torch.cat([angles.sin(), angles.sin()]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("context_size,factor", [(256, 4.0), (300, 6.0), (129, 4.0)])
def test_linear_on_a_longlora_checkpoint_with_a_factor(context_size, factor):
    """LongLoRA's configs keep max_position_embeddings at 64 with factor 2, so their window is 128.

    Its rule gives ceil(context / (64 x 2)) more interpolation; the factor written is 2 x that, so the
    window covers the context (LongLoRA writes the bare ceil, 2 for 256 tokens: a 128-token window).
    """
    config = tiny_llama_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": BASE})
    assert context_window(config) == 128
    assert extend_context(config, 128, "linear").max_position_embeddings == 64  # fits: untouched
    extend_context(config, context_size, "linear")
    assert config.rope_parameters["factor"] == factor
    assert context_window(config) == config.max_position_embeddings == 64 * factor >= context_size
    assert_freqs(rotary(config)[0], plain_inv_freq() / factor)


def test_linear_twice_counts_from_the_pretraining_window():
    config = extend_context(tiny_llama_config(), 128, "linear")  # x2, window 128
    extend_context(config, 512, "linear")  # ceil(512 / (64 x 2)) = 4 more: x8
    assert config.rope_parameters["factor"] == 8.0
    assert config.max_position_embeddings == context_window(config) == 512
    assert_freqs(rotary(config)[0], plain_inv_freq() / 8)


def test_linear_factor_option_sets_the_total_factor():
    config = extend_context(tiny_llama_config(), 100, "linear", factor=2.5)
    assert config.rope_parameters["factor"] == 2.5 and context_window(config) == 160
    assert_freqs(rotary(config)[0], plain_inv_freq() / 2.5)


# --- theta: NTK-aware base change -----------------------------------------------------------------


def test_theta_raises_the_base_only():
    config = extend_context(tiny_llama_config(), 256, "theta")  # factor 4
    new_base = BASE * 4 ** (DIM / (DIM - 2))
    assert config.rope_parameters["rope_type"] == "default"
    assert math.isclose(config.rope_parameters["rope_theta"], new_base, rel_tol=1e-12)
    assert config.max_position_embeddings == context_window(config) == 256
    inv_freq, scaling = rotary(config)
    assert_freqs(inv_freq, plain_inv_freq(new_base))
    assert scaling == 1.0
    # bloc97's point: the highest frequency extrapolates, the lowest is interpolated exactly like PI
    assert_freqs(inv_freq[:1], plain_inv_freq()[:1])
    assert_freqs(inv_freq[-1:], plain_inv_freq()[-1:] / 4)


def test_theta_on_smollm2_rope_and_explicit_base():
    config = extend_context(smollm2_shaped_config(), 32768, "theta")
    assert_freqs(rotary(config)[0], plain_inv_freq(1e5 * 4 ** (64 / 62), dim=64))
    explicit = extend_context(smollm2_shaped_config(), 32768, "theta", rope_theta=2e6)
    assert explicit.rope_parameters["rope_theta"] == 2e6 and context_window(explicit) == 32768
    assert_freqs(rotary(explicit)[0], plain_inv_freq(2e6, dim=64))


def test_theta_extensions_compose():
    once = extend_context(tiny_llama_config(), 512, "theta")
    twice = extend_context(extend_context(tiny_llama_config(), 128, "theta"), 512, "theta")
    assert math.isclose(once.rope_parameters["rope_theta"], twice.rope_parameters["rope_theta"], rel_tol=1e-12)
    assert twice.max_position_embeddings == 512


def test_theta_uses_the_rotary_dim():
    config = tiny_llama_config()
    config.rope_parameters = {"rope_theta": BASE, "rope_type": "default", "partial_rotary_factor": 0.5}
    assert rotary_dim(config) == 8
    extend_context(config, 128, "theta")
    assert math.isclose(config.rope_parameters["rope_theta"], BASE * 2 ** (8 / 6), rel_tol=1e-12)
    assert config.rope_parameters["partial_rotary_factor"] == 0.5


# --- dynamic NTK ----------------------------------------------------------------------------------


def dynamic_ntk_base(seq_len: int, window: int, factor: float, base: float = BASE, dim: int = DIM) -> float:
    """emozilla's dynamic NTK as transformers defines it: base x (f s / L - (f - 1))^(d / (d - 2)) for s > L."""
    ratio = factor * max(seq_len, window) / window - (factor - 1)
    return base * ratio ** (dim / (dim - 2))


def test_dynamic_keeps_the_original_window_in_max_position_embeddings():
    config = extend_context(tiny_llama_config(), 128, "dynamic")  # factor 2
    assert config.rope_parameters == {"rope_theta": BASE, "rope_type": "dynamic", "factor": 2.0}
    assert config.max_position_embeddings == 64 and context_window(config) == 128
    assert_freqs(rotary(config)[0], plain_inv_freq())  # within the pretraining window: untouched
    assert_freqs(rotary(config, 50)[0], plain_inv_freq())
    # past 64 tokens the base grows; with 128 in max_position_embeddings this would stay unscaled up to 128
    for seq_len in (100, 128, 200):
        assert_freqs(rotary(config, seq_len)[0], plain_inv_freq(dynamic_ntk_base(seq_len, 64, 2.0)))
    assert dynamic_ntk_base(128, 64, 2.0) == BASE * 3 ** (DIM / (DIM - 2))  # f^2 - f + 1 at the target


def test_dynamic_returns_to_the_original_frequencies_on_short_inputs():
    embedding = LlamaRotaryEmbedding(extend_context(tiny_llama_config(), 128, "dynamic"))
    embedding(torch.zeros(1, 1, 1), torch.arange(200)[None])
    embedding(torch.zeros(1, 1, 1), torch.arange(10)[None])
    assert_freqs(embedding.inv_freq.double(), plain_inv_freq())


def test_dynamic_factor_must_cover_the_context():
    config = tiny_llama_config()
    with pytest.raises(ValueError, match="covers 96 tokens"):
        extend_context(config, 200, "dynamic", factor=1.5)
    assert extend_context(config, 200, "dynamic", factor=4).rope_parameters["factor"] == 4.0
    assert context_window(config) == 256


# --- YaRN -----------------------------------------------------------------------------------------


def reference_yarn(factor, original, base, dim, beta_fast=32.0, beta_slow=1.0, truncate=True):
    """YaRN "NTK-by-parts" (Peng et al. 2023, section 3.2) and its temperature (section 3.4).

    r_i = L / lambda_i counts how many turns pair i makes over the original window L. Pairs turning
    more than beta_fast times keep their frequency, fewer than beta_slow are divided by the factor,
    and a linear ramp over the pair index blends between (the reference code rounds the ramp's
    ends outwards to whole pairs: `truncate`). sqrt(1/t) = 0.1 ln(s) + 1 scales cos and sin.
    """

    def pair_turning(turns):  # solve L / (2 pi base^(2i/d)) = turns for i
        return dim * math.log(original / (2 * math.pi * turns)) / (2 * math.log(base))

    low, high = pair_turning(beta_fast), pair_turning(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    freqs = []
    for i in range(dim // 2):
        theta = base ** (-2 * i / dim)
        interpolate = min(max((i - low) / (high - low), 0.0), 1.0)  # 0: extrapolate, 1: interpolate
        freqs.append((1 - interpolate) * theta + interpolate * theta / factor)
    return torch.tensor(freqs, dtype=torch.float64), 0.1 * math.log(factor) + 1.0


def test_yarn_ramp_and_temperature_on_smollm2_rope():
    config = extend_context(smollm2_shaped_config(), 32768, "yarn")  # factor 4 over 8192
    parameters = config.rope_parameters
    assert parameters["rope_type"] == "yarn" and parameters["factor"] == 4.0
    assert parameters["original_max_position_embeddings"] == 8192
    assert (parameters["beta_fast"], parameters["beta_slow"]) == (32.0, 1.0)
    assert config.max_position_embeddings == context_window(config) == 32768
    inv_freq, scaling = rotary(config)
    want, want_scaling = reference_yarn(4.0, 8192, 1e5, 64)
    assert_freqs(inv_freq, want)
    assert math.isclose(scaling, want_scaling, rel_tol=1e-9)
    # the three regimes of the paper are all present: kept, ramped, interpolated
    plain = plain_inv_freq(1e5, 64)
    turns = 8192 * plain / (2 * math.pi)
    assert_freqs(inv_freq[turns > 32], plain[turns > 32])
    assert_freqs(inv_freq[turns < 1], plain[turns < 1] / 4)
    ramped = (inv_freq < plain * (1 - 1e-4)) & (inv_freq > plain / 4 * (1 + 1e-4))
    assert ramped.sum() >= 5


def test_yarn_options_reach_the_model():
    config = extend_context(smollm2_shaped_config(), 65536, "yarn", beta_fast=16, beta_slow=2, truncate=False)
    want, want_scaling = reference_yarn(8.0, 8192, 1e5, 64, beta_fast=16, beta_slow=2, truncate=False)
    inv_freq, scaling = rotary(config)
    assert_freqs(inv_freq, want)
    assert math.isclose(scaling, want_scaling, rel_tol=1e-9)
    fixed = extend_context(smollm2_shaped_config(), 65536, "yarn", attention_factor=1.0)
    assert rotary(fixed)[1] == 1.0


# --- Llama 3.1 ------------------------------------------------------------------------------------


def reference_llama3(factor, original, base, dim, low_freq_factor=1.0, high_freq_factor=4.0):
    """Llama 3.1's apply_scaling: wavelengths under L / high kept, over L / low divided by the factor,
    and in between a blend whose weight grows linearly in L / wavelength."""
    freqs = []
    for i in range(dim // 2):
        theta = base ** (-2 * i / dim)
        wavelength = 2 * math.pi / theta
        if wavelength < original / high_freq_factor:
            freqs.append(theta)
        elif wavelength > original / low_freq_factor:
            freqs.append(theta / factor)
        else:
            smooth = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
            freqs.append((1 - smooth) * theta / factor + smooth * theta)
    return torch.tensor(freqs, dtype=torch.float64)


def test_llama3_at_llama_3_1_settings():
    """Llama 3.1 8B's RoPE: head dim 128, base 5e5, 8192 tokens, factor 8."""
    config = tiny_llama_config(hidden_size=512, max_position_embeddings=8192)
    config.rope_parameters = {"rope_theta": 500000.0, "rope_type": "default"}
    extend_context(config, 65536, "llama3")
    assert config.rope_parameters == {
        "rope_theta": 500000.0,
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    }
    assert config.max_position_embeddings == context_window(config) == 65536
    inv_freq, scaling = rotary(config)
    want = reference_llama3(8.0, 8192, 5e5, 128)
    assert_freqs(inv_freq, want)
    assert scaling == 1.0
    wavelengths = 2 * math.pi / plain_inv_freq(5e5, 128)
    blended = (wavelengths > 2048) & (wavelengths < 8192)
    assert (wavelengths < 2048).any() and (wavelengths > 8192).any() and blended.sum() >= 2


def test_llama3_options_reach_the_model():
    config = extend_context(smollm2_shaped_config(), 32768, "llama3", low_freq_factor=2.0, high_freq_factor=8.0)
    assert_freqs(rotary(config)[0], reference_llama3(4.0, 8192, 1e5, 64, low_freq_factor=2.0, high_freq_factor=8.0))


# --- the window, no-ops, errors -------------------------------------------------------------------


@pytest.mark.parametrize("method", ROPE_METHODS)
def test_no_change_when_the_context_fits(method):
    config = tiny_llama_config()
    before = config.to_dict()
    assert extend_context(config, 64, method) is config
    assert config.to_dict() == before


@pytest.mark.parametrize("method", SCALING_METHODS)
def test_extending_twice_to_the_same_length_changes_nothing(method):
    config = extend_context(tiny_llama_config(), 256, method)
    before = config.to_dict()
    extend_context(config, 256, method, factor=None)
    extend_context(config, 200, method)
    assert config.to_dict() == before


def test_none_ignores_the_length():
    config = tiny_llama_config()
    before = config.to_dict()
    extend_context(config, 10**6, "none", factor=3.0)
    assert config.to_dict() == before and context_window(config) == 64


@pytest.mark.parametrize(
    "max_positions,rope_parameters,window",
    [
        (4096, {"rope_type": "default", "rope_theta": BASE}, 4096),
        (4096, {"rope_type": "linear", "factor": 8.0, "rope_theta": BASE}, 32768),  # LongLoRA checkpoints
        (4096, {"rope_type": "dynamic", "factor": 2.0, "rope_theta": BASE}, 8192),
        (32768, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, 131072),  # Qwen
        (
            131072,
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "original_max_position_embeddings": 8192,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "rope_theta": 5e5,
            },
            131072,
        ),  # Llama 3.1
    ],
)
def test_context_window_of_published_configs(max_positions, rope_parameters, window):
    config = tiny_llama_config(max_position_embeddings=max_positions, rope_parameters=rope_parameters)
    assert context_window(config) == window


@pytest.mark.parametrize(
    "context_size,method,options,message",
    [
        (128, "magic", {}, "choose one of none, linear, dynamic, yarn, llama3, theta"),
        (0, "linear", {}, "positive integer"),
        (-5, "yarn", {}, "positive integer"),
        (128.5, "linear", {}, "positive integer"),
        (128, "yarn", {"factor": 0.5}, "at least 1"),
        (128, "linear", {"factor": 0.9}, "at least 1"),
        (128, "yarn", {"beta": 8}, "allowed: factor, beta_fast"),
        (128, "linear", {"beta_fast": 8}, "allowed: factor"),
        (128, "theta", {"factor": 2, "rope_theta": 1e6}, "not both"),
        (128, "theta", {"rope_theta": -1.0}, "positive"),
        (128, "llama3", {"low_freq_factor": 4.0, "high_freq_factor": 1.0}, "high_freq_factor > low_freq_factor"),
        (128, "yarn", {"beta_fast": 1, "beta_slow": 32}, "beta_fast > beta_slow"),
    ],
)
def test_bad_requests_raise_and_change_nothing(context_size, method, options, message):
    config = tiny_llama_config()
    before = config.to_dict()
    with pytest.raises(ValueError, match=message):
        extend_context(config, context_size, method, **options)
    assert config.to_dict() == before


@pytest.mark.parametrize("method", ["yarn", "llama3", "dynamic", "theta"])
def test_scaling_types_do_not_stack(method):
    config = extend_context(tiny_llama_config(), 128, "linear")
    with pytest.raises(ValueError, match="already uses rope_type 'linear'"):
        extend_context(config, 512, method)


# --- with a model ---------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("method", SCALING_METHODS)
def test_scaling_survives_save_and_load_without_warnings(tmp_path, method):
    config = extend_context(tiny_llama_config(), 256, method)
    config.save_pretrained(tmp_path)
    records, transformers_logger = _Records(), logging.getLogger("transformers")
    transformers_logger.addHandler(records)
    try:
        reloaded = AutoConfig.from_pretrained(tmp_path)
    finally:
        transformers_logger.removeHandler(records)
    assert not [message for message in records.messages if "rope" in message.lower()]
    assert reloaded.rope_parameters == config.rope_parameters
    assert reloaded.max_position_embeddings == config.max_position_embeddings
    assert context_window(reloaded) == 256
    assert_freqs(rotary(reloaded)[0], rotary(config)[0])
    assert extend_context(reloaded, 256, method).to_dict() == reloaded.to_dict()  # no second scaling


@pytest.mark.parametrize("method", SCALING_METHODS)
def test_model_builds_and_runs_past_the_original_window(method):
    torch.manual_seed(0)
    config = extend_context(tiny_llama_config(), 256, method)
    model = LlamaForCausalLM(config).eval()
    input_ids = torch.randint(0, 128, (1, 200))
    with torch.no_grad():
        logits = model(input_ids).logits
    assert logits.shape == (1, 200, 128) and torch.isfinite(logits).all()
