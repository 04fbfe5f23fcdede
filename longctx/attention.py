"""Shifted sparse attention (S²-Attn), the training-time attention of LongLoRA, switched on and off per model.

Chen et al., "LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models" (ICLR 2024).
Tokens attend causally inside groups; half of the heads use groups shifted by half a group. The
computation lives in longctx.shifted_sparse; at inference the model uses full attention again.

The model is switched through transformers' `AttentionInterface` under the name `s2_attn`; its
settings live in `model.config.s2_attn` so every layer reads the same values.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from transformers import AttentionInterface, AttentionMaskInterface

from longctx.internals import (
    attn_implementation,
    flash_attention_mask,
    register_process_wide_sdpa,
    sdpa_attention_forward,
)
from longctx.shifted_sparse import (
    check_group_size,
    check_group_size_ratio,
    first_shifted_head,
    group_size_for,
    shifted_sparse_attention,
    shifted_sparse_attention_varlen,
)
from longctx.wrappers import unwrap_model

S2_ATTN = "s2_attn"
S2_ATTN_FLASH = "s2_attn_flash"
DEFAULT_GROUP_SIZE_RATIO = 0.25
SFT_LENGTH_MULTIPLE = 4096  # LongLoRA's SFT rule: lengths that are multiples of this use the group ratio
LONGLORA_SFT_GROUP_SIZE = 8192


def resolve_group_size(config, seq_len: int) -> int:
    """Group size for a sequence: fixed `group_size`, else `seq_len * group_size_ratio` (LongLoRA), made even.

    With `sft_group_size` set (LongLoRA's SFT rule, llama_attn_replace_sft.py), only lengths that are a
    multiple of 4096 use the ratio; any other length uses groups of `sft_group_size` tokens (8192 there).
    """
    settings = getattr(config, S2_ATTN, None) or {}
    group_size = settings.get("group_size")
    sft_group_size = settings.get("sft_group_size")
    if group_size is None and sft_group_size is not None and seq_len % SFT_LENGTH_MULTIPLE:
        group_size = sft_group_size
    return group_size_for(seq_len, settings.get("group_size_ratio", DEFAULT_GROUP_SIZE_RATIO), group_size)


def _padded_cache_mask(attention_mask: torch.Tensor | None, query_len: int, key_len: int) -> torch.Tensor | None:
    """4D boolean mask for decoding with a cache (query tokens at the end of the keys)."""
    if attention_mask is None:
        return None
    query_positions = torch.arange(key_len - query_len, key_len, device=attention_mask.device)
    causal = torch.arange(key_len, device=attention_mask.device)[None, :] <= query_positions[:, None]
    return causal[None, None] & attention_mask[:, None, None, -key_len:].bool()


def _s2_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, use_flash=False, **kwargs):
    """AttentionInterface entry: S²-Attn for full-sequence passes, plain SDPA when decoding with a cache."""
    query_len, key_len = query.shape[2], key.shape[2]
    if query_len != key_len or query_len == 1:
        mask = _padded_cache_mask(attention_mask, query_len, key_len)
        return sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout, is_causal=mask is None)
    group_size = resolve_group_size(module.config, query_len)
    shifted_from = first_shifted_head(query.shape[1], module.config.num_attention_heads)
    attend = shifted_sparse_attention_varlen if use_flash else shifted_sparse_attention
    output = attend(
        query, key, value, group_size, attention_mask, kwargs.get("position_ids"), scaling, dropout,
        shifted_from=shifted_from,
    )
    return output.transpose(1, 2).contiguous(), None


def s2_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    return _s2_attention_forward(module, query, key, value, attention_mask, scaling, dropout, use_flash=False, **kwargs)


def s2_attention_flash_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    return _s2_attention_forward(module, query, key, value, attention_mask, scaling, dropout, use_flash=True, **kwargs)


def register_s2_attention() -> None:
    """Make `s2_attn` and `s2_attn_flash` valid `attn_implementation` names (idempotent).

    The mask function hands the attention the plain 2D padding mask (or None): S²-Attn builds its own
    per-group masks, so a (seq x seq) mask is never materialised.
    """
    AttentionInterface.register(S2_ATTN, s2_attention_forward)
    AttentionInterface.register(S2_ATTN_FLASH, s2_attention_flash_forward)
    AttentionMaskInterface.register(S2_ATTN, flash_attention_mask)
    AttentionMaskInterface.register(S2_ATTN_FLASH, flash_attention_mask)


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def enable_s2_attn(
    model,
    group_size_ratio: float = DEFAULT_GROUP_SIZE_RATIO,
    group_size: int | None = None,
    use_flash_attn: bool = False,
    sft_group_size: int | None = None,
):
    """Switch a loaded model to S²-Attn. `group_size` (fixed) wins over `group_size_ratio` of each sequence.

    `sft_group_size` turns on LongLoRA's SFT rule (see `resolve_group_size`) for uneven SFT lengths.

    With `use_flash_attn` the flash-attn varlen kernel is used when installed on CUDA; otherwise a
    warning says so and SDPA does the work.
    """
    base = unwrap_model(model)
    num_heads = base.config.num_attention_heads
    if num_heads < 2:
        raise ValueError(f"S²-Attn shifts half of the heads, so it needs at least 2 attention heads (this model has {num_heads})")
    for fixed in (group_size, sft_group_size):
        if fixed is not None:
            check_group_size(fixed)
    check_group_size_ratio(group_size_ratio)
    if use_flash_attn and not flash_attn_available():
        warnings.warn("flash-attn is not installed or no CUDA device is present: S²-Attn runs on SDPA instead", stacklevel=2)
        use_flash_attn = False
    register_s2_attention()
    previous = attn_implementation(base.config)
    if previous in (S2_ATTN, S2_ATTN_FLASH):
        previous = base.config.s2_attn["previous_attn_implementation"]
    base.config.s2_attn = {
        "group_size_ratio": group_size_ratio,
        "group_size": group_size,
        "sft_group_size": sft_group_size,
        "previous_attn_implementation": previous or "sdpa",
    }
    base.set_attn_implementation(S2_ATTN_FLASH if use_flash_attn else S2_ATTN)
    return model


def disable_s2_attn(model, attn_implementation: str | None = None):
    """Return a model to full attention (the implementation it had before, or the one given)."""
    base = unwrap_model(model)
    settings = getattr(base.config, S2_ATTN, None) or {}
    base.set_attn_implementation(attn_implementation or settings.get("previous_attn_implementation", "sdpa"))
    if hasattr(base.config, S2_ATTN):
        del base.config.s2_attn
    return model


def replace_llama_attn(use_flash_attn: bool = True, use_full: bool = False, inference: bool = False) -> None:
    """LongLoRA's one-line entry point, kept for old training scripts.

    LongLoRA patched LlamaAttention for the whole process before the model was loaded. Here the same
    effect comes from registering S²-Attn (group ratio 1/4) as the process's `sdpa` implementation
    (longctx.internals.register_process_wide_sdpa, the one process-wide change longctx makes);
    `use_full=True` or `inference=True` restores plain SDPA. Prefer `enable_s2_attn(model)`, which
    changes one model only.
    """
    if use_full or inference:
        register_process_wide_sdpa()
        return
    if use_flash_attn and not flash_attn_available():
        warnings.warn("flash-attn is not installed or no CUDA device is present: using SDPA", stacklevel=2)
        use_flash_attn = False
    forward = s2_attention_flash_forward if use_flash_attn else s2_attention_forward
    register_process_wide_sdpa(forward, flash_attention_mask)


__all__ = [
    "shifted_sparse_attention",
    "shifted_sparse_attention_varlen",
    "enable_s2_attn",
    "disable_s2_attn",
    "replace_llama_attn",
    "register_s2_attention",
]
