"""The transformers model under the wrappers training puts around it."""

from __future__ import annotations

import torch


def unwrap_model(model) -> torch.nn.Module:
    """The transformers model under DDP/DeepSpeed (`.module`) and PEFT (`get_base_model`) wrappers.

    Every function that changes the model itself (its attention, its config, its trainable weights)
    goes through here, so it works alike on a bare model, a PeftModel and a training engine.
    """
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model
