"""Prompt formats against the upstream strings, written out here as LongLoRA and LongQLoRA write them.

LongLoRA's supervised-fine-tune.py (PROMPT_DICT) renders a LongAlpaca record without `input` as
"prompt_llama2" and one with `input` as "prompt_input_llama2", the target `{output}{eos}`, and encodes
with the tokenizer's special tokens (Llama's BOS first); its inference.py asks
"prompt_llama2" with the instruction `material + "\\n%s" % question`. LongQLoRA's VicunaSFTDataset
renders {input, output} records with its input_template, both fields stripped, and encodes prompt and
answer without special tokens, EOS after the answer.
"""

import pytest

from longctx.loss import IGNORE_INDEX
from longctx.material import fit_material
from longctx.prompts import LLAMA2_SYSTEM_PROMPT, render_conversation, render_question
from longctx.sft_data import prompt_token_ids, to_conversation, tokenize_conversation
from tests.tiny_models import tiny_llama, tiny_tokenizer

LONGLORA_PROMPT_LLAMA2 = "[INST]{instruction}[/INST]"
LONGLORA_PROMPT_INPUT_LLAMA2 = (
    "[INST] <<SYS>>\n"
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"  # noqa: E501
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.\n"  # noqa: E501
    "<</SYS>> \n\n {instruction} \n{input} [/INST]"
)
LONGQLORA_INPUT_TEMPLATE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.\nUSER: {input}\nASSISTANT: "
)

RECORD = {"instruction": "Below is a paper.\nThe paper ends. What is it about?", "output": "It is about whales."}
RECORD_WITH_INPUT = {"instruction": "Summarize the passage.", "input": "Call me Ishmael.\nSome years ago.", "output": "A sailor."}


@pytest.fixture(scope="module")
def llama_tokenizer():
    """Llama-2's tokenizer as LongLoRA meets it: BOS added to every encoded text, no pad token."""
    return tiny_tokenizer(pad=False, add_bos=True)


@pytest.mark.parametrize("record, upstream", [(RECORD, LONGLORA_PROMPT_LLAMA2), (RECORD_WITH_INPUT, LONGLORA_PROMPT_INPUT_LLAMA2)])
def test_llama2_sft_records_render_as_longlora(llama_tokenizer, record, upstream):
    conversation = to_conversation(record, "llama2")
    source, target = upstream.format_map(record), f"{record['output']}{llama_tokenizer.eos_token}"
    assert render_conversation(llama_tokenizer, conversation.messages, "llama2", add_generation_prompt=False) == source + target
    sample = tokenize_conversation(llama_tokenizer, conversation, "llama2", 4096)
    assert sample.input_ids == llama_tokenizer(source + target)["input_ids"]  # BOS first, as LongLoRA encodes
    prompt_length = len(llama_tokenizer(source)["input_ids"])  # LongLoRA masks the source's tokens
    assert sample.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert sample.labels[prompt_length:] == sample.input_ids[prompt_length:]
    assert prompt_token_ids(llama_tokenizer, conversation, "llama2") == llama_tokenizer(source)["input_ids"]


def test_llama2_without_system_message_has_no_system_prompt(llama_tokenizer):
    assert render_question(llama_tokenizer, "Summarise the book.", "llama2") == "[INST]Summarise the book.[/INST]"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    text = render_conversation(llama_tokenizer, messages, template="llama2")
    assert text == "[INST] <<SYS>>\nBe brief.\n<</SYS>> \n\n Q1 [/INST]A1</s>[INST] Q2 [/INST]"
    system = [{"role": "system", "content": LLAMA2_SYSTEM_PROMPT}, {"role": "user", "content": "{instruction} \n{input}"}]
    assert render_conversation(llama_tokenizer, system, "llama2") == LONGLORA_PROMPT_INPUT_LLAMA2


def test_inference_prompt_is_longlora_inference_py(llama_tokenizer):
    """inference.py/demo.py under --prompt_template llama2: the material as is, the question on the next line."""
    from longctx.args import InferenceArguments
    from longctx.chat import ChatSession, ChatSettings

    material, question = "Chapter 1.\nIt was a dark night.\n", "Who is there?"
    args = InferenceArguments(material="book.txt", question=question, prompt_template="llama2")
    assert args.prompt_layout().material_type == "none"
    upstream = llama_tokenizer(LONGLORA_PROMPT_LLAMA2.format_map({"instruction": material + "\n%s" % question}))["input_ids"]
    fitted = fit_material(llama_tokenizer, material, question, 256, 8, "llama2", material_type=args.prompt_layout().material_type)
    assert fitted.input_ids == upstream
    model = tiny_llama(vocab_size=len(llama_tokenizer))
    session = ChatSession(model, llama_tokenizer, 256, ChatSettings(max_gen_len=2, temperature=0, template="llama2"))
    session.ask(fitted.user_turn)
    assert session.history[: len(upstream)] == upstream


def test_vicuna_records_are_longqlora(llama_tokenizer):
    record = {"input": "  Call me Ishmael. What is my name?\n", "output": " Ishmael. "}
    conversation = to_conversation(record, "vicuna")
    sample = tokenize_conversation(llama_tokenizer, conversation, "vicuna", 4096)
    prompt = llama_tokenizer(LONGQLORA_INPUT_TEMPLATE.format(input=record["input"].strip()), add_special_tokens=False).input_ids
    answer = llama_tokenizer(record["output"].strip(), add_special_tokens=False).input_ids + [llama_tokenizer.eos_token_id]
    assert sample.input_ids == prompt + answer  # no BOS: LongQLoRA encodes without special tokens
    assert sample.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert render_question(llama_tokenizer, "hi", "vicuna") == LONGQLORA_INPUT_TEMPLATE.format(input="hi")


def test_chat_template_ends_with_the_assistant_turn_open():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert render_question(tokenizer, "hi") == "<user>hi</user><assistant>"


@pytest.mark.parametrize(
    "template, messages, error",
    [
        ("alpaca", [{"role": "user", "content": "x"}], "choose one of chat, llama2, vicuna"),
        ("chat", [{"role": "user", "content": "x"}], "no chat template"),
        ("llama2", [], "at least one message"),
        ("llama2", [{"role": "tool", "content": "x"}], "unknown role 'tool'"),
        ("vicuna", [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "unknown role 'system'"),
    ],
)
def test_bad_templates_and_messages_are_refused_in_one_line(template, messages, error):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match=error):
        render_conversation(tokenizer, messages, template=template)


def test_generation_prompt_tokens_are_what_the_model_reads(llama_tokenizer):
    """The chat session feeds the first turn with BOS (llama2), later turns without."""
    from longctx.chat import ChatSession, ChatSettings

    model = tiny_llama(vocab_size=len(llama_tokenizer))
    session = ChatSession(model, llama_tokenizer, 256, ChatSettings(max_gen_len=2, temperature=0, template="llama2"))
    session.ask("Q1")
    first = list(session.history)
    assert first[0] == llama_tokenizer.bos_token_id
    session.ask("Q2")
    assert session.history.count(llama_tokenizer.bos_token_id) == 1
