"""Retrieval tests of a long context: passkey retrieval and needle in a haystack.

- Passkey (LongLoRA's passkey_retrivial.py, after Landmark Attention, Mohtashami & Jaggi 2023): a
  random 1-50000 key hidden at a random (or given) depth of repeated filler sentences; the model is
  asked for it, decodes greedily, and is right when the first number it writes is the key.
- Needle in a haystack (Kamradt 2023, as LongAlign and ChunkLlama run it): a needle sentence at
  fixed depths of real text; right when the reply contains the needle's answer (case and
  punctuation aside) - exact match, where those projects asked GPT-4 for a grade.

Prompts are measured in tokens of the model's own tokenizer: the filler or text is cut at sentence
boundaries to the longest prompt within the target length (LongLoRA sized them in characters, ~3.75
per token). Instruction-tuned tokenizers get their chat template, with the start of the answer
written for the model ("The pass key is"); others get LongLoRA's plain prompt.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from longctx.io import write_json_atomic
from longctx.text_files import read_text_file, text_files

PASSKEY_TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
PASSKEY_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
PASSKEY_QUESTION = "What is the pass key?"
# Chat models read LongLoRA's bare question as "what is a pass key" (SmolLM2-Instruct answered "a special
# type of pass ..." in 3 of 8 tests at 2k; with this line, 8 of 8), so their question says what to answer.
PASSKEY_CHAT_INSTRUCTION = "Answer with the number only."
PASSKEY_ANSWER_PREFIX = "The pass key is"
NEEDLE_TASK = "This is a very long story book:"
ANSWER_SLACK_TOKENS = 8  # generated beyond the reference text, for a leading space, punctuation, a restated phrase


@dataclass(frozen=True)
class RetrievalCase:
    """One test: the prompt's token ids, the expected answer, where the key sits, how much to generate."""

    input_ids: list[int]
    answer: str
    depth: float
    max_new_tokens: int


# ---------------------------------------------------------------------------------------------
# Building prompts


def split_sentences(text: str) -> list[str]:
    """Sentences with their trailing whitespace (joined, they give the text back up to a final space); no blank ones."""
    # a sentence ends at . ! or ?, possibly followed by one closing quote or bracket, then whitespace
    parts = re.split(r"((?:(?<=[.!?])|(?<=[.!?][\"'’”)\]]))\s+)", text)
    pieces = []
    for index in range(0, len(parts), 2):
        piece = parts[index] + (parts[index + 1] if index + 1 < len(parts) else "")
        if piece.strip():
            pieces.append(piece if piece[-1].isspace() else piece + " ")
    return pieces


def insert_at_depth(pieces: Sequence[str], insert: str, depth: float) -> list[str]:
    """`pieces` with `insert` placed before piece round(depth x len): depth 0 first, 1 last."""
    if not 0 <= depth <= 1:
        raise ValueError(f"depth must lie in [0, 1] (got {depth})")
    index = round(depth * len(pieces))
    return [*pieces[:index], insert, *pieces[index:]]


def render_prompt(tokenizer, user_text: str, answer_prefix: str = "") -> list[int]:
    """Token ids of a question to the model: its chat template when it has one, else LongLoRA's plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user_text}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text + answer_prefix, add_special_tokens=False)["input_ids"]
    return tokenizer(f"{user_text} {answer_prefix}".rstrip())["input_ids"]


def fit_prompt(target_tokens: int, build: Callable[[int], list[int]]) -> list[int]:
    """The longest `build(n)` (n pieces of filler) within `target_tokens`, found by doubling then bisection."""
    shortest = build(0)
    if len(shortest) > target_tokens:
        raise ValueError(
            f"a {target_tokens}-token prompt cannot hold the question and the key alone ({len(shortest)} tokens); "
            "test longer lengths"
        )
    low, best, high = 0, shortest, 1
    while len(ids := build(high)) <= target_tokens:
        if high > 4 * target_tokens:
            raise RuntimeError("the filler adds no tokens: cannot size the prompt")
        low, best, high = high, ids, high * 2
    while high - low > 1:  # build(low) fits, build(high) does not
        middle = (low + high) // 2
        ids = build(middle)
        if len(ids) <= target_tokens:
            low, best = middle, ids
        else:
            high = middle
    return best


def passkey_case(tokenizer, length: int, depth: float | None, seed: int) -> RetrievalCase:
    """LongLoRA's passkey prompt of at most `length` tokens; key and (unless given) depth drawn from `seed`."""
    rng = random.Random(seed)
    passkey = str(rng.randint(1, 50000))
    depth = rng.random() if depth is None else depth
    key_line = f"\n{PASSKEY_ANSWER_PREFIX} {passkey}. Remember it. {passkey} is the pass key.\n"
    question = PASSKEY_QUESTION
    if getattr(tokenizer, "chat_template", None):
        question += " " + PASSKEY_CHAT_INSTRUCTION

    def build(num_pieces: int) -> list[int]:
        filler = [PASSKEY_FILLER[i % len(PASSKEY_FILLER)] + " " for i in range(num_pieces)]
        context = "".join(insert_at_depth(filler, key_line, depth)).strip()
        return render_prompt(tokenizer, f"{PASSKEY_TASK}\n{context}\n{question}", PASSKEY_ANSWER_PREFIX)

    budget = len(tokenizer(f" {passkey}.", add_special_tokens=False)["input_ids"]) + ANSWER_SLACK_TOKENS
    return RetrievalCase(fit_prompt(length, build), passkey, depth, budget)


def read_haystack(path: str, flag: str = "--haystack") -> str:
    """The text of .txt files or folders of them (comma-separated for several), joined by blank lines;
    `flag` names the path in errors."""
    files: list[Path] = []
    for piece in (part.strip() for part in str(path).split(",")):
        if not piece:
            continue
        source = Path(piece)
        if not source.exists():
            raise FileNotFoundError(f"{flag} {source}: no such file or folder")
        found = text_files(source) if source.is_dir() else [source]
        if not found:
            raise ValueError(f"{flag} {source} holds no .txt files")
        files.extend(found)
    text = "\n\n".join(read_text_file(file) for file in files)
    if not text.strip():
        raise ValueError(f"{flag} {path} holds no text")
    return text


def needle_case(
    tokenizer,
    length: int,
    depth: float,
    haystack: Sequence[str],
    offset: int,
    needle: str,
    question: str,
    answer: str,
    answer_prefix: str = "",
) -> RetrievalCase:
    """`needle` at `depth` of the haystack sentences from `offset` on (cycling), in a prompt of <= `length` tokens."""
    if not haystack:
        raise ValueError("the haystack holds no sentences")

    def build(num_pieces: int) -> list[int]:
        text = [haystack[(offset + i) % len(haystack)] for i in range(num_pieces)]
        context = "".join(insert_at_depth(text, needle.strip() + " ", depth)).strip()
        user_text = f"{NEEDLE_TASK} <book> {context} </book>\nBased on the content of the book, question: {question}"
        return render_prompt(tokenizer, user_text, answer_prefix)

    budget = len(tokenizer(needle, add_special_tokens=False)["input_ids"]) + ANSWER_SLACK_TOKENS
    return RetrievalCase(fit_prompt(length, build), answer, depth, budget)


# ---------------------------------------------------------------------------------------------
# Answering and scoring


@torch.no_grad()
def generate_text(model, tokenizer, input_ids: Sequence[int], max_new_tokens: int) -> str:
    """Greedy decoding of at most `max_new_tokens` after the prompt; the new text only."""
    device = next(model.parameters()).device
    prompt = torch.tensor([list(input_ids)], dtype=torch.long, device=device)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    output = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
    return tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)


def passkey_correct(generated: str, passkey: str) -> bool:
    """Exact match: the first number in the reply is the key (12345 in "12345." but not "123456" nor "1234")."""
    match = re.search(r"\d+", generated)
    return match is not None and match.group() == str(passkey)


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def answer_correct(generated: str, answer: str) -> bool:
    """Exact match of the answer's words, in order, as whole words of the reply (case and punctuation aside)."""
    expected = _normalize(answer)
    return bool(expected) and f" {expected} " in f" {_normalize(generated)} "


def run_retrieval(
    model,
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float | None],
    num_tests: int,
    make_case: Callable[[int, float | None, int], RetrievalCase],
    is_correct: Callable[[str, str], bool],
    generate: Callable = generate_text,
    progress: bool = True,
) -> list[dict]:
    """Every (length, depth, test) case answered and scored; one record each (None depth: the case draws it)."""
    records = []
    with tqdm(total=len(lengths) * len(depths) * num_tests, desc="retrieval", unit="test", disable=not progress) as bar:
        for length in lengths:
            for depth in depths:
                for test in range(num_tests):
                    case = make_case(length, depth, test)
                    began = time.perf_counter()
                    reply = generate(model, tokenizer, case.input_ids, case.max_new_tokens)
                    correct = bool(is_correct(reply, case.answer))
                    records.append({
                        "length": length,
                        "tokens": len(case.input_ids),
                        "depth": case.depth,
                        "test": test,
                        "answer": case.answer,
                        "reply": reply,
                        "correct": correct,
                        "seconds": time.perf_counter() - began,
                    })
                    bar.update()
                    bar.set_postfix(length=length, correct=correct)
    return records


def accuracy_by_length(records: Sequence[dict]) -> list[dict]:
    """Per length: mean prompt tokens, tests, correct answers, accuracy."""
    table = []
    for length in sorted({record["length"] for record in records}):
        rows = [record for record in records if record["length"] == length]
        correct = sum(record["correct"] for record in rows)
        table.append({
            "length": length,
            "mean_tokens": sum(record["tokens"] for record in rows) / len(rows),
            "tests": len(rows),
            "correct": correct,
            "accuracy": correct / len(rows),
        })
    return table


def accuracy_grid(records: Sequence[dict], depths: Sequence[float], lengths: Sequence[int]) -> list[list[float | None]]:
    """Accuracy per depth (rows) and length (columns); None for a cell without tests."""
    grid = []
    for depth in depths:
        row = []
        for length in lengths:
            cell = [record["correct"] for record in records if record["length"] == length and record["depth"] == depth]
            row.append(sum(cell) / len(cell) if cell else None)
        grid.append(row)
    return grid


def report_retrieval(
    records: Sequence[dict],
    config: dict,
    depths: Sequence[float] | None,
    output_json: str | None,
    plot: str | None,
    title: str,
) -> dict:
    """Print the accuracy table (and depth x length grid), write JSON and PNG; returns the summary."""
    from longctx.plots import format_table, plot_accuracy, plot_heatmap, plot_path

    by_length = accuracy_by_length(records)
    lengths = [row["length"] for row in by_length]
    print(format_table(
        ["length", "mean tokens", "tests", "accuracy"],
        [[row["length"], f"{row['mean_tokens']:.0f}", row["tests"], f"{row['accuracy']:.2f}"] for row in by_length],
    ))
    grid = accuracy_grid(records, depths, lengths) if depths else None
    if grid:
        print(format_table(
            ["depth", *lengths],
            [[f"{100 * depth:g}%", *("-" if value is None else f"{value:.2f}" for value in row)] for depth, row in zip(depths, grid)],
        ))
    summary = {"accuracy_by_length": by_length, "depths": list(depths) if depths else None, "lengths": lengths, "grid": grid}
    plot = plot_path(output_json, plot)
    if output_json:
        write_json_atomic(output_json, {"config": config, **summary, "plot": plot, "records": list(records)})
        print(f"results written to {output_json}")
    if plot:
        if grid:
            plot_heatmap(grid, depths, lengths, plot, title=title)
        else:
            plot_accuracy(lengths, [row["accuracy"] for row in by_length], plot, title=title)
        print(f"plot written to {plot}")
    return summary
