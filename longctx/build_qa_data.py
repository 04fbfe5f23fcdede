"""Long-document QA records from the bundled books, in LongAlpaca format, for SFT on this machine.

Each record is a section of a book (long-tailed lengths: many short, a few near --max_tokens) with
one made-up fact hidden at a random depth - a pass key, or the place where an object was hidden -
and the question after the section, so the answer must come from reading the whole material:

    python -m longctx.build_qa_data --output outputs/sft-data/train.json --num_samples 64
    python -m longctx.build_qa_data --output outputs/sft-data/heldout.json --books data/pg19_eval \\
        --num_samples 16 --max_tokens 4096 --seed 1

Build the held-out split from books the training split does not use (data/pg19_eval). The records and
their fields: longctx.qa_data.
"""

from __future__ import annotations

from longctx.args import QADataArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.data import default_pretraining_data
from longctx.io import write_json_atomic
from longctx.outputs import check_output_file
from longctx.qa_data import build_records
from longctx.retrieval import read_haystack, split_sentences


def main():
    (args,) = parse_dataclasses((QADataArguments,), __doc__)
    books = args.books or default_pretraining_data()
    check_output_file("--output", args.output, {"--books": books}, args.overwrite)
    sentences = split_sentences(" ".join(read_haystack(books, flag="--books").split()))
    records = build_records(sentences, args.num_samples, args.min_tokens, args.max_tokens, args.seed)
    write_json_atomic(args.output, records)
    lengths = sorted(record["approx_tokens"] for record in records)
    print(
        f"wrote {len(records)} records to {args.output}: ~{lengths[0]} to ~{lengths[-1]} tokens "
        f"(median ~{lengths[len(lengths) // 2]})"
    )


if __name__ == "__main__":
    run_cli(main)
