"""The S²-Attn computation itself: shifted groups, packed documents, SDPA and flash-attn varlen paths.

Chen et al., "LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models" (ICLR 2024).
Tokens attend causally inside groups of `group_size`; half of the heads use groups shifted by half a
group so information flows between neighbouring groups. Unlike LongLoRA's eager path (a cyclic roll
that lets the first half group see the end of the sequence), the shift never wraps: the first and
last half groups of the shifted heads stand alone. The groups are folded into the batch dimension
and handed to SDPA (or to flash-attn's varlen kernel on CUDA), so the cost is linear in the
sequence length for a fixed group size. How a model is switched to it: longctx.attention.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def document_restarts(position_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(batch, seq - 1): True before each token whose position id does not follow the previous one's.

    That is where a packed document starts (position ids restart per document, as transformers finds
    packed sequences); the one place S²-Attn's paths tell documents apart.
    """
    position_ids = position_ids.expand(batch_size, -1)
    return position_ids[:, 1:] != position_ids[:, :-1] + 1


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
        restarts = document_restarts(position_ids.to(device), batch_size)
        if restarts.any():
            segments = F.pad(restarts, (1, 0)).long().cumsum(-1)
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
    restarts = document_restarts(position_ids, batch_size)
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
    starts = F.pad(document_restarts(position_ids.to(device), batch_size), (1, 0))
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


def attend_groups(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    group_size: int,
    shifted: bool,
    segments: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Causal attention inside each group of one head half (`group_blocks`), over the whole sequence
    given; returns (batch, tokens, heads, head_dim)."""
    blocks = group_blocks(query.shape[2], group_size, shifted)
    return torch.cat([_attend_block(query, key, value, block, segments, scaling, dropout) for block in blocks], dim=1)


def check_group_size(group_size: int, flag: str = "--group_size") -> None:
    """The one check of a fixed S²-Attn group size (the command line and the library both call it)."""
    if group_size < 2 or group_size % 2:
        raise ValueError(f"{flag} must be an even number >= 2 (got {group_size}): S²-Attn shifts by half a group")


def group_size_for(seq_len: int, group_size_ratio: float, group_size: int | None = None) -> int:
    """The S²-Attn group of a sequence: a fixed `group_size`, else LongLoRA's `seq_len * ratio` made even."""
    return group_size if group_size is not None else max(2, int(seq_len * group_size_ratio) // 2 * 2)


def check_group_size_ratio(group_size_ratio: float) -> None:
    """The one check of S²-Attn's group size as a fraction of the sequence length."""
    if not 0 < group_size_ratio <= 1:
        raise ValueError(f"--group_size_ratio must be in (0, 1] (got {group_size_ratio})")


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
    halves = [
        attend_groups(query[:, heads], half_key, half_value, group_size, shifted, segments, scaling, dropout)
        for heads, half_key, half_value, shifted in head_halves(key, value, num_heads, shifted_from)
    ]
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
