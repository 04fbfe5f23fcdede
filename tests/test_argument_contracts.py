"""The seams between argument groups and the library: every keyword an argument group hands over is a parameter
of the function it is for, so a renamed parameter fails here, not at the end of a long run."""

import inspect

import pytest

from longctx.args import InferenceArguments, PerplexityArguments, RetrievalArguments, RulerArguments
from longctx.chat import ChatSession
from longctx.modeling import load_for_inference, load_model_and_tokenizer


@pytest.mark.parametrize(
    "arguments",
    [
        lambda: PerplexityArguments(seq_len="4096"),
        lambda: RetrievalArguments(dca=True, dca_chunk_size=3000),
        lambda: InferenceArguments(material="book.txt", question="Who?", load_in_4bit=True),
        lambda: RulerArguments(lengths="4096", rope_method="yarn", rope_factor=2.0),
    ],
    ids=["eval", "retrieval-dca", "inference-4bit", "ruler-yarn"],
)
def test_loading_options_are_load_for_inference_parameters(arguments):
    arguments = arguments()
    options = arguments.loading_options(4096)
    bound = inspect.signature(load_for_inference).bind(**options)  # TypeError names an unknown keyword
    for key in bound.arguments.get("load_options", {}):  # what load_for_inference passes on
        assert key in inspect.signature(load_model_and_tokenizer).parameters, f"{key} reaches load_model_and_tokenizer"
    assert options["base_model"] == arguments.base_model and options["dca"] == arguments.dca


def test_chat_options_are_chat_session_parameters():
    arguments = InferenceArguments(material="book.txt", question="Who?", enable_streaming=True, start_size=2, recent_size=64, temperature=0)
    options = arguments.chat_options()
    inspect.signature(ChatSession).bind(None, None, 128, **options)
    assert options["streaming"] == (2, 64) and options["temperature"] == 0
    layout = arguments.prompt_layout()
    assert layout.streaming == (2, 64) and layout.max_gen_len == arguments.max_gen_len
