"""Many questions on one KV cache, past the window with StreamingLLM (LongLoRA's run_streaming_llama_longalpaca.py).

Each `instruction` of --test_filepath (a JSON list of LongAlpaca records, or of strings) is asked in
turn in StreamingLLM's prompt format ("USER: {instruction}\\n\\nASSISTANT: ", encoded with the
tokenizer's special tokens) and answered greedily, the answers streaming to the terminal. With
--enable_streaming the cache keeps --start_size attention sinks and the --recent_size latest tokens
(longctx.streaming.StreamingCache), so the conversation runs past the window in bounded memory;
without it a round that would overflow the window is refused.

LongLoRA's command (its README writes ----enable_streaming; that spelling works too):
    python run_streaming_llama_longalpaca.py --enable_streaming --test_filepath outputs_stream.json \\
        --use_flash_attn True --recent_size 32768 --model_name_or_path path/to/LongAlpaca-7B

The bundled SmolLM2, its own window less the answers:
    python run_streaming_llama_longalpaca.py --enable_streaming --test_filepath prompts.json --recent_size 2000 \\
        --max_gen_len 64 --output_json outputs/streaming/answers.json
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TextStreamer

from longctx.args import InferenceModelArguments
from longctx.chat import ChatSession, ChatSettings
from longctx.cli import parse_dataclasses, run_cli
from longctx.io import write_json_atomic
from longctx.modeling import DEFAULT_MODEL
from longctx.reading_model import load_for_inference

PROMPT = "USER: {instruction}\n\nASSISTANT: "  # StreamingLLM's format, as LongLoRA's script asks


@dataclass
class StreamingArguments(InferenceModelArguments):
    base_model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "the model: 'smollm2', a local HF folder or a cached hub id", "aliases": ["--model_name_or_path"]},
    )
    flash_attn: bool = field(
        default=False, metadata={"help": "flash-attn 2 (CUDA only; falls back to SDPA)", "aliases": ["--use_flash_attn"]}
    )
    test_filepath: str | None = field(default=None, metadata={"help": "JSON list of {instruction} records (or strings)"})
    enable_streaming: bool = field(default=False, metadata={"help": "StreamingLLM cache: sinks + recent tokens"})
    start_size: int = field(default=4, metadata={"help": "attention-sink tokens kept (with --enable_streaming)"})
    recent_size: int = field(default=8192, metadata={"help": "most recent tokens kept (with --enable_streaming)"})
    max_gen_len: int = field(default=1000, metadata={"help": "most tokens generated per answer (LongLoRA's 1000)"})
    output_json: str | None = field(default=None, metadata={"help": "write every prompt and answer to this JSON file"})

    def __post_init__(self):
        super().__post_init__()
        if not self.test_filepath:
            raise ValueError("--test_filepath is required: a JSON list of {instruction} records")
        if self.start_size < 0 or self.recent_size <= 0 or self.max_gen_len <= 0:
            raise ValueError("--start_size must be >= 0, --recent_size and --max_gen_len positive")


def read_instructions(path: str) -> list[str]:
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--test_filepath {path}: no such file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--test_filepath {path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(records, list):
        raise ValueError(f"--test_filepath {path}: expected a JSON list of records")
    instructions = [record if isinstance(record, str) else record.get("instruction") if isinstance(record, dict) else None
                    for record in records]
    if not all(isinstance(text, str) and text.strip() for text in instructions):
        raise ValueError(f"--test_filepath {path}: every record needs a non-empty 'instruction'")
    return instructions


def main():
    (args,) = parse_dataclasses((StreamingArguments,), __doc__)
    instructions = read_instructions(args.test_filepath)
    model, tokenizer = load_for_inference(args.reading_model(None))
    window = args.context_size or model.config.max_position_embeddings
    streaming = (args.start_size, args.recent_size) if args.enable_streaming else None
    settings = ChatSettings(max_gen_len=args.max_gen_len, temperature=0, streaming=streaming)
    session = ChatSession(model, tokenizer, window, settings)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    rounds = []
    for instruction in instructions:
        prompt = PROMPT.format(instruction=instruction)
        print("\n" + prompt, end="", flush=True)
        answer_ids = session.continue_with(tokenizer(prompt)["input_ids"], streamer)
        rounds.append({"instruction": instruction, "answer": tokenizer.decode(answer_ids, skip_special_tokens=True)})
    seen, cached = len(session.history), session.cached_tokens()
    print(f"{len(rounds)} rounds; {seen:,} tokens seen, {cached:,} in the cache", file=sys.stderr)
    if args.output_json:
        write_json_atomic(args.output_json, {"config": {**vars(args)}, "rounds": rounds})


if __name__ == "__main__":
    run_cli(main)
