"""--sequence_parallel_mode halo: S²-Attn on shards with a half-group halo equals S²-Attn on the whole row.

Each case runs the shards in separate processes (gloo, CPU), float64, and compares every shard's output
and the gradients of its queries, keys and values with one process's on the whole row.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longctx.halo_attention import check_halo_shard, halo_shifted_sparse_attention
from longctx.shifted_sparse import shifted_sparse_attention


def random_row(heads: int, kv_heads: int, seq_len: int):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, heads, seq_len, 8, generator=generator, dtype=torch.float64)
    key, value = (torch.randn(2, kv_heads, seq_len, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    upstream = torch.randn(2, heads, seq_len, 8, generator=generator, dtype=torch.float64)
    return query, key, value, upstream


def output_and_gradients(attend, query, key, value, upstream):
    query, key, value = (t.detach().requires_grad_() for t in (query, key, value))
    output = attend(query, key, value)
    (output * upstream).sum().backward()
    return [output.detach(), query.grad, key.grad, value.grad]


CASES = [  # heads, key/value heads, processes, row length, group size
    (4, 2, 2, 64, 8),  # two groups per shard
    (9, 3, 3, 48, 16),  # SmolLM2's heads: the split cuts a key/value head's query group
    (3, 1, 4, 64, 16),  # more processes than heads (Ulysses could not): one group per shard
    (2, 2, 2, 32, 2),  # the smallest group: a halo of one token
]


def shard_worker(rank, port, folder):
    """Every case in one set of processes (starting them is the slow part); a case of N processes runs on
    a group of the first N."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=max(c[2] for c in CASES))
    try:
        for index, (heads, kv_heads, size, seq_len, group_size) in enumerate(CASES):
            group = dist.new_group(list(range(size)))  # every process takes part in making each group
            if rank >= size:
                continue
            width = seq_len // size
            shard = [t[:, :, rank * width : (rank + 1) * width] for t in random_row(heads, kv_heads, seq_len)]
            attend = lambda q, k, v: halo_shifted_sparse_attention(q, k, v, group_size, group)  # noqa: E731
            torch.save(output_and_gradients(attend, *shard), f"{folder}/{index}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def shard_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("halo")
    mp.spawn(shard_worker, args=(free_port(), str(folder)), nprocs=max(case[2] for case in CASES))
    return folder


@pytest.mark.parametrize("index", range(len(CASES)))
def test_shards_with_halo_equal_the_whole_row(shard_results, index):
    heads, kv_heads, size, seq_len, group_size = CASES[index]
    attend = lambda q, k, v: shifted_sparse_attention(q, k, v, group_size)  # noqa: E731
    expected = output_and_gradients(attend, *random_row(heads, kv_heads, seq_len))
    shards = [torch.load(shard_results / f"{index}-{rank}.pt") for rank in range(size)]
    names = ("output", "query gradient", "key gradient", "value gradient")
    for position, name in enumerate(names):
        got = torch.cat([shard[position] for shard in shards], dim=2)
        torch.testing.assert_close(got, expected[position], rtol=1e-12, atol=1e-12, msg=name)


def test_shard_not_a_whole_number_of_groups_names_both():
    with pytest.raises(ValueError, match=r"each of the 2 shards holds 24 tokens, not a multiple of the S²-Attn group size 16"):
        check_halo_shard(24, 16, 2)
