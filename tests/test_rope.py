"""RoPE scaling: inverse frequencies of each method against formulas written here in float64."""

import math

import pytest
import torch
from transformers import AutoConfig, LlamaForCausalLM

from longctx.rope import context_window, extend_context
from tests.tiny_models import tiny_llama_config

DIM = 16  # tiny config: hidden 64 / 4 heads
BASE = 10000.0


def plain_inv_freq(base=BASE, dim=DIM):
    return torch.tensor([1.0 / base ** (2 * i / dim) for i in range(dim // 2)], dtype=torch.float64)


def model_rotary(config, seq_len=None):
    """inv_freq and attention scaling as the model's rotary embedding computes them."""
    model = LlamaForCausalLM(config)
    rotary = model.model.rotary_emb
    if seq_len is not None:  # dynamic scaling updates itself from the positions it sees
        rotary(torch.zeros(1, 1, 1), torch.arange(seq_len)[None])
    return rotary.inv_freq.double(), rotary.attention_scaling


def assert_freqs(got, want):
    torch.testing.assert_close(got, want, rtol=2e-6, atol=0)


def test_linear_factor_is_ceil_of_the_ratio():
    config = extend_context(tiny_llama_config(), 150, "linear")  # 150 / 64 -> 3
    assert config.rope_parameters["factor"] == 3.0
    assert context_window(config) == 192
    inv_freq, scaling = model_rotary(config)
    assert_freqs(inv_freq, plain_inv_freq() / 3)
    assert scaling == 1.0


def test_linear_on_top_of_an_existing_factor():
    config = extend_context(tiny_llama_config(), 128, "linear")  # x2: window 128
    extend_context(config, 512, "linear")  # ceil(512 / (64 x 2)) = 4 more, total x8
    assert config.rope_parameters["factor"] == 8.0 and context_window(config) == 512
    assert_freqs(model_rotary(config)[0], plain_inv_freq() / 8)


def test_no_change_when_the_context_fits():
    config = tiny_llama_config()
    before = dict(config.rope_parameters)
    for method in ("linear", "dynamic", "yarn", "llama3", "theta"):
        extend_context(config, 64, method)
    assert config.rope_parameters == before and config.max_position_embeddings == 64


def test_theta_changes_only_the_base():
    config = extend_context(tiny_llama_config(), 256, "theta")
    new_base = BASE * 4 ** (DIM / (DIM - 2))
    assert config.rope_parameters["rope_type"] == "default"
    assert math.isclose(config.rope_parameters["rope_theta"], new_base)
    assert context_window(config) == 256
    assert_freqs(model_rotary(config)[0], plain_inv_freq(new_base))
    explicit = extend_context(tiny_llama_config(), 256, "theta", rope_theta=5e5)
    assert_freqs(model_rotary(explicit)[0], plain_inv_freq(5e5))


def test_dynamic_ntk_grows_the_base_with_length():
    config = extend_context(tiny_llama_config(), 128, "dynamic")  # factor 2
    assert context_window(config) == 128 and config.max_position_embeddings == 64
    assert_freqs(model_rotary(config)[0], plain_inv_freq())  # within the window: unchanged
    seq_len = 200
    grown_base = BASE * (2 * seq_len / 64 - 1) ** (DIM / (DIM - 2))
    assert_freqs(model_rotary(config, seq_len)[0], plain_inv_freq(grown_base))


def reference_yarn(factor, original, beta_fast=32, beta_slow=1, base=BASE, dim=DIM):
    """YaRN (Peng et al. 2023, eq. 17-21) with transformers' truncated correction range."""
    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    freqs = []
    for i in range(dim // 2):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        extrapolation = 1 - ramp
        theta = 1.0 / base ** (2 * i / dim)
        freqs.append(theta / factor * (1 - extrapolation) + theta * extrapolation)
    return torch.tensor(freqs, dtype=torch.float64), 0.1 * math.log(factor) + 1.0


def test_yarn_ramp_and_temperature():
    config = extend_context(tiny_llama_config(max_position_embeddings=4096, hidden_size=256, num_attention_heads=4, num_key_value_heads=2), 16384, "yarn")
    assert config.rope_parameters["original_max_position_embeddings"] == 4096
    assert config.max_position_embeddings == 16384 and context_window(config) == 16384
    inv_freq, scaling = model_rotary(config)
    want, want_scaling = reference_yarn(4.0, 4096, dim=64)
    assert_freqs(inv_freq, want)
    assert math.isclose(scaling, want_scaling, rel_tol=1e-6)
    assert inv_freq[0] == plain_inv_freq(dim=64)[0].float().double()  # fastest frequency extrapolated
    assert math.isclose(inv_freq[-1], plain_inv_freq(dim=64)[-1] / 4, rel_tol=1e-6)  # slowest interpolated


def reference_llama3(factor, original, low_freq_factor=1.0, high_freq_factor=4.0, base=BASE, dim=DIM):
    freqs = []
    for i in range(dim // 2):
        theta = 1.0 / base ** (2 * i / dim)
        wavelength = 2 * math.pi / theta
        if wavelength < original / high_freq_factor:
            freqs.append(theta)
        elif wavelength > original / low_freq_factor:
            freqs.append(theta / factor)
        else:
            smooth = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
            freqs.append((1 - smooth) * theta / factor + smooth * theta)
    return torch.tensor(freqs, dtype=torch.float64)


def test_llama3_smooth_interpolation():
    config = extend_context(tiny_llama_config(max_position_embeddings=512, hidden_size=256), 4096, "llama3")
    inv_freq, _ = model_rotary(config)
    want = reference_llama3(8.0, 512, dim=64)
    assert_freqs(inv_freq, want)
    wavelengths = 2 * math.pi / want
    assert (wavelengths < 128).any() and (wavelengths > 512).any() and ((wavelengths > 128) & (wavelengths < 512)).any()


@pytest.mark.parametrize("method", ["linear", "dynamic", "yarn", "llama3", "theta"])
def test_scaling_survives_save_and_load(tmp_path, method):
    config = extend_context(tiny_llama_config(), 256, method)
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert reloaded.rope_parameters == config.rope_parameters
    assert context_window(reloaded) == 256
    assert_freqs(model_rotary(reloaded)[0], model_rotary(config)[0])
    LlamaForCausalLM(reloaded)(torch.randint(0, 128, (1, 200)))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda c: extend_context(c, 128, "magic"), "linear"),
        (lambda c: extend_context(c, 0), "positive"),
        (lambda c: extend_context(c, 128, "yarn", factor=0.5), "at least 1"),
    ],
)
def test_bad_values_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_llama_config())
