"""Reading text and JSON Lines files: one reader per format, so every script fails the same way on bad bytes.

A flag may name several paths, as a list or one comma-separated string (`split_paths`).

Files are UTF-8, with or without a byte-order mark; a file that is not is one line naming it and the
offset of the first bad byte. Folders are searched recursively in a fixed order, skipping hidden
files and folders (`.ipynb_checkpoints`, editors' backups).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path


def split_paths(data_path: str | Path | Sequence[str | Path], flag: str = "--data_path") -> list[Path]:
    """Paths from a path, a list, or a comma-separated string (a name holding a comma still works)."""
    items = [data_path] if isinstance(data_path, str | Path) else list(data_path)
    paths: list[Path] = []
    for item in items:
        text = str(item)
        pieces = [text] if "," not in text or Path(text).exists() else text.split(",")
        paths.extend(Path(piece.strip()) for piece in pieces if piece.strip())
    if not paths:
        raise ValueError(f"{flag} names no file or folder: {data_path!r}")
    return paths


def read_text_file(path: str | Path, label: str = "") -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped); `label` starts the error ("material")."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        named = f"{label} {path}" if label else str(path)
        raise ValueError(f"{named} is not UTF-8 text (invalid byte at offset {error.start})") from None


def text_files(folder: str | Path) -> list[Path]:
    """`.txt` files under `folder`, sorted by their path inside it, hidden files and folders skipped."""
    folder = Path(folder)
    files = [
        file
        for file in folder.rglob("*.txt")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda file: file.relative_to(folder).parts)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line; bad bytes or JSON name the file and line."""
    path = Path(path)
    with path.open("rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{line_number} is not UTF-8 text") from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
            yield line_number, record
