"""The training scripts' groups (fine-tune.py, supervised-fine-tune.py, progressive.py): model, data, the
perplexity check, and TrainingArguments with LongLoRA's flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import TrainingArguments

from longctx.args.fields import help_field
from longctx.args.loading import MODEL_HELP, LoadingArguments
from longctx.modeling import DEFAULT_MODEL
from longctx.shifted_sparse import check_group_size, check_group_size_ratio
from longctx.stages import check_start_mode
from longctx.token_files import check_token_dtype


@dataclass
class ModelArguments(LoadingArguments):
    """The model a training script starts from."""

    model_name_or_path: str = help_field(
        MODEL_HELP,
        default=DEFAULT_MODEL,
    )
    start_from: str | None = help_field(
        "an earlier run's output folder to train on from (progressive extension; its RoPE is the starting point)",
        default=None,
    )
    start_mode: str = help_field(
        "merge: merge the earlier stage(s) into the base and train a fresh LoRA; continue: train its adapter on",
        default="merge",
    )
    model_type: str | None = help_field(
        "LongLoRA's llama or gpt-neox, checked against the model (attention and LoRA targets follow the model)",
        default=None,
    )

    def __post_init__(self):
        super().__post_init__()
        if self.rope_method is None:
            self.rope_method = self.rope_request().with_default_method().method
        check_start_mode(self.start_mode)


@dataclass
class DataArguments:
    data_path: str | None = help_field(
        "training data: .txt files or folders, .jsonl (text field), token .bin/.u32.bin, or a saved datasets "
        "folder; comma-separated for several (default: the bundled PG19 books in data/pg19)",
        default=None,
    )
    token_dtype: str | None = help_field("dtype of .bin token files: uint16 or uint32 (default: from the suffix)", default=None)
    max_train_rows: int | None = help_field("use at most this many training rows (default: all)", default=None)

    def __post_init__(self):
        check_token_dtype(self.token_dtype)
        if self.max_train_rows is not None and self.max_train_rows <= 0:
            raise ValueError(f"--max_train_rows must be positive (got {self.max_train_rows})")


@dataclass
class PerplexityCheckArguments:
    """A quick perplexity check before and after training, on held-out text, with full attention."""

    eval_data_path: str | None = help_field(
        "held-out text for the before/after perplexity (default: the bundled evaluation book)", default=None
    )
    eval_seq_len: int | None = help_field("window length of the perplexity check (default: --model_max_length)", default=None)
    eval_windows: int = help_field("number of windows in the perplexity check", default=1)
    skip_eval: bool = help_field("skip the before/after perplexity check", default=False)

    def __post_init__(self):
        if self.eval_windows <= 0:
            raise ValueError(f"--eval_windows must be positive (got {self.eval_windows})")
        if self.eval_seq_len is not None and self.eval_seq_len <= 1:
            raise ValueError(f"--eval_seq_len must be above 1 (got {self.eval_seq_len})")


@dataclass
class LongContextTrainingArguments(TrainingArguments):
    """TrainingArguments plus LongLoRA's flags, with defaults for long-context LoRA+ on one machine."""

    rows_packed_or_padded: ClassVar[bool] = False  # fine-tune.py's rows: one unpadded stretch of text each

    model_max_length: int = help_field("training sequence length in tokens (RoPE is scaled to reach it)", default=16384)
    use_flash_attn: bool = help_field("use flash-attn's varlen kernel for S²-Attn (CUDA only; falls back to SDPA)", default=False)
    use_full_attn: bool = help_field("train with full attention instead of S²-Attn", default=False)
    group_size_ratio: float = help_field("S²-Attn group size as a fraction of the sequence length", default=0.25)
    group_size: int | None = help_field("fixed S²-Attn group size in tokens (overrides --group_size_ratio)", default=None)
    low_rank_training: bool = help_field("LoRA+ (True) or full fine-tuning (False)", default=True)
    trainable_params: str = help_field("comma-separated name parts trained at full rank beside LoRA", default="embed,norm")
    lora_r: int = help_field("LoRA rank", default=8)
    lora_alpha: int = help_field("LoRA alpha (scale = alpha / r)", default=16)
    lora_dropout: float = help_field("LoRA dropout", default=0.0)
    lora_target: str | None = help_field(
        "LoRA target modules, comma-separated, or all-linear (default: the attention projections, q/k/v/o_proj; "
        "GPT-NeoX: query_key_value,dense as LongLoRA)",
        default=None,
    )
    loss_chunk_size: int = help_field("positions per chunk of the output-head + loss computation", default=2048)
    sequence_parallel_size: int = help_field(
        "split each row over this many processes (DeepSpeed Ulysses, under torchrun/deepspeed; default config "
        "ds_configs/stage2.json); the others are data parallel",
        default=1,
    )
    sequence_parallel_mode: str = help_field(
        "how a split row's attention runs: ulysses (DeepSpeed's all-to-all of heads; any attention) or halo "
        "(S²-Attn on each shard with half a group of keys/values from the previous process; fine-tune.py, "
        "shards a whole number of groups, any number of processes)",
        default="ulysses",
    )

    output_dir: str | None = help_field("where checkpoints and the final adapter go", default="outputs/fine-tune")
    overwrite_output_dir: bool = help_field(
        "write into a --output_dir that already holds files (another run's adapter and checkpoints are replaced)",
        default=False,
    )
    per_device_train_batch_size: int = help_field("batch size per device", default=1)
    learning_rate: float = help_field("peak learning rate", default=2e-5)
    weight_decay: float = help_field("AdamW weight decay", default=0.0)
    lr_scheduler_type: str = help_field("learning rate schedule", default="constant_with_warmup")
    logging_steps: float = help_field("log every N steps", default=1)
    save_steps: float = help_field("save a checkpoint every N steps", default=50)

    def __post_init__(self):
        if self.model_max_length <= 0:
            raise ValueError(f"--model_max_length must be above zero (got {self.model_max_length})")
        check_group_size_ratio(self.group_size_ratio)
        if self.group_size is not None:
            check_group_size(self.group_size)
        if self.lora_r <= 0:
            raise ValueError(f"--lora_r must be positive (got {self.lora_r})")
        if self.loss_chunk_size <= 0:
            raise ValueError(f"--loss_chunk_size must be positive (got {self.loss_chunk_size})")
        from longctx.sequence_parallel import sequence_parallel_arguments

        sequence_parallel_arguments(self)
        # transformers 5.2x renamed gradient_checkpointing* to activation_checkpointing* and warns on the old names
        name = "activation_checkpointing" if hasattr(self, "activation_checkpointing") else "gradient_checkpointing"
        if self.gradient_checkpointing is None and getattr(self, "activation_checkpointing", None) is None:
            setattr(self, name, True)  # long rows do not fit without it
        if self.gradient_checkpointing_kwargs is None and getattr(self, "activation_checkpointing_kwargs", None) is None:
            setattr(self, f"{name}_kwargs", {"use_reentrant": False})
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns on every loader otherwise
            if self.tf32:  # LongLoRA's commands pass --tf32 True, which transformers refuses without an NVIDIA GPU
                print("--tf32 True ignored: TF32 matmuls need an NVIDIA GPU", flush=True)
                self.tf32 = None
            if self.bf16:  # transformers takes --bf16 True (bfloat16 autocast) on a CPU only with --use_cpu
                self.use_cpu = True
        super().__post_init__()


@dataclass
class SFTTrainingArguments(LongContextTrainingArguments):
    """supervised-fine-tune.py's: its rows hold packed or padded documents (the halo mode refuses them)."""

    rows_packed_or_padded: ClassVar[bool] = True
