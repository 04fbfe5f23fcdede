r"""Peak memory per process and step time of one LoRA+ S²-Attn step: one process against split rows.

Each run is fine-tune.py for --max_steps steps on the same rows (the bundled books), alone or under
torchrun with --sequence_parallel_size N in either mode (ulysses: DeepSpeed's all-to-all of heads;
halo: S²-Attn on each shard with half a group from the previous process). Every 0.5 s the resident
memory of each training process is sampled; the JSON holds each run's command, peak per process,
train loss and seconds per step (from the run's fine-tune-results.json).

    python bench/sequence_parallel.py --model_max_length 24576 --group_size 4096 \
        --runs one,ulysses:3,halo:3,halo:6 --output_json bench/sp/modes_24576.json

Split runs use one thread per process (OMP_NUM_THREADS=1), as many processes as the machine has
cores or more; one process uses torch's default. Time figures mean something only on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default="smollm2")
    parser.add_argument("--model_max_length", type=int, required=True)
    parser.add_argument("--group_size", type=int, default=None, help="fixed S²-Attn group (default: a quarter of the row)")
    parser.add_argument("--runs", default="one,ulysses:3,halo:3", help="comma-separated: one, ulysses:N, halo:N")
    parser.add_argument("--max_steps", type=int, default=1)
    parser.add_argument("--output_json", required=True)
    args = parser.parse_args(argv)
    for run in args.runs.split(","):
        mode, _, size = run.partition(":")
        if not (run == "one" or (mode in ("ulysses", "halo") and size.isdigit() and int(size) > 1)):
            parser.error(f"--runs: {run!r} is not one, ulysses:N or halo:N (N > 1)")
    return args


def command(args, run: str, output_dir: str) -> list[str]:
    training = [
        "fine-tune.py", "--model_name_or_path", args.model_name_or_path, "--model_max_length", str(args.model_max_length),
        "--max_steps", str(args.max_steps), "--learning_rate", "1e-3", "--warmup_steps", "0", "--skip_eval", "True",
        "--save_strategy", "no", "--output_dir", output_dir,
    ]
    if args.group_size:
        training += ["--group_size", str(args.group_size)]
    if run == "one":
        return [sys.executable, *training]
    mode, _, size = run.partition(":")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={size}"]
    return [*launcher, *training, "--sequence_parallel_size", size, "--sequence_parallel_mode", mode]


def peak_memory(cmd: list[str], env: dict) -> tuple[int, list[float]]:
    """Run `cmd`; return its exit code and the peak resident GiB of each fine-tune.py process."""
    process = subprocess.Popen(cmd, cwd=ROOT, env=env)
    parent = psutil.Process(process.pid)
    peaks: dict[int, float] = {}
    while process.poll() is None:
        for child in [parent, *parent.children(recursive=True)]:
            try:
                if "fine-tune.py" in child.cmdline() and "torch.distributed.run" not in child.cmdline():
                    peaks[child.pid] = max(peaks.get(child.pid, 0.0), child.memory_info().rss / 2**30)
            except psutil.Error:
                pass
        time.sleep(0.5)
    return process.returncode, sorted(round(peak, 3) for peak in peaks.values())


def main(argv=None):
    args = parse_args(argv)
    results = {"machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB", "runs": {}}
    for run in args.runs.split(","):
        with tempfile.TemporaryDirectory() as output_dir:
            cmd = command(args, run, output_dir)
            env = {**os.environ, **({} if run == "one" else {"OMP_NUM_THREADS": "1"})}
            print(f"{run}: {' '.join(cmd)}", flush=True)
            returncode, peaks = peak_memory(cmd, env)
            if returncode:
                raise SystemExit(f"{run} failed with exit code {returncode}")
            summary = json.loads((Path(output_dir) / "fine-tune-results.json").read_text())
        results["runs"][run] = {
            "command": "python " + " ".join(cmd[1:]) if run == "one" else "torchrun " + " ".join(cmd[3:]),
            "peak_rss_gib_per_process": peaks,
            "train_loss": summary["train_loss"],
            "seconds_per_step": summary["seconds_per_step"],
        }
        print(json.dumps(results["runs"][run]), flush=True)
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(results, indent=1))  # after every run: nothing lost if stopped


if __name__ == "__main__":
    main()
