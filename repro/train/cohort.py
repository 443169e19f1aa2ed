"""Cohort runs: one data stream, one teacher forward, many students, each in its own ordinary run folder.

A teacher comparison trains many students on the same data in the same order with the same augmentation and
the same teacher; run one by one, each would load, augment and push every batch through the teacher again. A
cohort does that once per step and then steps every member, one after another (so peak memory is one
member's, plus the shared batch and teacher). Nothing changes in the numbers: before each member's step the
random generators are put back to where a solo run would have them, so every member ends bit-identical to
the solo run of its config (tested, kill -9 and resume included). Each member writes its own run folder
(config.yaml, metrics.jsonl, checkpoints, summary.json), so reports, evaluation, Kaggle status and resume
treat it like any other run.

The cohort file::

    preset: cifar100-distill            # or config: base.yaml (relative to this file)
    overrides: ["distill.teacher=runs/slak-t"]
    members:
      - {name: kd,    overrides: ["distill.method=kd"]}
      - {name: nkd,   overrides: ["distill.method=nkd"]}
      - {name: alone, overrides: ["distill.method=null"]}
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, flat_dict, load_config
from ..errors import ReproError
from .budget import StopSignal, TimeBudget, parse_duration
from .checkpoint import atomic_write_text

log = logging.getLogger("repro.train")

# Keys every member must share: what the one data stream, its augmentation, the mixed batch and the one teacher
# forward depend on, and the schedule's length. Anything else (model, method, lr, sparsity, EMA...) may differ.
SHARED_PREFIXES = ("seed", "data.", "train.epochs", "train.batch_size", "train.accum_steps", "train.mixup",
                   "train.cutmix", "train.label_smoothing", "train.precision", "train.channels_last",
                   "train.teacher_cuda_graph", "distill.teacher", "distill.teacher_model", "distill.teacher_deploy")
# Settings that do not change what a batch or the teacher gives (they are read from the first member).
_NOT_SHARED = {"data.num_workers", "data.eval_batch_size", "data.root", "data.download", "data.robustness_root"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Cohort:
    """A cohort file resolved: the members' names and configs (in file order) and where it came from."""

    members: list[tuple[str, RunConfig]]
    source: dict = field(default_factory=dict)
    path: Path | None = None


def _shared(key: str) -> bool:
    return key not in _NOT_SHARED and any(key == p or (p.endswith(".") and key.startswith(p))
                                          or key.startswith(p + "_") for p in SHARED_PREFIXES)


def load_cohort(source: str | Path | dict) -> Cohort:
    """Read a cohort file (or its dict) into member configs; refuse a member that differs in a shared key."""
    path = None
    if not isinstance(source, dict):
        path = Path(source)
        if not path.is_file():
            raise ReproError(f"cohort file {path} not found; expected a YAML file with a base (preset or config, "
                             "plus overrides) and members (each a name and its overrides)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ReproError(f"cohort file {path} is not valid YAML ({exc}); fix the file") from None
    else:
        data = dict(source)
    where = path or "the cohort"
    if not isinstance(data, dict):
        raise ReproError(f"{where}: expected a mapping with preset/config, overrides and members, found "
                         f"{type(data).__name__}")
    unknown = sorted(set(data) - {"preset", "config", "overrides", "members"})
    if unknown:
        raise ReproError(f"{where}: unknown keys {unknown}; a cohort has preset or config, overrides and members")
    members = data.get("members")
    if not isinstance(members, list) or not members:
        raise ReproError(f"{where}: 'members' must be a non-empty list of {{name, overrides}}, found {members!r}")
    base = _overrides(data.get("overrides"), f"{where}: overrides")
    config = data.get("config")
    if config and path is not None and not Path(config).is_absolute():
        config = str(path.parent / config)
    resolved, seen = [], set()
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            raise ReproError(f"{where}: member {i + 1} must be a mapping with a name and overrides, found {m!r}")
        name = m["name"]
        if not _NAME.match(name) or name in seen:
            raise ReproError(f"{where}: member name {name!r} must be unique and a plain folder name "
                             "(letters, digits, . _ -)")
        extra = sorted(set(m) - {"name", "overrides"})
        if extra:
            raise ReproError(f"{where}: member {name} has unknown keys {extra}; a member has a name and overrides")
        seen.add(name)
        cfg = load_config(data.get("preset"), config, base + _overrides(m.get("overrides"),
                                                                         f"{where}: member {name} overrides"))
        cfg.name = name
        resolved.append((name, cfg))
    check_shared(resolved, where)
    return Cohort(resolved, data, path)


def _overrides(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReproError(f"{what} must be a list of 'key=value' strings, found {value!r}")
    return list(value)


def check_shared(members: list[tuple[str, RunConfig]], where: Any = "the cohort") -> None:
    """Refuse members whose configs differ in a key the cohort shares, naming the key and the members."""
    first_name, first = members[0]
    ref = flat_dict(first)
    for name, cfg in members[1:]:
        mine = flat_dict(cfg)
        for key in sorted(k for k in set(ref) | set(mine) if _shared(k)):
            if ref.get(key) != mine.get(key):
                raise ReproError(
                    f"{where}: member {name} has {key}={mine.get(key)!r} but {first_name} has {ref.get(key)!r}; a "
                    "cohort shares its data, order, augmentation, batch, schedule and teacher, so this key must be "
                    "the same for every member (set it in the shared overrides, or train that member on its own)")


def train_cohort(cohort: str | Path | dict | Cohort, out_dir: str | Path, *, max_steps: int | None = None,
                 time_budget: str | float | None = None, checkpoint_every: int | None = None,
                 device: str | None = None, force: bool = False, progress: bool = True) -> dict[str, dict]:
    """Train (or resume) every member of a cohort in out_dir/<name>/; returns {name: summary}."""
    from .engine import Trainer, _complete_summary

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ReproError("a cohort runs in one process (its members step one after another); for two GPUs "
                         "run two cohorts side by side (repro batch --pack 2, or kaggle.pack: 2 in a plan)")
    spec = cohort if isinstance(cohort, Cohort) else load_cohort(cohort)
    out = Path(out_dir)
    summaries: dict[str, dict] = {}
    todo = []
    for name, cfg in spec.members:
        done = _complete_summary(cfg, out / name, device)
        if done is not None:
            summaries[name] = done
        else:
            todo.append((name, cfg))
    if not todo:
        log.info("%s: every member is complete; nothing to do", out)
        return summaries
    with StopSignal() as signals:
        signals.phase = "start-up"
        # A distilling member is built first: its teacher (and everyone's data) are then shared.
        order = sorted(range(len(todo)), key=lambda i: not todo[i][1].distill.method)
        trainers: dict[str, Trainer] = {}
        try:
            shared: dict = {}
            for i in order:
                name, cfg = todo[i]
                t = Trainer(cfg, out / name, checkpoint_every=checkpoint_every, device=device, force=force,
                            progress=progress and not trainers, shared=shared)
                shared = {"data": t.data, "teacher": shared.get("teacher") or t.teacher}
                trainers[name] = t
            _record(out, spec)
            runner = CohortRunner([trainers[n] for n, _ in todo], max_steps=max_steps,
                                  budget=TimeBudget(parse_duration(time_budget)))
            summaries.update(runner.run(signals))
        finally:
            for t in trainers.values():
                t.release()
    return {name: summaries[name] for name, _ in spec.members}


def _record(out: Path, spec: Cohort) -> None:
    """cohort.yaml in the cohort folder: what was asked, next to the members' own folders."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cohort.yaml", yaml.safe_dump(spec.source, sort_keys=False))


class CohortRunner:
    """Steps a cohort's Trainers on one stream: the members at the common step train on its batch."""

    def __init__(self, members: list, *, max_steps: int | None, budget: TimeBudget):
        self.members = members
        self.max_steps = max_steps
        self.budget = budget
        # The member whose teacher (if any) prepares every batch; all share data, mixup and teacher.
        self.feeder = next((m for m in members if m.teacher is not None), members[0])

    def run(self, signals: StopSignal) -> dict[str, dict]:
        from .seeding import rng_state, set_rng_state

        results: dict[str, dict] = {}
        live = []
        for m in self.members:
            done = m.begin(signals)
            if done is not None:
                results[m.cfg.name] = done
            else:
                live.append(m)
        feeder = self.feeder
        total = feeder.steps_total
        position = [min((m.step for m in live), default=total)]
        batches = feeder._micro_batches(lambda: position[0])
        stop_reason, step_seconds = None, 0.0
        accum = feeder.cfg.train.accum_steps
        try:
            while live and position[0] < total:
                stop_reason = self._should_stop(position[0], step_seconds, signals)
                if stop_reason:
                    break
                step = position[0]
                active = [m for m in live if m.step == step]
                t0 = time.monotonic()
                for micro in range(accum):
                    t_wait = time.monotonic()
                    batch = next(batches)
                    waited = time.monotonic() - t_wait
                    images, targets, t_logits, t_map = feeder.micro_inputs(batch, micro, step=step)
                    after_inputs = rng_state()  # where each member's solo run would be now
                    for m in active:
                        set_rng_state(after_inputs)
                        m._data_wait += waited
                        teacher_out = (t_logits, t_map) if m.teacher is not None else (None, None)
                        m.micro_step(images, targets, *teacher_out, micro)
                for m in active:
                    m.optimizer_step()
                step_seconds = time.monotonic() - t0
                for m in active:
                    m.after_step(step_seconds / len(active), signals)
                position[0] += 1
            for m in live:
                results[m.cfg.name] = m.finish(stop_reason, signals)
        finally:
            for m in live:
                m.runlog.close()
        if stop_reason:
            log.info("cohort stopped (%s) at step %d/%d; run the same command again to continue", stop_reason,
                     position[0], total)
        summary = {name: {k: s.get(k) for k in ("status", "steps_done", "top1", "test_top1", "state_digest")}
                   for name, s in results.items()}
        out = self.members[0].out.parent
        atomic_write_text(out / "cohort.json", json.dumps(summary, indent=2) + "\n")
        return results

    def _should_stop(self, step: int, step_seconds: float, signals: StopSignal) -> str | None:
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if signals.received is not None:
            return "signal"
        if self.budget.exhausted(step_seconds * 1.0):
            return "time_budget"
        return None
