"""Shifted sparse attention (S²-Attn), the training-time attention of LongLoRA.

Chen et al., "LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models" (ICLR 2024).
Tokens attend causally inside groups of `group_size`; half of the heads use groups shifted by half a
group so information flows between neighbouring groups. At inference the model uses full attention.

Unlike LongLoRA's eager path (a cyclic roll that lets the first half group see the end of the
sequence), the shift never wraps: the first and last half groups of the shifted heads stand alone.
The groups are folded into the batch dimension and handed to SDPA (or to flash-attn's varlen kernel
on CUDA), so the cost is linear in the sequence length for a fixed group size.

The model is switched through transformers' `AttentionInterface` under the name `s2_attn`; its
settings live in `model.config.s2_attn` so every layer reads the same values.
"""

from __future__ import annotations

import importlib.util
import itertools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask, sdpa_mask

S2_ATTN = "s2_attn"
S2_ATTN_FLASH = "s2_attn_flash"
DEFAULT_GROUP_SIZE_RATIO = 0.25
SFT_LENGTH_MULTIPLE = 4096  # LongLoRA's SFT rule: lengths that are multiples of this use the group ratio
LONGLORA_SFT_GROUP_SIZE = 8192


@dataclass(frozen=True)
class _Block:
    """A run of `num_groups` consecutive groups of `group_len` tokens starting at `start`."""

    start: int
    num_groups: int
    group_len: int

    @property
    def end(self) -> int:
        return self.start + self.num_groups * self.group_len


def group_blocks(seq_len: int, group_size: int, shifted: bool) -> list[_Block]:
    """Partition `[0, seq_len)` into the groups of one head half, clipped to the sequence.

    Unshifted: `[kG, (k+1)G)`. Shifted: `[kG - G/2, kG + G/2)`, so the first half group stands alone.
    Full groups are returned as one block (folded into the batch later); a short group stands alone.
    """
    blocks = []
    start = 0
    if shifted:
        first = min(group_size // 2, seq_len)
        blocks.append(_Block(0, 1, first))
        start = first
    num_full = (seq_len - start) // group_size
    if num_full:
        blocks.append(_Block(start, num_full, group_size))
        start += num_full * group_size
    if start < seq_len:
        blocks.append(_Block(start, 1, seq_len - start))
    return blocks


def segment_ids(
    batch_size: int,
    seq_len: int,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Ids such that a query may attend to a key only when both carry the same id (plus causality).

    Packed documents are found where position ids do not increase by one (as transformers does);
    each padding token gets a unique negative id, so it attends only to itself: real tokens never see
    padding and no softmax row is ever empty. Returns None when every row is one unpadded document.
    """
    segments = None
    if position_ids is not None and seq_len > 1:
        position_ids = position_ids.to(device).expand(batch_size, -1)
        starts = torch.ones_like(position_ids, dtype=torch.bool)
        starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
        starts[:, 0] = False
        if starts.any():
            segments = starts.long().cumsum(-1)
    if attention_mask is not None and not bool(attention_mask.all()):
        if segments is None:
            segments = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
        unique_negative = -1 - torch.arange(seq_len, device=device).expand(batch_size, -1)
        segments = torch.where(attention_mask.to(device).bool(), segments, unique_negative)
    return segments


def document_spans(position_ids: torch.Tensor | None, batch_size: int, seq_len: int) -> list[list[tuple[int, int]]] | None:
    """Per row, the (start, end) spans of packed documents (position ids restart); None if no row is packed."""
    if position_ids is None or seq_len < 2:
        return None
    position_ids = position_ids.expand(batch_size, -1)
    restarts = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not bool(restarts.any()):
        return None
    spans = []
    for row in restarts.cpu():
        bounds = [0, *(row.nonzero().squeeze(-1) + 1).tolist(), seq_len]
        spans.append(list(itertools.pairwise(bounds)))
    return spans


def positions_in_document(position_ids: torch.Tensor | None, batch_size: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """(batch, seq) offset of each token from the start of its packed document (the row start if unpacked)."""
    positions = torch.arange(seq_len, device=device).expand(batch_size, seq_len)
    if position_ids is None or seq_len < 2:
        return positions
    position_ids = position_ids.to(device).expand(batch_size, -1)
    starts = torch.zeros(batch_size, seq_len, dtype=torch.bool, device=device)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    document_start = torch.where(starts, positions, torch.zeros_like(positions)).cummax(-1).values
    return positions - document_start


def head_halves(key: torch.Tensor, value: torch.Tensor, num_heads: int, shifted_from: int | None = None):
    """Pair each query-head half (unshifted, shifted) with the key/value heads it reads.

    Query heads `[0, heads // 2)` are unshifted, as in LongLoRA. `shifted_from` moves the split: under
    sequence parallelism a rank holds a block of the model's heads, and its first shifted head is where
    the model's second half starts (`first_shifted_head`); a half with no heads is skipped. When the
    split cuts through the query group of a key/value head (e.g. 9 heads over 3), keys and values are
    repeated per query head. Heads are axis 1 of `key`/`value`. Yields (query-head slice, keys, values, shifted).
    """
    num_kv_heads = key.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} key/value heads evenly")
    half = num_heads // 2 if shifted_from is None else shifted_from
    queries_per_kv = num_heads // num_kv_heads
    halves = (slice(0, half), slice(half, num_heads))
    if half % queries_per_kv:
        key = key.repeat_interleave(queries_per_kv, dim=1)
        value = value.repeat_interleave(queries_per_kv, dim=1)
        queries_per_kv = 1
    for heads, shifted in zip(halves, (False, True)):
        if heads.start == heads.stop:
            continue
        kv_heads = slice(heads.start // queries_per_kv, heads.stop // queries_per_kv)
        yield heads, key[:, kv_heads], value[:, kv_heads], shifted


def first_shifted_head(local_heads: int, total_heads: int) -> int:
    """Index, among the `local_heads` query heads an attention call holds, of the first shifted one.

    All heads (no sequence parallelism): `total_heads // 2`. Under Ulysses a rank holds a contiguous
    block of the model's heads (longctx.sequence_parallel.first_local_head), and the shifted ones are
    still the model's second half, so S²-Attn is the same function of the weights with or without it.
    """
    if local_heads == total_heads:
        return total_heads // 2
    from longctx.sequence_parallel import first_local_head

    return min(max(total_heads // 2 - first_local_head(local_heads), 0), local_heads)


def _attend_block(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block: _Block,
    segments: torch.Tensor | None,
    scaling: float | None,
    dropout: float,
) -> torch.Tensor:
    """Causal attention inside each group of one block; returns (batch, tokens, heads, head_dim)."""
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]

    def fold(states: torch.Tensor, num_heads: int) -> torch.Tensor:
        # (batch, heads, seq, head_dim) -> (batch * groups, heads, group_len, head_dim)
        states = states[:, :, block.start : block.end]
        states = states.reshape(batch, num_heads, block.num_groups, block.group_len, head_dim)
        return states.transpose(1, 2).reshape(-1, num_heads, block.group_len, head_dim)

    mask = None
    if segments is not None:
        group_segments = segments[:, block.start : block.end].reshape(-1, block.group_len)
        same_segment = group_segments[:, :, None] == group_segments[:, None, :]
        causal = torch.ones(block.group_len, block.group_len, dtype=torch.bool, device=query.device).tril()
        mask = (same_segment & causal)[:, None]  # (batch * groups, 1, group_len, group_len)
    output = F.scaled_dot_product_attention(
        fold(query, heads),
        fold(key, kv_heads),
        fold(value, kv_heads),
        attn_mask=mask,
        dropout_p=dropout,
        is_causal=mask is None,
        scale=scaling,
        enable_gqa=kv_heads != heads,
    )
    # (batch * groups, heads, group_len, head_dim) -> (batch, groups * group_len, heads, head_dim)
    output = output.reshape(batch, block.num_groups, heads, block.group_len, head_dim).permute(0, 1, 3, 2, 4)
    return output.reshape(batch, block.num_groups * block.group_len, heads, head_dim)


def check_group_size(group_size: int) -> None:
    if group_size < 2 or group_size % 2:
        raise ValueError(f"S²-Attn group size must be an even number >= 2 (got {group_size}): the shift is half a group")


def shifted_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    group_size: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    shifted_from: int | None = None,
) -> torch.Tensor:
    """S²-Attn over (batch, heads, seq, head_dim) queries and (batch, kv_heads, seq, head_dim) keys/values.

    Heads `[0, heads // 2)` attend causally within groups `[kG, (k+1)G)`, the other heads within
    groups shifted by G/2, clipped to the sequence. `attention_mask` (batch, seq) of 1/0 marks real
    tokens; `position_ids` that restart mark packed documents, which never attend to each other.
    Groups and shifts are laid out inside each packed document, from its first token, so a document
    packed in a row is attended exactly as if it were alone (LongAlign's packing needs this).
    Any sequence length works: a short last group stands alone. `shifted_from` is the first shifted
    head when the heads given are a block of the model's (see `head_halves`). Returns (batch, heads, seq, head_dim).
    """
    batch, num_heads, seq_len, _ = query.shape
    if num_heads < 2 and shifted_from is None:
        raise ValueError(f"S²-Attn shifts half of the heads, so it needs at least 2 attention heads (got {num_heads})")
    check_group_size(group_size)
    spans = document_spans(position_ids, batch, seq_len)
    if spans is not None:
        rows = []
        for row, row_spans in enumerate(spans):
            pieces = []
            for start, end in row_spans:
                mask = None if attention_mask is None else attention_mask[row : row + 1, start:end]
                states = (t[row : row + 1, :, start:end] for t in (query, key, value))
                pieces.append(shifted_sparse_attention(*states, group_size, mask, None, scaling, dropout, shifted_from))
            rows.append(torch.cat(pieces, dim=2))
        return torch.cat(rows, dim=0)
    segments = segment_ids(batch, seq_len, attention_mask, position_ids, query.device)
    halves = []
    for heads, half_key, half_value, shifted in head_halves(key, value, num_heads, shifted_from):
        pieces = [
            _attend_block(query[:, heads], half_key, half_value, block, segments, scaling, dropout)
            for block in group_blocks(seq_len, group_size, shifted)
        ]
        halves.append(torch.cat(pieces, dim=1))
    return torch.cat(halves, dim=2).transpose(1, 2)


def varlen_runs(group_index: torch.Tensor, segments: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Flattened runs of tokens sharing a group and a segment, for flash-attn's varlen kernel.

    Returns (kept token indices in the flattened batch, cu_seqlens int32, longest run). Padding tokens
    (negative segment ids) are dropped. Rows never share a run because the row index is part of the key.
    """
    batch, seq_len = group_index.shape
    rows = torch.arange(batch, device=group_index.device)[:, None].expand(batch, seq_len)
    if segments is None:
        segments = torch.zeros_like(group_index)
    keep = (segments >= 0).reshape(-1)
    run_key = torch.stack([rows, group_index, segments], dim=-1).reshape(-1, 3)[keep]
    kept_indices = keep.nonzero().squeeze(-1)
    new_run = torch.ones(run_key.shape[0], dtype=torch.bool, device=run_key.device)
    new_run[1:] = (run_key[1:] != run_key[:-1]).any(-1)
    starts = new_run.nonzero().squeeze(-1)
    lengths = torch.diff(starts, append=torch.tensor([run_key.shape[0]], device=starts.device))
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    return kept_indices, cu_seqlens, int(lengths.max())


def shifted_sparse_attention_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    group_size: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    varlen_fn=None,
    shifted_from: int | None = None,
) -> torch.Tensor:
    """S²-Attn through a flash-attn style varlen kernel (LongLoRA's flash path, without the wrap).

    Same semantics and shapes as `shifted_sparse_attention`. `varlen_fn` defaults to
    `flash_attn.flash_attn_varlen_func`; tests pass a plain reference with the same signature.
    """
    if varlen_fn is None:
        from flash_attn import flash_attn_varlen_func as varlen_fn
    batch, num_heads, seq_len, head_dim = query.shape
    check_group_size(group_size)
    segments = segment_ids(batch, seq_len, attention_mask, position_ids, query.device)
    positions = positions_in_document(position_ids, batch, seq_len, query.device)  # groups start at each document
    # (batch, heads, seq, head_dim) -> (batch * seq, heads, head_dim), the layout flash-attn expects
    query, key, value = (t.transpose(1, 2).reshape(batch * seq_len, t.shape[1], head_dim) for t in (query, key, value))
    halves = []
    for heads, half_key, half_value, shifted in head_halves(key, value, num_heads, shifted_from):
        shift = group_size // 2 if shifted else 0
        kept, cu_seqlens, max_len = varlen_runs((positions + shift) // group_size, segments)
        attended = varlen_fn(
            query[kept, heads], half_key[kept], half_value[kept], cu_seqlens, cu_seqlens, max_len, max_len,
            dropout_p=dropout, softmax_scale=scaling, causal=True,
        )
        # padding tokens were dropped; they get zeros (nothing downstream reads them)
        half_output = query.new_zeros(batch * seq_len, heads.stop - heads.start, head_dim)
        halves.append(half_output.index_copy(0, kept, attended.to(query.dtype)))
    return torch.cat(halves, dim=1).reshape(batch, seq_len, num_heads, head_dim).transpose(1, 2)


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
    if group_size is None:
        ratio = settings.get("group_size_ratio", DEFAULT_GROUP_SIZE_RATIO)
        group_size = max(2, int(seq_len * ratio) // 2 * 2)
    return group_size


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


def _base_model(model):
    """The transformers model under PEFT/DeepSpeed wrappers."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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
    base = _base_model(model)
    num_heads = base.config.num_attention_heads
    if num_heads < 2:
        raise ValueError(f"S²-Attn shifts half of the heads, so it needs at least 2 attention heads (this model has {num_heads})")
    for fixed in (group_size, sft_group_size):
        if fixed is not None:
            check_group_size(fixed)
    if not 0 < group_size_ratio <= 1:
        raise ValueError(f"--group_size_ratio must be in (0, 1] (got {group_size_ratio})")
    if use_flash_attn and not flash_attn_available():
        warnings.warn("flash-attn is not installed or no CUDA device is present: S²-Attn runs on SDPA instead", stacklevel=2)
        use_flash_attn = False
    register_s2_attention()
    previous = base.config._attn_implementation
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
    base = _base_model(model)
    settings = getattr(base.config, S2_ATTN, None) or {}
    base.set_attn_implementation(attn_implementation or settings.get("previous_attn_implementation", "sdpa"))
    if hasattr(base.config, S2_ATTN):
        del base.config.s2_attn
    return model


def replace_llama_attn(use_flash_attn: bool = True, use_full: bool = False, inference: bool = False) -> None:
    """LongLoRA's one-line entry point, kept for old training scripts.

    LongLoRA patched LlamaAttention for the whole process before the model was loaded. Here the same
    effect comes from registering S²-Attn (group ratio 1/4) as the process's `sdpa` implementation;
    `use_full=True` or `inference=True` restores plain SDPA. Prefer `enable_s2_attn(model)`, which
    changes one model only.
    """
    if use_full or inference:
        AttentionInterface.register("sdpa", sdpa_attention_forward)
        AttentionMaskInterface.register("sdpa", sdpa_mask)
        return
    if use_flash_attn and not flash_attn_available():
        warnings.warn("flash-attn is not installed or no CUDA device is present: using SDPA", stacklevel=2)
        use_flash_attn = False
    AttentionInterface.register("sdpa", s2_attention_flash_forward if use_flash_attn else s2_attention_forward)
    AttentionMaskInterface.register("sdpa", flash_attention_mask)


__all__ = [
    "shifted_sparse_attention",
    "shifted_sparse_attention_varlen",
    "enable_s2_attn",
    "disable_s2_attn",
    "replace_llama_attn",
    "register_s2_attention",
]
