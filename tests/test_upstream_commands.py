"""LongLoRA's README commands, pasted as they are, with only paths and sizes changed.

Every command below is the text of LongLoRA's README (github.com/dvlab-research/LongLoRA, README.md),
copied verbatim. `paste` fills in its placeholders (path_to/Llama-2-7b-hf, $question, ...) and sets
the sizes in SIZES (8192-32768 tokens -> 128-256, 1000 steps -> 1, 8 GPUs -> 1 process, 5 epochs ->
1 step); EXTRA adds what only the tiny run needs (how much of the bundled data to read, how long the
answers of a random model may run). torchrun commands run under torchrun with one process (DeepSpeed
needs its process group); the others in this process through runpy. They run on a tiny random Llama
whose tokenizer is shaped like Llama-2's (BOS, no pad token: LongLoRA's [PAD] is added), and on the
bundled SmolLM2 (realmodel).

Not run: `cd path_to_saving_checkpoints && python zero_to_fp32.py . pytorch_model.bin` is DeepSpeed's
own script; get_trainable_weights.py consolidates a DeepSpeed checkpoint itself.
"""

import json
import os
import shlex
import subprocess
import sys

import gradio
import numpy as np
import pytest

from tests.scripts import ROOT, run_script

FINE_TUNE = """
torchrun --nproc_per_node=8 fine-tune.py  \\
        --model_name_or_path path_to/Llama-2-7b-hf \\
        --bf16 True \\
        --output_dir path_to_saving_checkpoints       \\
        --cache_dir path_to_cache \\
        --model_max_length 8192 \\
        --use_flash_attn True \\
        --low_rank_training False \\
        --num_train_epochs 1  \\
        --per_device_train_batch_size 1     \\
        --per_device_eval_batch_size 2     \\
        --gradient_accumulation_steps 8     \\
        --evaluation_strategy "no"     \\
        --save_strategy "steps"     \\
        --save_steps 1000     \\
        --save_total_limit 2     \\
        --learning_rate 2e-5     \\
        --weight_decay 0.0     \\
        --warmup_steps 20     \\
        --lr_scheduler_type "constant_with_warmup"     \\
        --logging_steps 1     \\
        --deepspeed "ds_configs/stage2.json" \\
        --tf32 True \\
        --max_steps 1000
"""
SUPERVISED_FINE_TUNE = """
torchrun --nproc_per_node=8 supervised-fine-tune.py  \\
        --model_name_or_path path_to_Llama2_chat_models \\
        --bf16 True \\
        --output_dir path_to_saving_checkpoints       \\
        --model_max_length 16384 \\
        --use_flash_attn True \\
        --data_path LongAlpaca-16k-length.json \\
        --low_rank_training True \\
        --num_train_epochs 5  \\
        --per_device_train_batch_size 1     \\
        --per_device_eval_batch_size 2     \\
        --gradient_accumulation_steps 8     \\
        --evaluation_strategy "no"     \\
        --save_strategy "steps"     \\
        --save_steps 98     \\
        --save_total_limit 2     \\
        --learning_rate 2e-5     \\
        --weight_decay 0.0     \\
        --warmup_steps 20     \\
        --lr_scheduler_type "constant_with_warmup"     \\
        --logging_steps 1     \\
        --deepspeed "ds_configs/stage2.json" \\
        --tf32 True
"""
GET_TRAINABLE_WEIGHTS = """
python3 get_trainable_weights.py --checkpoint_path path_to_saving_checkpoints --trainable_params "embed,norm"
"""
MERGE = """
python3 merge_lora_weights_and_save_hf_model.py \\
        --base_model path_to/Llama-2-7b-hf \\
        --peft_model path_to_saving_checkpoints \\
        --context_size 8192 \\
        --save_path path_to_saving_merged_model
"""
EVAL_LORA = """
python3 eval.py --seq_len 8192 --context_size 8192 --batch_size 1 --base_model path_to/Llama-2-7b-hf --peft_model path_to_saving_checkpoints --data_path pg19/test.bin
"""
EVAL_DISTRIBUTED_LORA = """
torchrun --nproc_per_node=auto eval_distributed.py --seq_len 8192 --context_size 8192 --batch_size 1 --base_model path_to/Llama-2-7b-hf --peft_model path_to_saving_checkpoints --data_path pg19/test.bin
"""
EVAL_FULL = """
python3 eval.py --seq_len 8192 --context_size 8192 --batch_size 1 --base_model path_to_saving_checkpoints --data_path pg19/test.bin
"""
PASSKEY = """
python3 passkey_retrivial.py \\
        --context_size 32768 \\
        --base_model path_to/Llama-2-7b-longlora-32k \\
        --max_tokens 32768 \\
        --interval 1000
"""
INFERENCE = """
python3 inference.py  \\
        --base_model path_to_model \\
        --question $question \\
        --context_size $context_length \\
        --max_gen_len $max_gen_len \\
        --flash_attn True \\
        --material $material_content
"""
DEMO = """
python3 demo.py  \\
	--base_model path_to_model \\
	--context_size $context_size \\
	--max_gen_len $max_gen_len \\
	--flash_attn True
"""
STREAMING = """
python run_streaming_llama_longalpaca.py \\
	----enable_streaming \\
	--test_filepath outputs_stream.json \\
	--use_flash_attn True \\
	--recent_size 32768
"""

SIZES = {
    "--model_max_length": "128", "--max_steps": "1", "--gradient_accumulation_steps": "1", "--save_steps": "1",
    "--num_train_epochs": "1", "--seq_len": "128", "--context_size": "256", "--max_tokens": "256", "--interval": "256",
    "--recent_size": "48",
}
EXTRA = {
    "fine-tune.py": ["--max_train_rows", "2", "--eval_windows", "1", "--disable_tqdm", "True"],
    "supervised-fine-tune.py": ["--max_steps", "1", "--disable_tqdm", "True"],
    "supervised-fine-tune-qlora.py": ["--max_steps", "1", "--disable_tqdm", "True"],
    "passkey_retrivial.py": ["--num_tests", "2"],
    "eval.py": ["--max_tokens", "1024"],
    "eval_distributed.py": ["--max_tokens", "1024"],
    "run_streaming_llama_longalpaca.py": ["--max_gen_len", "6"],
}


def paste(command: str, paths: dict[str, str]) -> tuple[bool, list[str]]:
    """(launched by torchrun?, script argv) of a README command with its paths and sizes filled in."""
    words = shlex.split(command.replace("\\\n", " "))
    torchrun = words[0] == "torchrun"
    words = words[2:] if torchrun else words[1:]  # drop the launcher: torchrun --nproc_per_node=N, python3
    argv = []
    for index, word in enumerate(words):
        if index and words[index - 1] in SIZES:
            word = SIZES[words[index - 1]]
        argv.append(str(paths.get(word, word)))
    return torchrun, argv + EXTRA.get(argv[0], [])


def run(command: str, paths: dict, script: str | None = None, extra: tuple = ()) -> list[str]:
    """Run a pasted command; `script` replaces its script as the README says one may, `extra` adds flags."""
    torchrun, argv = paste(command, paths)
    argv = [script or argv[0], *argv[1:], *map(str, extra)]
    if torchrun:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        completed = subprocess.run([*launcher, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert completed.returncode == 0, f"{' '.join(argv[:1])} failed:\n{completed.stderr[-3000:]}"
        return completed.stdout.splitlines()
    run_script(*argv)
    return argv


@pytest.fixture(params=["tiny-llama2", pytest.param("smollm2", marks=pytest.mark.realmodel)])
def base_model(request, llama2_like_model_dir):
    return str(llama2_like_model_dir) if request.param == "tiny-llama2" else "smollm2"


def test_longlora_readme_commands_run_with_only_paths_and_sizes_changed(base_model, tmp_path, monkeypatch, capsys):
    from longctx.modeling import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(base_model))
    book = (ROOT / "data" / "pg19_eval").glob("*.txt").__next__().read_text(encoding="utf-8")[:20_000]
    (tmp_path / "pg19").mkdir()
    np.array(tokenizer(book)["input_ids"], dtype=np.uint16 if len(tokenizer) < 65536 else np.uint32).tofile(tmp_path / "pg19" / "test.bin")
    records = [
        {"instruction": f"Below is a note.\nThe key is {word}.\nNow the note ends. What is the key?", "output": f"The key is {word}."}
        for word in ("red", "blue", "green")
    ]
    (tmp_path / "LongAlpaca-16k-length.json").write_text(json.dumps(records), encoding="utf-8")
    (tmp_path / "outputs_stream.json").write_text(json.dumps([{"instruction": r["instruction"]} for r in records[:2]]))
    (tmp_path / "material.txt").write_text(book[:200], encoding="utf-8")  # fits the 256-token window
    paths = {
        "path_to/Llama-2-7b-hf": base_model, "path_to_Llama2_chat_models": base_model,
        "path_to_cache": tmp_path / "hf-cache", "pg19/test.bin": tmp_path / "pg19" / "test.bin",
        "LongAlpaca-16k-length.json": tmp_path / "LongAlpaca-16k-length.json",
        "outputs_stream.json": tmp_path / "outputs_stream.json",
        "$question": "Who is speaking?", "$context_length": "256", "$context_size": "256", "$max_gen_len": "8",
        "$material_content": tmp_path / "material.txt",
    }
    # Fine-tuning (full, as the README's command), then the fully fine-tuned model's evaluation
    full = tmp_path / "full"
    run(FINE_TUNE, {**paths, "path_to_saving_checkpoints": full})
    assert (full / "model.safetensors").exists()
    run(EVAL_FULL, {**paths, "path_to_saving_checkpoints": full})
    assert "perplexity" in capsys.readouterr().out

    # Supervised fine-tuning with LoRA+ (and its 4-bit twin), weights out of the checkpoint, merge, evaluation
    sft = tmp_path / "sft"
    run(SUPERVISED_FINE_TUNE, {**paths, "path_to_saving_checkpoints": sft})
    checkpoint = sft / "checkpoint-1"
    run(GET_TRAINABLE_WEIGHTS, {**paths, "path_to_saving_checkpoints": checkpoint})
    assert (checkpoint / "trainable_params.safetensors").exists() and (checkpoint / "adapter_model.safetensors").exists()
    merged = tmp_path / "merged"
    run(MERGE, {**paths, "path_to_saving_checkpoints": checkpoint, "path_to_saving_merged_model": merged})
    assert (merged / "config.json").exists()
    for command in (EVAL_LORA, EVAL_DISTRIBUTED_LORA):
        lines = run(command, {**paths, "path_to_saving_checkpoints": checkpoint})
        printed = "\n".join(lines) if command.strip().startswith("torchrun") else capsys.readouterr().out  # torchrun: a subprocess
        assert "perplexity" in printed
    # "supervised-fine-tune.py can be replaced by supervised-fine-tune-qlora.py" (LongLoRA's README)
    run(SUPERVISED_FINE_TUNE, {**paths, "path_to_saving_checkpoints": tmp_path / "qlora"}, "supervised-fine-tune-qlora.py")
    assert (tmp_path / "qlora" / "adapter_config.json").exists()

    # Passkey retrieval, inference, the demo and streaming on the merged model
    reading = {**paths, "path_to/Llama-2-7b-longlora-32k": merged, "path_to_model": merged}
    run(PASSKEY, reading)
    assert "| accuracy |" in capsys.readouterr().out  # the accuracy table by length
    run(INFERENCE, reading)
    assert "material:" in capsys.readouterr().err
    launched = {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    run(DEMO, reading)
    assert launched["server_port"] == 8898 and launched["server_name"] == "127.0.0.1"
    run(STREAMING, reading, extra=("--model_name_or_path", merged))  # the README relies on the script's default model
    assert capsys.readouterr().out.count("ASSISTANT:") == 2
