"""Tables computed from run summaries (and the published CSVs): runs, paper vs reproduction, distillation grid.

Every number in these tables is read from a summary.json (or metrics.jsonl), from repro/published/*.csv, or
computed from those (means, standard deviations, differences, the paper's gains). Runs are grouped across
seeds by (model, dataset, image size, epochs, distillation method, teacher model), by the teacher's weights
(the sha256 a distilled run records) and by every other config entry that changes results, so that two
recipes, or two teachers, are never averaged together. Stopped runs never enter a mean: each gets its own
flagged row.

Each function returns a pandas DataFrame of raw values (written as CSV); `*_markdown` functions format them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..distill import direct_gain, effective_gain
from ..errors import ReproError
from .labels import (fmt, fmt_count, fmt_duration, fmt_gain, fmt_mean_std, hardware_label, is_missing,
                     method_label, model_label)
from .runs import Run

BASES = ("last", "best")


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def score(run: Run, basis: str = "last") -> dict[str, Any]:
    """A run's reported top-1/top-5, the split they come from and the epoch they describe.

    basis "last": the final model (the test-split evaluation when the engine made one, else the last
    evaluation); "best": the best evaluation during training (raw or EMA weights, as the summary says).
    """
    s = run.summary
    if basis == "last":
        if s.get("test_top1") is not None:
            # The engine's final test may use the EMA weights (final_is); the label says which.
            label = "last epoch (EMA)" if s.get("final_is") == "ema" else "last epoch"
            return {"top1": _num(s["test_top1"]), "top5": _num(s.get("test_top5")), "split": "test",
                    "epoch": s.get("epochs_done"), "basis": label}
        # No evaluation yet (a run stopped inside its first epoch): no split to name either.
        split = (s.get("eval_split") or "") if s.get("top1") is not None else ""
        return {"top1": _num(s.get("top1")), "top5": _num(s.get("top5")), "split": split,
                "epoch": s.get("epochs_done"), "basis": "last epoch"}
    if basis == "best":
        ema = s.get("best_is") == "ema"
        top5 = None
        for row in run.metrics:
            if row.get("epoch") == s.get("best_epoch"):
                top5 = row.get("top5_ema" if ema else "top5")
        split = (s.get("eval_split") or "") if s.get("best_top1") is not None else ""
        return {"top1": _num(s.get("best_top1")), "top5": _num(top5), "split": split,
                "epoch": s.get("best_epoch"), "basis": "best epoch (EMA)" if ema else "best epoch"}
    raise ReproError(f"unknown basis '{basis}'; expected one of {', '.join(BASES)}")


def status_label(run: Run) -> str:
    """'complete', or 'stopped (reason) at epoch k/n' for a run that did not finish."""
    s = run.summary
    if run.complete:
        return "complete"
    # "checkpoint" is what a run in progress (or killed) last wrote; the others are deliberate stops.
    reason = {"checkpoint": "interrupted", None: "unknown reason"}.get(s.get("stop_reason"), s.get("stop_reason"))
    return f"stopped ({reason}) at epoch {s.get('epochs_done')}/{s.get('epochs_total')}"


@dataclass
class Group:
    """Runs of one setting that differ only by seed (and paths/bookkeeping)."""

    model: str
    dataset: str
    img_size: int
    epochs: int
    method: str | None
    teacher: str | None
    recipe: tuple
    recipe_alone: tuple
    teacher_id: str | None = None
    runs: list[Run] = field(default_factory=list)
    recipe_label: str = ""

    @property
    def visible_key(self) -> tuple:
        return (self.model, self.dataset, self.img_size, self.epochs, self.method or "", self.teacher or "")

    @property
    def complete_runs(self) -> list[Run]:
        return [r for r in self.runs if r.complete]

    @property
    def stopped_runs(self) -> list[Run]:
        return [r for r in self.runs if not r.complete]

    def sort_key(self) -> tuple:
        return (self.dataset, model_label(self.model), self.img_size, self.epochs, self.method or "",
                model_label(self.teacher) if self.teacher else "", self.recipe_label)


def group_runs(runs: list[Run]) -> list[Group]:
    """Group runs across seeds; groups sharing a visible key get a recipe label naming their differences."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        s = run.summary
        g = Group(model=s["model"], dataset=s["dataset"], img_size=int(s["img_size"]),
                  epochs=int(s["epochs_total"]), method=run.method, teacher=run.teacher,
                  recipe=run.recipe(), recipe_alone=run.recipe(with_distill=False),
                  teacher_id=run.teacher_identity)
        key = g.visible_key + (g.recipe, g.teacher_id)
        groups.setdefault(key, g).runs.append(run)
    by_visible: dict[tuple, list[Group]] = {}
    for g in groups.values():
        by_visible.setdefault(g.visible_key, []).append(g)
    for same in by_visible.values():
        if len(same) > 1:
            dicts = [dict(g.recipe) for g in same]
            keys = sorted({k for d in dicts for k in d if len({json.dumps(x.get(k)) for x in dicts}) > 1})
            teachers = _teacher_labels(same) if len({g.teacher_id for g in same}) > 1 else {}
            for g, d in zip(same, dicts):
                parts = [f"teacher={teachers[g.teacher_id]}"] if teachers else []
                parts += [f"{k}={json.loads(d[k]) if k in d else None}" for k in keys]
                g.recipe_label = ", ".join(parts)
    return sorted(groups.values(), key=Group.sort_key)


def _teacher_labels(groups: list[Group]) -> dict[str | None, str]:
    """Short names for the teachers of groups that differ by teacher: the teacher's checkpoint as
    <run folder>/<file> (or its file name), with the start of its sha256 where those names coincide."""
    first = {}
    for g in groups:
        first.setdefault(g.teacher_id, (g.runs[0].distill or {}))
    names = {}
    for tid, d in first.items():
        p = Path(str(d.get("teacher_path") or ""))
        names[tid] = (f"{p.parent.parent.name}/{p.name}" if p.parent.name == "checkpoints" else p.name) or "?"
    if len(set(names.values())) < len(names):
        names = {tid: f"{name} (sha256 {first[tid]['teacher_sha256'][:12]})" if first[tid].get("teacher_sha256")
                 else str(first[tid].get("teacher_path")) for tid, name in names.items()}
    return names


def _stats(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one value) and count of the known values."""
    known = [v for v in values if not is_missing(v)]
    if not known:
        return float("nan"), float("nan"), 0
    mean = float(np.mean(known))
    std = float(np.std(known, ddof=1)) if len(known) > 1 else float("nan")
    return mean, std, len(known)


def _joined(scores: list[dict[str, Any]], key: str) -> str:
    """The distinct values of `key` among the runs' scores (one, unless a group mixes them)."""
    return ", ".join(sorted({str(s[key]) for s in scores}))


def _hardware(runs: list[Run]) -> str:
    return ", ".join(sorted({hardware_label(r.summary.get("env")) for r in runs}))


def _seed_order(run: Run) -> tuple:
    seed = run.summary.get("seed")
    return (0, seed, run.name) if isinstance(seed, int) else (1, str(seed), run.name)


def _seeds(runs: list[Run]) -> str:
    return " ".join(str(r.summary.get("seed")) for r in sorted(runs, key=_seed_order))


def _run_names(runs: list[Run]) -> str:
    return " ".join(sorted(r.name for r in runs))


# --- one row per run -------------------------------------------------------------------------------------

def runs_table(runs: list[Run], basis: str = "last") -> pd.DataFrame:
    """One row per run, in the seed report's layout (model, image size, params, top-1, top-5, epochs, time, GPU)."""
    rows = []
    for g in group_runs(runs):
        for run in sorted(g.runs, key=_seed_order):
            s = run.summary
            sc = score(run, basis)
            rows.append({
                "run": run.name,
                "model": model_label(s["model"]),
                "model_name": s["model"],
                "method": run.method or "",
                "teacher_name": run.teacher or "",
                "dataset": s["dataset"],
                "img_size": int(s["img_size"]),
                "seed": s.get("seed"),
                "params_nonzero": s.get("params_nonzero"),
                "params_total": s.get("params_total"),
                "top1": sc["top1"],
                "top5": sc["top5"],
                "split": sc["split"],
                "basis": sc["basis"],
                "best_top1": _num(s.get("best_top1")),
                "best_epoch": s.get("best_epoch"),
                "epochs_done": s.get("epochs_done"),
                "epochs_total": s.get("epochs_total"),
                "wall_time_s": _num(s.get("wall_time_s")),
                "hardware": hardware_label(s.get("env")),
                "status": status_label(run),
            })
    table = pd.DataFrame(rows, columns=_RUN_COLUMNS)
    for column in ("seed", "best_epoch", "epochs_done", "epochs_total", "img_size"):
        table[column] = table[column].astype("Int64")  # integers even where some runs have none
    return table


_RUN_COLUMNS = ["run", "model", "model_name", "method", "teacher_name", "dataset", "img_size", "seed",
                "params_nonzero", "params_total", "top1", "top5", "split", "basis", "best_top1", "best_epoch",
                "epochs_done", "epochs_total", "wall_time_s", "hardware", "status"]


def runs_markdown(table: pd.DataFrame) -> str:
    """The runs table as Markdown (the seed report's columns, plus dataset and status)."""
    rows = []
    for r in table.to_dict("records"):
        model = r["model"]
        if r["method"]:
            model += f" ← {model_label(r['teacher_name'])} ({method_label(r['method'])})"
        params = fmt_count(r["params_nonzero"])
        if not is_missing(r["params_total"]) and not is_missing(r["params_nonzero"]) \
                and r["params_total"] != r["params_nonzero"]:
            params += f" ({fmt_count(r['params_total'])} dense)"
        epochs = str(r["epochs_total"]) if r["epochs_done"] == r["epochs_total"] \
            else f"{r['epochs_done']}/{r['epochs_total']}"
        rows.append([r["run"], model, r["dataset"], str(r["img_size"]), str(r["seed"]), params, fmt(r["top1"]),
                     fmt(r["top5"]), r["split"] or "—", epochs, fmt_duration(r["wall_time_s"]), r["hardware"],
                     r["status"]])
    # Split: where the top-1/top-5 were measured (test, or the held-out val split before the final test).
    return markdown_table(["Run", "Model", "Dataset", "Image size", "Seed", "Params", "Top-1", "Top-5", "Split",
                           "Epochs", "Wall time", "GPU", "Status"], rows, numeric={5, 6, 7, 10})


# --- paper vs reproduction -------------------------------------------------------------------------------

def _published_matches(published: pd.DataFrame, g: Group, metric: str) -> pd.DataFrame:
    p = published
    mask = ((p["metric"] == metric) & (p["variant"] == "") & (p["model"] == g.model) & (p["dataset"] == g.dataset)
            & (p["img_size"] == g.img_size) & (p["epochs"] == g.epochs) & (p["distill_method"] == (g.method or ""))
            & (p["teacher"] == (g.teacher or "")))
    return p[mask.fillna(False).astype(bool)]


_PVR_COLUMNS = ["model", "model_name", "dataset", "img_size", "epochs", "method", "teacher", "teacher_name",
                "recipe", "paper", "source", "published_top1", "published_top5", "published_hardware",
                "top1_mean", "top1_std", "top5_mean", "top5_std", "n", "delta_top1", "basis", "split", "hardware",
                "status", "seeds", "runs"]


def paper_vs_reproduction(runs: list[Run], published: pd.DataFrame, basis: str = "last") -> pd.DataFrame:
    """Published top-1/top-5 next to ours (mean ± std over seeds, n), their difference and how ours was measured.

    Also lists published top-1 numbers for the datasets present in `runs` that no run reproduces yet.
    """
    rows = []
    used: set[int] = set()
    for g in group_runs(runs):
        top1_pub = _published_matches(published, g, "top1")
        top5_pub = _published_matches(published, g, "top5")
        used.update(top1_pub.index)
        sources = list(top1_pub.itertuples()) or [None]
        blocks = []
        if g.complete_runs:
            blocks.append((g.complete_runs, "complete"))
        blocks += [([r], status_label(r)) for r in sorted(g.stopped_runs, key=lambda r: r.name)]
        for members, status in blocks:
            scores = [score(r, basis) for r in members]
            t1 = _stats([s["top1"] for s in scores])
            t5 = _stats([s["top5"] for s in scores])
            for pub in sources:
                pub5 = top5_pub[top5_pub["source"] == pub.source] if pub is not None else top5_pub.iloc[0:0]
                published_top1 = pub.value if pub is not None else float("nan")
                rows.append({
                    "model": model_label(g.model), "model_name": g.model, "dataset": g.dataset,
                    "img_size": g.img_size, "epochs": g.epochs, "method": g.method or "",
                    "teacher": model_label(g.teacher) if g.teacher else "", "teacher_name": g.teacher or "",
                    "recipe": g.recipe_label,
                    "paper": pub.paper if pub is not None else "", "source": pub.source if pub is not None else "",
                    "published_top1": published_top1,
                    "published_top5": float(pub5["value"].iloc[0]) if len(pub5) else float("nan"),
                    "published_hardware": pub.hardware if pub is not None else "",
                    "top1_mean": t1[0], "top1_std": t1[1], "top5_mean": t5[0], "top5_std": t5[1], "n": t1[2],
                    # A stopped run is not comparable with a finished recipe: no difference is shown for it.
                    "delta_top1": t1[0] - published_top1 if status == "complete" else float("nan"),
                    "basis": _joined(scores, "basis"), "split": _joined(scores, "split"),
                    "hardware": _hardware(members), "status": status, "seeds": _seeds(members),
                    "runs": _run_names(members),
                })
    datasets = {r.summary["dataset"] for r in runs}
    p = published
    open_rows = p[(p["metric"] == "top1") & (p["variant"] == "") & p["dataset"].isin(datasets)
                  & p["value"].notna() & ~p.index.isin(list(used))]
    for pub in open_rows.itertuples():
        pub5 = p[(p["metric"] == "top5") & (p["source"] == pub.source) & (p["model"] == pub.model)
                 & (p["dataset"] == pub.dataset) & (p["img_size"] == pub.img_size) & (p["epochs"] == pub.epochs)
                 & (p["distill_method"] == pub.distill_method) & (p["teacher"] == pub.teacher)]
        rows.append({
            "model": model_label(pub.model), "model_name": pub.model, "dataset": pub.dataset,
            "img_size": pub.img_size, "epochs": pub.epochs, "method": pub.distill_method,
            "teacher": model_label(pub.teacher) if pub.teacher else "", "teacher_name": pub.teacher, "recipe": "",
            "paper": pub.paper, "source": pub.source, "published_top1": pub.value,
            "published_top5": float(pub5["value"].iloc[0]) if len(pub5) else float("nan"),
            "published_hardware": pub.hardware, "top1_mean": float("nan"), "top1_std": float("nan"),
            "top5_mean": float("nan"), "top5_std": float("nan"), "n": 0, "delta_top1": float("nan"),
            "basis": "", "split": "", "hardware": "", "status": "not run", "seeds": "", "runs": "",
        })
    table = pd.DataFrame(rows, columns=_PVR_COLUMNS)
    for col in ("img_size", "epochs", "n"):
        table[col] = table[col].astype("Int64")
    return table


def paper_vs_reproduction_markdown(table: pd.DataFrame) -> str:
    """The paper-vs-reproduction table as Markdown."""
    show_recipe = bool((table["recipe"] != "").any()) if len(table) else False
    rows = []
    for r in table.to_dict("records"):
        row = [r["model"], r["dataset"], str(r["img_size"]), str(r["epochs"]), method_label(r["method"]),
               r["teacher"] or "—"]
        if show_recipe:
            row.append(r["recipe"] or "—")
        source = f"{r['paper']}: {r['source']}" if r["source"] else "—"
        if r["published_hardware"]:
            source += f" ({r['published_hardware']})"
        row += [fmt(r["published_top1"]), source,
                fmt_mean_std(r["top1_mean"], r["top1_std"]), str(r["n"]), fmt(r["delta_top1"], signed=True),
                r["basis"] or "—", r["split"] or "—", r["hardware"] or "—", r["status"]]
        rows.append(row)
    header = ["Model", "Dataset", "Image size", "Epochs", "KD", "Teacher"] + (["Recipe"] if show_recipe else []) + \
        ["Published top-1", "Published in", "Ours top-1", "n", "Δ top-1", "Ours is", "Split", "Hardware", "Status"]
    first_num = 7 if show_recipe else 6
    return markdown_table(header, rows, numeric={first_num, first_num + 2, first_num + 3, first_num + 4})


# --- distillation grid -----------------------------------------------------------------------------------

_GRID_COLUMNS = ["student", "student_name", "teacher", "teacher_name", "method", "dataset", "img_size", "epochs",
                 "recipe", "top1_mean", "top1_std", "n", "alone_top1_mean", "alone_top1_std", "alone_n",
                 "teacher_top1", "direct_gain", "direct_gain_std", "effective_gain", "effective_gain_std", "basis",
                 "status", "seeds", "runs", "alone_runs"]


def difference_std(std_a: float, n_a: int, std_b: float, n_b: int) -> float:
    """Standard deviation of the difference of two means, sqrt(s_a^2/n_a + s_b^2/n_b), from seed standard
    deviations s and run counts n; a side with a single run takes the other side's s (the same student and
    recipe, so the same seed-to-seed spread). NaN unless one side has two runs or more."""
    known = [s for s, n in ((std_a, n_a), (std_b, n_b)) if n >= 2 and not is_missing(s)]
    if not known or n_a < 1 or n_b < 1:
        return float("nan")
    s_a = std_a if n_a >= 2 and not is_missing(std_a) else known[0]
    s_b = std_b if n_b >= 2 and not is_missing(std_b) else known[0]
    return float(np.sqrt(s_a ** 2 / n_a + s_b ** 2 / n_b))


def teacher_run(run: Run, by_path: dict[Path, Run]) -> Run | None:
    """The run among `by_path` (resolved folder -> run) that a distilled run's teacher weights came from."""
    d = run.distill or {}
    path = d.get("teacher_path")
    if path:
        p = Path(path)
        # A relative path was relative to where training ran: try there, then beside the student's folder.
        starts = [p] if p.is_absolute() else [p, run.path.parent / p]
        for start in starts:
            start = start.resolve()
            for candidate in [start, *start.parents]:
                if candidate in by_path:
                    return by_path[candidate]
        if not p.is_absolute():
            # Reported from elsewhere: a run folder whose path ends with the recorded path (or a prefix of
            # it, for a checkpoint file inside the folder).
            for n in range(len(p.parts), 0, -1):
                tail, rest = p.parts[:n], p.parts[n:]
                if len(rest) > 1 and rest[0] != "checkpoints":
                    continue
                for folder, teacher in by_path.items():
                    if folder.parts[-n:] == tail:
                        return teacher
    return None


def _teacher_accuracy(run: Run, by_path: dict[Path, Run], basis: str) -> float:
    """The teacher's top-1: from its run folder when it is among the runs, else as recorded in the summary."""
    teacher = teacher_run(run, by_path)
    return score(teacher, basis)["top1"] if teacher is not None else _num((run.distill or {}).get("teacher_top1"))


def distillation_grid(runs: list[Run], basis: str = "last") -> pd.DataFrame:
    """Student x teacher x method: top-1 (mean ± std, n), the student alone, Direct Gain and Effective Gain.

    The student-alone reference is the same model trained without a teacher on the same dataset, image size,
    epochs and recipe (every config entry outside `distill` equal).
    """
    groups = group_runs(runs)
    by_path = {r.path.resolve(): r for r in runs}
    alone = [g for g in groups if g.method is None]
    rows = []
    for g in groups:
        if g.method is None:
            continue
        refs = [a for a in alone if (a.model, a.dataset, a.img_size, a.epochs, a.recipe_alone)
                == (g.model, g.dataset, g.img_size, g.epochs, g.recipe_alone)]
        ref_runs = [r for a in refs for r in a.complete_runs]
        ref = _stats([score(r, basis)["top1"] for r in ref_runs])
        blocks = []
        if g.complete_runs:
            blocks.append((g.complete_runs, "complete"))
        blocks += [([r], status_label(r)) for r in sorted(g.stopped_runs, key=lambda r: r.name)]
        for members, status in blocks:
            scores = [score(r, basis) for r in members]
            t1 = _stats([s["top1"] for s in scores])
            teacher_acc = _stats([_teacher_accuracy(r, by_path, basis) for r in members])[0]
            comparable = status == "complete" and ref[2] > 0
            dg = float(direct_gain(t1[0], ref[0])) if comparable else float("nan")
            eg = float(effective_gain(t1[0], ref[0], teacher_acc)) if comparable and not is_missing(teacher_acc) \
                else float("nan")
            dg_std = difference_std(t1[1], t1[2], ref[1], ref[2]) if comparable else float("nan")
            # The teacher's top-1 is one number: Effective Gain's spread is Direct Gain's, scaled.
            eg_std = dg_std / teacher_acc if not is_missing(eg) and teacher_acc else float("nan")
            rows.append({
                "student": model_label(g.model), "student_name": g.model, "teacher": model_label(g.teacher),
                "teacher_name": g.teacher or "", "method": g.method, "dataset": g.dataset, "img_size": g.img_size,
                "epochs": g.epochs, "recipe": g.recipe_label, "top1_mean": t1[0], "top1_std": t1[1], "n": t1[2],
                "alone_top1_mean": ref[0], "alone_top1_std": ref[1], "alone_n": ref[2], "teacher_top1": teacher_acc,
                "direct_gain": dg, "direct_gain_std": dg_std, "effective_gain": eg, "effective_gain_std": eg_std,
                "basis": _joined(scores, "basis"), "status": status,
                "seeds": _seeds(members), "runs": _run_names(members), "alone_runs": _run_names(ref_runs),
            })
    table = pd.DataFrame(rows, columns=_GRID_COLUMNS)
    for col in ("img_size", "epochs", "n", "alone_n"):
        table[col] = table[col].astype("Int64")
    return table


def distillation_grid_markdown(table: pd.DataFrame) -> str:
    """The distillation grid as Markdown."""
    show_recipe = bool((table["recipe"] != "").any()) if len(table) else False
    rows = []
    for r in table.to_dict("records"):
        row = [r["student"], r["teacher"], method_label(r["method"]), r["dataset"], str(r["img_size"]),
               str(r["epochs"])]
        if show_recipe:
            row.append(r["recipe"] or "—")
        row += [fmt(r["teacher_top1"]), fmt_mean_std(r["top1_mean"], r["top1_std"]), str(r["n"]),
                fmt_mean_std(r["alone_top1_mean"], r["alone_top1_std"]), str(r["alone_n"]),
                fmt_gain(r["direct_gain"], r["direct_gain_std"]),
                fmt_gain(r["effective_gain"], r["effective_gain_std"], 4), r["status"]]
        rows.append(row)
    header = ["Student", "Teacher", "KD", "Dataset", "Image size", "Epochs"] + (["Recipe"] if show_recipe else []) + \
        ["Teacher top-1", "Distilled top-1", "n", "Student alone", "n alone", "Direct Gain", "Effective Gain",
         "Status"]
    first = 7 if show_recipe else 6
    return markdown_table(header, rows, numeric=set(range(first, first + 7)))


# --- Markdown --------------------------------------------------------------------------------------------

def markdown_table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A GitHub-flavoured Markdown table; columns in `numeric` are right-aligned."""
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    if not rows:
        lines.append("| " + " | ".join(["—"] * len(header)) + " |")
    return "\n".join(lines) + "\n"
