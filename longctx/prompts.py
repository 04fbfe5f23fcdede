"""Prompt formats shared by supervised fine-tuning, inference and the demo.

A model must be read in the format it was tuned in, so training and reading render conversations
through the same function:

- "chat": the tokenizer's own chat template (the default, for instruct models such as SmolLM2);
- "llama2": LongLoRA's Llama-2 `[INST]` format, byte for byte as its supervised-fine-tune.py and
  inference.py write it: `[INST]{instruction}[/INST]` with no system prompt, and the system form
  `[INST] <<SYS>>\\n{system}<</SYS>> \\n\\n {instruction} [/INST]` only when the conversation starts with a
  system message (LongLoRA's records with an `input`, see longctx.sft_data);
- "vicuna": LongQLoRA's Vicuna format, `{system}\\nUSER: {input}\\nASSISTANT: ` (its SFT data and chat.py).

An answer ends with the EOS token in every format. Whether a prompt starts with the BOS token is the
format's too (`starts_with_bos`): LongLoRA tokenizes with the tokenizer's special tokens (Llama's
BOS), LongQLoRA without any.
"""

import sys

PROMPT_TEMPLATES = ("chat", "llama2", "vicuna")

LLAMA2_SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information.\n"
)
VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def check_template(template: str, tokenizer=None) -> None:
    """One clear line for an unknown template, or "chat" on a tokenizer that has no chat template."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"--prompt_template {template!r}: choose one of {', '.join(PROMPT_TEMPLATES)}")
    if template == "chat" and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: pass --prompt_template llama2 or vicuna")


def usable_template(tokenizer, template: str) -> str:
    """`template`, except "chat" on a tokenizer without a chat template (Llama-2 base, LongAlpaca): LongLoRA's
    llama2 format then, the one such models were tuned in by LongLoRA, with one line saying so."""
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        print("the tokenizer has no chat template: prompts use LongLoRA's llama2 format (--prompt_template llama2)",
              file=sys.stderr)
        return "llama2"
    check_template(template, tokenizer)
    return template


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    if messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _render_llama2(messages: list[dict], eos: str) -> str:
    system, messages = _split_system(messages)
    parts = []
    for index, message in enumerate(messages):
        content = message["content"]
        if message["role"] == "assistant":
            parts.append(f"{content}{eos}")
        elif system is None:  # LongLoRA's prompt_llama2 (its SFT records without input, its inference.py)
            parts.append(f"[INST]{content}[/INST]")
        elif index == 0:  # LongLoRA's prompt_input_llama2 / Llama-2-chat's system block
            parts.append(f"[INST] <<SYS>>\n{system.rstrip(chr(10))}\n<</SYS>> \n\n {content} [/INST]")
        else:
            parts.append(f"[INST] {content} [/INST]")
    return "".join(parts)


def _render_vicuna(messages: list[dict], eos: str) -> str:
    system, messages = _split_system(messages)
    parts = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            parts.append(f"{message['content']}{eos}")
        elif index == 0:  # LongQLoRA's input_template
            parts.append(f"{VICUNA_SYSTEM_PROMPT if system is None else system}\nUSER: {message['content']}\nASSISTANT: ")
        else:
            parts.append(f"USER: {message['content']}\nASSISTANT: ")
    return "".join(parts)


def render_conversation(tokenizer, messages: list[dict], template: str = "chat", add_generation_prompt: bool = True) -> str:
    """Text of a conversation (`{"role", "content"}` dicts; roles system/user/assistant), without BOS.

    With `add_generation_prompt` the text ends where the assistant's next answer begins (the llama2
    and vicuna formats always end a user turn that way). A finished assistant turn ends with the EOS
    token. A leading system message replaces the format's system prompt.
    """
    check_template(template, tokenizer)
    if not messages:
        raise ValueError("a conversation needs at least one message")
    if template == "chat":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    for index, message in enumerate(messages):
        if message["role"] not in ("system", "user", "assistant") or (message["role"] == "system" and index):
            raise ValueError(f"unknown role {message['role']!r} at message {index + 1}: use system (first), user or assistant")
    render = _render_llama2 if template == "llama2" else _render_vicuna
    return render(messages, tokenizer.eos_token)


def render_question(tokenizer, question: str, template: str = "chat") -> str:
    """A single user turn, ready for the model's answer."""
    return render_conversation(tokenizer, [{"role": "user", "content": question}], template)


def starts_with_bos(tokenizer, template: str) -> bool:
    """Whether a prompt in `template` begins with the BOS token.

    llama2 and chat: when the tokenizer adds one to what it encodes (LongLoRA calls `tokenizer(prompt)`,
    so Llama's `<s>` leads); a chat template that writes BOS itself is not doubled (`encode_prompt`).
    vicuna: never (LongQLoRA encodes with `add_special_tokens=False`).
    """
    if template == "vicuna":
        return False
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def encode_prompt(tokenizer, text: str, template: str = "chat") -> list[int]:
    """Token ids of a rendered prompt that starts a conversation, BOS included as the format wants."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if starts_with_bos(tokenizer, template) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]
    return ids
