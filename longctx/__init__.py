"""longctx: extend the context window of open LLMs cheaply, and measure it honestly.

The public entry points; everything else lives in the submodules named in docs/ARCHITECTURE.md.
"""

from longctx.attention import disable_s2_attn, enable_s2_attn, replace_llama_attn, shifted_sparse_attention
from longctx.chat import ChatSession, ChatSettings
from longctx.chunk_attention import (
    enable_dual_chunk_attention,
    replace_with_chunkllama,
    replace_with_chunkmistral,
    replace_with_chunkmixtral,
)
from longctx.lora import load_trainable_params, save_trainable_params, setup_lora
from longctx.modeling import WeightLoading, load_model_and_tokenizer
from longctx.reading_model import DualChunkSizes, ReadingModel, load_for_inference
from longctx.rope import RopeRequest, extend_context

__all__ = [
    "ChatSession",
    "ChatSettings",
    "DualChunkSizes",
    "ReadingModel",
    "RopeRequest",
    "WeightLoading",
    "disable_s2_attn",
    "enable_dual_chunk_attention",
    "enable_s2_attn",
    "extend_context",
    "load_for_inference",
    "load_model_and_tokenizer",
    "load_trainable_params",
    "replace_llama_attn",
    "replace_with_chunkllama",
    "replace_with_chunkmistral",
    "replace_with_chunkmixtral",
    "save_trainable_params",
    "setup_lora",
    "shifted_sparse_attention",
]
