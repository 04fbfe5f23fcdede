"""longctx.retrieval and the passkey / needle scripts: prompts, exact-match scoring, reports, bad input."""

import json
import re

import pytest
from transformers import AutoTokenizer

from longctx.reading_model import ReadingModel
from longctx.retrieval import (
    PASSKEY_FILLER,
    accuracy_by_length,
    accuracy_grid,
    answer_correct,
    fit_prompt,
    insert_at_depth,
    needle_case,
    passkey_case,
    passkey_correct,
    report_retrieval,
    run_retrieval,
    split_sentences,
)
from tests.scripts import ROOT, run_script, run_script_expecting_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def book_sentences():
    return split_sentences((ROOT / "data" / "pg19_eval" / "pg19test_29973.txt").read_text(encoding="utf-8")[:40_000])


def test_split_sentences_keeps_the_text():
    text = "One. Two?  Three!\nFour \"five.\" Six"
    pieces = split_sentences(text)
    assert pieces == ["One. ", "Two?  ", "Three!\n", "Four \"five.\" ", "Six "]
    assert "".join(pieces).rstrip() == text


def test_insert_at_depth():
    pieces = ["a", "b", "c", "d"]
    assert insert_at_depth(pieces, "X", 0) == ["X", "a", "b", "c", "d"]
    assert insert_at_depth(pieces, "X", 0.5) == ["a", "b", "X", "c", "d"]
    assert insert_at_depth(pieces, "X", 1) == ["a", "b", "c", "d", "X"]
    with pytest.raises(ValueError, match="depth"):
        insert_at_depth(pieces, "X", 1.5)


@pytest.mark.parametrize("length", [300, 1000])
def test_passkey_prompt_fills_the_length_and_hides_the_key(tokenizer, length):
    case = passkey_case(tokenizer, length, depth=0.5, seed=7)
    assert length - 40 < len(case.input_ids) <= length
    text = tokenizer.decode(case.input_ids)
    assert f"The pass key is {case.answer}. Remember it. {case.answer} is the pass key." in text
    assert text.startswith("<|user|>\nThere is an important info hidden")
    assert text.endswith("What is the pass key? Answer with the number only.</s>\n<|assistant|>\nThe pass key is")
    context = text[text.index("hidden") : text.index("What is the pass key?")]
    relative = context.index("Remember it.") / len(context)
    assert 0.3 < relative < 0.7
    assert passkey_case(tokenizer, length, 0.5, seed=7).answer == case.answer  # seeded
    assert 1 <= int(case.answer) <= 50000


def test_passkey_depths_and_random_depth(tokenizer):
    first = tokenizer.decode(passkey_case(tokenizer, 400, depth=0.0, seed=1).input_ids)
    last = tokenizer.decode(passkey_case(tokenizer, 400, depth=1.0, seed=1).input_ids)
    key_at = lambda text: text.index("Remember it.")
    assert key_at(first) < first.index(PASSKEY_FILLER[0]) and key_at(last) > last.rindex(PASSKEY_FILLER[1])
    depths = {passkey_case(tokenizer, 300, depth=None, seed=seed).depth for seed in range(5)}
    assert len(depths) == 5 and all(0 <= depth <= 1 for depth in depths)


def test_plain_prompt_without_chat_template(tiny_model_dir):
    plain = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain.chat_template = None
    text = plain.decode(passkey_case(plain, 300, depth=0.5, seed=3).input_ids)
    assert "<|user|>" not in text and text.endswith("What is the pass key? The pass key is")


def test_prompt_too_short_for_the_question_is_refused(tokenizer):
    with pytest.raises(ValueError, match="cannot hold the question"):
        passkey_case(tokenizer, 20, depth=0.5, seed=0)
    assert fit_prompt(10, lambda n: [0] * (3 + 2 * n)) == [0] * 9


def test_needle_prompt(tokenizer, book_sentences):
    case = needle_case(tokenizer, 600, 0.25, book_sentences, 0, NEEDLE, "What is the best thing to do in San Francisco?", "Dolores Park", "The best thing to do in San Francisco is")
    assert 0.75 * 600 < len(case.input_ids) <= 600 and case.answer == "Dolores Park"
    text = tokenizer.decode(case.input_ids)
    book = text[text.index("<book>") : text.index("</book>")]
    assert NEEDLE in book and 0.15 < book.index(NEEDLE) / len(book) < 0.35
    assert book_sentences[0].strip()[:30] in book  # real text from the start of the book
    other = tokenizer.decode(needle_case(tokenizer, 600, 0.25, book_sentences, 200, NEEDLE, "Q?", "Dolores Park").input_ids)
    assert book_sentences[200].strip()[:30] in other and book_sentences[0].strip()[:30] not in other


@pytest.mark.parametrize(
    "reply,key,correct",
    [(" 12345.", "12345", True), ("12345 is the pass key", "12345", True), (" 123456.", "12345", False),
     (" 1234", "12345", False), ("The key is 99 or 12345", "12345", False), ("no idea", "12345", False)],
)
def test_passkey_exact_match(reply, key, correct):
    assert passkey_correct(reply, key) is correct


@pytest.mark.parametrize(
    "reply,correct",
    [(" eat a sandwich and sit in Dolores Park on a sunny day.", True), ("DOLORES PARK!", True),
     ("dolores-park", True), ("Dolores Parkway", False), ("Golden Gate Park", False), ("", False)],
)
def test_needle_answer_exact_match(reply, correct):
    assert answer_correct(reply, "Dolores Park") is correct


def test_run_retrieval_scores_and_reports_constructed_answers(tokenizer, tmp_path):
    """A stub model that finds the key only in the first half of the prompt: the grid must show it."""

    def stub_generate(model, tokenizer_, input_ids, max_new_tokens):
        text = tokenizer.decode(input_ids)
        key = re.search(r"The pass key is (\d+)\. Remember", text).group(1)
        return f" {key}." if text.index("Remember it.") / len(text) < 0.5 else " 42."

    make_case = lambda length, depth, test: passkey_case(tokenizer, length, depth, seed=test)
    records = run_retrieval(None, tokenizer, [512, 1024], [0.0, 0.25, 1.0], 2, make_case, passkey_correct, generate=stub_generate, progress=False)
    assert len(records) == 12 and all(r["tokens"] <= r["length"] for r in records)
    assert accuracy_grid(records, [0.0, 0.25, 1.0], [512, 1024]) == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert [row["accuracy"] for row in accuracy_by_length(records)] == pytest.approx([2 / 3, 2 / 3])

    summary = report_retrieval(records, {"note": "stub"}, [0.0, 0.25, 1.0], str(tmp_path / "r.json"), None, "stub")
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["grid"] == summary["grid"] and len(written["records"]) == 12
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC


def test_passkey_script(tiny_model_dir, tmp_path):
    output = tmp_path / "passkey.json"
    run_script("passkey_retrivial.py", "--base_model", tiny_model_dir, "--max_tokens", "512", "--interval", "256", "--num_tests", "2", "--output_json", output)
    report = json.loads(output.read_text())
    assert report["lengths"] == [256, 512] and [row["tests"] for row in report["accuracy_by_length"]] == [2, 2]
    assert report["grid"] is None and len(report["records"]) == 4
    assert all(r["tokens"] <= r["length"] and r["answer"].isdigit() for r in report["records"])
    assert report["config"]["rope_parameters"]["factor"] == 8.0  # RoPE scaled from the tiny model's 64 to 512
    assert (tmp_path / "passkey.png").read_bytes()[:8] == PNG_MAGIC


def test_needle_script(tiny_model_dir, tmp_path):
    output = tmp_path / "needle.json"
    run_script(
        "needle_in_haystack.py", "--base_model", tiny_model_dir, "--max_tokens", "384", "--interval", "192",
        "--depths", "0,50,100", "--rope_method", "yarn", "--output_json", output,
    )
    report = json.loads(output.read_text())
    assert report["depths"] == [0.0, 0.5, 1.0] and report["lengths"] == [192, 384]
    assert len(report["grid"]) == 3 and all(len(row) == 2 for row in report["grid"])
    assert len(report["records"]) == 6 and report["config"]["rope_parameters"]["rope_type"] == "yarn"
    assert (tmp_path / "needle.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("passkey_retrivial.py", ["--max_tokens", "100", "--interval", "200"], "--max_tokens 100 is below --interval 200"),
        ("passkey_retrivial.py", ["--depths", "0,120"], "depths are percentages between 0 and 100"),
        ("passkey_retrivial.py", ["--max_tokens", "16", "--interval", "16"], "cannot hold the question"),
        ("passkey_retrivial.py", ["--peft_model", "no/such/adapter"], "no/such/adapter: no such folder"),
        ("needle_in_haystack.py", ["--answer", "Golden Gate"], "must be a non-empty part of --needle"),
        ("needle_in_haystack.py", ["--haystack", "no/such/book.txt"], "no/such/book.txt: no such file or folder"),
    ],
)
def test_bad_input_gives_one_line(capsys, tiny_model_dir, script, args, message):
    line = run_script_expecting_error(capsys, script, "--base_model", str(tiny_model_dir), *args)
    assert message in line


@pytest.mark.realmodel
def test_smollm2_finds_the_passkey_at_1k_tokens():
    from longctx.reading_model import load_for_inference
    from longctx.retrieval import generate_text

    model, tokenizer = load_for_inference(ReadingModel("smollm2"))
    for seed, depth in ((0, 0.2), (1, 0.8)):
        case = passkey_case(tokenizer, 1024, depth, seed=seed)
        reply = generate_text(model, tokenizer, case.input_ids, case.max_new_tokens)
        assert passkey_correct(reply, case.answer), (case.answer, reply)
