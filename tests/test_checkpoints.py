"""get_trainable_weights.py: every checkpoint layout splits into the adapter PEFT would save + trainable params."""

import json
import shutil

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from longctx.lora import (
    load_trainable_params,
    parse_parameter_name,
    save_trainable_params,
    setup_lora,
    trainable_state_dict,
)
from longctx.modeling import load_model_and_tokenizer
from tests.scripts import ROOT, run_script, run_script_expecting_error
from tests.test_distributed import COMMON, torchrun
from tests.test_merging import CONTEXT, MERGE, merged_logits, randomize_trainable

SCRIPT = "get_trainable_weights.py"


@pytest.mark.parametrize(
    "name,expected",
    [
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
         ("lora", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "default")),
        ("module.base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
         ("lora", "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", None)),
        ("_orig_mod.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
         ("base", "model.layers.0.self_attn.q_proj.weight", None)),
        ("base_model.model.model.embed_tokens.weight", ("base", "model.embed_tokens.weight", None)),
        ("model.norm.weight", ("base", "model.norm.weight", None)),
        ("base_model.model.lm_head.modules_to_save.default.weight", ("base", "lm_head.weight", None)),
        ("base_model.model.lm_head.original_module.weight",
         ("copy", "base_model.model.lm_head.original_module.weight", None)),
    ],
)
def test_names_are_parsed_by_structure(name, expected):
    assert parse_parameter_name(name) == expected


def trained_lora_model(model_dir, seed=0):
    base, _ = load_model_and_tokenizer(str(model_dir), context_size=CONTEXT)
    model = setup_lora(base, r=4, alpha=8, trainable_params="embed,norm")
    randomize_trainable(model, seed)
    return model


def assert_split_matches(folder, model):
    adapter = load_file(folder / "adapter_model.safetensors")
    expected = get_peft_model_state_dict(model)
    assert adapter.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(adapter[key], expected[key], rtol=0, atol=0)
    trainable = load_file(folder / "trainable_params.safetensors")
    expected = trainable_state_dict(model)
    assert trainable.keys() == expected.keys() and "model.embed_tokens.weight" in trainable
    for key in expected:
        torch.testing.assert_close(trainable[key], expected[key], rtol=0, atol=0)
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4


@pytest.mark.parametrize("layout", ["longlora-bin", "ddp-sharded-safetensors"])
def test_full_state_dict_checkpoints(tiny_model_dir, tmp_path, layout, capsys):
    """LongLoRA's output_dir/checkpoint-N/pytorch_model.bin (adapter config in output_dir), and a
    `module.`-prefixed sharded safetensors state dict, round trip to the model's own adapter and merge
    back to the same logits."""
    model = trained_lora_model(tiny_model_dir)
    model.peft_config["default"].save_pretrained(tmp_path)  # adapter_config.json in the parent, as LongLoRA
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    if layout == "longlora-bin":
        torch.save(state, checkpoint / "pytorch_model.bin")
    else:
        names = sorted(state)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        weight_map = {}
        for shard, shard_names in shards.items():
            save_file({f"module.{name}": state[name] for name in shard_names}, checkpoint / shard)
            weight_map.update({f"module.{name}": shard for name in shard_names})
        (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    run_script(SCRIPT, "--checkpoint_path", checkpoint, "--trainable_params", "embed,norm")
    assert "checked against base model" in capsys.readouterr().out
    assert_split_matches(checkpoint, model)

    save_path = tmp_path / "merged"
    run_script(
        MERGE, "--base_model", tiny_model_dir, "--peft_model", checkpoint, "--context_size", CONTEXT, "--save_path", save_path
    )
    input_ids = torch.randint(3, model.config.vocab_size, (1, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.eval()(input_ids).logits
    assert (merged_logits(save_path, input_ids) - expected).abs().max().item() < 1e-5


def fine_tune_checkpoint(model_dir, output_dir):
    run_script(
        "fine-tune.py", "--model_name_or_path", model_dir, "--output_dir", output_dir, "--model_max_length", CONTEXT,
        "--learning_rate", "1e-2", "--warmup_steps", "0", "--max_steps", "1", "--save_steps", "1",
        "--max_train_rows", "2", "--skip_eval", "True", "--seed", "7", "--disable_tqdm", "True",
        "--dataloader_num_workers", "0",
    )
    return output_dir / "checkpoint-1"


def test_plain_trainer_checkpoint_round_trip(tiny_model_dir, tmp_path, capsys):
    """A real fine-tune.py checkpoint: split into a new folder, merge, and compare with the unmerged model."""
    checkpoint = fine_tune_checkpoint(tiny_model_dir, tmp_path / "run")
    run_script(SCRIPT, "--checkpoint_path", checkpoint, "--output_dir", tmp_path / "split")
    for name in ("adapter_model.safetensors", "trainable_params.safetensors"):
        expected, got = load_file(checkpoint / name), load_file(tmp_path / "split" / name)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)

    save_path = tmp_path / "merged"
    run_script(
        MERGE, "--base_model", tiny_model_dir, "--peft_model", tmp_path / "split", "--context_size", CONTEXT,
        "--save_path", save_path,
    )
    base, _ = load_model_and_tokenizer(str(tiny_model_dir), context_size=CONTEXT)
    load_trainable_params(base, checkpoint)
    model = PeftModel.from_pretrained(base, str(checkpoint)).eval()
    input_ids = torch.randint(3, model.config.vocab_size, (1, 100), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(input_ids).logits
    assert (merged_logits(save_path, input_ids) - expected).abs().max().item() < 1e-5

    # fine-tune-results.json (one folder up) says the run trained at 128 tokens: merging for 64 would lose PI
    line = run_script_expecting_error(
        capsys, MERGE, "--base_model", tiny_model_dir, "--peft_model", checkpoint, "--context_size", 64,
        "--save_path", tmp_path / "short",
    )
    assert line.endswith(f"--context_size 64 is below the 128 tokens {checkpoint} was trained at: its RoPE scaling would be lost")


def test_bad_checkpoints_fail_with_one_line(tiny_model_dir, tmp_path, capsys):
    def error(*args):
        return run_script_expecting_error(capsys, SCRIPT, *args)

    assert "checkpoint folder not found" in error("--checkpoint_path", tmp_path / "missing")

    model = trained_lora_model(tiny_model_dir)
    torn = tmp_path / "torn"
    model.peft_config["default"].save_pretrained(torn)
    (torn / "pytorch_model.bin").write_bytes(b"\x80\x02 this is not a checkpoint")
    line = error("--checkpoint_path", torn)
    assert "cannot read" in line and "pytorch_model.bin" in line

    adapter_only = tmp_path / "adapter-only"  # the LongLoRA QLoRA failure: embed/norm never saved
    model.save_pretrained(adapter_only)
    line = error("--checkpoint_path", adapter_only)
    assert "no trainable_params.safetensors" in line and "embed,norm" in line
    run_script(SCRIPT, "--checkpoint_path", adapter_only, "--trainable_params", "", "--output_dir", tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_model.safetensors").exists()

    full = tmp_path / "full"  # full fine-tuning: no LoRA weights at all
    model.peft_config["default"].save_pretrained(full)
    state = model.get_base_model().state_dict()
    save_file({k: v.clone() for k, v in state.items() if "lora_" not in k and "lm_head" not in k}, full / "model.safetensors")
    assert "extract_lora" in error("--checkpoint_path", full)

    save_trainable_params(model, adapter_only)
    assert "matches no weight" in error("--checkpoint_path", adapter_only, "--trainable_params", "embed,mlp")
    (tmp_path / "empty").mkdir()
    assert "holds no checkpoint" in error("--checkpoint_path", tmp_path / "empty")


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])  # ZeRO-3 offload may JIT-compile
def test_deepspeed_zero_checkpoint_is_consolidated(tiny_model_dir, tmp_path, stage):
    """A ZeRO-2/3 run under torchrun: DeepSpeed's consolidation gives the weights the run ended with."""
    config = ROOT / "ds_configs" / f"stage{stage}.json"
    torchrun(
        2, "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path, "--deepspeed", config, *COMMON,
        "--skip_eval", "True",
    )
    checkpoint = tmp_path / "checkpoint-2"
    assert any(checkpoint.glob("global_step*/*model_states.pt"))
    run_script(SCRIPT, "--checkpoint_path", checkpoint, "--output_dir", tmp_path / "split")
    adapter = load_file(tmp_path / "split" / "adapter_model.safetensors")
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert adapter.keys() == saved.keys()
    for key in saved:
        torch.testing.assert_close(adapter[key], saved[key].float(), rtol=1e-5, atol=1e-6)
    trainable = load_file(tmp_path / "split" / "trainable_params.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert trainable.keys() == {name for name in base if "embed" in name or "norm" in name}
    assert all(trainable[name].shape == base[name].shape for name in trainable)
    if stage == 2:
        saved = load_file(tmp_path / "trainable_params.safetensors")
        for key in saved:
            torch.testing.assert_close(trainable[key], saved[key].float(), rtol=1e-5, atol=1e-6)
    else:  # each process held a slice of the embeddings: only the consolidation has them
        assert not (tmp_path / "trainable_params.safetensors").exists()


def test_crafted_pickles_are_refused_and_never_run(tiny_model_dir, tmp_path, capsys):
    """A global_step*/ folder is consolidated by DeepSpeed, which unpickles with weights_only=False: a
    crafted file used to run its code and then fail with "Invalid magic number"."""
    from tests.test_pickles import crafted_files

    marker = tmp_path / "ran"
    zipped, raw = crafted_files(tmp_path / "crafted", marker)
    for name, crafted, message in (("zip", zipped, "refusing to load"), ("raw", raw, "not a file torch.save wrote")):
        checkpoint = tmp_path / name / "checkpoint-1"
        (checkpoint / "global_step1").mkdir(parents=True)
        trained_lora_model(tiny_model_dir).peft_config["default"].save_pretrained(checkpoint)
        shutil.copy(crafted, checkpoint / "global_step1" / "mp_rank_00_model_states.pt")
        (checkpoint / "latest").write_text("global_step1")
        line = run_script_expecting_error(capsys, SCRIPT, "--checkpoint_path", checkpoint, "--output_dir", tmp_path / name / "split")
        assert message in line and "mp_rank_00_model_states.pt" in line
    torn = tmp_path / "longlora" / "checkpoint-1"
    torn.mkdir(parents=True)
    trained_lora_model(tiny_model_dir).peft_config["default"].save_pretrained(torn)
    shutil.copy(zipped, torn / "pytorch_model.bin")  # LongLoRA's layout, read by longctx itself
    assert "refusing to load" in run_script_expecting_error(capsys, SCRIPT, "--checkpoint_path", torn, "--output_dir", tmp_path / "out")
    assert not marker.exists()


def test_outputs_never_replace_what_is_read_nor_existing_files_unless_asked(tiny_model_dir, tmp_path, capsys):
    checkpoint = fine_tune_checkpoint(tiny_model_dir, tmp_path / "run")
    before = {path.name: path.read_bytes() for path in checkpoint.iterdir() if path.is_file()}
    # already split: checked against the base, nothing rewritten (a narrower --trainable_params would lose weights)
    run_script(SCRIPT, "--checkpoint_path", checkpoint, "--trainable_params", "norm")
    assert "already split" in capsys.readouterr().out
    assert before == {path.name: path.read_bytes() for path in checkpoint.iterdir() if path.is_file()}
    run_script(SCRIPT, "--checkpoint_path", checkpoint, "--output_dir", tmp_path / "split")
    line = run_script_expecting_error(capsys, SCRIPT, "--checkpoint_path", checkpoint, "--output_dir", tmp_path / "split")
    assert "adapter_model.safetensors already exists: pass --overwrite True" in line
    run_script(SCRIPT, "--checkpoint_path", checkpoint, "--output_dir", tmp_path / "split", "--overwrite", "True")
