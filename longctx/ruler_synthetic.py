"""RULER's synthetic tasks as text: needles in haystacks, variable tracking, common and frequent words.

Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language Models?"
(NVIDIA/RULER, scripts/data/synthetic/). Each generator returns a `Draft` of one prompt holding `n`
units of haystack (words, noise sentences, distractor lines, list entries: whatever the task grows
by); longctx.ruler_tasks finds the `n` that fills a target length with the model's tokenizer. A
generator draws everything that does not depend on `n` (keys, values, chains, common words) first,
so a sample's answers are the same at every `n`.

The task parameters are RULER's (scripts/synthetic.yaml); the differences, all in the material:
- keys are two words of the bundled books' vocabulary ("harbour-lantern"), where RULER joins an
  adjective and a noun of the wonderwords package; cwe's words come from the same vocabulary;
- the essay haystack is book text (by default the held-out PG19 book), not Paul Graham's essays;
- noise grows by single sentences (five to a line, RULER's line), so a prompt can meet its length
  within 1%;
- vt's in-context example has a fixed 14 lines of noise (about RULER's 500 tokens) and shares the
  user turn with the question;
- an answer occurs in the context only inside its needle: a draw found elsewhere is redrawn, and
  no other cwe word contains a common word.
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from longctx.retrieval import PASSKEY_FILLER, split_sentences

if TYPE_CHECKING:
    from longctx.ruler_tasks import RulerMaterial

NOISE_SENTENCES = PASSKEY_FILLER  # RULER's noise: "The grass is green. The sky is blue. ..." (five to a line)
NOISE_TEXT = " ".join(NOISE_SENTENCES)
DEPTHS = tuple(round(100 * step / 39) for step in range(40))  # RULER's 40 needle depths, in percent

NIAH_TEMPLATE = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. I will quiz you "
    "about the {kind} afterwards.\n{context}\nWhat are all the special magic {kind} for {query} mentioned in the "
    "provided text?"
)
NIAH_ANSWER_PREFIX = "The special magic {kind} for {query} mentioned in the provided text are"
NIAH_NEEDLE = "One of the special magic {kind} for {key} is: {value}."
NIAH_NEW_TOKENS = 128

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER_PREFIX = (
    "Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned "
    "the value {query}, they are:"
)
VT_EXAMPLE_NOISE_LINES = 14
VT_NEW_TOKENS = 30

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
    "that appear most often.\n{context}\nQuestion: What are the {num_common} most common words in the above list?"
)
CWE_ANSWER_PREFIX = "Answer: The top {num_common} words that appear most often in the list are:"
CWE_SHORT_LENGTH = 4096  # below it RULER repeats words 6 and 1 times and shows a smaller example
CWE_NEW_TOKENS = 120

FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_ANSWER_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"
FWE_NEW_TOKENS = 50


@dataclass(frozen=True)
class Draft:
    """A prompt before tokenization and what a reply must contain.

    Each `evidence` line (a needle, a chain link, a fact) occurs once in the user text, at fraction
    `depths` of its context, and holds every occurrence of the `references` there; aggregation tasks,
    whose answers are counted words, have none.
    """

    user_text: str
    answer_prefix: str
    references: list[str]
    evidence: list[str] = field(default_factory=list)
    depths: list[float] = field(default_factory=list)


class UniqueDraws:
    """A sample's random keys and values: never drawn twice, never found in `text` (the haystack's own words)."""

    def __init__(self, rng: random.Random, vocabulary: Sequence[str], text: str = ""):
        self.rng, self.vocabulary, self.text, self.used = rng, vocabulary, text, set()

    def __call__(self, kind: str) -> str:
        while True:
            if kind == "numbers":
                value = str(self.rng.randint(10**6, 10**7 - 1))  # RULER's 7-digit numbers
            elif kind == "words":
                value = f"{self.rng.choice(self.vocabulary)}-{self.rng.choice(self.vocabulary)}"
            elif kind == "uuids":
                value = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            else:
                raise ValueError(f"unknown needle type {kind!r}: numbers, words or uuids")
            if value not in self.used and value not in self.text:
                self.used.add(value)
                return value


def depths_in(context: str, evidence: Sequence[str]) -> list[float]:
    """Where each evidence line starts, as a fraction of the context's characters."""
    return [context.index(line) / max(len(context), 1) for line in evidence]


def noise_lines(num_sentences: int) -> list[str]:
    """RULER's noise haystack cut at sentences: lines of five, the last one possibly shorter."""
    sentences = [NOISE_SENTENCES[i % len(NOISE_SENTENCES)] for i in range(num_sentences)]
    step = len(NOISE_SENTENCES)
    return [" ".join(sentences[i : i + step]) for i in range(0, num_sentences, step)]


def insert_lines(rng: random.Random, lines: Sequence[str], inserts: Sequence[str]) -> list[str]:
    """`inserts`, in their order, at random line boundaries of `lines` (RULER's noise and needle haystacks)."""
    positions = sorted(rng.randint(0, len(lines)) for _ in inserts)
    result = list(lines)
    for offset, (position, line) in enumerate(zip(positions, inserts)):
        result.insert(position + offset, line)
    return result


def essay_context(rng: random.Random, essay_words: Sequence[str], num_words: int, inserts: Sequence[str]) -> str:
    """`num_words` of book text from a random start (cycling), `inserts` at sentence boundaries at RULER's depths."""
    start = rng.randrange(len(essay_words))
    words = [essay_words[(start + i) % len(essay_words)] for i in range(num_words)]
    sentences = [sentence.strip() for sentence in split_sentences(" ".join(words))] if words else []
    positions = sorted(len(sentences) * depth // 100 for depth in rng.sample(DEPTHS, len(inserts)))
    pieces, previous = [], 0
    for position, insert in zip(positions, inserts):
        pieces += [*sentences[previous:position], insert]
        previous = position
    return " ".join(pieces + sentences[previous:])


def niah_draft(
    rng: random.Random,
    material: RulerMaterial,
    n: int,
    length: int,
    *,
    haystack: str,
    key_type: str,
    value_type: str,
    num_keys: int = 1,
    num_values: int = 1,
    num_queries: int = 1,
) -> Draft:
    """Needles "One of the special magic {values} for {key} is: {value}." in a noise, essay or needle haystack."""
    draw = UniqueDraws(rng, material.vocabulary, material.text if haystack == "essay" else NOISE_TEXT)
    num_keys = max(num_keys, num_queries)
    keys = [draw(key_type) for _ in range(num_keys)]
    values = [[draw(value_type) for _ in range(num_values)] for _ in keys]
    key_of = {
        NIAH_NEEDLE.format(kind=value_type, key=key, value=value): key for key, row in zip(keys, values) for value in row
    }
    needles = list(key_of)
    rng.shuffle(needles)
    queried = rng.sample(range(num_keys), num_queries)
    references = [value for index in queried for value in values[index]]
    query_keys = [keys[index] for index in queried]
    evidence = [needle for needle in needles if key_of[needle] in query_keys]  # multikey_1's other keys are decoys
    query = ", ".join(query_keys[:-1]) + ", and " + query_keys[-1] if len(query_keys) > 1 else query_keys[0]

    if haystack == "essay":
        context = essay_context(rng, material.essay, n, needles)
    elif haystack in ("noise", "needle"):
        lines = noise_lines(n) if haystack == "noise" else [
            NIAH_NEEDLE.format(kind=value_type, key=draw(key_type), value=draw(value_type)) for _ in range(n)
        ]
        context = "\n".join(insert_lines(rng, lines, needles))
    else:
        raise ValueError(f"unknown haystack {haystack!r}: noise, essay or needle")

    template, prefix, kind = NIAH_TEMPLATE, NIAH_ANSWER_PREFIX, value_type
    if len(references) == 1:  # RULER's singular wording
        for plural, singular in (("Some", "A"), ("are all", "is"), ("are", "is")):
            template, prefix = template.replace(plural, singular), prefix.replace(plural, singular)
        kind = kind[:-1]
    return Draft(
        template.format(kind=kind, context=context, query=query),
        prefix.format(kind=kind, query=query),
        references,
        evidence,
        depths_in(context, evidence),
    )


def _variable_names(rng: random.Random, count: int, letters: int, taken: set[str]) -> list[str]:
    names = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def _chain(names: Sequence[str], value: int) -> list[str]:
    return [f"VAR {names[0]} = {value}", *(f"VAR {after} = VAR {before}" for before, after in zip(names, names[1:]))]


def vt_draft(
    rng: random.Random, material: RulerMaterial, n: int, length: int, *, num_chains: int = 1, num_hops: int = 4
) -> Draft:
    """Variable tracking: chains "VAR B = VAR A" in noise; which variables hold the first chain's value?

    One worked example comes first, as in RULER: its own chain (three-letter names) in 14 lines of noise.
    """
    taken: set[str] = set()
    names = [_variable_names(rng, num_hops + 1, 5, taken) for _ in range(num_chains)]
    values = rng.sample(range(10000, 100000), num_chains + 1)
    chains = [_chain(chain_names, value) for chain_names, value in zip(names, values)]
    example_names = _variable_names(rng, num_hops + 1, 3, taken)
    example_lines = noise_lines(VT_EXAMPLE_NOISE_LINES * len(NOISE_SENTENCES))
    example_context = "\n".join(insert_lines(rng, example_lines, _chain(example_names, values[-1])))
    example = (
        VT_TEMPLATE.format(context=example_context, query=values[-1])
        + " " + VT_ANSWER_PREFIX.format(num_v=num_hops + 1, query=values[-1])
        + " " + " ".join(example_names)
    )
    lines = noise_lines(n)
    for chain in chains:
        lines = insert_lines(rng, lines, chain)
    context = "\n".join(lines)
    return Draft(
        example + "\n" + VT_TEMPLATE.format(context=context, query=values[0]),
        VT_ANSWER_PREFIX.format(num_v=num_hops + 1, query=values[0]),
        list(names[0]),
        chains[0],
        depths_in(context, chains[0]),
    )


def _numbered(words: Sequence[str]) -> str:
    return " ".join(f"{index}. {word}" for index, word in enumerate(words, start=1))


def _word_list(rng: random.Random, common: Sequence[str], uncommon: Sequence[str], repeats: tuple[int, int]) -> str:
    words = [*common] * repeats[0] + [*uncommon] * repeats[1]
    rng.shuffle(words)
    return _numbered(words)


def cwe_draft(
    rng: random.Random,
    material: RulerMaterial,
    n: int,
    length: int,
    *,
    num_common: int = 10,
    common_repeats: int = 30,
    uncommon_repeats: int = 3,
) -> Draft:
    """Common words extraction: a numbered list of `num_common` + `n` words; name the `num_common` most frequent.

    RULER's regimes: from 4096 tokens common words appear `common_repeats` times, the others
    `uncommon_repeats`, after an example of 40 words (10 and 3 times); below it, 6 and 1, example of 20 (3 and 1).
    """
    if length < CWE_SHORT_LENGTH:
        repeats, example_size, example_repeats = (6, 1), 20, (3, 1)
    else:
        repeats, example_size, example_repeats = (common_repeats, uncommon_repeats), 40, (10, 3)
    fixed_text = (CWE_TEMPLATE + CWE_ANSWER_PREFIX).lower()
    allowed = [word for word in material.vocabulary if word not in fixed_text]
    common = rng.sample(allowed, num_common)
    # no other word contains a common one, so a reply naming it cannot match by accident
    others = [word for word in allowed if word not in common and not any(part in word for part in common)]
    rng.shuffle(others)
    example_words, uncommon = others[:example_size], others[example_size : example_size + n]
    example_common = example_words[:num_common]
    example_list = _word_list(rng, example_common, example_words[num_common:], example_repeats)
    example = (
        CWE_TEMPLATE.format(num_common=num_common, context=example_list)
        + " " + CWE_ANSWER_PREFIX.format(num_common=num_common) + " " + _numbered(example_common)
    )
    context = _word_list(rng, common, uncommon, repeats)
    return Draft(
        example + "\n" + CWE_TEMPLATE.format(num_common=num_common, context=context),
        CWE_ANSWER_PREFIX.format(num_common=num_common),
        list(common),
    )


def _zeta(s: float, terms: int = 1000) -> float:
    """Riemann zeta for s > 1 (Euler-Maclaurin after `terms` terms; ample for word counts)."""
    return sum(k**-s for k in range(1, terms)) + terms ** (1 - s) / (s - 1) + 0.5 * terms**-s


def fwe_draft(
    rng: random.Random, material: RulerMaterial, n: int, length: int, *, alpha: float = 2.0, word_length: int = 6
) -> Draft:
    """Frequent words extraction: ~`n` coded words drawn from a Zipf(`alpha`) law; name ranks 2-4 (rank 1 is '...')."""
    vocab_size = max((length - FWE_NEW_TOKENS) // 50, 5)  # RULER's vocabulary grows with the length
    fixed_text = FWE_TEMPLATE + FWE_ANSWER_PREFIX
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        word = "".join(rng.choices(string.ascii_lowercase, k=word_length))
        if word not in fixed_text:
            vocab.add(word)
    ranked = sorted(vocab)
    rng.shuffle(ranked)
    ranked[0] = "..."  # the most frequent "word" is noise to ignore
    zeta = _zeta(alpha)
    words = [word for rank, word in enumerate(ranked, start=1) for _ in range(int(n * rank**-alpha / zeta))]
    rng.shuffle(words)
    return Draft(FWE_TEMPLATE.format(context=" ".join(words)), FWE_ANSWER_PREFIX, ranked[1:4])
