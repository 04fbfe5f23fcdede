"""The package's public names resolve, and a light submodule does not pay for torch."""

import subprocess
import sys

import longctx
from tests.scripts import ROOT


def test_every_public_name_resolves_to_its_module():
    for name in longctx.__all__:
        value = getattr(longctx, name)
        assert value.__name__ == name and value.__module__.startswith("longctx.")
    assert set(longctx.__all__) <= set(dir(longctx))


def test_a_light_submodule_does_not_import_torch():
    """Processes that only write files (the model cache's lock) start in a tenth of a second, not six."""
    code = "import sys, longctx.io; print('torch' in sys.modules, 'transformers' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.stdout.split() == ["False", "False"], completed.stderr[-2000:]
