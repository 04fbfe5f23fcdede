"""Training data: fixed-length pretraining rows (SFT samples and packing: longctx.sft_data, longctx.sft_batching).

Pretraining sources (docs/ARCHITECTURE.md, "Data formats"); a path may be a file or a folder, and several
paths may be given as a list or one comma-separated string:

- ``.txt`` files, or folders of them (sorted, recursive): each file is one document;
- ``.jsonl`` with a ``text`` field: each line is one document;
- a ``datasets`` dataset saved with ``save_to_disk`` (a ``DatasetDict`` gives its ``train`` split);
- token files as LongLoRA writes them: ``.bin`` = raw little-endian uint16 ids, ``.u32.bin`` = uint32
  (for vocabularies over 65535), read lazily through ``np.memmap``.

Text documents are tokenized without special tokens, each followed by EOS, and the joined stream is
cut into consecutive rows of exactly ``model_max_length`` tokens, dropping the partial tail, as in
LongLoRA's continued pretraining on RedPajama. Token files are cut the same way, each file on its
own. Every item is ``{"input_ids": LongTensor(model_max_length), "labels": same values}``: the loss
shifts labels, so the default collator (or :func:`collate_rows`) is all a Trainer needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset
from tqdm.auto import tqdm

from longctx.text_files import read_jsonl, read_text_file, split_paths, text_files
from longctx.token_files import UINT32_SUFFIX, check_token_dtype, MemmapTokens, reader_dtype, tokenizer_vocab_size

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_FEW_DOCUMENTS = 8  # show a progress bar above this many documents
_TOKENIZE_BATCH = 64  # documents per tokenizer call: fast tokenizers encode a batch in parallel
_SCAN_CHUNK = 1 << 24  # tokens per step when checking a token file's ids, so memory stays bounded

SourceKind = Literal["txt", "jsonl", "dataset", "tokens"]


@dataclass(frozen=True)
class _Source:
    path: Path  # as the user wrote it, so error messages show their spelling
    kind: SourceKind


class TokenRowDataset(Dataset):
    """Consecutive non-overlapping windows of a 1-D token array, one training row each.

    ``tokens`` may be an in-memory array (tokenized text) or a lazily opened token file.
    """

    def __init__(self, tokens: np.ndarray | MemmapTokens, model_max_length: int, num_rows: int):
        if num_rows * model_max_length > len(tokens):
            raise ValueError(f"{num_rows} rows of {model_max_length} tokens exceed {len(tokens)} tokens")
        self._tokens = tokens
        self.model_max_length = model_max_length
        self.num_rows = num_rows

    def token_ids(self) -> np.ndarray | np.memmap:
        """The tokens its rows are cut from, as one stream (a lazy memmap slice for a token file)."""
        return self._tokens[: self.num_rows * self.model_max_length]

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.num_rows <= index < self.num_rows:
            raise IndexError(f"row {index} out of range for {self.num_rows} rows")
        start = (index % self.num_rows) * self.model_max_length
        window = np.asarray(self._tokens[start : start + self.model_max_length], dtype=np.int64)
        input_ids = torch.from_numpy(window)
        # A copy, so a collator that masks labels in place cannot touch input_ids.
        return {"input_ids": input_ids, "labels": input_ids.clone()}


def load_pretraining_dataset(
    data_path: str | Path | Sequence[str | Path],
    tokenizer: PreTrainedTokenizerBase,
    model_max_length: int,
    token_dtype: str | None = None,
    max_rows: int | None = None,
    flag: str = "--data_path",
) -> Dataset:
    """Rows of exactly ``model_max_length`` tokens from text or token files, labels equal to inputs.

    Consecutive text sources form one stream (documents joined with EOS); each token file gives
    its own windows. ``token_dtype`` ("uint16"/"uint32") overrides the suffix rule for token files.
    ``max_rows`` keeps the first rows only, and stops tokenizing once they are filled. ``flag`` names
    the paths in errors (the command-line flag they came from).
    """
    if model_max_length <= 0:
        raise ValueError(f"the row length must be positive (got {model_max_length})")
    if max_rows is not None and max_rows <= 0:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    check_token_dtype(token_dtype)
    sources = [_resolve_source(path, flag) for path in split_paths(data_path, flag)]

    parts: list[Dataset] = []
    rows_left = max_rows
    for group in _stream_groups(sources):
        if rows_left == 0:
            break
        if group[0].kind == "tokens":
            part = _token_file_rows(group[0].path, tokenizer, model_max_length, token_dtype, rows_left)
        else:
            part = _text_rows(group, tokenizer, model_max_length, rows_left)
        parts.append(part)
        rows_left = None if rows_left is None else rows_left - len(part)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def token_stream(
    data_path: str | Path | Sequence[str | Path],
    tokenizer: PreTrainedTokenizerBase,
    token_dtype: str | None = None,
    max_tokens: int | None = None,
    flag: str = "--data_path",
) -> np.ndarray | np.memmap:
    """One token stream from token files or text, as fine-tune.py reads them, cut to `max_tokens`.

    Text documents are joined with EOS; a token file stays a lazy memmap (only the windows read are
    loaded). Several sources are concatenated. Bad paths, non-UTF-8 text and ids beyond the
    vocabulary fail with one line naming `flag`.
    """
    rows = load_pretraining_dataset(
        data_path, tokenizer, model_max_length=1, token_dtype=token_dtype, max_rows=max_tokens, flag=flag
    )
    parts = rows.datasets if isinstance(rows, ConcatDataset) else [rows]
    streams = [part.token_ids() for part in parts]
    tokens = streams[0] if len(streams) == 1 else np.concatenate([np.asarray(stream) for stream in streams])
    return tokens[:max_tokens] if max_tokens is not None else tokens


def collate_rows(features: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack equal-length rows into a batch; the ``data_collator`` for pretraining datasets."""
    if not features:
        raise ValueError("cannot collate an empty batch")
    return {key: torch.stack([feature[key] for feature in features]) for key in features[0]}


BUNDLED_EVAL_DATA = "data/pg19_eval"  # relative to the repository: how results name it, the same in every clone


def default_pretraining_data() -> str:
    """The bundled training books ``data/pg19`` (six PG19-test books), so the recipes run out of the box."""
    return str(_bundled_folder("data/pg19"))


def default_eval_data() -> str:
    """The bundled held-out book(s) ``data/pg19_eval``, never among the training books."""
    return str(_bundled_folder(BUNDLED_EVAL_DATA))


def _bundled_folder(relative: str) -> Path:
    folder = Path(__file__).resolve().parent.parent / relative
    if not folder.is_dir() or not any(folder.glob("*.txt")):
        raise FileNotFoundError(f"bundled data {folder} is missing; pass a data path explicitly")
    return folder


# ---------------------------------------------------------------------------------------------
# Sources


def _resolve_source(path: Path, flag: str) -> _Source:
    """Decide what kind of data a path holds, failing early on missing paths and unknown types."""
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path}: no such file or folder")
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return _Source(path, "dataset")
        if not text_files(path):
            raise ValueError(f"{path} holds no .txt files and is not a dataset saved with save_to_disk")
        return _Source(path, "txt")
    name = path.name.lower()
    if name.endswith(".bin"):
        return _Source(path, "tokens")
    if name.endswith(".txt"):
        return _Source(path, "txt")
    if name.endswith(".jsonl"):
        return _Source(path, "jsonl")
    raise ValueError(
        f"{path}: unknown data file type; expected .txt, .jsonl, .bin, {UINT32_SUFFIX}, "
        "a folder of .txt files, or a saved datasets folder"
    )


def _stream_groups(sources: list[_Source]) -> list[list[_Source]]:
    """Each token file alone; consecutive text sources together, as one stream with one tail dropped."""
    groups: list[list[_Source]] = []
    for source in sources:
        if groups and source.kind != "tokens" and groups[-1][0].kind != "tokens":
            groups[-1].append(source)
        else:
            groups.append([source])
    return groups


def _documents(source: _Source) -> tuple[int, Iterator[str | None]]:
    """Number of documents (for the progress bar) and a lazy iterator over them."""
    if source.kind == "txt":
        files = text_files(source.path) if source.path.is_dir() else [source.path]
        return len(files), map(read_text_file, files)
    if source.kind == "jsonl":
        return _count_nonblank_lines(source.path), _jsonl_texts(source.path)
    dataset = _load_saved_dataset(source.path)
    texts = (text for batch in dataset.iter(batch_size=1000) for text in batch["text"])
    return len(dataset), texts


def _count_nonblank_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for line in file if line.strip())


def _jsonl_texts(path: Path) -> Iterator[str | None]:
    """The ``text`` field of each line; blank lines are skipped, anything malformed names its line."""
    for line_number, record in read_jsonl(path):
        if not isinstance(record, dict) or "text" not in record:
            raise ValueError(f"{path}:{line_number}: expected an object with a 'text' field")
        if not isinstance(record["text"], str | None):
            raise ValueError(f"{path}:{line_number}: 'text' is a {type(record['text']).__name__}, not a string")
        yield record["text"]


def _load_saved_dataset(folder: Path):
    """The ``text`` column of a dataset saved with ``save_to_disk`` (``train`` split of a DatasetDict)."""
    import datasets  # takes a second or two; only this source kind needs it

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"{folder} has no 'train' split (splits: {', '.join(loaded)})")
        loaded = loaded["train"]
    if "text" not in loaded.column_names:
        raise ValueError(f"{folder} has no 'text' column (columns: {', '.join(loaded.column_names)})")
    text_feature = loaded.features["text"]
    if getattr(text_feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(f"{folder}: the 'text' column holds {text_feature}, not strings")
    return loaded.select_columns(["text"])


# ---------------------------------------------------------------------------------------------
# Text -> rows


def _text_rows(
    sources: list[_Source], tokenizer: PreTrainedTokenizerBase, model_max_length: int, max_rows: int | None
) -> TokenRowDataset:
    """One token stream over all documents of ``sources``, cut into rows."""
    names = ", ".join(str(source.path) for source in sources)
    max_tokens = None if max_rows is None else max_rows * model_max_length
    tokens = _tokenize_documents(sources, tokenizer, max_tokens)
    if tokens is None:
        raise ValueError(f"{names} holds no text")
    num_rows = len(tokens) // model_max_length
    if num_rows == 0:
        raise ValueError(
            f"{names} gives {len(tokens)} tokens, fewer than one row of {model_max_length} tokens"
        )
    if max_rows is not None:
        num_rows = min(num_rows, max_rows)
    return TokenRowDataset(tokens[: num_rows * model_max_length], model_max_length, num_rows)


def _tokenize_documents(
    sources: list[_Source], tokenizer: PreTrainedTokenizerBase, max_tokens: int | None
) -> np.ndarray | None:
    """Token ids of every non-blank document followed by EOS, or None when there is no text.

    Stops once ``max_tokens`` are reached, so a capped run does not tokenize a whole corpus.
    """
    eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token to separate documents")
    counts, iterators = zip(*(_documents(source) for source in sources))
    num_documents = sum(counts)

    pieces: list[np.ndarray] = []
    num_tokens = 0
    with tqdm(total=num_documents, desc="tokenizing", unit="doc", disable=num_documents <= _FEW_DOCUMENTS) as bar:
        for batch in _batched(itertools.chain.from_iterable(iterators), _TOKENIZE_BATCH):
            bar.update(len(batch))
            # Blank documents (null in JSON, empty files) would only add a lone EOS.
            texts = [text for text in batch if text is not None and text.strip()]
            if not texts:
                continue
            # verbose=False: whole books exceed tokenizer.model_max_length, which is expected here.
            encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
            for ids in encoded["input_ids"]:
                pieces.append(np.asarray([*ids, eos_token_id], dtype=np.uint32))
                num_tokens += len(pieces[-1])
            if max_tokens is not None and num_tokens >= max_tokens:
                break
    return np.concatenate(pieces) if pieces else None


def _batched(items: Iterable[str | None], size: int) -> Iterator[list[str | None]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# ---------------------------------------------------------------------------------------------
# Token files -> rows


def _token_file_rows(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    model_max_length: int,
    token_dtype: str | None,
    max_rows: int | None,
) -> TokenRowDataset:
    """Windows of a token file, after checking that the ids used fit the tokenizer's vocabulary."""
    dtype = reader_dtype(path, token_dtype)
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(f"{path} is {size} bytes, not a whole number of {dtype.name} ids (wrong --token_dtype?)")
    tokens = MemmapTokens(path, dtype)
    num_rows = len(tokens) // model_max_length
    if num_rows == 0:
        raise ValueError(
            f"{path} gives {len(tokens)} tokens, fewer than one row of {model_max_length} tokens"
        )
    if max_rows is not None:
        num_rows = min(num_rows, max_rows)
    _check_token_ids(tokens, num_rows * model_max_length, tokenizer_vocab_size(tokenizer))
    return TokenRowDataset(tokens, model_max_length, num_rows)


def _check_token_ids(tokens: MemmapTokens, num_tokens: int, vocab_size: int) -> None:
    """Refuse a file written with another tokenizer or read with the wrong width, chunk by chunk."""
    largest = 0
    for start in range(0, num_tokens, _SCAN_CHUNK):
        largest = max(largest, int(tokens[start : min(start + _SCAN_CHUNK, num_tokens)].max()))
    if largest >= vocab_size:
        raise ValueError(
            f"{tokens.path} holds token id {largest} but the tokenizer has {vocab_size} ids "
            "(another tokenizer's file, or the wrong --token_dtype?)"
        )
