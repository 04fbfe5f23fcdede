"""longctx.evaluation: window plans, perplexity against float64 token-by-token references, data, model loading."""

import copy
import math

import numpy as np
import pytest
import torch

from longctx.data import token_stream
from longctx.evaluation import Window, evaluate_perplexity, plan_windows
from longctx.reading_model import ReadingModel, load_for_inference
from longctx.rope import RopeRequest
from longctx.token_files import write_token_file
from tests.tiny_models import save_moved_adapter, tiny_llama

VOCAB = 128


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=3)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, size=61).astype(np.uint16)


@torch.no_grad()
def reference_nll(model, tokens, context_start) -> tuple[float, int]:
    """Sum of -log p(token j | tokens[context_start(j):j]) over j >= 1, one float64 forward per token."""
    reference = copy.deepcopy(model).double()
    total = 0.0
    for j in range(1, len(tokens)):
        context = torch.tensor(tokens[context_start(j) : j], dtype=torch.long)[None]
        log_probs = torch.log_softmax(reference(input_ids=context).logits[0, -1], dim=-1)
        total -= float(log_probs[int(tokens[j])])
    return total, len(tokens) - 1


@pytest.mark.parametrize("num_tokens,seq_len,stride", [(61, 16, 5), (100, 16, 15), (17, 16, 1), (16, 16, 4), (1000, 64, 48)])
def test_strided_plan_scores_every_token_once_with_enough_context(num_tokens, seq_len, stride):
    windows = plan_windows(num_tokens, seq_len, "strided", stride)
    scored = [w.start + p for w in windows for p in range(w.first_target, seq_len)]
    assert scored == list(range(1, num_tokens))  # each token after the first, once, in order
    assert windows[-1].start + seq_len == num_tokens and all(w.first_target >= 1 for w in windows)
    for w in windows:
        for p in range(w.first_target, seq_len):  # context of token w.start + p is p tokens
            assert p >= min(w.start + p, seq_len - stride)


def test_longlora_plan_is_longloras_window_list():
    windows = plan_windows(1000, 128, "longlora", 256)
    assert [w.start for w in windows] == list(range(0, 1000 - 128, 256))[:-1] == [0, 256, 512]
    assert all(w.first_target == 1 for w in windows)


@pytest.mark.parametrize(
    "num_tokens,seq_len,scoring,stride,message",
    [
        (10, 16, "strided", 4, "fewer than one window of 16 tokens"),
        (10, 16, "longlora", 4, "fewer than one window of 16 tokens"),
        (20, 16, "longlora", 4, "needs more than 20"),
        (64, 16, "strided", 16, "stride below the window length"),
        (64, 16, "magic", 4, "unknown scoring"),
    ],
)
def test_plan_refuses_data_too_short_or_bad_settings(num_tokens, seq_len, scoring, stride, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(num_tokens, seq_len, scoring, stride)


def test_strided_equals_token_by_token_sliding_window(model, tokens):
    """Stride 1: every token is read with exactly min(j, seq_len - 1) tokens of context."""
    seq_len = 12
    nll, count = reference_nll(model, tokens, lambda j: max(0, j - (seq_len - 1)))
    result = evaluate_perplexity(model, tokens, seq_len, "strided", stride=1, batch_size=4, progress=False)
    assert result["tokens"] == count == len(tokens) - 1
    assert result["windows"] == len(tokens) - seq_len + 1
    assert math.isclose(result["loss"], nll / count, rel_tol=1e-5)
    assert math.isclose(result["perplexity"], math.exp(nll / count), rel_tol=1e-5)


def test_strided_equals_token_by_token_disjoint_chunks(model, tokens):
    """Stride seq_len - 1 on 1 + k(seq_len - 1) tokens: chunks of seq_len - 1 targets, each read from its chunk's start."""
    seq_len = 16
    data = tokens[: 1 + 4 * (seq_len - 1)]
    nll, count = reference_nll(model, data, lambda j: (j - 1) // (seq_len - 1) * (seq_len - 1))
    result = evaluate_perplexity(model, data, seq_len, "strided", stride=seq_len - 1, progress=False)
    assert result["windows"] == 4 and result["tokens"] == count
    assert math.isclose(result["loss"], nll / count, rel_tol=1e-5)


@torch.no_grad()
def test_longlora_equals_explicit_loop_over_its_windows(model, tokens):
    """LongLoRA's eval.py: model(input_ids=x, labels=x).loss per window, then the mean."""
    seq_len, stride = 16, 7
    starts = list(range(0, len(tokens) - seq_len, stride))
    starts.pop()
    losses = []
    for start in starts:
        x = torch.tensor(tokens[start : start + seq_len], dtype=torch.long)[None]
        losses.append(float(model(input_ids=x, labels=x).loss))
    expected = sum(losses) / len(losses)
    for batch_size in (1, 3):
        result = evaluate_perplexity(model, tokens, seq_len, "longlora", stride=stride, batch_size=batch_size, progress=False)
        assert result["windows"] == len(starts) and result["tokens"] == len(starts) * (seq_len - 1)
        assert math.isclose(result["loss"], expected, rel_tol=1e-5)


def test_token_stream_reads_text_and_token_files(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (tmp_path / "a.txt").write_text("The grass is green.", encoding="utf-8")
    (tmp_path / "b.txt").write_text("The sky is blue.", encoding="utf-8")
    expected = []
    for text in ("The grass is green.", "The sky is blue."):
        expected += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert list(token_stream(str(tmp_path), tokenizer)) == expected
    assert list(token_stream(str(tmp_path), tokenizer, max_tokens=5)) == expected[:5]

    path = write_token_file(expected, tmp_path / "tokens.bin", vocab_size=len(tokenizer))
    assert list(token_stream(str(path), tokenizer)) == expected
    assert list(token_stream(f"{path},{path}", tokenizer)) == expected * 2

    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        token_stream(str(tmp_path / "latin1.txt"), tokenizer)
    with pytest.raises(FileNotFoundError, match="no such file"):
        token_stream(str(tmp_path / "missing.bin"), tokenizer)
    big = write_token_file([5, 400, 7], tmp_path / "other.bin", vocab_size=65536)
    with pytest.raises(ValueError, match="token id 400"):
        token_stream(str(big), tokenizer)


def test_load_for_inference_applies_adapter_and_trainable_params(tmp_path, tiny_model_dir):
    tuned = save_moved_adapter(tiny_model_dir, tmp_path)
    input_ids = torch.tensor([[5, 9, 30, 31, 100, 7, 8]])
    with torch.no_grad():
        expected = tuned(input_ids=input_ids).logits
        loaded, _ = load_for_inference(
            ReadingModel(str(tiny_model_dir), peft_model=str(tmp_path), rope=RopeRequest("none"))
        )
        base, _ = load_for_inference(ReadingModel(str(tiny_model_dir), rope=RopeRequest("none")))
        assert not loaded.training and type(loaded).__name__ == "LlamaForCausalLM"  # merged, no PEFT wrapper
        torch.testing.assert_close(loaded(input_ids=input_ids).logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(base(input_ids=input_ids).logits, expected, atol=1e-2)

    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_for_inference(ReadingModel(str(tiny_model_dir), peft_model=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither adapter_config.json"):
        load_for_inference(ReadingModel(str(tiny_model_dir), peft_model=str(tmp_path / "empty")))


def test_window_dataclass_is_the_plan_unit():
    assert plan_windows(16, 16, "strided", 4) == [Window(0, 1)]
