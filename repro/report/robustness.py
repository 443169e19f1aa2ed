"""The report's robustness table: student x teacher x set, ours next to the published numbers, from the
robustness.json files that `repro eval --robustness` writes into run folders.

A set is an ImageNet-A/-R/-Sketch style folder (top-1) or a corruption benchmark (CIFAR-10-C, CIFAR-100-C,
ImageNet-C: the mean corruption accuracy over the benchmark corruptions scored, with the clean top-1 and the
mCE against the baseline the file names). Rows group seeds as the other tables do (`group_runs`); runs scored
on other images (another benchmark source, seed, or image count) or against another baseline never share a
row. The published numbers are those of repro/published/*.csv (the authors' ImageNet-A/-R/-Sketch logs); the
ones no run has reproduced yet are listed for the datasets the runs cover. A robustness.json of weights the
run has since trained past is left out and named.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ReproError
from .labels import fmt, fmt_mean_std, method_label, model_label
from .runs import Run
from .tables import _run_names, _seeds, _stats, group_runs, markdown_table, status_label

ROBUSTNESS_JSON = "robustness.json"
# Published metric of each named set, and its display name.
SET_METRICS = {"imagenet_a": ("imagenet_a_top1", "ImageNet-A"), "imagenet_r": ("imagenet_r_top1", "ImageNet-R"),
               "imagenet_sketch": ("imagenet_sketch_top1", "ImageNet-Sketch")}

_COLUMNS = ["student", "student_name", "teacher", "teacher_name", "method", "dataset", "img_size", "epochs",
            "recipe", "set", "images", "top1_mean", "top1_std", "n", "published_top1", "paper", "source",
            "delta_top1", "clean_top1_mean", "mce_mean", "mce_std", "baseline", "weights", "status", "seeds",
            "runs"]


def canonical_set(folder_name: str) -> str:
    """imagenet_a / imagenet_r / imagenet_sketch for the usual folder names of those sets, else the name."""
    key = re.sub(r"[^a-z0-9]", "", folder_name.lower())
    if "sketch" in key:
        return "imagenet_sketch"
    if key in ("imageneta", "ina", "a"):
        return "imagenet_a"
    if key in ("imagenetr", "inr", "r", "imagenetrendition"):
        return "imagenet_r"
    return folder_name


def read_run_robustness(run: Run) -> dict[str, Any] | None:
    """The run's robustness.json, or None when it has none."""
    path = run.path / ROBUSTNESS_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReproError(f"{path} is not valid JSON ({exc}); run `repro eval --robustness --checkpoint "
                         f"{run.path}` again to rewrite it") from None


def current_robustness(run: Run) -> dict[str, Any] | None:
    """The run's robustness.json when it describes the run's present weights (same step), else None."""
    record = read_run_robustness(run)
    if record is None:
        return None
    step, done = record.get("step"), run.summary.get("steps_done")
    return None if step is not None and done is not None and int(step) != int(done) else record


def stale_robustness_runs(runs: list[Run]) -> list[Run]:
    """Runs whose robustness.json was measured on weights they have since replaced."""
    return [r for r in runs if read_run_robustness(r) is not None and current_robustness(r) is None]


def _entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    """(set, key that must agree to average, top-1, clean top-1, mCE, baseline) of one robustness.json."""
    out = []
    for name, score in (record.get("sets") or {}).items():
        canon = canonical_set(name)
        label = SET_METRICS[canon][1] if canon in SET_METRICS else name
        out.append({"set": label, "canon": canon, "images": str(score.get("n")), "top1": score.get("top1"),
                    "clean": None, "mce": None, "baseline": ""})
    bench = record.get("corruption")
    if bench:
        how = (f"generated, seed {bench.get('seed')}" if bench.get("source") == "generated" else bench.get("source"))
        per_severity = bench.get("limit") or bench.get("images_per_severity")
        scored, missing = bench.get("corruptions_in_mean") or [], bench.get("missing_from_mean") or []
        # A mean over fewer corruptions is another number: the label says how many it covers.
        label = f"{bench.get('benchmark')} ({how}" + (f", {len(scored)} of {len(scored) + len(missing)} "
                                                       "corruptions" if missing else "") + ")"
        mce = bench.get("mce") or {}
        base = mce.get("baseline") or {}
        out.append({"set": label, "canon": None, "images": f"{per_severity} per severity" if per_severity else "",
                    "top1": bench.get("mean_corruption_accuracy"), "clean": bench.get("clean_top1"),
                    "mce": mce.get("mce"), "baseline": base.get("checkpoint") or ""})
    return out


def _published(published: pd.DataFrame, model: str, teacher: str, method: str, dataset: str,
               img_size: int) -> pd.DataFrame:
    p = published
    metrics = [m for m, _ in SET_METRICS.values()]
    mask = (p["metric"].isin(metrics) & (p["variant"] == "") & (p["model"] == model) & (p["dataset"] == dataset)
            & (p["img_size"] == img_size) & (p["distill_method"] == method) & (p["teacher"] == teacher))
    return p[mask.fillna(False).astype(bool)]


def _row(g, set_label: str, **values) -> dict[str, Any]:
    row = {"student": model_label(g.model), "student_name": g.model,
           "teacher": model_label(g.teacher) if g.teacher else "", "teacher_name": g.teacher or "",
           "method": g.method or "", "dataset": g.dataset, "img_size": g.img_size, "epochs": g.epochs,
           "recipe": g.recipe_label, "set": set_label}
    blank = {c: float("nan") for c in ("top1_mean", "top1_std", "published_top1", "delta_top1", "clean_top1_mean",
                                       "mce_mean", "mce_std")}
    return {**{c: "" for c in _COLUMNS}, **blank, "n": 0, **row, **values}


def robustness_table(runs: list[Run], published: pd.DataFrame) -> pd.DataFrame:
    """One row per (group of seeds, set) with a robustness.json score: our top-1 (mean ± std over seeds), the
    published top-1 and the difference, and for corruption benchmarks the clean top-1 and mCE; then the
    published robustness numbers of the runs' datasets that no run has scored yet ('not run')."""
    rows, used = [], set()
    for g in group_runs(runs):
        blocks: dict[tuple, list[tuple[Run, dict]]] = {}
        for run in g.runs:
            record = current_robustness(run)
            for entry in (_entries(record) if record else []):
                key = (not run.complete, entry["set"], entry["images"], entry["baseline"], record.get("weights"),
                       "" if run.complete else run.name)
                blocks.setdefault(key, []).append((run, entry))
        pub = _published(published, g.model, g.teacher or "", g.method or "", g.dataset, g.img_size)
        for key in sorted(blocks, key=lambda k: (k[0], k[1], k[2], k[3], str(k[4]), k[5])):
            members = blocks[key]
            entry = members[0][1]
            top1 = _stats([e["top1"] for _, e in members])
            mce = _stats([e["mce"] for _, e in members])
            clean = _stats([e["clean"] for _, e in members])
            status = "complete" if not key[0] else status_label(members[0][0])
            match = pub[pub["metric"] == SET_METRICS[entry["canon"]][0]] if entry["canon"] in SET_METRICS \
                else pub.iloc[0:0]
            used.update(match.index)
            p = match.iloc[0] if len(match) else None
            value = float(p["value"]) if p is not None else float("nan")
            rows.append(_row(g, entry["set"], images=entry["images"], top1_mean=top1[0], top1_std=top1[1],
                             n=top1[2], published_top1=value, paper=p["paper"] if p is not None else "",
                             source=p["source"] if p is not None else "",
                             delta_top1=top1[0] - value if status == "complete" else float("nan"),
                             clean_top1_mean=clean[0], mce_mean=mce[0], mce_std=mce[1], baseline=entry["baseline"],
                             weights=str(key[4] or ""), status=status, seeds=_seeds([r for r, _ in members]),
                             runs=_run_names([r for r, _ in members])))
    datasets = {r.summary["dataset"] for r in runs}
    p = published
    open_rows = p[p["metric"].isin([m for m, _ in SET_METRICS.values()]) & p["dataset"].isin(datasets)
                  & ~p.index.isin(list(used))]
    names = {m: label for m, label in SET_METRICS.values()}
    for pub in open_rows.itertuples():
        g = _PublishedGroup(pub.model, pub.teacher, pub.distill_method, pub.dataset, pub.img_size, pub.epochs)
        rows.append(_row(g, names[pub.metric], published_top1=pub.value, paper=pub.paper, source=pub.source,
                         status="not run"))
    table = pd.DataFrame(rows, columns=_COLUMNS)
    for col in ("img_size", "epochs", "n"):
        table[col] = table[col].astype("Int64")
    return table


class _PublishedGroup:
    """The fields of a group that a published-only row shows."""

    def __init__(self, model, teacher, method, dataset, img_size, epochs):
        self.model, self.teacher, self.method, self.dataset = model, teacher or None, method or None, dataset
        self.img_size = img_size
        self.epochs = None if pd.isna(epochs) else epochs
        self.recipe_label = ""


def robustness_markdown(table: pd.DataFrame) -> str:
    """The robustness table as Markdown."""
    show_recipe = bool((table["recipe"] != "").any()) if len(table) else False
    rows = []
    for r in table.to_dict("records"):
        row = [r["student"], r["teacher"] or "—", method_label(r["method"] or None), r["dataset"],
               str(r["img_size"])]
        if show_recipe:
            row.append(r["recipe"] or "—")
        source = f"{r['paper']}: {r['source']}" if r["source"] else "—"
        row += [r["set"], r["images"] or "—", fmt_mean_std(r["top1_mean"], r["top1_std"]), str(r["n"]),
                fmt(r["published_top1"]), source, fmt(r["delta_top1"], signed=True), fmt(r["clean_top1_mean"]),
                fmt_mean_std(r["mce_mean"], r["mce_std"]), _short_path(r["baseline"]), r["status"]]
        rows.append(row)
    header = ["Student", "Teacher", "KD", "Dataset", "Image size"] + (["Recipe"] if show_recipe else []) + \
        ["Set", "Images", "Ours top-1", "n", "Published top-1", "Published in", "Δ top-1", "Clean top-1", "mCE",
         "mCE baseline", "Status"]
    first = 7 if show_recipe else 6
    return markdown_table(header, rows, numeric={first + 1, first + 2, first + 3, first + 5, first + 6, first + 7})


def _short_path(path: str) -> str:
    """A baseline as its run folder's name (with the checkpoint file when it is one), '—' for none."""
    if not path:
        return "—"
    p = Path(path)
    return f"{p.parent.parent.name}/{p.name}" if p.parent.name == "checkpoints" else p.name
