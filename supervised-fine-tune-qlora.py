"""LongLoRA's name for 4-bit long instruction tuning: supervised-fine-tune.py with --load_in_4bit True.

LongLoRA kept a copy of its SFT script with QLoRA's loading (NF4, double quantization, bfloat16
compute); here that is one flag of supervised-fine-tune.py, and this file only sets it, so LongLoRA's
command pastes as it is (every flag of supervised-fine-tune.py works; `--help` lists them):
    torchrun --nproc_per_node=8 supervised-fine-tune-qlora.py --model_name_or_path path/to/Llama-2-7b-chat-hf \\
        --bf16 True --output_dir outputs/qlora-sft --model_max_length 16384 --use_flash_attn True \\
        --data_path LongAlpaca-16k-length.json --low_rank_training True --num_train_epochs 5 ...
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    defaults = ["--load_in_4bit", "True", "--bnb_4bit_compute_dtype", "bfloat16"]  # LongLoRA's BitsAndBytesConfig
    sys.argv = [sys.argv[0], *defaults, *sys.argv[1:]]  # flags given later win
    runpy.run_path(str(Path(__file__).resolve().parent / "supervised-fine-tune.py"), run_name="__main__")
