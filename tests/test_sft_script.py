"""supervised-fine-tune.py and the QA data tool end to end on a tiny model; bad input gives one line."""

import json

import pytest
from safetensors.torch import load_file

from tests.scripts import run_script, run_script_expecting_error


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    """Short generated QA records (train from data/pg19, held-out from data/pg19_eval)."""
    folder = tmp_path_factory.mktemp("qa")
    run_script("longctx/build_qa_data.py", "--output", folder / "train.json", "--num_samples", "10",
               "--min_tokens", "20", "--max_tokens", "300", "--seed", "0")
    run_script("longctx/build_qa_data.py", "--output", folder / "heldout.json", "--books", "data/pg19_eval",
               "--num_samples", "2", "--min_tokens", "20", "--max_tokens", "60", "--seed", "1")
    return folder


def sft(model_dir, output_dir, data, *extra):
    run_script(
        "supervised-fine-tune.py",
        "--model_name_or_path", model_dir,
        "--data_path", data,
        "--output_dir", output_dir,
        "--model_max_length", "512",
        "--learning_rate", "1e-2",
        "--warmup_steps", "0",
        "--save_steps", "100",
        "--seed", "0",
        "--disable_tqdm", "True",
        "--report_to", "none",
        *extra,
    )


def test_packed_sft_trains_saves_and_reports(tiny_model_dir, tmp_path, qa_files):
    sft(tiny_model_dir, tmp_path, qa_files / "train.json", "--batch_method", "pack", "--pack_loss", "True",
        "--max_steps", "2", "--gradient_accumulation_steps", "2", "--group_size", "32",
        "--eval_data_path", qa_files / "heldout.json", "--eval_max_new_tokens", "4")
    results = json.loads((tmp_path / "sft-results.json").read_text())
    assert results["steps"] == 2 and results["batch_method"] == "pack" and results["pack_loss"] is True
    assert results["samples"] == 10 and results["samples_cut"] > 0  # the two longest exceed 512 tokens
    assert results["rows"] < results["samples"]
    assert [entry["step"] for entry in results["loss_curve"]] == [1, 2]
    for check in ("accuracy_before", "accuracy_after"):
        assert results[check]["questions"] == 2 and len(results[check]["answers"]) == 2
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "adapter_model.safetensors").exists()
    assert "model.embed_tokens.weight" in load_file(tmp_path / "trainable_params.safetensors")


def test_sorted_batching_with_llama2_prompts(tiny_model_dir, tmp_path, qa_files):
    sft(tiny_model_dir, tmp_path, qa_files / "train.json", "--batch_method", "sort", "--prompt_template", "llama2",
        "--per_device_train_batch_size", "2", "--max_steps", "1")
    assert json.loads((tmp_path / "sft-results.json").read_text())["rows"] == 10


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script("supervised-fine-tune.py", "--help")
    assert exit_info.value.code == 0 and "--batch_method" in capsys.readouterr().out


def test_bad_input_gives_one_line(capsys, tiny_model_dir, tmp_path):
    lines = tmp_path / "chat.jsonl"
    lines.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n')
    assert "chat.jsonl:2: invalid JSON" in run_script_expecting_error(
        capsys, "supervised-fine-tune.py", "--model_name_or_path", tiny_model_dir, "--data_path", lines, "--output_dir", tmp_path / "out"
    )
    unusable = tmp_path / "unusable.json"
    unusable.write_text(json.dumps([{"instruction": "no answer"}, {"messages": []}]))
    message = run_script_expecting_error(
        capsys, "supervised-fine-tune.py", "--model_name_or_path", tiny_model_dir, "--data_path", unusable, "--output_dir", tmp_path / "out"
    )
    assert "no usable sample" in message and "missing 'output'" in message and "empty 'messages'" in message
    assert "--data_path is required" in run_script_expecting_error(capsys, "supervised-fine-tune.py", "--output_dir", tmp_path / "out")
    assert "--batch_method" in run_script_expecting_error(
        capsys, "supervised-fine-tune.py", "--data_path", unusable, "--batch_method", "bucket", "--output_dir", tmp_path / "out"
    )


def test_accuracy_helper_reads_base_and_adapter(capsys, tiny_model_dir, tmp_path, qa_files):
    sft(tiny_model_dir, tmp_path / "sft", qa_files / "train.json", "--batch_method", "pack", "--max_steps", "1")
    for peft in ([], ["--peft_model", tmp_path / "sft"]):
        output = tmp_path / f"accuracy{len(peft)}.json"
        run_script("longctx/qa_accuracy.py", "--base_model", tiny_model_dir, *peft, "--context_size", "512",
                   "--eval_data_path", qa_files / "heldout.json", "--eval_max_new_tokens", "4", "--output_json", output)
        result = json.loads(output.read_text())
        assert result["questions"] == 2 and 0 <= result["correct"] <= 2 and len(result["answers"]) == 2
        assert result["answers"][0]["answer"] in json.loads((qa_files / "heldout.json").read_text())[0]["output"]
    assert "--eval_data_path is required" in run_script_expecting_error(capsys, "longctx/qa_accuracy.py")
