"""longctx: extend the context window of open LLMs cheaply, and measure it honestly.

The public entry points; everything else lives in the submodules named in docs/ARCHITECTURE.md.
They are imported on first use, so that a light submodule (longctx.io) does not
pull in torch, transformers and peft (~6 s) through this package.
"""

import importlib

_MODULE_OF = {
    "disable_s2_attn": "attention",
    "enable_s2_attn": "attention",
    "replace_llama_attn": "attention",
    "shifted_sparse_attention": "attention",
    "ChatSession": "chat",
    "ChatSettings": "chat",
    "enable_dual_chunk_attention": "chunk_attention",
    "replace_with_chunkllama": "chunk_attention",
    "replace_with_chunkmistral": "chunk_attention",
    "replace_with_chunkmixtral": "chunk_attention",
    "load_trainable_params": "lora",
    "save_trainable_params": "lora",
    "setup_lora": "lora",
    "WeightLoading": "modeling",
    "load_model_and_tokenizer": "modeling",
    "DualChunkSizes": "reading_model",
    "ReadingModel": "reading_model",
    "load_for_inference": "reading_model",
    "RopeRequest": "rope",
    "extend_context": "rope",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'longctx' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"longctx.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted({*globals(), *_MODULE_OF})
