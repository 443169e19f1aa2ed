"""Figures (PNG) from run folders: training curves from metrics.jsonl and teacher-vs-student bars.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot, so that
building a report changes no global matplotlib state (a notebook's inline backend keeps working).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .labels import is_missing, method_label, model_label
from .runs import Run

_CURVES = (("train_loss", "training loss"), ("top1", "top-1 (%)"), ("lr", "learning rate"))


def run_label(run: Run) -> str:
    """Legend text for a run, derived from its summary: model (<- teacher, method), seed, stopped flag."""
    s = run.summary
    text = model_label(s.get("model"))
    if run.method:
        text += f" ← {model_label(run.teacher)} {method_label(run.method)}"
    text += f", seed {s.get('seed')}"
    if not run.complete:
        text += " (stopped)"
    return text


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    # No software/date metadata: the same runs give the same file.
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path


def training_curves(runs: list[Run], path: str | Path, title: str | None = None) -> Path | None:
    """Training loss, evaluation top-1 and learning rate per epoch, one line per run; None without metrics."""
    runs = [r for r in runs if r.metrics]
    if not runs:
        return None
    labels = [run_label(r) for r in runs]
    repeated = {k for k, v in Counter(labels).items() if v > 1}
    labels = [f"{lab} [{r.name}]" if lab in repeated else lab for lab, r in zip(labels, runs)]
    fig = Figure(figsize=(13, 4.0 + 0.17 * ((len(runs) + 2) // 3)), layout="constrained")
    axes = fig.subplots(1, len(_CURVES))
    for run, label in zip(runs, labels):
        epochs = [row.get("epoch") for row in run.metrics]
        for ax, (key, _) in zip(axes, _CURVES):
            values = [row.get(key) for row in run.metrics]
            points = [(e, v) for e, v in zip(epochs, values) if not is_missing(e) and not is_missing(v)]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None,
                        linestyle="--" if not run.complete else "-", label=label)
    splits = sorted({row.get("split") for r in runs for row in r.metrics if row.get("split")})
    for ax, (key, name) in zip(axes, _CURVES):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name + (f" [{', '.join(splits)}]" if key == "top1" and splits else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(3, len(names)), fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def teacher_student_bars(grid: pd.DataFrame, path: str | Path, title: str | None = None) -> Path | None:
    """Bars of teacher, student alone and distilled student top-1 per grid row; None for an empty grid."""
    grid = grid[grid["status"] == "complete"]
    if grid.empty:
        return None
    fig = Figure(figsize=(max(5.0, 1.9 * len(grid) + 1.5), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.27
    series = (("teacher_top1", None, "teacher"), ("alone_top1_mean", "alone_top1_std", "student alone"),
              ("top1_mean", "top1_std", "student distilled"))
    for k, (col, err, name) in enumerate(series):
        xs = [i + (k - 1) * width for i in range(len(grid))]
        # A missing number draws no bar (NaN), rather than a bar at zero.
        ys = [float("nan") if is_missing(v) else float(v) for v in grid[col]]
        errs = None if err is None else [0.0 if is_missing(v) else float(v) for v in grid[err]]
        bars = ax.bar(xs, ys, width, yerr=errs, capsize=3, label=name)
        ax.bar_label(bars, labels=["" if y != y else f"{y:.1f}" for y in ys], fontsize=7, padding=2)
    ax.set_xticks(range(len(grid)))
    # The recipe (e.g. which teacher checkpoint) tells apart rows of the same student, teacher and method.
    ax.set_xticklabels([f"{r.student}\n← {r.teacher}\n{method_label(r.method)}"
                        + (f"\n{r.recipe}" if r.recipe else "") for r in grid.itertuples()], fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 115)
    ax.legend(fontsize=8, loc="upper center", ncols=3)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, Path(path))
