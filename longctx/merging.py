"""Fold LoRA adapters and LoRA+ trainable weights into a base model and save it as a plain HF model.

Each adapter folder is applied in order, as Gradient merged its Llama-3 1048k adapters stage by stage
and as LongLoRA's merge script does for one: the folder's trainable params (embeddings, norms)
replace the current weights, then its LoRA deltas are merged (`merge_and_unload`), and the result is
the base of the next folder. Trainable params come first because a stage trained its LoRA on top of
its own full-rank weights.

Two things LongLoRA's merge got wrong and this module refuses to repeat: a LoRA+ folder without its
trainable params merged silently (LoRA+ weights lost, so the model degrades), and the RoPE scaling
was not written into the saved config, so the merged model read long inputs with the wrong positions.
Here the base is loaded with the RoPE the adapters were trained with (their training record) or
the scaling for `context_size` already in its config, which `save_pretrained` then keeps, and a
`context_size` below the base window or below the length an adapter was trained at is refused.

A folder is LoRA+ when it says so: its training record lists trainable params, or it still holds the
whole checkpoint they are to be extracted from (LongLoRA's pytorch_model.bin, DeepSpeed's
global_step*). Plain LoRA adapters (Gradient's stages, PEFT's own) merge as they are, and without a
training record they keep the base model's RoPE (Gradient's bases already carry their long-context
RoPE base).
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import PeftModel
from transformers import AutoConfig

from longctx.adapter_fit import check_adapter_fits
from longctx.checkpoints import ADAPTER_CONFIG_FILE
from longctx.lora import TRAINABLE_PARAMS_FILE, load_trainable_params, trainable_params_path
from longctx.lora_extraction import REPORT_FILE as EXTRACTION_REPORT_FILE
from longctx.modeling import WeightLoading, load_model_and_tokenizer, resolve_model_path, save_model_and_tokenizer
from longctx.outputs import check_output_folder
from longctx.rope import RopeRequest, context_window
from longctx.special_tokens import add_tokens_for_trainable_params
from longctx.training_record import RECORD_FILE, TrainingRecord, adapter_chain, read_record, rope_for_reading

TRAINING_RESULTS_FILE = "fine-tune-results.json"  # written by fine-tune.py beside its adapter


def lora_plus_evidence(folder: str | Path) -> str | None:
    """What says `folder` trained full-rank weights beside LoRA (LoRA+), or None for a plain LoRA adapter."""
    folder = Path(folder)
    record = read_record(folder)
    if record is not None and record.extra.get("trainable_params"):
        return f"its training record lists trainable params ({record.extra['trainable_params']})"
    if (folder / "pytorch_model.bin").is_file() or any(folder.glob("global_step*")):
        return "it holds the whole training checkpoint (LongLoRA's pytorch_model.bin or DeepSpeed's global_step*)"
    return None


def check_adapter_folder(folder: str | Path, require_trainable_params: bool | None = None) -> Path:
    """Fail early, before any model loads, on a folder that is not a complete adapter.

    Trainable params are required when `require_trainable_params` is True, never when False, and by
    default when the folder says it trained them (`lora_plus_evidence`).
    """
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: no {ADAPTER_CONFIG_FILE}")
    if trainable_params_path(folder) is not None or require_trainable_params is False:
        return folder
    evidence = lora_plus_evidence(folder)
    if require_trainable_params or evidence:
        reason = f"LoRA+: {evidence}" if evidence else "--require_trainable_params True"
        raise FileNotFoundError(
            f"{folder} has no {TRAINABLE_PARAMS_FILE} but was trained with {reason}; run get_trainable_weights.py "
            "on the checkpoint first, or pass --require_trainable_params False to merge the LoRA alone"
        )
    return folder


def trained_length(folder: str | Path) -> int | None:
    """The length an adapter was made for: its training record, fine-tune.py's results file (beside it or one folder up),
    or the tuned model's window recorded by longctx.lora_extraction; None when neither is there."""
    folder = Path(folder)
    record = read_record(folder)
    if record is not None:
        return record.model_max_length
    candidates = [
        (folder / TRAINING_RESULTS_FILE, "model_max_length"),
        (folder.parent / TRAINING_RESULTS_FILE, "model_max_length"),
        (folder / EXTRACTION_REPORT_FILE, "tuned_context_window"),
    ]
    for path, key in candidates:
        if path.is_file():
            try:
                return int(json.loads(path.read_text())[key])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def merge_adapters(model, adapter_folders: list[str | Path], require_trainable_params: bool | None = None, tokenizer=None):
    """Apply each folder's trainable params then merge its LoRA, in order; returns the plain merged model.

    With `tokenizer`, trainable params with LongLoRA's added tokens get them added first (longctx.special_tokens).
    """
    for folder in adapter_folders:
        folder = check_adapter_folder(folder, require_trainable_params)
        check_adapter_fits(model, folder)
        if trainable_params_path(folder) is not None:
            if tokenizer is not None:
                add_tokens_for_trainable_params(model, tokenizer, folder)
            load_trainable_params(model, folder)
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return model


def last_training_record(adapter_folders: list[str | Path]) -> tuple[TrainingRecord | None, Path | None]:
    """The record of the last folder that has one: a later stage was trained on top of the earlier ones,
    under its own RoPE, so its RoPE is the merged model's."""
    for folder in reversed(adapter_folders):
        record = read_record(folder)
        if record is not None:
            return record, Path(folder)
    return None, None


def merge_and_save(
    base_model: str,
    adapter_folders: list[str | Path],
    context_size: int | None,
    save_path: str | Path,
    rope: RopeRequest = RopeRequest(),
    weights: WeightLoading = WeightLoading(),
    require_trainable_params: bool | None = None,
) -> Path:
    """Merge `adapter_folders` into `base_model` with RoPE scaled for `context_size`; save model + tokenizer.

    RoPE and the default `context_size` come from the last folder's training record when there is one
    (a contradicting `rope` is refused); LoRA+ folders without one (LongLoRA's) need `context_size`
    and get `rope` (method not chosen: linear, LongLoRA's rule); plain LoRA folders without one
    (Gradient's) default to the base model's window, its RoPE unchanged. `weights.device_map` places
    the merge (e.g. {"": "cuda"} or "auto"). `save_path` appears complete or not at all (written to a
    temporary sibling, then renamed).
    """
    save_path = check_output_folder("--save_path", save_path, {"--base_model": base_model, "--peft_model": adapter_folders})
    if not adapter_folders:
        raise ValueError("--peft_model needs at least one adapter folder")
    # a stage trained on top of merged earlier stages brings them along (longctx.stages)
    adapter_folders = list(dict.fromkeys(path.resolve() for folder in adapter_folders for path in adapter_chain(folder)))
    for folder in adapter_folders:
        check_adapter_folder(folder, require_trainable_params)
    record, record_folder = last_training_record(adapter_folders)
    rope = rope_for_reading(record, record_folder, rope, dca=False)
    model_path = resolve_model_path(base_model, weights.cache_dir)
    hub = {"cache_dir": weights.cache_dir, "trust_remote_code": weights.trust_remote_code}
    window = context_window(AutoConfig.from_pretrained(model_path, local_files_only=True, **hub))
    if context_size is None and record is not None:
        context_size = record.model_max_length
    elif context_size is None and any(trainable_params_path(folder) for folder in adapter_folders):
        raise ValueError(f"--context_size is required: no adapter folder holds {RECORD_FILE} saying its training length")
    elif context_size is None:
        context_size = window  # plain LoRA adapters without a record (Gradient's): the base model's RoPE as it is
    if context_size < window:  # LongLoRA's merge scales RoPE only past the window
        print(f"--context_size {context_size} is below the base model's window of {window} tokens: RoPE kept as it is")
        context_size = window
    for folder in adapter_folders:
        length = trained_length(folder)
        if length is not None and context_size < length:
            raise ValueError(
                f"--context_size {context_size} is below the {length} tokens {folder} was trained at: "
                "its RoPE scaling would be lost"
            )
    model, tokenizer = load_model_and_tokenizer(model_path, context_size, rope, weights, training_record=record)
    model = merge_adapters(model, adapter_folders, require_trainable_params, tokenizer)
    tokenizer.model_max_length = context_size
    save_model_and_tokenizer(model, tokenizer, save_path)
    return save_path
