"""PDF to clean text, for reading (inference.py, demo.py) and for building long-document training data.

On pypdf (BSD): reading order (two-column pages read left column first), running headers, footers
and page numbers dropped, words hyphenated across lines joined; OCR of scanned pages only with --ocr
(optional extra: pip install pytesseract, apt-get install tesseract-ocr). See longctx/pdf.py.

Files and folders (searched recursively), one .txt per PDF in --output_dir, keeping sub-folders:
    python pdf2txt/pdf2txt.py --input papers/ extra.pdf --output_dir outputs/papers_txt

Pretraining data for fine-tune.py (--data_path takes .jsonl with a text field):
    python pdf2txt/pdf2txt.py --input papers/ --output_jsonl outputs/papers.jsonl
    python fine-tune.py --data_path outputs/papers.jsonl --model_max_length 16384 ...

A PDF that cannot be read (damaged, encrypted, no text layer) is skipped with one line saying why;
the run fails only when no PDF could be converted.
"""

import json
import sys
from pathlib import Path

from tqdm import tqdm

from longctx.args import Pdf2TxtArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.io import atomic_file, write_text_atomic
from longctx.outputs import check_output_file, check_output_folder
from longctx.pdf import find_pdfs, pdf_to_text


def main():
    (args,) = parse_dataclasses((Pdf2TxtArguments,), __doc__)
    inputs = {"--input": args.input}
    check_output_file("--output_jsonl", args.output_jsonl, inputs, args.overwrite)
    if args.output_dir:
        check_output_folder("--output_dir", args.output_dir, inputs, reuse=True)  # existing .txt files are skipped
    sources = find_pdfs(args.input)  # [(pdf, path relative to its input)]
    records, failures = [], []
    for pdf, relative in tqdm(sources, desc="pdf2txt", unit="pdf", disable=len(sources) < 2):
        target = Path(args.output_dir, relative).with_suffix(".txt") if args.output_dir else None
        if target is not None and target.exists() and not args.overwrite and not args.output_jsonl:
            print(f"{target} exists, skipped (--overwrite replaces it)", file=sys.stderr)
            continue
        try:
            text = pdf_to_text(pdf, ocr=args.ocr)
        except ValueError as error:
            failures.append(str(error))
            if len(sources) > 1:
                print(f"skipped: {error}", file=sys.stderr)
            continue
        if target is not None and (args.overwrite or not target.exists()):
            write_text_atomic(target, text)
        records.append({"text": text, "source": str(pdf)})
    if failures and not records:
        raise ValueError(
            failures[0] if len(failures) == 1 else f"none of {len(failures)} PDFs could be read; first: {failures[0]}"
        )
    if args.output_jsonl:
        with atomic_file(args.output_jsonl) as temporary:
            temporary.write_text(
                "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8"
            )
    words = sum(len(record["text"].split()) for record in records)
    print(f"converted {len(records)} PDF(s), {words:,} words; {len(failures)} skipped")


if __name__ == "__main__":
    run_cli(main)
