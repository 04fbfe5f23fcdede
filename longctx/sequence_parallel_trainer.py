"""LongContextTrainer under sequence parallelism: batches, loss and its scale over shards of rows.

`ShardedRows` gathers one batch from each process of a group and hands every process its shard of
each, one after the other, labels shifted before the cut (`shift_labels`: a shard's last target is
the next shard's first token), as DeepSpeed's adapter does; `UlyssesBatches` makes a batch fit that;
`SequenceParallelTrainer` computes the chunked loss on a shard and scales it so that the gradients
DeepSpeed reduces equal one process's on whole rows.
"""

from __future__ import annotations

import collections

import torch
import torch.nn.functional as F

from longctx.internals import sequence_parallel_group
from longctx.loss import IGNORE_INDEX, chunked_loss_sum, decoder_and_head, final_hidden_states
from longctx.trainer import LongContextTrainer


class UlyssesBatches:
    """Wrap a collator so its batches shard correctly.

    Position ids are added where a batch has none (every token keeps its place in the row after the
    cut), loss weights are shifted like the labels (`shift_loss_weights`), and the sequence count
    becomes a plain number, copied to every shard rather than cut. Row lengths are the collator's to
    make a multiple of the group size (pretraining rows: --model_max_length, checked; SFT: padded).
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = dict(self.collator(features))
        rows, length = batch["input_ids"].shape
        if "position_ids" not in batch:
            batch["position_ids"] = torch.arange(length).repeat(rows, 1)
        if "loss_weights" in batch:
            batch["shift_loss_weights"] = F.pad(batch.pop("loss_weights")[:, 1:], (0, 1))
        if "num_sequences" in batch:
            batch["num_sequences"] = int(batch["num_sequences"])
        return batch


class ShardedRows:
    """The train loader under sequence parallelism: every process of a group gets its shard of each row.

    DeepSpeed's `UlyssesSPDataLoaderAdapter` (which the Trainer puts in, and this replaces) does the
    same: one batch is gathered from each process of the group, and each is handed out in turn, every
    process keeping its contiguous slice of the tokens, labels shifted before the cut (`shift_labels`).
    Unlike it, rows of different lengths on different processes (SFT) are gathered through gloo too,
    whose all-gather needs one shape (they are padded for the exchange and cut back), `set_epoch`
    reaches the wrapped loader (each epoch its own order, as on one process), and `skipping(n)` gives
    the loader past the first n shards a resumed run already trained on.
    """

    def __init__(self, loader, group, rank: int, size: int, device):
        self.loader, self.group, self.rank, self.size, self.device = loader, group, rank, size, device
        self.rows = iter(loader)
        self.shards: collections.deque = collections.deque()

    @classmethod
    def replacing(cls, adapter) -> ShardedRows:
        return cls(adapter.dl, adapter.sp_group, adapter.sp_rank, adapter.sp_world_size, adapter.device)

    def __len__(self) -> int:
        return len(self.loader) * self.size

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if not self.shards:
            self.refill()
        return self.shards.popleft()

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def skipping(self, shards: int) -> ShardedRows:
        """Whole gathers are skipped without reading their rows, then the rest of one gather is dropped."""
        from accelerate import skip_first_batches

        loader = ShardedRows(
            skip_first_batches(self.loader, shards // self.size), self.group, self.rank, self.size, self.device
        )
        for _ in range(shards % self.size):
            next(loader)
        return loader

    def refill(self) -> None:
        try:
            batch = next(self.rows)
        except StopIteration:
            self.rows = iter(self.loader)  # the next epoch starts afresh
            raise
        for rows in self.gathered(batch):
            self.shards.append(self.shard(rows))

    def gathered(self, batch: dict) -> list[dict]:
        """The batch of every process of the group, in rank order."""
        length = torch.tensor([batch["input_ids"].shape[1]], device=self.device)
        lengths = [torch.zeros_like(length) for _ in range(self.size)]
        torch.distributed.all_gather(lengths, length, group=self.group)
        lengths = [int(n) for n in lengths]
        batches = [{} for _ in range(self.size)]
        for key, value in batch.items():
            if torch.is_tensor(value):
                padded = F.pad(value.to(self.device), (0, max(lengths) - value.shape[1]))
                parts = [torch.empty_like(padded) for _ in range(self.size)]
                torch.distributed.all_gather(parts, padded, group=self.group)
                parts = [part[:, :n] for part, n in zip(parts, lengths, strict=True)]
            else:
                parts = [None] * self.size
                torch.distributed.all_gather_object(parts, value, group=self.group)
            for rows, part in zip(batches, parts, strict=True):
                rows[key] = part
        return batches

    def shard(self, rows: dict) -> dict:
        rows = dict(rows)
        rows["shift_labels"] = F.pad(rows.pop("labels"), (0, 1), value=IGNORE_INDEX)[:, 1:]
        width = rows["input_ids"].shape[1] // self.size
        cut = slice(self.rank * width, (self.rank + 1) * width)
        return {key: value[:, cut].cpu() if torch.is_tensor(value) else value for key, value in rows.items()}


def deepspeed_gradient_divisor(engine, world_size: int, size: int) -> int:
    """What DeepSpeed (0.19) divides the sum of all processes' gradients by under sequence parallelism.

    ZeRO 0-2, and ZeRO-3's contiguous all-reduce, divide by the data-parallel size (processes / group
    size); ZeRO-3's reduce-scatter (its default) divides by all processes, leaving the group size out.
    """
    stage3_scatter = engine.zero_optimization_stage() == 3 and (
        engine.zero_reduce_scatter() or not engine.zero_contiguous_gradients()
    )
    return world_size if stage3_scatter else world_size // size


def group_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum over the sequence-parallel group (no gradient): a whole row's, from its shards'."""
    total = value.detach().clone()
    torch.distributed.all_reduce(total, group=sequence_parallel_group())
    return total


class SequenceParallelTrainer(LongContextTrainer):
    """LongContextTrainer on DeepSpeed Ulysses (`--sequence_parallel_size` > 1).

    Scale: DeepSpeed sums the gradients of all processes and divides them (`deepspeed_gradient_divisor`).
    Each process's backward pass gives its share of the gradient of the sum of its group's shard
    losses, so a shard's loss sum, times that divisor, over the targets (or sequences, with LongAlign's
    weighting) of the whole step across all processes, gives exactly one process's gradient of the same rows.
    """

    def __init__(self, *args, data_collator=None, **kwargs):
        from longctx.sequence_parallel import ulysses_parallelism_config

        train_args = kwargs["args"]
        self.sequence_parallel_size = train_args.sequence_parallel_size
        train_args.parallelism_config = ulysses_parallelism_config(self.sequence_parallel_size, train_args.world_size)
        super().__init__(*args, data_collator=UlyssesBatches(data_collator), **kwargs)

    def train(self, *args, **kwargs):
        from longctx.sequence_parallel import split_rows_attention

        with split_rows_attention(self.model, self.args.parallelism_config.sp_handler, self.args.sequence_parallel_mode):
            return super().train(*args, **kwargs)

    def custom_train_loader(self, loader):
        return ShardedRows.replacing(loader)

    def custom_skip(self, loader, batches):
        """Resume: a sharding loader skips itself (accelerate's skip_first_batches knows nothing of DeepSpeed's adapter)."""
        return loader.skipping(batches) if hasattr(loader, "skipping") else None

    def custom_num_items_in_batch(self, batch_samples, device):
        """Target tokens (or sequences) of the step's rows over all processes, each row counted once.

        A row's targets are spread over its shards; its sequence count is copied to each of them.
        """
        if not batch_samples:
            return None
        if "num_sequences" in batch_samples[0]:
            count = sum(batch["num_sequences"] for batch in batch_samples)
            copies = self.sequence_parallel_size
        else:
            count = sum(int((batch["shift_labels"] != IGNORE_INDEX).sum()) for batch in batch_samples)
            copies = 1
        counts = self.accelerator.gather(torch.tensor([count], dtype=torch.float64, device=device))
        return counts.sum() / copies

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        hidden_states = final_hidden_states(model, input_ids=inputs["input_ids"], position_ids=inputs["position_ids"])
        _, lm_head = decoder_and_head(model)
        loss_sum = chunked_loss_sum(
            hidden_states, inputs["shift_labels"], lm_head, inputs.get("shift_loss_weights"), self.loss_chunk_size
        )
        count = num_items_in_batch.clamp(min=1).to(loss_sum.dtype)
        divisor = deepspeed_gradient_divisor(model, self.args.world_size, self.sequence_parallel_size)
        loss = loss_sum * divisor / count
        # the Trainer logs the mean over processes of what is returned: every process of a group returns its
        # rows' loss (as one process would), while its backward pass starts from its own shard's
        reported = group_sum(loss_sum) * (self.args.world_size // self.sequence_parallel_size) / count
        loss = loss + (reported - loss).detach()
        return (loss, None) if return_outputs else loss
