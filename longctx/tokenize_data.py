"""Text to a LongLoRA token file: `.bin` of uint16 ids, or `.u32.bin` when the vocabulary needs uint32.

Documents (.txt files, folders of them, .jsonl lines with a `text` field, saved datasets) are
tokenized without special tokens and joined with EOS, as fine-tune.py reads text; ids never wrap
(longctx.token_files.write_token_file refuses ids that do not fit).

    python -m longctx.tokenize_data --tokenizer smollm2 --input data/pg19_eval --output outputs/pg19_eval.bin
    python -m longctx.tokenize_data --tokenizer path/to/Llama-3-8B --input books/ --output books.bin
        (a 128k vocabulary: written as books.u32.bin)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from longctx.cli import parse_dataclasses, run_cli
from longctx.modeling import DEFAULT_MODEL, load_tokenizer, resolve_model_path
from longctx.outputs import check_output_file
from longctx.token_files import TOKEN_DTYPES, token_file_path, tokenize_to_file, tokenizer_vocab_size


@dataclass
class TokenizeDataArguments:
    input: str = field(metadata={"help": ".txt files or folders, .jsonl (text field) or saved datasets; comma-separated for several"})
    output: str = field(metadata={"help": "token file to write: NAME.bin (uint16, or NAME.u32.bin when the vocabulary needs it)"})
    tokenizer: str = field(default=DEFAULT_MODEL, metadata={"help": "model whose tokenizer to use: smollm2, a HF folder, a .gguf file or a cached hub id"})
    dtype: str | None = field(default=None, metadata={"help": "force uint16 or uint32 (default: from the vocabulary size)"})
    max_tokens: int | None = field(default=None, metadata={"help": "stop after this many tokens"})
    overwrite: bool = field(default=False, metadata={"help": "replace --output when it already exists"})

    def __post_init__(self):
        if self.dtype not in (None, *TOKEN_DTYPES):
            raise ValueError(f"--dtype {self.dtype} must be one of {', '.join(TOKEN_DTYPES)}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"--max_tokens must be positive (got {self.max_tokens})")
        if any(part.strip().lower().endswith(".bin") for part in self.input.split(",")):
            raise ValueError(f"--input {self.input} is already a token file; give text")
        if not self.output.lower().endswith(".bin"):
            raise ValueError(f"--output {self.output} must end in .bin (or .u32.bin)")


def main():
    (args,) = parse_dataclasses((TokenizeDataArguments,), __doc__)
    tokenizer = load_tokenizer(resolve_model_path(args.tokenizer))
    output = token_file_path(args.output, tokenizer_vocab_size(tokenizer), args.dtype)
    check_output_file("--output", output, {"--input": args.input}, args.overwrite)
    path, count, width = tokenize_to_file(args.input, args.output, tokenizer, args.dtype, args.max_tokens)
    print(f"wrote {count:,} tokens ({width}) to {path}")


if __name__ == "__main__":
    run_cli(main)
