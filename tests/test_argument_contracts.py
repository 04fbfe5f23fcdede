"""The seams between argument groups and the library: each group hands the library one typed object, and what
the object says reaches the model, so a flag dropped on the way fails here, not at the end of a long run."""

import pytest

from longctx.args import InferenceArguments, PerplexityArguments, RetrievalArguments, RulerArguments
from longctx.chat import ChatSettings
from longctx.modeling import WeightLoading
from longctx.reading_model import DualChunkSizes, ReadingModel
from longctx.rope import RopeRequest


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            lambda: PerplexityArguments(seq_len="4096", dtype="float32"),
            ReadingModel("smollm2", context_size=4096, weights=WeightLoading(dtype="float32"), device="cpu"),
        ),
        (
            lambda: RetrievalArguments(dca=True, dca_chunk_size=3000, pretraining_length=2048, dtype="float32"),
            ReadingModel(
                "smollm2",
                context_size=4096,
                rope=RopeRequest(),  # not asked: an adapter's record or longctx.rope's default decides
                weights=WeightLoading(dtype="float32"),
                dca=DualChunkSizes(2048, 3000, None),
                device="cpu",
            ),
        ),
        (
            lambda: InferenceArguments(
                material="book.txt", question="Who?", load_in_4bit=True, bnb_4bit_compute_dtype="bfloat16",
                dtype="float32", cache_dir="/hub",
            ),
            ReadingModel(
                "smollm2",
                context_size=4096,
                weights=WeightLoading(dtype="float32", load_in_4bit=True, compute_dtype="bfloat16", cache_dir="/hub"),
                device="cpu",
            ),
        ),
        (
            lambda: RulerArguments(lengths="4096", rope_method="yarn", rope_factor=2.0, dtype="float32", device_map="auto"),
            ReadingModel(
                "smollm2",
                context_size=4096,
                rope=RopeRequest("yarn", 2.0),
                weights=WeightLoading(dtype="float32", device_map="auto"),
            ),
        ),
    ],
    ids=["eval", "retrieval-dca", "inference-4bit", "ruler-yarn-auto"],
)
def test_reading_arguments_become_one_reading_model(arguments, expected):
    assert arguments().reading_model(4096, device="cpu") == expected


def test_training_arguments_choose_a_rope_method_and_keep_the_weights_flags():
    from longctx.args import ModelArguments

    theta = ModelArguments(rope_theta=500000.0, load_in_4bit=True, cache_dir="/hub")
    assert theta.rope_request() == RopeRequest("theta", None, 500000.0)
    assert theta.weight_loading() == WeightLoading(dtype="float32", load_in_4bit=True, cache_dir="/hub")
    assert ModelArguments().rope_request() == RopeRequest("linear")  # LongLoRA's rule


def test_chat_settings_carry_every_chat_flag():
    arguments = InferenceArguments(
        material="book.txt", question="Who?", enable_streaming=True, start_size=2, recent_size=64, temperature=0,
        top_p=0.5, max_gen_len=7, prompt_template="llama2",
    )
    assert arguments.chat_settings() == ChatSettings(7, 0, 0.5, "llama2", (2, 64))
    layout = arguments.prompt_layout()
    assert layout.streaming == (2, 64) and layout.max_gen_len == arguments.max_gen_len
