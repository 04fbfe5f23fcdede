"""Long-document QA from the bundled books: records with a fact hidden in a book section, and accuracy on them.

Each record is a section of a book (long-tailed lengths: many short, a few near the longest) with one
made-up fact hidden at a random depth - a pass key, or the place where an object was hidden - and the
question after the section, so the answer must come from reading the whole material. Records hold
`instruction` and `output` (LongAlpaca) plus `answer`, the short key a reply must hold as whole words
(case and punctuation aside, `longctx.retrieval.answer_correct`), and `depth`/`approx_tokens`.
Questions are asked exactly as in training (`longctx.sft_data.prompt_token_ids`), so the accuracy
reads the model in the format it was tuned in. Commands: `python -m longctx.build_qa_data`,
`python -m longctx.qa_accuracy`; supervised-fine-tune.py checks accuracy before and after training.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from longctx.retrieval import answer_correct, generate_text, insert_at_depth
from longctx.sft_data import Conversation, prompt_token_ids, read_records, to_conversation

CHARS_PER_TOKEN = 4  # English book text in Llama-style tokenizers; lengths are approximate on purpose
INSTRUCTION = "Below is a part of a book with one fact hidden in it. Read it and answer the question after it."
ADJECTIVES = ("red", "silver", "wooden", "small", "old", "green", "heavy", "golden", "broken", "blue")
OBJECTS = ("box", "key", "lamp", "letter", "clock", "ring", "map", "coin", "book", "bottle")
PLACES = ("Lisbon", "Oslo", "Cairo", "Lima", "Dublin", "Vienna", "Nairobi", "Kyoto", "Quebec", "Madras")


def make_fact(rng: random.Random, material: str = "") -> tuple[str, str, str, str]:
    """(fact sentence, question, full answer, short answer key); the key never occurs in `material`.

    A place the book itself names (book 29973 names Quebec 28 times) could be answered without the fact.
    """
    thing = f"{rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)}"
    places = [place for place in PLACES if place not in material]
    if rng.random() < 0.5 or not places:
        number = str(rng.randint(1000, 99999))
        while number in material:
            number = str(rng.randint(1000, 99999))
        return (
            f"The pass key of the {thing} is {number}. Remember it.",
            f"What is the pass key of the {thing}?",
            f"The pass key of the {thing} is {number}.",
            number,
        )
    place = rng.choice(places)
    return (
        f"The {thing} was hidden in {place}. Remember it.",
        f"Where was the {thing} hidden?",
        f"The {thing} was hidden in {place}.",
        place,
    )


def long_tailed_length(rng: random.Random, shortest: int, longest: int) -> int:
    """Log-uniform in the square of a uniform draw: most sections short, a tail up to `longest`."""
    return round(shortest * (longest / shortest) ** (rng.random() ** 2))


def build_records(sentences: list[str], num_samples: int, min_tokens: int, max_tokens: int, seed: int) -> list[dict]:
    if not sentences:
        raise ValueError("the books hold no sentences")
    rng = random.Random(seed)
    records = []
    for _ in range(num_samples):
        target_chars = long_tailed_length(rng, min_tokens, max_tokens) * CHARS_PER_TOKEN
        start = rng.randrange(len(sentences))
        section, chars = [], 0
        while chars < target_chars and len(section) < len(sentences):
            sentence = sentences[(start + len(section)) % len(sentences)]
            section.append(sentence)
            chars += len(sentence)
        fact, question, answer, key = make_fact(rng, "".join(section))
        depth = rng.random()
        material = "".join(insert_at_depth(section, fact + " ", depth)).strip()
        records.append({
            "instruction": f"{INSTRUCTION}\n\n{material}\n\nQuestion: {question}",
            "output": answer,
            "answer": key,
            "depth": round(depth, 3),
            "approx_tokens": chars // CHARS_PER_TOKEN,
        })
    return records


def load_questions(path: str | Path, max_questions: int | None = None, template: str = "chat") -> list[tuple[Conversation, str]]:
    """(conversation, answer key) pairs, as `template` renders records; a record without an `answer` key
    or a usable conversation is an error."""
    questions = []
    for number, record in read_records(path, flag="--eval_data_path")[:max_questions]:
        conversation = to_conversation(record, template)
        if isinstance(conversation, str) or not str(record.get("answer", "")).strip():
            reason = conversation if isinstance(conversation, str) else "no 'answer' key"
            raise ValueError(f"{path}: record {number} cannot be asked ({reason})")
        questions.append((conversation, str(record["answer"])))
    if not questions:
        raise ValueError(f"{path}: no held-out question")
    return questions


@torch.no_grad()
def qa_accuracy(model, tokenizer, questions, template: str = "chat", max_new_tokens: int = 32, progress: bool = True) -> dict:
    """Greedy answers to every question; accuracy and each reply."""
    was_training = model.training
    model.eval()
    answers = []
    try:
        for conversation, key in tqdm(questions, desc="held-out questions", unit="question", disable=not progress):
            input_ids = prompt_token_ids(tokenizer, conversation, template)
            began = time.perf_counter()
            reply = generate_text(model, tokenizer, input_ids, max_new_tokens)
            answers.append({
                "tokens": len(input_ids),
                "answer": key,
                "reply": reply,
                "correct": answer_correct(reply, key),
                "seconds": time.perf_counter() - began,
            })
    finally:
        model.train(was_training)
    correct = sum(answer["correct"] for answer in answers)
    return {"accuracy": correct / len(answers), "correct": correct, "questions": len(answers), "answers": answers}
