"""Run folders as records: summary.json (the one source of every number), config.yaml and metrics.jsonl."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import ReproError

# Config keys that never change what a run computes; they are left out when runs are grouped across seeds.
IGNORED_CONFIG_KEYS = {"name", "seed", "data.root", "data.num_workers", "data.eval_batch_size", "data.download",
                       "data.robustness_root", "train.keep_checkpoints", "distill.teacher"}

REQUIRED_SUMMARY_KEYS = ("status", "model", "dataset", "img_size", "epochs_total", "epochs_done")


@dataclass
class Run:
    """One run folder: its summary, its resolved config (flattened) and its evaluation history."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    _metrics: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The run folder's name (identifies the run; labels come from the model name, never from this)."""
        return self.path.name

    @property
    def complete(self) -> bool:
        """True when training reached its last epoch."""
        return self.summary.get("status") == "complete"

    @property
    def distill(self) -> dict[str, Any] | None:
        """The summary's distillation record, or None for a model trained alone."""
        return self.summary.get("distill") or None

    @property
    def method(self) -> str | None:
        """Distillation method (lower case), or None."""
        d = self.distill
        return str(d["method"]).lower() if d and d.get("method") else None

    @property
    def teacher(self) -> str | None:
        """Teacher model name, or None."""
        d = self.distill
        return d.get("teacher_model") if d else None

    @property
    def teacher_identity(self) -> str | None:
        """Which teacher weights the run distilled from: their sha256 as recorded, else the teacher's path.

        Students of one teacher model trained for different lengths (or from different checkpoints) differ
        here, so that they are never averaged together.
        """
        d = self.distill
        if not d:
            return None
        if d.get("teacher_sha256"):
            return f"sha256:{d['teacher_sha256']}"
        return f"path:{d['teacher_path']}" if d.get("teacher_path") else None

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl (empty when the file is missing)."""
        if self._metrics is None:
            self._metrics = read_metrics(self.path / "metrics.jsonl")
        return self._metrics

    @property
    def erf(self) -> dict[str, Any] | None:
        """The run's erf.json (written by `repro erf`), or None when it has none."""
        path = self.path / "erf.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReproError(f"{path} is not valid JSON ({exc}); run `repro erf {self.path}` again to rewrite "
                             "it") from None

    def recipe(self, *, with_distill: bool = True) -> tuple[tuple[str, str], ...]:
        """Config entries that change results (no seed, paths or bookkeeping), as a hashable tuple."""
        items = []
        for key, value in self.config.items():
            if key in IGNORED_CONFIG_KEYS or (not with_distill and key.startswith("distill.")):
                continue
            items.append((key, json.dumps(value, sort_keys=True)))
        return tuple(sorted(items))


def _flatten(d: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "model.kwargs":
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The evaluation rows of metrics.jsonl (per-step `train` and `sparse` records are left out); a truncated
    last line (a run killed mid-write) is skipped."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ReproError(f"{path}: line {i + 1} is not JSON; the file should hold one JSON object per line "
                             "as written by `repro train`") from None
        if row.get("kind", "eval") == "eval":
            rows.append(row)
    return rows


def read_run(path: str | Path) -> Run:
    """Load one run folder (it must hold summary.json)."""
    path = Path(path)
    summary_path = path / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except FileNotFoundError:
        raise ReproError(f"{path} is not a run folder: summary.json is missing; pass folders written by "
                         "`repro train`") from None
    except json.JSONDecodeError as exc:
        raise ReproError(f"{summary_path} is not valid JSON ({exc}); re-run or resume the run to rewrite it") \
            from None
    missing = [k for k in REQUIRED_SUMMARY_KEYS if k not in summary]
    if missing:
        raise ReproError(f"{summary_path} lacks {', '.join(missing)}; expected the summary format written by "
                         "`repro train`")
    config: dict[str, Any] = {}
    config_path = path / "config.yaml"
    if config_path.is_file():
        try:
            config = dict(_flatten(yaml.safe_load(config_path.read_text()) or {}))
        except yaml.YAMLError as exc:
            raise ReproError(f"{config_path} is not valid YAML ({exc}); restore it from the run") from None
    return Run(path=path, summary=summary, config=config)


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every folder holding summary.json at or below the given paths, sorted, without duplicates."""
    found: set[Path] = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ReproError(f"run folder or parent not found: {p}; pass folders written by `repro train` "
                             "(or a folder holding them)")
        # Resolved paths, so a folder given twice (relative and absolute) counts once.
        if (p / "summary.json").is_file():
            found.add(p.resolve())
        else:
            found.update(s.parent.resolve() for s in p.rglob("summary.json"))
    return sorted(found, key=lambda q: q.as_posix())


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Load every run folder found at or below `paths`; raises ReproError when there is none."""
    paths = list(paths)
    dirs = find_run_dirs(paths)
    if not dirs:
        raise ReproError(f"no run folders (with summary.json) under {', '.join(map(str, paths))}; "
                         "train something first (`repro train` or `repro quickstart`)")
    return [read_run(d) for d in dirs]


def drop_duplicates(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """Split runs into (kept, duplicates): a folder whose weights (state_digest) and step equal an earlier
    one's is a copy of the same run (e.g. a Kaggle session's output attached to the next session) and would
    otherwise be counted twice in a mean."""
    seen: set[tuple] = set()
    kept, duplicates = [], []
    for run in runs:
        digest = run.summary.get("state_digest")
        key = (digest, run.summary.get("steps_done"))
        if digest and key in seen:
            duplicates.append(run)
            continue
        seen.add(key)
        kept.append(run)
    return kept, duplicates
