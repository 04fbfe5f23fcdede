"""Causal LM loss that never holds full-vocabulary logits for a whole long row.

At 32k tokens SmolLM2's float32 logits alone take 6 GB, and cross-entropy doubles that. The loss is
computed over chunks of positions; each chunk's logits are recomputed in the backward pass
(activation checkpointing), so peak memory follows the chunk size, not the sequence length.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from longctx.wrappers import unwrap_model

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 2048


def _chunk_loss_sum(hidden_states, targets, weights, lm_head):
    logits = lm_head(hidden_states)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits lose the loss' precision
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return (losses * weights.flatten()).sum()


def chunked_causal_lm_loss_sum(
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    lm_head: torch.nn.Module,
    weights: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Sum over positions of (weight x next-token cross-entropy); labels are not yet shifted.

    `weights` (batch, seq), aligned with `labels`, scale each target token (LongAlign's loss weighting);
    positions labelled -100 contribute nothing.
    """
    return chunked_loss_sum(
        hidden_states[:, :-1], labels[:, 1:], lm_head, None if weights is None else weights[:, 1:], chunk_size
    )


def chunked_loss_sum(
    hidden_states: torch.Tensor,
    targets: torch.Tensor,
    lm_head: torch.nn.Module,
    weights: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """`chunked_causal_lm_loss_sum` for targets already shifted: `targets[:, i]` is the token after position i.

    A shard of a row (sequence parallelism) has no next position of its own to shift in, so it comes shifted.
    """
    total = hidden_states.new_zeros((), dtype=torch.promote_types(hidden_states.dtype, torch.float32))
    if weights is None:
        weights = torch.ones(targets.shape, dtype=total.dtype, device=targets.device)
    else:
        weights = weights.to(total.dtype)
    for start in range(0, targets.shape[1], chunk_size):
        chunk = slice(start, start + chunk_size)
        args = (hidden_states[:, chunk], targets[:, chunk], weights[:, chunk], lm_head)
        if torch.is_grad_enabled() and hidden_states.requires_grad:
            total = total + checkpoint(_chunk_loss_sum, *args, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(*args)
    return total


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """Number of positions that carry loss after the shift."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack and output head of a causal LM under PEFT / DDP / DeepSpeed wrappers."""
    model = unwrap_model(model)
    return model.get_decoder(), model.get_output_embeddings()


@contextlib.contextmanager
def capture_decoder_output(decoder: torch.nn.Module):
    """Record the decoder's last hidden state during a forward through the full (wrapped) model."""
    captured = {}

    def hook(module, args, output):
        captured["hidden_states"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def final_hidden_states(model, **inputs) -> torch.Tensor:
    """Run the model through its wrappers (so DDP/DeepSpeed hooks fire) but project no logits.

    An empty `logits_to_keep` index makes the head run on zero positions; the decoder's output is
    taken with a forward hook.
    """
    decoder, _ = decoder_and_head(model)
    no_positions = torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device)
    with capture_decoder_output(decoder) as captured:
        model(**inputs, logits_to_keep=no_positions, use_cache=False)
    return captured["hidden_states"]


def causal_lm_loss(model, input_ids, labels, attention_mask=None, position_ids=None, weights=None, chunk_size=DEFAULT_CHUNK_SIZE):
    """(loss sum, target count) for a batch, computed chunk by chunk."""
    inputs = {"input_ids": input_ids}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    hidden_states = final_hidden_states(model, **inputs)
    _, lm_head = decoder_and_head(model)
    return chunked_causal_lm_loss_sum(hidden_states, labels, lm_head, weights, chunk_size), count_targets(labels)
