"""Where a script's results go, checked before any work starts: never onto an input, never over a file unless asked.

A run that has loaded a model and scored a book should not then fail on an unwritable
`--output_json`, and no output flag may replace what the run reads (`eval.py --output_json` onto its
own `--data_path` once replaced a book with a page of JSON). Each script calls these checks first,
with its inputs named by their flags, so the one-line error names both flags.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from longctx.text_files import split_paths

Inputs = Mapping[str, "str | os.PathLike | Iterable[str | os.PathLike] | None"]


def _input_paths(value) -> list[Path]:
    """The paths one input flag names: a path, a list, or a comma-separated string (as --data_path takes)."""
    if not value or (isinstance(value, str) and not value.strip()):
        return []
    return [path.expanduser() for path in split_paths(value)]


def _same_path(first: Path, second: Path) -> bool:
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def _check_not_an_input(flag: str, path: Path, inputs: Inputs, what: str) -> None:
    for input_flag, value in inputs.items():
        for source in _input_paths(value):
            if _same_path(path, source):
                raise ValueError(
                    f"{flag} {path} is also {input_flag}: writing it would replace the input; choose another {what}"
                )


def _check_writable(flag: str, path: Path) -> None:
    """The nearest existing folder above `path` must be a folder this process can create files in."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {path}: {ancestor} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=ancestor)
    except OSError as error:
        raise ValueError(f"{flag} {path}: cannot write in {ancestor} ({error.strerror or error})") from None
    os.close(handle)
    os.unlink(probe)


def check_output_file(
    flag: str,
    path: str | os.PathLike | None,
    inputs: Inputs | None = None,
    overwrite: bool = False,
    overwrite_flag: str = "--overwrite True",
) -> Path | None:
    """Refuse an output file that is an input, an existing file (unless `overwrite`), a folder, or unwritable.

    None (the flag not given) passes. Returns the path.
    """
    if path is None:
        return None
    if not os.fspath(path).strip():
        raise ValueError(f"{flag} is empty: name a file")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: name a file")
    _check_not_an_input(flag, path, inputs or {}, "file")
    if path.exists() and not overwrite:
        raise ValueError(f"{flag} {path} already exists: pass {overwrite_flag} to replace it, or choose another file")
    _check_writable(flag, path)
    return path


def check_output_folder(
    flag: str,
    path: str | os.PathLike | None,
    inputs: Inputs | None = None,
    reuse: bool = False,
    reuse_hint: str = "choose a new folder",
) -> Path:
    """Refuse an output folder that is an input, a file, unwritable, or (unless `reuse`) already holds something."""
    if path is None or not os.fspath(path).strip():
        raise ValueError(f"{flag} is empty: name a folder")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder")
    _check_not_an_input(flag, path, inputs or {}, "folder")
    if not reuse and path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{flag} {path} already exists and is not empty: {reuse_hint}")
    _check_writable(flag, path / "probe")
    return path


def check_result_files(
    output_json: str | None, plot: str | None, inputs: Inputs | None = None, overwrite: bool = False
) -> str | None:
    """An evaluation script's --output_json and --plot (default: beside --output_json); returns the plot path."""
    from longctx.plots import plot_path

    plot_flag = "--plot" if plot else "--plot (beside --output_json)"
    check_output_file("--output_json", output_json, inputs, overwrite)
    check_output_file(plot_flag, plot_path(output_json, plot), {**(inputs or {}), "--output_json": output_json}, overwrite)
    return plot_path(output_json, plot)
