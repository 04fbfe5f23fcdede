"""Every command prints its --help and exits 0, and the commands quoted there paste into a shell as written."""

import re

import pytest

from tests.scripts import ROOT, run_script

SCRIPTS = sorted(path.name for path in ROOT.glob("*.py")) + ["pdf2txt/pdf2txt.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_commands_line_by_line(capsys, script):
    with pytest.raises(SystemExit) as exit_info:
        run_script(script, "--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    # a docstring's unescaped "\" + newline joins two command lines into one, leaving a run of spaces
    joined = [line for line in out.splitlines() if re.search(r"\S {5,}--\w", line)]
    assert not joined, f"{script} --help joins continued lines: {joined[0]!r}"
