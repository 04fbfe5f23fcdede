"""Argument groups shared by the scripts, parsed with transformers' HfArgumentParser.

Each field has a one-line help; `__post_init__` rejects bad values with a ValueError naming the flag.
Booleans parse as booleans (`--low_rank_training False` is False, unlike LongLoRA's `type=bool`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from longctx.modeling import DEFAULT_MODEL, DTYPES, check_device_map, default_reading_dtype
from longctx.rope import ROPE_METHODS, default_rope_method
from longctx.stages import START_MODES
from longctx.training_record import read_record, rope_for_reading


def _help(text: str, **kwargs) -> dict:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class LoadingArguments:
    """How any script loads its model: dtype, RoPE scaling and QLoRA's 4-bit base (shared by all scripts)."""

    dtype: str = _help(f"weights dtype: {', '.join(DTYPES)} (float32 is fastest on CPU)", default="float32")
    rope_method: str | None = _help(
        f"RoPE scaling to reach the target length: {', '.join(ROPE_METHODS)} (default: an adapter's own, "
        "else linear; theta with --rope_theta; none with --dca)",
        default=None,
    )
    rope_factor: float | None = _help("override the RoPE scaling factor (default: from the target length)", default=None)
    rope_theta: float | None = _help(
        "an explicit RoPE base for --rope_method theta (EasyContext's and Gradient's way), instead of --rope_factor",
        default=None,
    )
    load_in_4bit: bool = _help("QLoRA: base linear weights in 4-bit NF4, double-quantized (bitsandbytes)", default=False)
    bnb_4bit_compute_dtype: str | None = _help("dtype the 4-bit matmuls compute in (default: --dtype)", default=None)
    cache_dir: str | None = _help(
        "Hugging Face cache folder to find hub ids in (LongLoRA's --cache_dir); still local files only", default=None
    )

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype} is not one of {', '.join(DTYPES)}")
        if self.rope_method is not None and self.rope_method not in ROPE_METHODS:
            raise ValueError(f"--rope_method {self.rope_method} is not one of {', '.join(ROPE_METHODS)}")
        if self.rope_factor is not None and self.rope_factor < 1:
            raise ValueError(f"--rope_factor must be at least 1 (got {self.rope_factor})")
        if self.rope_theta is not None and (self.rope_method not in (None, "theta") or self.rope_factor is not None):
            raise ValueError("--rope_theta goes with --rope_method theta and without --rope_factor")
        if self.rope_theta is not None and not self.rope_theta > 0:
            raise ValueError(f"--rope_theta must be positive (got {self.rope_theta})")
        compute_dtype = self.bnb_4bit_compute_dtype
        if compute_dtype is not None and compute_dtype not in DTYPES:
            raise ValueError(f"--bnb_4bit_compute_dtype {compute_dtype} is not one of {', '.join(DTYPES)}")

    def rope_options(self) -> dict:
        options = {"factor": self.rope_factor, "rope_theta": self.rope_theta}
        return {key: value for key, value in options.items() if value is not None}

    def quantization_options(self) -> dict:
        """`load_model_and_tokenizer` keywords for --load_in_4bit."""
        return {"load_in_4bit": self.load_in_4bit, "compute_dtype": self.bnb_4bit_compute_dtype}


@dataclass
class ModelArguments(LoadingArguments):
    """The model a training script starts from."""

    model_name_or_path: str = _help(
        f"'{DEFAULT_MODEL}' (bundled SmolLM2-135M-Instruct), a local HF folder, a .gguf file or a cached hub id",
        default=DEFAULT_MODEL,
    )
    start_from: str | None = _help(
        "an earlier run's output folder to train on from (progressive extension; its RoPE is the starting point)",
        default=None,
    )
    start_mode: str = _help(
        "merge: merge the earlier stage(s) into the base and train a fresh LoRA; continue: train its adapter on",
        default="merge",
    )
    model_type: str | None = _help(
        "LongLoRA's llama or gpt-neox, checked against the model (attention and LoRA targets follow the model)",
        default=None,
    )

    def __post_init__(self):
        super().__post_init__()
        if self.rope_method is None:
            self.rope_method = default_rope_method(self.rope_options())
        if self.start_mode not in START_MODES:
            raise ValueError(f"--start_mode {self.start_mode} is not one of {', '.join(START_MODES)}")


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
    lora_target: str | None = _help(
        "LoRA target modules, comma-separated, or all-linear (default: the attention projections, q/k/v/o_proj; "
        "GPT-NeoX: query_key_value,dense as LongLoRA)",
        default=None,
    )
    loss_chunk_size: int = _help("positions per chunk of the output-head + loss computation", default=2048)
    sequence_parallel_size: int = _help(
        "split each row over this many processes (DeepSpeed Ulysses, under torchrun/deepspeed; default config "
        "ds_configs/stage2.json); the others are data parallel",
        default=1,
    )

    output_dir: str | None = _help("where checkpoints and the final adapter go", default="outputs/fine-tune")
    overwrite_output_dir: bool = _help(
        "write into a --output_dir that already holds files (another run's adapter and checkpoints are replaced)",
        default=False,
    )
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


# ---------------------------------------------------------------------------------------------
# Evaluation scripts (eval.py, eval_distributed.py, passkey_retrivial.py, needle_in_haystack.py)

PERPLEXITY_SCORINGS = ("longlora", "strided")


def _positive_ints(flag: str, text: str) -> list[int]:
    """'2048,4096' -> [2048, 4096], sorted and without repeats; ValueError naming the flag otherwise."""
    try:
        values = sorted({int(piece) for piece in str(text).split(",") if piece.strip()})
    except ValueError:
        raise ValueError(f"{flag} {text} must be a comma-separated list of integers") from None
    if not values or values[0] <= 1:
        raise ValueError(f"{flag} {text} must name lengths above 1 token")
    return values


@dataclass
class InferenceModelArguments(LoadingArguments):
    """The model a reading script loads: LongLoRA's --base_model/--peft_model/--context_size plus RoPE scaling."""

    base_model: str = _help(
        f"'{DEFAULT_MODEL}' (bundled SmolLM2-135M-Instruct), a local HF folder, a .gguf file or a cached hub id",
        default=DEFAULT_MODEL,
    )
    peft_model: str | None = _help(
        "fine-tune.py output folder: PEFT adapter and/or trainable_params.safetensors, applied to --base_model",
        default=None,
    )
    context_size: int | None = _help(
        "context length the model was fine-tuned for; RoPE is scaled to reach it (default: the longest length tested)",
        default=None,
    )
    flash_attn: bool = _help("use flash-attn 2 (CUDA only; falls back to SDPA)", default=False)
    dca: bool = _help("Dual Chunk Attention (ChunkLlama): read past the pretraining window with no training", default=False)
    pretraining_length: int | None = _help(
        "window the model was pretrained for, DCA's unit (default: the model's native window)", default=None
    )
    dtype: str = _help(
        f"weights dtype: {', '.join(DTYPES)}, or auto: bfloat16 on a GPU, float32 on a CPU (faster there)", default="auto"
    )
    device_map: str | None = _help(
        "auto: spread the model over the visible GPUs (accelerate), as LongLoRA loads 13B-70B; default: one device",
        default=None,
    )
    dca_chunk_size: int | None = _help("DCA's chunk size in tokens (default: 3/4 of --pretraining_length)", default=None)
    dca_local_window: int | None = _help("DCA's local window in tokens (default: 1/8 of --pretraining_length)", default=None)

    def __post_init__(self):
        if self.dtype == "auto":
            self.dtype = default_reading_dtype()
        super().__post_init__()
        # what loading is asked for (None: the adapter's record, else the default) and what it will use,
        # shown in results; a flag contradicting the adapter's record is refused here, before any work
        self.rope_method_asked = self.rope_method
        record = read_record(self.peft_model) if self.peft_model else None
        self.rope_method, _ = rope_for_reading(record, self.peft_model, self.rope_method, self.rope_options(), self.dca)
        if self.context_size is not None and self.context_size <= 0:
            raise ValueError(f"--context_size must be positive (got {self.context_size})")
        if self.pretraining_length is not None and self.pretraining_length <= 0:
            raise ValueError(f"--pretraining_length must be positive (got {self.pretraining_length})")
        check_device_map(self.device_map)
        for flag, value in (("--dca_chunk_size", self.dca_chunk_size), ("--dca_local_window", self.dca_local_window)):
            if value is not None and not self.dca:
                raise ValueError(f"{flag} sets Dual Chunk Attention's sizes: it goes with --dca True")

    def load_options(self, longest_length: int) -> dict:
        """Keyword arguments of longctx.modeling.load_for_inference; RoPE reaches `longest_length` by default."""
        from longctx.attention import flash_attn_available

        too_long = longest_length is not None and (self.pretraining_length or 0) > longest_length
        if self.dca and too_long:
            raise ValueError(
                f"--pretraining_length {self.pretraining_length} exceeds the longest input, {longest_length} tokens: "
                "DCA would never split it"
            )
        return {
            "base_model": self.base_model,
            "peft_model": self.peft_model,
            "context_size": self.context_size or longest_length,
            "rope_method": self.rope_method_asked,
            "rope_options": self.rope_options(),
            "dtype": self.dtype,
            "attn_implementation": "flash_attention_2" if self.flash_attn and flash_attn_available() else "sdpa",
            "dca": self.dca,
            "pretraining_length": self.pretraining_length,
            **self.quantization_options(),
        }

    def loading_options(self, longest_length: int | None, device: str | None = None) -> dict:
        """Every keyword of load_for_inference: `load_options`, plus --cache_dir, DCA's sizes and the placement
        (--device_map, else one device: `device`, default the GPU when there is one)."""
        options = {
            **self.load_options(longest_length),
            "cache_dir": self.cache_dir,
            "dca_chunk_size": self.dca_chunk_size,
            "dca_local_window": self.dca_local_window,
        }
        if self.device_map:
            options["device_map"] = self.device_map
        else:
            options["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return options


@dataclass
class PerplexityArguments(InferenceModelArguments):
    """eval.py and eval_distributed.py: perplexity at one or several lengths (LongLoRA's flags first)."""

    seq_len: str = _help("evaluation length(s) in tokens, comma-separated for several: 2048,4096,8192", default="2048")
    batch_size: int = _help("windows per forward pass", default=1)
    data_path: str | None = _help(
        "token .bin (uint16) / .u32.bin, or .txt files/folders, .jsonl (text field); comma-separated for several "
        "(default: the bundled held-out book data/pg19_eval)",
        default=None,
    )
    token_dtype: str | None = _help("dtype of .bin token files: uint16 or uint32 (default: from the suffix)", default=None)
    scoring: str = _help(
        "longlora: windows every --sliding_window tokens, all tokens of each scored, mean of window losses "
        "(LongLoRA's eval.py); strided: each token scored once, with up to seq_len - 1 tokens of context",
        default="longlora",
    )
    sliding_window: int = _help("stride between window starts in tokens (LongLoRA's and LongQLoRA's 256)", default=256)
    max_tokens: int | None = _help("use only the first N tokens of the data (bounds the work)", default=None)
    output_json: str | None = _help("write the results (config, per-length figures, timings) to this JSON file", default=None)
    plot: str | None = _help("PNG of perplexity against length (default: beside --output_json)", default=None)
    overwrite: bool = _help("replace --output_json and --plot when they already exist", default=False)
    progress_bar_fresh_rate: int = _help("refresh the progress bar every N windows (LongLoRA's eval_distributed.py flag)", default=1)

    def __post_init__(self):
        super().__post_init__()
        self.seq_lens = _positive_ints("--seq_len", self.seq_len)
        if self.progress_bar_fresh_rate <= 0:
            raise ValueError(f"--progress_bar_fresh_rate must be positive (got {self.progress_bar_fresh_rate})")
        if self.context_size is not None and self.seq_lens[-1] > self.context_size:
            raise ValueError(f"--seq_len {self.seq_lens[-1]} exceeds --context_size {self.context_size}")
        if self.scoring not in PERPLEXITY_SCORINGS:
            raise ValueError(f"--scoring {self.scoring} is not one of {', '.join(PERPLEXITY_SCORINGS)}")
        if self.batch_size <= 0:
            raise ValueError(f"--batch_size must be positive (got {self.batch_size})")
        if self.sliding_window <= 0:
            raise ValueError(f"--sliding_window must be positive (got {self.sliding_window})")
        if self.scoring == "strided" and self.sliding_window >= self.seq_lens[0]:
            raise ValueError(
                f"--sliding_window {self.sliding_window} must be below --seq_len {self.seq_lens[0]} with --scoring "
                "strided (a window's first token is context only)"
            )
        if self.token_dtype not in (None, "uint16", "uint32"):
            raise ValueError(f"--token_dtype {self.token_dtype} must be uint16 or uint32")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(f"--max_tokens must be at least 2 (got {self.max_tokens})")


def _depths(flag: str, text: str | None) -> list[float] | None:
    """'0,50,100' (percent) -> [0.0, 0.5, 1.0]; None stays None."""
    if text is None or not str(text).strip():
        return None
    try:
        percents = [float(piece) for piece in str(text).split(",") if piece.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text} must be comma-separated percentages, e.g. 0,25,50,75,100") from None
    if not percents or not all(0 <= percent <= 100 for percent in percents):
        raise ValueError(f"{flag} {text}: depths are percentages between 0 and 100")
    return sorted({percent / 100 for percent in percents})


@dataclass
class RetrievalArguments(InferenceModelArguments):
    """passkey_retrivial.py and needle_in_haystack.py: retrieval accuracy by prompt length (LongLoRA's flags)."""

    max_tokens: int = _help("longest prompt in tokens; lengths are --interval, 2 x --interval, ... up to it", default=8192)
    interval: int = _help("step between tested prompt lengths in tokens", default=1024)
    num_tests: int = _help("tests per length (per length and depth with --depths), each with its own key", default=10)
    depths: str | None = _help(
        "depths of the key in percent of the context, comma-separated, e.g. 0,25,50,75,100 (default: random)",
        default=None,
    )
    seed: int = _help("seed of the keys and random depths", default=0)
    output_json: str | None = _help("write the results (config, accuracy per length, every answer) to this JSON file", default=None)
    plot: str | None = _help("PNG of accuracy against length, or depth x length heatmap (default: beside --output_json)", default=None)
    overwrite: bool = _help("replace --output_json and --plot when they already exist", default=False)

    def __post_init__(self):
        super().__post_init__()
        if self.interval <= 0:
            raise ValueError(f"--interval must be positive (got {self.interval})")
        if self.max_tokens < self.interval:
            raise ValueError(f"--max_tokens {self.max_tokens} is below --interval {self.interval}: no length to test")
        if self.num_tests <= 0:
            raise ValueError(f"--num_tests must be positive (got {self.num_tests})")
        self.depth_fractions = _depths("--depths", self.depths)
        self.lengths = list(range(self.interval, self.max_tokens + 1, self.interval))


@dataclass
class NeedleArguments(RetrievalArguments):
    """needle_in_haystack.py: a needle sentence at fixed depths of real text (LongAlign's and ChunkLlama's test)."""

    num_tests: int = _help("haystacks per length and depth (each starts at another place in the books)", default=1)
    depths: str | None = _help("needle depths in percent of the context, comma-separated", default="0,10,20,30,40,50,60,70,80,90,100")
    haystack: str | None = _help(
        ".txt files or folders of real text (default: the bundled held-out book data/pg19_eval)", default=None
    )
    needle: str = _help(
        "the sentence hidden in the text",
        default="The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
    )
    question: str = _help("the question asked after the text", default="What is the best thing to do in San Francisco?")
    answer: str = _help("the answer that must appear in the reply (case and punctuation aside)", default="Dolores Park")
    answer_prefix: str = _help("start of the reply, written for the model", default="The best thing to do in San Francisco is")

    def __post_init__(self):
        super().__post_init__()
        if self.depth_fractions is None:
            raise ValueError("--depths must name at least one depth for the needle test")
        if not self.answer.strip() or self.answer.lower() not in self.needle.lower():
            raise ValueError(f"--answer {self.answer!r} must be a non-empty part of --needle")


# ---------------------------------------------------------------------------------------------
# Reading scripts (inference.py, demo.py)


@dataclass
class ReadingArguments(InferenceModelArguments):
    """How inference.py and demo.py read a material and answer (LongLoRA's generation flags, StreamingLLM's)."""

    context_size: int | None = _help(
        "context length the model was fine-tuned for; RoPE is scaled to reach it (default: the model's own window)",
        default=None,
    )
    max_gen_len: int = _help("most tokens generated per answer", default=512)
    temperature: float = _help("sampling temperature; 0 decodes greedily", default=0.6)
    top_p: float = _help("nucleus sampling: keep the smallest token set with this probability", default=0.9)
    prompt_template: str = _help(
        "chat: the tokenizer's chat template; llama2: LongLoRA's [INST] format; vicuna: LongQLoRA's", default="chat"
    )
    material_type: str | None = _help(
        "material, book or paper: the instruction before the material (LongLoRA's demo); none: the material as is, "
        "then the question (LongLoRA's inference.py; the default with --prompt_template llama2, else material)",
        default=None,
    )
    material_title: str | None = _help("title named in the instruction of a book (LongLoRA's demo)", default=None)
    truncate: str = _help(
        "material over the window: none refuses it with its token count; middle cuts its middle", default="none"
    )
    ocr: bool = _help("read scanned PDF pages by OCR (optional extra: pytesseract + tesseract-ocr)", default=False)
    enable_streaming: bool = _help(
        "StreamingLLM cache: keep --start_size sink tokens + --recent_size recent ones", default=False
    )
    start_size: int = _help("attention-sink tokens kept at the start of the cache (with --enable_streaming)", default=4)
    recent_size: int = _help("most recent tokens kept in the cache (with --enable_streaming)", default=2000)
    seed: int = _help("random seed of sampling", default=0)

    def __post_init__(self):
        from longctx.material import MATERIAL_TYPES, TRUNCATIONS
        from longctx.prompts import check_template

        super().__post_init__()
        check_template(self.prompt_template)
        if self.truncate not in TRUNCATIONS:
            raise ValueError(f"--truncate {self.truncate} is not one of {', '.join(TRUNCATIONS)}")
        if self.material_type is not None and self.material_type not in MATERIAL_TYPES:
            raise ValueError(f"--material_type {self.material_type} is not one of {', '.join(MATERIAL_TYPES)}")
        if self.max_gen_len <= 0:
            raise ValueError(f"--max_gen_len must be positive (got {self.max_gen_len})")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1] (got {self.top_p})")
        if self.start_size < 0 or self.recent_size <= 0:
            raise ValueError(
                f"--start_size must be >= 0 and --recent_size > 0 (got {self.start_size}, {self.recent_size})"
            )

    def window(self, model) -> int:
        """The context window read in: --context_size, else the model's own (RoPE is not rescaled unless asked)."""
        return self.context_size or model.config.max_position_embeddings

    def material_options(self) -> dict:
        """Keyword arguments of longctx.material.fit_material and material_turn for the material's layout."""
        layout = self.material_type or ("none" if self.prompt_template == "llama2" else "material")
        return {"material_type": layout, "title": self.material_title}

    def streaming(self) -> tuple[int, int] | None:
        return (self.start_size, self.recent_size) if self.enable_streaming else None

    def chat_options(self) -> dict:
        """Keyword arguments of longctx.chat.ChatSession."""
        return {
            "max_gen_len": self.max_gen_len,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "template": self.prompt_template,
            "streaming": self.streaming(),
        }


@dataclass
class InferenceArguments(ReadingArguments):
    """inference.py: one question about a material, then optionally more (--chat)."""

    material: str | None = _help("the document: a .txt, .md or .pdf file", default=None)
    question: str | None = _help("the question asked after the material", default=None)
    chat: bool = _help("after the first answer, keep asking questions typed on stdin (same KV cache)", default=False)

    def __post_init__(self):
        super().__post_init__()
        if not self.material:
            raise ValueError("--material is required (a .txt, .md or .pdf file)")
        if not (self.question or "").strip() and not self.chat:
            raise ValueError("--question is required (or --chat to type questions)")


@dataclass
class DemoArguments(ReadingArguments):
    """demo.py: the gradio app; local only unless --share."""

    host: str = _help("address to serve on (0.0.0.0 opens it to the network)", default="127.0.0.1")
    port: int = _help("port to serve on", default=8898)
    share: bool = _help("also open a public gradio.live link (off by default)", default=False)
    cached_conversations: int = _help(
        "conversations that keep their KV cache in memory; the least recently asked re-read theirs when asked again",
        default=4,
    )
    session_timeout: float = _help("seconds an idle session's document and conversation are kept", default=3600)

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1-65535 (got {self.port})")
        if self.cached_conversations <= 0:
            raise ValueError(f"--cached_conversations must be positive (got {self.cached_conversations})")
        if self.session_timeout <= 0:
            raise ValueError(f"--session_timeout must be positive (got {self.session_timeout})")


@dataclass
class Pdf2TxtArguments:
    """pdf2txt/pdf2txt.py: PDFs (files or folders, searched recursively) to clean text."""

    input: list[str] = field(
        default_factory=list, metadata={"help": "PDF files and/or folders of PDFs (searched recursively)"}
    )
    output_dir: str | None = _help("write one .txt per PDF here, keeping the folders' layout", default=None)
    output_jsonl: str | None = _help(
        "also (or instead) write one {'text', 'source'} line per PDF: pretraining data", default=None
    )
    ocr: bool = _help("OCR pages without a text layer (optional extra: pytesseract + tesseract-ocr)", default=False)
    overwrite: bool = _help("replace .txt files and --output_jsonl when they already exist (default: skip / refuse)", default=False)

    def __post_init__(self):
        if not self.input:
            raise ValueError("--input is required: PDF files and/or folders")
        if not self.output_dir and not self.output_jsonl:
            raise ValueError("pass --output_dir (one .txt per PDF) and/or --output_jsonl (one JSON line per PDF)")


# ---------------------------------------------------------------------------------------------
# Supervised fine-tuning (supervised-fine-tune.py) and its data tool


@dataclass
class SFTDataArguments:
    """supervised-fine-tune.py's data: LongAlpaca JSON or chat JSONL, its prompt format and batching (LongAlign)."""

    data_path: str | None = _help(
        "LongAlpaca .json ({instruction, output[, input]} records), LongQLoRA .jsonl ({input, output}) or chat .jsonl "
        "({messages: [...]} per line)",
        default=None,
    )
    prompt_template: str = _help(
        "chat (the tokenizer's chat template), llama2 (LongLoRA's [INST] format) or vicuna (LongQLoRA's)", default="chat"
    )
    batch_method: str = _help(
        "naive (random order, padded), pack (greedy packing up to --model_max_length) or sort (length-sorted batches)",
        default="naive",
    )
    pack_loss: bool = _help("LongAlign's loss weighting: every sequence counts the same however it is packed", default=False)
    max_train_samples: int | None = _help("use at most the first N records (default: all)", default=None)

    def __post_init__(self):
        from longctx.prompts import check_template
        from longctx.sft_batching import BATCH_METHODS

        if not self.data_path:
            raise ValueError("--data_path is required: a LongAlpaca .json or chat .jsonl file")
        check_template(self.prompt_template)
        if self.batch_method not in BATCH_METHODS:
            raise ValueError(f"--batch_method {self.batch_method!r}: choose one of {', '.join(BATCH_METHODS)}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise ValueError(f"--max_train_samples must be positive (got {self.max_train_samples})")


@dataclass
class QACheckArguments:
    """Accuracy on held-out questions (greedy answers, full attention) before and after SFT."""

    eval_data_path: str | None = _help(
        "held-out questions in LongAlpaca .json (from python -m longctx.build_qa_data); none: no accuracy check",
        default=None,
    )
    eval_samples: int | None = _help("ask only the first N held-out questions (default: all)", default=None)
    eval_max_new_tokens: int = _help("tokens generated per answer", default=32)

    def __post_init__(self):
        if self.eval_samples is not None and self.eval_samples <= 0:
            raise ValueError(f"--eval_samples must be positive (got {self.eval_samples})")
        if self.eval_max_new_tokens <= 0:
            raise ValueError(f"--eval_max_new_tokens must be positive (got {self.eval_max_new_tokens})")


@dataclass
class QADataArguments:
    """python -m longctx.build_qa_data: long-document QA records (facts hidden in book sections)."""

    output: str = _help("LongAlpaca .json file to write", default=None)
    books: str = _help(
        "books to cut sections from: .txt files or folders, comma-separated (default: the training books data/pg19)",
        default=None,
    )
    num_samples: int = _help("number of records", default=64)
    min_tokens: int = _help("shortest section in approximate tokens (4 characters each)", default=256)
    max_tokens: int = _help("longest section in approximate tokens; lengths are long-tailed in between", default=15000)
    seed: int = _help("seed of sections, facts and depths", default=0)
    overwrite: bool = _help("replace --output when it already exists", default=False)

    def __post_init__(self):
        if not self.output:
            raise ValueError("--output is required: the .json file to write")
        if self.num_samples <= 0:
            raise ValueError(f"--num_samples must be positive (got {self.num_samples})")
        if not 16 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 16 <= --min_tokens <= --max_tokens (got {self.min_tokens} and {self.max_tokens})")


@dataclass
class QAAccuracyArguments(InferenceModelArguments):
    """python -m longctx.qa_accuracy: a base model (plus a supervised-fine-tune.py adapter) on held-out questions."""

    prompt_template: str = _help("chat, llama2 or vicuna: the format the adapter was tuned in", default="chat")
    output_json: str | None = _help("write the accuracy and every answer to this JSON file", default=None)
    overwrite: bool = _help("replace --output_json when it already exists", default=False)

    def __post_init__(self):
        from longctx.prompts import check_template

        super().__post_init__()
        check_template(self.prompt_template)


# ---------------------------------------------------------------------------------------------
# RULER (ruler.py)


@dataclass
class RulerArguments(InferenceModelArguments):
    """ruler.py: RULER's 13 synthetic tasks by length, and the effective context length."""

    lengths: str = _help(
        "lengths in tokens, prompt plus generation budget as RULER counts them, comma-separated",
        default="2048,4096,8192",
    )
    tasks: str = _help(
        "tasks, families (retrieval, multi_hop, aggregation, qa) or all, comma-separated, e.g. niah_single_1,vt",
        default="all",
    )
    num_samples: int = _help("samples per task and length (RULER's default: 500)", default=10)
    batch_size: int = _help("prompts of one task and length generated together, left-padded (1 with --dca)", default=4)
    threshold: float = _help(
        "average score a length must keep to count as effective (RULER's 85.6: Llama-2-7B at 4k)", default=85.6
    )
    haystack: str | None = _help(
        ".txt files or folders for the essay haystacks and QA passages (default: the held-out book data/pg19_eval)",
        default=None,
    )
    seed: int = _help("seed of every sample (keys, values, depths, words)", default=0)
    output_json: str | None = _help(
        "write scores, averages, effective lengths and every reply to this JSON file", default=None
    )
    plot: str | None = _help("PNG heatmap of scores, tasks x lengths (default: beside --output_json)", default=None)
    overwrite: bool = _help("replace --output_json and --plot when they already exist", default=False)

    def __post_init__(self):
        from longctx.ruler_tasks import select_tasks

        super().__post_init__()
        self.target_lengths = _positive_ints("--lengths", self.lengths)
        self.task_names = select_tasks(self.tasks)
        if self.num_samples <= 0:
            raise ValueError(f"--num_samples must be positive (got {self.num_samples})")
        if self.batch_size <= 0:
            raise ValueError(f"--batch_size must be positive (got {self.batch_size})")
        if not 0 < self.threshold <= 100:
            raise ValueError(f"--threshold must be in (0, 100] (got {self.threshold})")
