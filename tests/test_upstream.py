"""LongLoRA's flags: renamed ones translated, --model_type gpt-neox (LoRA targets and S²-Attn on a tiny GPT-NeoX),
--cache_dir (a hub id found in the given cache folder only), unknown flags refused with one line."""

import json

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from longctx.args import LongContextTrainingArguments, ModelArguments
from longctx.attention import disable_s2_attn, enable_s2_attn
from longctx.cli import parse_dataclasses
from longctx.upstream import check_model_type, known_flags, translate_flags
from tests.scripts import run_script, run_script_expecting_error
from tests.tiny_models import tiny_tokenizer


def test_renamed_and_misspelt_flags_are_translated_and_the_rest_left_alone():
    known = known_flags([ModelArguments, LongContextTrainingArguments])
    argv = ["--evaluation_strategy", "no", "--evaluation_strategy=steps", "----use_full_attn", "True", "--question", "---"]
    assert translate_flags(argv, known) == ["--eval_strategy", "no", "--eval_strategy=steps", "--use_full_attn", "True", "--question", "---"]
    model_args, train_args = parse_dataclasses(
        (ModelArguments, LongContextTrainingArguments), None,
        ["--output_dir", "out", "--evaluation_strategy", "no", "--cache_dir", "/tmp/hf", "--tf32", "True", "--model_type", "llama"],
    )
    assert train_args.eval_strategy == "no" and model_args.cache_dir == "/tmp/hf" and model_args.model_type == "llama"
    assert not train_args.tf32 or torch.cuda.is_available()  # --tf32 True is ignored without an NVIDIA GPU


def test_model_type_must_name_the_architecture():
    neox = GPTNeoXConfig()
    check_model_type("gpt-neox", neox)
    check_model_type(None, neox)
    with pytest.raises(ValueError, match="--model_type llama, but the model is 'gpt_neox': pass --model_type gpt-neox"):
        check_model_type("llama", neox)
    with pytest.raises(ValueError, match="choose llama or gpt-neox"):
        check_model_type("falcon", neox)


@pytest.fixture(scope="module")
def tiny_neox_dir(tmp_path_factory):
    """A tiny random GPT-NeoX (Pythia's layout: partial rotary, parallel residual) with the tiny tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-neox")
    tokenizer = tiny_tokenizer()
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, rotary_pct=0.25, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@torch.no_grad()
def test_s2_attn_runs_in_gpt_neox(tiny_neox_dir):
    model = GPTNeoXForCausalLM.from_pretrained(tiny_neox_dir, dtype=torch.float64, attn_implementation="sdpa").eval()
    input_ids = torch.randint(3, 300, (1, 48), generator=torch.Generator().manual_seed(0))
    full = model(input_ids).logits
    enable_s2_attn(model, group_size=96)  # groups of twice the length: every head sees the whole causal prefix
    torch.testing.assert_close(model(input_ids).logits, full, rtol=1e-10, atol=1e-10)
    enable_s2_attn(model, group_size=12)
    assert (model(input_ids).logits - full).abs().max() > 1e-4  # small groups: really S²-Attn
    disable_s2_attn(model)
    torch.testing.assert_close(model(input_ids).logits, full)


def test_fine_tune_with_model_type_gpt_neox(tiny_neox_dir, tmp_path, capsys):
    run_script(
        "fine-tune.py", "--model_name_or_path", tiny_neox_dir, "--model_type", "gpt-neox", "--output_dir", tmp_path,
        "--model_max_length", "128", "--max_steps", "1", "--max_train_rows", "2", "--skip_eval", "True",
        "--disable_tqdm", "True",
    )
    adapter_config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == {"query_key_value", "dense"}  # LongLoRA's GPT-NeoX targets
    from safetensors.torch import load_file

    trainable = load_file(tmp_path / "trainable_params.safetensors")
    assert "gpt_neox.embed_in.weight" in trainable and "gpt_neox.final_layer_norm.weight" in trainable
    line = run_script_expecting_error(
        capsys, "fine-tune.py", "--model_name_or_path", tiny_neox_dir, "--model_type", "llama", "--output_dir", tmp_path / "x",
        "--model_max_length", "128", "--max_steps", "1", "--skip_eval", "True",
    )
    assert "--model_type llama, but the model is 'gpt_neox'" in line


def test_cache_dir_is_where_hub_ids_are_found(tiny_model_dir, tmp_path, capsys):
    """A hub id resolves from --cache_dir's snapshot layout (models--org--name/snapshots/rev), offline."""
    import shutil

    snapshot = tmp_path / "hf-cache" / "models--acme--tiny" / "snapshots" / "0123"
    shutil.copytree(tiny_model_dir, snapshot)
    (tmp_path / "hf-cache" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hf-cache" / "models--acme--tiny" / "refs" / "main").write_text("0123")
    output = tmp_path / "passkey.json"
    run_script(
        "passkey_retrivial.py", "--base_model", "acme/tiny", "--cache_dir", tmp_path / "hf-cache", "--max_tokens", "256",
        "--interval", "256", "--num_tests", "1", "--output_json", output,
    )
    assert json.loads(output.read_text())["config"]["cache_dir"] == str(tmp_path / "hf-cache")
    line = run_script_expecting_error(capsys, "passkey_retrivial.py", "--base_model", "acme/tiny", "--max_tokens", "64", "--interval", "64")
    assert "unknown model 'acme/tiny'" in line and "nothing is downloaded" in line


@pytest.mark.parametrize("script", ["eval.py", "inference.py", "fine-tune.py"])
def test_unknown_flags_are_refused_in_one_line(script, capsys):
    line = run_script_expecting_error(capsys, script, "--no_such_flag", "1")
    assert "--no_such_flag" in line
