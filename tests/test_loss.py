"""Chunked causal LM loss against transformers' own loss, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from longctx.loss import IGNORE_INDEX, causal_lm_loss, chunked_causal_lm_loss_sum
from longctx.lora import setup_lora
from tests.tiny_models import tiny_llama


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1000])
def test_chunked_loss_equals_model_loss_and_gradients(chunk_size):
    model = tiny_llama(dtype=torch.float64).train()
    input_ids = torch.randint(0, 128, (2, 31))
    labels = input_ids.clone()
    labels[0, :7] = IGNORE_INDEX
    logits = model(input_ids).logits  # float64 reference: full logits, shift, mean over labelled targets
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))

    loss_sum, count = causal_lm_loss(model, input_ids, labels, chunk_size=chunk_size)
    loss = loss_sum / count
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    assert int(count) == int((labels[:, 1:] != IGNORE_INDEX).sum())


def test_weights_scale_each_target():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False).double()
    hidden = torch.randn(2, 9, 8, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 9))
    weights = torch.rand(2, 9, dtype=torch.float64)
    got = chunked_causal_lm_loss_sum(hidden, labels, head, weights, chunk_size=4)
    per_token = F.cross_entropy(head(hidden[:, :-1]).flatten(0, 1), labels[:, 1:].flatten(), reduction="none")
    torch.testing.assert_close(got, (per_token * weights[:, 1:].flatten()).sum())


def test_loss_goes_through_peft_wrapper():
    model = tiny_llama(dtype=torch.float64)
    input_ids = torch.randint(0, 128, (1, 20))
    logits = model(input_ids).logits
    expected = F.cross_entropy(logits[0, :-1], input_ids[0, 1:])
    peft_model = setup_lora(model, trainable_params="embed,norm")
    loss_sum, count = causal_lm_loss(peft_model, input_ids, input_ids)
    torch.testing.assert_close(loss_sum / count, expected)  # LoRA B starts at zero
