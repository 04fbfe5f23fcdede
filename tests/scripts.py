"""Run a top-level script in-process as a user would, with patched sys.argv."""

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, *args: str) -> None:
    argv = sys.argv
    sys.argv = [name, *map(str, args)]
    try:
        runpy.run_path(str(ROOT / name), run_name="__main__")
    finally:
        sys.argv = argv


def run_script_expecting_error(capsys, name: str, *args: str) -> str:
    """Run a script that must fail with one `error:` line and exit code 2; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        run_script(name, *args)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "error:" in lines[-1] and "Traceback" not in "\n".join(lines)
    return lines[-1]
