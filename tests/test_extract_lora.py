"""LoRA extraction by truncated SVD: exact at full rank, Eckart-Young error at rank r, usable by the merge."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from longctx.cli import run_cli
from longctx.extract_lora import main
from longctx.lora_extraction import extract_lora, low_rank_factors, save_extracted
from longctx.merging import merge_adapters
from longctx.modeling import load_model_and_tokenizer
from longctx.rope import extend_context
from tests.scripts import run_script, run_script_expecting_error
from tests.test_merging import MERGE
from tests.tiny_models import tiny_llama

FULL_RANK_TOLERANCE = 1e-6  # relative Frobenius error of a full-rank delta stored as float32 factors


def test_rank_r_error_is_the_discarded_singular_values():
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(48, 40, generator=generator, dtype=torch.float64)
    singular = torch.linalg.svdvals(delta)
    for rank in (1, 8, 39):
        lora_a, lora_b, kept, predicted = low_rank_factors(delta, rank, dtype=torch.float64)
        assert lora_a.shape == (rank, 40) and lora_b.shape == (48, rank) and kept == rank
        measured = (delta - lora_b @ lora_a).norm() / delta.norm()
        expected = singular[rank:].square().sum().sqrt() / singular.square().sum().sqrt()
        torch.testing.assert_close(measured, expected, rtol=1e-9, atol=1e-12)
        assert predicted == pytest.approx(expected.item(), rel=1e-9)
    lora_a, lora_b, kept, predicted = low_rank_factors(delta, 64)  # rank above min(out, in): exact, zero-padded
    assert kept == 40 and lora_a.shape == (64, 40) and predicted == 0.0
    assert ((delta - lora_b.double() @ lora_a.double()).norm() / delta.norm()).item() < FULL_RANK_TOLERANCE


def tuned_copy(seed: int = 1, delta_rank: int | None = None):
    """(base, tuned): every weight of the tiny model moved, linear ones by a delta of the given rank."""
    base, tuned = tiny_llama(), tiny_llama()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if parameter.dim() == 2 and "embed" not in name and delta_rank is not None:
                out_features, in_features = parameter.shape
                left = torch.randn(out_features, delta_rank, generator=generator)
                right = torch.randn(delta_rank, in_features, generator=generator)
                parameter.add_(0.02 * left @ right)
            else:
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return base, tuned


def test_full_rank_delta_is_recovered_and_merges_back(tmp_path):
    base, tuned = tuned_copy()
    adapter, trainable, config, errors, left_out = extract_lora(base, tuned, rank=128)
    assert len(errors) == 2 * 7 and left_out == []
    assert max(error.relative_error for error in errors) < FULL_RANK_TOLERANCE
    assert set(trainable) == {name for name, _ in base.named_parameters() if "embed" in name or "norm" in name}
    assert config.r == config.lora_alpha == 128
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    folder = save_extracted(tmp_path / "adapter", adapter, trainable, config, {})
    merged = merge_adapters(tiny_llama(), [folder])
    input_ids = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (merged(input_ids).logits - tuned(input_ids).logits).abs().max().item() < 1e-4
    for (name, got), expected in zip(merged.named_parameters(), tuned.parameters()):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)


def test_cli_at_rank_r_reports_the_truncation_error(tmp_path, tiny_model_dir, capsys):
    base, _ = load_model_and_tokenizer(str(tiny_model_dir))
    tuned, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if "proj" in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    extend_context(tuned.config, 128)  # the tuned model reads 128 tokens (linear factor 2)
    tuned.save_pretrained(tmp_path / "tuned")
    tokenizer.save_pretrained(tmp_path / "tuned")

    main(["--base", str(tiny_model_dir), "--tuned", str(tmp_path / "tuned"), "--rank", "8", "--save_path", str(tmp_path / "lora8")])
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in out and "worst relative error" in out
    report = json.loads((tmp_path / "lora8" / "extraction_report.json").read_text())
    adapter = load_file(tmp_path / "lora8" / "adapter_model.safetensors")
    assert not (tmp_path / "lora8" / "trainable_params.safetensors").exists()  # only projections changed
    tuned_weights = dict(tuned.named_parameters())
    for layer in report["layers"]:
        name = layer["name"]
        delta = (tuned_weights[f"{name}.weight"] - dict(base.named_parameters())[f"{name}.weight"]).double()
        singular = torch.linalg.svdvals(delta)
        expected = (singular[8:].square().sum() / singular.square().sum()).sqrt().item()
        assert 0 < expected < 1 and layer["rank"] == 8
        assert layer["relative_error"] == pytest.approx(expected, rel=1e-5)
        assert layer["discarded"] == pytest.approx(expected, rel=1e-9)
        lora_a = adapter[f"base_model.model.{name}.lora_A.weight"].double()
        lora_b = adapter[f"base_model.model.{name}.lora_B.weight"].double()
        assert ((delta - lora_b @ lora_a).norm() / delta.norm()).item() == pytest.approx(expected, rel=1e-5)
    assert report["tuned_context_window"] == 128

    # the merge knows the window the tuned model had, and gives back its weights up to the reported error
    merge = ["--base_model", tiny_model_dir, "--peft_model", tmp_path / "lora8", "--require_trainable_params", "False"]
    line = run_script_expecting_error(capsys, MERGE, *merge, "--context_size", 64, "--save_path", tmp_path / "short")
    assert "below the 128 tokens" in line
    run_script(MERGE, *merge, "--context_size", 128, "--save_path", tmp_path / "merged")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    base_weights = dict(base.named_parameters())
    for layer in report["layers"]:
        name = f"{layer['name']}.weight"
        delta = (tuned_weights[name] - base_weights[name]).double()
        error = (merged[name].double() - tuned_weights[name].double()).norm() / delta.norm()
        assert error.item() == pytest.approx(layer["relative_error"], rel=1e-4)


def run_module_expecting_error(capsys, *args):
    argv = sys.argv
    sys.argv = ["extract_lora.py", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main)  # what `python -m longctx.extract_lora` runs
    finally:
        sys.argv = argv
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(lines)
    return lines[-1]


def test_bad_input(tmp_path, tiny_model_dir, capsys):
    other = tmp_path / "other"
    tiny_llama(hidden_size=32, intermediate_size=64, vocab_size=320).save_pretrained(other)
    line = run_module_expecting_error(capsys, "--base", tiny_model_dir, "--tuned", other, "--save_path", tmp_path / "out")
    assert "does not match the base" in line
    assert not (tmp_path / "out").exists()
    assert "--rank must be positive" in run_module_expecting_error(
        capsys, "--base", tiny_model_dir, "--tuned", tiny_model_dir, "--rank", "0", "--save_path", tmp_path / "out"
    )
