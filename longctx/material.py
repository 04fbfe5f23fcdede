"""A long material (book, paper) and a question as one prompt that fits the model's window.

LongLoRA's demo.py puts the whole material in the user turn between an instruction ("Below is a
paper. Memorize the material and answer my question after the paper.") and its end ("Now the
material ends."), then the question, the layout of its LongAlpaca training data; the turn is then
rendered in the model's prompt format (longctx.prompts). A material
too long for the window is refused with its token count, or cut in the middle (its beginning and end
kept, as LongBench truncates) when asked: the start of a document says what it is and its end is
nearest the question. `material_type="none"` is LongLoRA's inference.py layout: the material as it
is, the question on the next line (the default under --prompt_template llama2).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from longctx.prompts import encode_prompt, render_question
from longctx.text_files import read_text_file

TEXT_SUFFIXES = (".txt", ".md")
TRUNCATIONS = ("none", "middle")
MATERIAL_TYPES = ("material", "book", "paper", "none")
CUT_MARKER = "\n[...]\n"


def read_material(path: str | Path, ocr: bool = False) -> str:
    """The text of a .txt/.md or .pdf file; one clear error for a missing, unreadable or empty one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"material {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        from longctx.pdf import pdf_to_text

        text = pdf_to_text(path, ocr=ocr)
    elif suffix in TEXT_SUFFIXES:
        text = read_text_file(path, label="material")
    else:
        raise ValueError(f"material {path}: only .txt, .md and .pdf files are read (got {suffix or 'no suffix'})")
    if not text.strip():
        raise ValueError(f"material {path} is empty")
    return text


def material_turn(material: str, question: str, material_type: str = "material", title: str | None = None) -> str:
    """The user turn in LongLoRA's demo layout (as in its LongAlpaca data): an instruction, the material, its end, the question."""
    if material_type not in MATERIAL_TYPES:
        raise ValueError(f"--material_type {material_type!r}: choose one of {', '.join(MATERIAL_TYPES)}")
    if material_type == "none":  # LongLoRA's inference.py: material + "\n%s" % question, nothing trimmed
        return f"{material}\n{question}"
    if material_type == "paper":
        opening = "Below is a paper. Memorize the material and answer my question after the paper."
    elif material_type == "book":
        named = f", {title}" if title else ""
        opening = (
            f"Below is some paragraphs in the book{named}. Memorize the content and answer my question after the book."
        )
    else:
        opening = "Below is a material. Memorize the material and answer my question after the material."
    return f"{opening}\n{material.strip()}\nNow the material ends. {question.strip()}"


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of rendered prompt text (the template already holds any BOS)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class FittedPrompt:
    user_turn: str  # material (possibly cut) and question, before the prompt format
    input_ids: list[int]
    material_tokens: int  # the material as given
    kept_material_tokens: int  # after a middle cut (same as material_tokens when nothing was cut)


def fit_material(
    tokenizer,
    material: str,
    question: str,
    window: int,
    max_gen_len: int,
    template: str = "chat",
    truncate: str = "none",
    material_type: str = "material",
    title: str | None = None,
) -> FittedPrompt:
    """Prompt ids for `material` + `question` leaving `max_gen_len` tokens of the `window` for the answer.

    Too long: ValueError with the counts, or with truncate="middle" the material loses its middle
    (a "[...]" line marks the cut) and a warning says how much.
    """
    if truncate not in TRUNCATIONS:
        raise ValueError(f"--truncate {truncate!r}: choose one of {', '.join(TRUNCATIONS)}")
    if not material.strip():
        raise ValueError("the material is empty")
    if not question.strip():
        raise ValueError("the question is empty: pass --question")
    limit = window - max_gen_len
    material_ids = encode(tokenizer, material.strip())
    user_turn = material_turn(material, question, material_type, title)
    prompt_ids = encode_prompt(tokenizer, render_question(tokenizer, user_turn, template), template)
    if len(prompt_ids) <= limit:
        return FittedPrompt(user_turn, prompt_ids, len(material_ids), len(material_ids))
    if truncate != "middle":
        raise ValueError(
            f"the material is {len(material_ids):,} tokens (prompt {len(prompt_ids):,}): over the {window:,}-token "
            f"window (--context_size) less --max_gen_len {max_gen_len}; pass --truncate middle to cut it in the middle"
        )
    overhead = len(prompt_ids) - len(material_ids) + len(encode(tokenizer, CUT_MARKER))
    budget = limit - overhead
    while budget > 0:
        head = budget // 2
        kept = (
            tokenizer.decode(material_ids[:head])
            + CUT_MARKER
            + tokenizer.decode(material_ids[len(material_ids) - (budget - head) :])
        )
        user_turn = material_turn(kept, question, material_type, title)
        prompt_ids = encode_prompt(tokenizer, render_question(tokenizer, user_turn, template), template)
        if len(prompt_ids) <= limit:
            print(
                f"warning: the material is {len(material_ids):,} tokens, over the {window:,}-token window less "
                f"--max_gen_len {max_gen_len}; cut in the middle to {budget:,} tokens",
                file=sys.stderr,
            )
            return FittedPrompt(user_turn, prompt_ids, len(material_ids), budget)
        budget -= len(prompt_ids) - limit  # re-tokenizing at the cut can merge or split a few tokens
    raise ValueError(
        f"the question and prompt format alone ({overhead:,} tokens) leave no room for the material in the "
        f"{window:,}-token window less --max_gen_len {max_gen_len}"
    )


@dataclass(frozen=True)
class PromptLayout:
    """How a reading script lays out its first turn (longctx.args.ReadingArguments.prompt_layout builds it).

    `streaming` is (sink tokens, recent tokens) of a StreamingLLM cache, or None for a fitted prompt.
    """

    template: str = "chat"
    material_type: str = "material"
    title: str | None = None
    truncate: str = "none"
    max_gen_len: int = 512
    streaming: tuple[int, int] | None = None


def first_turn(tokenizer, material: str, question: str, window: int, layout: PromptLayout) -> tuple[str, str]:
    """The opening user turn for a material and a question, and a line on its size.

    With a streaming cache the whole material goes in (the cache keeps only sinks + recent tokens, so
    memory stays bounded and the middle of an over-long material is forgotten); otherwise it must fit
    the window (fit_material).
    """
    if layout.streaming is not None:
        start_size, recent_size = layout.streaming
        size = f"material: {len(encode(tokenizer, material)):,} tokens; streaming cache of {start_size} + {recent_size} tokens"
        return material_turn(material, question, layout.material_type, layout.title), size
    fitted = fit_material(
        tokenizer,
        material,
        question,
        window,
        layout.max_gen_len,
        layout.template,
        layout.truncate,
        layout.material_type,
        layout.title,
    )
    size = (
        f"material: {fitted.material_tokens:,} tokens; prompt {len(fitted.input_ids):,} of the {window:,}-token window"
    )
    return fitted.user_turn, size
