"""S²-Attn on a shard of the sequence, with half a group of keys and values from the previous shard.

`--sequence_parallel_mode halo`: S²-Attn's groups are local, so when every shard of a row is a whole
number of groups, a process can attend on its own shard. Unshifted heads need nothing from elsewhere;
the shifted heads' group that straddles a shard boundary needs the previous shard's last half group
of keys and values (its queries on the previous process see only their own side, causally). So each
process sends that half group to the next one and, on the way back, receives its gradient: no
all-to-all of every query, key, value and output as under Ulysses, and no limit from the head count
(SmolLM2's 3 key/value heads cap Ulysses at 3 processes). The groups are laid out exactly as on one
process (longctx.shifted_sparse: the first half group of the shifted heads stands alone, no wrap), so
training is the same function of the weights. Rows must be unpacked (fine-tune.py's), the kernel SDPA.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from longctx.shifted_sparse import attend_groups, document_restarts, head_halves

UNPACKED_ROWS_ONLY = "--sequence_parallel_mode halo needs unpacked, unpadded rows (fine-tune.py's): use ulysses here"


def _exchange(tensor: torch.Tensor, group, rank: int, size: int, to_next: bool) -> torch.Tensor:
    """Send `tensor` one process along the group (to_next: rank + 1; else rank - 1) and receive the
    same shape from the other side; zeros where there is no such process (the ends do not wrap)."""
    received = torch.zeros_like(tensor)
    send_to, receive_from = (rank + 1, rank - 1) if to_next else (rank - 1, rank + 1)
    operations = []
    if 0 <= send_to < size:
        operations.append(dist.P2POp(dist.isend, tensor, dist.get_global_rank(group, send_to), group))
    if 0 <= receive_from < size:
        operations.append(dist.P2POp(dist.irecv, received, dist.get_global_rank(group, receive_from), group))
    for request in dist.batch_isend_irecv(operations) if operations else []:
        request.wait()
    return received


class _FromPrevious(torch.autograd.Function):
    """The previous process's `tail` (zeros on the first); backward hands the gradient back to its owner."""

    @staticmethod
    def forward(ctx, tail, group, rank, size):
        ctx.group, ctx.rank, ctx.size = group, rank, size
        return _exchange(tail.contiguous(), group, rank, size, to_next=True)

    @staticmethod
    def backward(ctx, gradient):
        return _exchange(gradient.contiguous(), ctx.group, ctx.rank, ctx.size, to_next=False), None, None, None


def check_halo_shard(shard_len: int, group_size: int, size: int) -> None:
    """One line naming both numbers unless every shard is a whole number of S²-Attn groups."""
    if shard_len % group_size:
        raise ValueError(
            f"--sequence_parallel_mode halo: each of the {size} shards holds {shard_len} tokens, not a multiple of "
            f"the S²-Attn group size {group_size}"
        )


def halo_shifted_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    group_size: int,
    group,
    scaling: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """S²-Attn of this process's shard: (batch, heads, shard, head_dim) queries, (batch, kv_heads, shard,
    head_dim) keys/values, shards in rank order along the row. Returns (batch, heads, shard, head_dim),
    this shard's rows of what `shifted_sparse_attention` gives on the whole row.
    """
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    batch, num_heads, shard_len, head_dim = query.shape
    check_halo_shard(shard_len, group_size, size)
    half = group_size // 2
    halo = _FromPrevious.apply(torch.stack([key[:, :, -half:], value[:, :, -half:]]), group, rank, size)
    # from half a group before the shard, the shifted groups are unshifted ones: with the halo's keys and
    # values in front (and placeholder queries, whose outputs are dropped) they are attended as such
    front = half if rank else 0  # the first shard has no halo: its shifted heads start alone, as on one process
    if rank:
        key, value = torch.cat([halo[0], key], 2), torch.cat([halo[1], value], 2)
    halves = []
    for heads, half_key, half_value, shifted in head_halves(key, value, num_heads):
        if shifted and rank:
            placeholders = query.new_zeros(batch, heads.stop - heads.start, half, head_dim)
            query_ext = torch.cat([placeholders, query[:, heads]], 2)
            halves.append(attend_groups(query_ext, half_key, half_value, group_size, False, None, scaling, dropout)[:, half:])
        else:
            half_key, half_value = half_key[:, :, front:], half_value[:, :, front:]
            halves.append(attend_groups(query[:, heads], half_key, half_value, group_size, shifted, None, scaling, dropout))
    output = torch.cat(halves, dim=2).transpose(1, 2)
    if rank == 0:
        output = output + 0 * halo.sum()  # the first shard reads no halo, yet its gradient exchange must run
    return output


def halo_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface entry that replaces Ulysses' wrapper while a halo run trains (on its shard)."""
    from longctx.attention import resolve_group_size
    from longctx.internals import sequence_parallel_group

    position_ids = kwargs.get("position_ids")
    packed = position_ids is not None and bool(document_restarts(position_ids, query.shape[0]).any())
    if packed or (attention_mask is not None and not bool(attention_mask.all())):
        raise ValueError(UNPACKED_ROWS_ONLY)  # the flags were checked; this guards a direct library use
    group = sequence_parallel_group()
    group_size = resolve_group_size(module.config, query.shape[2] * dist.get_world_size(group))
    output = halo_shifted_sparse_attention(query, key, value, group_size, group, scaling, dropout)
    return output.transpose(1, 2).contiguous(), None
