"""Dual Chunk Attention (DCA): read several times the pretraining window with no training.

An et al. 2024, "Training-Free Long-Context Scaling of Large Language Models" (ChunkLlama). The
sequence is cut into blocks; every relative position a query sees stays below the pretraining
window, so RoPE never meets an unseen distance. Each query attends three ways, and the three
results are merged by their log-sum-exp (exact softmax over the union of the keys):

- intra-chunk: causally to its own block, queries and keys at their positions inside the block;
- successive-chunk: to all of the previous block, the query moved one block on (capped at
  `chunk_size`), so the nearest `local_window` keys keep their true distances;
- inter-chunk: to all earlier blocks, the query at the constant position `chunk_size`.

Variant implemented: the one of ChunkLlama's code (chunkllama_attn_replace.py), not the paper's
notation. With block length ``B = chunk_size - local_window`` and a token's offset in its block
``i = p mod B``: keys at ``i``; intra queries at ``i``; successive queries at ``min(i + B,
chunk_size)``; inter queries at ``chunk_size``. The paper writes the successive set as
``[s, ..., s + w - 1, c - 1, ...]`` and the inter position as ``c - 1`` (c the pretraining length),
i.e. the largest distances reach the window's edge; the code keeps them at ``chunk_size`` (3/4 of
it), a margin away from positions the model saw rarely. We follow the code because its
published figures (PG19, passkey, needle) come from it. Defaults are chunkllama_attn_replace.py's:
chunk_size = 3/4 and local_window = 1/8 of the pretraining length (its flash-decoding and Qwen
variants use 1/16); `replace_with_chunkllama`, `replace_with_chunkmistral` and
`replace_with_chunkmixtral` keep its entry points and defaults. Llama, Mistral, Mixtral and Qwen2
models are supported (the attention and RoPE of the four are the same; Mixtral's experts do not
see positions).

How it sits in transformers 5 (no private patching): a forward pre-hook on the decoder's
`rotary_emb` turns position ids into block offsets, so keys are rotated at ``i`` before they enter
the KV cache, and queries at ``i`` too; the attention function (registered in `AttentionInterface`
as ``dual_chunk``) re-rotates queries for the other two sets by the difference (RoPE rotations
compose, R(a) R(b) = R(a + b); the difference rotation carries no YaRN attention factor, which the
first rotation already applied). Each part runs through a fused kernel that returns the
log-sum-exp (on CPU `_scaled_dot_product_flash_attention_for_cpu`, on CUDA the memory-efficient
SDPA kernel: private torch ops, reached through longctx.internals.sdpa_with_lse), so no (seq x seq)
score matrix is ever built: memory is linear in the sequence length. Queries are taken to be the last tokens of the keys, which covers prefill and decoding with
a KV cache; padded batches are refused.
"""

from __future__ import annotations

import weakref

import torch
from transformers import AttentionInterface, AttentionMaskInterface

from longctx.internals import attn_implementation, flash_attention_mask, sdpa_with_lse
from longctx.rope import pretraining_window, rotate_by
from longctx.wrappers import unwrap_model

DUAL_CHUNK = "dual_chunk"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2")
INV_FREQ_BUFFER = "dual_chunk_inv_freq"
# rotary module -> its block-position hook's handle, kept here rather than as an attribute of transformers' module
_BLOCK_POSITION_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def default_sizes(pretraining_length: int, chunk_size: int | None = None, local_window: int | None = None) -> tuple[int, int]:
    """(chunk_size, local_window): 3/4 and 1/8 of the pretraining length unless given; ValueError if unusable."""
    if pretraining_length <= 0:
        raise ValueError(f"--pretraining_length must be positive (got {pretraining_length})")
    chunk_size = pretraining_length * 3 // 4 if chunk_size is None else chunk_size
    local_window = pretraining_length // 8 if local_window is None else local_window
    if not 0 < chunk_size < pretraining_length:
        raise ValueError(
            f"DCA chunk size (--dca_chunk_size) must be in (0, pretraining length {pretraining_length}) (got {chunk_size})"
        )
    if not 0 <= local_window < chunk_size:
        raise ValueError(f"DCA local window (--dca_local_window) must be in [0, chunk size {chunk_size}) (got {local_window})")
    return chunk_size, local_window


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def attention_with_lse(query, key, value, scaling: float, causal_offset: int | None = None):
    """Softmax attention returning (output (batch, heads, q, d), log-sum-exp (batch, heads, q)).

    key/value carry as many heads as query. `causal_offset`: query t may see keys up to
    t + causal_offset (queries are the last tokens of the keys); None means every key. Fused
    kernels only: the scores of a part are never materialised.
    """
    query_len, key_len = query.shape[2], key.shape[2]
    bias, is_causal = None, False
    if causal_offset is not None:
        if causal_offset == 0 and query_len == key_len:
            is_causal = True
        else:  # decoding or chunked prefill: at most (queries of one block) x (keys of one block)
            rows = torch.arange(query_len, device=query.device)[:, None] + causal_offset
            hidden = torch.arange(key_len, device=query.device)[None, :] > rows
            bias = torch.zeros(hidden.shape, dtype=query.dtype, device=query.device).masked_fill(hidden, float("-inf"))
            bias = bias[None, None].expand(query.shape[0], query.shape[1], -1, -1)
    output, lse = sdpa_with_lse(query, key, value, bias, is_causal, scaling)
    return output, _at_least_float32(lse)


def grouped_attention_with_lse(query, key, value, scaling: float):
    """`attention_with_lse` over every key (no mask) for grouped-query attention, without repeating keys.

    The query heads sharing a key/value head are folded into the query length: (batch, kv_heads,
    groups x q, head_dim) attends to (batch, kv_heads, k, head_dim) directly.
    """
    batch, num_heads, query_len, head_dim = query.shape
    kv_heads = key.shape[1]
    folded = query.reshape(batch, kv_heads, num_heads // kv_heads * query_len, head_dim)
    output, lse = attention_with_lse(folded, key, value, scaling)
    return output.reshape(batch, num_heads, query_len, head_dim), lse.reshape(batch, num_heads, query_len)


def merge_by_lse(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Combine partial attentions over disjoint key sets into the softmax over their union."""
    if len(parts) == 1:
        return parts[0][0]
    lses = torch.stack([lse for _, lse in parts])  # (parts, batch, heads, q)
    weights = torch.softmax(lses, dim=0)
    return sum(weight[..., None].to(output.dtype) * output for weight, (output, _) in zip(weights, parts))


def dual_chunk_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    inv_freq: torch.Tensor,
    chunk_size: int,
    local_window: int,
    scaling: float | None = None,
) -> torch.Tensor:
    """DCA over rotated states (see the module doc). Returns (batch, heads, q, head_dim).

    query (batch, heads, q, head_dim) and key (batch, kv_heads, k, head_dim) are rotated at their
    block offsets; the q queries are the last q of the k tokens (positions k - q ... k - 1).
    """
    block = chunk_size - local_window
    num_groups = query.shape[1] // key.shape[1]
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    query_len, key_len = query.shape[2], key.shape[2]
    first = key_len - query_len
    outputs = []
    for index in range(first // block, (key_len - 1) // block + 1):
        block_start = index * block
        query_start, query_end = max(block_start, first), min(block_start + block, key_len)
        block_query = query[:, :, query_start - first : query_end - first]
        offsets = torch.arange(query_start - block_start, query_end - block_start, device=query.device)

        def keys(start, end):
            return key[:, :, start:end], value[:, :, start:end]

        # intra: causal, so the keys of this block are repeated per query head (one block at most)
        intra_key, intra_value = (states.repeat_interleave(num_groups, dim=1) for states in keys(block_start, query_end))
        parts = [attention_with_lse(block_query, intra_key, intra_value, scaling, query_start - block_start)]
        if index >= 1:  # successive: offset i moves to min(i + block, chunk_size)
            successive = rotate_by(block_query, torch.clamp(chunk_size - offsets, max=block), inv_freq)
            parts.append(grouped_attention_with_lse(successive, *keys(block_start - block, block_start), scaling))
        if index >= 2:  # inter: offset i moves to chunk_size
            inter = rotate_by(block_query, chunk_size - offsets, inv_freq)
            parts.append(grouped_attention_with_lse(inter, *keys(0, block_start - block), scaling))
        outputs.append(merge_by_lse(parts))
    return torch.cat(outputs, dim=2)


def dual_chunk_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface entry (`attn_implementation="dual_chunk"`); output (batch, q, heads, head_dim)."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("Dual Chunk Attention does not support padded batches; read one sequence per row without padding")
    settings = module.config.dual_chunk_attention
    inv_freq = getattr(module, INV_FREQ_BUFFER)
    output = dual_chunk_attention(query, key, value, inv_freq, settings["chunk_size"], settings["local_window"], scaling)
    return output.transpose(1, 2).contiguous(), None


def register_dual_chunk_attention() -> None:
    """Make `dual_chunk` a valid `attn_implementation` (idempotent); its mask is the plain 2D padding mask."""
    AttentionInterface.register(DUAL_CHUNK, dual_chunk_attention_forward)
    AttentionMaskInterface.register(DUAL_CHUNK, flash_attention_mask)


def _block_positions_hook(block: int):
    """Forward pre-hook of `rotary_emb`: rotate at block offsets (position_ids is positional or keyword)."""

    def hook(module, args, kwargs):
        if "position_ids" in kwargs:
            kwargs = {**kwargs, "position_ids": kwargs["position_ids"] % block}
        else:
            args = (args[0], args[1] % block, *args[2:])
        return args, kwargs

    return hook


def check_supported(model) -> None:
    """ValueError naming the supported architectures when `model` is not one of them."""
    model_type = getattr(unwrap_model(model).config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Dual Chunk Attention supports {', '.join(SUPPORTED_MODEL_TYPES)} models (Llama, Mistral, Mixtral, Qwen2), "
            f"not {model_type!r}"
        )


def enable_dual_chunk_attention(model, pretraining_length: int | None = None, chunk_size: int | None = None, local_window: int | None = None):
    """Switch a loaded Llama/Mistral/Mixtral/Qwen2 model to Dual Chunk Attention; returns the model.

    `pretraining_length` defaults to the config's pretraining window (longctx.rope.pretraining_window).
    chunk_size defaults to 3/4 of it, local_window to 1/8. Any RoPE scaling in the config stays
    in force inside the chunks (usually none is wanted). Mistral's sliding window is replaced by DCA
    (restored by `disable_dual_chunk_attention`).
    """
    check_supported(model)
    base = unwrap_model(model)
    if pretraining_length is None:
        pretraining_length = pretraining_window(base.config)
    chunk_size, local_window = default_sizes(pretraining_length, chunk_size, local_window)
    disable_dual_chunk_attention(model)
    if "sliding_attention" in (getattr(base.config, "layer_types", None) or ()):
        raise ValueError("Dual Chunk Attention needs full-attention layers; this config has sliding-window layers")
    # Mistral's sliding window would also trim the KV cache DCA reads; DCA takes its place
    previous_sliding_window = getattr(base.config, "sliding_window", None)
    if previous_sliding_window is not None:
        base.config.sliding_window = None
    rotary = base.get_decoder().rotary_emb
    inv_freq = getattr(rotary, "original_inv_freq", rotary.inv_freq)  # dynamic NTK never scales below the window
    for layer in base.get_decoder().layers:  # on each layer's own device (a model spread by device_map)
        device = next(layer.self_attn.parameters()).device
        layer.self_attn.register_buffer(INV_FREQ_BUFFER, inv_freq.detach().to(device, copy=True), persistent=False)
    _BLOCK_POSITION_HOOKS[rotary] = rotary.register_forward_pre_hook(
        _block_positions_hook(chunk_size - local_window), with_kwargs=True
    )
    register_dual_chunk_attention()
    base.config.dual_chunk_attention = {
        "pretraining_length": pretraining_length,
        "chunk_size": chunk_size,
        "local_window": local_window,
        "previous_attn_implementation": attn_implementation(base.config) or "sdpa",
        "previous_sliding_window": previous_sliding_window,
    }
    base.set_attn_implementation(DUAL_CHUNK)
    return model


def disable_dual_chunk_attention(model):
    """Undo `enable_dual_chunk_attention` (a no-op on a model without it)."""
    base = unwrap_model(model)
    settings = getattr(base.config, "dual_chunk_attention", None)
    if settings is None:
        return model
    rotary = base.get_decoder().rotary_emb
    _BLOCK_POSITION_HOOKS.pop(rotary).remove()
    for layer in base.get_decoder().layers:
        delattr(layer.self_attn, INV_FREQ_BUFFER)
    base.set_attn_implementation(settings["previous_attn_implementation"])
    if settings.get("previous_sliding_window") is not None:
        base.config.sliding_window = settings["previous_sliding_window"]
    del base.config.dual_chunk_attention
    return model


def _enable_on_first_run(model_types: tuple[str, ...], pretraining_length: int, local_window_size: int | None) -> None:
    """A global module pre-hook (a public torch API) that enables DCA on each causal LM of `model_types`
    the first time it runs, with chunkllama_attn_replace.py's sizes: chunk 3/4, local window 1/8 unless given.
    A `local_window_size` of 0 or None means the default, as there."""
    chunk_size, local_window = default_sizes(pretraining_length, None, local_window_size or pretraining_length // 8)

    def hook(module, args):
        config = getattr(module, "config", None)
        if (
            hasattr(module, "get_decoder")
            and hasattr(module, "lm_head")
            and getattr(config, "model_type", None) in model_types
            and getattr(config, "dual_chunk_attention", None) is None
        ):
            enable_dual_chunk_attention(module, pretraining_length, chunk_size, local_window)

    torch.nn.modules.module.register_module_forward_pre_hook(hook)


def replace_with_chunkllama(pretraining_length: int = 4096, local_window_size: int | None = None) -> None:
    """ChunkLlama's one-line entry point: every supported model (Llama, Mistral, Mixtral, Qwen2) run afterwards uses DCA.

    ChunkLlama patched transformers' classes before loading; here a global forward pre-hook enables
    DCA on each model the first time it runs, with chunkllama_attn_replace.py's defaults (chunk size
    3/4, local window 1/8 of `pretraining_length`). Prefer `enable_dual_chunk_attention(model, ...)`,
    which changes one model only.
    """
    _enable_on_first_run(SUPPORTED_MODEL_TYPES, pretraining_length, local_window_size)


def replace_with_chunkmistral(pretraining_length: int = 32768, local_window_size: int | None = None) -> None:
    """ChunkLlama's entry point for Mistral (its default of 32384 tokens was a typo for Mistral-v0.2's 32768)."""
    _enable_on_first_run(("mistral",), pretraining_length, local_window_size)


def replace_with_chunkmixtral(pretraining_length: int = 32768, local_window_size: int | None = None) -> None:
    """ChunkLlama's entry point for Mixtral (its default of 32384 tokens was a typo for 32768)."""
    _enable_on_first_run(("mixtral",), pretraining_length, local_window_size)


__all__ = [
    "disable_dual_chunk_attention",
    "dual_chunk_attention",
    "enable_dual_chunk_attention",
    "register_dual_chunk_attention",
    "replace_with_chunkllama",
    "replace_with_chunkmistral",
    "replace_with_chunkmixtral",
]
