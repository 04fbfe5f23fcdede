"""Pretraining data: exact row contents for every source kind, token-file widths, and the errors."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from longctx.data import (
    collate_rows,
    default_eval_data,
    default_pretraining_data,
    load_pretraining_dataset,
)
from longctx.token_files import write_token_file

WORDS = [f"w{i}" for i in range(40)]
UNK_ID, EOS_ID = 0, 1


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer built in memory: "wN" is id N + 2, so expected rows are easy to write."""
    vocab = {"<unk>": UNK_ID, "<eos>": EOS_ID, **{word: index + 2 for index, word in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")


def ids(text: str) -> list[int]:
    return [int(word[1:]) + 2 for word in text.split()]


def expected_rows(documents: list[str], row_length: int) -> list[list[int]]:
    """The reference: documents joined with EOS after each, cut into full windows."""
    stream = [token for document in documents for token in [*ids(document), EOS_ID]]
    return [stream[start : start + row_length] for start in range(0, len(stream) - row_length + 1, row_length)]


def rows_of(dataset) -> list[list[int]]:
    rows = [dataset[index] for index in range(len(dataset))]
    for row in rows:
        assert row["input_ids"].dtype == torch.long
        assert torch.equal(row["input_ids"], row["labels"])
    return [row["input_ids"].tolist() for row in rows]


DOCS = ["w1 w2 w3 w4 w5", "w6 w7\nw8", "w9 w10 w11 w12 w13 w14 w15"]


def write_texts(folder: Path, texts: dict[str, str]) -> None:
    for name, text in texts.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")


def test_txt_file_rows_are_the_eos_joined_stream(tmp_path, tokenizer):
    (tmp_path / "book.txt").write_text(DOCS[0])
    dataset = load_pretraining_dataset(str(tmp_path / "book.txt"), tokenizer, model_max_length=4)
    assert rows_of(dataset) == [[3, 4, 5, 6]]  # w5 and EOS are the dropped tail


def test_txt_folder_is_sorted_recursive_and_one_stream(tmp_path, tokenizer):
    write_texts(tmp_path, {"b.txt": DOCS[1], "a.txt": DOCS[0], "sub/c.txt": DOCS[2], "notes.md": "w39 w39"})
    dataset = load_pretraining_dataset(tmp_path, tokenizer, model_max_length=3)
    assert rows_of(dataset) == expected_rows(DOCS, 3)
    assert len(dataset) == (5 + 3 + 7 + 3) // 3


def test_comma_separated_paths_join_in_order(tmp_path, tokenizer):
    write_texts(tmp_path, {"a.txt": DOCS[0], "b.txt": DOCS[1]})
    dataset = load_pretraining_dataset(f"{tmp_path / 'b.txt'},{tmp_path / 'a.txt'}", tokenizer, 5)
    assert rows_of(dataset) == expected_rows([DOCS[1], DOCS[0]], 5)


def test_jsonl_one_document_per_line(tmp_path, tokenizer):
    lines = [json.dumps({"text": text, "meta": index}) for index, text in enumerate(DOCS)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n")
    dataset = load_pretraining_dataset(tmp_path / "docs.jsonl", tokenizer, model_max_length=6)
    assert rows_of(dataset) == expected_rows(DOCS, 6)


def test_invalid_jsonl_line_is_named(tmp_path, tokenizer):
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": DOCS[0]}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"docs\.jsonl:2.*invalid JSON"):
        load_pretraining_dataset(tmp_path / "docs.jsonl", tokenizer, 2)


def test_saved_dataset_and_dataset_dict_train_split(tmp_path, tokenizer):
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_dict({"text": DOCS, "id": [0, 1, 2]})
    other = datasets.Dataset.from_dict({"text": ["w30 w31 w32 w33"], "id": [9]})
    train.save_to_disk(str(tmp_path / "plain"))
    datasets.DatasetDict({"validation": other, "train": train}).save_to_disk(str(tmp_path / "dict"))
    for folder in ("plain", "dict"):
        dataset = load_pretraining_dataset(tmp_path / folder, tokenizer, model_max_length=4)
        assert rows_of(dataset) == expected_rows(DOCS, 4), folder


@pytest.mark.parametrize("name, dtype", [("t.bin", np.uint16), ("t.u32.bin", np.uint32)])
def test_token_file_round_trip(tmp_path, tokenizer, name, dtype):
    stream = np.arange(2, 2 + 30) % len(tokenizer)
    path = write_token_file(stream, tmp_path / name, vocab_size=len(tokenizer))
    assert path == tmp_path / name
    assert np.array_equal(np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<")), stream)
    dataset = load_pretraining_dataset(str(path), tokenizer, model_max_length=8)
    assert rows_of(dataset) == [stream[start : start + 8].tolist() for start in (0, 8, 16)]


def test_token_file_pickles_without_its_contents(tmp_path, tokenizer):
    path = write_token_file(np.full(4096, 5), tmp_path / "t.bin", vocab_size=len(tokenizer))
    dataset = load_pretraining_dataset(path, tokenizer, model_max_length=1024)
    dataset[0]  # maps the file
    restored = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 1024
    assert rows_of(restored) == rows_of(dataset)


def test_large_vocabulary_switches_to_uint32(tmp_path):
    path = write_token_file([70_000, 3], tmp_path / "big.bin", vocab_size=100_000)
    assert path.name == "big.u32.bin"
    assert np.fromfile(path, dtype="<u4").tolist() == [70_000, 3]


def test_uint16_write_never_wraps(tmp_path):
    with pytest.raises(ValueError, match="70000"):
        write_token_file([1, 70_000], tmp_path / "t.bin", vocab_size=100_000, dtype="uint16")
    with pytest.raises(ValueError, match="70000"):
        write_token_file([70_000], tmp_path / "t.u16.bin", vocab_size=100_000)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_token_file([50], tmp_path / "t.bin", vocab_size=50)
    assert not list(tmp_path.iterdir())


def test_token_id_beyond_vocabulary_names_file_and_id(tmp_path, tokenizer):
    path = write_token_file([3] * 10 + [999], tmp_path / "other.bin", vocab_size=1000)
    with pytest.raises(ValueError, match=r"other\.bin holds token id 999"):
        load_pretraining_dataset(path, tokenizer, model_max_length=11)
    # The id lies in the dropped tail: rows actually used are checked, not bytes never read.
    assert len(load_pretraining_dataset(path, tokenizer, model_max_length=5)) == 2


def test_token_dtype_overrides_suffix(tmp_path, tokenizer):
    path = write_token_file(list(range(2, 10)), tmp_path / "t.bin", vocab_size=len(tokenizer), dtype="uint32")
    dataset = load_pretraining_dataset(path, tokenizer, model_max_length=4, token_dtype="uint32")
    assert rows_of(dataset) == [[2, 3, 4, 5], [6, 7, 8, 9]]
    wrong = load_pretraining_dataset(path, tokenizer, model_max_length=4)  # read as uint16: other rows
    assert rows_of(wrong) != rows_of(dataset)


@pytest.mark.parametrize("reader", ["library", "training flags", "evaluation flags"])
def test_unknown_token_dtype_is_one_line_from_every_entry(tmp_path, tokenizer, reader):
    from longctx.args import DataArguments, PerplexityArguments

    path = write_token_file([2, 3, 4, 5], tmp_path / "t.bin", vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match=r"^--token_dtype int8 must be one of uint16, uint32$"):
        if reader == "library":
            load_pretraining_dataset(path, tokenizer, model_max_length=2, token_dtype="int8")
        elif reader == "training flags":
            DataArguments(token_dtype="int8")
        else:
            PerplexityArguments(token_dtype="int8")


def test_max_rows_keeps_the_first_rows(tmp_path, tokenizer):
    write_texts(tmp_path, {f"{index}.txt": text for index, text in enumerate(DOCS)})
    full = load_pretraining_dataset(tmp_path, tokenizer, model_max_length=2)
    capped = load_pretraining_dataset(tmp_path, tokenizer, model_max_length=2, max_rows=3)
    assert len(full) == 9 and rows_of(capped) == rows_of(full)[:3]
    assert len(load_pretraining_dataset(tmp_path, tokenizer, 2, max_rows=100)) == 9


def test_mixed_sources_concatenate_and_share_max_rows(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text(DOCS[0])
    token_file = write_token_file(list(range(10, 18)), tmp_path / "t.bin", vocab_size=len(tokenizer))
    paths = [str(tmp_path / "a.txt"), str(token_file)]
    assert rows_of(load_pretraining_dataset(paths, tokenizer, 4)) == [[3, 4, 5, 6], [10, 11, 12, 13], [14, 15, 16, 17]]
    assert rows_of(load_pretraining_dataset(paths, tokenizer, 4, max_rows=2)) == [[3, 4, 5, 6], [10, 11, 12, 13]]


def test_collate_rows_stacks_for_a_dataloader(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text(" ".join(WORDS))
    dataset = load_pretraining_dataset(tmp_path / "a.txt", tokenizer, 8)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_rows)))
    assert batch["input_ids"].shape == (3, 8) and torch.equal(batch["input_ids"], batch["labels"])
    assert batch["input_ids"][1].tolist() == ids(" ".join(WORDS[8:16]))


def test_missing_path(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_pretraining_dataset(str(tmp_path / "nope.txt"), tokenizer, 4)


def test_not_utf8_names_the_file(tmp_path, tokenizer):
    (tmp_path / "ok.txt").write_text(DOCS[0])
    (tmp_path / "latin1.txt").write_bytes("w1 caf\xe9 w2".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8"):
        load_pretraining_dataset(tmp_path, tokenizer, 2)


def test_too_little_data_says_how_much(tmp_path, tokenizer):
    (tmp_path / "x.txt").write_text(DOCS[0])
    with pytest.raises(ValueError, match=r"x\.txt gives 6 tokens, fewer than one row of 16384 tokens"):
        load_pretraining_dataset(tmp_path / "x.txt", tokenizer, 16384)
    path = write_token_file([2, 3, 4], tmp_path / "t.bin", vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="gives 3 tokens"):
        load_pretraining_dataset(path, tokenizer, 4)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("blank.txt", "  \n\n", "holds no text"),
        ("data.csv", "w1,w2", "unknown data file type"),
        ("odd.bin", b"\x01\x02\x03", "not a whole number"),
    ],
)
def test_bad_sources_raise_one_clear_error(tmp_path, tokenizer, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        load_pretraining_dataset(path, tokenizer, 2)


@pytest.mark.parametrize("kwargs", [{"model_max_length": 0}, {"model_max_length": 4, "max_rows": 0}])
def test_non_positive_sizes_raise(tmp_path, tokenizer, kwargs):
    (tmp_path / "a.txt").write_text(DOCS[0])
    with pytest.raises(ValueError, match="must be positive"):
        load_pretraining_dataset(tmp_path / "a.txt", tokenizer, **kwargs)


def test_bundled_books(tokenizer):
    folder = Path(default_pretraining_data())
    assert sorted(file.name for file in folder.glob("*.txt")) == [
        f"pg19test_{book}.txt" for book in (10146, 10321, 10356, 10762, 22424, 26183)
    ]
    # Real text through the word tokenizer (almost all <unk>); max_rows stops after the first book.
    dataset = load_pretraining_dataset(str(folder), tokenizer, model_max_length=1024, max_rows=2)
    assert len(dataset) == 2 and dataset[1]["input_ids"].shape == (1024,)


def test_bundled_eval_data_is_held_out():
    train_books = {file.name for file in Path(default_pretraining_data()).glob("*.txt")}
    eval_books = {file.name for file in Path(default_eval_data()).glob("*.txt")}
    assert eval_books and not eval_books & train_books
