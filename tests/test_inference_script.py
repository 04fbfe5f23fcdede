import io

import pytest

from tests.pdfs import text_pdf
from tests.reading import expected_answer
from tests.scripts import run_script, run_script_expecting_error

MATERIAL = "The ship was called the Pequod. Its captain was Ahab, and he hunted a white whale."
QUESTION = "Who was the captain?"


@pytest.fixture
def material(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(MATERIAL + "\n", encoding="utf-8")
    return path


def ask(model_dir, material, *extra) -> list:
    """inference.py's arguments: the tiny model asked QUESTION about `material`, then `extra`."""
    return ["inference.py", "--base_model", model_dir, "--material", material, "--question", QUESTION, *extra]


def test_inference_streams_the_answer_to_the_material_question(tiny_model_dir, material, capsys):
    run_script(*ask(tiny_model_dir, material, "--max_gen_len", "12", "--seed", "3", "--context_size", "256"))
    captured = capsys.readouterr()
    # the same prompt and sampling settings (temperature 0.6, top-p 0.9, seed 3) by hand
    answer, prompt_length = expected_answer(tiny_model_dir, MATERIAL, QUESTION, window=256, max_gen_len=12, seed=3)
    assert answer.strip()
    assert captured.out == answer + "\n"
    assert f"prompt {prompt_length} of the 256-token window" in captured.err


def test_material_over_the_window_is_refused_or_cut_in_the_middle(tiny_model_dir, tmp_path, capsys):
    long_material = tmp_path / "long.txt"
    long_material.write_text(" ".join(f"Line {i} of the log." for i in range(200)))
    line = run_script_expecting_error(
        capsys, *ask(tiny_model_dir, long_material, "--context_size", "256", "--max_gen_len", "8")
    )
    assert "tokens (prompt" in line and "256-token window" in line and "--truncate middle" in line
    run_script(
        *ask(
            tiny_model_dir,
            long_material,
            "--max_gen_len",
            "8",
            "--truncate",
            "middle",
            "--temperature",
            "0",
            "--context_size",
            "256",
        )
    )
    err = capsys.readouterr().err
    assert "warning: the material is" in err and "cut in the middle" in err


def test_pdf_material_and_bad_materials(tiny_model_dir, tmp_path, capsys):
    pdf = text_pdf(tmp_path / "note.pdf", MATERIAL)
    run_script(*ask(tiny_model_dir, pdf, "--max_gen_len", "4", "--temperature", "0", "--context_size", "256"))
    assert "material: " in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n")
    assert "is empty" in run_script_expecting_error(
        capsys, "inference.py", "--base_model", tiny_model_dir, "--material", tmp_path / "empty.txt", "--question", "Q?"
    )
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    assert "not a readable PDF" in run_script_expecting_error(
        capsys,
        "inference.py",
        "--base_model",
        tiny_model_dir,
        "--material",
        tmp_path / "broken.pdf",
        "--question",
        "Q?",
    )
    assert "--question is required" in run_script_expecting_error(capsys, "inference.py", "--material", pdf)
    assert "--truncate" in run_script_expecting_error(
        capsys, "inference.py", "--material", pdf, "--question", "Q?", "--truncate", "end"
    )


def test_chat_mode_answers_questions_from_stdin_past_the_window_with_streaming(
    tiny_model_dir, material, capsys, monkeypatch
):
    monkeypatch.setattr("sys.stdin", io.StringIO("Which ship?\nAnd the whale?\nWhat colour?\n\nnever read\n"))
    run_script(
        *ask(
            tiny_model_dir,
            material,
            "--max_gen_len",
            "16",
            "--chat",
            "--enable_streaming",
            "--start_size",
            "4",
            "--recent_size",
            "24",
        )
    )
    captured = capsys.readouterr()
    assert captured.out.count("question> ") == 4  # three answered, the empty line ends the chat
    assert "streaming cache of 4 + 24 tokens" in captured.err
