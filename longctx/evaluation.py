"""Perplexity of a causal LM over long windows of a token stream."""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from longctx.loss import DEFAULT_CHUNK_SIZE, causal_lm_loss


@torch.no_grad()
def rows_perplexity(model, rows, chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True) -> dict:
    """Perplexity over rows of token ids (e.g. non-overlapping windows): exp of the mean next-token loss.

    `rows` yields 1-D token tensors or {"input_ids": ...} items. Returns {"seq_len", "windows",
    "tokens", "loss", "perplexity", "seconds"}.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, count, seq_len = 0.0, 0, 0
    began = time.perf_counter()
    for row in tqdm(rows, desc="perplexity", disable=not progress):
        input_ids = (row["input_ids"] if isinstance(row, dict) else row).long().to(device)[None]
        seq_len = input_ids.shape[1]
        row_loss, row_count = causal_lm_loss(model, input_ids, input_ids, chunk_size=chunk_size)
        loss_sum += float(row_loss)
        count += int(row_count)
    model.train(was_training)
    if not count:
        raise ValueError("no tokens to evaluate")
    mean_loss = loss_sum / count
    return {
        "seq_len": seq_len,
        "windows": len(rows),
        "tokens": count,
        "loss": mean_loss,
        "perplexity": math.exp(mean_loss),
        "seconds": time.perf_counter() - began,
    }
