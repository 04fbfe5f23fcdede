"""QLoRA (LongQLoRA): NF4 + double quantization, with S²-Attn, position interpolation and LoRA+ on CPU."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from longctx.lora import setup_lora
from longctx.modeling import WeightLoading, load_model_and_tokenizer
from tests.scripts import run_script, run_script_expecting_error
from tests.tiny_models import save_moved_adapter

bnb = pytest.importorskip("bitsandbytes")


def test_4bit_loading_is_nf4_with_double_quantization(tiny_model_dir):
    model, _ = load_model_and_tokenizer(
        str(tiny_model_dir), context_size=128, weights=WeightLoading(load_in_4bit=True, compute_dtype="float32")
    )
    projection = model.model.layers[0].self_attn.q_proj
    assert isinstance(projection, bnb.nn.Linear4bit)
    state = projection.weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # nested: the absmax scales are quantized too
    assert projection.compute_dtype == torch.float32
    assert model.config.rope_parameters["factor"] == 2.0
    assert model.model.embed_tokens.weight.dtype == torch.float32  # embeddings and norms stay unquantized

    full, _ = load_model_and_tokenizer(str(tiny_model_dir), context_size=128)
    input_ids = torch.randint(3, model.config.vocab_size, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        quantized_logits, full_logits = model(input_ids).logits, full(input_ids).logits
    assert torch.isfinite(quantized_logits).all()
    assert torch.nn.functional.cosine_similarity(quantized_logits.flatten(), full_logits.flatten(), dim=0) > 0.9

    lora = setup_lora(model, r=4, trainable_params="embed,norm")
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable) and any("embed_tokens" in name for name in trainable)
    assert not any("base_layer" in name for name in trainable)


def test_gradients_flow_through_4bit_layers_after_evaluation(tiny_model_dir):
    """bitsandbytes repacks CPU weights on an eval forward into a kernel without backward; not here."""
    model, _ = load_model_and_tokenizer(
        str(tiny_model_dir), weights=WeightLoading(load_in_4bit=True, compute_dtype="float32")
    )
    input_ids = torch.randint(3, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()(input_ids)  # as fine-tune.py's perplexity check before training
    assert model.model.layers[0].self_attn.q_proj.weight.quant_state.nested
    lora = setup_lora(model, r=4, trainable_params="")
    lora.train()(input_ids, labels=input_ids).loss.backward()
    # q_proj's LoRA B gets gradient only through the frozen 4-bit o_proj (o_proj's own LoRA B is zero)
    gradient = lora.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.grad
    assert gradient is not None and gradient.abs().max() > 0


def test_fine_tune_in_4bit_with_s2_attn_and_pi(tiny_model_dir, tmp_path):
    run_script(
        "fine-tune.py", "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path,
        "--load_in_4bit", "True", "--bnb_4bit_compute_dtype", "float32",
        "--model_max_length", "128", "--group_size_ratio", "0.25", "--learning_rate", "1e-2", "--warmup_steps", "0",
        "--max_steps", "2", "--save_steps", "1", "--max_train_rows", "4", "--eval_windows", "1", "--seed", "7",
        "--dataloader_num_workers", "0", "--disable_tqdm", "True",
    )
    results = json.loads((tmp_path / "fine-tune-results.json").read_text())
    assert results["s2_attn"] is True and results["rope"]["factor"] == 2.0 and results["steps"] == 2
    assert results["perplexity_after"]["perplexity"] < results["perplexity_before"]["perplexity"]
    for folder in (tmp_path, tmp_path / "checkpoint-2"):
        trainable = load_file(folder / "trainable_params.safetensors")
        assert trainable["model.embed_tokens.weight"].dtype == torch.float32
        assert "model.norm.weight" in trainable and not any("lora_" in name for name in trainable)
        assert (folder / "adapter_model.safetensors").exists()
    original = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(load_file(tmp_path / "trainable_params.safetensors")["model.embed_tokens.weight"], original)


def test_4bit_needs_lora(tiny_model_dir, tmp_path, capsys):
    line = run_script_expecting_error(
        capsys, "fine-tune.py", "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path,
        "--load_in_4bit", "True", "--low_rank_training", "False",
    )
    assert "--load_in_4bit" in line and "--low_rank_training True" in line
    line = run_script_expecting_error(
        capsys, "fine-tune.py", "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path,
        "--bnb_4bit_compute_dtype", "int8",
    )
    assert "--bnb_4bit_compute_dtype int8" in line


@pytest.mark.realmodel
def test_smollm2_4bit_memory():
    """SmolLM2-135M: weight memory of the 4-bit NF4 model against float32 (embeddings stay unquantized)."""
    full, _ = load_model_and_tokenizer("smollm2")
    full_bytes = full.get_memory_footprint()
    del full
    quantized, _ = load_model_and_tokenizer(
        "smollm2", weights=WeightLoading(load_in_4bit=True, compute_dtype="float32")
    )
    quantized_bytes = quantized.get_memory_footprint()
    print(f"SmolLM2-135M weights: float32 {full_bytes / 2**20:.0f} MiB, NF4 {quantized_bytes / 2**20:.0f} MiB")
    assert quantized_bytes < 0.5 * full_bytes


def test_eval_reads_a_4bit_base_with_its_adapter_unmerged(tiny_model_dir, tmp_path):
    """LongQLoRA evaluates in 4-bit: the adapter stays a PEFT wrapper (merging would round it into NF4)."""
    from peft import PeftModel

    from longctx.reading_model import ReadingModel, load_for_inference
    from longctx.rope import RopeRequest

    tuned = save_moved_adapter(tiny_model_dir, tmp_path / "adapter")
    input_ids = torch.tensor([[5, 9, 30, 31, 100, 7, 8]])
    base_4bit = ReadingModel(
        str(tiny_model_dir), rope=RopeRequest("none"), weights=WeightLoading(load_in_4bit=True, compute_dtype="float32")
    )
    with torch.no_grad():
        expected = tuned(input_ids=input_ids).logits
        loaded, _ = load_for_inference(replace(base_4bit, peft_model=str(tmp_path / "adapter")))
        base, _ = load_for_inference(base_4bit)
        assert isinstance(loaded, PeftModel) and not loaded.training
        error_with_adapter = (loaded(input_ids=input_ids).logits - expected).abs().max()
        error_without = (base(input_ids=input_ids).logits - expected).abs().max()
    assert error_with_adapter < 0.25 * error_without  # only NF4 rounding is left

    output = tmp_path / "eval.json"
    run_script(
        "eval.py", "--base_model", tiny_model_dir, "--peft_model", tmp_path / "adapter", "--load_in_4bit", "True",
        "--bnb_4bit_compute_dtype", "float32", "--rope_method", "none", "--seq_len", "32", "--max_tokens", "200",
        "--scoring", "strided", "--sliding_window", "16", "--output_json", output,
    )
    assert json.loads(output.read_text())["results"][0]["tokens"] == 199
