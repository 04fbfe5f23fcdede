import pytest
import torch
from transformers import StoppingCriteria
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from longctx.chat import ChatSession, ChatSettings
from longctx.reading_model import ReadingModel
from longctx.rope import rotate_by
from longctx.streaming import StreamingCache, StreamingLayer
from tests.tiny_models import tiny_llama, tiny_llama_config

ARCHITECTURES = ("llama", "mistral", "qwen2")


def tiny_model(architecture: str, dtype=torch.float32, **overrides):
    """A tiny random Llama, Mistral or Qwen2 (same sizes): the RoPE models the streaming cache supports."""
    if architecture == "llama":
        return tiny_llama(dtype=dtype, **overrides)
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[architecture]
    settings = tiny_llama_config(**overrides).to_dict()
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    config = config_class(**{key: settings[key] for key in keys}, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = model_class(config).to(dtype)
    model.set_attn_implementation("sdpa")
    return model.eval()


class RecordCacheSize(StoppingCriteria):
    """Never stops; records the cache size after every generation step."""

    def __init__(self, cache):
        self.cache, self.sizes = cache, []

    def __call__(self, input_ids, scores, **kwargs):
        self.sizes.append(self.cache.stored_length())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def test_rotate_keys_moves_keys_like_rope_at_the_new_position():
    model = tiny_llama(dtype=torch.float64)
    rotary = model.model.rotary_emb
    keys = torch.randn(1, 2, 5, 16, dtype=torch.float64)
    old, new = torch.tensor([[3, 9, 40, 41, 100]]), torch.tensor([[0, 1, 2, 3, 4]])
    cos_old, sin_old = rotary(keys, old)
    cos_new, sin_new = rotary(keys, new)
    rotated_old, _ = apply_rotary_pos_emb(keys, keys, cos_old, sin_old)
    expected, _ = apply_rotary_pos_emb(keys, keys, cos_new, sin_new)
    moved = rotate_by(rotated_old, (new - old)[0], rotary.inv_freq)
    torch.testing.assert_close(moved, expected, rtol=1e-5, atol=1e-5)  # the model's own RoPE runs in float32


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_streaming_matches_a_fresh_pass_over_the_kept_tokens_past_the_window(architecture):
    """One layer: the cached keys/values depend only on their token, so each step's logits must equal a plain
    forward over sinks + recent tokens + the new one, numbered from 0 (StreamingLLM's definition)."""
    model = tiny_model(architecture, dtype=torch.float64, num_hidden_layers=1)
    start_size, recent_size, prompt_length, new_tokens = 4, 8, 20, 40
    prompt = torch.randint(3, 128, (1, prompt_length), generator=torch.Generator().manual_seed(0))
    cache = StreamingCache(model, start_size, recent_size)
    recorder = RecordCacheSize(cache)
    output = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        past_key_values=cache,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        stopping_criteria=[recorder],
    )
    sequence = output.sequences[0]
    assert len(sequence) == prompt_length + new_tokens > 3 * (start_size + recent_size)
    assert max(recorder.sizes) == start_size + recent_size
    assert cache.get_seq_length() == len(sequence) - 1  # the last token was never fed
    with torch.no_grad():
        for step, logits in enumerate(output.logits):
            if step == 0:
                context = sequence[:prompt_length]
            else:
                seen = sequence[: prompt_length + step - 1]
                kept = (
                    torch.cat([seen[:start_size], seen[-recent_size:]])
                    if len(seen) > start_size + recent_size
                    else seen
                )
                context = torch.cat([kept, sequence[prompt_length + step - 1 : prompt_length + step]])
            reference = model(context[None]).logits[0, -1]
            torch.testing.assert_close(
                logits[0].double(), reference, rtol=1e-5, atol=1e-5
            )  # generate returns float32 logits


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_streaming_equals_plain_generation_when_nothing_is_evicted(architecture):
    model = tiny_model(architecture, num_hidden_layers=2)
    prompt = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    plain = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, min_new_tokens=40, do_sample=False
    )
    cache = StreamingCache(model, start_size=4, recent_size=100)
    streamed = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        past_key_values=cache,
        max_new_tokens=40,
        min_new_tokens=40,
        do_sample=False,
    )
    assert torch.equal(plain, streamed)


def test_streaming_chat_runs_many_rounds_past_the_window_in_bounded_memory(tiny_model_dir, monkeypatch):
    from longctx.reading_model import load_for_inference

    stored_after_update = []
    original_update = StreamingLayer.update

    def update(layer, *args, **kwargs):  # record what every forward (prefill chunk or decoding step) leaves stored
        result = original_update(layer, *args, **kwargs)
        stored_after_update.append(layer.stored_length())
        return result

    monkeypatch.setattr(StreamingLayer, "update", update)
    model, tokenizer = load_for_inference(ReadingModel(str(tiny_model_dir)))
    start_size, recent_size = 4, 24
    settings = ChatSettings(max_gen_len=12, temperature=0, streaming=(start_size, recent_size))
    session = ChatSession(model, tokenizer, 64, settings)
    session.generation_config.min_new_tokens = 12
    questions = ["Who is the captain?", "Where does the ship sail?", "What happens next?", "And in the end?", "Why?"]
    for question in questions:
        assert isinstance(session.ask(question), str)
    assert len(session.history) > 2 * model.config.max_position_embeddings  # the conversation outgrew the window
    assert session.cache.get_seq_length() == len(session.history) - 1
    assert max(stored_after_update) == start_size + recent_size
    assert [message["role"] for message in session.messages] == ["user", "assistant"] * len(questions)


def test_chat_rounds_on_one_cache_equal_generating_from_the_whole_conversation(tiny_model_dir):
    from longctx.reading_model import load_for_inference

    model, tokenizer = load_for_inference(ReadingModel(str(tiny_model_dir)))
    session = ChatSession(model, tokenizer, 400, ChatSettings(max_gen_len=8, temperature=0))
    session.generation_config.min_new_tokens = 8
    session.ask("The ship is called the Pequod.\nWhat is the ship called?")
    history_before = list(session.history)
    second = session.ask("Who is the captain?")
    # the second round's prompt is the first round's tokens plus the rendered new turn
    assert session.history[: len(history_before)] == history_before
    prompt = torch.tensor([session.history[: len(session.history) - 8]])
    fresh = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8, do_sample=False
    )
    assert session.history[-8:] == fresh[0, prompt.shape[1] :].tolist()
    assert second == tokenizer.decode(fresh[0, prompt.shape[1] :], skip_special_tokens=True)


def test_chat_refuses_a_round_past_the_window_without_streaming(tiny_model_dir):
    from longctx.reading_model import load_for_inference

    model, tokenizer = load_for_inference(ReadingModel(str(tiny_model_dir)))
    session = ChatSession(model, tokenizer, 64, ChatSettings(max_gen_len=8, temperature=0))
    with pytest.raises(ValueError, match="over the 64-token window: start again with --enable_streaming"):
        for _ in range(10):
            session.ask("Tell me more about the whale and the sea.")
    assert session.messages[-1]["role"] == "assistant"  # the refused question is not kept


def test_a_cache_pool_bounds_the_caches_and_a_released_conversation_answers_the_same(tiny_model_dir):
    import gc

    from longctx.chat import CachePool
    from longctx.reading_model import load_for_inference

    model, tokenizer = load_for_inference(ReadingModel(str(tiny_model_dir)))

    def conversation():
        session = ChatSession(model, tokenizer, 400, ChatSettings(max_gen_len=8, temperature=0))
        session.generation_config.min_new_tokens = 8
        return session

    pool, reference = CachePool(capacity=2), conversation()
    sessions = [conversation() for _ in range(3)]
    first_turn = "The ship is called the Pequod.\nWhat is the ship called?"
    for session in [*sessions, reference]:
        if session is not reference:
            pool.use(session)
        session.ask(first_turn)
    assert len(pool) == 2 and sessions[0].cached_tokens() == 0 and sessions[2].cached_tokens() > 0
    pool.use(sessions[0])  # asked again: it reads its conversation anew, the least recent one is released
    assert sessions[0].ask("Who is the captain?") == reference.ask("Who is the captain?")
    assert sessions[1].cached_tokens() == 0 and len(pool) == 2
    del sessions[2]
    gc.collect()
    assert len(pool) == 1  # a dropped session's cache goes with it
