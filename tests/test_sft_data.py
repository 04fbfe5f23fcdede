"""SFT samples: answer-only labels, cuts in the middle of the material, skipped records counted, the QA data tool."""

import json

import pytest

from longctx.loss import IGNORE_INDEX
from longctx.qa_data import build_records
from longctx.retrieval import split_sentences
from longctx.sft_data import load_sft_samples, prompt_token_ids, to_conversation, tokenize_conversation
from tests.tiny_models import BOOKS, tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def answer_text(tokenizer, sample):
    return tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX])


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_labels_are_ignored_outside_the_answer(tokenizer):
    record = {"instruction": "Read this.\nWhat colour is the sky?", "output": "Blue, mostly."}
    sample = tokenize_conversation(tokenizer, to_conversation(record), "chat", 512)
    assert answer_text(tokenizer, sample) == "Blue, mostly.</s>\n"
    first = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
    assert all(label == IGNORE_INDEX for label in sample.labels[:first])
    assert sample.labels[first:] == sample.input_ids[first:]  # the answer runs to the end
    assert tokenizer.decode(sample.input_ids[:first]).endswith("What colour is the sky?</s>\n<|assistant|>\n")
    assert sample.input_ids[:first] == prompt_token_ids(tokenizer, to_conversation(record), "chat")


def test_every_assistant_turn_of_a_chat_carries_loss(tokenizer):
    messages = [
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question?"},
        {"role": "assistant", "content": "Second answer."},
    ]
    sample = tokenize_conversation(tokenizer, to_conversation({"messages": messages}), "chat", 512)
    assert answer_text(tokenizer, sample) == "First answer.</s>\nSecond answer.</s>\n"
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(sample.input_ids) == full


def test_llama2_template_answers_end_with_eos(tokenizer):
    record = {"instruction": "Summarise.", "input": "A long text.", "output": "Short."}
    sample = tokenize_conversation(tokenizer, to_conversation(record, "llama2"), "llama2", 512)
    assert answer_text(tokenizer, sample) == "Short.</s>"
    assert "[INST] <<SYS>>" in tokenizer.decode(sample.input_ids)  # LongLoRA's system form, for records with input
    assert "Summarise. \nA long text. [/INST]" in tokenizer.decode(sample.input_ids)
    without_input = tokenize_conversation(tokenizer, to_conversation({"instruction": "Hi.", "output": "Yo."}, "llama2"), "llama2", 512)
    assert tokenizer.decode(without_input.input_ids) == "[INST]Hi.[/INST]Yo.</s>"


def test_longqlora_input_output_records_are_read(tokenizer, tmp_path):
    path = tmp_path / "longqlora.jsonl"
    path.write_text('{"input": " Q? ", "output": " A. "}\n{"input": "Q2", "output": ""}\n', encoding="utf-8")
    samples, stats = load_sft_samples(path, tokenizer, 512, "vicuna")
    assert len(samples) == 1 and dict(stats.skipped) == {"missing 'output'": 1}
    assert answer_text(tokenizer, samples[0]) == "A.</s>"


def test_long_samples_are_cut_in_the_middle_of_the_material(tokenizer):
    material = " ".join(f"word{i}" for i in range(400))
    record = {"instruction": f"HEAD {material} TAIL\nWhich word comes first?", "output": "word0"}
    full = tokenize_conversation(tokenizer, to_conversation(record), "chat", 10_000)
    sample = tokenize_conversation(tokenizer, to_conversation(record), "chat", 300)
    assert len(full) > 300 and len(sample) == 300 and sample.cut_tokens == len(full) - 300
    text = tokenizer.decode(sample.input_ids)
    assert "HEAD word0 word1" in text and "word399 TAIL\nWhich word comes first?" in text  # both ends of the material kept
    assert "word200 " not in text  # the middle went
    assert answer_text(tokenizer, sample) == answer_text(tokenizer, full) == "word0</s>\n"
    # no material can absorb the excess: the sample cannot be used
    assert tokenize_conversation(tokenizer, to_conversation({"instruction": material, "output": "x"}), "chat", 100) is None


def test_skipped_records_are_counted_with_their_reason(tokenizer, tmp_path):
    records = [
        {"instruction": "Q one?", "output": "A one."},
        {"instruction": "Q two?"},
        {"instruction": "Q three?", "output": "A three."},
        {"messages": []},
        {"messages": [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi?"}]},
        {"instruction": " ".join(["filler"] * 300), "output": "too long, and nothing to cut"},
    ]
    samples, stats = load_sft_samples(write_json(tmp_path / "data.json", records), tokenizer, 64)
    assert len(samples) == 2 and stats.records == 6 and stats.kept == 2
    assert stats.skipped["missing 'output'"] == 1 and stats.first_skipped["missing 'output'"] == 2
    assert stats.skipped["empty 'messages'"] == 1 and stats.first_skipped["empty 'messages'"] == 4
    assert stats.skipped["starts with an assistant message"] == 1
    assert sum(stats.skipped.values()) == 4
    assert "2 of 6 records kept" in stats.summary() and "missing 'output' (first: record 2)" in stats.summary()


def test_chat_jsonl_and_bad_lines(tokenizer, tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    samples, stats = load_sft_samples(path, tokenizer, 128)
    assert len(samples) == 2 and stats.records == 2
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"chat.jsonl:2: invalid JSON"):
        load_sft_samples(path, tokenizer, 128)
    with pytest.raises(ValueError, match="no usable sample"):
        load_sft_samples(write_json(tmp_path / "bad.json", [{"instruction": "x"}, {"messages": []}]), tokenizer, 128)


def test_qa_records_hide_one_fact_before_the_question():
    sentences = split_sentences((BOOKS / "pg19test_10146.txt").read_text(encoding="utf-8")[:200_000])
    records = build_records(sentences, 40, min_tokens=100, max_tokens=3000, seed=3)
    assert records == build_records(sentences, 40, min_tokens=100, max_tokens=3000, seed=3)
    lengths = sorted(record["approx_tokens"] for record in records)
    assert 100 <= lengths[0] and lengths[-1] <= 3000 + 200
    assert lengths[len(lengths) // 2] < 1000 < lengths[-1]  # long-tailed: median short, some long
    depths = [record["depth"] for record in records]
    assert min(depths) < 0.2 and max(depths) > 0.8
    for record in records:
        material, _, question = record["instruction"].rpartition("\n")
        assert question.startswith("Question: ") and record["answer"] in record["output"]
        assert material.count("Remember it.") == 1 and material.count(record["answer"]) == 1  # only in the fact
    fact_free = [record for record in build_records(["Quebec is far. ", "So is Lima. "], 30, 16, 20, seed=0)]
    assert {record["answer"] for record in fact_free}.isdisjoint({"Quebec", "Lima"})


@pytest.mark.realmodel
def test_smollm2_chat_template_answer_labels():
    """SmolLM2's own template (it adds a default system turn): labels cover the answer and its end-of-turn only."""
    from longctx.modeling import load_tokenizer, resolve_model_path

    smollm2 = load_tokenizer(resolve_model_path("smollm2"))
    record = {"instruction": "Below is a text.\n\nSome material here.\n\nQuestion: What is here?", "output": "Material."}
    sample = tokenize_conversation(smollm2, to_conversation(record), "chat", 4096)
    assert answer_text(smollm2, sample) == "Material.<|im_end|>\n"
    full = smollm2.apply_chat_template(to_conversation(record).messages, tokenize=False)
    assert sample.input_ids == smollm2(full, add_special_tokens=False)["input_ids"]
    prompt = smollm2.decode(prompt_token_ids(smollm2, to_conversation(record), "chat"))
    assert prompt.endswith("Question: What is here?<|im_end|>\n<|im_start|>assistant\n")


def test_garbage_files_are_named_in_the_error(tmp_path):
    from longctx.qa_data import load_questions
    from longctx.sft_data import read_records

    (tmp_path / "train.json").write_bytes(b"\xff\xfe\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"train.json is not UTF-8 text"):
        read_records(tmp_path / "train.json")
    (tmp_path / "train.jsonl").write_bytes(b'{"messages": []}\n\xff\xfe garbage\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2 is not UTF-8 text"):
        read_records(tmp_path / "train.jsonl")
    with pytest.raises(FileNotFoundError, match="--eval_data_path .*heldout.json: no such file"):
        load_questions(tmp_path / "heldout.json")
