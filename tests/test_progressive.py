"""progressive.py: stages equal fine-tune.py run by hand, resume inside a stage, bad input refused up front."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from longctx.reading_model import ReadingModel, load_for_inference
from longctx.training_record import read_record
from tests.scripts import run_script, run_script_expecting_error

COMMON = (
    "--group_size_ratio", "0.25", "--learning_rate", "1e-2", "--warmup_steps", "0", "--save_steps", "1",
    "--max_train_rows", "4", "--seed", "7", "--dataloader_num_workers", "0", "--disable_tqdm", "True",
    "--rope_method", "yarn", "--skip_eval", "True",
)  # fmt: skip
WEIGHTS = ("adapter_model.safetensors", "trainable_params.safetensors")


def progressive(model_dir, output_dir, *extra):
    run_script("progressive.py", "--model_name_or_path", model_dir, "--output_dir", output_dir,
               "--stages", "128,256", "--stage_steps", "1,2", *COMMON, *extra)  # fmt: skip


def by_hand(model_dir, output_dir, mode):
    run_script("fine-tune.py", "--model_name_or_path", model_dir, *COMMON, "--model_max_length", "128",
               "--max_steps", "1", "--output_dir", output_dir / "128")  # fmt: skip
    run_script("fine-tune.py", "--model_name_or_path", model_dir, *COMMON, "--model_max_length", "256",
               "--max_steps", "2", "--output_dir", output_dir / "256", "--start_from", output_dir / "128",
               "--start_mode", mode)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """`runs(kind, mode)`: the folder of progressive.py ("runner") or fine-tune.py twice ("hand") in that
    start mode, trained once per module and shared by the tests that compare them."""
    made = {}

    def run(kind: str, mode: str):
        if (kind, mode) not in made:
            folder = tmp_path_factory.mktemp(f"{kind}-{mode}")
            if kind == "runner":
                progressive(tiny_model_dir, folder, "--start_mode", mode)
            else:
                by_hand(tiny_model_dir, folder, mode)
            made[kind, mode] = folder
        return made[kind, mode]

    return run


def assert_same_weights(first, second):
    for name in WEIGHTS:
        expected, got = load_file(first / name), load_file(second / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.arange(3, 203)[None] % 120).logits


@pytest.mark.parametrize("mode", ["merge", "continue"])
def test_stages_equal_fine_tune_by_hand(tiny_model_dir, runs, mode):
    runner, hand = runs("runner", mode), runs("hand", mode)
    for stage in ("128", "256"):
        assert_same_weights(hand / stage, runner / stage)
    record = read_record(runner / "256")
    assert record.rope_parameters["factor"] == 4.0 and record.model_max_length == 256  # YaRN grew with the stage
    below = [str((runner / "128").resolve())] if mode == "merge" else []
    assert record.base_adapters == below
    results = json.loads((runner / "progressive-results.json").read_text())
    assert [stage["stage"] for stage in results["stages"]] == ["128", "256"]
    # the stage folder alone reads as the whole chain, and the merged model is the same model
    stage, _ = load_for_inference(ReadingModel(str(tiny_model_dir), peft_model=runner / "256"))
    merged, _ = load_for_inference(ReadingModel(str(runner / "merged")))
    assert merged.config.rope_parameters == stage.config.rope_parameters
    torch.testing.assert_close(logits(merged), logits(stage), rtol=1e-4, atol=1e-4)


def test_merge_and_continue_train_different_models(runs):
    """The two modes are not the same computation: continue keeps training stage 1's adapter."""
    merge_weights = load_file(runs("hand", "merge") / "256" / "adapter_model.safetensors")
    continue_weights = load_file(runs("hand", "continue") / "256" / "adapter_model.safetensors")
    assert any(not torch.allclose(merge_weights[key], continue_weights[key]) for key in merge_weights)


def test_resumes_inside_the_second_stage(tiny_model_dir, runs, tmp_path):
    interrupted = tmp_path / "interrupted"
    progressive(tiny_model_dir, interrupted, "--start_mode", "merge")
    # as if killed after stage 2's first checkpoint: its final files and later checkpoints never written
    stage = interrupted / "256"
    shutil.rmtree(stage / "checkpoint-2")
    shutil.rmtree(interrupted / "merged")
    for path in stage.iterdir():
        if path.is_file():
            path.unlink()
    progressive(tiny_model_dir, interrupted, "--start_mode", "merge")
    assert_same_weights(runs("runner", "merge") / "256", stage)
    assert (interrupted / "merged" / "config.json").is_file()


@pytest.mark.parametrize(
    "stages, extra, named",
    [
        ("256,128", (), "--stages 256,128 must increase"),
        ("32,128", (), "longer than the model's window of 64"),
        ("128,256", ("--rope_method", "spline"), "--rope_method spline is not one of"),
        ("128,256", ("--stage_steps", "1,2,3"), "--stage_steps gives 3 values for 2 stages"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys, stages, extra, named):
    output_dir = tmp_path / "out"
    line = run_script_expecting_error(
        capsys, "progressive.py", "--model_name_or_path", tiny_model_dir, "--output_dir", output_dir, "--stages", stages, *extra
    )
    assert named in line
    assert not output_dir.exists()
