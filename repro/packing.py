"""Packing: independent runs side by side, one per GPU, each in its own process with its own budget and log.

Kaggle's "GPU T4 x2" session is charged by its wall time whatever it runs, and one training run (or one cohort,
which steps its members one after another in one process) keeps one GPU busy. Packing puts a second run or
cohort on the other GPU: two child processes, each with CUDA_VISIBLE_DEVICES naming its GPU, each writing its
own run folder and log, waited for together. Nothing is shared between them, so each run's numbers are those
it has alone (tested on CPU: the same digests side by side as one after the other).

Two kinds of jobs use the same slots: `repro batch --pack N` executes each run's notebook in a child process
(`python -m repro.packing`, which is `repro batch --only NAME` with its records written to a file), and the
notebook `repro kaggle prepare` writes for a packed session launches `repro train ...` / `repro train --cohort`
children (`train_side_by_side`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from .errors import ReproError

# What a packed `repro train` child takes from a run's train-notebook parameters.
_TRAIN_FLAGS = (("max_steps", "--max-steps"), ("checkpoint_every", "--checkpoint-every"), ("device", "--device"))
_PACK_LOG = "pack.log"  # a packed child's console output, in its run folder


@dataclass
class Job:
    """One child process of a pack: its name, command line, log file and extra environment."""

    name: str
    command: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    # Filled in when it has run.
    slot: str | None = None
    returncode: int | None = None
    seconds: float = 0.0


def gpu_slots(pack: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each of `pack` slots: GPU 0, 1, ... of the GPUs this process sees (the ids
    CUDA_VISIBLE_DEVICES lists when it is set)."""
    if pack < 1:
        raise ReproError(f"pack is the number of runs side by side (one per GPU), at least 1; found {pack}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(pack)]
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if len(ids) < pack:
        raise ReproError(f"packing {pack} runs needs {pack} GPUs, but CUDA_VISIBLE_DEVICES={visible!r} lists "
                         f"{len(ids)}; make {pack} GPUs visible or pack fewer runs")
    return ids[:pack]


def check_gpus(pack: int, gpu_count: int | None = None) -> str | None:
    """Refuse to pack more runs than there are GPUs; None when fine, a note when there is no GPU at all (the
    runs then share the CPU, as in the tests)."""
    if pack <= 1:
        return None
    if gpu_count is None:
        import torch  # device_count() creates no CUDA context: children may still use the GPUs
        gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpu_count == 0:
        return f"no GPU here: the {pack} packed runs share the CPU"
    if gpu_count < pack:
        raise ReproError(f"packing {pack} runs needs {pack} GPUs (one each), found {gpu_count}; pack fewer runs or "
                         "use a machine with more GPUs (on Kaggle: machine_shape NvidiaTeslaT4, GPU T4 x2)")
    return None


class _Forward:
    """SIGINT/SIGTERM received by this process are passed on to every running child, one for one: the children
    run in their own sessions (a terminal's Ctrl-C reaches only this process), so a child sees each signal once
    and its own handling applies (the first stops cleanly, a second aborts). No new job starts after one."""

    def __init__(self):
        self.signum: int | None = None
        self.children: list[subprocess.Popen] = []
        self._previous: dict = {}

    def __enter__(self) -> "_Forward":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signum = self.signum or signum
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(OSError):
                    child.send_signal(signum)


def run_side_by_side(jobs: Sequence[Job], slots: Sequence[str], *, poll_s: float = 0.2,
                     announce: bool = True) -> int | None:
    """Run `jobs` in child processes, at most one per slot at a time (CUDA_VISIBLE_DEVICES=slot), each writing to its
    log; a slot takes the next job as soon as its job ends. Fills in each job's returncode, slot and seconds
    (returncode None: not started, because a stop signal came first); returns the first signal received, if any."""
    queue = list(jobs)
    running: dict[str, tuple[Job, subprocess.Popen, Any, float]] = {}
    with _Forward() as forward:
        try:
            while queue or running:
                for slot in slots:
                    if slot in running or not queue or forward.signum is not None:
                        continue
                    job = queue.pop(0)
                    job.log.parent.mkdir(parents=True, exist_ok=True)
                    log = open(job.log, "ab")
                    env = {**os.environ, "PYTHONUNBUFFERED": "1", **job.env, "CUDA_VISIBLE_DEVICES": slot}
                    proc = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
                    forward.children.append(proc)
                    job.slot = slot
                    running[slot] = (job, proc, log, time.monotonic())
                    if announce:
                        print(f"{job.name}: started on GPU {slot} (log: {job.log})", flush=True)
                if forward.signum is not None:
                    queue.clear()
                for slot, (job, proc, log, t0) in list(running.items()):
                    if proc.poll() is not None:
                        log.close()
                        job.returncode, job.seconds = proc.returncode, round(time.monotonic() - t0, 1)
                        del running[slot]
                        if announce:
                            print(f"{job.name}: exit status {job.returncode} after {job.seconds:.0f} s", flush=True)
                time.sleep(poll_s if running else 0)
        finally:
            for job, proc, log, _ in running.values():  # an exception here: leave no orphan behind
                with contextlib.suppress(OSError):
                    proc.kill()
                proc.wait()
                log.close()
    return forward.signum


def _child_env() -> dict[str, str]:
    """PYTHONPATH for a child of a source checkout (the package need not be installed)."""
    from .batch import _pythonpath_with_checkout
    path = _pythonpath_with_checkout(os.environ.get("PYTHONPATH"))
    return {"PYTHONPATH": path} if path is not None else {}


# --------------------------------------------------------------------------------- repro batch --pack N

def run_plan_packed(plan_path: str | Path, out: str | Path = "runs", *, pack: int = 2,
                    only: Iterable[str] | None = None, notebooks_out: str | Path | None = None,
                    kernel: str = "python3", log_output: bool = False, stop_wait: float | None = None,
                    stop=None) -> tuple[list[dict[str, Any]], int | None]:
    """`repro batch --pack N`: the plan's runs (or the named ones), N at a time, each notebook executed in its own
    child process on its own GPU; returns the records `repro.batch.run_notebooks` would give, and the stop signal
    received (None if none). Each child checks, skips or executes its run exactly as `repro batch` does, and
    handles a stop signal as it does (passed on by `run_side_by_side`)."""
    import shutil

    from .batch import check_kernel
    from .paths import ensure_writable_dir
    from .plan import load_plan

    plan = load_plan(plan_path)
    runs = plan.runs
    if only:
        names = [r.name for r in runs]
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ReproError(f"--only names {', '.join(unknown)}, which the plan {plan.path} does not have; "
                             f"its runs are: {', '.join(names)}")
        runs = [r for r in runs if r.name in set(only)]
    check_kernel(kernel)
    slots = gpu_slots(pack)
    note = check_gpus(pack)
    if note:
        print(f"note: {note}", flush=True)
    if any(not r.parameters.get("out_dir") for r in runs):
        ensure_writable_dir(out, "the batch output folder (--out)")
    dirs = {r.name: Path(r.parameters.get("out_dir") or Path(out) / r.name) for r in runs}
    jobs = [batch_job(plan.path, r.name, out, dirs[r.name], kernel=kernel, log_output=log_output,
                      stop_wait=stop_wait) for r in runs]
    # A stop signal caught before the children start (by `stop`, a repro.batch.BatchStop) starts none.
    signum = run_side_by_side(jobs, slots) if stop is None or stop.signum is None else None
    records = []
    for run, job in zip(runs, jobs):
        record = read_batch_record(job, dirs[run.name])
        record.update(name=run.name, notebook=run.notebook, run_dir=dirs[run.name],
                      executed=dirs[run.name] / "executed.ipynb", log=dirs[run.name] / "papermill.log")
        record.setdefault("error", None)
        if notebooks_out and record["executed"].is_file():
            Path(notebooks_out).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record["executed"], Path(notebooks_out) / f"{run.name}.ipynb")
        records.append(record)
    return records, signum


def batch_job(plan: str | Path, name: str, out: str | Path, run_dir: Path, *, kernel: str, log_output: bool,
              stop_wait: float | None = None) -> Job:
    """The child that executes one plan run's notebook (`python -m repro.packing`, see `main`)."""
    record = Path(run_dir) / "pack-record.json"
    cmd = [sys.executable, "-m", "repro.packing", str(plan), "--only", name, "--out", str(out), "--kernel", kernel,
           "--record", str(record)]
    if log_output:
        cmd.append("--log-output")
    if stop_wait is not None:
        cmd += ["--stop-wait", str(stop_wait)]
    return Job(name, cmd, Path(run_dir) / _PACK_LOG, _child_env())


def read_batch_record(job: Job, run_dir: Path) -> dict[str, Any]:
    """The record the child wrote for its run (see `repro.batch.run_notebooks`), or a failed one from its exit."""
    path = Path(run_dir) / "pack-record.json"
    try:
        record = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError):
        tail = _tail(job.log)
        status = "not run" if job.returncode is None else "failed"
        error = "not started: the batch was stopped" if job.returncode is None else \
            f"the packed child exited with status {job.returncode} before recording its run; {job.log}: {tail}"
        return {"name": job.name, "status": status, "error": error, "seconds": job.seconds}
    record["seconds"] = record.get("seconds") or job.seconds
    return record


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: Sequence[str] | None = None) -> int:
    """One plan run, executed as `repro batch --only NAME` would, its record written to --record (a packed child)."""
    from .batch import STOP_WAIT_S, BatchStop, run_plan

    p = argparse.ArgumentParser(prog="python -m repro.packing", description=main.__doc__)
    p.add_argument("plan")
    p.add_argument("--only", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kernel", default="python3")
    p.add_argument("--record", required=True)
    p.add_argument("--log-output", action="store_true")
    p.add_argument("--stop-wait", type=float, default=STOP_WAIT_S)
    args = p.parse_args(argv)
    try:
        with BatchStop(wait=args.stop_wait) as stop:
            records = run_plan(args.plan, args.out, only=[args.only], kernel=args.kernel, progress=False,
                               log_output=args.log_output, stop=stop)
    except ReproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = {k: str(v) if isinstance(v, Path) else v for k, v in records[0].items()}
    Path(args.record).parent.mkdir(parents=True, exist_ok=True)
    Path(args.record).write_text(json.dumps(record, indent=2) + "\n")
    return 0 if record["status"] in ("complete", "stopped", "skipped") else 1


# ---------------------------------------------------------------------- a packed Kaggle session

def train_args(run: dict[str, Any], time_budget: str | float | None) -> list[str]:
    """`repro train` arguments for one packed run, from its train-notebook parameters (`name`, `out_dir`, and
    preset/config_file/overrides/seed/resume_from, or cohort; max_steps, checkpoint_every, device)."""
    from .plan import cohort_mapping

    out = Path(run["out_dir"])
    if (run.get("nproc") or 1) != 1:
        raise ReproError(f"packed run {run.get('name')}: nproc must be 1 (each packed run has one GPU), found "
                         f"{run['nproc']!r}")
    args = ["train", "--out", str(out), "--no-progress"]
    if run.get("cohort") is not None:
        # The cohort file the command reads is the one the cohort records in its folder (cohort.yaml).
        mapping = cohort_mapping(run["cohort"], overrides=run.get("overrides") or (), seed=run.get("seed"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "cohort.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))
        args += ["--cohort", str(out / "cohort.yaml")]
    else:
        args += ["--config", str(run["config_file"])] if run.get("config_file") else ["--preset", str(run["preset"])]
        for text in run.get("overrides") or []:
            args += ["--set", str(text)]
        if run.get("seed") is not None:
            args += ["--seed", str(run["seed"])]
        for folder in run.get("resume_from") or []:
            args += ["--resume-from", str(folder)]
    for key, flag in _TRAIN_FLAGS:
        if run.get(key) is not None:
            args += [flag, str(run[key])]
    if time_budget is not None:
        args += ["--time-budget", str(time_budget)]
    return args


def train_side_by_side(runs: Iterable[dict[str, Any]], *, time_budget: str | float | None = None,
                       slots: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train each run (or cohort) in its own `repro train` child, one per GPU, each with `time_budget` and its log
    in <out_dir>/train.log; returns one row per run folder (a cohort's members each) with status and accuracy,
    and raises ReproError after all have ended when one failed."""
    runs = list(runs)
    slots = list(slots) if slots is not None else gpu_slots(len(runs))
    jobs = [Job(run["name"], [sys.executable, "-m", "repro", *train_args(run, time_budget)],
                Path(run["out_dir"]) / "train.log", _child_env()) for run in runs]
    run_side_by_side(jobs, slots)
    rows, failed = [], []
    for run, job in zip(runs, jobs):
        members = [m["name"] for m in run["cohort"]["members"]] if run.get("cohort") is not None else [None]
        for member in members:
            folder = Path(run["out_dir"]) / member if member else Path(run["out_dir"])
            try:
                s = json.loads((folder / "summary.json").read_text())
            except (OSError, ValueError):
                s = {}
            rows.append({"run": run["name"], "member": member, "gpu": job.slot, "exit": job.returncode,
                         "status": s.get("status"), "steps": f"{s.get('steps_done')}/{s.get('steps_total')}",
                         "top1": s.get("best_top1", s.get("top1")), "test_top1": s.get("test_top1"),
                         "wall_time_s": s.get("wall_time_s"), "folder": str(folder)})
        if job.returncode != 0:
            failed.append(f"{job.name} (exit status {job.returncode}; last lines of {job.log}: {_tail(job.log)})")
    print(format_rows(rows), flush=True)
    if failed:
        raise ReproError(f"packed run(s) failed: {'; '.join(failed)}. The other runs' results are above and every "
                         "run folder keeps its last checkpoint: the next session (or the same one pushed again) "
                         "resumes them")
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The rows of `train_side_by_side` as a plain-text table."""
    head = ("run", "member", "gpu", "exit", "status", "steps", "top1", "test_top1")
    table = [head] + [tuple("-" if r[k] is None else (f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]))
                            for k in head) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


if __name__ == "__main__":
    sys.exit(main())
