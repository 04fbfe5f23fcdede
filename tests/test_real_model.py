"""Short checks on the real bundled SmolLM2-135M-Instruct (converted once from its GGUF, then cached)."""

import pytest
import torch

from longctx.attention import disable_s2_attn, enable_s2_attn
from longctx.lora import save_trainable_params, setup_lora
from longctx.loss import causal_lm_loss
from longctx.modeling import load_model_and_tokenizer
from longctx.rope import RopeRequest, context_window

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def smollm2():
    return load_model_and_tokenizer("smollm2")


def test_loads_and_answers(smollm2):
    model, tokenizer = smollm2
    assert model.config.num_attention_heads == 9 and model.config.max_position_embeddings == 8192
    assert tokenizer.pad_token is not None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, prompt["input_ids"].shape[1]:])


def test_s2_attn_lora_step_on_real_text(smollm2, tmp_path):
    model, tokenizer = smollm2
    text = open("data/pg19/pg19test_10146.txt", encoding="utf-8").read()[:4000]
    input_ids = tokenizer(text, return_tensors="pt").input_ids[:, :512]
    with torch.no_grad():
        full_sum, count = causal_lm_loss(model, input_ids, input_ids)
        # groups of twice the length: the shifted groups [-512, 512) cover the row too, so S²-Attn is exact
        enable_s2_attn(model, group_size=1024)
        whole_sum, _ = causal_lm_loss(model, input_ids, input_ids)
    torch.testing.assert_close(whole_sum / count, full_sum / count, rtol=1e-4, atol=1e-4)

    enable_s2_attn(model, group_size_ratio=0.25)
    peft_model = setup_lora(model, trainable_params="embed,norm")
    peft_model.train()
    loss_sum, _ = causal_lm_loss(peft_model, input_ids, input_ids)
    loss = loss_sum / count
    loss.backward()
    # an untrained model loses context (and its first-token attention sink) in groups of 128: worse, not broken
    assert full_sum / count < loss.detach() < 0.75 * torch.log(torch.tensor(float(len(tokenizer))))
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert peft_model.get_base_model().model.norm.weight.grad is not None
    assert save_trainable_params(peft_model, tmp_path).stat().st_size > 0
    disable_s2_attn(peft_model)
    peft_model.unload()


def test_rope_extension_of_the_real_config():
    model, _ = load_model_and_tokenizer("smollm2", context_size=16384, rope=RopeRequest("yarn"))
    assert context_window(model.config) >= 16384
    assert model.config.rope_parameters["rope_type"] == "yarn"


def test_unknown_model_names_what_was_looked_for():
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        load_model_and_tokenizer("someone/not-cached-model")
