"""RULER's 13 tasks (Hsieh et al. 2024) and prompts sized to a length with the model's own tokenizer.

The tasks and their parameters are RULER's scripts/synthetic.yaml, in its four families: retrieval
(eight needle-in-a-haystack variants), multi-hop tracing (vt), aggregation (cwe, fwe) and question
answering (qa_1, qa_2). Generators live in longctx.ruler_synthetic and longctx.ruler_qa.

A length counts every token the model holds, as RULER's max_seq_length does: the prompt (chat
template and answer prefix included) plus the task's generation budget (RULER's
tokens_to_generate). The haystack is sized by a search over its units with the real tokenizer,
to the largest prompt that fits; it then lies within 1% of the length, except in niah_multikey_2/3,
whose haystack is made of whole distractor needles (within one needle: about 80 SmolLM2 tokens for
multikey_3's pairs of UUIDs, 2% of 4096).
"""

from __future__ import annotations

import random
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from longctx.data import BUNDLED_EVAL_DATA, default_eval_data, default_pretraining_data
from longctx.retrieval import read_haystack, render_prompt
from longctx.ruler_qa import QA_NEW_TOKENS, make_passages, qa_draft
from longctx.ruler_synthetic import (
    CWE_NEW_TOKENS,
    FWE_NEW_TOKENS,
    NIAH_NEW_TOKENS,
    VT_NEW_TOKENS,
    Draft,
    cwe_draft,
    fwe_draft,
    niah_draft,
    vt_draft,
)

FAMILIES = ("retrieval", "multi_hop", "aggregation", "qa")
METRICS = ("all", "part")


@dataclass(frozen=True)
class Task:
    """One RULER task: its family, generator and options, generation budget and scoring."""

    family: str
    generator: Callable[..., Draft]
    options: Mapping[str, object]
    max_new_tokens: int  # RULER's tokens_to_generate
    metric: str  # "all": share of the references in the reply; "part": 1 if any is (RULER's string_match_all/part)


def _niah(haystack: str, key_type: str, value_type: str, **counts: int) -> Task:
    options = {"haystack": haystack, "key_type": key_type, "value_type": value_type, **counts}
    return Task("retrieval", niah_draft, types.MappingProxyType(options), NIAH_NEW_TOKENS, "all")


TASKS = types.MappingProxyType({
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", num_values=4),
    "niah_multiquery": _niah("essay", "words", "numbers", num_queries=4),
    "vt": Task("multi_hop", vt_draft, types.MappingProxyType({"num_chains": 1, "num_hops": 4}), VT_NEW_TOKENS, "all"),
    "cwe": Task(
        "aggregation",
        cwe_draft,
        types.MappingProxyType({"num_common": 10, "common_repeats": 30, "uncommon_repeats": 3}),
        CWE_NEW_TOKENS,
        "all",
    ),
    "fwe": Task("aggregation", fwe_draft, types.MappingProxyType({"alpha": 2.0}), FWE_NEW_TOKENS, "all"),
    "qa_1": Task("qa", qa_draft, types.MappingProxyType({"hops": 1}), QA_NEW_TOKENS, "part"),
    "qa_2": Task("qa", qa_draft, types.MappingProxyType({"hops": 2}), QA_NEW_TOKENS, "part"),
})


def select_tasks(text: str) -> list[str]:
    """'all', family names and task names, comma-separated, to task names in RULER's order."""
    wanted = set()
    for name in (piece.strip() for piece in str(text).split(",")):
        if name == "all":
            wanted.update(TASKS)
        elif name in FAMILIES:
            wanted.update(task for task, spec in TASKS.items() if spec.family == name)
        elif name in TASKS:
            wanted.add(name)
        elif name:
            raise ValueError(
                f"--tasks: unknown task {name!r}; choose all, a family ({', '.join(FAMILIES)}) "
                f"or tasks ({', '.join(TASKS)})"
            )
    if not wanted:
        raise ValueError("--tasks names no task")
    return [task for task in TASKS if task in wanted]


@dataclass(frozen=True)
class RulerMaterial:
    """What the generators draw from: haystack text (its words and passages) and a vocabulary of words."""

    source: str
    text: str
    essay: tuple[str, ...]
    passages: tuple[str, ...]
    vocabulary: tuple[str, ...]


def load_material(haystack: str | None = None) -> RulerMaterial:
    """Haystacks from `haystack` (default: the held-out book data/pg19_eval); 5-10 letter words of all bundled books.

    The default is recorded as BUNDLED_EVAL_DATA, not as this clone's absolute path, so a result file
    resumes (--resume compares the haystack) in any clone.
    """
    text = " ".join(read_haystack(haystack or default_eval_data()).split())
    books = read_haystack(f"{default_pretraining_data()},{default_eval_data()}")
    vocabulary = tuple(sorted(set(re.findall(r"(?<![A-Za-z'-])[a-z]{5,10}(?![A-Za-z'-])", books))))
    return RulerMaterial(haystack or BUNDLED_EVAL_DATA, text, tuple(text.split()), tuple(make_passages(text)), vocabulary)


@dataclass(frozen=True)
class RulerSample:
    """One prompt of a task at a length, what its reply must contain, and where that sits (see `Draft`)."""

    task: str
    length: int
    index: int
    input_ids: list[int]
    references: list[str]
    evidence: list[str]
    depths: list[float]
    max_new_tokens: int
    metric: str

    @property
    def total_tokens(self) -> int:
        """Prompt plus generation budget: what is compared with the length."""
        return len(self.input_ids) + self.max_new_tokens


def largest_fitting(target: int, size: Callable[[int], int], probe: int = 8, limit: int = 1 << 24) -> int:
    """The largest n with size(n) <= target, size growing with n and size(0) fitting.

    Like RULER's binary search over the haystack size, started from a linear estimate: it grows past the
    target by extrapolation, then narrows by interpolation alternating with bisection.
    """
    low, high = 0, probe
    while size(high) <= target:
        if size(high) == size(low):
            raise ValueError(f"the haystack cannot fill {target} tokens: its material runs out")
        slope = (size(high) - size(0)) / high
        low, high = high, high + int((target - size(high)) / slope * 1.1) + 1
        if high > limit:
            raise RuntimeError("the haystack adds no tokens: cannot size the prompt")
    interpolate = True
    while high - low > 1:
        if interpolate:
            guess = low + int((target - size(low)) * (high - low) / max(size(high) - size(low), 1))
        else:
            guess = (low + high) // 2
        guess = min(max(guess, low + 1), high - 1)
        low, high = (guess, high) if size(guess) <= target else (low, guess)
        interpolate = not interpolate
    return low


def _prompt_builder(tokenizer, material: RulerMaterial, task: str, length: int, seed: str):
    """(ids, draft) of the task's prompt with n haystack units, memoized: the search asks for some n more than once."""
    spec = TASKS[task]
    built: dict[int, tuple[list[int], Draft]] = {}

    def build(n: int) -> tuple[list[int], Draft]:
        if n not in built:
            draft = spec.generator(random.Random(seed), material, n, length, **spec.options)
            built[n] = (render_prompt(tokenizer, draft.user_text, draft.answer_prefix), draft)
        return built[n]

    return build


def _check_fixed_part(task: str, length: int, fixed_tokens: int) -> None:
    if fixed_tokens > length:
        raise ValueError(
            f"--lengths {length} is below the fixed part of {task}'s prompt: {fixed_tokens} tokens with the "
            f"{TASKS[task].max_new_tokens} it may generate, before any haystack"
        )


def make_sample(tokenizer, material: RulerMaterial, task: str, length: int, index: int, seed: int = 0) -> RulerSample:
    """Sample `index` of `task` filling `length` tokens (prompt + generation budget); the same for the same seed."""
    spec = TASKS[task]
    build = _prompt_builder(tokenizer, material, task, length, f"{seed}:{task}:{length}:{index}")
    room = length - spec.max_new_tokens
    _check_fixed_part(task, length, len(build(0)[0]) + spec.max_new_tokens)
    input_ids, draft = build(largest_fitting(room, lambda n: len(build(n)[0])))
    return RulerSample(
        task, length, index, input_ids, draft.references, draft.evidence, draft.depths, spec.max_new_tokens, spec.metric
    )


def check_lengths(
    tokenizer, material: RulerMaterial, tasks: Sequence[str], lengths: Sequence[int], seed: int = 0
) -> None:
    """Refuse, before any generation, a length that cannot hold a task's prompt without haystack."""
    for length in lengths:
        for task in tasks:
            build = _prompt_builder(tokenizer, material, task, length, f"{seed}:{task}:{length}:0")
            _check_fixed_part(task, length, len(build(0)[0]) + TASKS[task].max_new_tokens)
