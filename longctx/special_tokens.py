"""The special tokens LongLoRA adds before training, so its released LoRA+ weights and ours load into each other.

LongLoRA's fine-tune.py and supervised-fine-tune.py add the special tokens a tokenizer lacks, in the
order `[PAD]`, `</s>`, `<s>`, `<unk>` (Llama-2 lacks only the pad token), and resize the embeddings
to the tokenizer with the new rows set to the mean of the old ones (its
`smart_tokenizer_and_embedding_resize`). Its trainable_params.bin for Llama-2 therefore holds 32001
rows of `embed_tokens`, and its reading scripts resize every model to 32001 before loading one.

longctx does the same on both sides:

- training (`add_pad_token`, from longctx.trainer.load_training_model): a tokenizer without a pad
  token of its own gets LongLoRA's `[PAD]`, and the embeddings grow to hold it (never shrink), so a
  Llama-2 adapter trained here has LongLoRA's 32001 rows and loads in its scripts, and theirs here.
  A tokenizer with its own pad token (SmolLM2, Qwen2, Mistral-instruct ...) changes nothing;
- reading (`add_tokens_for_trainable_params`, before any trainable params load: reading scripts,
  merge, get_trainable_weights' check): when the file's embedding has another row count than the
  model, LongLoRA's missing tokens are added in its order until the tokenizer has that many, and the
  embeddings are resized to match, with one line saying so.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from longctx.wrappers import unwrap_model

LONGLORA_SPECIAL_TOKENS = {"pad_token": "[PAD]", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}


def lacks_own_pad_token(tokenizer) -> bool:
    """No pad token, or only the EOS/UNK one longctx.modeling.load_tokenizer lends it (the files declare none)."""
    if tokenizer.pad_token is None:
        return True
    borrowed = tokenizer.pad_token_id in (tokenizer.eos_token_id, tokenizer.unk_token_id)
    return borrowed and tokenizer.init_kwargs.get("pad_token") is None


def missing_special_tokens(tokenizer) -> dict[str, str]:
    """LongLoRA's special tokens this tokenizer lacks, in the order LongLoRA adds them."""
    missing = {}
    for name, token in LONGLORA_SPECIAL_TOKENS.items():
        lacking = lacks_own_pad_token(tokenizer) if name == "pad_token" else getattr(tokenizer, name) is None
        if lacking:
            missing[name] = token
    return missing


def _gathered(parameters: list[torch.nn.Parameter]):
    """Under DeepSpeed ZeRO-3 each process holds a slice of a weight: gather it to write whole rows."""
    if not any(hasattr(parameter, "ds_id") for parameter in parameters):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)


def resize_embeddings(model, rows: int) -> None:
    """Resize input (and untied output) embeddings to `rows`; new rows are the mean of the old ones (LongLoRA's)."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(rows, mean_resizing=False)
    if rows <= old_rows:
        return
    modules = (model.get_input_embeddings(), model.get_output_embeddings())
    weights = list({id(module.weight): module.weight for module in modules if module is not None}.values())  # tied: once
    with _gathered(weights), torch.no_grad():
        for weight in weights:
            if weight.device.type != "meta":
                weight[old_rows:] = weight[:old_rows].mean(dim=0, keepdim=True)


def _set_pad_token_id(model, tokenizer) -> None:
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def add_pad_token(model, tokenizer) -> int:
    """Training: LongLoRA's `[PAD]` for a tokenizer without its own pad token; returns the tokens added."""
    if not lacks_own_pad_token(tokenizer):
        return 0
    rows = model.get_input_embeddings().weight.shape[0]
    added = tokenizer.add_special_tokens({"pad_token": LONGLORA_SPECIAL_TOKENS["pad_token"]})
    _set_pad_token_id(model, tokenizer)
    if len(tokenizer) > rows:
        resize_embeddings(model, len(tokenizer))
    new_rows = model.get_input_embeddings().weight.shape[0]
    print(f"added LongLoRA's [PAD] token (the tokenizer has no pad token): embeddings {rows} -> {new_rows} rows", flush=True)
    return added


def _input_embedding_name(model) -> str:
    from longctx.lora import base_parameter_name

    base = unwrap_model(model)
    weight = base.get_input_embeddings().weight
    return next(base_parameter_name(name) for name, parameter in base.named_parameters() if parameter is weight)


def _rows_in_file(path: Path, name: str) -> int | None:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as file:
                return file.get_slice(name).get_shape()[0] if name in file.keys() else None
        except Exception:  # noqa: BLE001 - unreadable files are reported by the loader with one line
            return None
    from longctx.lora import read_weights_file

    tensor = read_weights_file(path).get(name)
    return None if tensor is None else tensor.shape[0]


def add_tokens_for_trainable_params(model, tokenizer, trainable: str | Path | dict[str, torch.Tensor]) -> int:
    """Before loading trainable params (a file, a folder holding one, or a state dict): match their embedding rows.

    Nothing happens when the rows already match or the params hold no input embedding. Otherwise
    LongLoRA's missing special tokens are added (in its order) until the tokenizer has as many tokens
    as the rows, then the embeddings are resized; ValueError when no such tokens explain the rows.
    Returns the number of tokens added.
    """
    from longctx.lora import trainable_params_path

    name = _input_embedding_name(model)
    if isinstance(trainable, dict):
        source, rows = "trainable params", (trainable[name].shape[0] if name in trainable else None)
    else:
        path = Path(trainable)
        path = (trainable_params_path(path) or path) if path.is_dir() else path
        source, rows = path, _rows_in_file(path, name) if path.is_file() else None
    model_rows = model.get_input_embeddings().weight.shape[0]
    if rows is None or rows <= model_rows:  # fewer rows than the model: no added token explains them, the
        return 0  # loader's shape check names the mismatch
    before = len(tokenizer)
    added = {}
    for token_name, token in missing_special_tokens(tokenizer).items():
        if len(tokenizer) >= rows:
            break
        if tokenizer.add_special_tokens({token_name: token}):
            added[token_name] = token
    if len(tokenizer) != rows:
        raise ValueError(
            f"{source}: {name} has {rows} rows, the model {model_rows} and its tokenizer {len(tokenizer)} tokens "
            f"(with LongLoRA's missing special tokens {', '.join(added.values()) or 'none'} added): "
            "trained on another vocabulary"
        )
    if "pad_token" in added:
        _set_pad_token_id(model, tokenizer)
    resize_embeddings(model, rows)
    tokens = f"added {', '.join(added.values())} as LongLoRA did ({before} -> {rows} tokens); " if added else ""
    print(f"{source}: {tokens}embeddings resized {model_rows} -> {rows} rows to match", flush=True)
    return len(added)
