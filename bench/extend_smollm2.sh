#!/usr/bin/env bash
# The recipe: SmolLM2-135M-Instruct (native 8k) trained to read 16,384 tokens, on a 2-core CPU in under an hour.
#
#   bash bench/extend_smollm2.sh OUTPUT_DIR
#
# YaRN x2 as the initial scaling (the best training-free scaling at 16k on held-out books), S²-Attn with
# groups of 1/4, LoRA r=8 on every linear layer plus trainable norms, 9 steps of one 16k row, lr 1e-3
# with a cosine decay and no warm-up (a warm-up step trains at learning rate 0). Leaves OUTPUT_DIR/16k/
# (an adapter folder that remembers its RoPE: `python eval.py --peft_model OUTPUT_DIR/16k --seq_len 16384`
# needs no other flag, a checkpoint every 3 steps) and OUTPUT_DIR/results.json (settings, losses, step time, perplexity at
# 16k on the held-out book before = YaRN x2 without training, after = trained). Why these settings:
# bench/RESULTS.md, "Training that pays off". Re-running resumes from the last checkpoint.
set -euo pipefail
if [ $# -ne 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -eq 1 ] && exit 0 || exit 2
fi
output_dir=$1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
resume=()
compgen -G "$output_dir/16k/checkpoint-*" >/dev/null && resume=(--resume_from_checkpoint latest)
"$python" fine-tune.py \
    --model_max_length 16384 --rope_method yarn \
    --lora_target all-linear --trainable_params norm --lora_r 8 --lora_alpha 16 \
    --group_size_ratio 0.25 \
    --max_steps 9 --learning_rate 1e-3 --warmup_steps 0 --lr_scheduler_type cosine \
    --save_steps 3 --seed 42 \
    --output_dir "$output_dir/16k" "${resume[@]}"
# results.json: the run's summary, its loss curve and the held-out perplexity before/after, in one file
"$python" - "$output_dir" <<'PY'
import json, sys
from pathlib import Path

from longctx.io import write_json_atomic
from transformers.trainer_utils import get_last_checkpoint

output_dir = Path(sys.argv[1])
stage = output_dir / "16k"
summary = json.loads((stage / "fine-tune-results.json").read_text())
state = json.loads((Path(get_last_checkpoint(str(stage))) / "trainer_state.json").read_text())
before, after = summary["perplexity_before"], summary["perplexity_after"]
results = {
    "adapter": str(stage),
    "training": {key: summary[key] for key in ("steps", "train_loss", "train_seconds", "seconds_per_step", "seconds")},
    "loss_curve": [{"step": entry["step"], "loss": entry["loss"]} for entry in state["log_history"] if "loss" in entry],
    "rope": summary["rope"],
    "perplexity_16k_heldout": {
        "tokens": f"first {before['seq_len']} tokens of data/pg19_eval (pg19test_29973)",
        "yarn_x2_no_training": before["perplexity"],
        "trained": after["perplexity"],
    },
}
write_json_atomic(output_dir / "results.json", results)
print(json.dumps(results["perplexity_16k_heldout"]))
PY
