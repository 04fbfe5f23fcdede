"""Argument groups shared by the scripts, parsed with transformers' HfArgumentParser.

Each field has a one-line help; `__post_init__` rejects bad values with a ValueError naming the flag.
Booleans parse as booleans (`--low_rank_training False` is False, unlike LongLoRA's `type=bool`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from longctx.modeling import DEFAULT_MODEL, DTYPES
from longctx.rope import ROPE_METHODS


def _help(text: str, **kwargs) -> dict:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class ModelArguments:
    model_name_or_path: str = _help(
        f"'{DEFAULT_MODEL}' (bundled SmolLM2-135M-Instruct), a local HF folder, a .gguf file or a cached hub id",
        default=DEFAULT_MODEL,
    )
    dtype: str = _help(f"weights dtype: {', '.join(DTYPES)} (float32 is fastest on CPU)", default="float32")
    rope_method: str = _help(f"RoPE scaling to reach the new length: {', '.join(ROPE_METHODS)}", default="linear")
    rope_factor: float | None = _help("override the RoPE scaling factor (default: from the target length)", default=None)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype} is not one of {', '.join(DTYPES)}")
        if self.rope_method not in ROPE_METHODS:
            raise ValueError(f"--rope_method {self.rope_method} is not one of {', '.join(ROPE_METHODS)}")
        if self.rope_factor is not None and self.rope_factor < 1:
            raise ValueError(f"--rope_factor must be at least 1 (got {self.rope_factor})")

    def rope_options(self) -> dict:
        return {} if self.rope_factor is None else {"factor": self.rope_factor}


@dataclass
class DataArguments:
    data_path: str | None = _help(
        "training data: .txt files or folders, .jsonl (text field), token .bin/.u32.bin, or a saved datasets "
        "folder; comma-separated for several (default: the bundled PG19 books in data/pg19)",
        default=None,
    )
    token_dtype: str | None = _help("dtype of .bin token files: uint16 or uint32 (default: from the suffix)", default=None)
    max_train_rows: int | None = _help("use at most this many training rows (default: all)", default=None)

    def __post_init__(self):
        if self.token_dtype not in (None, "uint16", "uint32"):
            raise ValueError(f"--token_dtype {self.token_dtype} must be uint16 or uint32")
        if self.max_train_rows is not None and self.max_train_rows <= 0:
            raise ValueError(f"--max_train_rows must be positive (got {self.max_train_rows})")


@dataclass
class PerplexityCheckArguments:
    """A quick perplexity check before and after training, on held-out text, with full attention."""

    eval_data_path: str | None = _help(
        "held-out text for the before/after perplexity (default: the bundled evaluation book)", default=None
    )
    eval_seq_len: int | None = _help("window length of the perplexity check (default: --model_max_length)", default=None)
    eval_windows: int = _help("number of windows in the perplexity check", default=1)
    skip_eval: bool = _help("skip the before/after perplexity check", default=False)

    def __post_init__(self):
        if self.eval_windows <= 0:
            raise ValueError(f"--eval_windows must be positive (got {self.eval_windows})")
        if self.eval_seq_len is not None and self.eval_seq_len <= 1:
            raise ValueError(f"--eval_seq_len must be above 1 (got {self.eval_seq_len})")


@dataclass
class LongContextTrainingArguments(TrainingArguments):
    """TrainingArguments plus LongLoRA's flags, with defaults for long-context LoRA+ on one machine."""

    model_max_length: int = _help("training sequence length in tokens (RoPE is scaled to reach it)", default=16384)
    use_flash_attn: bool = _help("use flash-attn's varlen kernel for S²-Attn (CUDA only; falls back to SDPA)", default=False)
    use_full_attn: bool = _help("train with full attention instead of S²-Attn", default=False)
    group_size_ratio: float = _help("S²-Attn group size as a fraction of the sequence length", default=0.25)
    group_size: int | None = _help("fixed S²-Attn group size in tokens (overrides --group_size_ratio)", default=None)
    low_rank_training: bool = _help("LoRA+ (True) or full fine-tuning (False)", default=True)
    trainable_params: str = _help("comma-separated name parts trained at full rank beside LoRA", default="embed,norm")
    lora_r: int = _help("LoRA rank", default=8)
    lora_alpha: int = _help("LoRA alpha (scale = alpha / r)", default=16)
    lora_dropout: float = _help("LoRA dropout", default=0.0)
    lora_target: str = _help("LoRA target modules, comma-separated, or all-linear", default="q_proj,k_proj,v_proj,o_proj")
    loss_chunk_size: int = _help("positions per chunk of the output-head + loss computation", default=2048)

    output_dir: str | None = _help("where checkpoints and the final adapter go", default="outputs/fine-tune")
    per_device_train_batch_size: int = _help("batch size per device", default=1)
    learning_rate: float = _help("peak learning rate", default=2e-5)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    lr_scheduler_type: str = _help("learning rate schedule", default="constant_with_warmup")
    logging_steps: float = _help("log every N steps", default=1)
    save_steps: float = _help("save a checkpoint every N steps", default=50)

    def __post_init__(self):
        if self.model_max_length <= 0:
            raise ValueError(f"--model_max_length must be above zero (got {self.model_max_length})")
        if not 0 < self.group_size_ratio <= 1:
            raise ValueError(f"--group_size_ratio must be in (0, 1] (got {self.group_size_ratio})")
        if self.group_size is not None and (self.group_size < 2 or self.group_size % 2):
            raise ValueError(f"--group_size must be an even number >= 2 (got {self.group_size})")
        if self.lora_r <= 0:
            raise ValueError(f"--lora_r must be positive (got {self.lora_r})")
        if self.loss_chunk_size <= 0:
            raise ValueError(f"--loss_chunk_size must be positive (got {self.loss_chunk_size})")
        if self.gradient_checkpointing is None and getattr(self, "activation_checkpointing", None) is None:
            self.gradient_checkpointing = True  # long rows do not fit without it
        if self.gradient_checkpointing_kwargs is None:
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()
