"""eval.py, eval_distributed.py (torchrun, 2 processes) and the token data tool, end to end on a tiny model."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer

from longctx.data import token_stream
from longctx.evaluation import evaluate_perplexity
from longctx.reading_model import ReadingModel, load_for_inference
from tests.scripts import ROOT, run_script, run_script_expecting_error

BOOK = ROOT / "data" / "pg19_eval" / "pg19test_29973.txt"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMON = ["--data_path", str(BOOK), "--max_tokens", "200", "--seq_len", "32,64", "--sliding_window", "24"]


def run_eval(model_dir, output, *extra):
    run_script("eval.py", "--base_model", model_dir, *COMMON, "--output_json", output, *extra)
    return json.loads(output.read_text())


@pytest.mark.parametrize("scoring", ["longlora", "strided"])
def test_eval_writes_the_library_figures_json_and_plot(tiny_model_dir, tmp_path, scoring):
    output = tmp_path / "eval.json"
    report = run_eval(tiny_model_dir, output, "--scoring", scoring)
    results = report["results"]
    assert [r["seq_len"] for r in results] == [32, 64] and all(r["scoring"] == scoring for r in results)
    assert report["config"]["data_tokens"] == 200 and report["config"]["seq_lens"] == [32, 64]
    assert (tmp_path / "eval.png").read_bytes()[:8] == PNG_MAGIC

    model, tokenizer = load_for_inference(ReadingModel(str(tiny_model_dir), context_size=64))
    tokens = token_stream(str(BOOK), tokenizer, max_tokens=200)
    for result in results:
        expected = evaluate_perplexity(model, tokens, result["seq_len"], scoring, 24, progress=False)
        assert result["windows"] == expected["windows"] and result["tokens"] == expected["tokens"]
        assert math.isclose(result["perplexity"], expected["perplexity"], rel_tol=1e-6)
    if scoring == "strided":
        assert all(r["tokens"] == 199 for r in results)  # every token after the first, once


def torchrun_eval(nproc, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "eval_distributed.py", *map(str, args)]
    # own session: a hang is killed with both workers, not just the launcher
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]


def test_eval_distributed_two_processes_gives_eval_numbers(tiny_model_dir, tmp_path):
    args = ["--base_model", tiny_model_dir, "--data_path", BOOK, "--max_tokens", "250", "--seq_len", "32,64", "--sliding_window", "24"]
    for scoring in ("strided", "longlora"):
        single = run_eval(tiny_model_dir, tmp_path / f"single-{scoring}.json", "--max_tokens", "250", "--scoring", scoring)
        torchrun_eval(2, *args, "--scoring", scoring, "--output_json", tmp_path / f"two-{scoring}.json")
        two = json.loads((tmp_path / f"two-{scoring}.json").read_text())
        assert two["config"]["processes"] == 2
        for expected, got in zip(single["results"], two["results"], strict=True):
            assert got["seq_len"] == expected["seq_len"] and got["windows"] == expected["windows"]
            assert got["tokens"] == expected["tokens"]
            assert math.isclose(got["loss"], expected["loss"], rel_tol=1e-6)
        # odd window counts (11 and 9, 9 and 7): the two shards were uneven
        assert all(r["windows"] % 2 for r in two["results"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seq_len", "64", "--context_size", "32"], "--seq_len 64 exceeds --context_size 32"),
        (["--seq_len", "16,abc"], "--seq_len 16,abc must be a comma-separated list"),
        (["--scoring", "magic"], "--scoring magic is not one of"),
        (["--scoring", "strided", "--seq_len", "32", "--sliding_window", "32"], "--sliding_window 32 must be below --seq_len 32"),
        (["--data_path", "no/such/book.txt"], "no/such/book.txt: no such file or folder"),
        (["--rope_method", "magic"], "--rope_method magic"),
    ],
)
def test_bad_flags_give_one_line(capsys, tiny_model_dir, args, message):
    line = run_script_expecting_error(capsys, "eval.py", "--base_model", str(tiny_model_dir), *args)
    assert message in line


def test_bad_data_gives_one_line(capsys, tiny_model_dir, tmp_path):
    from longctx.token_files import write_token_file

    short = write_token_file(list(range(50)), tmp_path / "short.bin", vocab_size=320)
    line = run_script_expecting_error(capsys, "eval.py", "--base_model", str(tiny_model_dir), "--data_path", str(short), "--seq_len", "64")
    assert "short.bin" in line and "50 tokens, fewer than one window of 64 tokens" in line
    (tmp_path / "latin1.txt").write_bytes("d\xe9j\xe0 vu ".encode("latin-1") * 50)
    line = run_script_expecting_error(capsys, "eval.py", "--base_model", str(tiny_model_dir), "--data_path", str(tmp_path / "latin1.txt"), "--seq_len", "64")
    assert "latin1.txt is not UTF-8 text" in line


def test_tokenize_data_tool_writes_uint16_that_eval_reads(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("The grass is green. The sky is blue.", encoding="utf-8")
    (tmp_path / "docs" / "b.jsonl").write_text(json.dumps({"text": "Here we go."}) + "\n", encoding="utf-8")
    output = tmp_path / "out.bin"
    run_script("longctx/tokenize_data.py", "--tokenizer", tiny_model_dir, "--input", f"{tmp_path / 'docs' / 'a.txt'},{tmp_path / 'docs' / 'b.jsonl'}", "--output", output)
    assert "(uint16)" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = []
    for text in ("The grass is green. The sky is blue.", "Here we go."):
        expected += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert np.fromfile(output, dtype="<u2").tolist() == expected

    line = run_script_expecting_error(capsys, "longctx/tokenize_data.py", "--tokenizer", str(tiny_model_dir), "--input", str(tmp_path / "nothing.txt"), "--output", str(tmp_path / "new.bin"))
    assert "nothing.txt: no such file or folder" in line


class WideTokenizer:
    """A stand-in for a 200k-vocabulary tokenizer: one id per character, all above 65535."""

    eos_token_id = 199_999
    vocab_size = 200_000

    def __len__(self):
        return self.vocab_size

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[70_000 + ord(c) for c in text] for text in texts]}


def test_tokenize_data_switches_to_uint32_and_never_wraps(tmp_path):
    from longctx.token_files import tokenize_to_file

    (tmp_path / "a.txt").write_text("abc", encoding="utf-8")
    path, count, width = tokenize_to_file(str(tmp_path / "a.txt"), str(tmp_path / "wide.bin"), WideTokenizer())
    assert path.name == "wide.u32.bin" and width == "uint32" and count == 4
    assert np.fromfile(path, dtype="<u4").tolist() == [70_097, 70_098, 70_099, 199_999]
    with pytest.raises(ValueError, match="does not fit"):
        tokenize_to_file(str(tmp_path / "a.txt"), str(tmp_path / "narrow.bin"), WideTokenizer(), dtype="uint16")


def test_weights_that_do_not_fit_the_model_are_one_line_before_anything_is_scored(capsys, tiny_model_dir, tmp_path):
    """An adapter from a model of the same width but fewer layers used to load half-applied (exit 0);
    one from another base printed a line per weight; a torn one gave a traceback."""
    from tests.test_merging import adapter_for_another_base
    from tests.tiny_models import save_moved_adapter, save_tiny_model

    def error(adapter):
        return run_script_expecting_error(
            capsys, "eval.py", "--base_model", tiny_model_dir, "--peft_model", adapter, *COMMON[:4], "--seq_len", "32", "--sliding_window", "24"
        )

    one_layer = save_tiny_model(tmp_path / "one-layer-model", num_hidden_layers=1)
    save_moved_adapter(one_layer, tmp_path / "fewer-layers")
    line = error(tmp_path / "fewer-layers")
    assert "trainable_params.safetensors lacks model.layers.1." in line and "fewer layers" in line
    (tmp_path / "fewer-layers" / "trainable_params.safetensors").unlink()
    line = error(tmp_path / "fewer-layers")
    assert "holds 8 of the 16 LoRA weights this model takes" in line and "layers.1." in line

    foreign = adapter_for_another_base(tmp_path / "foreign")
    assert "model.embed_tokens.weight has shape (128, 32), the model has (320, 64)" in error(foreign)
    (foreign / "trainable_params.safetensors").unlink()
    line = error(foreign)
    assert "adapter built for another base model" in line and "has shape (4, 32), this model takes (4, 64)" in line

    torn = tmp_path / "torn"
    save_moved_adapter(tiny_model_dir, torn)
    (torn / "adapter_model.safetensors").write_bytes((torn / "adapter_model.safetensors").read_bytes()[:200])
    line = error(torn)
    assert "cannot read" in line and "torn/adapter_model.safetensors" in line
