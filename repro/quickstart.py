"""`repro quickstart`: the paper's teacher comparison (Huang et al., ICML 2023, Table 1) in miniature, on a CPU.

On the embedded `digits` dataset at 32x32, three teachers of about the same accuracy are trained through
notebooks/train.ipynb with papermill, as real runs are: a sparse SLaK-micro with the real 51/49/47/13/5 kernels
(preset quickstart-teacher), a small-kernel ConvNet, the student's own 7x7 network trained longer
(quickstart-teacher-convnext), and a Transformer, the authors' ViT-S network reduced to 96 wide and 4 deep
(quickstart-teacher-vit). The paper's ConvNeXt-style student is then distilled with KD from each teacher and
trained alone, two seeds each, as cohorts (`repro train --cohort`: one data stream per teacher and seed). Every
run's effective receptive field is measured (`repro erf`), and the results folder gets the report of `repro
report`: Direct and Effective Gain per teacher (mean ± std over the seeds), a figure of the gains, the ERF table,
and the executed teacher notebooks. Runs train side by side in worker processes of one thread each (on a CPU
the numbers then do not depend on how many cores the machine has). Running it again skips complete runs and
resumes stopped ones.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from .batch import check_kernel, run_notebooks, status_table
from .errors import ReproError
from .plan import PlanRun

TITLE = "Quickstart: SLaK, ConvNet and Transformer teachers distilled (KD) into a small-kernel student on digits"

# (run folder, preset, short name in the students' folder names); the SLaK teacher keeps the folder the
# notebooks' examples point at (runs/quickstart/teacher).
TEACHERS = (("teacher", "quickstart-teacher", "slak"),
            ("teacher-convnext", "quickstart-teacher-convnext", "convnext"),
            ("teacher-vit", "quickstart-teacher-vit", "vit"))
SEEDS = (0, 1)
STUDENT_PRESET = "quickstart-kd"
MAX_WORKERS = 4  # beyond this the six student cohorts no longer finish sooner


def quickstart_runs(out: str | Path, device: str | None = None) -> list[PlanRun]:
    """The teacher runs: notebooks/train.ipynb with each teacher's preset, into out/<run folder>."""
    common = {"device": device} if device else {}
    return [PlanRun(name, "train.ipynb", {"preset": preset, **common}) for name, preset, _ in TEACHERS]


def student_cohorts(out: str | Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """(teacher run name, cohort folder, cohort) per seed and teacher: the student distilled with KD from that
    teacher and, in the SLaK teacher's cohort of each seed, the same student trained alone (the Direct Gain's
    reference: every setting outside `distill` equal)."""
    out = Path(out)
    cohorts = []
    for seed in SEEDS:
        for i, (teacher, _, short) in enumerate(TEACHERS):
            members = [{"name": f"kd-{short}-seed{seed}"}]
            if i == 0:
                members.append({"name": f"alone-seed{seed}", "overrides": ["distill.method=null"]})
            cohort = {"preset": STUDENT_PRESET, "overrides": [f"seed={seed}", f"distill.teacher={out / teacher}"],
                      "members": members}
            cohorts.append((teacher, out / f"students-{short}-seed{seed}", cohort))
    return cohorts


def default_workers() -> int:
    """Worker processes: one per available core, at most MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def _one_thread() -> None:
    """Worker start-up: one thread per run, also in the notebook kernels it starts (they inherit the
    environment); small models gain little from more, and results then match across machines."""
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)


def _complete(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's summary when it says complete, else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if summary.get("status") == "complete" else None


def measure_erf(run_dir: str | Path, device: str | None = None) -> bool:
    """Write a complete run's erf.json (`repro erf`) unless it already describes the run's final weights;
    returns whether it measured."""
    from .analysis.erf import run_erf

    run_dir = Path(run_dir)
    summary = _complete(run_dir)
    if summary is None:
        return False
    try:
        old = json.loads((run_dir / "erf.json").read_text())
    except (OSError, json.JSONDecodeError):
        old = None
    if old and old.get("step") == summary.get("steps_done"):
        return False
    run_erf(run_dir, device=device, progress=False)
    return True


def _failure(exc: BaseException) -> str:
    """One line for a record; the traceback of an unexpected error goes to stderr."""
    if isinstance(exc, ReproError):
        return str(exc)
    traceback.print_exc()
    return f"{type(exc).__name__}: {exc}"


def _erf_note(record: dict[str, Any], device: str | None) -> None:
    try:
        measure_erf(record["run_dir"], device)
    except Exception as exc:  # the run itself is fine; its ERF is missing from the report, and the record says why
        record["error"] = f"trained, but its ERF failed: {_failure(exc)}"


def _teacher_job(run: PlanRun, out: Path, notebooks_out: Path, kernel: str, log_output: bool,
                 device: str | None) -> dict[str, Any]:
    """A worker's task: one teacher through train.ipynb, then its ERF."""
    try:
        # The main process reports each run as it finishes; the batch's own progress lines would repeat it.
        with contextlib.redirect_stdout(io.StringIO()):
            record = run_notebooks([run], out, notebooks_out=notebooks_out, kernel=kernel, progress=False,
                                   log_output=log_output)[0]
    except Exception as exc:
        return {"name": run.name, "run_dir": out / run.name, "status": "failed", "error": _failure(exc),
                "seconds": 0.0}
    if record["status"] in ("complete", "skipped"):
        _erf_note(record, device)
    return record


def _cohort_job(cohort: dict[str, Any], folder: Path, device: str | None) -> list[dict[str, Any]]:
    """A worker's task: one student cohort (skipping complete members), then each member's ERF."""
    from .train.cohort import train_cohort

    names = [m["name"] for m in cohort["members"]]
    done_before = {n for n in names if _complete(folder / n)}
    start, error, summaries = time.monotonic(), None, {}
    try:
        summaries = train_cohort(cohort, folder, device=device, progress=False)
    except Exception as exc:
        error = _failure(exc)
    seconds = round(time.monotonic() - start, 1) if len(done_before) < len(names) else 0.0
    records = []
    for name in names:
        status = "skipped" if name in done_before else \
            ("failed" if error else (summaries.get(name) or {}).get("status", "failed"))
        record = {"name": name, "run_dir": folder / name, "status": status, "error": error,
                  "seconds": seconds if name not in done_before else 0.0}
        if status in ("complete", "skipped"):
            _erf_note(record, device)
        records.append(record)
    return records


def run_quickstart(out: str | Path = "runs/quickstart", results: str | Path = "results/quickstart", *,
                   device: str | None = None, kernel: str = "python3", progress: bool = True,
                   log_output: bool = False, workers: int | None = None) -> dict[str, Any]:
    """Train the teachers and the student cohorts (skipping complete runs), measure their ERFs and write the
    report; returns {'runs': one record per run (name, run_dir, status, error, seconds), 'report': written paths
    or None, 'seconds': wall time}."""
    from .report import build_report

    out, results = Path(out), Path(results)
    check_kernel(kernel)
    workers = workers or default_workers()
    if workers < 1:
        raise ReproError(f"--workers must be at least 1, found {workers}")
    start = time.monotonic()
    cohorts = student_cohorts(out)
    found: dict[str, list[dict[str, Any]]] = {}
    total = len(TEACHERS) + sum(len(c["members"]) for _, _, c in cohorts)

    def note(records: list[dict[str, Any]]) -> None:
        for r in records:
            if progress:
                detail = f": {r['error']}" if r.get("error") else ""
                took = f" in {r['seconds']:.0f} s" if r.get("seconds") else ""
                print(f"[{sum(map(len, found.values()))}/{total}] {r['name']}: {r['status']}{took}{detail}",
                      flush=True)

    if progress:
        print(f"{len(TEACHERS)} teachers, then {len(cohorts)} student cohorts, in {workers} worker processes; "
              f"each teacher notebook's output goes to its papermill.log under {out}", flush=True)
    # spawn: the workers start clean (no forked torch thread pools), on every platform alike.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
    try:
        pending: dict[Future, tuple[str, Any]] = {}
        # The longest teacher first: its students then are not the last to start.
        for run in reversed(quickstart_runs(out, device)):
            future = pool.submit(_teacher_job, run, out, results / "notebooks", kernel, log_output, device)
            pending[future] = ("teacher", run.name)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                kind, key = pending.pop(future)
                if kind == "teacher":
                    record = future.result()
                    found[key] = [record]
                    note([record])
                    for teacher, folder, cohort in cohorts:
                        if teacher != key:
                            continue
                        if record["status"] in ("complete", "skipped"):
                            pending[pool.submit(_cohort_job, cohort, folder, device)] = ("cohort", folder)
                        else:  # nothing to distil from (nor, for SLaK's cohorts, a reference student)
                            found[folder.name] = [{"name": m["name"], "run_dir": folder / m["name"],
                                                   "status": "failed", "seconds": 0.0,
                                                   "error": f"not run: {teacher} did not complete"}
                                                  for m in cohort["members"]]
                            note(found[folder.name])
                else:
                    found[key.name] = future.result()
                    note(found[key.name])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    records = [r for name, _, _ in TEACHERS for r in found.get(name, [])]
    records += [r for _, folder, _ in cohorts for r in found.get(folder.name, [])]
    trained = [r["run_dir"] for r in records if (Path(r["run_dir"]) / "summary.json").is_file()]
    report = build_report(trained, results, title=TITLE, gains=True) if trained else None
    return {"runs": records, "report": report, "seconds": round(time.monotonic() - start, 1)}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `quickstart` subcommand."""
    p = subparsers.add_parser(
        "quickstart", help="three teachers and KD students on digits in minutes on a CPU, then the report",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--out", default="runs/quickstart", help="parent of the run folders")
    p.add_argument("--results", default="results/quickstart", help="where the tables, figures and notebooks go")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    p.add_argument("--workers", type=int, help=f"runs trained at once, one thread each (default: the cores "
                                               f"available, at most {MAX_WORKERS})")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the quickstart and print where the results are and the comparison table."""
    try:
        result = run_quickstart(args.out, args.results, device=args.device, kernel=args.kernel,
                                log_output=args.log_output, workers=args.workers)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue (complete runs are kept)", file=sys.stderr)
        return 130
    print()
    print(status_table(result["runs"]))
    report = result["report"]
    if report:
        print()
        print(report["distillation_grid_md"].read_text())
        print(f"results: {report['report']} (tables in {report['report'].parent / 'tables'}, figures in "
              f"{report['report'].parent / 'figures'}, executed notebooks in "
              f"{report['report'].parent / 'notebooks'}); {result['seconds']:.0f} s")
    failed = [r["name"] for r in result["runs"] if r["status"] in ("failed", "stopped")]
    if failed:
        print(f"not complete: {', '.join(failed)}; see papermill.log or the run folders, fix, and run again",
              file=sys.stderr)
        return 1
    return 0
