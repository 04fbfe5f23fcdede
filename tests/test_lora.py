"""LoRA+: which weights train, and the trainable-params file round trip."""

import pytest
import torch

from longctx.lora import (
    TRAINABLE_PARAMS_FILE,
    count_parameters,
    load_trainable_params,
    save_trainable_params,
    setup_lora,
)
from tests.tiny_models import tiny_llama


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_lora_on_attention_plus_embeddings_and_norms():
    model = setup_lora(tiny_llama(), r=4, alpha=8, trainable_params="embed,norm")
    names = trainable_names(model)
    lora = {n for n in names if "lora_" in n}
    assert {n.split(".")[-4] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert any(n.endswith("embed_tokens.weight") for n in names)
    assert sum("layernorm" in n for n in names) == 4 and any(n.endswith("model.norm.weight") for n in names)
    assert not any("mlp" in n for n in names)
    base = model.get_base_model()
    assert base.lm_head.weight is base.model.embed_tokens.weight  # tied: training embed trains the head


def test_all_linear_and_plain_lora():
    model = setup_lora(tiny_llama(), target="all-linear", trainable_params="")
    names = trainable_names(model)
    assert any("mlp.gate_proj.lora_A" in n for n in names) and all("lora_" in n for n in names)


def test_unknown_trainable_params_fail_loudly():
    with pytest.raises(ValueError, match="matches no parameter"):
        setup_lora(tiny_llama(), trainable_params="nonexistent")


def test_trainable_params_round_trip_into_a_fresh_base(tmp_path):
    model = setup_lora(tiny_llama(), trainable_params="embed,norm")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    path = save_trainable_params(model, tmp_path)
    assert path.name == TRAINABLE_PARAMS_FILE
    fresh = tiny_llama()
    loaded = load_trainable_params(fresh, tmp_path)
    assert "model.embed_tokens.weight" in loaded and "model.norm.weight" in loaded
    trained = model.get_base_model()
    torch.testing.assert_close(fresh.model.embed_tokens.weight, trained.model.embed_tokens.weight)
    torch.testing.assert_close(fresh.lm_head.weight, trained.model.embed_tokens.weight)
    torch.testing.assert_close(fresh.model.layers[1].post_attention_layernorm.weight, trained.model.layers[1].post_attention_layernorm.weight)


def test_trainable_params_from_another_base_are_refused(tmp_path):
    save_trainable_params(setup_lora(tiny_llama(hidden_size=32, num_attention_heads=4)), tmp_path)
    with pytest.raises(ValueError, match="shape"):
        load_trainable_params(tiny_llama(), tmp_path)
    with pytest.raises(FileNotFoundError):
        load_trainable_params(tiny_llama(), tmp_path / "missing")


def test_count_parameters_counts_tied_weights_once():
    model = tiny_llama()
    trainable, total = count_parameters(model)
    assert total == sum(p.numel() for p in set(model.parameters())) == trainable
