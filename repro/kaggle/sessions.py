"""Chained Kaggle sessions: how many a run needs, and where a chain stands from its outputs.

A Kaggle GPU session ends after about 12 hours, and a committed run killed at the limit loses its outputs.
Each session therefore trains inside a time budget (default 11h15m, leaving room for installation, data
loading, the final evaluation and the save), stops cleanly, and the next session resumes from the previous
session's output attached under /kaggle/input. The session index of a run is its summary's `resumes + 1`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Iterable

import yaml

from ..errors import ReproError

DEFAULT_SESSION_BUDGET = "11h15m"
# Kaggle ends a GPU session after about 12 h; installation, data loading and the last save need the rest.
MAX_SESSION_BUDGET_S = 11.5 * 3600


def session_budget_seconds(budget: str | float, flag: str = "--budget") -> float:
    """A session budget in seconds, refused above Kaggle's ~12 h session limit; `flag` names it in errors."""
    from ..train.budget import parse_duration
    seconds = parse_duration(budget, flag=flag)
    if seconds is None or seconds > MAX_SESSION_BUDGET_S:
        raise ReproError(f"a session budget of {budget} leaves no room under Kaggle's ~12 h session limit, and a "
                         "run killed at the limit loses its outputs; use at most 11h30m (default 11h15m)")
    return seconds


def plan_sessions(*, epochs: int, seconds_per_epoch: float | None = None, images_per_s: float | None = None,
                  train_size: int | None = None, budget: str | float = DEFAULT_SESSION_BUDGET,
                  overhead: float = 0.10) -> dict:
    """Sessions needed for `epochs`, from a measured epoch time or training throughput.

    Give `seconds_per_epoch`, or `images_per_s` with `train_size`. `overhead` adds a share for evaluation,
    checkpoints and data loading that a throughput figure does not include.
    """
    if epochs <= 0:
        raise ReproError(f"epochs should be positive, found {epochs}")
    if seconds_per_epoch is None:
        if not images_per_s or not train_size or images_per_s <= 0 or train_size <= 0:
            raise ReproError("give the measured seconds per epoch, or both images/s and the training-set size "
                             f"(found images_per_s={images_per_s}, train_size={train_size}); images_per_s is in "
                             "a run's summary.json")
        seconds_per_epoch = train_size / images_per_s
    if overhead < 0:
        raise ReproError(f"overhead is a non-negative fraction (0.1 = 10%), found {overhead}")
    epoch_s = seconds_per_epoch * (1 + overhead)
    budget_s = session_budget_seconds(budget)
    epochs_per_session = math.floor(budget_s / epoch_s)
    total_s = epochs * epoch_s
    return {
        "epochs": epochs,
        "seconds_per_epoch": epoch_s,
        "total_hours": total_s / 3600,
        "budget_s": budget_s,
        "epochs_per_session": epochs_per_session,
        # The engine stops at a step boundary, not an epoch boundary: sessions share epochs freely.
        "sessions": max(1, math.ceil(total_s / budget_s)),
    }


def read_summary(run_dir: str | Path) -> dict:
    """A run folder's summary.json."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise ReproError(f"no summary.json in {run_dir}; pass a run folder written by `repro train`")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ReproError(f"{path} is not valid JSON ({exc})") from None


# Training images of the datasets whose size is fixed, before the held-out validation share.
_TRAIN_IMAGES = {"cifar10": 50000, "cifar100": 50000, "imagenet": 1281167}


def _full_epoch_images(data: dict) -> int | None:
    """Training images per epoch of a run on the whole training set of its `data` config section (after the
    held-out validation share); None when the dataset's name does not fix its size (class folders)."""
    if data.get("name") == "digits":
        from ..data.digits import load_digits_splits
        total = len(load_digits_splits()[0])
    else:
        total = _TRAIN_IMAGES.get(data.get("name"))
    return None if total is None else total - round(total * float(data.get("val_fraction") or 0.0))


def plan_sessions_from_run(run_dir: str | Path, *, epochs: int | None = None,
                           budget: str | float = DEFAULT_SESSION_BUDGET, overhead: float = 0.0,
                           train_size: int | None = None) -> dict:
    """Sessions for a run (or `epochs` of it), timed by a trial run's own wall clock per optimizer step.

    The wall time already includes evaluation and checkpoints, so `overhead` defaults to 0. Time the trial
    on the accelerator, image size and batch size the chain will use. A trial on a subset
    (`data.train_limit`) is scaled to the whole training set (`train_size` images per epoch, by default the
    dataset's known size less the validation share) from its training throughput, with `overhead` (at least
    10% when given as 0) for the evaluations, whose cost a short trial does not show; it needs `epochs` unless
    the trial kept its preset's epoch count.
    """
    s = read_summary(run_dir)
    if not s.get("steps_done") or not s.get("epochs_total") or not s.get("steps_total"):
        raise ReproError(f"{run_dir}/summary.json records no finished steps; train at least a few hundred "
                         "steps (e.g. --time-budget 20m) on the target accelerator first")
    steps_per_epoch = s["steps_total"] / s["epochs_total"]
    seconds_per_epoch = s["wall_time_s"] / s["steps_done"] * steps_per_epoch
    basis = "the trial's wall time per optimizer step"
    cfg_file = Path(run_dir) / "config.yaml"
    try:
        cfg = (yaml.safe_load(cfg_file.read_text()) or {}) if cfg_file.is_file() else {}
    except yaml.YAMLError as exc:
        raise ReproError(f"{cfg_file} is not valid YAML ({exc}); pass a run folder written by `repro train`") \
            from None
    data, tc = cfg.get("data") or {}, cfg.get("train") or {}
    limit = data.get("train_limit")
    images = (train_size or _full_epoch_images(data)) if limit else None
    if limit and images and limit >= images:
        limit = None  # the trial saw the whole training set
    if limit:
        # The trial's epoch is `limit` images: neither its epoch time nor its epoch count is the chain's.
        from ..config import list_presets, load_config
        name = cfg.get("name")
        preset_epochs = load_config(name).train.epochs if name in list_presets() else None
        if epochs is None and preset_epochs != s["epochs_total"]:
            full = f" (preset {name} trains {preset_epochs})" if preset_epochs else ""
            raise ReproError(f"{run_dir} is a trial on data.train_limit={limit} images for {s['epochs_total']} "
                             f"epoch(s), so it does not say how long the full run is; pass --epochs N, the epochs "
                             f"the chain will train{full}")
        if not images:
            raise ReproError(f"{run_dir} is a trial on data.train_limit={limit} images of data.name="
                             f"{data.get('name')}, whose full size is not known here; time a trial on the whole "
                             "training set (without data.train_limit, e.g. --time-budget 20m)")
        per_step = int(tc.get("batch_size") or 1) * int(tc.get("accum_steps") or 1) \
            * int((s.get("env") or {}).get("world_size") or 1)
        steps_per_epoch = max(1, images // per_step)
        if s.get("images_per_s"):
            seconds_per_epoch = steps_per_epoch * per_step / s["images_per_s"]
            overhead = overhead if overhead > 0 else 0.10
            basis = (f"the trial's training throughput ({s['images_per_s']} images/s) over {images} images per "
                     f"epoch, plus {overhead:.0%} for evaluation and saves")
        else:
            seconds_per_epoch = s["wall_time_s"] / s["steps_done"] * steps_per_epoch
            basis = f"the trial's wall time per optimizer step over {images} images per epoch"
    result = plan_sessions(epochs=epochs or s["epochs_total"], seconds_per_epoch=seconds_per_epoch,
                           budget=budget, overhead=overhead)
    result["measured_on"] = (s.get("env") or {}).get("gpu") or (s.get("env") or {}).get("device")
    result["steps_per_epoch"] = steps_per_epoch
    result["basis"] = basis
    return result


def _summary_dirs(paths: Iterable[str | Path], max_depth: int = 6) -> list[Path]:
    """Folders holding summary.json at or below `paths` (downloaded outputs nest the run folder)."""
    from ..data.locate import walk_dirs
    found: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise ReproError(f"{root} does not exist; pass run folders or downloaded kernel outputs")
        found += [d for d in walk_dirs(root, max_depth) if (d / "summary.json").is_file()]
    return list(dict.fromkeys(found))


def chain_status(paths: Iterable[str | Path]) -> list[dict]:
    """One row per session found under `paths` (run folders or downloaded outputs), grouped by run folder name.

    The run folder's name is the plan's run name (out_dir = <working_dir>/<run>), which tells the runs of one
    preset apart; a cohort member (a folder beside the cohort's cohort.yaml) is `<run>/<member>`.

    Each row: run, session (resumes + 1), status, stop_reason, steps_done, steps_total, epochs_done,
    epochs_total, top1 (the best top-1 on the validation split so far), test_top1 (the final model on the test
    split, once the run is complete and has one), wall_time_s (cumulative over the chain), session_wall_s,
    resumed_from_step (the previous session's last step), finished (time of the summary), hardware and torch
    (where that session trained, from its summary's env), path.
    """
    from ..report.labels import hardware_label

    rows = []
    for d in _summary_dirs(paths):
        s = read_summary(d)
        rows.append({
            "run": f"{d.parent.name}/{d.name}" if (d.parent / "cohort.yaml").is_file() else d.name,
            "session": int(s.get("resumes", 0)) + 1, "status": s.get("status"),
            "stop_reason": s.get("stop_reason"), "steps_done": s.get("steps_done") or 0,
            "steps_total": s.get("steps_total"), "epochs_done": s.get("epochs_done"),
            "epochs_total": s.get("epochs_total"), "top1": s.get("best_top1", s.get("top1")),
            "test_top1": s.get("test_top1"),
            "wall_time_s": s.get("wall_time_s") or 0.0, "session_wall_s": s.get("wall_time_s") or 0.0,
            "resumed_from_step": None,
            "finished": time.strftime("%Y-%m-%d %H:%M", time.localtime((d / "summary.json").stat().st_mtime)),
            "hardware": hardware_label(s.get("env")), "torch": (s.get("env") or {}).get("torch"),
            "path": str(d),
        })
    rows.sort(key=lambda r: (r["run"], r["steps_done"], r["session"]))
    for prev, row in zip(rows, rows[1:]):
        if prev["run"] == row["run"]:
            row["resumed_from_step"] = prev["steps_done"]
            row["session_wall_s"] = row["wall_time_s"] - prev["wall_time_s"]
    return rows


def _hours_minutes(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}:{minutes % 60:02d}"


def format_chain_status(rows: list[dict], budget: str | float = DEFAULT_SESSION_BUDGET) -> str:
    """A table of `chain_status` rows plus, per run, whether it is done or how many sessions remain."""
    if not rows:
        return "no summary.json found"
    w = max([32] + [len(r["run"]) for r in rows])
    lines = [f"{'run':<{w}} {'sess':>4} {'status':<9} {'steps':>15} {'epochs':>9} {'val1':>6} {'test1':>6} "
             f"{'wall':>6} {'from':>8}  {'finished':<16}  where"]
    for r in rows:
        top1 = f"{r['top1']:.2f}" if isinstance(r["top1"], (int, float)) else "-"
        test1 = f"{r.get('test_top1'):.2f}" if isinstance(r.get("test_top1"), (int, float)) else "-"
        start = str(r["resumed_from_step"]) if r["resumed_from_step"] is not None else "-"
        lines.append(f"{r['run']:<{w}} {r['session']:>4} {r['status'] or '-':<9} "
                     f"{str(r['steps_done']) + '/' + str(r['steps_total']):>15} "
                     f"{str(r['epochs_done']) + '/' + str(r['epochs_total']):>9} {top1:>6} {test1:>6} "
                     f"{_hours_minutes(r['session_wall_s']):>6} {start:>8}  {r['finished']:<16}  "
                     f"{r.get('hardware') or '-'}" + (f", torch {r['torch']}" if r.get("torch") else ""))
    lines.append("val1: best top-1 on the held-out validation split so far; test1: the final model on the test "
                 "split (complete runs); wall: this session (h:mm); where: that session's GPUs and torch")
    budget_s = session_budget_seconds(budget)
    last = {r["run"]: r for r in rows}
    for run, r in last.items():
        if r["status"] == "complete":
            lines.append(f"{run}: complete after {r['session']} session(s)")
        elif r["steps_done"] and r["steps_total"]:
            # wall_time_s accumulates over the sessions, so it paces the whole chain so far.
            left = (r["steps_total"] - r["steps_done"]) * r["wall_time_s"] / r["steps_done"]
            lines.append(f"{run}: stopped ({r['stop_reason']}) at step {r['steps_done']} of {r['steps_total']}; "
                         f"about {max(1, math.ceil(left / budget_s))} more session(s) of {budget}")
        else:
            lines.append(f"{run}: {r['status']}, no step recorded yet")
    return "\n".join(lines)
