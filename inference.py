r"""Ask a (long-context) model about a long material: a book or paper as .txt/.md or .pdf (LongLoRA's inference.py).

The material and the question form one user turn, rendered with the tokenizer's chat template (or
--prompt_template llama2 for LongLoRA/LongAlpaca models); the answer streams to the terminal.
A material over the window (--context_size, default the model's native window) less --max_gen_len
is refused with its token count, or cut in the middle with a warning under --truncate middle.

The bundled SmolLM2 on a book passage:
    python inference.py --material data/pg19_eval/pg19test_29973.txt --question "Who wrote this book?" \
        --truncate middle --temperature 0

LongLoRA's command (a fine-tuned adapter, RoPE scaled as in training):
    python inference.py --base_model path/to/Llama-2-13b-chat-hf --peft_model path/to/LongAlpaca-13B \
        --context_size 32768 --prompt_template llama2 --max_gen_len 512 \
        --material materials/paper.pdf --question "What are the main contributions of this paper?"

Multi-round chat on one KV cache (questions typed on stdin; an empty line or EOF ends it), past the
window with StreamingLLM's cache (4 attention sinks + 2000 recent tokens):
    python inference.py --material book.txt --question "Summarize chapter 1." --chat \
        --enable_streaming --start_size 4 --recent_size 2000
"""

import sys

import torch
from transformers import TextStreamer

from longctx.args import InferenceArguments
from longctx.chat import ChatSession
from longctx.cli import parse_dataclasses, run_cli
from longctx.material import first_turn, read_material
from longctx.prompts import usable_template
from longctx.reading_model import load_for_inference


def main():
    (args,) = parse_dataclasses((InferenceArguments,), __doc__)
    material = read_material(args.material, ocr=args.ocr)
    model, tokenizer = load_for_inference(args.reading_model(None))
    args.prompt_template = usable_template(tokenizer, args.prompt_template)
    window = args.window(model)
    question = args.question or input("question> ")
    user_turn, size = first_turn(tokenizer, material, question, window, args.prompt_layout())
    print(size, file=sys.stderr)
    torch.manual_seed(args.seed)
    session = ChatSession(model, tokenizer, window, args.chat_settings())
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    session.ask(user_turn, streamer)
    while args.chat:
        try:
            question = input("question> ").strip()
        except EOFError:
            break
        if not question:
            break
        session.ask(question, streamer)


if __name__ == "__main__":
    run_cli(main)
