"""Figures (PNG) from run folders: training curves from metrics.jsonl, teacher-vs-student bars and gains.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot, so that
building a report changes no global matplotlib state (a notebook's inline backend keeps working).
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .labels import fmt_gain, is_missing, method_label, model_label
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


def loss_definition(run: Run) -> str:
    """What a run's training loss sums: 'CE' trained alone, 'CE + NKD' (etc.) distilled; losses of different
    definitions are not on one scale, so they are never drawn on one axis."""
    return f"CE + {method_label(run.method)}" if run.method else "CE"


def training_curves(runs: list[Run], path: str | Path, title: str | None = None) -> Path | None:
    """Training loss (one panel per loss definition), evaluation top-1 and learning rate per epoch, one line
    per run; None without metrics."""
    fig = curves_figure(runs, title)
    return None if fig is None else _save(fig, Path(path))


def curves_figure(runs: list[Run], title: str | None = None) -> Figure | None:
    """The figure of `training_curves` (None without metrics)."""
    runs = [r for r in runs if r.metrics]
    if not runs:
        return None
    labels = [run_label(r) for r in runs]
    repeated = {k for k, v in Counter(labels).items() if v > 1}
    labels = [f"{lab} [{r.name}]" if lab in repeated else lab for lab, r in zip(labels, runs)]
    definitions = sorted({loss_definition(r) for r in runs}, key=lambda d: (d != "CE", d))
    panels = [("train_loss", d) for d in definitions] + [(key, None) for key, _ in _CURVES[1:]]
    fig = Figure(figsize=(13 + 3.2 * (len(definitions) - 1), 4.0 + 0.17 * ((len(runs) + 2) // 3)),
                 layout="constrained")
    axes = list(fig.subplots(1, len(panels)))
    colours = {r.path: f"C{i % 10}" for i, r in enumerate(runs)}
    for run, label in zip(runs, labels):
        epochs = [row.get("epoch") for row in run.metrics]
        for ax, (key, definition) in zip(axes, panels):
            if definition is not None and loss_definition(run) != definition:
                continue
            values = [row.get(key) for row in run.metrics]
            points = [(e, v) for e, v in zip(epochs, values) if not is_missing(e) and not is_missing(v)]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None, color=colours[run.path],
                        linestyle="--" if not run.complete else "-", label=label)
    splits = sorted({row.get("split") for r in runs for row in r.metrics if row.get("split")})
    names = dict(_CURVES)
    for ax, (key, definition) in zip(axes, panels):
        ax.set_xlabel("epoch")
        if definition is not None:
            ax.set_ylabel(f"training loss ({definition})")
            if len(definitions) > 1:
                ax.set_title(f"loss = {definition}", fontsize=9)
        else:
            ax.set_ylabel(names[key] + (f" [{', '.join(splits)}]" if key == "top1" and splits else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    # Every run is drawn in the top-1 panel, so its legend names them all.
    handles, names_ = axes[len(definitions)].get_legend_handles_labels()
    fig.legend(handles, names_, loc="outside lower center", ncols=min(3, len(names_)), fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def teacher_student_bars(grid: pd.DataFrame, path: str | Path, title: str | None = None) -> Path | None:
    """Bars of teacher, student alone and distilled student top-1 per grid row, on an axis zoomed to the
    numbers (so that differences of a point show), with n on the students' bars and the Direct Gain (± its
    standard deviation) over each row; None for an empty grid."""
    fig = teacher_student_figure(grid, title)
    return None if fig is None else _save(fig, Path(path))


def teacher_student_figure(grid: pd.DataFrame, title: str | None = None) -> Figure | None:
    """The figure of `teacher_student_bars` (None for a grid without complete rows)."""
    grid = grid[grid["status"] == "complete"]
    if grid.empty:
        return None
    fig = Figure(figsize=(max(5.0, 2.2 * len(grid) + 1.5), 4.6), layout="constrained")
    ax = fig.subplots()
    width = 0.27
    series = (("teacher_top1", None, None, "teacher"), ("alone_top1_mean", "alone_top1_std", "alone_n",
                                                        "student alone"),
              ("top1_mean", "top1_std", "n", "student distilled"))

    def values(col):
        # A missing number draws no bar (NaN), rather than a bar at the axis floor.
        return [float("nan") if is_missing(v) else float(v) for v in grid[col]]

    lows, highs = [], []
    for col, err, _, _ in series:
        errs = [0.0] * len(grid) if err is None else [0.0 if is_missing(v) else float(v) for v in grid[err]]
        lows += [y - e for y, e in zip(values(col), errs) if y == y]
        highs += [y + e for y, e in zip(values(col), errs) if y == y]
    # The axis starts a little below the lowest number, not at 0, and says so.
    span = max(highs) - min(lows) if lows else 0.0
    floor = float(max(0, math.floor(min(lows) - max(1.0, 0.35 * span)))) if lows else 0.0
    top = (max(highs) + max(1.5, 0.45 * span)) if highs else 100.0
    for k, (col, err, count, name) in enumerate(series):
        xs = [i + (k - 1) * width for i in range(len(grid))]
        ys = values(col)
        errs = None if err is None else [0.0 if is_missing(v) else float(v) for v in grid[err]]
        bars = ax.bar(xs, [y - floor for y in ys], width, bottom=floor, yerr=errs, capsize=3, label=name)
        counts = [None] * len(grid) if count is None else list(grid[count])
        ax.bar_label(bars, labels=["" if y != y else f"{y:.1f}" + ("" if is_missing(c) else f"\nn={int(c)}")
                                   for y, c in zip(ys, counts)], fontsize=7, padding=2)
    for i, r in enumerate(grid.itertuples()):
        if not is_missing(r.direct_gain):
            gain = f"Direct Gain {r.direct_gain:+.2f}" + ("" if is_missing(r.direct_gain_std)
                                                          else f" ± {r.direct_gain_std:.2f}")
            ax.annotate(gain, (i, top), xytext=(0, -4), textcoords="offset points", ha="center", va="top",
                        fontsize=8, fontweight="bold")
    ax.set_xticks(range(len(grid)))
    # The recipe (e.g. which teacher checkpoint) tells apart rows of the same student, teacher and method.
    ax.set_xticklabels([f"{r.student}\n← {r.teacher}\n{method_label(r.method)}"
                        + (f"\n{r.recipe}" if r.recipe else "") for r in grid.itertuples()], fontsize=8)
    ax.set_ylabel("top-1 (%)" + (f", axis from {floor:.0f}" if floor > 0 else ""))
    ax.set_ylim(floor, top)
    ax.legend(fontsize=8, loc="lower center", ncols=3, bbox_to_anchor=(0.5, 1.0))
    ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def gain_bars(grid: pd.DataFrame, path: str | Path, title: str | None = None) -> Path | None:
    """Direct Gain and Effective Gain per grid row (one bar per teacher and method) with ± their standard
    deviation as error bars, on axes that span the gains and zero; None without a complete row that has a gain."""
    fig = gains_figure(grid, title)
    return None if fig is None else _save(fig, Path(path))


def gains_figure(grid: pd.DataFrame, title: str | None = None) -> Figure | None:
    """The figure of `gain_bars` (None without a complete row that has a Direct Gain)."""
    grid = grid[(grid["status"] == "complete") & grid["direct_gain"].map(lambda v: not is_missing(v))]
    if grid.empty:
        return None
    # The student is named only where rows have several, the recipe only where it tells rows apart.
    several_students = grid["student"].nunique() > 1
    labels = []
    for r in grid.itertuples():
        text = (f"{r.student}\n" if several_students else "") + f"← {r.teacher}\n{method_label(r.method)}"
        if not is_missing(r.teacher_top1):
            text += f", teacher {r.teacher_top1:.1f}%"
        labels.append(text + (f"\n{r.recipe}" if r.recipe else ""))
    panels = (("direct_gain", "direct_gain_std", "Direct Gain (top-1 points)", 2),
              ("effective_gain", "effective_gain_std", "Effective Gain (Direct Gain / teacher top-1)", 4))
    fig = Figure(figsize=(max(7.0, 2.6 * len(grid) + 2.0), 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    xs = list(range(len(grid)))
    for ax, (col, err, name, digits) in zip(axes, panels):
        ys = [float("nan") if is_missing(v) else float(v) for v in grid[col]]
        errs = [0.0 if is_missing(v) else float(v) for v in grid[err]]
        ax.bar(xs, ys, 0.6, yerr=errs, capsize=4, color=[f"C{i % 10}" for i in xs])
        ax.axhline(0.0, color="black", linewidth=0.8)
        # The axis spans the gains, their error bars and zero, so that differences of a fraction of a point
        # show (a 0-100 axis would flatten them); each bar says its value, spread and run counts.
        lows = [y - e for y, e in zip(ys, errs) if y == y] + [0.0]
        highs = [y + e for y, e in zip(ys, errs) if y == y] + [0.0]
        pad = 0.25 * max(max(highs) - min(lows), 10.0 ** -digits)
        ax.set_ylim(min(lows) - pad, max(highs) + pad)
        for x, y, e, r in zip(xs, ys, errs, grid.itertuples()):
            if y != y:
                continue
            text = fmt_gain(y, getattr(r, err), digits) + f"\nn={r.n}, alone n={r.alone_n}"
            ax.annotate(text, (x, y + e if y >= 0 else y - e), xytext=(0, 3 if y >= 0 else -3),
                        textcoords="offset points", ha="center", va="bottom" if y >= 0 else "top", fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7)
        if not several_students:
            ax.set_xlabel(f"teacher (student: {grid['student'].iloc[0]})", fontsize=8)
        ax.set_ylabel(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    spread = grid["direct_gain_std"].map(lambda v: not is_missing(v)).any()
    note = ("error bars: ± one standard deviation of the gain over seeds" if spread
            else "no error bars: a spread needs two runs on one side")
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=10)
    return fig
