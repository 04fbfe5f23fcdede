"""Supervised fine-tuning samples: LongAlpaca JSON or chat JSONL -> token ids with answer-only labels.

Formats (docs/ARCHITECTURE.md, "Data formats"):

- LongAlpaca JSON: a list of ``{"instruction", "output"[, "input"]}``; the user turn is the
  instruction, followed by the input when there is one (LongLoRA's order), the answer is ``output``.
  Under ``--prompt_template llama2`` the records follow LongLoRA's supervised-fine-tune.py exactly: no
  system prompt without an input, LongLoRA's system prompt and ``{instruction} \n{input}`` with one;
- LongQLoRA JSONL: one ``{"input", "output"}`` per line, both stripped as LongQLoRA does (its Vicuna
  data; ``--prompt_template vicuna`` renders its prompt);
- chat JSONL: one ``{"messages": [{"role", "content"}, ...]}`` per line (a ``.jsonl`` of LongAlpaca
  records also works, and a ``.json`` list may hold ``messages`` records).

Conversations are rendered through ``longctx.prompts.render_conversation`` (the tokenizer's chat
template or LongLoRA's llama2 format), and only the assistant turns carry loss; every other label
is -100. A sample longer than ``model_max_length`` is cut in the middle of its *material* (the
``input`` field, or the user text before its last line, where LongAlpaca puts the question), never
through the question or the answer; samples that cannot be cut enough are skipped and counted.
Records with no answer or no messages are skipped and counted too, never dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from longctx.loss import IGNORE_INDEX
from longctx.prompts import LLAMA2_SYSTEM_PROMPT, check_template, render_conversation, starts_with_bos
from longctx.text_files import read_jsonl, read_text_file

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    """Messages of one sample; `material` is the text of the message `material_index` that may be cut."""

    messages: list[dict]
    material: str | None = None
    material_index: int | None = None


@dataclass
class SFTSample:
    input_ids: list[int]
    labels: list[int]
    cut_tokens: int = 0  # tokens removed from the middle of the material

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class SFTStats:
    """What happened to every record of a data file, so nothing is dropped silently."""

    records: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    first_skipped: dict = field(default_factory=dict)  # reason -> first record number
    cut: int = 0

    def skip(self, reason: str, record_number: int) -> None:
        self.skipped[reason] += 1
        self.first_skipped.setdefault(reason, record_number)

    @property
    def kept(self) -> int:
        return self.records - sum(self.skipped.values())

    def summary(self) -> str:
        line = f"{self.kept} of {self.records} records kept; {self.cut} cut in the middle of their material"
        if self.skipped:
            reasons = ", ".join(
                f"{count} {reason} (first: record {self.first_skipped[reason]})" for reason, count in self.skipped.items()
            )
            line += f"; skipped: {reasons}"
        return line


# ---------------------------------------------------------------------------------------------
# Reading records


def read_records(path: str | Path, flag: str = "--data_path") -> list[tuple[int, object]]:
    """(record number, parsed record) pairs from a .json list or a .jsonl file; bad JSON or bytes name the file
    and line (`flag` names the path when it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    if path.suffix == ".jsonl":
        return list(read_jsonl(path))
    if path.suffix != ".json":
        raise ValueError(f"{path}: SFT data is a LongAlpaca .json list or a chat .jsonl file")
    text = read_text_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (LongAlpaca format)")
    return list(enumerate(data, start=1))


def _text_field(record: dict, name: str) -> str | None:
    value = record.get(name)
    return value if isinstance(value, str) and value.strip() else None


def to_conversation(record, template: str = "chat") -> Conversation | str:
    """A Conversation, or the reason the record cannot be used; `template` decides LongAlpaca's llama2 rule."""
    if not isinstance(record, dict):
        return "not an object"
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return "empty 'messages'"
        if not all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
            return "malformed message (role system/user/assistant and a string content)"
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            return "no assistant answer"
        users = [index for index, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            return "no user message"
        if next(m["role"] for m in messages if m["role"] != "system") == "assistant":
            return "starts with an assistant message"
        longest = max(users, key=lambda index: len(messages[index]["content"]))
        return Conversation(messages, _material_of(messages[longest]["content"]), longest)
    instruction, output = _text_field(record, "instruction"), _text_field(record, "output")
    material_input = _text_field(record, "input")
    if instruction is None and "instruction" not in record and material_input is not None:
        return _longqlora_conversation(material_input, output)
    if instruction is None:
        return "missing 'instruction'"
    if output is None:
        return "missing 'output'"
    answer = {"role": "assistant", "content": output}
    if material_input is None:
        return Conversation([{"role": "user", "content": instruction}, answer], _material_of(instruction), 0)
    if template == "llama2":  # LongLoRA's prompt_input_llama2: its system prompt, then "{instruction} \n{input}"
        system = {"role": "system", "content": LLAMA2_SYSTEM_PROMPT}
        return Conversation([system, {"role": "user", "content": f"{instruction} \n{material_input}"}, answer], material_input, 1)
    return Conversation([{"role": "user", "content": f"{instruction}\n{material_input}"}, answer], material_input, 0)


def _longqlora_conversation(user: str, output: str | None) -> Conversation | str:
    """LongQLoRA's {input, output} record: both stripped, as its VicunaSFTDataset does."""
    if output is None:
        return "missing 'output'"
    user = user.strip()
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output.strip()}]
    return Conversation(messages, _material_of(user), 0)


def _material_of(text: str) -> str | None:
    """The text before the last line, where the question sits (None for a one-line message)."""
    material, _, question = text.rstrip().rpartition("\n")
    return material if material.strip() and question.strip() else None


# ---------------------------------------------------------------------------------------------
# Tokenizing


def _pieces(tokenizer, conversation: Conversation, template: str) -> list[tuple[str, str]]:
    """The rendered conversation as (kind, text) pieces: kind is "prompt", "material" or "answer"."""
    messages = conversation.messages
    full = render_conversation(tokenizer, messages, template, add_generation_prompt=False)
    answers = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if index == 0:
            raise ValueError("a conversation cannot start with an assistant message")
        before = render_conversation(tokenizer, messages[:index], template, add_generation_prompt=True)
        through = render_conversation(tokenizer, messages[: index + 1], template, add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError("the chat template renders earlier turns differently as the conversation grows")
        answers.append((len(before), len(through)))
    bounds = [(start, end, "answer") for start, end in answers]
    if conversation.material:
        start = full.find(conversation.material)
        if start >= 0 and all(end <= start or start + len(conversation.material) <= a for a, end in answers):
            bounds.append((start, start + len(conversation.material), "material"))
    pieces, cursor = [], 0
    for start, end, kind in sorted(bounds):
        pieces += [("prompt", full[cursor:start]), (kind, full[start:end])]
        cursor = end
    pieces.append(("prompt", full[cursor:]))
    return [(kind, text) for kind, text in pieces if text]


def tokenize_conversation(tokenizer, conversation: Conversation, template: str, model_max_length: int) -> SFTSample | None:
    """Token ids and answer-only labels; cut in the material to fit, or None when even that cannot fit."""
    pieces = [(kind, tokenizer(text, add_special_tokens=False)["input_ids"]) for kind, text in _pieces(tokenizer, conversation, template)]
    if starts_with_bos(tokenizer, template) and not (pieces and pieces[0][1][:1] == [tokenizer.bos_token_id]):
        pieces.insert(0, ("prompt", [tokenizer.bos_token_id]))
    excess = sum(len(ids) for _, ids in pieces) - model_max_length
    cut = 0
    if excess > 0:
        material = [index for index, (kind, _) in enumerate(pieces) if kind == "material"]
        if not material or len(pieces[material[0]][1]) <= excess:
            return None
        kind, ids = pieces[material[0]]
        keep = len(ids) - excess
        pieces[material[0]] = (kind, ids[: keep // 2] + ids[len(ids) - (keep - keep // 2) :])
        cut = excess
    input_ids, labels = [], []
    for kind, ids in pieces:
        input_ids += ids
        labels += ids if kind == "answer" else [IGNORE_INDEX] * len(ids)
    return SFTSample(input_ids, labels, cut)


def prompt_token_ids(tokenizer, conversation: Conversation, template: str) -> list[int]:
    """Token ids of a conversation up to its first answer, as in training: the prompt to generate from."""
    sample = tokenize_conversation(tokenizer, conversation, template, model_max_length=1 << 62)
    first_answer = next(index for index, label in enumerate(sample.labels) if label != IGNORE_INDEX)
    return sample.input_ids[:first_answer]


def load_sft_samples(
    data_path: str | Path, tokenizer, model_max_length: int, template: str = "chat", max_samples: int | None = None
) -> tuple[list[SFTSample], SFTStats]:
    """Tokenized samples of a data file and what happened to each record; ValueError if none is usable."""
    check_template(template, tokenizer)
    records = read_records(data_path)
    if max_samples is not None:
        records = records[:max_samples]
    stats = SFTStats(records=len(records))
    samples = []
    for number, record in tqdm(records, desc="tokenizing", unit="sample", disable=len(records) < 64):
        conversation = to_conversation(record, template)
        if isinstance(conversation, str):
            stats.skip(conversation, number)
            continue
        sample = tokenize_conversation(tokenizer, conversation, template, model_max_length)
        if sample is None:
            stats.skip(f"longer than --model_max_length {model_max_length} even with the material cut", number)
        elif sample.num_targets == 0:
            stats.skip("no answer token left", number)
        else:
            stats.cut += sample.cut_tokens > 0
            samples.append(sample)
    if not samples:
        raise ValueError(f"{data_path}: no usable sample ({stats.summary()})")
    return samples, stats
