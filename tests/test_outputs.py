"""Output flags: checked before any work, never onto an input, never over an existing file unless asked."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from longctx.outputs import check_output_file, check_output_folder
from tests.scripts import ROOT, run_script, run_script_expecting_error

BOOK = ROOT / "data" / "pg19_eval" / "pg19test_29973.txt"


def unwritable_folder(tmp_path) -> Path:
    """A folder this process cannot create files in (chmod works for users, /sys for root); else skip."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    for candidate in (folder, Path("/sys")):
        try:
            handle, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(handle)
        os.unlink(probe)
    pytest.skip("no unwritable folder on this machine")


def test_an_output_file_is_never_an_input_nor_an_existing_file_unless_asked(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("text")
    with pytest.raises(ValueError, match="--output_json .*book.txt is also --data_path: writing it would replace the input"):
        check_output_file("--output_json", book, {"--data_path": f"{tmp_path / 'other.txt'},{book}"}, overwrite=True)
    with pytest.raises(ValueError, match="already exists: pass --overwrite True to replace it"):
        check_output_file("--output_json", book)
    assert check_output_file("--output_json", book, overwrite=True) == book
    assert check_output_file("--output_json", tmp_path / "new" / "deeper" / "result.json") is not None
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert check_output_file("--output_json", None) is None
    with pytest.raises(ValueError, match="is a folder: name a file"):
        check_output_file("--output_json", tmp_path)
    with pytest.raises(ValueError, match="book.txt is a file, not a folder"):
        check_output_file("--output_json", book / "result.json")
    with pytest.raises(ValueError, match="--output_json is empty"):
        check_output_file("--output_json", " ")
    with pytest.raises(ValueError, match="cannot write in"):
        check_output_file("--output_json", unwritable_folder(tmp_path) / "result.json")


def test_an_output_folder_is_empty_unless_reused(tmp_path):
    (tmp_path / "run" / "checkpoint-9").mkdir(parents=True)
    with pytest.raises(ValueError, match="--output_dir .*run already exists and is not empty: choose a new folder"):
        check_output_folder("--output_dir", tmp_path / "run")
    assert check_output_folder("--output_dir", tmp_path / "run", reuse=True) == tmp_path / "run"
    with pytest.raises(ValueError, match="is also --model_name_or_path"):
        check_output_folder("--output_dir", tmp_path / "run", {"--model_name_or_path": str(tmp_path / "run")}, reuse=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_folder("--save_path", tmp_path / "file")
    with pytest.raises(ValueError, match="cannot write in"):
        check_output_folder("--save_path", unwritable_folder(tmp_path) / "merged")


def test_eval_never_writes_over_its_own_data(tmp_path, capsys, tiny_model_dir):
    book = shutil.copy(BOOK, tmp_path / "book.txt")
    before = Path(book).read_bytes()
    common = ["--base_model", tiny_model_dir, "--seq_len", "32", "--max_tokens", "200", "--sliding_window", "16"]
    line = run_script_expecting_error(capsys, "eval.py", *common, "--data_path", book, "--output_json", book, "--overwrite", "True")
    assert "--output_json" in line and "is also --data_path" in line
    assert Path(book).read_bytes() == before

    output = tmp_path / "eval.json"
    run_script("eval.py", *common, "--data_path", book, "--output_json", output)
    line = run_script_expecting_error(capsys, "eval.py", *common, "--data_path", book, "--output_json", output)
    assert "eval.json already exists: pass --overwrite True" in line
    (tmp_path / "eval.json").unlink()  # the plot beside it is still there
    line = run_script_expecting_error(capsys, "eval.py", *common, "--data_path", book, "--output_json", output)
    assert "--plot (beside --output_json)" in line and "eval.png already exists" in line
    run_script("eval.py", *common, "--data_path", book, "--output_json", output, "--overwrite", "True")
    assert output.is_file()


@pytest.mark.parametrize(
    "script,args",
    [
        ("eval.py", ["--seq_len", "32"]),
        ("passkey_retrivial.py", ["--max_tokens", "256", "--interval", "128"]),
        ("needle_in_haystack.py", ["--max_tokens", "256", "--interval", "128"]),
    ],
)
def test_output_locations_are_checked_before_the_model_loads(tmp_path, capsys, script, args):
    (tmp_path / "a-file").write_text("")
    # the model does not exist: the output error must come first
    line = run_script_expecting_error(
        capsys, script, "--base_model", "no-such-model", *args, "--output_json", tmp_path / "a-file" / "result.json"
    )
    assert "--output_json" in line and "a-file is a file, not a folder" in line


def test_qa_accuracy_never_writes_over_its_questions(tmp_path, capsys):
    questions = tmp_path / "heldout.json"
    questions.write_text("[]")
    line = run_script_expecting_error(
        capsys, "longctx/qa_accuracy.py", "--eval_data_path", questions, "--output_json", questions, "--overwrite", "True"
    )
    assert "is also --eval_data_path" in line and questions.read_text() == "[]"


def test_data_tools_refuse_existing_outputs_and_name_their_own_flags(tmp_path, capsys, tiny_model_dir):
    tokens = tmp_path / "tokens.bin"
    tokens.write_bytes(b"\x01\x00")
    line = run_script_expecting_error(
        capsys, "longctx/tokenize_data.py", "--tokenizer", tiny_model_dir, "--input", BOOK, "--output", tokens
    )
    assert "--output" in line and "tokens.bin already exists" in line and tokens.read_bytes() == b"\x01\x00"
    line = run_script_expecting_error(
        capsys, "longctx/tokenize_data.py", "--tokenizer", tiny_model_dir, "--input", tmp_path / "missing.txt",
        "--output", tmp_path / "new.bin",
    )
    assert line.endswith(f"--input {tmp_path / 'missing.txt'}: no such file or folder")

    line = run_script_expecting_error(capsys, "longctx/build_qa_data.py", "--output", BOOK, "--books", BOOK)
    assert "--output" in line and "is also --books" in line
    line = run_script_expecting_error(
        capsys, "longctx/build_qa_data.py", "--output", tmp_path / "qa.json", "--books", tmp_path / "no-books"
    )
    assert line.endswith(f"--books {tmp_path / 'no-books'}: no such file or folder")


def test_pdf2txt_never_replaces_a_jsonl_unless_asked(tmp_path, capsys):
    pytest.importorskip("fpdf")
    from tests.pdfs import text_pdf

    pdf = text_pdf(tmp_path / "a.pdf", "A short paper.")
    jsonl = tmp_path / "papers.jsonl"
    jsonl.write_text('{"text": "kept"}\n')
    line = run_script_expecting_error(capsys, "pdf2txt/pdf2txt.py", "--input", pdf, "--output_jsonl", jsonl)
    assert "papers.jsonl already exists: pass --overwrite True" in line and jsonl.read_text() == '{"text": "kept"}\n'
    line = run_script_expecting_error(capsys, "pdf2txt/pdf2txt.py", "--input", pdf, "--output_jsonl", pdf)
    assert "is also --input" in line
    run_script("pdf2txt/pdf2txt.py", "--input", pdf, "--output_jsonl", jsonl, "--overwrite", "True")
    assert "A short paper." in jsonl.read_text()


def test_merge_checks_its_save_path_before_loading(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    line = run_script_expecting_error(
        capsys, "merge_lora_weights_and_save_hf_model.py", "--base_model", "no-such-model",
        "--peft_model", tmp_path / "adapter", "--context_size", "64", "--save_path", tmp_path / "a-file" / "merged",
    )
    assert "--save_path" in line and "a-file is a file, not a folder" in line
