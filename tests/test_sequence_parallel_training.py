"""--sequence_parallel_size under torchrun (gloo, CPU, DeepSpeed ZeRO-2 or 3): the same training as one process.

Each comparison runs a script twice through tests/record_training.py, alone and as two processes
splitting every row, and asks for the same loss at every step and the same gradient of every
trainable weight at each of two optimizer steps (fp32, relative 1e-5 of each weight's gradient); the
second step starts from weights the first one moved, so LoRA's A matrices (whose first gradient is
zero) are compared too.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.scripts import ROOT, run_script
from tests.tiny_models import save_tiny_model, tiny_tokenizer

# SGD with momentum, not AdamW: Adam's first step moves each weight by about the learning rate whatever
# its gradient's size, so the second step's gradients would carry fp32 noise of the tiniest first ones
TRAINING = [
    "--max_steps", "2", "--optim", "sgd", "--optim_args", "momentum=0.9", "--learning_rate", "0.5",
    "--warmup_steps", "0", "--seed", "7", "--max_grad_norm", "0", "--save_steps", "100", "--report_to", "none",
    "--disable_tqdm", "True",
]
COMMON = [*TRAINING, "--model_max_length", "128", "--max_train_rows", "4", "--skip_eval", "True"]
SFT = [*TRAINING, "--model_max_length", "256", "--batch_method", "pack", "--pack_loss", "True", "--group_size", "16"]


def launch(processes: int, *args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
    runner = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *runner, *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def record(processes: int, record_path, script: str, *args) -> dict:
    completed = launch(processes, "tests/record_training.py", record_path, script, *args)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return torch.load(record_path)


def assert_same_training(got: dict, expected: dict) -> None:
    assert len(got["losses"]) == len(expected["losses"]) == 2
    assert got["losses"] == pytest.approx(expected["losses"], rel=1e-5)
    assert len(got["gradients"]) == len(expected["gradients"]) == 2
    for step, (got_step, expected_step) in enumerate(zip(got["gradients"], expected["gradients"], strict=True), 1):
        assert got_step.keys() == expected_step.keys()
        for name, gradient in expected_step.items():
            difference = (got_step[name] - gradient).norm().item()
            assert difference <= 1e-5 * gradient.norm().item() + 1e-9, f"step {step}: {name} differs by {difference:.3g}"
    second = expected["gradients"][1]
    assert all(gradient.abs().max() > 0 for gradient in second.values())  # every weight was really compared


def compare(tmp_path, script: str, *args, size: int = 2, split_args=()) -> dict:
    """Run alone and with --sequence_parallel_size `size`; assert the same training; return the parallel record."""
    alone = record(1, tmp_path / "alone.pt", script, *args, "--output_dir", tmp_path / "alone")
    split = record(
        size, tmp_path / "split.pt", script, *args, "--output_dir", tmp_path / "split",
        "--sequence_parallel_size", size, *split_args,
    )
    assert_same_training(split, alone)
    return split


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory):
    """A tiny random Qwen2 (biased q/k/v) whose 4 query heads share one key/value head: DeepSpeed repeats it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def split_run(tiny_model_dir, tmp_path_factory):
    """S²-Attn + LoRA+ on the tiny Llama, alone and split in two, checkpoints at both steps."""
    folder = tmp_path_factory.mktemp("s2-attn")
    split = compare(folder, "fine-tune.py", "--model_name_or_path", tiny_model_dir, *COMMON, "--save_steps", "1")
    return folder, split


def test_s2_attn_lora_llama(split_run):
    folder, _ = split_run
    assert (folder / "split" / "checkpoint-2" / "trainable_params.safetensors").exists()


def test_full_attention_full_fine_tuning_llama(tiny_model_dir, tmp_path):
    split = compare(
        tmp_path, "fine-tune.py", "--model_name_or_path", tiny_model_dir, *COMMON,
        "--use_full_attn", "True", "--low_rank_training", "False",
    )
    assert "model.layers.0.mlp.down_proj.weight" in split["gradients"][0]


def test_halo_s2_attn_lora_heads_that_ulysses_cannot_split(tmp_path):
    """--sequence_parallel_mode halo: each process attends on its shard (2 groups of 32) with half a group
    of keys/values from the previous one; loss and gradients are one process's. 3 heads over 2 processes:
    Ulysses refuses the split, so this passes only through the halo."""
    model = save_tiny_model(tmp_path / "model", hidden_size=48, num_attention_heads=3, num_key_value_heads=3)
    compare(tmp_path, "fine-tune.py", "--model_name_or_path", model, *COMMON, split_args=("--sequence_parallel_mode", "halo"))


def test_s2_attn_qwen2_one_key_value_head(tiny_qwen2_dir, tmp_path):
    compare(tmp_path, "fine-tune.py", "--model_name_or_path", tiny_qwen2_dir, *COMMON)


def test_s2_attn_heads_split_inside_a_process_under_zero3(tmp_path):
    """SmolLM2's shape, 9 query heads over 3 key/value heads, split in 3: process 1 holds heads 3-5, of
    which 3 is unshifted and 4-5 shifted (the model's second half starts at 4), all reading key/value
    head 1. ZeRO-3 partitions weights and gradients, and averages them differently (its reduce-scatter)."""
    model = save_tiny_model(tmp_path / "model", hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        **dict.fromkeys(("gradient_accumulation_steps", "gradient_clipping", "train_batch_size",
                         "train_micro_batch_size_per_gpu"), "auto"),
    }))
    args = [arg if arg != "128" else "96" for arg in COMMON]  # rows cut in 3
    compare(tmp_path, "fine-tune.py", "--model_name_or_path", model, *args, size=3, split_args=("--deepspeed", zero3))


def test_two_groups_of_two_data_parallel(tiny_model_dir, tmp_path):
    """4 processes: 2 groups splitting rows in 2, data parallel across the groups. The rows are the same
    128 tokens, so a step's 2 rows (one per group) must give one process's gradient of one row: the
    scale over data-parallel groups, not just over a group, is what is compared."""
    from longctx.token_files import write_token_file

    tokens = torch.randint(3, 300, (128,), generator=torch.Generator().manual_seed(0)).repeat(4)
    data = write_token_file(tokens, tmp_path / "rows.bin", vocab_size=320)
    args = [*COMMON, "--data_path", data]
    alone = record(1, tmp_path / "alone.pt", "fine-tune.py", "--model_name_or_path", tiny_model_dir, *args,
                   "--output_dir", tmp_path / "alone")
    split = record(4, tmp_path / "split.pt", "fine-tune.py", "--model_name_or_path", tiny_model_dir, *args,
                   "--output_dir", tmp_path / "split", "--sequence_parallel_size", "2")
    assert_same_training(split, alone)


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "train.json"
    run_script("longctx/build_qa_data.py", "--output", path, "--num_samples", "8", "--min_tokens", "20",
               "--max_tokens", "80", "--seed", "0")
    return path


@pytest.mark.parametrize("attention", ["s2_attn", "full"])
def test_packed_sft_rows(tiny_model_dir, qa_data, tmp_path, attention):
    """Several documents per row, LongAlign's loss weights; S²-Attn groups and full attention stay inside each."""
    extra = ["--use_full_attn", "True"] if attention == "full" else []
    compare(tmp_path, "supervised-fine-tune.py", "--model_name_or_path", tiny_model_dir, "--data_path", qa_data, *SFT, *extra)


def test_resume_continues_exactly(split_run, tiny_model_dir, tmp_path):
    """Stopped after step 1 and resumed: step 2's gradients and the saved weights are the uninterrupted run's."""
    folder, straight = split_run
    args = ["fine-tune.py", "--model_name_or_path", tiny_model_dir, *COMMON, "--save_steps", "1",
            "--output_dir", tmp_path, "--sequence_parallel_size", "2"]
    record(2, tmp_path / "first.pt", *args[:-2], "--max_steps", "1", *args[-2:])
    resumed = record(2, tmp_path / "resumed.pt", *args, "--resume_from_checkpoint", "latest")
    assert len(resumed["gradients"]) == 1
    for name, gradient in straight["gradients"][1].items():
        torch.testing.assert_close(resumed["gradients"][0][name], gradient, rtol=1e-5, atol=1e-9)
    for name in ("adapter_model.safetensors", "trainable_params.safetensors"):
        expected, got = load_file(folder / "split" / name), load_file(tmp_path / name)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-7)


def test_trainable_weights_and_merge_of_a_split_checkpoint(split_run, tiny_model_dir, tmp_path):
    from tests.test_merging import CONTEXT, MERGE, merged_logits, unmerged_logits

    folder, _ = split_run
    checkpoint = folder / "split" / "checkpoint-2"
    run_script("get_trainable_weights.py", "--checkpoint_path", checkpoint, "--output_dir", tmp_path / "weights")
    for name in ("adapter_model.safetensors", "trainable_params.safetensors"):
        expected, got = load_file(folder / "split" / name), load_file(tmp_path / "weights" / name)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key].float(), rtol=1e-5, atol=1e-7)
    run_script(MERGE, "--base_model", tiny_model_dir, "--peft_model", tmp_path / "weights", "--save_path", tmp_path / "merged")
    vocab_size = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    input_ids = torch.randint(3, vocab_size, (1, 100), generator=torch.Generator().manual_seed(0))
    expected = unmerged_logits(tiny_model_dir, [tmp_path / "weights"], input_ids, context_size=CONTEXT)
    assert (merged_logits(tmp_path / "merged", input_ids) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    ("heads", "kv_heads", "message"),
    [(3, 3, "--sequence_parallel_size 2 does not divide the model's 3 attention heads"),
     (6, 3, "--sequence_parallel_size 2 and the model's 3 key/value heads: one must divide the other")],
)
def test_head_counts_that_cannot_split_are_one_line_before_loading(tmp_path, heads, kv_heads, message):
    model = save_tiny_model(tmp_path / "model", hidden_size=48, num_attention_heads=heads, num_key_value_heads=kv_heads)
    (model / "model.safetensors").write_bytes(b"not weights: the check must come first")
    completed = launch(2, "fine-tune.py", "--model_name_or_path", model, "--output_dir", tmp_path / "out",
                       "--model_max_length", "128", "--sequence_parallel_size", "2", timeout=120)
    assert completed.returncode != 0
    # each process: one line, the same one (torchrun may join the two ranks' lines, so count the messages)
    assert completed.stderr.count("fine-tune.py: error:") == 2
    assert completed.stderr.count(f"fine-tune.py: error: {message}") == 2
    assert "safetensors" not in completed.stderr  # nothing tried to read the weights
