"""LongLoRA's added [PAD]: its LoRA+ weights (vocabulary + 1 embedding rows) load in every reading path and
the merge, and fine-tune.py adds the same token, so its weights have LongLoRA's rows and resume."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from longctx.lora import setup_lora
from longctx.reading_model import ReadingModel, load_for_inference
from longctx.rope import RopeRequest
from longctx.special_tokens import add_tokens_for_trainable_params, missing_special_tokens
from tests.scripts import run_script, run_script_expecting_error


def longlora_checkpoint(model_dir, folder, seed: int = 0):
    """What LongLoRA's fine-tune.py + get_trainable_weights.py leave: [PAD] added (rows set to the mean),
    LoRA+ trained, adapter_model.bin and trainable_params.bin (base names, embeddings with the extra row)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.add_special_tokens({"pad_token": "[PAD]"}) == 1  # smart_tokenizer_and_embedding_resize
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[-1:] = embeddings[:-1].mean(dim=0, keepdim=True)
    model = setup_lora(model, r=4, alpha=8, trainable_params="embed,norm")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    folder.mkdir(parents=True)
    model.save_pretrained(folder, safe_serialization=False, save_embedding_layers=False)  # adapter_model.bin, LoRA only
    trainable = {
        name.removeprefix("base_model.model."): parameter.detach().clone()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and "lora_" not in name
    }
    torch.save(trainable, folder / "trainable_params.bin")
    return model.merge_and_unload().eval(), len(tokenizer)


def test_missing_tokens_follow_longlora(llama2_like_model_dir, tiny_model_dir):
    from longctx.modeling import load_tokenizer

    assert missing_special_tokens(load_tokenizer(str(llama2_like_model_dir))) == {"pad_token": "[PAD]"}
    assert missing_special_tokens(load_tokenizer(str(tiny_model_dir))) == {"unk_token": "<unk>"}  # its own <pad>


def test_longlora_weights_with_the_pad_row_load_for_reading_and_merge(llama2_like_model_dir, tmp_path, capsys):
    folder = tmp_path / "longlora-8k"
    expected_model, vocabulary = longlora_checkpoint(llama2_like_model_dir, folder)
    model, tokenizer = load_for_inference(
        ReadingModel(str(llama2_like_model_dir), peft_model=folder, rope=RopeRequest("none"))
    )
    assert "added [PAD] as LongLoRA did (320 -> 321 tokens)" in capsys.readouterr().out
    assert model.get_input_embeddings().weight.shape[0] == vocabulary == len(tokenizer)
    assert tokenizer.pad_token == "[PAD]" and model.config.pad_token_id == tokenizer.pad_token_id == 320
    input_ids = torch.randint(3, 320, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, expected_model(input_ids).logits)

    merged = tmp_path / "merged"
    run_script(
        "merge_lora_weights_and_save_hf_model.py", "--base_model", llama2_like_model_dir, "--peft_model", folder,
        "--context_size", "64", "--save_path", merged,
    )
    assert json.loads((merged / "config.json").read_text())["vocab_size"] == 321
    assert AutoTokenizer.from_pretrained(merged).pad_token == "[PAD]"
    reloaded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, expected_model(input_ids).logits, rtol=1e-5, atol=1e-5)

    output = tmp_path / "eval.json"
    run_script(
        "eval.py", "--base_model", llama2_like_model_dir, "--peft_model", folder, "--seq_len", "48",
        "--context_size", "64", "--max_tokens", "400", "--output_json", output,
    )
    assert json.loads(output.read_text())["results"][0]["perplexity"] > 1


def test_rows_no_missing_token_explains_are_refused_in_one_line(llama2_like_model_dir, tmp_path, capsys):
    model, tokenizer = load_for_inference(ReadingModel(str(llama2_like_model_dir), rope=RopeRequest("none")))
    state = {"model.embed_tokens.weight": torch.zeros(325, model.config.hidden_size)}
    with pytest.raises(ValueError, match="has 325 rows, the model 320 and its tokenizer 321 tokens .*another vocabulary"):
        add_tokens_for_trainable_params(model, tokenizer, state)
    folder = tmp_path / "odd"
    longlora_checkpoint(llama2_like_model_dir, folder)
    trainable = torch.load(folder / "trainable_params.bin")
    trainable["model.embed_tokens.weight"] = torch.zeros(330, model.config.hidden_size)
    torch.save(trainable, folder / "trainable_params.bin")
    line = run_script_expecting_error(
        capsys, "passkey_retrivial.py", "--base_model", llama2_like_model_dir, "--peft_model", folder,
        "--max_tokens", "64", "--interval", "64", "--num_tests", "1",
    )
    assert "330 rows" in line


def test_fine_tune_adds_longlora_pad_and_resumes(llama2_like_model_dir, tmp_path, capsys):
    def fine_tune(*extra):
        run_script(
            "fine-tune.py", "--model_name_or_path", llama2_like_model_dir, "--output_dir", tmp_path,
            "--model_max_length", "64", "--max_train_rows", "4", "--save_steps", "1", "--skip_eval", "True",
            "--learning_rate", "1e-2", "--warmup_steps", "0", "--disable_tqdm", "True", *extra,
        )

    fine_tune("--max_steps", "1")
    assert "added LongLoRA's [PAD] token (the tokenizer has no pad token): embeddings 320 -> 321 rows" in capsys.readouterr().out
    assert load_file(tmp_path / "trainable_params.safetensors")["model.embed_tokens.weight"].shape[0] == 321
    fine_tune("--max_steps", "2", "--resume_from_checkpoint", "latest")
    assert load_file(tmp_path / "checkpoint-2" / "trainable_params.safetensors")["model.embed_tokens.weight"].shape[0] == 321
    model, tokenizer = load_for_inference(
        ReadingModel(str(llama2_like_model_dir), peft_model=tmp_path, context_size=64)
    )
    assert len(tokenizer) == 321 and isinstance(model, torch.nn.Module) and not isinstance(model, PeftModel)
