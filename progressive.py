r"""Progressive context extension: fine-tune.py stage after stage, each longer than the last.

Gradient's Llama-3 1048k recipe and LWM grow the window in stages (65k, 262k, 1048k, raising RoPE's
base each time) instead of jumping to the target: each stage starts from the previous one, so the
model adapts a little at a time. Each stage here is one fine-tune.py run (S²-Attn + LoRA+) into
OUTPUT_DIR/<length> (16k, 32k, ...), a `--peft_model` folder on its own, with its perplexity at its
length before and after; the stages merged in order go to OUTPUT_DIR/merged. Interrupted runs
resume: finished stages are skipped, a stage with checkpoints resumes from its last one.

Two stages on the bundled SmolLM2 (YaRN; every other fine-tune.py flag passes through):
    python progressive.py --output_dir outputs/progressive --stages 16384,32768 --stage_steps 16,8 \
        --rope_method yarn --learning_rate 1e-3 --lr_scheduler_type cosine --warmup_steps 1

Gradient's way, an explicit RoPE base per stage:
    python progressive.py --output_dir outputs/llama3-262k --model_name_or_path path/to/Llama-3-8B-Instruct \
        --stages 65536,262144 --stage_rope_theta 15300000,207100000 --stage_steps 30,30 --bf16 True

--start_mode merge (default) merges each stage into the base and trains a fresh adapter on top;
continue trains the same adapter on. Which reads better: bench/RESULTS.md, "Progressive extension".
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from longctx.args import DataArguments, LongContextTrainingArguments, ModelArguments, PerplexityCheckArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.stages import check_start_mode

FINE_TUNE = Path(__file__).resolve().parent / "fine-tune.py"
STAGE_RESULTS = "fine-tune-results.json"
REPORTED = ("steps", "train_loss", "seconds_per_step", "perplexity_before", "perplexity_after", "rope")


@dataclass
class ProgressiveArguments:
    output_dir: str = field(metadata={"help": "one folder per stage (16k, 32k, ...), merged/ and progressive-results.json"})
    stages: str = field(metadata={"help": "stage lengths in tokens, increasing, comma-separated: 16384,32768"})
    stage_steps: str = field(default="16", metadata={"help": "training steps per stage: one number for all, or one per stage"})
    stage_rope_theta: str | None = field(
        default=None, metadata={"help": "an explicit RoPE base per stage (Gradient's recipe), comma-separated"}
    )
    start_mode: str = field(
        default="merge", metadata={"help": "merge: each stage a fresh LoRA on the merged earlier ones; continue: one adapter trains on"}
    )
    merge: bool = field(default=True, metadata={"help": "save the stages merged in order into OUTPUT_DIR/merged"})

    def __post_init__(self):
        self.lengths = _numbers("--stages", self.stages, int)
        if any(later <= earlier for earlier, later in zip(self.lengths, self.lengths[1:])):
            raise ValueError(f"--stages {self.stages} must increase from stage to stage")
        self.steps = _per_stage("--stage_steps", _numbers("--stage_steps", self.stage_steps, int), len(self.lengths))
        thetas = _numbers("--stage_rope_theta", self.stage_rope_theta, float) if self.stage_rope_theta else None
        self.thetas = _per_stage("--stage_rope_theta", thetas, len(self.lengths)) if thetas else [None] * len(self.lengths)
        check_start_mode(self.start_mode)


def _numbers(flag: str, text: str, kind: type) -> list:
    try:
        values = [kind(piece) for piece in str(text).split(",") if piece.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text} must be comma-separated numbers") from None
    if not values or min(values) <= 0:
        raise ValueError(f"{flag} {text} must name positive numbers")
    return values


def _per_stage(flag: str, values: list, num_stages: int) -> list:
    if len(values) == 1:
        return values * num_stages
    if len(values) != num_stages:
        raise ValueError(f"{flag} gives {len(values)} values for {num_stages} stages")
    return values


def stage_name(length: int) -> str:
    return f"{length // 1024}k" if length % 1024 == 0 else str(length)


def stage_argv(args: ProgressiveArguments, index: int, passthrough: list[str]) -> list[str]:
    """fine-tune.py's command line for one stage (what a user would type to run it by hand)."""
    output_dir = Path(args.output_dir)
    argv = [*passthrough, "--model_max_length", str(args.lengths[index]), "--max_steps", str(args.steps[index])]
    argv += ["--output_dir", str(output_dir / stage_name(args.lengths[index]))]
    if args.thetas[index] is not None:
        argv += ["--rope_method", "theta", "--rope_theta", repr(args.thetas[index])]
    if index > 0:
        argv += ["--start_from", str(output_dir / stage_name(args.lengths[index - 1])), "--start_mode", args.start_mode]
    return argv


def check_stages(args: ProgressiveArguments, passthrough: list[str]) -> str:
    """Parse every stage's command line and check the lengths before anything runs; returns the base model."""
    from transformers import AutoConfig

    from longctx.modeling import resolve_model_path
    from longctx.rope import context_window

    with tempfile.TemporaryDirectory() as scratch:  # Trainer arguments may touch their output_dir
        for index in range(len(args.lengths)):
            argv = stage_argv(args, index, passthrough)
            argv[argv.index("--output_dir") + 1] = scratch
            if "--start_from" in argv:
                argv[argv.index("--start_from") + 1] = scratch
            model_args, *_ = parse_dataclasses(
                (ModelArguments, DataArguments, PerplexityCheckArguments, LongContextTrainingArguments), None, argv
            )
    config = AutoConfig.from_pretrained(resolve_model_path(model_args.model_name_or_path), local_files_only=True)
    window = context_window(config)
    if args.lengths[0] <= window:
        raise ValueError(f"--stages {args.stages}: the first stage must be longer than the model's window of {window} tokens")
    return model_args.model_name_or_path


def run_stage(args: ProgressiveArguments, index: int, passthrough: list[str]) -> dict:
    """Run one stage unless its folder already holds its results; resume from its checkpoints if any."""
    folder = Path(args.output_dir) / stage_name(args.lengths[index])
    if (folder / STAGE_RESULTS).is_file():
        print(f"stage {stage_name(args.lengths[index])}: done before, skipped", flush=True)
    else:
        argv = stage_argv(args, index, passthrough)
        if any(folder.glob("checkpoint-*")):
            argv += ["--resume_from_checkpoint", "latest"]
        print(f"stage {stage_name(args.lengths[index])}: python fine-tune.py {' '.join(argv)}", flush=True)
        completed = subprocess.run([sys.executable, str(FINE_TUNE), *argv])
        if completed.returncode != 0:
            raise SystemExit(completed.returncode)
    return json.loads((folder / STAGE_RESULTS).read_text(encoding="utf-8"))


def main():
    parser_args, passthrough = _parse()
    base_model = check_stages(parser_args, passthrough)
    from longctx.io import write_json_atomic
    from longctx.merging import merge_and_save

    output_dir = Path(parser_args.output_dir)
    stages = []
    for index, length in enumerate(parser_args.lengths):
        result = run_stage(parser_args, index, passthrough)
        stages.append({"stage": stage_name(length), "length": length, **{key: result.get(key) for key in REPORTED}})
    summary = {"start_mode": parser_args.start_mode, "base_model": base_model, "stages": stages}
    last_stage = output_dir / stage_name(parser_args.lengths[-1])
    merged = output_dir / "merged"
    if parser_args.merge and not (merged / "config.json").is_file():
        merge_and_save(base_model, [last_stage], None, merged, require_trainable_params=False)
    if parser_args.merge:
        summary["merged"] = str(merged)
    write_json_atomic(output_dir / "progressive-results.json", summary)
    for stage in stages:
        before, after = stage["perplexity_before"], stage["perplexity_after"]
        if before and after:
            print(f"{stage['stage']}: perplexity @ {before['seq_len']} before {before['perplexity']:.2f}, after {after['perplexity']:.2f}")
    print(f"stages in {output_dir}; results in {output_dir / 'progressive-results.json'}")


def _parse() -> tuple[ProgressiveArguments, list[str]]:
    """This script's flags; everything else goes to fine-tune.py (checked by check_stages)."""
    import argparse

    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        ProgressiveArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    args, passthrough = parser.parse_args_into_dataclasses(return_remaining_strings=True)
    owned = ("--model_max_length", "--max_steps", "--start_from", "--start_mode", "--resume_from_checkpoint")
    clash = [flag for flag in passthrough if flag.split("=")[0] in owned]
    if clash:
        raise ValueError(f"{clash[0]} is set per stage by progressive.py; use --stages, --stage_steps, --start_mode")
    return args, passthrough


if __name__ == "__main__":
    run_cli(main)
