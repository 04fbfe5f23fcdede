r"""How long is the context really? RULER's effective length (Hsieh et al. 2024), 13 tasks by length.

RULER's synthetic tasks in four families: retrieval (niah_single_1/2/3, niah_multikey_1/2/3,
niah_multivalue, niah_multiquery), multi-hop tracing (vt), aggregation (cwe, fwe) and question
answering (qa_1, qa_2), with RULER's parameters, templates and scoring, built from the bundled books
(nothing is downloaded). A length counts the prompt plus the task's generation budget, in tokens of
the model's tokenizer. Prints a tasks x lengths table; writes the JSON ({"scores": {task: {length:
0-100}}, "average", "effective_length", "threshold", "relative_effective_length", ..., every reply)
and a heatmap PNG. The effective length is the longest length whose average stays >= --threshold.

The bundled SmolLM2 in its native window, 10 samples per task and length:
    python ruler.py --lengths 2048,4096,8192 --output_json outputs/ruler/smollm2.json

Past the window: Dual Chunk Attention, and YaRN x4, to 32k:
    python ruler.py --lengths 4096,8192,16384,32768 --dca True --output_json outputs/ruler/dca.json
    python ruler.py --lengths 4096,8192,16384,32768 --rope_method yarn --rope_factor 4 \
        --output_json outputs/ruler/yarn4.json

A fine-tuned adapter, RoPE scaled as in training; only some tasks or families:
    python ruler.py --peft_model outputs/smollm2-16k --context_size 16384 --lengths 4096,8192,16384 \
        --tasks retrieval,vt --output_json outputs/ruler/16k.json

Without --context_size, RoPE is scaled to reach the longest length (a no-op within the native window).
"""

import time

from longctx.args import RulerArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.outputs import check_result_files
from longctx.reading_model import load_for_inference
from longctx.ruler_scoring import report_ruler, resumed_records, run_ruler, save_partial
from longctx.ruler_tasks import check_lengths, load_material, make_sample

# what a sample and its reply depend on: an interrupted run resumes only if these are the same
RESUME_SETTINGS = (
    "base_model", "peft_model", "context_size", "rope_method", "rope_factor", "rope_theta", "rope_parameters",
    "dtype", "load_in_4bit", "bnb_4bit_compute_dtype", "flash_attn", "dca", "pretraining_length",
    "dca_chunk_size", "dca_local_window", "haystack", "seed", "batch_size",
)


def main():
    (args,) = parse_dataclasses((RulerArguments,), __doc__)
    started = time.perf_counter()
    plot = check_result_files(args.output_json, args.plot, {"--haystack": args.haystack}, args.overwrite or args.resume)
    material = load_material(args.haystack)
    model, tokenizer = load_for_inference(args.reading_model(args.target_lengths[-1]))
    check_lengths(tokenizer, material, args.task_names, args.target_lengths, args.seed)  # before any generation

    def make(task, length, index):
        return make_sample(tokenizer, material, task, length, index, seed=args.seed)

    batch_size = 1 if args.dca else args.batch_size  # DCA refuses padded batches
    config = {**args.result_config(model), "haystack": material.source, "batch_size": batch_size}
    done = resumed_records(args.output_json, config, RESUME_SETTINGS) if args.resume else []
    if done:
        print(f"--resume: {len(done)} samples answered earlier in {args.output_json}; those asked for again are kept")

    def save(records):
        if args.output_json:
            save_partial(records, config, args.threshold, args.output_json, args.task_names)

    records = run_ruler(
        model, tokenizer, args.task_names, args.target_lengths, args.num_samples, make, batch_size,
        done=done, after_cell=save,
    )
    config["seconds"] = time.perf_counter() - started  # this run's, not an interrupted one's
    report_ruler(records, config, args.threshold, args.output_json, plot, title=f"RULER: {args.base_model}")


if __name__ == "__main__":
    run_cli(main)
