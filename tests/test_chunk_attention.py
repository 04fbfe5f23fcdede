"""Dual Chunk Attention: equal to standard attention within one block, to a brute-force float64
reference applying the three position sets with an explicit mask beyond it, and the same with a
KV cache as without; plus the reading scripts' --dca flags and their bad-input lines."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import (
    AttentionInterface,
    AttentionMaskInterface,
    DynamicCache,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.masking_utils import flash_attention_mask
from transformers.models.llama.modeling_llama import rotate_half

from longctx.args import PerplexityArguments
from longctx.chunk_attention import (
    disable_dual_chunk_attention,
    dual_chunk_attention,
    enable_dual_chunk_attention,
    replace_with_chunkllama,
    replace_with_chunkmixtral,
)
from longctx.reading_model import DualChunkSizes, ReadingModel
from longctx.rope import RopeRequest, extend_context
from tests.scripts import run_script, run_script_expecting_error
from tests.tiny_models import tiny_llama, tiny_llama_config

ARCHITECTURES = ["llama", "mistral", "mixtral", "qwen2"]
PRETRAINING = 64  # tiny models' window: chunk_size 48, local window 8, blocks of 40 tokens
CHUNK, LOCAL = 48, 8
BLOCK = CHUNK - LOCAL


def rotate(states, inv_freq, positions):
    """RoPE at `positions` (..., seq) in float64, the textbook formula."""
    freqs = positions.to(torch.float64)[..., None] * inv_freq.to(torch.float64)
    angles = torch.cat((freqs, freqs), dim=-1)
    return states * angles.cos() + rotate_half(states) * angles.sin()


def reference_dca(query, key, value, inv_freq, chunk_size, local_window, query_positions, scaling):
    """Brute force: full score matrices for the three position sets, chosen per (query, key) pair by
    the blocks they sit in, plus the causal mask; one softmax. query/key are NOT rotated yet."""
    block = chunk_size - local_window
    key_positions = torch.arange(key.shape[2])
    offset_q, offset_k = query_positions % block, key_positions % block
    key_rot = rotate(key, inv_freq, offset_k)
    sets = {
        "intra": offset_q,
        "successive": torch.clamp(offset_q + block, max=chunk_size),
        "inter": torch.full_like(offset_q, chunk_size),
    }
    groups = query.shape[1] // key.shape[1]
    key_rot, value = key_rot.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = {name: rotate(query, inv_freq, pos) @ key_rot.transpose(-1, -2) * scaling for name, pos in sets.items()}
    block_q, block_k = (query_positions // block)[:, None], (key_positions // block)[None, :]
    chosen = torch.where(block_q == block_k, scores["intra"], torch.where(block_q - 1 == block_k, scores["successive"], scores["inter"]))
    chosen = chosen.masked_fill(key_positions[None, :] > query_positions[:, None], float("-inf"))
    return torch.softmax(chosen, dim=-1) @ value


def reference_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The reference as an attention function: undo the block-offset rotation the model applied, then brute force."""
    settings = module.config.dual_chunk_attention
    inv_freq = module.dual_chunk_inv_freq
    dtype = query.dtype
    query, key, value = query.double(), key.double(), value.double()
    block = settings["chunk_size"] - settings["local_window"]
    key_len, query_len = key.shape[2], query.shape[2]
    query_positions = torch.arange(key_len - query_len, key_len)
    raw_query = rotate(query, inv_freq, -(query_positions % block))
    raw_key = rotate(key, inv_freq, -(torch.arange(key_len) % block))
    output = reference_dca(raw_query, raw_key, value, inv_freq, settings["chunk_size"], settings["local_window"], query_positions, scaling)
    return output.transpose(1, 2).contiguous().to(dtype), None


def tiny(architecture: str, seed: int = 0):
    """A tiny float64 Llama, Mistral, Mixtral or Qwen2 with a 64-token window, built from a config in memory."""
    common = tiny_llama_config().to_dict()
    torch.manual_seed(seed)
    if architecture == "llama":
        model = tiny_llama(dtype=torch.float64, seed=seed, max_position_embeddings=PRETRAINING)
    elif architecture == "mistral":
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
        model = MistralForCausalLM(MistralConfig(**{k: common[k] for k in keys}, max_position_embeddings=PRETRAINING, sliding_window=None))
    elif architecture == "mixtral":
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
        config = MixtralConfig(
            **{k: common[k] for k in keys}, max_position_embeddings=PRETRAINING, sliding_window=None,
            num_local_experts=4, num_experts_per_tok=2,
        )
        model = MixtralForCausalLM(config)
        model.set_experts_implementation("eager")  # the grouped-matmul experts have no float64 kernel
    else:
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
        model = Qwen2ForCausalLM(Qwen2Config(**{k: common[k] for k in keys}, max_position_embeddings=PRETRAINING))
    model = model.to(torch.float64).eval()
    model.set_attn_implementation("sdpa")
    return model


def tokens(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 128, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_function_matches_reference_prefill_and_decoding():
    torch.manual_seed(0)
    batch, heads, kv_heads, head_dim, length = 2, 6, 2, 16, 173
    query = torch.randn(batch, heads, length, head_dim, dtype=torch.float64)
    key = torch.randn(batch, kv_heads, length, head_dim, dtype=torch.float64)
    value = torch.randn(batch, kv_heads, length, head_dim, dtype=torch.float64)
    inv_freq = 1.0 / (10_000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    offsets = torch.arange(length) % BLOCK
    rotated_key = rotate(key, inv_freq, offsets)
    for query_len in (length, 1, 3, BLOCK + 5):  # prefill; decoding; a few queries across a block edge
        positions = torch.arange(length - query_len, length)
        rotated_query = rotate(query[:, :, -query_len:], inv_freq, positions % BLOCK)
        ours = dual_chunk_attention(rotated_query, rotated_key, value, inv_freq, CHUNK, LOCAL, head_dim**-0.5)
        expected = reference_dca(query[:, :, -query_len:], key, value, inv_freq, CHUNK, LOCAL, positions, head_dim**-0.5)
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@torch.no_grad()
def test_within_one_block_equals_standard_attention(architecture):
    model = tiny(architecture)
    input_ids = tokens(BLOCK)
    expected = model(input_ids).logits
    enable_dual_chunk_attention(model, PRETRAINING)
    assert model.config.dual_chunk_attention["chunk_size"] == CHUNK and model.config.dual_chunk_attention["local_window"] == LOCAL
    torch.testing.assert_close(model(input_ids).logits, expected, rtol=1e-10, atol=1e-10)
    disable_dual_chunk_attention(model)
    torch.testing.assert_close(model(tokens(3 * BLOCK)).logits, tiny(architecture)(tokens(3 * BLOCK)).logits)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@torch.no_grad()
def test_long_sequence_matches_float64_reference(architecture):
    model = enable_dual_chunk_attention(tiny(architecture), PRETRAINING)
    input_ids = tokens(4 * BLOCK + 7)  # 167 tokens, 2.6x the window: all three parts in play
    ours = model(input_ids).logits
    AttentionInterface.register("dca_reference", reference_attention_forward)

    AttentionMaskInterface.register("dca_reference", flash_attention_mask)
    model.set_attn_implementation("dca_reference")
    expected = model(input_ids).logits
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    # and DCA really differs from reading the long sequence with plain RoPE
    plain = tiny(architecture)(input_ids).logits
    assert (plain - ours).abs().max() > 1e-3


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@torch.no_grad()
def test_generation_with_cache_equals_recomputation(architecture):
    model = tiny(architecture)
    if architecture in ("mistral", "mixtral"):  # a sliding window would trim the cache: DCA takes its place
        model.config.sliding_window = 32
    model = enable_dual_chunk_attention(model, PRETRAINING)
    assert getattr(model.config, "sliding_window", None) is None
    prompt = tokens(2 * BLOCK - 3)
    sequence = model.generate(prompt, max_new_tokens=BLOCK + 6, do_sample=False, min_new_tokens=BLOCK + 6)
    assert sequence.shape[1] == prompt.shape[1] + BLOCK + 6  # crosses two block edges
    full = model(sequence, use_cache=False).logits  # one pass, no cache
    assert torch.equal(full[0, prompt.shape[1] - 1 : -1].argmax(-1), sequence[0, prompt.shape[1] :])  # greedy choices
    # the cache path token by token, in float64 (generate hands back float32 logits)
    cache = DynamicCache(config=model.config)
    step_logits = [model(prompt, past_key_values=cache, use_cache=True).logits[:, -1]]
    for position in range(prompt.shape[1], sequence.shape[1] - 1):
        step_logits.append(model(sequence[:, position : position + 1], past_key_values=cache, use_cache=True).logits[:, -1])
    torch.testing.assert_close(torch.stack(step_logits, 1), full[:, prompt.shape[1] - 1 : -1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["dca", "linear", "yarn", "theta", "dynamic"])
@torch.no_grad()
def test_prefix_of_one_long_forward_equals_a_separate_shorter_run(method):
    """What bench/dca.py relies on: one long forward gives the shorter lengths' figures (not for dynamic NTK)."""
    model = tiny("llama")
    if method == "dca":
        enable_dual_chunk_attention(model, PRETRAINING)
    else:
        extend_context(model.config, 4 * PRETRAINING, method=method)
        model = type(model)(model.config).to(torch.float64).eval()
        model.load_state_dict(tiny("llama").state_dict())
    input_ids = tokens(4 * PRETRAINING)
    short = 2 * PRETRAINING
    # shorter first: transformers' dynamic NTK keeps the frequencies of the longest length seen so far
    short_logits = model(input_ids[:, :short]).logits
    long_logits = model(input_ids).logits
    prefix_equal = torch.allclose(short_logits, long_logits[:, :short], rtol=1e-9, atol=1e-9)
    assert prefix_equal == (method != "dynamic")


def test_bad_sizes_and_architecture():
    with pytest.raises(ValueError, match="must be positive"):
        enable_dual_chunk_attention(tiny("llama"), 0)
    with pytest.raises(ValueError, match="local_window"):
        enable_dual_chunk_attention(tiny("llama"), PRETRAINING, chunk_size=16, local_window=16)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="supports llama, mistral, mixtral, qwen2"):
        enable_dual_chunk_attention(gpt2, 64)


@torch.no_grad()
def test_replace_with_chunkllama_switches_models_run_afterwards():
    model = tiny("llama")
    input_ids = tokens(3 * BLOCK)
    expected = enable_dual_chunk_attention(tiny("llama"), PRETRAINING, CHUNK, PRETRAINING // 8)(input_ids).logits
    handle_count = len(torch.nn.modules.module._global_forward_pre_hooks)
    replace_with_chunkllama(PRETRAINING)
    try:
        torch.testing.assert_close(model(input_ids).logits, expected)
        assert model.config.dual_chunk_attention["local_window"] == PRETRAINING // 8  # chunkllama_attn_replace.py's
    finally:
        hooks = torch.nn.modules.module._global_forward_pre_hooks
        for key in list(hooks)[handle_count:]:
            del hooks[key]


@torch.no_grad()
def test_replace_with_chunkmixtral_switches_only_mixtral_models():
    mixtral, llama = tiny("mixtral"), tiny("llama")
    input_ids = tokens(3 * BLOCK)
    expected = enable_dual_chunk_attention(tiny("mixtral"), PRETRAINING, CHUNK, 4)(input_ids).logits
    handle_count = len(torch.nn.modules.module._global_forward_pre_hooks)
    replace_with_chunkmixtral(PRETRAINING, local_window_size=4)
    try:
        torch.testing.assert_close(mixtral(input_ids).logits, expected)
        llama(input_ids)
        assert getattr(llama.config, "dual_chunk_attention", None) is None
    finally:
        hooks = torch.nn.modules.module._global_forward_pre_hooks
        for key in list(hooks)[handle_count:]:
            del hooks[key]


def test_dca_turns_off_default_rope_scaling():
    assert PerplexityArguments(dca=True).rope_method == "none"
    assert PerplexityArguments().rope_method == "linear"
    assert PerplexityArguments(dca=True, rope_method="yarn").rope_method == "yarn"
    with pytest.raises(ValueError, match="--pretraining_length must be positive"):
        PerplexityArguments(dca=True, pretraining_length=-1)


def test_eval_script_with_dca(tiny_model_dir, tmp_path):
    output = tmp_path / "dca.json"
    run_script(
        "eval.py", "--base_model", tiny_model_dir, "--dca", "True", "--pretraining_length", "32",
        "--seq_len", "96", "--scoring", "strided", "--sliding_window", "48", "--max_tokens", "200",
        "--output_json", output,
    )
    result = json.loads(output.read_text())
    assert result["config"]["dca"] is True and result["config"]["rope_method"] == "none"
    assert result["config"]["rope_parameters"]["rope_type"] == "default"
    assert math.isfinite(result["results"][0]["perplexity"])


def test_eval_script_takes_dca_sizes(tiny_model_dir, tmp_path):
    output = tmp_path / "dca.json"
    run_script(
        "eval.py", "--base_model", tiny_model_dir, "--dca", "True", "--pretraining_length", "32", "--dca_chunk_size", "24",
        "--dca_local_window", "4", "--seq_len", "96", "--scoring", "strided", "--sliding_window", "48",
        "--max_tokens", "200", "--output_json", output,
    )
    config = json.loads(output.read_text())["config"]
    assert (config["dca_chunk_size"], config["dca_local_window"]) == (24, 4)
    assert math.isfinite(json.loads(output.read_text())["results"][0]["perplexity"])


def test_scripts_reject_bad_dca_input(tiny_model_dir, tmp_path, capsys):
    line = run_script_expecting_error(capsys, "eval.py", "--base_model", tiny_model_dir, "--dca_chunk_size", "24", "--seq_len", "96")
    assert "--dca_chunk_size sets Dual Chunk Attention's sizes: it goes with --dca True" in line
    line = run_script_expecting_error(
        capsys, "needle_in_haystack.py", "--base_model", tiny_model_dir, "--dca", "True", "--pretraining_length", "32",
        "--dca_chunk_size", "24", "--dca_local_window", "30", "--max_tokens", "96", "--interval", "96",
    )
    assert "DCA local window (--dca_local_window) must be in [0, chunk size 24) (got 30)" in line
    line = run_script_expecting_error(
        capsys, "eval.py", "--base_model", tiny_model_dir, "--dca", "True", "--pretraining_length", "128", "--seq_len", "96",
    )
    assert "--pretraining_length 128 exceeds the longest input, 96 tokens" in line
    line = run_script_expecting_error(
        capsys, "passkey_retrivial.py", "--base_model", tiny_model_dir, "--dca", "True", "--pretraining_length", "0",
    )
    assert "--pretraining_length must be positive" in line
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny_models import tiny_tokenizer

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    line = run_script_expecting_error(
        capsys, "passkey_retrivial.py", "--base_model", folder, "--dca", "True", "--max_tokens", "256", "--interval", "256",
    )
    assert "Dual Chunk Attention supports llama, mistral, mixtral, qwen2" in line and "'gpt2'" in line


@pytest.mark.realmodel
@torch.no_grad()
def test_real_smollm2_dca_matches_reference_and_cache():
    """SmolLM2's real weights, DCA at a 128-token unit over 300 tokens: reference, block prefix and cache."""
    from longctx.reading_model import load_for_inference

    model, tokenizer = load_for_inference(ReadingModel("smollm2", rope=RopeRequest("none"), dca=DualChunkSizes(128)))
    settings = model.config.dual_chunk_attention
    assert (settings["chunk_size"], settings["local_window"]) == (96, 16)
    text = Path("data/pg19_eval/pg19test_29973.txt").read_text(encoding="utf-8")[:3000]
    input_ids = tokenizer(text, return_tensors="pt").input_ids[:, :300]
    ours = model(input_ids).logits
    AttentionInterface.register("dca_reference", reference_attention_forward)

    AttentionMaskInterface.register("dca_reference", flash_attention_mask)
    model.set_attn_implementation("dca_reference")
    torch.testing.assert_close(ours, model(input_ids).logits, rtol=1e-4, atol=1e-4)
    model.set_attn_implementation("dual_chunk")
    block = settings["chunk_size"] - settings["local_window"]
    plain, _ = load_for_inference(ReadingModel("smollm2", rope=RopeRequest("none")))
    torch.testing.assert_close(ours[:, :block], plain(input_ids[:, :block]).logits, rtol=1e-4, atol=1e-4)
    cache = DynamicCache(config=model.config)
    model(input_ids[:, :250], past_key_values=cache, use_cache=True)
    stepped = [model(input_ids[:, position : position + 1], past_key_values=cache, use_cache=True).logits[:, -1] for position in range(250, 300)]
    torch.testing.assert_close(torch.stack(stepped, 1), ours[:, 250:], rtol=1e-4, atol=1e-4)


def test_inference_script_with_dca(tiny_model_dir, tmp_path, capsys):
    """inference.py (reading_model(None)) takes --dca too and answers over a material longer than a block."""
    material = tmp_path / "story.txt"
    material.write_text("The grass is green. The sky is blue. " * 5, encoding="utf-8")
    run_script(
        "inference.py", "--base_model", tiny_model_dir, "--material", material, "--question", "What colour is the sky?",
        "--max_gen_len", "4", "--context_size", "256", "--dca", "True", "--pretraining_length", "32",
    )
    assert capsys.readouterr().out.strip()


@torch.no_grad()
def test_sliding_window_reference_scores_each_token_once_within_a_window():
    """The benches' no-long-context reference: token t sees only the tokens of its strided window."""
    from longctx.length_curves import prefix_losses, sliding_window_losses

    model, input_ids = tiny("llama"), tokens(4 * PRETRAINING)
    lengths, stride = [PRETRAINING // 2, PRETRAINING, 2 * PRETRAINING, 4 * PRETRAINING], PRETRAINING // 2
    got = sliding_window_losses(model, input_ids, lengths, PRETRAINING)
    losses = []  # brute force, one forward per target: windows start every `stride`, each scores its second half
    for target in range(1, input_ids.shape[1]):
        start = 0 if target < PRETRAINING else (target // stride - 1) * stride
        logits = model(input_ids[:, start:target]).logits[0, -1]
        losses.append(float(torch.nn.functional.cross_entropy(logits, input_ids[0, target])))
    for length in lengths:
        assert math.isclose(got[length], sum(losses[: length - 1]) / (length - 1), rel_tol=1e-9)
    # a window as long as the text is the plain one-forward figure
    full = sliding_window_losses(model, input_ids, lengths, 4 * PRETRAINING)
    plain = prefix_losses(model, input_ids, lengths)
    assert all(math.isclose(full[length], plain[length], rel_tol=1e-9) for length in lengths)
