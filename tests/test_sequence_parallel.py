"""Sequence parallelism in one process: size checks, S²-Attn on Ulysses' blocks of heads, batches, documents."""

import pytest
import torch
import torch.nn.functional as F

import longctx.sequence_parallel as sequence_parallel
from longctx.shifted_sparse import first_shifted_head, shifted_sparse_attention, shifted_sparse_attention_varlen
from longctx.sequence_parallel import causal_attention_by_documents, check_heads_split, check_rows_split
from longctx.sequence_parallel_trainer import UlyssesBatches
from longctx.sft_batching import collate_sft
from tests.scripts import run_script_expecting_error
from tests.test_attention import random_qkv, reference_varlen


@pytest.mark.parametrize(
    ("check", "sizes", "numbers"),
    [
        (check_heads_split, (3, 4, 2), ("3", "4 attention heads")),
        (check_heads_split, (4, 12, 6), ("4", "6 key/value heads")),
        (check_rows_split, (2, 2, 127), ("2", "--model_max_length 127")),
        (check_rows_split, (2, 3, 128), ("2", "world size 3")),
    ],
)
def test_sizes_that_cannot_split_name_both_numbers(check, sizes, numbers):
    with pytest.raises(ValueError) as error:
        check(*sizes)
    message = str(error.value)
    assert "\n" not in message and f"--sequence_parallel_size {numbers[0]}" in message and numbers[1] in message


def test_sizes_that_split():
    for size, heads, kv_heads in [(1, 3, 1), (2, 4, 2), (4, 8, 2), (3, 9, 3), (4, 4, 1)]:
        check_heads_split(size, heads, kv_heads)  # fewer key/value heads than processes: DeepSpeed repeats them
    for size, world_size, length in [(1, 1, 7), (2, 4, 128), (3, 3, 96)]:
        check_rows_split(size, world_size, length)


def ulysses_blocks(query, key, value, size):
    """Each rank's heads after DeepSpeed's all-to-all: a contiguous block of query heads and the
    key/value heads they read (repeated first when there are fewer than ranks, as DeepSpeed does)."""
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads < size:
        key, value = (t.repeat_interleave(size // kv_heads, dim=1) for t in (key, value))
    local, local_kv = heads // size, key.shape[1] // size
    for rank in range(size):
        yield (
            rank,
            query[:, rank * local : (rank + 1) * local],
            key[:, rank * local_kv : (rank + 1) * local_kv],
            value[:, rank * local_kv : (rank + 1) * local_kv],
        )


@pytest.mark.parametrize("kernel", ["sdpa", "varlen"])
@pytest.mark.parametrize(("heads", "kv_heads", "size"), [(9, 3, 3), (6, 3, 3), (4, 2, 2), (4, 1, 2), (8, 2, 4), (6, 6, 3)])
def test_s2_attn_on_each_ranks_heads_equals_all_heads(monkeypatch, kernel, heads, kv_heads, size):
    """Shifted heads are the model's second half wherever they land; GQA groups stay with their heads."""
    attend = shifted_sparse_attention
    if kernel == "varlen":
        def attend(*args, **kwargs):
            return shifted_sparse_attention_varlen(*args, varlen_fn=reference_varlen, **kwargs)
    query, key, value = random_qkv(2, heads, kv_heads, 48)
    positions = torch.cat([torch.arange(30), torch.arange(18)])[None].expand(2, -1)  # packed: documents too
    expected = attend(query, key, value, 16, position_ids=positions)
    for rank, *states in ulysses_blocks(query, key, value, size):
        monkeypatch.setattr(sequence_parallel, "first_local_head", lambda local, rank=rank: rank * local)
        local = heads // size
        shifted_from = first_shifted_head(local, heads)
        got = attend(*states, 16, position_ids=positions, shifted_from=shifted_from)
        torch.testing.assert_close(got, expected[:, rank * local : (rank + 1) * local], rtol=1e-5, atol=1e-6)


def test_first_shifted_head_of_each_rank(monkeypatch):
    assert first_shifted_head(9, 9) == 4  # all heads: LongLoRA's split
    monkeypatch.setattr(sequence_parallel, "first_local_head", lambda local: 2 * local)  # rank 2 of 3
    assert first_shifted_head(3, 9) == 0  # heads 6-8: all shifted
    monkeypatch.setattr(sequence_parallel, "first_local_head", lambda local: local)  # rank 1 of 3
    assert first_shifted_head(3, 9) == 1  # heads 3-5: head 3 unshifted, 4 and 5 shifted
    monkeypatch.setattr(sequence_parallel, "first_local_head", lambda local: 0)
    assert first_shifted_head(3, 9) == 3  # heads 0-2: none shifted


def test_full_attention_keeps_packed_documents_apart():
    query, key, value = random_qkv(2, 4, 2, 40)
    positions = torch.stack([torch.cat([torch.arange(25), torch.arange(15)]), torch.arange(40)])
    got, _ = causal_attention_by_documents(None, query, key, value, None, position_ids=positions)
    same_document = positions.new_tensor([[0] * 25 + [1] * 15, [0] * 40])
    allowed = (same_document[:, :, None] == same_document[:, None, :]) & torch.ones(40, 40, dtype=torch.bool).tril()
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None], enable_gqa=True)
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_batches_fit_deepspeeds_sharding():
    features = [
        {"input_ids": torch.arange(5), "labels": torch.arange(5), "position_ids": torch.arange(5),
         "loss_weights": torch.tensor([0.0, 0.5, 0.5, 1.0, 1.0]), "num_sequences": torch.tensor(2)},
    ]
    batch = UlyssesBatches(lambda rows: collate_sft(rows, pad_token_id=0, pad_to_multiple_of=4))(features)
    assert batch["input_ids"].shape == (1, 8) and batch["num_sequences"] == 2 and isinstance(batch["num_sequences"], int)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]  # padding: a document of its own
    assert batch["shift_loss_weights"].tolist() == [[0.5, 0.5, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]  # weight of the next token
    assert "loss_weights" not in batch

    rows = UlyssesBatches(lambda rows: {"input_ids": torch.zeros(2, 6, dtype=torch.long)})(None)
    assert rows["position_ids"].tolist() == [list(range(6))] * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--sequence_parallel_size", "2", "--model_max_length", "127"), "does not divide --model_max_length 127"),
        (("--sequence_parallel_size", "2"), "--sequence_parallel_size 2 does not divide the world size 1"),
        (("--sequence_parallel_size", "0"), "--sequence_parallel_size must be at least 1 (got 0)"),
    ],
)
def test_scripts_refuse_bad_sizes_before_loading_a_model(capsys, monkeypatch, tmp_path, tiny_model_dir, args, message):
    import longctx.modeling

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(longctx.modeling, "load_model_and_tokenizer", never)
    line = run_script_expecting_error(
        capsys, "fine-tune.py", "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path, "--model_max_length", "128",
        *args,
    )
    assert message in line


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("fine-tune.py", ("--group_size", "20"), "each of the 2 shards holds 64 tokens, not a multiple of the S²-Attn group size 20"),
        ("fine-tune.py", ("--use_full_attn", "True"), "halo shards S²-Attn's groups: it cannot run with --use_full_attn True"),
        ("supervised-fine-tune.py", ("--data_path", "train.json"), "halo needs unpacked, unpadded rows (fine-tune.py's)"),
    ],
)
def test_halo_refuses_what_it_cannot_split_before_loading_a_model(
    capsys, monkeypatch, tmp_path, tiny_model_dir, script, args, message
):
    import longctx.modeling

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(longctx.modeling, "load_model_and_tokenizer", never)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it: the sizes split, the halo's own checks decide
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.json").write_text('[{"instruction": "q", "output": "a"}]')
    line = run_script_expecting_error(
        capsys, script, "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path, "--model_max_length", "128",
        "--sequence_parallel_size", "2", "--sequence_parallel_mode", "halo", *args,
    )
    assert message in line


def test_unknown_sequence_parallel_mode_is_one_line(capsys, tmp_path, tiny_model_dir):
    line = run_script_expecting_error(
        capsys, "fine-tune.py", "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path,
        "--sequence_parallel_mode", "ring",
    )
    assert "--sequence_parallel_mode ring is not one of ulysses, halo" in line
