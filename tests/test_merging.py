"""merge_lora_weights_and_save_hf_model.py: merged logits equal base + adapter(s) + trainable params.

The tiny model's window is 64 tokens; merging for --context_size 128 writes linear RoPE factor 2, and
the inputs are 100 tokens long, so a merged model that lost its scaling would fail the comparison.
"""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from longctx.lora import load_trainable_params, save_trainable_params, setup_lora, trainable_params_path
from longctx.modeling import load_model_and_tokenizer
from tests.scripts import run_script, run_script_expecting_error
from tests.tiny_models import tiny_llama

CONTEXT = 128
MERGE = "merge_lora_weights_and_save_hf_model.py"


def randomize_trainable(model, seed: int, scale: float = 0.05) -> None:
    """Move every trainable weight (LoRA B starts at zero) so the adapter changes the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def make_adapter(model_dir, folder, seed, trainable_params="embed,norm", with_trainable_file=True):
    """A LoRA+ adapter for the tiny model, saved as fine-tune.py saves one."""
    base, _ = load_model_and_tokenizer(str(model_dir))
    model = setup_lora(base, r=4, alpha=8, trainable_params=trainable_params)
    randomize_trainable(model, seed)
    model.save_pretrained(folder)
    if with_trainable_file:
        save_trainable_params(model, folder)
    return folder


def unmerged_logits(model_dir, folders, input_ids, context_size=CONTEXT):
    """Reference: base with each folder's trainable params, all adapters active at once, nothing merged."""
    base, _ = load_model_and_tokenizer(str(model_dir), context_size=context_size)
    for folder in folders:
        if trainable_params_path(folder):
            load_trainable_params(base, folder)
    model = PeftModel.from_pretrained(base, str(folders[0]), adapter_name="adapter0")
    for index, folder in enumerate(folders[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"adapter{index}")
    model.base_model.set_adapter([f"adapter{index}" for index in range(len(folders))])
    with torch.no_grad():
        return model.eval()(input_ids).logits


def merged_logits(save_path, input_ids):
    model = AutoModelForCausalLM.from_pretrained(save_path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids).logits


@pytest.mark.parametrize("count", [1, 2])
def test_merged_model_equals_base_plus_adapters(tiny_model_dir, tmp_path, count):
    folders = [make_adapter(tiny_model_dir, tmp_path / f"adapter{i}", seed=i) for i in range(count)]
    save_path = tmp_path / "merged"
    run_script(MERGE, "--base_model", tiny_model_dir, "--peft_model", *folders, "--context_size", CONTEXT, "--save_path", save_path)

    config = json.loads((save_path / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 2.0
    assert config["max_position_embeddings"] == CONTEXT
    assert (save_path / "model.safetensors").exists() and (save_path / "tokenizer.json").exists()
    assert not (save_path / "adapter_config.json").exists()

    input_ids = torch.randint(3, config["vocab_size"], (2, 100), generator=torch.Generator().manual_seed(0))
    expected = unmerged_logits(tiny_model_dir, folders, input_ids)
    got = merged_logits(save_path, input_ids)
    assert (got - expected).abs().max().item() < 1e-5
    base_only, _ = load_model_and_tokenizer(str(tiny_model_dir), context_size=CONTEXT)
    assert (base_only(input_ids).logits - got).abs().max().item() > 1e-2  # the adapters did change the model


def test_plain_lora_merges_as_is_and_lora_plus_without_its_file_is_refused(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoConfig

    from longctx.training_record import record_from_model, write_record

    folder = make_adapter(tiny_model_dir, tmp_path / "lora-only", seed=3, trainable_params="", with_trainable_file=False)
    run_script(MERGE, "--base_model", tiny_model_dir, "--peft_model", folder, "--context_size", CONTEXT, "--save_path", tmp_path / "merged")
    vocab_size = json.loads((tmp_path / "merged" / "config.json").read_text())["vocab_size"]
    input_ids = torch.randint(3, vocab_size, (1, 80), generator=torch.Generator().manual_seed(1))
    expected = unmerged_logits(tiny_model_dir, [folder], input_ids)
    assert (merged_logits(tmp_path / "merged", input_ids) - expected).abs().max().item() < 1e-5

    lora_plus = make_adapter(tiny_model_dir, tmp_path / "lora-plus", seed=4, with_trainable_file=False)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    write_record(lora_plus, record_from_model(config, "linear", 64, "s2_attn", trainable_params="embed,norm"))
    line = run_script_expecting_error(
        capsys, MERGE, "--base_model", tiny_model_dir, "--peft_model", lora_plus, "--save_path", tmp_path / "refused"
    )
    assert "no trainable_params.safetensors but was trained with LoRA+" in line and "get_trainable_weights.py" in line
    assert not (tmp_path / "refused").exists()
    longlora_checkpoint = make_adapter(tiny_model_dir, tmp_path / "longlora", seed=5, with_trainable_file=False)
    (longlora_checkpoint / "pytorch_model.bin").write_bytes(b"")  # LongLoRA's whole checkpoint, not yet split
    line = run_script_expecting_error(
        capsys, MERGE, "--base_model", tiny_model_dir, "--peft_model", longlora_checkpoint, "--save_path", tmp_path / "refused"
    )
    assert "pytorch_model.bin" in line
    run_script(
        MERGE, "--base_model", tiny_model_dir, "--peft_model", lora_plus, "--save_path", tmp_path / "lora-alone",
        "--require_trainable_params", "False",
    )
    assert (tmp_path / "lora-alone" / "model.safetensors").exists()


def test_gradient_merge_adapters_flags(tiny_model_dir, tmp_path, capsys):
    """Gradient's merge_adapters.py command: its flags as aliases, several plain LoRA stages, no RoPE change."""
    stages = [make_adapter(tiny_model_dir, tmp_path / f"stage{i}", seed=i, trainable_params="", with_trainable_file=False) for i in range(2)]
    output_dir = tmp_path / "merged"
    run_script(
        MERGE, "--base_model_name_or_path", tiny_model_dir, "--peft_model_paths", *stages, "--output_dir", output_dir,
        "--device", "cpu", "--trust_remote_code",
    )
    config = json.loads((output_dir / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "default" and config["max_position_embeddings"] == 64
    input_ids = torch.randint(3, config["vocab_size"], (1, 60), generator=torch.Generator().manual_seed(2))
    expected = unmerged_logits(tiny_model_dir, stages, input_ids, context_size=64)
    assert (merged_logits(output_dir, input_ids) - expected).abs().max().item() < 1e-5
    line = run_script_expecting_error(
        capsys, MERGE, "--base_model_name_or_path", tiny_model_dir, "--peft_model_paths", stages[0],
        "--output_dir", tmp_path / "hub", "--push_to_hub",
    )
    assert "--push_to_hub" in line and "uploads nothing" in line
    line = run_script_expecting_error(
        capsys, MERGE, "--peft_model_paths", stages[0], "--output_dir", tmp_path / "x", "--no_such_flag", "1"
    )
    assert "--no_such_flag" in line


def adapter_for_another_base(folder):
    model = setup_lora(tiny_llama(hidden_size=32, intermediate_size=64), r=4, trainable_params="embed,norm")
    randomize_trainable(model, seed=5)
    model.save_pretrained(folder)
    save_trainable_params(model, folder)
    return folder


def test_bad_input_fails_with_one_line_and_leaves_nothing(tiny_model_dir, tmp_path, capsys):
    good = make_adapter(tiny_model_dir, tmp_path / "good", seed=0)
    foreign = adapter_for_another_base(tmp_path / "foreign")
    save_path = tmp_path / "out" / "merged"

    def merge_error(*args):
        return run_script_expecting_error(capsys, MERGE, "--base_model", tiny_model_dir, "--save_path", save_path, *args)

    # the first adapter merges fine, the second fails: no half-merged model may appear
    line = merge_error("--peft_model", good, foreign, "--context_size", CONTEXT)
    assert "adapter built for another base model" in line and "_proj" in line
    assert "not a PEFT adapter folder" in merge_error("--peft_model", tmp_path / "missing", "--context_size", CONTEXT)
    torn = make_adapter(tiny_model_dir, tmp_path / "torn", seed=1)
    (torn / "adapter_model.safetensors").write_bytes(b"not safetensors")
    line = merge_error("--peft_model", torn, "--context_size", CONTEXT)
    assert "cannot read" in line and "torn/adapter_model.safetensors" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    save_path.mkdir(parents=True)
    (save_path / "keep.txt").write_text("user data")
    assert "already exists" in merge_error("--peft_model", good, "--context_size", CONTEXT)
    assert (save_path / "keep.txt").read_text() == "user data"


@pytest.mark.realmodel
def test_real_smollm2_round_trip(tmp_path):
    """SmolLM2-135M, LoRA+ adapter moved at random, merged for 16k: the merged model reads as base + adapter."""
    folder = make_adapter("smollm2", tmp_path / "adapter", seed=0)
    save_path = tmp_path / "merged"
    run_script(MERGE, "--base_model", "smollm2", "--peft_model", folder, "--context_size", 16384, "--save_path", save_path)
    assert json.loads((save_path / "config.json").read_text())["rope_parameters"]["factor"] == 2.0
    text = open("data/pg19/pg19test_10146.txt", encoding="utf-8").read()[:3000]
    _, tokenizer = load_model_and_tokenizer("smollm2")
    input_ids = tokenizer(text, return_tensors="pt").input_ids[:, :256]
    expected = unmerged_logits("smollm2", [folder], input_ids, context_size=16384)
    got = merged_logits(save_path, input_ids)
    # 30 layers of float32 with logits around 10-30: the merge reorders sums, so allow float32 noise
    assert (got - expected).abs().max().item() < 5e-4  # measured 9.5e-5 with logits up to 40


def test_context_size_below_the_window_keeps_rope_as_longlora_does(tiny_model_dir, tmp_path, capsys):
    """LongLoRA's merge scales RoPE only past the model's window: a smaller --context_size keeps it as it is."""
    good = make_adapter(tiny_model_dir, tmp_path / "good", seed=0)
    run_script(MERGE, "--base_model", tiny_model_dir, "--peft_model", good, "--save_path", tmp_path / "merged", "--context_size", 32)
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())
    base = json.loads((tiny_model_dir / "config.json").read_text())
    assert merged["max_position_embeddings"] == base["max_position_embeddings"] == 64
    assert merged.get("rope_parameters") == base.get("rope_parameters")
    assert "--context_size 32 is below the base model's window of 64 tokens: RoPE kept as it is" in capsys.readouterr().out
