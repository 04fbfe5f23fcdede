"""Perplexity against length on the same tokens for every reader: the curve a context-extension method is judged by.

One window from a text's start, every token scored. Every reader except dynamic NTK is
causal-consistent (a token's logits depend only on earlier tokens and their absolute positions;
tests/test_chunk_attention.py checks it), so ONE forward at the longest length gives every shorter
length as a prefix perplexity. `sliding_window_losses` is the reference with no long context: the
native model over windows of its own length, every token scored once with half a window to a
window of context, so a reader that beats it uses the far text.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import torch

from longctx.evaluation import plan_windows
from longctx.loss import chunked_causal_lm_loss_sum, decoder_and_head, final_hidden_states
from longctx.text_files import read_text_file


def book_tokens(path: str | Path, tokenizer, length: int) -> torch.Tensor:
    """The first `length` tokens of a text file, shape (1, length)."""
    text = read_text_file(path)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < length:
        raise ValueError(f"{path} holds {len(ids)} tokens, fewer than {length}")
    return torch.tensor(ids[:length])[None]


def prefix_losses(model, input_ids, lengths: list[int]) -> dict[int, float]:
    """Mean next-token loss over the first L tokens for each L, from one forward (chunked head)."""
    _, lm_head = decoder_and_head(model)
    with torch.no_grad():
        hidden_states = final_hidden_states(model, input_ids=input_ids)
        total, previous, means = 0.0, 0, {}
        for length in lengths:  # targets previous .. length - 1 come from hidden positions previous - 1 .. length - 2
            start = max(previous - 1, 0)
            total += float(chunked_causal_lm_loss_sum(hidden_states[:, start:length], input_ids[:, start:length], lm_head))
            means[length] = total / (length - 1)
            previous = length
    return means


def sliding_window_losses(model, input_ids, lengths: list[int], window: int) -> dict[int, float]:
    """Mean next-token loss over the first L tokens when no token sees more than `window` - 1 earlier ones.

    The reference for a reader with no long context: the native model over windows of its own length,
    advancing by half a window, each token scored once (`plan_windows`' strided scoring), so after the
    first window every token has between window/2 and window - 1 tokens of context.
    """
    _, lm_head = decoder_and_head(model)
    totals = dict.fromkeys(lengths, 0.0)
    with torch.no_grad():
        for span in plan_windows(input_ids.shape[1], window, "strided", window // 2):
            ids = input_ids[:, span.start : span.start + window]
            hidden_states = final_hidden_states(model, input_ids=ids)
            first, end = span.start + span.first_target, span.start + ids.shape[1]  # absolute targets first .. end - 1
            edges = sorted({first, end, *(length for length in lengths if first < length < end)})
            # targets low .. high - 1, predicted from hidden positions low - 1 .. high - 2
            for low, high in itertools.pairwise(edges):
                piece = slice(low - 1 - span.start, high - span.start)
                loss_sum = float(chunked_causal_lm_loss_sum(hidden_states[:, piece], ids[:, piece], lm_head))
                for length in lengths:
                    totals[length] += loss_sum if high <= length else 0.0
    return {length: totals[length] / (length - 1) for length in lengths}


def length_name(length: int) -> str:
    return f"{length // 1024}k" if length % 1024 == 0 else str(length)


def perplexity_table(runs: list[dict], lengths: list[int]) -> str:
    """Markdown: one row per method, perplexity per length, the mean over books (a cell over fewer books says how many)."""
    methods = list(dict.fromkeys(run["method"] for run in runs))
    names = [length_name(length) for length in lengths]
    lines = ["| method | books | " + " | ".join(names) + " |"]
    lines.append("|---" * (len(lengths) + 2) + "|")
    for method in methods:
        chosen = [run for run in runs if run["method"] == method]
        cells = []
        for length in lengths:
            values = [run["perplexity"][str(length)] for run in chosen if str(length) in run["perplexity"]]
            cell = f"{statistics.mean(values):.2f}" if values else "-"
            cells.append(cell + (f" ({len(values)} of {len(chosen)} books)" if values and len(values) < len(chosen) else ""))
        lines.append(f"| {method} | {len(chosen)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_book_table(runs: list[dict], lengths: list[int]) -> str:
    """Markdown: one row per (book, method)."""
    names = [length_name(length) for length in lengths]
    lines = ["| book | method | " + " | ".join(names) + " |", "|---" * (len(lengths) + 2) + "|"]
    for run in sorted(runs, key=lambda run: Path(run["book"]).stem):
        cells = [f"{run['perplexity'][str(length)]:.2f}" if str(length) in run["perplexity"] else "-" for length in lengths]
        lines.append(f"| {Path(run['book']).stem} | {run['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
