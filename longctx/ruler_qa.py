"""RULER's question answering (qa_1, qa_2) on passages of the bundled books, with made-up facts.

RULER asks SQuAD questions (qa_1, one supporting paragraph) and HotpotQA questions (qa_2, two) among
distractor paragraphs of the same datasets, downloaded. Here every document is a passage of book
text (whole sentences, at least `PASSAGE_WORDS` words) and the facts to find are planted, as
longctx.qa_data does for SFT, so nothing is downloaded and no answer is in the model's memory:

- qa_1 (single hop): "The red box was hidden in Lisbon." / "The red box was found by Orla Fennimore."
  in one passage; two more passages carry the same kind of fact about other things.
- qa_2 (two hops, HotpotQA's bridge questions): "The red box was given to Orla Fennimore." and
  "Orla Fennimore lives in Lisbon." in two passages; "In which city does the person who was given the
  red box live?" A second chain (another thing, person and city) sits in two more passages.

The template, the answer prefix and the "Document i:" layout are RULER's. Passages naming any person
or city of the pools are left out, so an answer occurs only in its fact. The documents that fill the
length are cut at a word, the last one possibly mid-sentence, so prompts meet their length within 1%.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from longctx.qa_data import ADJECTIVES, OBJECTS, PLACES
from longctx.retrieval import split_sentences
from longctx.ruler_synthetic import Draft, depths_in

if TYPE_CHECKING:
    from longctx.ruler_tasks import RulerMaterial

QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other "
    "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
    "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}"
)
QA_ANSWER_PREFIX = "Answer:"
QA_DOCUMENT = "Document {index}:\n{text}"
QA_NEW_TOKENS = 32
PASSAGE_WORDS = 60  # about a HotpotQA paragraph
PEOPLE = (
    "Orla Fennimore", "Tobias Quenby", "Ines Varga", "Milo Ashgrove", "Petra Lindqvist", "Rafe Dunmore",
    "Selma Okafor", "Hugo Brannigan", "Livia Castell", "Anton Perrault", "Greta Holloway", "Nils Abernethy",
)
SINGLE_HOP = (  # (fact, question, pool of answers)
    ("The {thing} was hidden in {answer}.", "Where was the {thing} hidden?", PLACES),
    ("The {thing} was found by {answer}.", "Who found the {thing}?", PEOPLE),
)
BRIDGE = ("The {thing} was given to {person}.", "{person} lives in {place}.")
BRIDGE_QUESTION = "In which city does the person who was given the {thing} live?"


def make_passages(text: str) -> list[str]:
    """Runs of whole sentences of at least `PASSAGE_WORDS` words, less any naming a person or city of the pools."""
    passages, current, words = [], [], 0
    for sentence in split_sentences(text):
        current.append(sentence.strip())
        words += len(sentence.split())
        if words >= PASSAGE_WORDS:
            passages.append(" ".join(current))
            current, words = [], 0
    return [passage for passage in passages if not any(name in passage for name in (*PEOPLE, *PLACES))]


def _plant(rng: random.Random, passage: str, fact: str) -> str:
    """`fact` at a random sentence boundary of `passage`."""
    sentences = [sentence.strip() for sentence in split_sentences(passage)]
    sentences.insert(rng.randint(0, len(sentences)), fact)
    return " ".join(sentences)


def _facts(rng: random.Random, hops: int) -> tuple[list[list[str]], str, str]:
    """Fact groups (the asked one first, then a decoy of the same shape), the question and its answer."""
    pairs = [(adjective, thing) for adjective in ADJECTIVES for thing in OBJECTS]
    things = [f"{adjective} {thing}" for adjective, thing in rng.sample(pairs, 3)]
    if hops == 1:
        fact, question, pool = rng.choice(SINGLE_HOP)
        answers = rng.sample(pool, 3)
        groups = [[fact.format(thing=thing, answer=answer)] for thing, answer in zip(things, answers)]
        return groups, question.format(thing=things[0]), answers[0]
    if hops == 2:
        people, places = rng.sample(PEOPLE, 2), rng.sample(PLACES, 2)
        groups = [
            [BRIDGE[0].format(thing=thing, person=person), BRIDGE[1].format(person=person, place=place)]
            for thing, person, place in zip(things, people, places)
        ]
        return groups, BRIDGE_QUESTION.format(thing=things[0]), places[0]
    raise ValueError(f"qa has one or two hops (got {hops})")


def qa_draft(rng: random.Random, material: RulerMaterial, n: int, length: int, *, hops: int) -> Draft:
    """Documents: the passages carrying facts, among distractor passages of ~`n` words in all."""
    passages = material.passages
    groups, question, answer = _facts(rng, hops)
    facts = [fact for group in groups for fact in group]
    if len(passages) <= len(facts):
        raise ValueError(f"the haystack holds {len(passages)} usable passages; qa needs more than {len(facts)}")
    carriers = rng.sample(range(len(passages)), len(facts))
    fact_documents = [_plant(rng, passages[index], fact) for index, fact in zip(carriers, facts)]
    rest = [index for index in range(len(passages)) if index not in carriers]
    rng.shuffle(rest)

    documents, remaining = [], n
    while remaining > 0:
        words = passages[rest[len(documents) % len(rest)]].split()[:remaining]
        documents.append(" ".join(words))
        remaining -= len(words)
    rng.shuffle(fact_documents)
    for offset, position in enumerate(sorted(rng.randint(0, len(documents)) for _ in fact_documents)):
        documents.insert(position + offset, fact_documents[offset])
    context = "\n\n".join(QA_DOCUMENT.format(index=index, text=text) for index, text in enumerate(documents, start=1))
    evidence = groups[0]
    user_text = QA_TEMPLATE.format(context=context, query=question)
    return Draft(user_text, QA_ANSWER_PREFIX, [answer], evidence, depths_in(context, evidence))
