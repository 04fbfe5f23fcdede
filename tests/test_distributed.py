"""fine-tune.py under torchrun (2 processes, gloo on CPU) and under DeepSpeed ZeRO-2."""

import json
import os
import subprocess
import sys

from safetensors.torch import load_file

from tests.scripts import ROOT

COMMON = [
    "--model_max_length", "128", "--learning_rate", "1e-2", "--warmup_steps", "0", "--max_steps", "2",
    "--save_steps", "1", "--max_train_rows", "8", "--eval_windows", "1", "--seed", "7", "--disable_tqdm", "True",
]


def torchrun(nproc, *args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "fine-tune.py", *map(str, args)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def check_outputs(output_dir):
    for folder in (output_dir, output_dir / "checkpoint-2"):
        assert (folder / "adapter_model.safetensors").exists()
        assert "model.embed_tokens.weight" in load_file(folder / "trainable_params.safetensors")
    results = json.loads((output_dir / "fine-tune-results.json").read_text())
    assert results["steps"] == 2
    assert results["perplexity_after"]["perplexity"] < results["perplexity_before"]["perplexity"]
    return results


def test_torchrun_two_processes(tiny_model_dir, tmp_path):
    torchrun(2, "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path, *COMMON)
    results = check_outputs(tmp_path)
    assert results["train_rows"] == 8  # each step consumed one row per process


def test_deepspeed_zero2(tiny_model_dir, tmp_path):
    torchrun(2, "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path, "--deepspeed", ROOT / "ds_configs" / "stage2.json", *COMMON)
    check_outputs(tmp_path)


def test_deepspeed_zero3_saves_whole_trainable_weights(tiny_model_dir, tmp_path):
    """ZeRO-3 partitions every weight across processes; the saved embeddings must still be whole."""
    completed = torchrun(2, "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path, "--deepspeed", ROOT / "ds_configs" / "stage3.json", *COMMON)
    assert "no before/after perplexity check" in completed.stdout
    vocab_size = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    for folder in (tmp_path, tmp_path / "checkpoint-2"):
        embed = load_file(folder / "trainable_params.safetensors")["model.embed_tokens.weight"]
        assert embed.shape == (vocab_size, 64)
        adapter = load_file(folder / "adapter_model.safetensors")
        assert adapter and all(tensor.numel() > 0 for tensor in adapter.values())
