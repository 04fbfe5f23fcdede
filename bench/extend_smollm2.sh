#!/usr/bin/env bash
# The recipe: SmolLM2-135M-Instruct (native 8k) trained to read 16,384 tokens, on a 2-core CPU in under an hour.
#
#   bash bench/extend_smollm2.sh OUTPUT_DIR
#
# YaRN x2 as the initial scaling (the best training-free scaling at 16k on held-out books), S²-Attn with
# groups of 1/4, LoRA r=8 on every linear layer plus trainable norms, 16 steps of one 16k row, lr 1e-3
# with one warm-up step and a cosine decay. Leaves OUTPUT_DIR/16k/ (an adapter folder that remembers
# its RoPE: `python eval.py --peft_model OUTPUT_DIR/16k --seq_len 16384` needs no other flag, a
# checkpoint every 4 steps) and OUTPUT_DIR/results.json (settings, losses, step time, perplexity at
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
    --max_steps 16 --learning_rate 1e-3 --warmup_steps 1 --lr_scheduler_type cosine \
    --save_steps 4 --seed 42 \
    --output_dir "$output_dir/16k" "${resume[@]}"
"$python" -m longctx.recipe_results "$output_dir"
