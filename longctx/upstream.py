"""Upstream commands pasted as they are: flags transformers renamed since LongLoRA, and its README's typo.

LongLoRA's README commands were written for transformers 4.34. Flags that are only another name for
one of ours (`--cache_dir`, `--model_name_or_path` of the streaming script, Gradient's
`--peft_model_paths`) are aliases on the argument fields (`metadata={"aliases": [...]}`, which
HfArgumentParser passes to argparse). What cannot be an alias is translated here, once, before
HfArgumentParser sees the command line (`longctx.cli.parse_dataclasses`):

- `--evaluation_strategy`: transformers renamed it `--eval_strategy` (4.46) and dropped the old name;
- `----enable_streaming`: LongLoRA's README writes four dashes (its own argparse refuses them too).

Unknown flags are still refused, with one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

RENAMED_FLAGS = {"--evaluation_strategy": "--eval_strategy"}  # old name -> transformers 5's

LONGLORA_MODEL_TYPES = {"llama": None, "gpt-neox": "gpt_neox"}  # --model_type -> config.model_type it demands


def known_flags(dataclass_types: Iterable[type]) -> set[str]:
    """Every option string HfArgumentParser makes for these dataclasses (names, dashed names, aliases)."""
    flags = set()
    for dataclass_type in dataclass_types:
        for field in dataclasses.fields(dataclass_type):
            if not field.init:
                continue
            flags |= {f"--{field.name}", f"--{field.name.replace('_', '-')}", f"--no_{field.name}"}
            aliases = field.metadata.get("aliases", [])
            flags |= {aliases} if isinstance(aliases, str) else set(aliases)
    return flags


def translate_flags(argv: Sequence[str], known: set[str]) -> list[str]:
    """The command line with upstream spellings replaced by the flags `known` holds; the rest untouched."""
    translated = []
    for argument in argv:
        name, equals, value = argument.partition("=")
        if name.startswith("---") and f"--{name.lstrip('-')}" in known:
            name = f"--{name.lstrip('-')}"
        if name in RENAMED_FLAGS and name not in known and RENAMED_FLAGS[name] in known:
            name = RENAMED_FLAGS[name]
        translated.append(f"{name}{equals}{value}" if equals else name)
    return translated


def check_model_type(model_type: str | None, config) -> None:
    """LongLoRA's --model_type (llama or gpt-neox) must name the architecture of the model loaded.

    LongLoRA used it to pick the attention patch and the LoRA targets; here both follow the model's
    config, so the flag is a check: `gpt-neox` demands a GPT-NeoX model, `llama` any other (Llama,
    Mistral, Qwen2 and SmolLM2 share the q/k/v/o projection names).
    """
    if model_type is None:
        return
    if model_type not in LONGLORA_MODEL_TYPES:
        raise ValueError(f"--model_type {model_type}: choose llama or gpt-neox (LongLoRA's two)")
    actual = getattr(config, "model_type", None)
    is_neox = actual == "gpt_neox"
    if is_neox != (model_type == "gpt-neox"):
        raise ValueError(f"--model_type {model_type}, but the model is {actual!r}: pass --model_type "
                         f"{'gpt-neox' if is_neox else 'llama'} or leave it out")
