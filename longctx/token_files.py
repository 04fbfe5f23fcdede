"""LongLoRA's token files: `.bin` of little-endian uint16 ids, or `.u32.bin` of uint32 for large vocabularies.

Reading (a lazy memmap, longctx.data cuts it into rows) and writing (`write_token_file`, never wrapping
an id); `tokenize_to_file` is what `python -m longctx.tokenize_data` runs.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Token files are little-endian whatever the machine, as LongLoRA's np.memmap(dtype=np.uint16) files
# written on x86 are.
TOKEN_DTYPES = types.MappingProxyType({"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")})
UINT32_SUFFIX = ".u32.bin"
UINT16_SUFFIX = ".u16.bin"  # only the writer reads it: any other ``.bin`` is uint16 too


class MemmapTokens:
    """A token file mapped on first access; pickling (DataLoader workers) never copies its contents."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = path
        self.dtype = dtype
        self.num_tokens = path.stat().st_size // dtype.itemsize
        self._array: np.memmap | None = None

    def __len__(self) -> int:
        return self.num_tokens

    def __getitem__(self, index: slice) -> np.ndarray:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._array[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def check_token_dtype(token_dtype: str | None) -> None:
    """The one check of --token_dtype (None: the file name decides)."""
    if token_dtype is not None and token_dtype not in TOKEN_DTYPES:
        raise ValueError(f"--token_dtype {token_dtype} must be one of {', '.join(TOKEN_DTYPES)}")


def reader_dtype(path: Path, token_dtype: str | None) -> np.dtype:
    """The width of a token file: `token_dtype` when given, else uint32 for a .u32.bin name and uint16 otherwise."""
    if token_dtype is not None:
        return TOKEN_DTYPES[token_dtype]
    return TOKEN_DTYPES["uint32" if path.name.lower().endswith(UINT32_SUFFIX) else "uint16"]


def tokenizer_vocab_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """Ids the tokenizer knows: added tokens count (len), and so do padded embedding rows (vocab_size)."""
    return max(len(tokenizer), tokenizer.vocab_size or 0)


def write_token_file(
    token_ids: Iterable[int] | np.ndarray | torch.Tensor,
    path: str | Path,
    vocab_size: int,
    dtype: str | None = None,
) -> Path:
    """Write token ids as a LongLoRA token file and return the path written; never wraps an id.

    Width rule: ``dtype`` ("uint16"/"uint32") when given; else a ``.u32.bin`` path means uint32 and
    a ``.u16.bin`` path uint16; else uint16 when ``vocab_size`` <= 65536, and otherwise uint32 with
    the ``.bin`` suffix turned into ``.u32.bin``, so that readers' suffix rule finds the width again.
    Ids must lie in [0, vocab_size) and fit the width, else ValueError.
    """
    path = Path(path)
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if not path.name.lower().endswith(".bin"):
        raise ValueError(f"{path}: token files end in .bin (uint16) or {UINT32_SUFFIX} (uint32)")
    if dtype is not None and dtype not in TOKEN_DTYPES:
        raise ValueError(f"token dtype must be one of {', '.join(TOKEN_DTYPES)}, got {dtype!r}")
    path, numpy_dtype = _writer_path_and_dtype(path, vocab_size, dtype)

    ids = np.asarray(token_ids)
    if ids.size == 0:
        ids = ids.astype(np.int64)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got {ids.dtype}")
    ids = ids.reshape(-1)
    if ids.size:
        smallest, largest = int(ids.min()), int(ids.max())
        if smallest < 0:
            raise ValueError(f"cannot write negative token id {smallest} to {path}")
        dtype_max = int(np.iinfo(numpy_dtype).max)
        if largest > dtype_max:
            raise ValueError(
                f"token id {largest} does not fit the {numpy_dtype.name} file {path} (max {dtype_max}); "
                f"write a {UINT32_SUFFIX} file"
            )
        if largest >= vocab_size:
            raise ValueError(f"token id {largest} is outside the vocabulary of {vocab_size} ids ({path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    ids.astype(numpy_dtype).tofile(path)
    return path


def token_file_path(path: str | Path, vocab_size: int, dtype: str | None = None) -> Path:
    """The path :func:`write_token_file` writes for `path` (``.bin`` becomes ``.u32.bin`` for a large vocabulary)."""
    return _writer_path_and_dtype(Path(path), vocab_size, dtype)[0]


def _writer_path_and_dtype(path: Path, vocab_size: int, dtype: str | None) -> tuple[Path, np.dtype]:
    """The width rule of :func:`write_token_file`."""
    name = path.name.lower()
    named = "uint32" if name.endswith(UINT32_SUFFIX) else "uint16" if name.endswith(UINT16_SUFFIX) else None
    if dtype is not None and named is not None and dtype != named:
        raise ValueError(f"{path} names a {named} file but dtype={dtype!r}")
    if dtype is not None or named is not None:
        return path, TOKEN_DTYPES[dtype or named]
    if vocab_size <= np.iinfo(np.uint16).max + 1:
        return path, TOKEN_DTYPES["uint16"]
    return path.with_name(path.name[: -len(".bin")] + UINT32_SUFFIX), TOKEN_DTYPES["uint32"]


def tokenize_to_file(input_path: str, output: str, tokenizer, dtype: str | None = None, max_tokens: int | None = None):
    """Tokenize text sources into one token file; returns (path written, number of tokens, dtype name)."""
    from longctx.data import token_stream  # longctx.data reads token files through this module

    vocab_size = tokenizer_vocab_size(tokenizer)
    tokens = token_stream(input_path, tokenizer, max_tokens=max_tokens, flag="--input")
    path = write_token_file(tokens, output, vocab_size=vocab_size, dtype=dtype)
    width = "uint32" if path.name.lower().endswith(UINT32_SUFFIX) or dtype == "uint32" else "uint16"
    return path, len(tokens), width
