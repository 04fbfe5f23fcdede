"""Answering and scoring RULER's tasks, and the effective context length (Hsieh et al. 2024).

Replies are greedy, cut at the task's generation budget, one prompt at a time or in left-padded
batches of one task at one length. Their prompts are within 1% of each other, so padding adds few
tokens, but a padded batch needs a mask and so loses SDPA's causal kernel, which skips the masked
half: on CPU one at a time is faster. Scoring is RULER's (scripts/eval/synthetic/constants.py):
case-insensitive string match of each reference in the reply, the share of references found ("all":
needles, vt, cwe, fwe) or whether any is ("part": qa).
A task's score at a length is the mean over its samples, 0-100.

The effective length is the longest tested length up to which the average over the tasks stays at
or above the threshold (RULER's 85.6, Llama-2-7B's average at 4k). Small models may never reach it,
so the same is also given against a relative threshold: that share of the model's own average at
the shortest length.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from longctx.errors import first_line
from longctx.io import write_json_atomic
from longctx.ruler_tasks import TASKS, RulerSample

RULER_THRESHOLD = 85.6


def postprocess(reply: str) -> str:
    """RULER's cleaning of a reply: control characters to newlines, surrounding whitespace off."""
    return re.sub(r"[\x00-\x1f]", "\n", reply.strip()).strip()


def string_match_all(reply: str, references: Sequence[str]) -> float:
    """Share of the references found in the reply (case aside)."""
    reply = postprocess(reply).lower()
    return sum(reference.lower() in reply for reference in references) / len(references)


def string_match_part(reply: str, references: Sequence[str]) -> float:
    """1.0 if any reference is in the reply (case aside), else 0.0."""
    reply = postprocess(reply).lower()
    return float(any(reference.lower() in reply for reference in references))


METRIC_FUNCTIONS = {"all": string_match_all, "part": string_match_part}


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[str]:
    """Greedy replies to left-padded prompts, each cut at its first end-of-sequence token."""
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids))
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad
    )
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    replies = []
    for row in output[:, width:].tolist():
        cut = next((i for i, token in enumerate(row) if token in eos_ids), len(row))
        replies.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return replies


def run_ruler(
    model,
    tokenizer,
    tasks: Sequence[str],
    lengths: Sequence[int],
    num_samples: int,
    make_sample: Callable[[str, int, int], RulerSample],
    batch_size: int = 1,
    generate: Callable = generate_batch,
    progress: bool = True,
    done: Sequence[dict] = (),
    after_cell: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Every (length, task, sample) built, answered in batches and scored; one record each.

    Samples with a record in `done` (an interrupted run's, same settings) are kept, not answered again.
    `after_cell(records)` is called with every record so far once each task at each length is complete,
    so a caller can save them as it goes.
    """
    asked = lambda record: record["task"] in tasks and record["length"] in lengths and record["index"] < num_samples
    records = [dict(record) for record in done if asked(record)]
    answered = {(record["task"], record["length"], record["index"]) for record in records}
    total = len(lengths) * len(tasks) * num_samples
    with tqdm(total=total, initial=len(answered), desc="ruler", unit="sample", disable=not progress) as bar:
        for length in lengths:
            for task in tasks:
                missing = [index for index in range(num_samples) if (task, length, index) not in answered]
                for start in range(0, len(missing), batch_size):
                    samples = [make_sample(task, length, index) for index in missing[start : start + batch_size]]
                    began = time.perf_counter()
                    replies = generate(model, tokenizer, [s.input_ids for s in samples], samples[0].max_new_tokens)
                    seconds = (time.perf_counter() - began) / len(samples)
                    for sample, reply in zip(samples, replies):
                        records.append({
                            "task": task,
                            "length": length,
                            "index": sample.index,
                            "tokens": len(sample.input_ids),
                            "total_tokens": sample.total_tokens,
                            "references": sample.references,
                            "depths": [round(depth, 4) for depth in sample.depths],
                            "reply": reply,
                            "score": METRIC_FUNCTIONS[sample.metric](reply, sample.references),
                            "seconds": seconds,
                        })
                    bar.update(len(samples))
                    bar.set_postfix(length=length, task=task)
                if missing and after_cell is not None:
                    after_cell(records)
    return records


def resumed_records(output_json: str, config: dict, settings: Sequence[str]) -> list[dict]:
    """The records of an interrupted run in `output_json`, if it ran with the same `settings` (keys of
    `config`, the ones its samples and replies depend on); ValueError naming the first that differs."""
    import json
    from pathlib import Path

    path = Path(output_json)
    if not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        earlier_config, records = earlier["config"], earlier["records"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--resume: {path} is not a ruler.py result ({first_line(error)})") from None
    for key in settings:
        if earlier_config.get(key) != config.get(key):
            raise ValueError(
                f"--resume: {path} was run with {key} = {earlier_config.get(key)!r}, this run has {config.get(key)!r}; "
                "resume with the same flags or choose another --output_json"
            )
    return records


def effective_length(averages: dict[int, float], threshold: float) -> int | None:
    """The longest length up to which every average is >= threshold; None if the shortest already falls below."""
    passed = None
    for length in sorted(averages):
        if averages[length] < threshold:
            break
        passed = length
    return passed


def summarize(records: Sequence[dict], threshold: float = RULER_THRESHOLD, asked: Sequence[str] | None = None) -> dict:
    """Scores per task and length (0-100), their average per length, and the effective lengths.

    `asked`: the tasks the run asks for (default: those with records); a length is averaged only once
    every one of them has a score there, so a stopped run's partial length has no average.
    """
    tasks = [task for task in TASKS if any(record["task"] == task for record in records)]
    averaged = tasks if asked is None else list(asked)
    lengths = sorted({record["length"] for record in records})
    scores = {task: {} for task in tasks}
    for task in tasks:
        for length in lengths:
            cell = [record["score"] for record in records if record["task"] == task and record["length"] == length]
            if cell:
                scores[task][length] = round(100 * sum(cell) / len(cell), 2)
    average = {
        length: round(sum(scores[task][length] for task in averaged) / len(averaged), 2)
        for length in lengths
        if all(length in scores.get(task, {}) for task in averaged)
    }
    reference = average.get(lengths[0]) if lengths else None
    relative_threshold = round(threshold / 100 * reference, 2) if reference else None
    return {
        "scores": scores,
        "average": average,
        "effective_length": effective_length(average, threshold),
        "threshold": threshold,
        "relative_threshold": relative_threshold,
        "relative_effective_length": effective_length(average, relative_threshold) if relative_threshold else None,
        "reference_length": lengths[0] if lengths else None,
        "tasks": tasks,
        "families": {task: TASKS[task].family for task in tasks},
        "lengths": lengths,
    }


def save_partial(
    records: Sequence[dict], config: dict, threshold: float, output_json: str, asked: Sequence[str]
) -> None:
    """What a run leaves if it stops early: the summary of the cells done so far (of the `asked` tasks),
    `"complete": false`, and their records, which `--resume` goes on from."""
    _write_results(output_json, summarize(records, threshold, asked), False, config, records)


def _write_results(output_json: str, summary: dict, complete: bool, config: dict, records, plot: str | None = None):
    write_json_atomic(
        output_json, {**summary, "complete": complete, "config": config, "plot": plot, "records": list(records)}
    )


def report_ruler(
    records: Sequence[dict], config: dict, threshold: float, output_json: str | None, plot: str | None, title: str
) -> dict:
    """Print the tasks x lengths table and effective lengths, write the JSON and the heatmap; returns the summary."""
    from longctx.plots import format_table, plot_path, plot_score_grid

    summary = summarize(records, threshold)
    lengths, tasks = summary["lengths"], summary["tasks"]
    rows = [[task, *(f"{summary['scores'][task].get(length, '-')}" for length in lengths)] for task in tasks]
    rows.append(["**average**", *(f"**{summary['average'].get(length, '-')}**" for length in lengths)])
    print(format_table(["task", *lengths], rows))
    print(
        f"effective length (average >= {threshold:g}): {summary['effective_length'] or 'below ' + str(lengths[0])}; "
        f"relative (>= {summary['relative_threshold']}, {threshold:g}% of the {lengths[0]}-token average): "
        f"{summary['relative_effective_length']}"
    )
    plot = plot_path(output_json, plot)
    if output_json:
        _write_results(output_json, summary, True, config, records, plot)
        print(f"results written to {output_json}")
    if plot:
        grid = [[summary["scores"][task].get(length) for length in lengths] for task in tasks]
        grid.append([summary["average"].get(length) for length in lengths])
        plot_score_grid(grid, [*tasks, "average"], lengths, plot, title=title)
        print(f"plot written to {plot}")
    return summary
