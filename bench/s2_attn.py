"""Benchmark S²-Attn against full causal attention: the attention op, and a LoRA+ training step.

Each measurement runs in a fresh subprocess, so its peak memory (max RSS, from the OS) is its own.
Prints markdown tables; results also go to --output_json.

    python bench/s2_attn.py                                   # attention op 2k-32k + SmolLM2 step at 8k, 16k
    python bench/s2_attn.py --suite attention --seq_lens 2048,4096
    python bench/s2_attn.py --suite train --train_seq_lens 8192 --device cuda --dtype bfloat16
    python bench/s2_attn.py --suite qlora --train_seq_lens 4096     # S²-Attn LoRA+ step: bf16 base vs NF4 (QLoRA)

SmolLM2-135M's attention shape is used for the op: 9 query heads, 3 key/value heads, head_dim 64.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["all", "attention", "train", "qlora"], default="all")
    parser.add_argument("--seq_lens", default="2048,4096,8192,16384,32768", help="attention-op lengths")
    parser.add_argument("--train_seq_lens", default="8192,16384", help="training-step lengths")
    parser.add_argument("--group_size_ratio", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the attention op (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "flash"], help="kernel for S²-Attn")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--output_json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def attention_worker(impl: str, seq_len: int, args) -> dict:
    """Forward + backward of one attention call, median of --repeats after a warm-up."""
    import torch
    import torch.nn.functional as F

    from longctx.attention import shifted_sparse_attention, shifted_sparse_attention_varlen

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    make = lambda heads: torch.randn(1, heads, seq_len, 64, device=args.device, dtype=dtype, requires_grad=True)  # noqa: E731
    query, key, value = make(9), make(3), make(3)
    group_size = int(seq_len * args.group_size_ratio) // 2 * 2

    def step():
        if impl == "full":
            output = F.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True)
        elif args.attn == "flash":
            output = shifted_sparse_attention_varlen(query, key, value, group_size)
        else:
            output = shifted_sparse_attention(query, key, value, group_size)
        output.sum().backward()

    step()
    times = []
    for _ in range(args.repeats):
        synchronize(args.device)
        began = time.perf_counter()
        step()
        synchronize(args.device)
        times.append(time.perf_counter() - began)
    result = {"seconds": sorted(times)[len(times) // 2]}
    if args.device.startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def reset_peak_rss() -> None:
    """Linux: restart the process's peak resident memory (VmHWM) from its current size."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """Linux: the process's peak resident memory (VmHWM) since start or the last reset."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def train_worker(impl: str, seq_len: int, args, dtype: str | None = None, load_in_4bit: bool = False) -> dict:
    """One LoRA+ optimizer step of the real model (gradient checkpointing, chunked loss).

    `load_in_4bit` loads the base as QLoRA's NF4 with `dtype` as compute dtype (LongQLoRA's setup).
    """
    import torch

    from longctx.attention import enable_s2_attn
    from longctx.data import default_pretraining_data, load_pretraining_dataset
    from longctx.loss import causal_lm_loss
    from longctx.lora import setup_lora
    from longctx.modeling import WeightLoading, load_model_and_tokenizer

    dtype = dtype or args.dtype
    model, tokenizer = load_model_and_tokenizer(
        args.model,
        context_size=seq_len,
        weights=WeightLoading(dtype=dtype, load_in_4bit=load_in_4bit, compute_dtype=dtype),
    )
    if not load_in_4bit:  # 4-bit weights are placed at load time
        model.to(args.device)
    if impl == "s2":
        enable_s2_attn(model, group_size_ratio=args.group_size_ratio, use_flash_attn=args.attn == "flash")
    model = setup_lora(model, trainable_params="embed,norm")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rows = load_pretraining_dataset(default_pretraining_data(), tokenizer, seq_len, max_rows=1)
    input_ids = rows[0]["input_ids"][None].to(args.device)

    def step(ids):
        loss_sum, count = causal_lm_loss(model, ids, ids)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss_sum / count)

    step(input_ids[:, :512])  # warm-up: lazy initialisation, allocator
    synchronize(args.device)
    reset_peak_rss()  # so the step's own peak is seen apart from loading the model
    began = time.perf_counter()
    loss = step(input_ids)
    synchronize(args.device)
    result = {"seconds": time.perf_counter() - began, "loss": loss, "step_peak_rss_mib": peak_rss_mib()}
    if args.device.startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run_in_subprocess(suite: str, impl: str, seq_len: int, argv: list[str]) -> dict:
    """Run one measurement in a fresh process; add its peak resident memory from wait4."""
    command = [sys.executable, __file__, *argv, "--worker", f"{suite}:{impl}:{seq_len}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        return {"error": f"exit code {process.returncode}"}
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def table(title: str, rows: list[dict], baseline: str = "full") -> str:
    lines = [f"### {title}", "", f"| seq_len | impl | seconds | ratio vs {baseline} | peak RSS MiB | step peak RSS MiB | peak GPU MiB |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        full = next((r for r in rows if r["seq_len"] == row["seq_len"] and r["impl"] == baseline), None)
        ratio = row["seconds"] / full["seconds"] if full and "seconds" in row and "seconds" in full else float("nan")
        seconds = f"{row['seconds']:.3f}" if "seconds" in row else row.get("error", "-")
        gpu = f"{row['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in row else "-"
        step_rss = f"{row['step_peak_rss_mib']:.0f}" if "step_peak_rss_mib" in row else "-"
        lines.append(f"| {row['seq_len']} | {row['impl']} | {seconds} | {ratio:.2f} | {row.get('peak_rss_mib', 0):.0f} | {step_rss} | {gpu} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        suite, impl, seq_len = args.worker.split(":")
        if suite == "qlora":  # impl is the base weights' format; S²-Attn LoRA+ in bfloat16 either way
            result = train_worker("s2", int(seq_len), args, dtype="bfloat16", load_in_4bit=impl == "nf4")
        else:
            result = (attention_worker if suite == "attention" else train_worker)(impl, int(seq_len), args)
        print(json.dumps(result))
        return
    import torch

    results = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"torch {torch.__version__}, threads {torch.get_num_threads()}",
               "device": args.device, "dtype": args.dtype, "group_size_ratio": args.group_size_ratio,
               "command": "python bench/s2_attn.py " + " ".join(argv), "attention": [], "train": [], "qlora": []}
    if args.device.startswith("cuda"):
        results["machine"] += f", GPU {torch.cuda.get_device_name()}"
    suites = ["attention", "train"] if args.suite == "all" else [args.suite]
    for suite in suites:
        lengths = args.seq_lens if suite == "attention" else args.train_seq_lens
        for seq_len in map(int, lengths.split(",")):
            for impl in ("bf16", "nf4") if suite == "qlora" else ("full", "s2"):
                row = {"seq_len": seq_len, "impl": impl, **run_in_subprocess(suite, impl, seq_len, argv)}
                print(json.dumps(row), file=sys.stderr, flush=True)
                results[suite].append(row)
    print(f"machine: {results['machine']}; device {args.device}, {args.dtype}, groups of {args.group_size_ratio} x seq_len\n")
    if results["attention"]:
        print(table("Attention op, forward + backward (9 heads, 3 kv heads, head_dim 64)", results["attention"]) + "\n")
    if results["train"]:
        print(table("LoRA+ training step of SmolLM2 (gradient checkpointing, chunked loss)", results["train"]) + "\n")
    if results["qlora"]:
        title = "S²-Attn LoRA+ training step of SmolLM2, bfloat16 base vs NF4 base (QLoRA)"
        print(table(title, results["qlora"], baseline="bf16") + "\n")
    if args.output_json:
        from longctx.io import write_json_atomic

        write_json_atomic(args.output_json, results)


if __name__ == "__main__":
    main()
