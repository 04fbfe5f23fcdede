r"""Bad input as a careless or hostile user types it: does every case end cleanly, with nothing lost or run?

    python bench/bad_inputs.py --output_json bench/bad_inputs/results.json

Each case runs one script as a user would (a new process, from the repository root) on a scratch
folder that holds a tiny random Llama with SmolLM2's tokenizer (every model flag points to it, so no
case loads SmolLM2), an adapter and a checkpoint trained from it, an adapter of a one-layer model,
a book, and whatever the case adds (existing outputs, truncated weights, pickles that would run
code). A case passes when:

- the exit code is 2 and the last line on stderr is `SCRIPT: error: ...`, with no traceback;
- every file of the scratch folder is byte for byte what it was, and no file was added anywhere in it;
- no pickle ran: the crafted pickles would create a marker file, which must not exist.

The report gives each case's error line, so a reader can judge whether it names what to change.
Cases where a flag's value is fine but the data is not (a damaged file, an adapter of another
model) matter most: those used to lose work or print hundreds of lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "data" / "pg19" / "pg19test_10146.txt"
MARKER = "PICKLE_RAN"
ERROR_LINE = re.compile(r"^(\S+: )?error: ")  # run_cli's "script: error: ..." or argparse's


class RunsCode:
    """Unpickling this writes the marker file: what a crafted checkpoint would do with any command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_pickle(path: Path, marker: Path) -> None:
    """A file torch.save wrote (as checkpoints are), whose unpickling runs a shell command."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": RunsCode(marker)}, path)


def run(args: list[str], cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def build_fixtures(scratch: Path) -> dict[str, Path]:
    """The tiny model, two trained folders, a one-layer model's adapter and a book, made once."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from longctx.modeling import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2"))
    paths = {}
    for name, layers in (("model", 2), ("one_layer_model", 1)):
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        paths[name] = scratch / name
        LlamaForCausalLM(config).save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    paths["book"] = scratch / "book.txt"
    shutil.copy(BOOK, paths["book"])
    for name, model in (("adapter", "model"), ("one_layer_adapter", "one_layer_model")):
        paths[name] = scratch / name
        completed = run([
            "fine-tune.py", "--model_name_or_path", str(paths[model]), "--data_path", str(paths["book"]),
            "--model_max_length", "128", "--max_steps", "2", "--save_steps", "1", "--skip_eval", "True",
            "--learning_rate", "1e-3", "--output_dir", str(paths[name]),
        ])
        if completed.returncode != 0:
            raise SystemExit(f"could not train the fixture {name}:\n{completed.stderr[-2000:]}")
    return paths


def cases(f: dict[str, Path], case_dir: Path) -> list[tuple[str, list[str], callable]]:
    """(name, command line, setup run in the case's folder first). `f` holds the fixtures' paths."""
    model, book, adapter = str(f["model"]), str(f["book"]), str(f["adapter"])
    checkpoint = str(f["adapter"] / "checkpoint-2")
    d = case_dir
    train = ["fine-tune.py", "--model_name_or_path", model, "--data_path", book, "--model_max_length", "128",
             "--max_steps", "1", "--skip_eval", "True"]
    out = ["--output_dir", str(d / "out")]
    sft = ["supervised-fine-tune.py", "--model_name_or_path", model, "--model_max_length", "128", "--max_steps", "1"]
    read = ["--base_model", model]
    evaluate = ["eval.py", *read, "--data_path", book, "--seq_len", "64"]
    passkey = ["passkey_retrivial.py", *read, "--max_tokens", "128", "--interval", "128", "--num_tests", "1"]
    ask = ["inference.py", *read, "--material", book, "--question", "Who?", "--context_size", "256"]

    def nothing():
        pass

    def write(name: str, data: bytes | str = b"x"):
        def setup():
            path = d / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return setup

    def copy(source: Path, name: str, truncate: str | None = None, pickle_into: str | None = None):
        def setup():
            shutil.copytree(source, d / name)
            if truncate:
                path = d / name / truncate
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
            if pickle_into:
                crafted_pickle(d / name / pickle_into, d / MARKER)
        return setup

    def pickled(name: str):
        return lambda: crafted_pickle(d / name, d / MARKER)

    def both(*setups):
        return lambda: [setup() for setup in setups]

    return [
        # fine-tune.py: flag values
        ("train: unknown flag", [*train, *out, "--model_max_lenght", "128"], nothing),
        ("train: length 0", [*train, *out, "--model_max_length", "0"], nothing),
        ("train: length not a number", [*train, *out, "--model_max_length", "16k"], nothing),
        ("train: odd group size", [*train, *out, "--group_size", "7"], nothing),
        ("train: group ratio 0", [*train, *out, "--group_size_ratio", "0"], nothing),
        ("train: group ratio 1.5", [*train, *out, "--group_size_ratio", "1.5"], nothing),
        ("train: LoRA rank 0", [*train, *out, "--lora_r", "0"], nothing),
        ("train: unknown RoPE method", [*train, *out, "--rope_method", "ntk"], nothing),
        ("train: negative RoPE base", [*train, *out, "--rope_method", "theta", "--rope_theta", "-5"], nothing),
        ("train: RoPE base with yarn", [*train, *out, "--rope_method", "yarn", "--rope_theta", "1e6"], nothing),
        ("train: RoPE factor below 1", [*train, *out, "--rope_factor", "0.5"], nothing),
        ("train: unknown dtype", [*train, *out, "--dtype", "float8"], nothing),
        ("train: unknown token dtype", [*train, *out, "--token_dtype", "int8"], nothing),
        ("train: unknown start mode", [*train, *out, "--start_from", adapter, "--start_mode", "stack"], nothing),
        ("train: 4-bit without LoRA", [*train, *out, "--load_in_4bit", "True", "--low_rank_training", "False"], nothing),
        ("train: sequence parallel without processes", [*train, *out, "--sequence_parallel_size", "2"], nothing),
        ("train: unknown model type", [*train, *out, "--model_type", "gpt5"], nothing),
        # fine-tune.py: files
        ("train: model folder missing", ["fine-tune.py", "--model_name_or_path", str(d / "nope"), *out], nothing),
        ("train: model folder is a text file", ["fine-tune.py", "--model_name_or_path", book, *out], nothing),
        ("train: data missing", [*train[:4], str(d / "missing.txt"), *train[5:], *out], nothing),
        ("train: data folder empty", [*train[:4], str(d / "empty"), *train[5:], *out], lambda: (d / "empty").mkdir()),
        ("train: data not UTF-8", [*train[:4], str(d / "bad.txt"), *train[5:], *out], write("bad.txt", b"\xff\xfe\x00bad")),
        ("train: token file of odd size", [*train[:4], str(d / "t.bin"), *train[5:], *out], write("t.bin", b"\x01\x02\x03")),
        ("train: token ids beyond the vocabulary", [*train[:4], str(d / "t.u32.bin"), *train[5:], *out],
         write("t.u32.bin", (10_000_000).to_bytes(4, "little") * 400)),
        ("train: output dir is a file", [*train, "--output_dir", book], nothing),
        ("train: output dir holds another run", [*train, "--output_dir", str(d / "other")], copy(f["adapter"], "other")),
        ("train: output dir under a file", [*train, "--output_dir", f"{book}/out"], nothing),
        ("train: output dir not writable", [*train, "--output_dir", "/proc/longctx"], nothing),
        ("train: resume from a missing checkpoint", [*train, *out, "--resume_from_checkpoint", str(d / "nope")], nothing),
        ("train: resume latest with none", [*train, *out, "--resume_from_checkpoint", "latest"], nothing),
        ("train: resume from a checkpoint whose optimizer runs code",
         [*train, "--output_dir", str(d / "run"), "--overwrite_output_dir", "True", "--max_steps", "3",
          "--resume_from_checkpoint", str(d / "run" / "checkpoint-2")],
         copy(f["adapter"], "run", pickle_into="checkpoint-2/optimizer.pt")),
        ("train: resume from a truncated adapter",
         [*train, "--output_dir", str(d / "run"), "--overwrite_output_dir", "True", "--max_steps", "3",
          "--resume_from_checkpoint", str(d / "run" / "checkpoint-2")],
         copy(f["adapter"], "run", truncate="checkpoint-2/adapter_model.safetensors")),
        ("train: resume with another LoRA rank",
         [*train, "--output_dir", str(d / "run"), "--overwrite_output_dir", "True", "--max_steps", "3", "--lora_r", "4",
          "--resume_from_checkpoint", str(d / "run" / "checkpoint-2")],
         copy(f["adapter"], "run")),
        ("train: start from a one-layer model's adapter", [*train, *out, "--start_from", str(f["one_layer_adapter"])], nothing),
        ("train: model folder with a weights pickle that runs code",
         ["fine-tune.py", "--model_name_or_path", str(d / "m"), "--data_path", book, *out],
         both(copy(f["model"], "m"), lambda: (d / "m" / "model.safetensors").unlink(), pickled("m/pytorch_model.bin"))),
        # supervised-fine-tune.py
        ("sft: data missing", [*sft, "--data_path", str(d / "missing.json"), *out], nothing),
        ("sft: data not JSON", [*sft, "--data_path", str(d / "bad.json"), *out], write("bad.json", "{not json")),
        ("sft: records without instruction", [*sft, "--data_path", str(d / "r.json"), *out],
         write("r.json", json.dumps([{"question": "a", "reply": "b"}]))),
        ("sft: unknown batch method", [*sft, "--data_path", str(d / "r.json"), "--batch_method", "zip", *out],
         write("r.json", json.dumps([{"instruction": "a", "output": "b"}]))),
        ("sft: unknown prompt template", [*sft, "--data_path", str(d / "r.json"), "--prompt_template", "alpaca9", *out],
         write("r.json", json.dumps([{"instruction": "a", "output": "b"}]))),
        # progressive.py
        ("progressive: stages not increasing", ["progressive.py", "--output_dir", str(d / "p"), "--stages", "512,256",
                                                "--model_name_or_path", model], nothing),
        ("progressive: stage within the window", ["progressive.py", "--output_dir", str(d / "p"), "--stages", "128,512",
                                                  "--model_name_or_path", model], nothing),
        ("progressive: steps for the wrong number of stages", ["progressive.py", "--output_dir", str(d / "p"),
                                                               "--stages", "512,1024", "--stage_steps", "1,2,3",
                                                               "--model_name_or_path", model], nothing),
        ("progressive: per-stage flag given", ["progressive.py", "--output_dir", str(d / "p"), "--stages", "512,1024",
                                               "--max_steps", "3", "--model_name_or_path", model], nothing),
        ("progressive: unknown method", ["progressive.py", "--output_dir", str(d / "p"), "--stages", "512,1024",
                                         "--rope_method", "ntk", "--model_name_or_path", model], nothing),
        # eval.py
        ("eval: length not a number", [*evaluate[:-1], "4k"], nothing),
        ("eval: length above --context_size", [*evaluate[:-1], "512", "--context_size", "256"], nothing),
        ("eval: unknown scoring", [*evaluate, "--scoring", "best"], nothing),
        ("eval: stride 0", [*evaluate, "--sliding_window", "0"], nothing),
        ("eval: batch 0", [*evaluate, "--batch_size", "0"], nothing),
        ("eval: DCA size without DCA", [*evaluate, "--dca_chunk_size", "32"], nothing),
        ("eval: results onto its own book", [*evaluate, "--output_json", book], nothing),
        ("eval: results onto an existing file", [*evaluate, "--output_json", str(d / "old.json")], write("old.json", "{}")),
        ("eval: results in a folder that is a file", [*evaluate, "--output_json", f"{book}/r.json"], nothing),
        ("eval: results not writable", [*evaluate, "--output_json", "/proc/longctx.json"], nothing),
        ("eval: adapter missing", [*evaluate, "--peft_model", str(d / "nope")], nothing),
        ("eval: adapter truncated", [*evaluate, "--peft_model", str(d / "a")],
         copy(f["adapter"], "a", truncate="adapter_model.safetensors")),
        ("eval: trainable params truncated", [*evaluate, "--peft_model", str(d / "a")],
         copy(f["adapter"], "a", truncate="trainable_params.safetensors")),
        ("eval: adapter of a one-layer model", [*evaluate, "--peft_model", str(f["one_layer_adapter"])], nothing),
        ("eval: adapter folder with a pickle that runs code", [*evaluate, "--peft_model", str(d / "a")],
         both(copy(f["adapter"], "a"), lambda: (d / "a" / "adapter_model.safetensors").unlink(),
              pickled("a/adapter_model.bin"))),
        ("eval: RoPE flag against the adapter's record", [*evaluate, "--peft_model", adapter, "--rope_method", "yarn"],
         nothing),
        ("eval: data not UTF-8", [*evaluate[:3], "--data_path", str(d / "bad.txt"), "--seq_len", "64"],
         write("bad.txt", b"\xff\xfe\x00bad")),
        ("eval: max tokens 1", [*evaluate, "--max_tokens", "1"], nothing),
        # passkey / needle / ruler
        ("passkey: interval 0", [*passkey[:-4], "--interval", "0"], nothing),
        ("passkey: no tests", [*passkey[:-2], "--num_tests", "0"], nothing),
        ("passkey: depth 150%", [*passkey, "--depths", "0,150"], nothing),
        ("passkey: results onto an existing file", [*passkey, "--output_json", str(d / "old.json")], write("old.json", "{}")),
        ("needle: haystack missing", ["needle_in_haystack.py", *read, "--max_tokens", "128", "--interval", "128",
                                      "--haystack", str(d / "nope")], nothing),
        ("ruler: unknown task", ["ruler.py", *read, "--lengths", "256", "--tasks", "niah_single_9"], nothing),
        ("ruler: length below the prompt", ["ruler.py", *read, "--lengths", "16", "--tasks", "vt"], nothing),
        # inference.py / merge / get_trainable_weights
        ("inference: material missing", [*ask[:4], str(d / "nope.txt"), *ask[5:]], nothing),
        ("inference: material empty", [*ask[:4], str(d / "empty.txt"), *ask[5:]], write("empty.txt", "")),
        ("inference: PDF that is not one", [*ask[:4], str(d / "fake.pdf"), *ask[5:]], write("fake.pdf", "hello")),
        ("inference: no question", ask[:5], nothing),
        ("inference: unknown truncation", [*ask, "--truncate", "start"], nothing),
        ("inference: negative temperature", [*ask, "--temperature", "-1"], nothing),
        ("inference: material over the window", [*ask[:-2], "--context_size", "64"], nothing),
        ("merge: adapter missing", ["merge_lora_weights_and_save_hf_model.py", "--base_model", model,
                                    "--peft_model", str(d / "nope"), "--save_path", str(d / "merged")], nothing),
        ("merge: save path is the adapter", ["merge_lora_weights_and_save_hf_model.py", "--base_model", model,
                                             "--peft_model", str(d / "a"), "--save_path", str(d / "a")],
         copy(f["adapter"], "a")),
        ("merge: save path holds files", ["merge_lora_weights_and_save_hf_model.py", "--base_model", model,
                                          "--peft_model", adapter, "--save_path", str(d / "full")], write("full/x.txt")),
        ("merge: adapter of a one-layer model", ["merge_lora_weights_and_save_hf_model.py", "--base_model", model,
                                                 "--peft_model", str(f["one_layer_adapter"]),
                                                 "--save_path", str(d / "merged")], nothing),
        ("trainable weights: checkpoint missing", ["get_trainable_weights.py", "--checkpoint_path", str(d / "nope")],
         nothing),
        ("trainable weights: DeepSpeed pickles that run code", ["get_trainable_weights.py", "--checkpoint_path",
                                                                str(d / "c"), "--base_model", model],
         both(copy(Path(checkpoint), "c"), pickled("c/global_step2/mp_rank_00_model_states.pt"),
              pickled("c/global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt"), write("c/latest", "global_step2"))),
        # pdf2txt and the data tools
        ("pdf2txt: input missing", ["pdf2txt/pdf2txt.py", "--input", str(d / "nope.pdf"), "--output_dir", str(d / "o")],
         nothing),
        ("pdf2txt: existing JSONL", ["pdf2txt/pdf2txt.py", "--input", str(d / "fake.pdf"), "--output_dir", str(d / "o"),
                                     "--output_jsonl", str(d / "old.jsonl")],
         both(write("fake.pdf", "%PDF-1.4 broken"), write("old.jsonl", "{}\n"))),
        ("tokenize: input missing", ["-m", "longctx.tokenize_data", "--input", str(d / "nope.txt"),
                                     "--output", str(d / "t.bin"), "--tokenizer", model], nothing),
        ("tokenize: output over the input", ["-m", "longctx.tokenize_data", "--input", book, "--output", book,
                                             "--tokenizer", model], nothing),
        ("tokenize: output exists", ["-m", "longctx.tokenize_data", "--input", book, "--output", str(d / "t.bin"),
                                     "--tokenizer", model], write("t.bin", b"\x00\x00")),
        ("QA data: books missing", ["-m", "longctx.build_qa_data", "--books", str(d / "nope"),
                                    "--output", str(d / "qa.json")], nothing),
        ("QA data: output exists", ["-m", "longctx.build_qa_data", "--books", book, "--output", str(d / "qa.json")],
         write("qa.json", "[]")),
        ("extract LoRA: rank 0", ["-m", "longctx.extract_lora", "--base", model, "--tuned", model, "--rank", "0",
                                  "--save_path", str(d / "lora")], nothing),
    ]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def judge(completed: subprocess.CompletedProcess, lines: list[str], before: dict, after: dict, marker: Path) -> list[str]:
    """What went wrong in one case (empty: clean); `lines` are its non-empty stderr lines."""
    problems = []
    if completed.returncode != 2:
        problems.append(f"exit code {completed.returncode}")
    if not lines or not ERROR_LINE.match(lines[-1]):
        problems.append("no error line")
    if "Traceback" in completed.stderr:
        problems.append("traceback")
    changed = sorted(name for name in before if after.get(name) != before[name])
    added = sorted(set(after) - set(before))
    if changed:
        problems.append(f"changed: {', '.join(changed[:3])}")
    if added:
        problems.append(f"written: {', '.join(added[:3])}")
    if marker.exists():
        problems.append("a pickle ran code")
    return problems


def main():
    """Exit code 1 when a case is not clean; a bad flag of this script is one error line (run_cli)."""
    from tqdm.auto import tqdm
    from transformers.hf_argparser import string_to_bool

    from longctx.io import write_json_atomic
    from longctx.outputs import check_result_files

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_json", default="bench/bad_inputs/results.json")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    parser.add_argument("--overwrite", type=string_to_bool, nargs="?", const=True, default=False,
                        help="replace --output_json when it exists (True/False, as the scripts take it)")
    args = parser.parse_args()
    check_result_files(args.output_json, None, overwrite=args.overwrite)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="longctx-bad-inputs-") as scratch_name:
        scratch = Path(scratch_name)
        fixtures = build_fixtures(scratch / "fixtures")
        names = [name for name, _, _ in cases(fixtures, scratch / "unused")]  # each case gets its own folder below
        selected = [index for index, name in enumerate(names) if args.only is None or args.only in name]
        results = []
        for index in tqdm(selected, desc="bad inputs"):
            case_dir = scratch / f"case{index:03d}"
            case_dir.mkdir()
            name, command, setup = cases(fixtures, case_dir)[index]
            setup()
            before = snapshot(scratch)
            case_started = time.perf_counter()
            completed = run(command)
            after = snapshot(scratch)
            lines = [line for line in completed.stderr.splitlines() if line.strip()]
            problems = judge(completed, lines, before, after, case_dir / MARKER)
            results.append({
                "case": name,
                "command": " ".join(command).replace(str(scratch), "$SCRATCH"),
                "exit_code": completed.returncode,
                "error": (lines[-1] if lines else "").replace(str(scratch), "$SCRATCH"),
                "seconds": round(time.perf_counter() - case_started, 1),
                "problems": problems,
            })
            if problems:
                tqdm.write(f"FAIL {name}: {'; '.join(problems)}\n    {results[-1]['error']}")
    failed = [result for result in results if result["problems"]]
    summary = {
        "cases": len(results),
        "clean": len(results) - len(failed),
        "failed": [result["case"] for result in failed],
        "seconds": round(time.perf_counter() - started),
        "results": results,
    }
    write_json_atomic(args.output_json, summary)
    print(f"{summary['clean']} of {len(results)} cases clean; results in {args.output_json}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    from longctx.cli import run_cli

    run_cli(main)
