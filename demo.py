r"""Gradio app: upload a long document (.txt/.md/.pdf), ask about it, keep asking (LongLoRA's demo.py).

Answers stream into the page; the document's token count is shown against the window; follow-up
questions reuse the KV cache of the conversation, so the document is read once. Errors (an
unreadable PDF, a document over the window) show in the page. Served on 127.0.0.1 only; --share
opens a public gradio.live link, and --host 0.0.0.0 the local network.

Several users: each browser session has its own document and conversation, never another's. The
model answers one question at a time; the others wait in gradio's queue, which shows their
position. At most --cached_conversations conversations keep their KV cache in memory (the least
recently asked re-read their tokens when asked again), and a session idle for --session_timeout
seconds is forgotten, so memory stays bounded however many sessions come and go.

The bundled SmolLM2:
    python demo.py --port 8898
    # then open http://127.0.0.1:8898

LongLoRA's LongAlpaca models, 4-bit, a 32k window:
    python demo.py --base_model path/to/LongAlpaca-7B --context_size 32768 --prompt_template llama2 \
        --load_in_4bit True --max_gen_len 512 --port 8898
"""

import socket
import sys
from pathlib import Path
from threading import Thread

import gradio as gr
import torch
from transformers import TextIteratorStreamer

from longctx.args import DemoArguments
from longctx.chat import CachePool, ChatSession
from longctx.cli import parse_dataclasses, run_cli
from longctx.material import encode, first_turn, read_material
from longctx.prompts import usable_template
from longctx.reading_model import load_for_inference


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise ValueError(f"--port {port} is in use on {host}: pick another --port") from None


def shown(error: Exception, path: str) -> str:
    """An error about an uploaded file, naming it as the user knows it rather than by the server's temp path."""
    message = str(error)
    for spelling in {str(Path(path)), str(Path(path).expanduser()), str(Path(path).resolve())}:
        message = message.replace(spelling, Path(path).name)
    return message


def build_app(args: DemoArguments, model, tokenizer) -> gr.Blocks:
    window = args.window(model)
    caches = CachePool(args.cached_conversations)

    def load_document(path):
        if not path:
            return "No document yet: upload a .txt, .md or .pdf file.", None, []
        try:
            text = read_material(path, ocr=args.ocr)
        except (ValueError, FileNotFoundError) as error:
            raise gr.Error(shown(error, path)) from None
        tokens = len(encode(tokenizer, text))
        room = window - args.max_gen_len
        status = f"**{Path(path).name}**: {tokens:,} tokens; window {window:,} tokens ({room:,} for the prompt)."
        if tokens > room:
            status += (
                " Longer than the window: streaming keeps only its sinks and latest tokens."
                if args.enable_streaming
                else " Cut in the middle when asked."
                if args.truncate == "middle"
                else " Too long: restart with --truncate middle, a larger --context_size, or --enable_streaming."
            )
        return status, {"text": text, "session": None}, []

    def ask(question, history, document):
        if document is None:
            raise gr.Error("Upload a document first.")
        if not (question or "").strip():
            raise gr.Error("Type a question.")
        session = document["session"]
        try:
            if session is None:
                turn, _ = first_turn(tokenizer, document["text"], question, window, args.prompt_layout())
                session = document["session"] = ChatSession(model, tokenizer, window, args.chat_settings())
            else:
                turn = question
        except ValueError as error:
            raise gr.Error(str(error)) from None
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        failure = []

        def generate():
            try:
                session.ask(turn, streamer)
            except Exception as error:  # noqa: BLE001 - shown in the page below; the streamer must still end
                failure.append(error)
                streamer.end()

        history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        caches.use(session)
        worker = Thread(target=generate, daemon=True)
        worker.start()
        for piece in streamer:
            history[-1]["content"] += piece
            yield history, "", document
        worker.join()
        if failure:
            raise gr.Error(str(failure[0]))
        yield history, "", document

    with gr.Blocks(title="longctx: read a long document", analytics_enabled=False) as app:
        gr.Markdown(f"## Ask about a long document\nModel: `{args.base_model}`; window {window:,} tokens.")
        document = gr.State(None, time_to_live=args.session_timeout)  # this session's text and conversation
        upload = gr.File(label="Document (.txt, .md, .pdf)", file_types=[".txt", ".md", ".pdf"], type="filepath")
        status = gr.Markdown("No document yet: upload a .txt, .md or .pdf file.", elem_id="status")
        chatbot = gr.Chatbot(label="Answers", elem_id="answers", height=420)
        question = gr.Textbox(label="Question", placeholder="What is this document about?", elem_id="question")
        send = gr.Button("Ask", variant="primary", elem_id="ask")
        # one queue for everything that uses the model or its tokenizer: one request at a time, the rest wait
        queued = {"concurrency_id": "model", "concurrency_limit": 1}
        upload.change(load_document, upload, [status, document, chatbot], api_name="load_document", **queued)
        send.click(ask, [question, chatbot, document], [chatbot, question, document], api_name="ask", **queued)
        question.submit(
            ask, [question, chatbot, document], [chatbot, question, document], api_name="ask_on_enter", **queued
        )
    return app


def main():
    (args,) = parse_dataclasses((DemoArguments,), __doc__)
    check_port_free(args.host, args.port)
    model, tokenizer = load_for_inference(args.reading_model(None))
    args.prompt_template = usable_template(tokenizer, args.prompt_template)
    torch.manual_seed(args.seed)
    app = build_app(args, model, tokenizer)
    print(
        f"serving on http://{args.host}:{args.port}" + (" and a public share link" if args.share else ""),
        file=sys.stderr,
    )
    app.queue().launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)


if __name__ == "__main__":
    run_cli(main)
