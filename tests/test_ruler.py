"""RULER (longctx.ruler_synthetic, ruler_qa, ruler_tasks, ruler_scoring) and ruler.py: prompts, answers, scoring, bad input."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from longctx.retrieval import generate_text
from longctx.ruler_scoring import (
    effective_length,
    generate_batch,
    postprocess,
    resumed_records,
    run_ruler,
    save_partial,
    string_match_all,
    string_match_part,
    summarize,
)
from longctx.ruler_synthetic import CWE_TEMPLATE, DEPTHS, NIAH_NEEDLE
from longctx.ruler_tasks import TASKS, check_lengths, largest_fitting, load_material, make_sample, select_tasks
from tests.scripts import run_script, run_script_expecting_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LENGTH = 2048  # holds every task's fixed part with the tiny tokenizer (qa_2's is ~1550 tokens)


@pytest.fixture(scope="module")
def material():
    return load_material()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def samples(tokenizer, material):
    return {task: make_sample(tokenizer, material, task, LENGTH, index=0, seed=3) for task in TASKS}


def test_thirteen_tasks_with_rulers_parameters():
    assert list(TASKS) == [
        "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
        "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2",
    ]
    assert [TASKS[t].options["haystack"] for t in list(TASKS)[:8]] == ["noise", "essay", "essay", "essay", "needle", "needle", "essay", "essay"]
    assert TASKS["niah_multikey_3"].options["key_type"] == TASKS["niah_multikey_3"].options["value_type"] == "uuids"
    assert TASKS["cwe"].options == {"num_common": 10, "common_repeats": 30, "uncommon_repeats": 3}
    assert [TASKS[t].max_new_tokens for t in ("niah_single_1", "vt", "cwe", "fwe", "qa_1")] == [128, 30, 120, 50, 32]
    assert [TASKS[t].metric for t in ("niah_multivalue", "vt", "cwe", "fwe", "qa_1", "qa_2")] == ["all"] * 4 + ["part"] * 2
    assert DEPTHS[:3] == (0, 3, 5) and DEPTHS[-1] == 100 and len(DEPTHS) == 40


def test_select_tasks():
    assert select_tasks("all") == list(TASKS)
    assert select_tasks("vt, qa_1,niah_single_1") == ["niah_single_1", "vt", "qa_1"]  # RULER's order
    assert select_tasks("aggregation,qa") == ["cwe", "fwe", "qa_1", "qa_2"]
    assert len(select_tasks("retrieval")) == 8 and select_tasks("multi_hop") == ["vt"]
    with pytest.raises(ValueError, match="--tasks: unknown task 'niah'"):
        select_tasks("niah")


def test_samples_are_deterministic_per_seed(tokenizer, material, samples):
    for task in ("niah_multikey_1", "vt", "cwe", "fwe", "qa_2"):
        again = make_sample(tokenizer, material, task, LENGTH, index=0, seed=3)
        assert again == samples[task]
        other = make_sample(tokenizer, material, task, LENGTH, index=1, seed=3)
        assert other.references != again.references
        assert make_sample(tokenizer, material, task, LENGTH, index=0, seed=4).references != again.references


@pytest.mark.parametrize("task", [t for t in TASKS if t not in ("cwe", "fwe")])
def test_answers_sit_in_their_evidence_and_nowhere_else(tokenizer, samples, task):
    sample = samples[task]
    text = tokenizer.decode(sample.input_ids)
    assert sample.references and len(sample.evidence) == len(sample.depths)
    for line in sample.evidence:
        assert text.count(line) == 1, line
    for reference in sample.references:
        assert text.count(reference) == sum(line.count(reference) for line in sample.evidence) >= 1, reference
    # the evidence lines lie in the context in the order of their stated depths
    by_depth = sorted(sample.evidence, key=lambda line: sample.depths[sample.evidence.index(line)])
    assert by_depth == sorted(sample.evidence, key=text.index) and all(0 <= d <= 1 for d in sample.depths)


def test_needles_at_their_stated_depths(tokenizer, material):
    for task in ("niah_single_1", "niah_single_2", "niah_multivalue", "niah_multikey_2"):
        for index in range(3):
            sample = make_sample(tokenizer, material, task, LENGTH, index)
            text = tokenizer.decode(sample.input_ids)
            context = text[text.index("afterwards.\n") + len("afterwards.\n") : text.rindex("\nWhat ")]
            for line, depth in zip(sample.evidence, sample.depths):
                assert context.index(line) / len(context) == pytest.approx(depth, abs=1e-3)
                assert line.startswith(NIAH_NEEDLE.split("{")[0]) and " is: " in line


def test_niah_wording(tokenizer, samples):
    single = tokenizer.decode(samples["niah_single_1"].input_ids)
    assert "<|user|>\nA special magic number is hidden within the following text." in single
    assert re.search(
        r"What is the special magic number for (\S+) mentioned in the provided text\?</s>\n<\|assistant\|>\n"
        r"The special magic number for \1 mentioned in the provided text is$",
        single,
    )
    assert "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n" in single
    multi = tokenizer.decode(samples["niah_multiquery"].input_ids)
    assert len(samples["niah_multiquery"].references) == 4
    assert "Some special magic numbers are hidden" in multi
    assert re.search(r"What are all the special magic numbers for \S+, \S+, \S+, and \S+ mentioned", multi)


def test_multikey_decoys_are_not_evidence(tokenizer, samples):
    sample = samples["niah_multikey_1"]
    text = tokenizer.decode(sample.input_ids)
    assert len(sample.evidence) == 1 and text.count("One of the special magic numbers for ") == 4
    assert tokenizer.decode(samples["niah_multikey_2"].input_ids).count("One of the special magic numbers for ") > 20


def test_plain_prompt_without_chat_template(tiny_model_dir, material):
    plain = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain.chat_template = None
    text = plain.decode(make_sample(plain, material, "qa_1", LENGTH, 0).input_ids)
    assert "<|user|>" not in text and re.search(r"\n\nQuestion: (Where|Who) .+\? Answer:$", text)


def test_vt_chain_and_example(tokenizer, samples):
    sample = samples["vt"]
    text = tokenizer.decode(sample.input_ids)
    value = re.search(r"VAR \w+ = (\d+)", sample.evidence[0]).group(1)
    assert sample.evidence == [f"VAR {sample.references[0]} = {value}"] + [
        f"VAR {after} = VAR {before}" for before, after in zip(sample.references, sample.references[1:])
    ]
    assert text.endswith(f"5 variables are assigned the value {value}, they are:")
    assert text.count("Memorize and track the chain(s)") == 2  # the worked example, then the question
    example_answer = re.search(r"they are: ((?:[A-Z]{3} ){4}[A-Z]{3})\n", text).group(1).split()
    assert all(f"VAR {name}" in text for name in example_answer)


def test_cwe_counts(tokenizer, samples):
    sample = samples["cwe"]
    text = tokenizer.decode(sample.input_ids)
    question = CWE_TEMPLATE.split("{context}")[0].format()
    main_list = text[text.rindex(question) + len(question) : text.rindex("\nQuestion:")]
    counts = Counter(re.findall(r"\d+\. ([a-z]+)", main_list))
    assert sorted(counts[word] for word in sample.references) == [6] * 10  # RULER's short-length regime
    assert set(counts.values()) == {6, 1} and len(sample.references) == 10
    for word in sample.references:  # only in the main list, and inside no other word
        assert len(re.findall(word, text)) == 6
    assert text.endswith("Answer: The top 10 words that appear most often in the list are:")


def test_fwe_counts(tokenizer, samples):
    sample = samples["fwe"]
    text = tokenizer.decode(sample.input_ids)
    context = text[text.index("coded words. ") + len("coded words. ") : text.rindex("\nQuestion:")]
    counts = Counter(context.split()).most_common()
    assert counts[0][0] == "..." and [word for word, _ in counts[1:4]] == sample.references
    assert counts[1][1] > counts[2][1] > counts[3][1] > counts[4][1]
    assert all(text.count(word) == count for word, count in counts[1:4])


def test_qa_facts(tokenizer, samples):
    one, two = (tokenizer.decode(samples[task].input_ids) for task in ("qa_1", "qa_2"))
    assert re.search(r"Document 1:\n", one) and one.count("Document ") >= 5
    assert len(samples["qa_2"].evidence) == 2 and samples["qa_2"].evidence[1].endswith(f"lives in {samples['qa_2'].references[0]}.")
    assert "Question: In which city does the person who was given the " in two


def test_fill_and_fixed_part(tokenizer, material, samples):
    for sample in samples.values():
        assert sample.total_tokens <= LENGTH
        if not sample.task.startswith("niah_multikey_"):
            assert sample.total_tokens >= 0.99 * LENGTH, sample.task
    with pytest.raises(ValueError, match=r"--lengths 1000 is below the fixed part of vt's prompt: \d+ tokens"):
        make_sample(tokenizer, material, "vt", 1000, 0)
    with pytest.raises(ValueError, match="--lengths 200 is below the fixed part of fwe"):
        check_lengths(tokenizer, material, ["fwe", "niah_single_1"], [2048, 200])


def test_largest_fitting():
    assert largest_fitting(100, lambda n: 10 + 3 * n) == 30
    assert largest_fitting(10_000, lambda n: 7 + n + n * n // 50) == max(n for n in range(2000) if 7 + n + n * n // 50 <= 10_000)
    assert largest_fitting(5, lambda n: 5 + n) == 0
    with pytest.raises(ValueError, match="runs out"):
        largest_fitting(1000, lambda n: 10 + min(n, 20))


@pytest.mark.parametrize(
    "reply,references,all_score,part_score",
    [
        (" 1234567.", ["1234567"], 1.0, 1.0),
        ("The numbers are 1234567 and 7654321", ["1234567", "7654321", "1111111"], 2 / 3, 1.0),
        ("\n\tANSWER: Lisbon\x00", ["lisbon"], 1.0, 1.0),
        ("Oslo", ["Lisbon"], 0.0, 0.0),
        ("1. pearls 2. Voices 3. Century", ["pearls", "voices", "century", "titles"], 0.75, 1.0),
    ],
)
def test_rulers_string_match(reply, references, all_score, part_score):
    assert string_match_all(reply, references) == pytest.approx(all_score)
    assert string_match_part(reply, references) == part_score


def test_postprocess():
    assert postprocess("  a\x00b\tc \n") == "a\nb\nc"


def test_effective_length():
    averages = {2048: 90.0, 4096: 86.0, 8192: 70.0, 16384: 88.0}
    assert effective_length(averages, 85.6) == 4096  # 16k passing again does not count: the run stops at 8k
    assert effective_length(averages, 95) is None
    assert effective_length(averages, 50) == 16384


def test_summarize_hand_made_records():
    records = [
        {"task": task, "length": length, "score": score}
        for task, length, score in [
            ("niah_single_1", 1024, 1.0), ("niah_single_1", 1024, 1.0), ("niah_single_1", 2048, 0.5), ("niah_single_1", 2048, 0.0),
            ("qa_1", 1024, 0.0), ("qa_1", 1024, 1.0), ("qa_1", 2048, 0.0), ("qa_1", 2048, 1.0),
        ]
    ]
    summary = summarize(records, threshold=85.6)
    assert summary["scores"] == {"niah_single_1": {1024: 100.0, 2048: 25.0}, "qa_1": {1024: 50.0, 2048: 50.0}}
    assert summary["average"] == {1024: 75.0, 2048: 37.5}
    assert summary["effective_length"] is None and summary["threshold"] == 85.6
    assert summary["relative_threshold"] == pytest.approx(64.2) and summary["relative_effective_length"] == 1024
    assert summary["families"] == {"niah_single_1": "retrieval", "qa_1": "qa"}


def test_run_ruler_batches_and_scores_a_stub(tokenizer, material):
    """A stub that answers from the prompt when it is short: scores must follow, batches stay within one task."""
    calls = []

    def stub_generate(model, tokenizer_, prompts, max_new_tokens):
        calls.append((len(prompts), max_new_tokens))
        texts = [tokenizer.decode(p) for p in prompts]
        return [" ".join(re.findall(r"is: (\d+)\.", t)) if len(p) < 1500 else "no idea" for t, p in zip(texts, prompts)]

    make = lambda task, length, index: make_sample(tokenizer, material, task, length, index)
    records = run_ruler(None, tokenizer, ["niah_single_1", "niah_multivalue"], [1024, 2048], 3, make, 2, stub_generate, progress=False)
    assert len(records) == 12 and calls == [(2, 128), (1, 128)] * 4
    scores = summarize(records)["scores"]
    assert scores == {"niah_single_1": {1024: 100.0, 2048: 0.0}, "niah_multivalue": {1024: 100.0, 2048: 0.0}}


class Interrupted(Exception):
    """What a stub generator raises to stop a run midway, as Ctrl-C would."""


def test_an_interrupted_run_leaves_its_finished_cells_and_resumes_from_them(tokenizer, material, tmp_path):
    output, config = tmp_path / "ruler.json", {"seed": 0, "base_model": "tiny"}
    answered = []

    def stub_generate(model, tokenizer_, prompts, max_new_tokens):
        answered.append(len(prompts))
        if len(answered) == 3:  # the first batch of the second cell
            raise Interrupted
        return ["no idea"] * len(prompts)

    make = lambda task, length, index: make_sample(tokenizer, material, task, length, index)
    save = lambda records: save_partial(records, config, 85.6, output, ["niah_single_1", "vt"])
    tasks, lengths = ["niah_single_1", "vt"], [1792]
    with pytest.raises(Interrupted):
        run_ruler(None, tokenizer, tasks, lengths, 3, make, 2, stub_generate, progress=False, after_cell=save)
    partial = json.loads(output.read_text())
    assert partial["complete"] is False and [r["task"] for r in partial["records"]] == ["niah_single_1"] * 3
    assert partial["scores"] == {"niah_single_1": {"1792": 0.0}} and partial["average"] == {}

    done = resumed_records(output, config, ["seed", "base_model"])
    answered.clear()
    records = run_ruler(None, tokenizer, tasks, lengths, 4, make, 2, lambda *a: ["no idea"] * len(a[2]), progress=False, done=done)
    assert [(r["task"], r["index"]) for r in records] == [("niah_single_1", i) for i in range(4)] + [("vt", i) for i in range(4)]
    assert records[:3] == partial["records"]  # kept as answered, not answered again
    with pytest.raises(ValueError, match="was run with seed = 0, this run has 1"):
        resumed_records(output, {**config, "seed": 1}, ["seed", "base_model"])


def test_ruler_script_resumes(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "ruler.json"
    common = ["--base_model", tiny_model_dir, "--lengths", "1792", "--tasks", "niah_single_1,vt", "--output_json", output]
    run_script("ruler.py", *common, "--num_samples", "1", "--batch_size", "1")
    first = json.loads(output.read_text())
    run_script("ruler.py", *common, "--num_samples", "2", "--batch_size", "1", "--resume", "True")
    resumed = json.loads(output.read_text())
    assert resumed["complete"] is True and len(resumed["records"]) == 4
    kept = [r for r in resumed["records"] if r["index"] == 0]
    assert kept == first["records"]
    line = run_script_expecting_error(capsys, "ruler.py", *common, "--num_samples", "2", "--batch_size", "2", "--resume", "True")
    assert "was run with batch_size = 1, this run has 2" in line


def test_the_bundled_haystack_is_named_as_in_every_clone(material):
    """--resume compares the haystack: an absolute path would refuse a result file made in another clone."""
    bundled = Path(__file__).resolve().parent.parent / "data" / "pg19_eval"
    assert material.source == "data/pg19_eval"
    assert load_material(str(bundled)).text == material.text


def test_batched_generation_matches_one_at_a_time(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [tokenizer("The grass is green. The sky is")["input_ids"], tokenizer("Here we go.")["input_ids"]]
    batched = generate_batch(model, tokenizer, prompts, max_new_tokens=6)
    assert batched == [generate_text(model, tokenizer, prompt, 6) for prompt in prompts]


def test_ruler_script(tiny_model_dir, tmp_path):
    output = tmp_path / "ruler.json"
    run_script(
        "ruler.py", "--base_model", tiny_model_dir, "--lengths", "1792,2048", "--tasks", "niah_single_1,vt,fwe",
        "--num_samples", "2", "--batch_size", "2", "--output_json", output,
    )
    report = json.loads(output.read_text())
    assert {"scores", "average", "effective_length", "threshold", "relative_effective_length", "config", "records"} <= set(report)
    assert report["tasks"] == ["niah_single_1", "vt", "fwe"] and report["threshold"] == 85.6
    assert set(report["scores"]["vt"]) == {"1792", "2048"} and set(report["average"]) == {"1792", "2048"}
    assert all(0 <= score <= 100 for row in report["scores"].values() for score in row.values())
    assert len(report["records"]) == 12 and all(r["total_tokens"] <= r["length"] for r in report["records"])
    assert report["config"]["rope_parameters"]["factor"] == 32.0  # RoPE scaled from the tiny model's 64 to 2048
    assert (tmp_path / "ruler.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tasks", "niah_single_1,nope"], "--tasks: unknown task 'nope'"),
        (["--lengths", "300,2048", "--tasks", "vt"], "--lengths 300 is below the fixed part of vt's prompt"),
        (["--lengths", "2k"], "--lengths 2k must be a comma-separated list of integers"),
        (["--threshold", "0"], "--threshold must be in (0, 100]"),
        (["--num_samples", "0"], "--num_samples must be positive"),
        (["--resume", "True"], "--resume goes on from --output_json's results: name the file"),
        (["--haystack", "no/such/book.txt"], "no/such/book.txt: no such file or folder"),
    ],
)
def test_bad_input_gives_one_line(capsys, tiny_model_dir, args, message):
    line = run_script_expecting_error(capsys, "ruler.py", "--base_model", str(tiny_model_dir), *args)
    assert message in line


@pytest.mark.realmodel
def test_smollm2_lengths_within_one_percent(material):
    from longctx.modeling import load_tokenizer, resolve_model_path

    smollm2 = load_tokenizer(resolve_model_path("smollm2"))
    for length in (2048, 4096, 8192):
        for task in TASKS:
            for index in range(2):
                sample = make_sample(smollm2, material, task, length, index)
                assert sample.total_tokens <= length
                # niah_multikey_2/3 grow by whole distractor needles (multikey_3's pairs of UUIDs: ~80 tokens)
                slack = 90 if task.startswith("niah_multikey_") and length < 8192 else 0.01 * length
                assert sample.total_tokens >= length - slack, (task, length, sample.total_tokens)
