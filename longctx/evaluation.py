"""Perplexity of a causal LM over long windows of a token stream.

Two scorings of one token stream at a length `seq_len` (`plan_windows`):

- ``longlora``, LongLoRA's eval.py (and LongQLoRA's, whose ``--sliding_window`` is the stride):
  windows of `seq_len` tokens start every `stride` tokens at ``range(0, n - seq_len, stride)``,
  less its last start, as LongLoRA drops it; every next token of a window is scored, and the
  result is the mean of the window losses. Tokens are scored many times, early ones in a window with
  little context.
- ``strided``, the standard sliding-window perplexity (Press et al., as in transformers' guide):
  each token after the first is scored exactly once, with as much preceding context as a window of
  `seq_len` allows. Windows advance by `stride`; each scores only the tokens the previous one did not
  reach, so every scored token sees at least `seq_len - stride` tokens of context once the first
  window is past, and the last window is aligned to the end of the stream.

Windows can be shared among processes (`rank`, `world_size`); their losses are gathered and summed
in window order, so a sharded run reproduces a single-process one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from longctx.io import write_json_atomic
from longctx.loss import (
    DEFAULT_CHUNK_SIZE,
    IGNORE_INDEX,
    causal_lm_loss,
    chunked_causal_lm_loss_sum,
    decoder_and_head,
    final_hidden_states,
)

SCORINGS = ("longlora", "strided")


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


# ---------------------------------------------------------------------------------------------
# Data


# ---------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class Window:
    """`seq_len` tokens from `start`; positions `first_target` ... seq_len - 1 of the window are scored."""

    start: int
    first_target: int


def plan_windows(num_tokens: int, seq_len: int, scoring: str, stride: int) -> list[Window]:
    """The windows of a `num_tokens` stream for one scoring (see the module doc); ValueError if none fit."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; choose one of {', '.join(SCORINGS)}")
    if stride <= 0:
        raise ValueError(f"the stride must be positive (got {stride})")
    if num_tokens < seq_len:
        raise ValueError(f"the data holds {num_tokens} tokens, fewer than one window of {seq_len} tokens")
    if scoring == "longlora":
        starts = list(range(0, num_tokens - seq_len, stride))[:-1]  # LongLoRA's all_ix.pop()
        if not starts:
            raise ValueError(
                f"the data holds {num_tokens} tokens; LongLoRA's scoring at {seq_len} tokens needs more than "
                f"{seq_len + stride} (it drops the last window start)"
            )
        return [Window(start, 1) for start in starts]
    if stride >= seq_len:
        raise ValueError(f"strided scoring needs a stride below the window length ({stride} >= {seq_len})")
    windows, end = [Window(0, 1)], seq_len
    while end < num_tokens:
        start = min(windows[-1].start + stride, num_tokens - seq_len)
        windows.append(Window(start, end - start))
        end = start + seq_len
    return windows


def _window_losses(model, tokens, windows: list[tuple[int, Window]], seq_len: int, batch_size: int, chunk_size: int, bar) -> list[tuple[int, float, int]]:
    """(window index, loss sum, scored tokens) for each window, `batch_size` windows per forward."""
    device = next(model.parameters()).device
    _, lm_head = decoder_and_head(model)
    results = []
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        rows = [np.asarray(tokens[window.start : window.start + seq_len], dtype=np.int64) for _, window in batch]
        input_ids = torch.from_numpy(np.stack(rows)).to(device)  # (batch, seq_len)
        hidden_states = final_hidden_states(model, input_ids=input_ids)
        for row, (index, window) in enumerate(batch):
            labels = input_ids[row : row + 1].clone()
            labels[:, : window.first_target] = IGNORE_INDEX
            loss_sum = chunked_causal_lm_loss_sum(hidden_states[row : row + 1], labels, lm_head, chunk_size=chunk_size)
            results.append((index, float(loss_sum), seq_len - window.first_target))
        bar.update(len(batch))
    return results


def _gather(results: list, world_size: int) -> list:
    if world_size == 1:
        return results
    gathered = [None] * world_size
    dist.all_gather_object(gathered, results)
    return [item for part in gathered for item in part]


@torch.no_grad()
def evaluate_perplexity(
    model,
    tokens,
    seq_len: int,
    scoring: str = "longlora",
    stride: int = 256,
    batch_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    refresh_every: int = 1,
) -> dict:
    """Perplexity of `model` on a token stream at one length; windows `rank::world_size` are scored here.

    The progress bar redraws every `refresh_every` windows at most (LongLoRA's --progress_bar_fresh_rate).

    Every process returns the same dict: {"seq_len", "scoring", "stride", "windows", "tokens"
    (scored), "loss", "perplexity", "seconds", "tokens_per_second" (tokens read by the model)}.
    """
    windows = plan_windows(len(tokens), seq_len, scoring, stride)
    mine = list(enumerate(windows))[rank::world_size]
    model.eval()
    began = time.perf_counter()
    with tqdm(total=len(mine), desc=f"perplexity @ {seq_len}", unit="window", disable=not progress, miniters=refresh_every) as bar:
        local = _window_losses(model, tokens, mine, seq_len, batch_size, chunk_size, bar)
    results = sorted(_gather(local, world_size))
    if [index for index, _, _ in results] != list(range(len(windows))):
        raise RuntimeError("window losses went missing while gathering them from the processes")
    seconds = time.perf_counter() - began
    scored = sum(count for _, _, count in results)
    if scoring == "longlora":
        loss = sum(loss_sum / count for _, loss_sum, count in results) / len(results)
    else:
        loss = sum(loss_sum for _, loss_sum, _ in results) / scored
    return {
        "seq_len": seq_len,
        "scoring": scoring,
        "stride": stride,
        "windows": len(windows),
        "tokens": scored,
        "loss": loss,
        "perplexity": math.exp(loss),
        "seconds": seconds,
        "tokens_per_second": len(windows) * seq_len / seconds if seconds else None,
    }


# ---------------------------------------------------------------------------------------------
# Processes and reports


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun: NCCL on GPUs, gloo on CPU; (0, 1, ...) without torchrun."""
    from longctx.modeling import default_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = default_device()
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def check_lengths(num_tokens: int, seq_lens: Sequence[int], scoring: str, stride: int, data_path: str) -> None:
    """Fail before the model loads when the data is too short for a length, naming the data."""
    for seq_len in seq_lens:
        try:
            plan_windows(num_tokens, seq_len, scoring, stride)
        except ValueError as error:
            raise ValueError(f"--data_path {data_path}: {error}") from None


def report_perplexity(results: list[dict], config: dict, output_json: str | None, plot: str | None) -> None:
    """Print the per-length table and write the JSON (atomically) and the PNG plot when asked for."""
    from longctx.plots import format_table, plot_path, plot_perplexity

    rows = [
        [r["seq_len"], r["scoring"], r["windows"], r["tokens"], f"{r['loss']:.4f}", f"{r['perplexity']:.3f}", f"{r['seconds']:.1f}"]
        for r in results
    ]
    print(format_table(["seq_len", "scoring", "windows", "tokens", "loss", "perplexity", "seconds"], rows))
    plot = plot_path(output_json, plot)
    if output_json:
        write_json_atomic(output_json, {"config": config, "results": results, "plot": plot})
        print(f"results written to {output_json}")
    if plot:
        plot_perplexity(results, plot, title=f"{config.get('base_model')} ({config.get('scoring')} scoring)")
        print(f"plot written to {plot}")

