"""The model a reading script reads with: base + a training folder, RoPE as trained, optionally DCA.

`ReadingModel` says everything about it in one typed object, built by the reading scripts' argument
group (`InferenceModelArguments.reading_model`) or by hand; `load_for_inference` builds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longctx.modeling import DEFAULT_MODEL, WeightLoading, load_model_and_tokenizer
from longctx.rope import RopeRequest
from longctx.training_record import read_record, rope_for_reading


@dataclass(frozen=True)
class DualChunkSizes:
    """Dual Chunk Attention's sizes (longctx.chunk_attention): its unit, `pretraining_length` (default: the
    adapter's training length, else the model's native window), and the chunk and local window in tokens
    (default 3/4 and 1/8 of the unit)."""

    pretraining_length: int | None = None
    chunk_size: int | None = None
    local_window: int | None = None


@dataclass(frozen=True)
class ReadingModel:
    """What `load_for_inference` loads.

    `peft_model` is a folder written by fine-tune.py (LongLoRA's `--peft_model`). RoPE comes from the
    folder's training record (longctx.training_record) when it has one, so `rope` can stay empty (a
    contradicting one is refused); without one (LongLoRA's folders) RoPE is scaled for `context_size`
    as in training (method not chosen: linear, LongLoRA's rule), so pass the length the adapter was
    trained at. `dca` set switches to Dual Chunk Attention with those sizes. `device` None leaves the
    model where `weights` placed it.
    """

    base_model: str = DEFAULT_MODEL
    peft_model: str | os.PathLike | None = None
    context_size: int | None = None
    rope: RopeRequest = field(default_factory=RopeRequest)
    weights: WeightLoading = field(default_factory=WeightLoading)
    dca: DualChunkSizes | None = None
    device: str | torch.device | None = None


def load_for_inference(reading: ReadingModel):
    """A model to read with (evaluation, retrieval tests, inference): base + fine-tuned weights, eval mode.

    The folder's `trainable_params.safetensors` (embeddings and norms of LoRA+) are loaded into the base
    model, and its PEFT adapter, when there is one, is merged into the weights, so the result is a plain
    transformers model (on a 4-bit base the adapter stays a PEFT wrapper, as in QLoRA training).
    Trainable params with more embedding rows than the model (LongLoRA's added `[PAD]`) get the same
    tokens added first (longctx.special_tokens); earlier stages the adapter was trained on top of are
    merged first (longctx.stages).
    """
    record = read_record(reading.peft_model)
    rope = rope_for_reading(record, reading.peft_model, reading.rope, dca=reading.dca is not None)
    dca = reading.dca
    if record is not None:
        print(f"--peft_model {reading.peft_model}: RoPE as trained, {record.describe()}", flush=True)
        if dca is not None and dca.pretraining_length is None:
            dca = DualChunkSizes(record.model_max_length, dca.chunk_size, dca.local_window)
    model, tokenizer = load_model_and_tokenizer(
        reading.base_model, reading.context_size, rope, reading.weights, training_record=record
    )
    if record is not None and record.base_adapters:  # earlier stages this adapter was trained on top of
        from longctx.merging import merge_adapters

        if reading.weights.load_in_4bit:
            raise ValueError(
                f"--peft_model {reading.peft_model} stacks on earlier stages, which cannot merge into a 4-bit base"
            )
        model = merge_adapters(model, record.base_adapters, require_trainable_params=False, tokenizer=tokenizer)
    if reading.peft_model is not None:
        model = _apply_training_folder(model, tokenizer, Path(reading.peft_model).expanduser(), reading.weights)
    if dca is not None:
        from longctx.chunk_attention import enable_dual_chunk_attention

        enable_dual_chunk_attention(model, dca.pretraining_length, dca.chunk_size, dca.local_window)
    if reading.device is not None:
        model.to(reading.device)
    return model.eval(), tokenizer


def _apply_training_folder(model, tokenizer, folder: Path, weights: WeightLoading):
    """Load the folder's trainable params and merge its adapter (kept as PEFT on a 4-bit base)."""
    from longctx.adapter_fit import check_adapter_fits
    from longctx.lora import ADAPTER_CONFIG_FILE, TRAINABLE_PARAMS_FILE, load_trainable_params, trainable_params_path
    from longctx.special_tokens import add_tokens_for_trainable_params

    if not folder.is_dir():
        raise FileNotFoundError(f"--peft_model {folder}: no such folder")
    has_adapter = (folder / ADAPTER_CONFIG_FILE).is_file()
    has_trainable = trainable_params_path(folder) is not None  # ours, or LongLoRA's trainable_params.bin
    if not (has_adapter or has_trainable):
        raise FileNotFoundError(f"--peft_model {folder} holds neither adapter_config.json nor {TRAINABLE_PARAMS_FILE}")
    if has_trainable:
        add_tokens_for_trainable_params(model, tokenizer, folder)
        load_trainable_params(model, folder)
    if has_adapter:
        from peft import PeftModel

        check_adapter_fits(model, folder)
        model = PeftModel.from_pretrained(model, str(folder))
        if not weights.load_in_4bit:  # merging into 4-bit weights would round the adapter away
            model = model.merge_and_unload()
    return model
