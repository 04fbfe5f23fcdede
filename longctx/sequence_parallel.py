"""Sequence parallelism: each row's tokens split over a group of processes (DeepSpeed Ulysses).

A row too long for one device's activations is cut into `--sequence_parallel_size` contiguous shards,
one per process of a group. Every layer runs on its shard, except attention: there an all-to-all
gives each process the whole sequence for a block of the heads, and a second one gives the shards
back (Jacobs et al., "DeepSpeed Ulysses", 2023; ALST, 2025). The engine is the one that ships it:
`deepspeed.runtime.sequence_parallel.ulysses_sp`, wired in as transformers' Trainer and accelerate's
`ParallelismConfig(sp_backend="deepspeed")` do it. So it runs under DeepSpeed (any ZeRO stage, on
GPUs, and on CPUs over gloo); processes beyond one group are data parallel.

What this module adds around it, so that training is the same function of the weights as on one process:
- the sizes are checked before any model loads (`check_rows_split`, `check_heads_split`);
- S²-Attn, after the all-to-all, shifts the model's second half of the heads, wherever they landed
  (`first_local_head`, read by longctx.shifted_sparse.first_shifted_head);
- full attention keeps packed documents apart: DeepSpeed drops the masks (each was built for one
  shard), so plain SDPA would let them see each other (`causal_attention_by_documents`);
- `--sequence_parallel_mode halo` keeps DeepSpeed's groups and engine but not its all-to-all: S²-Attn
  runs on each shard with half a group from the previous process (longctx.halo_attention);
- the attention functions are given back after training, so a check on one process runs plainly
  (`split_rows_attention`).
The loss and data side is longctx.sequence_parallel_trainer.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from longctx.errors import check_choice

SEQUENCE_PARALLEL_MODES = ("ulysses", "halo")
DEFAULT_DEEPSPEED_CONFIG = Path(__file__).resolve().parent.parent / "ds_configs" / "stage2.json"
DOCUMENTS_ATTENTION = "causal_documents"


def sequence_parallel_arguments(train_args) -> None:
    """Check --sequence_parallel_size against the run (`check_rows_split`) and set what it needs
    before TrainingArguments reads it.

    Ulysses runs inside DeepSpeed's engine: without --deepspeed the bundled ZeRO-2 config is used.
    DeepSpeed fixes the micro-batch shape, so with several rows per batch a short last batch is dropped.
    """
    size = train_args.sequence_parallel_size
    check_rows_split(size, int(os.environ.get("WORLD_SIZE", "1")), train_args.model_max_length)
    check_choice("--sequence_parallel_mode", train_args.sequence_parallel_mode, SEQUENCE_PARALLEL_MODES)
    if size == 1:
        return
    if train_args.sequence_parallel_mode == "halo":
        check_halo_run(train_args)
    if not train_args.deepspeed:
        if not DEFAULT_DEEPSPEED_CONFIG.is_file():
            raise ValueError("--sequence_parallel_size runs under DeepSpeed: pass --deepspeed with a ZeRO config")
        print(f"--sequence_parallel_size {size}: DeepSpeed ZeRO-2 ({DEFAULT_DEEPSPEED_CONFIG.name}); --deepspeed picks another")
        train_args.deepspeed = str(DEFAULT_DEEPSPEED_CONFIG)
    if train_args.per_device_train_batch_size > 1:
        train_args.dataloader_drop_last = True


def check_rows_split(size: int, world_size: int, length: int) -> None:
    """One line naming both numbers unless groups of `size` processes can cut rows of `length` tokens.

    `world_size` is what the launcher (torchrun, deepspeed) says, read before any process group exists.
    """
    if size < 1:
        raise ValueError(f"--sequence_parallel_size must be at least 1 (got {size})")
    if length % size:
        raise ValueError(f"--sequence_parallel_size {size} does not divide --model_max_length {length}")
    if world_size % size:
        raise ValueError(f"--sequence_parallel_size {size} does not divide the world size {world_size} (processes)")


def check_halo_run(train_args) -> None:
    """`--sequence_parallel_mode halo` splits S²-Attn's groups, so it needs S²-Attn, shards of whole groups
    and rows of one unpadded stretch of text (groups of packed documents start at each document)."""
    from longctx.halo_attention import UNPACKED_ROWS_ONLY, check_halo_shard
    from longctx.shifted_sparse import group_size_for

    if train_args.rows_packed_or_padded:
        raise ValueError(UNPACKED_ROWS_ONLY)
    if train_args.use_full_attn:
        raise ValueError("--sequence_parallel_mode halo shards S²-Attn's groups: it cannot run with --use_full_attn True")
    length, size = train_args.model_max_length, train_args.sequence_parallel_size
    check_halo_shard(length // size, group_size_for(length, train_args.group_size_ratio, train_args.group_size), size)


def check_heads_split(size: int, num_heads: int, num_kv_heads: int) -> None:
    """One line naming both numbers unless each process can hold heads/size query heads after the all-to-all
    (key/value heads are split the same way, or repeated when there are fewer of them than processes)."""
    if num_heads % size:
        raise ValueError(f"--sequence_parallel_size {size} does not divide the model's {num_heads} attention heads")
    if num_kv_heads % size and size % num_kv_heads:
        raise ValueError(
            f"--sequence_parallel_size {size} and the model's {num_kv_heads} key/value heads: one must divide the other"
        )


def check_sequence_parallel(model_name_or_path: str, train_args, cache_dir: str | None = None) -> None:
    """`check_heads_split` for a run, from the model's config alone (no weights loaded)."""
    if getattr(train_args, "sequence_parallel_size", 1) == 1 or train_args.sequence_parallel_mode == "halo":
        return  # the halo keeps every head on every process
    from transformers import AutoConfig

    from longctx.modeling import resolve_model_path

    config = AutoConfig.from_pretrained(
        resolve_model_path(model_name_or_path, cache_dir), local_files_only=True, cache_dir=cache_dir
    ).get_text_config()
    num_heads = config.num_attention_heads
    check_heads_split(train_args.sequence_parallel_size, num_heads, getattr(config, "num_key_value_heads", None) or num_heads)


def ulysses_parallelism_config(size: int, world_size: int):
    """accelerate's ParallelismConfig for DeepSpeed Ulysses groups of `size`, the rest data parallel.

    Rows may differ in length from batch to batch (SFT), so the sequence length is variable. The
    attention implementation is named at training time (`split_rows_attention`).
    """
    from accelerate import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    handler = DeepSpeedSequenceParallelConfig(sp_seq_length_is_variable=True, sp_attn_implementation="sdpa")
    return ParallelismConfig(sp_size=size, sp_backend="deepspeed", dp_replicate_size=world_size // size, sp_handler=handler)


def first_local_head(local_heads: int) -> int:
    """The model-wide index of this process's first query head after Ulysses' all-to-all.

    DeepSpeed hands rank r of the group the contiguous block of heads [r * local, (r + 1) * local)
    (and key/value heads likewise, so each query head still reads its own key/value head).
    """
    from longctx.internals import sequence_parallel_rank

    return sequence_parallel_rank() * local_heads


def causal_attention_by_documents(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Full causal attention in which packed documents (position ids restarting) never see each other.

    An AttentionInterface function on (batch, heads, seq, head_dim); each document is one causal SDPA
    call, so no (seq x seq) mask is built. Under Ulysses `attention_mask` is always None: rows have
    no padding mask (SFT padding is a document of its own, longctx.sft_batching).
    """
    from longctx.shifted_sparse import document_spans

    batch, num_heads, seq_len, _ = query.shape
    spans = document_spans(kwargs.get("position_ids"), batch, seq_len) or [[(0, seq_len)]] * batch
    rows = []
    for row, row_spans in enumerate(spans):
        pieces = [
            F.scaled_dot_product_attention(
                query[row : row + 1, :, start:end],
                key[row : row + 1, :, start:end],
                value[row : row + 1, :, start:end],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=key.shape[1] != num_heads,
            )
            for start, end in row_spans
        ]
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def _register_documents_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    from longctx.internals import flash_attention_mask

    AttentionInterface.register(DOCUMENTS_ATTENTION, causal_attention_by_documents)
    AttentionMaskInterface.register(DOCUMENTS_ATTENTION, flash_attention_mask)


@contextlib.contextmanager
def split_rows_attention(model, sp_handler, mode: str = "ulysses"):
    """While training: the model's attention on split rows; afterwards, all as before.

    ulysses: as DeepSpeed's wrapper gives it. S²-Attn (either kernel) and flash-attn read packed
    documents from the position ids DeepSpeed gathers; SDPA does not, so full attention on SDPA
    becomes `causal_attention_by_documents`. halo: DeepSpeed makes only the groups, and S²-Attn runs
    on each shard (longctx.halo_attention). Either way the implementation's entry in transformers'
    table is replaced for the whole process; it is put back on the way out, with the model's own
    implementation, so later passes on one process (a perplexity check) never wait on the group.
    """
    from longctx.internals import attn_implementation, deepspeed_groups_without_ulysses, keeping_attention_overrides
    from longctx.wrappers import unwrap_model

    base = unwrap_model(model)
    implementation = attn_implementation(base.config)
    if mode == "halo":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        from longctx.halo_attention import halo_attention_forward

        with keeping_attention_overrides(), deepspeed_groups_without_ulysses():
            ALL_ATTENTION_FUNCTIONS[implementation] = halo_attention_forward
            yield
        return
    if implementation == "sdpa":
        _register_documents_attention()
        base.set_attn_implementation(DOCUMENTS_ATTENTION)
    sp_handler.sp_attn_implementation = attn_implementation(base.config)  # accelerate lists only its own names
    try:
        with keeping_attention_overrides():  # DeepSpeed's wrapper goes in as such an override
            yield
    finally:
        if attn_implementation(base.config) != implementation:
            base.set_attn_implementation(implementation)
