"""Figures and tables of evaluation results: perplexity and accuracy against length, depth x length heatmaps.

Figures are drawn with matplotlib's object API on the Agg canvas (no display, no global backend
switch) and written atomically, like every other result file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from longctx.io import atomic_file


def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table, so printed results paste straight into bench/RESULTS.md."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def plot_path(output_json: str | None, plot: str | None) -> str | None:
    """Where a script's figure goes: --plot, else beside --output_json with .png, else nowhere."""
    return plot or (str(Path(output_json).with_suffix(".png")) if output_json else None)


def _new_figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str | Path) -> Path:
    """Write a PNG through a temporary sibling file, so no half-written image is left behind."""
    with atomic_file(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png", bbox_inches="tight")
    return Path(path)


def _length_axis(axes, lengths: Sequence[int]) -> None:
    if len(lengths) > 1 and max(lengths) / min(lengths) >= 4:
        axes.set_xscale("log", base=2)
    axes.set_xticks(list(lengths))
    axes.set_xticklabels([f"{length // 1024}k" if length % 1024 == 0 else str(length) for length in lengths])
    axes.set_xlabel("context length (tokens)")


def plot_perplexity(results: Sequence[dict], path: str | Path, title: str | None = None, series: str = "scoring") -> Path:
    """Perplexity against `seq_len`, one line per value of `series` (a scoring, a method); log scale
    when the lines span more than 4x, so a diverging one does not flatten the others."""
    figure = _new_figure(width=7.2, height=4.8)
    axes = figure.add_subplot()
    names = list(dict.fromkeys(result.get(series, "") for result in results))
    for name in names:
        points = sorted((r["seq_len"], r["perplexity"]) for r in results if r.get(series, "") == name)
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name or None)
    _length_axis(axes, sorted({r["seq_len"] for r in results}))
    values = [r["perplexity"] for r in results]
    if values and max(values) > 4 * min(values):
        axes.set_yscale("log")
    axes.set_ylabel("perplexity")
    axes.grid(True, alpha=0.3)
    if len(names) > 1:
        axes.legend(fontsize=8)
    if title:
        axes.set_title(title, fontsize=10)
    return save_figure(figure, path)


def plot_accuracy(lengths: Sequence[int], accuracies: Sequence[float], path: str | Path, title: str | None = None) -> Path:
    """Retrieval accuracy (0-1) against prompt length."""
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.plot(list(lengths), list(accuracies), marker="o")
    _length_axis(axes, list(lengths))
    axes.set_ylim(-0.05, 1.05)
    axes.set_ylabel("accuracy")
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(title, fontsize=10)
    return save_figure(figure, path)


def plot_heatmap(
    accuracy: Sequence[Sequence[float]],
    depths: Sequence[float],
    lengths: Sequence[int],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Accuracy per (depth, length) cell: depths (fractions) down, lengths across, red 0 to green 1."""
    figure = _new_figure(max(4.0, 1.0 + 0.7 * len(lengths)), max(3.0, 1.0 + 0.4 * len(depths)))
    axes = figure.add_subplot()
    accuracy = [[float("nan") if value is None else value for value in row] for row in accuracy]
    image = axes.imshow(accuracy, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(lengths)))
    axes.set_xticklabels([str(length) for length in lengths], rotation=45)
    axes.set_yticks(range(len(depths)))
    axes.set_yticklabels([f"{100 * depth:g}%" for depth in depths])
    axes.set_xlabel("context length (tokens)")
    axes.set_ylabel("depth of the needle")
    for row, values in enumerate(accuracy):
        for column, value in enumerate(values):
            if value == value:  # not NaN
                axes.text(column, row, f"{value:.2g}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axes, label="accuracy")
    if title:
        axes.set_title(title, fontsize=10)
    return save_figure(figure, path)


def plot_loss_curve(losses: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Training loss against optimizer step (`{"step", "loss"}` entries of the Trainer's log)."""
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.plot([entry["step"] for entry in losses], [entry["loss"] for entry in losses], marker="o")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(title, fontsize=10)
    return save_figure(figure, path)


def plot_score_grid(
    scores: Sequence[Sequence[float | None]],
    row_labels: Sequence[str],
    lengths: Sequence[int],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Scores 0-100 per (row, length) cell, e.g. RULER's tasks x lengths: red 0 to green 100, empty cells blank."""
    figure = _new_figure(max(4.0, 2.0 + 0.8 * len(lengths)), max(3.0, 1.0 + 0.35 * len(row_labels)))
    axes = figure.add_subplot()
    values = [[float("nan") if value is None else value for value in row] for row in scores]
    image = axes.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=100.0, aspect="auto")
    axes.set_xticks(range(len(lengths)))
    axes.set_xticklabels([str(length) for length in lengths], rotation=45)
    axes.set_yticks(range(len(row_labels)))
    axes.set_yticklabels(list(row_labels))
    axes.set_xlabel("context length (tokens)")
    for row, cells in enumerate(values):
        for column, value in enumerate(cells):
            if value == value:  # not NaN
                axes.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axes, label="score")
    if title:
        axes.set_title(title, fontsize=10)
    return save_figure(figure, path)
