#!/usr/bin/env bash
# One prepared GPU check (issue 17): at most 8 minutes on one GPU, one JSON.
#
#   bash bench/gpu_check.sh [OUTPUT_JSON]          # default bench/gpu/gpu_check.json
#   GPU_CHECK_BUDGET=480 PYTHON=.venv/bin/python bash bench/gpu_check.sh out.json
#
# Runs, each part in its own process under `timeout` (a part that overruns is recorded as timed out
# and the next one starts):
#   1. the gpu-marked tests (pytest -m gpu): flash-attn S²-Attn vs SDPA, DCA's CUDA kernels vs the
#      float64 reference, --device_map auto and bfloat16 reading, a LoRA+ step with --bf16, 4-bit QLoRA;
#   2. the S²-Attn op (SDPA and flash-attn varlen) against full attention at 8k, 16k and 32k tokens;
#   3. one LoRA+ step at 16k and 32k on a randomly initialised Llama-2-7B-shaped model (no download);
#   4. DCA prefill against SDPA at 32k on the same shape;
#   5. the QLoRA (NF4) LoRA+ step memory at 16k on the same shape.
# On a machine without a CUDA GPU it checks its arguments, prints what it would run, and exits 0.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() { echo "usage: bash bench/gpu_check.sh [OUTPUT_JSON]   (env: GPU_CHECK_BUDGET seconds, PYTHON)" >&2; exit 2; }
[ $# -le 1 ] || usage
OUTPUT=${1:-bench/gpu/gpu_check.json}
case "$OUTPUT" in -*) usage ;; *.json) ;; *) echo "gpu_check.sh: the output must be a .json file (got $OUTPUT)" >&2; exit 2 ;; esac
BUDGET=${GPU_CHECK_BUDGET:-480}
if ! [[ "$BUDGET" =~ ^[0-9]+$ ]] || [ "$BUDGET" -lt 120 ] || [ "$BUDGET" -gt 3600 ]; then
    echo "gpu_check.sh: GPU_CHECK_BUDGET must be whole seconds in 120-3600 (got $BUDGET)" >&2; exit 2
fi
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# Each part's share of the budget (sums to 98%: the merge and process starts take the rest).
declare -A SHARE=([pytest]=20 [attention]=12 [train]=26 [dca]=14 [qlora]=26)
ORDER=(pytest attention train dca qlora)
declare -A COMMAND=(
    [pytest]="-m pytest -q -m gpu tests -p no:cacheprovider"
    [attention]="-m bench.gpu_check attention --seq_lens 8192,16384,32768"
    [train]="-m bench.gpu_check train --seq_lens 16384,32768"
    [dca]="-m bench.gpu_check dca --seq_len 32768"
    [qlora]="-m bench.gpu_check qlora --seq_len 16384"
)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check.sh: no CUDA GPU here; on one it would run, within ${BUDGET} s, writing $OUTPUT:"
    for part in "${ORDER[@]}"; do
        echo "  timeout $((BUDGET * SHARE[$part] / 100)) $PYTHON ${COMMAND[$part]}"
    done
    exit 0
fi

PARTS=$(mktemp -d)
trap 'rm -rf "$PARTS"' EXIT
"$PYTHON" - "$PARTS/machine.json" <<'PY'
import json, subprocess, sys
import torch
info = {"gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "driver": subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                                              capture_output=True, text=True).stdout.strip()}
try:
    import flash_attn
    info["flash_attn"] = flash_attn.__version__
except ImportError:
    info["flash_attn"] = None
json.dump(info, open(sys.argv[1], "w"))
PY
started=$SECONDS
for part in "${ORDER[@]}"; do
    limit=$((BUDGET * SHARE[$part] / 100))
    echo "== $part (at most ${limit} s)" >&2
    if [ "$part" = pytest ]; then
        timeout --kill-after=10 "$limit" "$PYTHON" ${COMMAND[$part]} >"$PARTS/$part.log" 2>&1
        status=$?
        tail -1 "$PARTS/$part.log" | "$PYTHON" -c "import json,sys; print(json.dumps({'summary': sys.stdin.read().strip()}))" >"$PARTS/$part.json"
    else
        timeout --kill-after=10 "$limit" "$PYTHON" ${COMMAND[$part]} --output_json "$PARTS/$part.json" >"$PARTS/$part.log" 2>&1
        status=$?
    fi
    echo "$status" >"$PARTS/$part.status"
    echo "   exit $status after $((SECONDS - started)) s" >&2
done
mkdir -p "$(dirname "$OUTPUT")"
"$PYTHON" -m bench.gpu_check merge --parts "$PARTS" --output_json "$OUTPUT" >/dev/null
echo "gpu_check.sh: wrote $OUTPUT ($((SECONDS - started)) s)"
