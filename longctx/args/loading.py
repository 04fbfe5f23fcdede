"""How any script loads its model (dtype, RoPE, 4-bit base); reading scripts add the adapter, DCA and placement."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from longctx.args.fields import help_field
from longctx.errors import check_choice
from longctx.modeling import (
    DEFAULT_MODEL,
    DTYPES,
    WeightLoading,
    check_device_map,
    default_device,
    default_reading_dtype,
)
from longctx.reading_model import DualChunkSizes, ReadingModel
from longctx.rope import ROPE_METHODS, RopeRequest
from longctx.training_record import read_record, rope_for_reading


MODEL_HELP = (
    f"'{DEFAULT_MODEL}' (bundled SmolLM2-135M-Instruct), a local HF folder, a .gguf file or a cached hub id"
)

@dataclass
class LoadingArguments:
    """How any script loads its model: dtype, RoPE scaling and QLoRA's 4-bit base (shared by all scripts)."""

    dtype: str = help_field(f"weights dtype: {', '.join(DTYPES)} (float32 is fastest on CPU)", default="float32")
    rope_method: str | None = help_field(
        f"RoPE scaling to reach the target length: {', '.join(ROPE_METHODS)} (default: an adapter's own, "
        "else linear; theta with --rope_theta; none with --dca)",
        default=None,
    )
    rope_factor: float | None = help_field("override the RoPE scaling factor (default: from the target length)", default=None)
    rope_theta: float | None = help_field(
        "an explicit RoPE base for --rope_method theta (EasyContext's and Gradient's way), instead of --rope_factor",
        default=None,
    )
    load_in_4bit: bool = help_field("QLoRA: base linear weights in 4-bit NF4, double-quantized (bitsandbytes)", default=False)
    bnb_4bit_compute_dtype: str | None = help_field("dtype the 4-bit matmuls compute in (default: --dtype)", default=None)
    cache_dir: str | None = help_field(
        "Hugging Face cache folder to find hub ids in (LongLoRA's --cache_dir); still local files only", default=None
    )

    def __post_init__(self):
        check_choice("--dtype", self.dtype, DTYPES)
        if self.rope_method is not None:
            check_choice("--rope_method", self.rope_method, ROPE_METHODS)
        if self.rope_factor is not None and self.rope_factor < 1:
            raise ValueError(f"--rope_factor must be at least 1 (got {self.rope_factor})")
        if self.rope_theta is not None and (self.rope_method not in (None, "theta") or self.rope_factor is not None):
            raise ValueError("--rope_theta goes with --rope_method theta and without --rope_factor")
        if self.rope_theta is not None and not self.rope_theta > 0:
            raise ValueError(f"--rope_theta must be positive (got {self.rope_theta})")
        compute_dtype = self.bnb_4bit_compute_dtype
        if compute_dtype is not None:
            check_choice("--bnb_4bit_compute_dtype", compute_dtype, DTYPES)

    def rope_request(self) -> RopeRequest:
        return RopeRequest(self.rope_method, self.rope_factor, self.rope_theta)

    def weight_loading(self) -> WeightLoading:
        """How the weights load: --dtype, --cache_dir and --load_in_4bit."""
        return WeightLoading(
            dtype=self.dtype,
            load_in_4bit=self.load_in_4bit,
            compute_dtype=self.bnb_4bit_compute_dtype,
            cache_dir=self.cache_dir,
        )


@dataclass
class InferenceModelArguments(LoadingArguments):
    """The model a reading script loads: LongLoRA's --base_model/--peft_model/--context_size plus RoPE scaling."""

    base_model: str = help_field(
        MODEL_HELP,
        default=DEFAULT_MODEL,
    )
    peft_model: str | None = help_field(
        "fine-tune.py output folder: PEFT adapter and/or trainable_params.safetensors, applied to --base_model",
        default=None,
    )
    context_size: int | None = help_field(
        "context length the model was fine-tuned for; RoPE is scaled to reach it (default: the longest length tested)",
        default=None,
    )
    flash_attn: bool = help_field("use flash-attn 2 (CUDA only; falls back to SDPA)", default=False)
    dca: bool = help_field("Dual Chunk Attention (ChunkLlama): read past the pretraining window with no training", default=False)
    pretraining_length: int | None = help_field(
        "window the model was pretrained for, DCA's unit (default: the model's native window)", default=None
    )
    dtype: str = help_field(
        f"weights dtype: {', '.join(DTYPES)}, or auto: bfloat16 on a GPU, float32 on a CPU (faster there)", default="auto"
    )
    device_map: str | None = help_field(
        "auto: spread the model over the visible GPUs (accelerate), as LongLoRA loads 13B-70B; default: one device",
        default=None,
    )
    dca_chunk_size: int | None = help_field("DCA's chunk size in tokens (default: 3/4 of --pretraining_length)", default=None)
    dca_local_window: int | None = help_field("DCA's local window in tokens (default: 1/8 of --pretraining_length)", default=None)

    def __post_init__(self):
        if self.dtype == "auto":
            self.dtype = default_reading_dtype()
        super().__post_init__()
        # what loading is asked for (None: the adapter's record, else the default) and what it will use,
        # shown in results; a flag contradicting the adapter's record is refused here, before any work
        self.rope_method_asked = self.rope_method
        record = read_record(self.peft_model) if self.peft_model else None
        self.rope_method = rope_for_reading(record, self.peft_model, self.rope_request(), self.dca).method
        if self.context_size is not None and self.context_size <= 0:
            raise ValueError(f"--context_size must be positive (got {self.context_size})")
        if self.pretraining_length is not None and self.pretraining_length <= 0:
            raise ValueError(f"--pretraining_length must be positive (got {self.pretraining_length})")
        check_device_map(self.device_map)
        for flag, value in (("--dca_chunk_size", self.dca_chunk_size), ("--dca_local_window", self.dca_local_window)):
            if value is not None and not self.dca:
                raise ValueError(f"{flag} sets Dual Chunk Attention's sizes: it goes with --dca True")

    def result_config(self, model) -> dict:
        """What a result file records about the run: every flag, plus the RoPE the model was read with."""
        config = asdict(self)
        config["seq_lens"] = getattr(self, "seq_lens", None)
        config["rope_parameters"] = getattr(model.config, "rope_parameters", None)
        config["max_position_embeddings"] = getattr(model.config, "max_position_embeddings", None)
        return config

    def reading_model(self, longest_length: int | None, device: str | None = None) -> ReadingModel:
        """What load_for_inference loads: RoPE reaches `longest_length` unless --context_size says otherwise;
        placed by --device_map, else on one device: `device`, default the GPU when there is one."""
        from longctx.attention import flash_attn_available

        too_long = longest_length is not None and (self.pretraining_length or 0) > longest_length
        if self.dca and too_long:
            raise ValueError(
                f"--pretraining_length {self.pretraining_length} exceeds the longest input, {longest_length} tokens: "
                "DCA would never split it"
            )
        attention = "flash_attention_2" if self.flash_attn and flash_attn_available() else "sdpa"
        weights = replace(self.weight_loading(), attn_implementation=attention, device_map=self.device_map)
        dca = DualChunkSizes(self.pretraining_length, self.dca_chunk_size, self.dca_local_window) if self.dca else None
        return ReadingModel(
            base_model=self.base_model,
            peft_model=self.peft_model,
            context_size=self.context_size or longest_length,
            rope=RopeRequest(self.rope_method_asked, self.rope_factor, self.rope_theta),
            weights=weights,
            dca=dca,
            device=None if self.device_map else device or default_device(),
        )
