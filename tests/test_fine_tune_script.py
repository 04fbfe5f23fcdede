"""fine-tune.py end to end on a tiny model: checkpoints, resume, before/after perplexity, bad input."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.scripts import run_script, run_script_expecting_error


def fine_tune(model_dir, output_dir, *extra):
    run_script(
        "fine-tune.py",
        "--model_name_or_path", model_dir,
        "--output_dir", output_dir,
        "--model_max_length", "128",
        "--group_size_ratio", "0.25",
        "--learning_rate", "1e-2",
        "--warmup_steps", "0",
        "--save_steps", "1",
        "--max_train_rows", "8",
        "--eval_windows", "2",
        "--seed", "7",
        "--dataloader_num_workers", "0",
        "--disable_tqdm", "True",
        *extra,
    )


def test_trains_saves_and_reports_perplexity(tiny_model_dir, tmp_path):
    fine_tune(tiny_model_dir, tmp_path, "--max_steps", "2")
    for folder in (tmp_path, tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"):
        assert (folder / "adapter_model.safetensors").exists()
        assert (folder / "adapter_config.json").exists()
        trainable = load_file(folder / "trainable_params.safetensors")
        assert "model.embed_tokens.weight" in trainable and "model.norm.weight" in trainable
        assert not any("lora_" in name for name in trainable)
    results = json.loads((tmp_path / "fine-tune-results.json").read_text())
    assert results["steps"] == 2 and results["s2_attn"] is True
    assert results["rope"]["rope_type"] == "linear" and results["rope"]["factor"] == 2.0
    before, after = results["perplexity_before"], results["perplexity_after"]
    assert before["seq_len"] == 128 and before["windows"] == 2
    # the figure a flag gets without training, on the same rows: YaRN at the same length
    free = results["perplexity_training_free"]
    assert free["method"] == "yarn" and free["tokens"] == before["tokens"] and free["perplexity"] != before["perplexity"]
    assert after["perplexity"] < before["perplexity"]  # lr 1e-2 on a random model learns the text's unigrams
    embed = load_file(tmp_path / "trainable_params.safetensors")["model.embed_tokens.weight"]
    original = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(embed, original)


def test_resume_continues_exactly_where_it_stopped(tiny_model_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fine_tune(tiny_model_dir, straight, "--max_steps", "4", "--skip_eval", "True")
    fine_tune(tiny_model_dir, resumed, "--max_steps", "2", "--skip_eval", "True")
    fine_tune(tiny_model_dir, resumed, "--max_steps", "4", "--skip_eval", "True", "--resume_from_checkpoint", "latest")
    for name in ("trainable_params.safetensors", "adapter_model.safetensors"):
        expected, got = load_file(straight / name), load_file(resumed / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_full_attention_full_fine_tuning(tiny_model_dir, tmp_path):
    fine_tune(tiny_model_dir, tmp_path, "--max_steps", "1", "--use_full_attn", "True", "--low_rank_training", "False", "--skip_eval", "True")
    assert (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / "adapter_config.json").exists()


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script("fine-tune.py", "--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model_max_length" in out and "--use_flash_attn" in out and "torchrun" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data_path", "no/such/file.txt"], "no/such/file.txt"),
        (["--model_name_or_path", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model_max_length", "0"], "--model_max_length must be above zero"),
        (["--group_size", "7"], "--group_size must be an even number"),
        (["--rope_method", "magic"], "--rope_method magic"),
    ],
)
def test_bad_input_gives_one_line(capsys, tmp_path, tiny_model_dir, args, message):
    base = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path), "--max_steps", "1"]
    line = run_script_expecting_error(capsys, "fine-tune.py", *base, *args)
    assert message in line


def test_token_ids_beyond_vocabulary_are_refused(capsys, tmp_path, tiny_model_dir):
    from longctx.token_files import write_token_file

    path = write_token_file(list(range(1000)) * 2, tmp_path / "tokens.bin", vocab_size=65536)
    base = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "run"), "--max_steps", "1"]
    line = run_script_expecting_error(capsys, "fine-tune.py", *base, "--data_path", str(path), "--model_max_length", "64")
    assert "tokens.bin" in line and "999" in line


def test_training_defaults_checkpoint_activations_without_deprecated_names_or_pinning(recwarn, tmp_path):
    from longctx.args import LongContextTrainingArguments

    args = LongContextTrainingArguments(output_dir=str(tmp_path))
    assert args.gradient_checkpointing is True
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning) and "checkpointing" in str(w.message)]
    assert LongContextTrainingArguments(output_dir=str(tmp_path), gradient_checkpointing=False).gradient_checkpointing is False
    assert args.dataloader_pin_memory is torch.cuda.is_available()  # pinning without an accelerator only warns


def test_another_runs_output_dir_is_never_reused_silently(capsys, tmp_path, tiny_model_dir):
    """Another run's adapter and checkpoint-9 stay untouched (--save_total_limit 1 used to delete the
    checkpoint); the check comes before the model loads."""
    run = tmp_path / "run"
    (run / "checkpoint-9").mkdir(parents=True)
    (run / "adapter_model.safetensors").write_bytes(b"another run")
    base = ["--model_name_or_path", "no-such-model", "--max_steps", "1", "--save_total_limit", "1"]
    line = run_script_expecting_error(capsys, "fine-tune.py", *base, "--output_dir", run)
    assert "--output_dir" in line and "already exists and is not empty" in line and "--overwrite_output_dir True" in line
    assert (run / "checkpoint-9").is_dir() and (run / "adapter_model.safetensors").read_bytes() == b"another run"
    line = run_script_expecting_error(capsys, "fine-tune.py", *base, "--output_dir", run / "adapter_model.safetensors")
    assert "is a file, not a folder" in line
    line = run_script_expecting_error(
        capsys, "fine-tune.py", *base, "--model_name_or_path", tiny_model_dir, "--output_dir", tiny_model_dir,
        "--overwrite_output_dir", "True",
    )
    assert "is also --model_name_or_path" in line
    line = run_script_expecting_error(
        capsys, "supervised-fine-tune.py", *base, "--data_path", tmp_path / "sft.json", "--output_dir", run
    )
    assert "already exists and is not empty" in line


def saved_weights(folder):
    return {**load_file(folder / "adapter_model.safetensors"), **load_file(folder / "trainable_params.safetensors")}


def test_the_same_seed_gives_the_same_checkpoint(tiny_model_dir, tmp_path):
    """--seed fixes LoRA's initialisation too (it is drawn before the Trainer seeds), whatever ran before."""
    runs = {}
    for name, seed, rng_state in (("a", "7", 1), ("b", "7", 2), ("c", "8", 1)):
        torch.manual_seed(rng_state)  # another process state before the run
        fine_tune(tiny_model_dir, tmp_path / name, "--max_steps", "1", "--skip_eval", "True", "--seed", seed)
        runs[name] = saved_weights(tmp_path / name / "checkpoint-1")
    assert runs["a"].keys() == runs["b"].keys()
    assert all(torch.equal(runs["a"][key], runs["b"][key]) for key in runs["a"])
    assert not all(torch.equal(runs["a"][key], runs["c"][key]) for key in runs["a"])


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    fine_tune(tiny_model_dir, run, "--max_steps", "2", "--skip_eval", "True")
    checkpoint = run / "checkpoint-2"
    # trainable params and the record are written before the Trainer's state, its last file
    state_written = (checkpoint / "trainer_state.json").stat().st_mtime_ns
    assert (checkpoint / "trainable_params.safetensors").stat().st_mtime_ns < state_written
    assert (checkpoint / "longctx_training.json").stat().st_mtime_ns < state_written
    # killed while saving checkpoint-2: it holds only the adapter
    for path in checkpoint.iterdir():
        if not path.name.startswith("adapter_"):
            path.unlink()
    line = run_script_expecting_error(
        capsys, "fine-tune.py", "--model_name_or_path", tiny_model_dir, "--output_dir", run, "--max_steps", "3",
        "--resume_from_checkpoint", checkpoint,
    )
    assert f"--resume_from_checkpoint {checkpoint} is incomplete (no optimizer.pt" in line
    fine_tune(tiny_model_dir, run, "--max_steps", "3", "--skip_eval", "True", "--resume_from_checkpoint", "latest")
    out = capsys.readouterr().out
    assert f"{checkpoint} is incomplete" in out and "skipped" in out
    assert json.loads((run / "fine-tune-results.json").read_text())["steps"] == 3
    assert (run / "checkpoint-2" / "trainer_state.json").is_file()  # saved again, complete this time


def test_resume_refuses_another_runs_or_damaged_checkpoints_before_loading_them(tiny_model_dir, tmp_path, capsys):
    from tests.test_pickles import crafted_files

    original = tmp_path / "run"
    fine_tune(tiny_model_dir, original, "--max_steps", "1", "--skip_eval", "True")

    def resume(name, *extra):
        run = tmp_path / name
        shutil.copytree(original, run)
        return run / "checkpoint-1", lambda: run_script_expecting_error(
            capsys, "fine-tune.py", "--model_name_or_path", tiny_model_dir, "--output_dir", run, "--max_steps", "2",
            "--skip_eval", "True", "--resume_from_checkpoint", "latest", *extra,
        )

    _, error = resume("rank", "--lora_r", "4")
    line = error()
    assert "--resume_from_checkpoint" in line and "LoRA rank" in line and "--lora_r" in line

    checkpoint, error = resume("optimizer")
    (checkpoint / "optimizer.pt").write_bytes((checkpoint / "optimizer.pt").read_bytes()[:1000])
    assert "cannot read" in (line := error()) and "optimizer.pt" in line

    checkpoint, error = resume("adapter")
    (checkpoint / "adapter_model.safetensors").write_bytes((checkpoint / "adapter_model.safetensors").read_bytes()[:100])
    assert "cannot read" in (line := error()) and "adapter_model.safetensors" in line

    marker = tmp_path / "ran"
    checkpoint, error = resume("crafted-rng")
    zipped, raw = crafted_files(tmp_path / "crafted", marker)
    shutil.copy(zipped, checkpoint / "rng_state.pth")
    assert "refusing to load" in (line := error()) and "rng_state.pth" in line
    checkpoint, error = resume("crafted-deepspeed")
    (checkpoint / "global_step1").mkdir()
    shutil.copy(raw, checkpoint / "global_step1" / "mp_rank_00_model_states.pt")
    (checkpoint / "latest").write_text("global_step1")
    assert "mp_rank_00_model_states.pt: not a file torch.save wrote" in error()
    assert not marker.exists()
