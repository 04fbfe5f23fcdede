"""StreamingLLM's KV cache: attention sinks plus a recent window, for conversations past the window.

Xiao et al. 2023 ("Efficient Streaming Language Models with Attention Sinks"; LongLoRA's
streaming_llm mode): keep the first `start_size` tokens (the sinks every head leans on) and the last
`recent_size` tokens, evict the middle, and give the kept tokens positions *inside the cache*, so the
distances the model sees never exceed the cache length however long the conversation runs.

transformers dropped its `SinkCache` in v4.5x. This is the same idea as a transformers 5 `Cache`
that `generate()` accepts: the model rotates each new key at its absolute position (the running token
count) and its query likewise; before attending, the kept keys are re-rotated (RoPE is a rotation,
so moving a key from position a to b is one more rotation by b - a) to sit contiguously just before
the new tokens. Queries and keys then see exactly the relative distances of a fresh sequence made of
the kept tokens. Works for RoPE models whose rotary module exposes `inv_freq` (Llama, Mistral, Qwen2);
batches must be unpadded (one conversation per row, same length).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from longctx.internals import DynamicLayer
from longctx.rope import rotate_by


def find_rotary_embedding(model) -> torch.nn.Module:
    """The model's rotary-embedding module (the one holding `inv_freq`)."""
    for module in model.modules():
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            return module
    raise ValueError("--enable_streaming needs a RoPE model (Llama, Mistral, Qwen2): no rotary embedding found")


class StreamingLayer(DynamicLayer):
    """One layer's sinks + recent window; `positions` records where each kept key is rotated to now."""

    is_sliding = False
    is_croppable = False

    def __init__(self, start_size: int, recent_size: int, rotary: torch.nn.Module):
        super().__init__()
        self.start_size, self.recent_size, self.rotary = start_size, recent_size, rotary
        self.cumulative_length = 0  # tokens seen: the absolute position of the next token
        self.positions = torch.zeros(0, dtype=torch.long)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.positions = self.positions.to(self.device)
        num_new, num_kept = key_states.shape[-2], self.keys.shape[-2] if self.keys.numel() else 0
        keys = self.keys
        if num_kept:
            # kept keys move to the positions just before the new tokens: start - kept, ..., start - 1
            target = self.cumulative_length - num_kept + torch.arange(num_kept, device=self.device)
            shift = target - self.positions
            if bool(shift.any()):
                keys = rotate_by(keys, shift, self.rotary.inv_freq)
            self.positions = target
        new_positions = self.cumulative_length + torch.arange(num_new, device=self.device)
        full_keys = torch.cat([keys, key_states], dim=-2) if num_kept else key_states
        full_values = torch.cat([self.values, value_states], dim=-2) if num_kept else value_states
        positions = torch.cat([self.positions, new_positions])
        self.cumulative_length += num_new
        capacity = self.start_size + self.recent_size
        if full_keys.shape[-2] > capacity:  # evict the middle: keep the sinks and the most recent tokens
            keep = torch.cat(
                [
                    torch.arange(self.start_size),
                    torch.arange(full_keys.shape[-2] - self.recent_size, full_keys.shape[-2]),
                ]
            ).to(self.device)
            self.keys, self.values = full_keys[..., keep, :], full_values[..., keep, :]
            self.positions = positions[keep]
        else:
            self.keys, self.values, self.positions = full_keys, full_values, positions
        return full_keys, full_values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # kept keys sit at positions cumulative - kept ... cumulative - 1, all before the new queries
        num_kept = self.keys.shape[-2] if self.is_initialized and self.keys.numel() else 0
        return num_kept + query_length, self.cumulative_length - num_kept

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.start_size + self.recent_size

    def stored_length(self) -> int:
        """Tokens held now (at most start_size + recent_size between calls)."""
        return self.keys.shape[-2] if self.is_initialized and self.keys.numel() else 0

    def reset(self) -> None:
        super().reset()
        self.positions = torch.zeros(0, dtype=torch.long)


class StreamingCache(Cache):
    """A `generate()`-compatible cache that keeps `start_size` sink tokens and the `recent_size` latest tokens.

    `get_seq_length()` counts every token seen, so `generate()` keeps numbering positions (and slicing
    a conversation's growing input ids) as usual, while memory stays bounded.
    """

    def __init__(self, model, start_size: int = 4, recent_size: int = 2000):
        if start_size < 0 or recent_size <= 0:
            raise ValueError(f"--start_size must be >= 0 and --recent_size > 0 (got {start_size}, {recent_size})")
        rotary = find_rotary_embedding(model)
        num_layers = model.config.get_text_config().num_hidden_layers
        super().__init__(layers=[StreamingLayer(start_size, recent_size, rotary) for _ in range(num_layers)])
        self.start_size, self.recent_size = start_size, recent_size

    def stored_length(self) -> int:
        return max((layer.stored_length() for layer in self.layers), default=0)
