"""Adapter folders remember their RoPE: written by training, applied by every reading script and the merge."""

import json
import shutil

import pytest
import torch

import longctx.reading_model
from longctx.reading_model import DualChunkSizes, ReadingModel, load_for_inference
from longctx.rope import RopeRequest
from longctx.training_record import RECORD_FILE, read_record
from tests.scripts import run_script, run_script_expecting_error
from tests.test_fine_tune_script import fine_tune

ROPE_METHODS_TRAINED = ("linear", "dynamic", "yarn", "llama3", "theta")


@pytest.fixture(scope="module")
def yarn_adapter(tiny_model_dir, tmp_path_factory):
    """A tiny model trained two steps at 128 tokens (twice its window) with YaRN, a checkpoint per step."""
    output_dir = tmp_path_factory.mktemp("yarn-adapter")
    fine_tune(tiny_model_dir, output_dir, "--max_steps", "2", "--skip_eval", "True", "--rope_method", "yarn")
    return output_dir


def test_training_writes_the_record_into_the_folder_and_every_checkpoint(yarn_adapter):
    for folder in (yarn_adapter, yarn_adapter / "checkpoint-1", yarn_adapter / "checkpoint-2"):
        record = read_record(folder)
        assert record.rope_method == "yarn" and record.model_max_length == 128 and record.attention == "s2_attn"
        assert record.rope_parameters["rope_type"] == "yarn" and record.rope_factor == 2.0
        assert record.rope_parameters["original_max_position_embeddings"] == 64
        assert record.max_position_embeddings == 128


def logits_of(model, length: int = 100) -> torch.Tensor:
    tokens = torch.arange(3, 3 + length).remainder(120)[None]
    with torch.no_grad():
        return model(tokens).logits


def test_reading_applies_the_record_with_no_flag(yarn_adapter, tiny_model_dir, tmp_path):
    model, _ = load_for_inference(ReadingModel(str(tiny_model_dir), peft_model=yarn_adapter, context_size=100))
    assert model.config.rope_parameters["rope_type"] == "yarn" and model.config.rope_parameters["factor"] == 2.0
    explicit, _ = load_for_inference(
        ReadingModel(str(tiny_model_dir), peft_model=yarn_adapter, context_size=100, rope=RopeRequest("yarn"))
    )
    torch.testing.assert_close(logits_of(model), logits_of(explicit))
    # the same weights read under LongLoRA's rule (no record: linear from the context size) differ
    bare = tmp_path / "bare"
    shutil.copytree(yarn_adapter, bare, ignore=shutil.ignore_patterns("checkpoint-*", RECORD_FILE))
    linear, _ = load_for_inference(ReadingModel(str(tiny_model_dir), peft_model=bare, context_size=128))
    assert linear.config.rope_parameters["rope_type"] == "linear"
    assert not torch.allclose(logits_of(model), logits_of(linear), atol=1e-4)


def test_record_beats_the_dca_default_and_sets_its_unit(yarn_adapter, tiny_model_dir):
    model, _ = load_for_inference(
        ReadingModel(str(tiny_model_dir), peft_model=yarn_adapter, context_size=512, dca=DualChunkSizes())
    )
    assert model.config.rope_parameters["rope_type"] == "yarn" and model.config.max_position_embeddings == 128
    assert model.config.dual_chunk_attention["pretraining_length"] == 128  # the trained window, not the native 64


@pytest.mark.parametrize(
    "flags, named",
    [(("--rope_method", "linear"), "--rope_method linear"), (("--rope_factor", "4"), "--rope_factor 4.0")],
)
def test_a_contradicting_flag_is_refused_naming_both(yarn_adapter, tiny_model_dir, capsys, flags, named):
    line = run_script_expecting_error(
        capsys, "eval.py", "--base_model", tiny_model_dir, "--peft_model", yarn_adapter, "--seq_len", "64", *flags
    )
    assert named in line and "yarn x2" in line and RECORD_FILE in line


class Loaded(Exception):
    """Raised by the spy once a script has loaded its model: the rest of the script is not under test."""


@pytest.fixture
def spy_on_loading(monkeypatch):
    seen = {}
    real = longctx.reading_model.load_for_inference

    def spy(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)
        seen["rope"] = dict(model.config.rope_parameters)
        raise Loaded

    monkeypatch.setattr(longctx.reading_model, "load_for_inference", spy)
    return seen


@pytest.mark.parametrize(
    "script, extra",
    [
        ("eval.py", ("--seq_len", "64")),
        ("eval_distributed.py", ("--seq_len", "64")),
        ("passkey_retrivial.py", ("--max_tokens", "64", "--interval", "64", "--num_tests", "1")),
        ("needle_in_haystack.py", ("--max_tokens", "64", "--interval", "64")),
        ("inference.py", ("--material", "README.md", "--question", "What?", "--truncate", "middle")),
        ("demo.py", ()),
    ],
)
def test_every_reading_script_reads_the_adapter_as_trained(yarn_adapter, tiny_model_dir, spy_on_loading, script, extra):
    with pytest.raises(Loaded):
        run_script(script, "--base_model", tiny_model_dir, "--peft_model", yarn_adapter, *extra)
    assert spy_on_loading["rope"]["rope_type"] == "yarn" and spy_on_loading["rope"]["factor"] == 2.0


def test_merge_needs_no_rope_flag_and_keeps_the_logits(yarn_adapter, tiny_model_dir, tmp_path):
    run_script(
        "merge_lora_weights_and_save_hf_model.py",
        "--base_model", tiny_model_dir, "--peft_model", yarn_adapter, "--save_path", tmp_path / "merged",
    )
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["max_position_embeddings"] == 128
    merged, _ = load_for_inference(ReadingModel(str(tmp_path / "merged")))
    unmerged, _ = load_for_inference(ReadingModel(str(tiny_model_dir), peft_model=yarn_adapter))
    torch.testing.assert_close(logits_of(merged), logits_of(unmerged), rtol=1e-4, atol=1e-4)


def test_get_trainable_weights_carries_the_record(yarn_adapter, tiny_model_dir, tmp_path):
    run_script(
        "get_trainable_weights.py",
        "--checkpoint_path", yarn_adapter / "checkpoint-2", "--trainable_params", "embed,norm",
        "--output_dir", tmp_path / "extracted", "--base_model", tiny_model_dir,
    )
    assert read_record(tmp_path / "extracted") == read_record(yarn_adapter / "checkpoint-2")
    extracted, _ = load_for_inference(ReadingModel(str(tiny_model_dir), peft_model=tmp_path / "extracted"))
    final, _ = load_for_inference(ReadingModel(str(tiny_model_dir), peft_model=yarn_adapter))
    assert extracted.config.rope_parameters == final.config.rope_parameters
    torch.testing.assert_close(logits_of(extracted), logits_of(final))


@pytest.mark.parametrize("method", ROPE_METHODS_TRAINED)
def test_every_rope_method_trains(tiny_model_dir, tmp_path, method):
    fine_tune(tiny_model_dir, tmp_path, "--max_steps", "1", "--skip_eval", "True", "--rope_method", method)
    results = json.loads((tmp_path / "fine-tune-results.json").read_text())
    assert results["steps"] == 1 and results["train_loss"] == pytest.approx(results["train_loss"])  # finite
    record = read_record(tmp_path)
    assert record.rope_method == method
    expected_type = "default" if method == "theta" else method
    assert record.rope_parameters["rope_type"] == expected_type
    if method == "theta":
        assert record.rope_theta > 10_000.0  # the base grew


def test_rope_theta_reaches_the_config(tiny_model_dir, tmp_path):
    fine_tune(tiny_model_dir, tmp_path, "--max_steps", "1", "--skip_eval", "True", "--rope_theta", "123456")
    results = json.loads((tmp_path / "fine-tune-results.json").read_text())
    assert results["rope"]["rope_theta"] == 123456.0 and results["rope"]["rope_type"] == "default"
    assert read_record(tmp_path).rope_method == "theta"


def test_rope_theta_with_another_method_is_refused(tiny_model_dir, tmp_path, capsys):
    line = run_script_expecting_error(
        capsys, "fine-tune.py", "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path,
        "--rope_method", "yarn", "--rope_theta", "1e6",
    )
    assert "--rope_theta" in line and not any(tmp_path.iterdir())


def test_extend_bench_compares_the_adapter_with_training_free_readers(yarn_adapter, tiny_model_dir, tmp_path):
    """bench/extend.py on the tiny model: every method read up to its reach, on the same tokens."""
    output = tmp_path / "extend.json"
    run_script(
        "bench/extend.py", "--model", tiny_model_dir, "--peft_model", yarn_adapter, "--seq_lens", "32,64,128,256",
        "--books", "data/pg19_eval/pg19test_29973.txt", "--output_json", output,
        "--methods", "native,sliding,yarn:2,dca,trained,trained+dca",
    )
    runs = {run["method"]: run["perplexity"] for run in json.loads(output.read_text())["runs"]}
    reach = {method: max(map(int, figures)) for method, figures in runs.items()}
    assert reach == {"native": 128, "sliding": 256, "yarn:2": 128, "dca": 256, "trained": 128, "trained+dca": 256}
    # inside the native window the sliding reference is the plain model on the same tokens
    assert runs["sliding"]["64"] == pytest.approx(runs["native"]["64"], rel=1e-9)
    assert runs["trained+dca"]["32"] == pytest.approx(runs["trained"]["32"], rel=1e-6)  # one DCA block: plain attention
    assert output.with_suffix(".png").stat().st_size > 0
