import pytest

from longctx.material import CUT_MARKER, encode, fit_material, material_turn, read_material
from longctx.prompts import render_question
from tests.pdfs import text_pdf
from tests.tiny_models import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def numbered_material(count: int) -> str:
    return " ".join(f"Sentence number {i} is here." for i in range(count))


def test_material_that_fits_is_the_user_turn_of_the_chat_template(tokenizer):
    fitted = fit_material(tokenizer, "The key is under the mat.", "Where is the key?", window=200, max_gen_len=20)
    assert fitted.user_turn == (
        "Below is a material. Memorize the material and answer my question after the material.\n"
        "The key is under the mat.\nNow the material ends. Where is the key?"
    )
    assert fitted.input_ids == encode(tokenizer, render_question(tokenizer, fitted.user_turn))
    assert fitted.kept_material_tokens == fitted.material_tokens == len(encode(tokenizer, "The key is under the mat."))
    llama2 = fit_material(tokenizer, "The key is under the mat.", "Where?", 1000, 20, template="llama2", material_type="none")
    assert tokenizer.decode(llama2.input_ids) == "[INST]The key is under the mat.\nWhere?[/INST]"  # LongLoRA's inference.py


def test_material_over_the_window_is_refused_with_its_token_count(tokenizer):
    material = numbered_material(60)
    tokens = len(encode(tokenizer, material))
    with pytest.raises(
        ValueError, match=f"the material is {tokens:,} tokens .* over the 256-token window .*--truncate middle"
    ):
        fit_material(tokenizer, material, "Which numbers?", window=256, max_gen_len=32)


def test_middle_cut_keeps_beginning_and_end_and_fits_the_window(tokenizer, capsys):
    material = numbered_material(60)
    fitted = fit_material(tokenizer, material, "Which numbers?", window=256, max_gen_len=32, truncate="middle")
    assert len(fitted.input_ids) <= 256 - 32
    assert len(fitted.input_ids) >= 256 - 32 - 8  # nearly all the room is used
    kept = fitted.user_turn
    assert kept.startswith("Below is a material. Memorize the material and answer my question after the material.\n")
    assert "\nSentence number 0 is here." in kept
    assert kept.endswith("Sentence number 59 is here.\nNow the material ends. Which numbers?")
    assert CUT_MARKER in kept and "Sentence number 30 is here." not in kept
    assert fitted.kept_material_tokens < fitted.material_tokens
    assert "cut in the middle" in capsys.readouterr().err
    with pytest.raises(ValueError, match="leave no room for the material"):
        fit_material(tokenizer, material, "Which numbers? " * 40, window=256, max_gen_len=32, truncate="middle")


def test_read_material_txt_pdf_and_bad_files(tmp_path):
    (tmp_path / "book.txt").write_text("\ufeffChapter one.\n", encoding="utf-8")
    assert read_material(tmp_path / "book.txt") == "Chapter one.\n"
    assert "forty-two" in read_material(text_pdf(tmp_path / "paper.pdf", "The answer is forty-two."))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        read_material(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_material(tmp_path / "latin1.txt")
    (tmp_path / "doc.docx").write_text("x")
    with pytest.raises(ValueError, match="only .txt, .md and .pdf"):
        read_material(tmp_path / "doc.docx")
    with pytest.raises(FileNotFoundError):
        read_material(tmp_path / "missing.txt")
    paper = material_turn("  text \n", " question? ", "paper")
    assert paper == "Below is a paper. Memorize the material and answer my question after the paper.\ntext\nNow the material ends. question?"
    assert "in the book, Moby Dick. Memorize the content" in material_turn("text", "q?", "book", "Moby Dick")
    with pytest.raises(ValueError, match="--material_type"):
        material_turn("text", "q?", "poem")
