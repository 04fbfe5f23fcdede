"""Short checks of the streaming cache and multi-round chat on the bundled SmolLM2 (seconds)."""

import pytest
import torch

from longctx.chat import ChatSession, ChatSettings
from longctx.reading_model import ReadingModel, load_for_inference
from longctx.streaming import StreamingCache

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def smollm2():
    return load_for_inference(ReadingModel("smollm2"))


def test_streaming_cache_equals_plain_generation_until_it_evicts(smollm2):
    model, tokenizer = smollm2
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colours of the rainbow."}], tokenize=False, add_generation_prompt=True
    )
    prompt = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    settings = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False}
    plain = model.generate(prompt, **settings)
    streamed = model.generate(prompt, past_key_values=StreamingCache(model, 4, 256), **settings)
    assert torch.equal(plain, streamed)
    small = StreamingCache(model, 4, prompt.shape[1] // 2)  # evicts from the prompt on
    evicted = model.generate(prompt, past_key_values=small, **settings)
    assert evicted.shape == plain.shape and small.stored_length() == 4 + prompt.shape[1] // 2


def test_chat_rounds_append_to_the_cache_in_smollm2s_template(smollm2):
    model, tokenizer = smollm2
    session = ChatSession(model, tokenizer, 8192, ChatSettings(max_gen_len=12, temperature=0))
    session.ask("My name is Ada. Reply with one word: hello.")
    fed_after_first = session.fed_text
    session.ask("What is my name?")
    # the second round's text continues the first one exactly (no re-rendered history, nothing fed twice)
    assert session.fed_text.startswith(fed_after_first)
    assert session.fed_text.count("My name is Ada.") == 1
    rendered = tokenizer.apply_chat_template(session.messages[:-1], tokenize=False, add_generation_prompt=True)
    assert session.fed_text.startswith(rendered.rstrip())
    assert session.cache.get_seq_length() == len(session.history) - 1
