"""`repro quickstart`: the whole pipeline in minutes on a laptop CPU, through the same notebook as real runs.

On the embedded `digits` dataset, notebooks/train.ipynb is executed three times with papermill: a sparse
SLaK-micro teacher (preset quickstart-teacher), the paper's ConvNeXt-style student alone (quickstart-student)
and the same student distilled from that teacher with NKD (quickstart-distill). The results folder then gets
the tables and figures of `repro report`, and the executed notebooks. Running it again skips complete runs
and resumes stopped ones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .batch import run_notebooks, status_table
from .plan import PlanRun

TITLE = "Quickstart: SLaK-micro teacher, ConvNeXt-micro student, NKD distillation on digits"


def quickstart_runs(out: str | Path, device: str | None = None) -> list[PlanRun]:
    """The three runs: teacher, student alone, student distilled from the teacher's run folder."""
    common = {"device": device} if device else {}
    teacher_dir = Path(out) / "teacher"
    return [
        PlanRun("teacher", "train.ipynb", {"preset": "quickstart-teacher", **common}),
        PlanRun("student", "train.ipynb", {"preset": "quickstart-student", **common}),
        PlanRun("student-nkd", "train.ipynb",
                {"preset": "quickstart-distill", "overrides": [f"distill.teacher={teacher_dir}"], **common}),
    ]


def run_quickstart(out: str | Path = "runs/quickstart", results: str | Path = "results/quickstart", *,
                   device: str | None = None, kernel: str = "python3", progress: bool = True,
                   log_output: bool = False) -> dict[str, Any]:
    """Train the three quickstart runs (skipping complete ones) and write the report; returns
    {'runs': one record per run (see `repro.batch.run_notebooks`), 'report': written paths or None}."""
    from .report import build_report

    runs = quickstart_runs(out, device)
    # Without a finished teacher there is nothing to distil from; the student alone still runs.
    records = run_notebooks(runs, out, notebooks_out=Path(results) / "notebooks", kernel=kernel, progress=progress,
                            log_output=log_output, requires={"student-nkd": "teacher"})
    trained = [r["run_dir"] for r in records if (Path(r["run_dir"]) / "summary.json").is_file()]
    report = build_report(trained, results, title=TITLE) if trained else None
    return {"runs": records, "report": report}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `quickstart` subcommand."""
    p = subparsers.add_parser(
        "quickstart", help="teacher, student and NKD student on digits in minutes on a CPU, then the report",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--out", default="runs/quickstart", help="parent of the three run folders")
    p.add_argument("--results", default="results/quickstart", help="where the tables, figures and notebooks go")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the quickstart and print where the results are and the headline table."""
    result = run_quickstart(args.out, args.results, device=args.device, kernel=args.kernel,
                            log_output=args.log_output)
    print()
    print(status_table(result["runs"]))
    report = result["report"]
    if report:
        print()
        print(report["distillation_grid_md"].read_text())
        print(f"results: {report['report']} (tables in {report['report'].parent / 'tables'}, figures in "
              f"{report['report'].parent / 'figures'}, executed notebooks in "
              f"{report['report'].parent / 'notebooks'})")
    failed = [r["name"] for r in result["runs"] if r["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)}; see papermill.log in their run folders, fix, and run again",
              file=sys.stderr)
        return 1
    return 0
