"""The report's effective-receptive-field table and heatmap row, from the erf.json / erf.npy files that
`repro erf` writes into run folders.

Per dataset the rows are the teachers (runs trained alone that reported distilled runs learned from), the
students trained alone, then the distilled students; each row is a group of seeds as in the other tables
(`group_runs`), with the area ratios averaged over its runs. Runs measured at another input size or on another
split are never averaged together, and a stopped run gets a row of its own. An erf.json whose weights the run
has since replaced (its step differs from the run's) is left out and named in the report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .labels import fmt_mean_std, method_label, model_label
from .runs import Run
from .tables import _run_names, _seeds, _stats, group_runs, markdown_table, status_label, teacher_run

THRESHOLD_KEYS = ("0.2", "0.3", "0.5", "0.99")  # the released thresholds, as erf.json keys them
ROLES = ("teacher", "student alone", "distilled")

_COLUMNS = (["role", "model", "model_name", "teacher", "teacher_name", "method", "dataset", "img_size", "epochs",
             "recipe", "erf_size", "split", "images", "skipped"]
            + [c for t in THRESHOLD_KEYS for c in (f"area_ratio_{t}", f"area_ratio_{t}_std")]
            + ["n", "status", "seeds", "runs"])


def current_erf(run: Run) -> dict[str, Any] | None:
    """The run's erf.json when it describes the run's present weights (same step), else None."""
    erf = run.erf
    if erf is None:
        return None
    step, done = erf.get("step"), run.summary.get("steps_done")
    return None if step is not None and done is not None and int(step) != int(done) else erf


def stale_erf_runs(runs: list[Run]) -> list[Run]:
    """Runs whose erf.json was measured on weights they have since replaced (trained on afterwards)."""
    return [r for r in runs if r.erf is not None and current_erf(r) is None]


def _blocks(runs: list[Run]) -> list[tuple[dict[str, Any], list[tuple[Run, dict]]]]:
    """(table row, its runs with their erf.json) in table order: per dataset, teachers, alone, distilled."""
    by_path = {r.path.resolve(): r for r in runs}
    teachers = {t.path.resolve() for r in runs if r.method for t in [teacher_run(r, by_path)] if t is not None}
    out = []
    for g in group_runs(runs):
        role = "distilled" if g.method else (
            "teacher" if any(r.path.resolve() in teachers for r in g.runs) else "student alone")
        blocks: dict[tuple, list[tuple[Run, dict]]] = {}
        for run in g.runs:
            erf = current_erf(run)
            if erf is not None:
                key = (not run.complete, erf.get("size"), str(erf.get("split")), "" if run.complete else run.name)
                blocks.setdefault(key, []).append((run, erf))
        for key in sorted(blocks, key=lambda k: (k[0], k[1] or 0, k[2], k[3])):
            members = blocks[key]
            row = {"role": role, "model": model_label(g.model), "model_name": g.model,
                   "teacher": model_label(g.teacher) if g.teacher else "", "teacher_name": g.teacher or "",
                   "method": g.method or "", "dataset": g.dataset, "img_size": g.img_size, "epochs": g.epochs,
                   "recipe": g.recipe_label, "erf_size": key[1], "split": key[2],
                   "images": ", ".join(sorted({str(e.get("images")) for _, e in members})),
                   "skipped": sum(int(e.get("skipped") or 0) for _, e in members)}
            for t in THRESHOLD_KEYS:
                mean, std, _ = _stats([_ratio(e, t) for _, e in members])
                row[f"area_ratio_{t}"], row[f"area_ratio_{t}_std"] = mean, std
            row.update(n=len(members), status="complete" if not key[0] else status_label(members[0][0]),
                       seeds=_seeds([r for r, _ in members]), runs=_run_names([r for r, _ in members]))
            out.append((row, members))
    # Stable: within a dataset and role the groups keep the other tables' order.
    return sorted(out, key=lambda b: (b[0]["dataset"], ROLES.index(b[0]["role"])))


def _ratio(erf: dict, threshold: str) -> float:
    value = (erf.get("area_ratio") or {}).get(threshold)
    return float("nan") if value is None else float(value)


def erf_table(runs: list[Run]) -> pd.DataFrame:
    """One row per group with an erf.json: role, model, teacher, method, ERF input size, images, and the area
    ratio (mean and std over seeds, as a fraction of the input) at each released threshold."""
    table = pd.DataFrame([row for row, _ in _blocks(runs)], columns=_COLUMNS)
    for col in ("img_size", "epochs", "erf_size", "skipped", "n"):
        table[col] = table[col].astype("Int64")
    return table


def erf_markdown(table: pd.DataFrame) -> str:
    """The ERF table as Markdown, area ratios in percent of the input area."""
    show_recipe = bool((table["recipe"] != "").any()) if len(table) else False
    rows = []
    for r in table.to_dict("records"):
        row = [r["role"], r["model"], r["teacher"] or "—", method_label(r["method"] or None), r["dataset"],
               str(r["img_size"])]
        if show_recipe:
            row.append(r["recipe"] or "—")
        row += [f"{r['erf_size']}x{r['erf_size']}", r["split"], r["images"]]
        row += [fmt_mean_std(100 * r[f"area_ratio_{t}"], 100 * r[f"area_ratio_{t}_std"]) for t in THRESHOLD_KEYS]
        row += [str(r["n"]), r["status"]]
        rows.append(row)
    header = ["Role", "Model", "Teacher", "KD", "Dataset", "Image size"] + (["Recipe"] if show_recipe else []) + \
        ["ERF input", "Split", "Images"] + [f"r (%) at t = {t}" for t in THRESHOLD_KEYS] + ["n", "Status"]
    first = 10 if show_recipe else 9
    return markdown_table(header, rows, numeric=set(range(first, first + 5)))


def erf_heatmaps(runs: list[Run], dataset: str, path: str | Path, title: str | None = None) -> Path | None:
    """One row of ERF heatmaps for `dataset` in table order (teachers, students alone, distilled), each the
    mean of its runs' erf.npy maps; None when no map is at hand."""
    from matplotlib.figure import Figure

    from ..analysis.erf import plot_erf
    from .figures import _save

    panels = []
    for row, members in _blocks(runs):
        maps = [np.load(r.path / e.get("map", "erf.npy")) for r, e in members
                if row["dataset"] == dataset and (r.path / e.get("map", "erf.npy")).is_file()]
        if maps and len({m.shape for m in maps}) == 1:
            label = f"{row['role']}\n{row['model']}"
            if row["method"]:
                label += f"\n← {row['teacher']} {method_label(row['method'])}"
            if row["status"] != "complete":
                label += " (stopped)"
            panels.append((label + f"\n{row['erf_size']}x{row['erf_size']}, n={len(maps)}", np.mean(maps, axis=0)))
    if not panels:
        return None
    fig = Figure(figsize=(2.7 * len(panels) + 0.8, 3.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, erf_map) in zip(axes, panels):
        image = plot_erf(ax, erf_map, label)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="log10(x + 1) / max")
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))
