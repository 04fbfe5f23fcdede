"""The CUDA paths: flash-attn's varlen S²-Attn, DCA's fused CUDA kernels, bfloat16 reading with --device_map auto,
a LoRA+ step with --bf16 and flash-attn, and the 4-bit QLoRA base. Skipped without a CUDA GPU (conftest.py);
bench/gpu_check.sh runs them first."""

import json

import pytest
import torch

from longctx.attention import flash_attn_available, shifted_sparse_attention, shifted_sparse_attention_varlen
from longctx.chunk_attention import dual_chunk_attention
from longctx.modeling import WeightLoading
from tests.scripts import run_script

pytestmark = pytest.mark.gpu


def qkv(seq_len: int, heads: int = 8, kv_heads: int = 2, head_dim: int = 64, dtype=torch.bfloat16, device="cuda"):
    generator = torch.Generator(device).manual_seed(0)
    make = lambda n: torch.randn(2, n, seq_len, head_dim, device=device, dtype=dtype, generator=generator)  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads)


@pytest.mark.skipif(not flash_attn_available(), reason="flash-attn is not installed")
def test_flash_varlen_s2_attn_equals_sdpa_s2_attn_with_padding_and_packing():
    query, key, value = qkv(4096)
    mask = torch.ones(2, 4096, dtype=torch.long, device="cuda")
    mask[1, -300:] = 0  # a padded row
    positions = torch.cat([torch.arange(2500), torch.arange(1596)]).to("cuda")[None].expand(2, -1)  # two packed documents
    for attention_mask, position_ids in ((None, None), (mask, None), (None, positions)):
        flash = shifted_sparse_attention_varlen(query, key, value, 1024, attention_mask, position_ids)
        sdpa = shifted_sparse_attention(query, key, value, 1024, attention_mask, position_ids)
        real = (torch.ones_like(mask) if attention_mask is None else attention_mask)[:, None, :, None].bool()
        torch.testing.assert_close(
            torch.where(real, flash, 0).float(), torch.where(real, sdpa, 0).float(), rtol=2e-2, atol=2e-2
        )


def test_s2_attn_on_cuda_matches_the_float64_reference():
    query, key, value = qkv(2048)
    cuda = shifted_sparse_attention(query, key, value, 512).float().cpu()
    reference = shifted_sparse_attention(*(t.double().cpu() for t in (query, key, value)), 512)
    torch.testing.assert_close(cuda, reference.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dca_cuda_kernels_match_the_float64_cpu_computation(dtype):
    query, key, value = qkv(1000, dtype=dtype)
    inv_freq = 1.0 / (10_000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    for query_len in (1000, 1, 7):  # prefill, decoding, a few queries across a block edge
        cuda = dual_chunk_attention(query[:, :, -query_len:], key, value, inv_freq.to("cuda", torch.float32), 384, 64)
        reference = dual_chunk_attention(*(t.double().cpu() for t in (query[:, :, -query_len:], key, value)), inv_freq, 384, 64)
        tolerance = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(cuda.double().cpu(), reference, rtol=tolerance, atol=tolerance)


def test_reading_defaults_to_bfloat16_and_device_map_spreads_the_model(tiny_model_dir, tmp_path):
    from longctx.args import InferenceModelArguments
    from longctx.reading_model import load_for_inference

    args = InferenceModelArguments(base_model=str(tiny_model_dir), device_map="auto", dca=True, pretraining_length=32)
    assert args.dtype == "bfloat16"
    model, tokenizer = load_for_inference(args.reading_model(200))
    assert next(model.parameters()).device.type == "cuda" and next(model.parameters()).dtype == torch.bfloat16
    input_ids = torch.randint(3, 300, (1, 150), device="cuda")
    with torch.no_grad():
        assert torch.isfinite(model(input_ids).logits).all()  # DCA's buffers sit on each layer's device
    output = tmp_path / "passkey.json"
    run_script(
        "passkey_retrivial.py", "--base_model", tiny_model_dir, "--device_map", "auto", "--max_tokens", "256",
        "--interval", "256", "--num_tests", "1", "--output_json", output,
    )
    assert json.loads(output.read_text())["config"]["dtype"] == "bfloat16"


def test_lora_plus_step_with_bf16_and_flash_attn(tiny_model_dir, tmp_path):
    run_script(
        "fine-tune.py", "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path, "--bf16", "True",
        "--use_flash_attn", "True", "--model_max_length", "256", "--max_steps", "1", "--max_train_rows", "2",
        "--eval_windows", "1", "--disable_tqdm", "True",
    )
    results = json.loads((tmp_path / "fine-tune-results.json").read_text())
    assert results["steps"] == 1 and results["perplexity_after"]["perplexity"] > 1


def test_qlora_4bit_base_trains_on_cuda(tiny_model_dir):
    from longctx.attention import enable_s2_attn
    from longctx.loss import causal_lm_loss
    from longctx.lora import setup_lora
    from longctx.modeling import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(
        str(tiny_model_dir), context_size=256, weights=WeightLoading(dtype="bfloat16", load_in_4bit=True)
    )
    assert model.is_loaded_in_4bit and next(model.parameters()).device.type == "cuda"
    enable_s2_attn(model, use_flash_attn=flash_attn_available())
    model = setup_lora(model, r=4, alpha=8, trainable_params="embed,norm")
    input_ids = torch.randint(3, 300, (1, 256), device="cuda")
    loss_sum, count = causal_lm_loss(model, input_ids, input_ids)
    (loss_sum / count).backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_A" in name]
    assert grads and all(grad is not None and torch.isfinite(grad).all() for grad in grads)
