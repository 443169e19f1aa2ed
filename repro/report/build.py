"""`build_report`: run folders in, Markdown + CSV tables and PNG figures out."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import ReproError
from .erf import erf_heatmaps, erf_markdown, erf_table, stale_erf_runs
from .robustness import robustness_markdown, robustness_table, stale_robustness_runs
from .figures import gain_bars, teacher_student_bars, training_curves
from .published import load_published
from .runs import Run, drop_duplicates, load_runs
from .tables import (BASES, distillation_grid, distillation_grid_markdown, paper_vs_reproduction,
                     paper_vs_reproduction_markdown, runs_markdown, runs_table)

DEFAULT_TITLE = "Reproduction results"

_BASIS_TEXT = {
    "last": "the final model's accuracy (on the test split when the run evaluated it there, otherwise its last "
            "evaluation)",
    "best": "the best evaluation during training (raw or EMA weights, whichever the run selected), on the "
            "run's evaluation split",
}

_FIGURE_PATTERNS = ("curves-*.png", "teacher_student-*.png", "gains-*.png", "erf-*.png")


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """Write a table as CSV with floats rounded to 4 decimals (stable across platforms)."""
    floats = table.select_dtypes("float").columns
    table = table.copy()
    table[floats] = table[floats].round(4)
    table.to_csv(path, index=False)
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def build_report(run_dirs: Iterable[str | Path], out_dir: str | Path, *, title: str | None = None,
                 basis: str = "last", published: pd.DataFrame | None = None, gains: bool = False) -> dict[str, Path]:
    """Regenerate every table and figure from the run folders at or below `run_dirs`; returns the written paths.

    Writes out_dir/report.md, out_dir/tables/{runs,paper_vs_reproduction,distillation_grid}.{md,csv} and
    out_dir/figures/{curves,teacher_student}-<dataset>.png, and, when runs hold an erf.json (`repro erf`),
    tables/erf.{md,csv} and figures/erf-<dataset>.png; tables/robustness.{md,csv} when runs hold a
    robustness.json (`repro eval --robustness`) or their dataset has published robustness numbers. `published`
    replaces the shipped published numbers (a table as returned by `load_published`). With `gains`, also
    figures/gains-<dataset>.png: Direct and Effective Gain per distillation row with their spread over seeds.
    """
    if basis not in BASES:
        raise ReproError(f"unknown basis '{basis}'; expected one of {', '.join(BASES)}")
    runs, duplicates = drop_duplicates(load_runs(run_dirs))
    out = Path(out_dir)
    tables_dir, figures_dir = out / "tables", out / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    # Figures of datasets no longer among the runs would otherwise linger next to fresh ones.
    for pattern in _FIGURE_PATTERNS:
        for stale in figures_dir.glob(pattern):
            stale.unlink()

    written: dict[str, Path] = {}
    runs_t = runs_table(runs, basis)
    published = load_published() if published is None else published
    pvr = paper_vs_reproduction(runs, published, basis)
    grid = distillation_grid(runs, basis)
    markdown = {"runs": runs_markdown(runs_t), "paper_vs_reproduction": paper_vs_reproduction_markdown(pvr),
                "distillation_grid": distillation_grid_markdown(grid)}
    for name, table in (("runs", runs_t), ("paper_vs_reproduction", pvr), ("distillation_grid", grid)):
        written[f"{name}_csv"] = write_csv(table, tables_dir / f"{name}.csv")
        path = tables_dir / f"{name}.md"
        path.write_text(markdown[name])
        written[f"{name}_md"] = path
    # The ERF table exists once some run holds an erf.json (`repro erf`).
    erf, stale_erf = erf_table(runs), stale_erf_runs(runs)
    if len(erf) or stale_erf:
        markdown["erf"] = erf_markdown(erf)
        written["erf_csv"] = write_csv(erf, tables_dir / "erf.csv")
        written["erf_md"] = tables_dir / "erf.md"
        written["erf_md"].write_text(markdown["erf"])
    # The robustness table exists once some run holds a robustness.json or a run's dataset has published
    # robustness numbers (then listed as not run yet).
    robust, stale_robust = robustness_table(runs, published), stale_robustness_runs(runs)
    if len(robust) or stale_robust:
        markdown["robustness"] = robustness_markdown(robust)
        written["robustness_csv"] = write_csv(robust, tables_dir / "robustness.csv")
        written["robustness_md"] = tables_dir / "robustness.md"
        written["robustness_md"].write_text(markdown["robustness"])

    figures: list[tuple[str, Path]] = []
    by_dataset: dict[str, list[Run]] = {}
    for run in runs:
        by_dataset.setdefault(run.summary["dataset"], []).append(run)
    for dataset in sorted(by_dataset):
        slug = _slug(dataset)
        path = training_curves(by_dataset[dataset], figures_dir / f"curves-{slug}.png",
                               title=f"Training curves: {dataset}")
        if path:
            written[f"curves_{slug}"] = path
            figures.append((f"Training curves, {dataset}", path))
        path = teacher_student_bars(grid[grid["dataset"] == dataset], figures_dir / f"teacher_student-{slug}.png",
                                    title=f"Teacher vs student top-1: {dataset}")
        if path:
            written[f"teacher_student_{slug}"] = path
            figures.append((f"Teacher vs student, {dataset}", path))
        path = gain_bars(grid[grid["dataset"] == dataset], figures_dir / f"gains-{slug}.png",
                         title=f"Distillation gains: {dataset}") if gains else None
        if path:
            written[f"gains_{slug}"] = path
            figures.append((f"Direct and Effective Gain, {dataset}", path))
        path = erf_heatmaps(by_dataset[dataset], dataset, figures_dir / f"erf-{slug}.png",
                            title=f"Effective receptive fields: {dataset}") if "erf" in markdown else None
        if path:
            written[f"erf_{slug}"] = path
            figures.append((f"Effective receptive fields, {dataset}", path))

    complete = sum(r.complete for r in runs)
    lines = [
        f"# {title or DEFAULT_TITLE}", "",
        f"Generated by `repro report` from {len(runs)} run folders ({complete} complete, "
        f"{len(runs) - complete} stopped). Every number is read from the runs' `summary.json` and `metrics.jsonl` "
        "or from the published numbers in `repro/published/*.csv` (computed means, standard deviations and "
        "differences aside); regenerate rather than edit.", "",
        f"Top-1 and top-5 of our runs are {_BASIS_TEXT[basis]}. Means are over seeds with the sample standard "
        "deviation and n runs; stopped runs have rows of their own and never enter a mean. A missing number "
        "is shown as —.", "",
    ]
    if duplicates:
        lines += [f"Ignored {len(duplicates)} run folders holding the same weights as another one (copies): "
                  + ", ".join(f"`{r.path}`" for r in duplicates) + ".", ""]
    lines += [
        "## Runs", "",
        "Split: where each run's top-1 and top-5 were measured (the test split, or the held-out val split of a "
        "run not evaluated on test yet).", "",
        markdown["runs"],
        "## Paper vs reproduction", "",
        "Δ top-1 = ours − published. Published values that are unknown are missing (—), never guessed.", "",
        markdown["paper_vs_reproduction"],
        "## Distillation", "",
        "Direct Gain = top-1 of the distilled student − top-1 of the same student trained alone with the same "
        "recipe; Effective Gain = Direct Gain / teacher top-1. Where either side has two runs or more, ± is the "
        "standard deviation of the difference of the two means, sqrt(s²/n + s_alone²/n_alone) with s the seed "
        "standard deviations (a side with a single run takes the other side's s); n and n alone count the runs.", "",
        markdown["distillation_grid"],
    ]
    if "erf" in markdown:
        lines += [
            "## Effective receptive field", "",
            "r = area of the smallest centred square holding more than t of a model's effective receptive field "
            "(the input gradient of its last-stage centre feature, log10(x + 1)-scaled and normalised to its "
            "maximum, averaged over the first images of the split; SLaK's erf/analyze_erf.py), in percent of the "
            "ERF input; from each run's erf.json (`repro erf`), mean ± std over seeds.", "",
            markdown["erf"],
        ]
        if stale_erf:
            lines += ["Left out: the erf.json of " + ", ".join(f"`{r.path}`" for r in stale_erf)
                      + " describes weights the run has since trained past; run `repro erf` on it again.", ""]
    if "robustness" in markdown:
        lines += [
            "## Robustness", "",
            "Top-1 on distribution-shifted sets (ImageNet-A/-R/-Sketch) and, for a corruption benchmark (CIFAR-10-C, "
            "CIFAR-100-C, ImageNet-C), the mean top-1 over its corruptions and severities, from each run's "
            "robustness.json (`repro eval --robustness`), mean ± std over seeds. mCE (Hendrycks & Dietterich 2019) "
            "= mean over corruptions of the summed top-1 errors relative to the named baseline run's, in percent "
            "(100: as robust as the baseline; lower is better). Published numbers: the authors' robustness logs "
            "(NKD students, best checkpoint); their ConvNeXt-T ← ViT-S student is not in them.", "",
            markdown["robustness"],
        ]
        if stale_robust:
            lines += ["Left out: the robustness.json of " + ", ".join(f"`{r.path}`" for r in stale_robust)
                      + " describes weights the run has since trained past; run `repro eval --robustness` on it "
                      "again.", ""]
    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures:
            lines += [f"![{caption}]({path.relative_to(out).as_posix()})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip("\n") + "\n")
    written["report"] = report
    return written


def run_overview(run_dir: str | Path, basis: str = "last") -> pd.DataFrame:
    """One run's summary as a two-column table (field, value), for notebooks."""
    from .runs import read_run

    row = runs_table([read_run(run_dir)], basis).iloc[0]
    return pd.DataFrame({"field": row.index, "value": [str(v) for v in row.values]})


def run_curves(run_dir: str | Path, path: str | Path | None = None) -> Path | None:
    """Draw one run's training curves (default: <run_dir>/curves.png); None before its first evaluation."""
    from .runs import read_run

    run = read_run(run_dir)
    return training_curves([run], path or run.path / "curves.png", title=run.name)
