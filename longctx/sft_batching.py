"""Batching SFT samples of very uneven lengths: naive, packed, sorted (LongAlign).

Bai et al., "LongAlign: A Recipe for Long Context Alignment of Large Language Models" (2024), §3.

- naive: samples in random order, each batch padded to its longest sample;
- pack: samples packed greedily (first fit, longest first) into rows of at most `model_max_length`
  tokens; position ids restart at every document, which is how transformers (SDPA/eager masks,
  flash-attn varlen) and longctx's S²-Attn keep packed documents from attending to each other;
- sort: samples sorted by length and cut into batches, the order of the batches shuffled, so a batch
  holds similar lengths and little padding.

Loss weighting (`pack_loss`): every answer token of a sequence with n answer tokens weighs 1/n and the
loss is divided by the number of sequences, so the loss is the mean over sequences of each sequence's
mean token loss however sequences were packed or batched (otherwise a packed row's long answers
outweigh its short ones). `num_sequences` travels with each batch so the trainer can divide by the
count over the whole accumulated batch (see `LongContextTrainer`).

Padding is a document of its own (position ids restarting at 0, labels -100, weight 0), so no
attention mask is needed: real tokens never attend to it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, Sampler

from longctx.loss import IGNORE_INDEX
from longctx.sft_data import SFTSample

BATCH_METHODS = ("naive", "pack", "sort")


def pack_greedy(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Bins of sample indices, each bin's lengths summing to at most `max_length` (first fit decreasing)."""
    if any(length > max_length for length in lengths):
        raise ValueError(f"a sample of {max(lengths)} tokens cannot be packed into rows of {max_length}")
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        target = next((b for b, free in enumerate(room) if free >= lengths[index]), None)
        if target is None:
            bins.append([])
            room.append(max_length)
            target = len(bins) - 1
        bins[target].append(index)
        room[target] -= lengths[index]
    return bins


def sorted_batch_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """Indices sorted by length, cut into batches of `batch_size`, the batches in a shuffled order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(batches)
    return [index for batch in batches for index in batch]


class SortedBatchSampler(Sampler[int]):
    """LongAlign's sorted batching as a sampler: consecutive `batch_size` indices form one sorted batch.

    The DataLoader cuts the stream into batches of the same size, so each batch holds neighbours in
    length; each epoch shuffles the order of the batches anew.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(sorted_batch_order(self.lengths, self.batch_size, self.seed + self.epoch))


def sequence_weights(sample: SFTSample) -> list[float]:
    """1/n on each of the sample's n answer tokens, 0 elsewhere."""
    weight = 1.0 / max(sample.num_targets, 1)
    return [weight if label != IGNORE_INDEX else 0.0 for label in sample.labels]


def _item(samples: Sequence[SFTSample], pack_loss: bool) -> dict[str, torch.Tensor]:
    """One row: the samples back to back, position ids restarting at each, optional loss weights."""
    item = {
        "input_ids": torch.tensor([token for s in samples for token in s.input_ids]),
        # a document's first token is never predicted inside it: this keeps targets from crossing documents
        "labels": torch.tensor([label for s in samples for label in [IGNORE_INDEX, *s.labels[1:]]]),
        "position_ids": torch.cat([torch.arange(len(s)) for s in samples]),
    }
    if pack_loss:
        item["loss_weights"] = torch.tensor([w for s in samples for w in [0.0, *sequence_weights(s)[1:]]])
        item["num_sequences"] = torch.tensor(len(samples))
    return item


class SFTDataset(Dataset):
    """Rows of one sample each (naive, sort) or of several packed samples (pack)."""

    def __init__(self, samples: Sequence[SFTSample], rows: Sequence[Sequence[int]], pack_loss: bool = False):
        self.samples, self.rows, self.pack_loss = list(samples), [list(row) for row in rows], pack_loss

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return _item([self.samples[i] for i in self.rows[index]], self.pack_loss)

    def row_lengths(self) -> list[int]:
        return [sum(len(self.samples[i]) for i in row) for row in self.rows]


def build_sft_dataset(samples: Sequence[SFTSample], batch_method: str, model_max_length: int, pack_loss: bool) -> SFTDataset:
    if batch_method not in BATCH_METHODS:
        raise ValueError(f"--batch_method {batch_method!r}: choose one of {', '.join(BATCH_METHODS)}")
    if batch_method == "pack":
        rows = pack_greedy([len(sample) for sample in samples], model_max_length)
    else:
        rows = [[index] for index in range(len(samples))]
    return SFTDataset(samples, rows, pack_loss)


def collate_sft(
    features: Sequence[dict[str, torch.Tensor]], pad_token_id: int, pad_to_multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """Pad rows to the longest one, rounded up to `pad_to_multiple_of` (sequence parallelism cuts rows into
    that many equal shards); the padding is its own document (position ids from 0, labels -100)."""
    if not features:
        raise ValueError("cannot collate an empty batch")
    longest = max(len(feature["input_ids"]) for feature in features)
    longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    batch = {key: [] for key in features[0] if key != "num_sequences"}
    for feature in features:
        pad = longest - len(feature["input_ids"])
        fills = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "loss_weights": 0.0}
        for key, rows in batch.items():
            if key == "position_ids":
                rows.append(torch.cat([feature[key], torch.arange(pad)]))
            else:
                rows.append(torch.cat([feature[key], torch.full((pad,), fills[key], dtype=feature[key].dtype)]))
    collated = {key: torch.stack(values) for key, values in batch.items()}
    if "num_sequences" in features[0]:
        collated["num_sequences"] = sum(feature["num_sequences"] for feature in features)
    return collated


def padding_fraction(batches: Sequence[Sequence[int]]) -> float:
    """Share of padding among the tokens of batches given as lists of row lengths, each padded to its longest."""
    padded = sum(len(batch) * max(batch) for batch in batches if batch)
    real = sum(sum(batch) for batch in batches)
    return 1.0 - real / padded if padded else 0.0
