"""Long-document QA records from the bundled books, in LongAlpaca format, for SFT on this machine.

Each record is a section of a book (long-tailed lengths: many short, a few near --max_tokens) with
one made-up fact hidden at a random depth - a pass key, or the place where an object was hidden -
and the question after the section, so the answer must come from reading the whole material:

    python -m longctx.build_qa_data --output outputs/sft-data/train.json --num_samples 64
    python -m longctx.build_qa_data --output outputs/sft-data/heldout.json --books data/pg19_eval \\
        --num_samples 16 --max_tokens 4096 --seed 1

Build the held-out split from books the training split does not use (data/pg19_eval). Records hold `instruction` and `output` (LongAlpaca) plus
`answer`, the short key the accuracy check looks for in a reply, and `depth`/`approx_tokens`.
"""

from __future__ import annotations

import random

from longctx.args import QADataArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.data import default_pretraining_data
from longctx.io import write_json_atomic
from longctx.outputs import check_output_file
from longctx.retrieval import insert_at_depth, read_haystack, split_sentences

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


def main():
    (args,) = parse_dataclasses((QADataArguments,), __doc__)
    books = args.books or default_pretraining_data()
    check_output_file("--output", args.output, {"--books": books}, args.overwrite)
    sentences = split_sentences(" ".join(read_haystack(books, flag="--books").split()))
    records = build_records(sentences, args.num_samples, args.min_tokens, args.max_tokens, args.seed)
    write_json_atomic(args.output, records)
    lengths = sorted(record["approx_tokens"] for record in records)
    print(
        f"wrote {len(records)} records to {args.output}: ~{lengths[0]} to ~{lengths[-1]} tokens "
        f"(median ~{lengths[len(lengths) // 2]})"
    )


if __name__ == "__main__":
    run_cli(main)
