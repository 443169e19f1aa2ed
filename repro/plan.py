"""Run plans: a list or grid of (notebook, parameters) pairs, shared by `repro batch` and `repro kaggle prepare`.

A plan is a YAML file in the format of PLAN_FORMAT below (which `repro batch --help` prints). Grid entries
expand to the cartesian product of `vary` (in the order written), each value passed as the notebook parameter
of the same name, so `vary` keys must be parameters the notebook declares (for config keys, list runs with
their `overrides` instead).
"""
from __future__ import annotations

import itertools
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ReproError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# The train notebook's parameters, as its parameters cell declares them (a test keeps the two equal).
TRAIN_NOTEBOOK_PARAMETERS = ("preset", "config_file", "overrides", "out_dir", "max_steps", "time_budget",
                             "checkpoint_every", "seed", "device", "resume_from", "nproc")

PLAN_FORMAT = """plan format (YAML):

  defaults:                       # merged into the parameters of every run whose notebook declares them
    device: cuda
  runs:                           # one notebook execution each
    - name: slak-t-cifar100       # unique (letters, digits, . _ -); the run folder is OUT/<name>
      notebook: train.ipynb       # train, evaluate or report (.ipynb) from notebooks/, or a path
      parameters:                 # names from the notebook's parameters cell
        preset: seed-slak-tiny-cifar100
        overrides: ["data.root=/data/cifar", "train.epochs=100"]   # config keys: `repro presets --keys`
  grid:                           # one run per combination of the `vary` lists
    - name: "student-s{seed}"     # formatted from each combination
      notebook: train.ipynb
      parameters: {preset: cifar100-student}
      vary: {seed: [0, 1, 2]}     # notebook parameters only; config keys go in `overrides`
  kaggle: {owner: NAME}           # read by `repro kaggle prepare` only (see kaggle/README.md)

{parameters}
A parameter the notebook does not declare, a value of another type than the notebook's default, and an
unknown preset or config key are refused before anything runs (papermill alone would inject an undeclared
parameter and the notebook would ignore it). Each run gets out_dir=OUT/<name> unless it sets out_dir.
""".replace("{parameters}", textwrap.fill("train.ipynb declares: " + ", ".join(TRAIN_NOTEBOOK_PARAMETERS) + ".",
                                       104))


@dataclass
class PlanRun:
    """One notebook execution: its unique name, the notebook and its parameters."""

    name: str
    notebook: str
    parameters: dict[str, Any] = field(default_factory=dict)
    from_defaults: frozenset[str] = frozenset()  # parameters set only by the plan's `defaults`


@dataclass
class Plan:
    """A parsed plan: the expanded runs plus the raw `kaggle` section."""

    path: Path
    runs: list[PlanRun]
    kaggle: dict[str, Any] = field(default_factory=dict)


def _check_entry(entry: Any, where: str) -> dict:
    if not isinstance(entry, dict) or "notebook" not in entry or "name" not in entry:
        raise ReproError(f"{where} should be a mapping with at least 'name' and 'notebook', found {entry!r}")
    return entry


def load_plan(path: str | Path) -> Plan:
    """Read and expand a plan file; names must be unique and usable as folder names."""
    path = Path(path)
    if not path.is_file():
        raise ReproError(f"plan file not found: {path}; pass the path of a YAML plan (see kaggle/plans/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReproError(f"plan {path} is not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ReproError(f"plan {path} should be a mapping with 'runs' and/or 'grid', found {type(data).__name__}")
    unknown = set(data) - {"defaults", "runs", "grid", "kaggle"}
    if unknown:
        raise ReproError(f"plan {path} has unknown sections {sorted(unknown)}; "
                         "expected defaults, runs, grid, kaggle")
    defaults = data.get("defaults") or {}
    runs: list[PlanRun] = []
    for i, entry in enumerate(data.get("runs") or []):
        entry = _check_entry(entry, f"{path}: runs[{i}]")
        params = {**defaults, **(entry.get("parameters") or {})}
        runs.append(PlanRun(str(entry["name"]), str(entry["notebook"]), params,
                            frozenset(defaults) - set(entry.get("parameters") or {})))
    for i, entry in enumerate(data.get("grid") or []):
        entry = _check_entry(entry, f"{path}: grid[{i}]")
        vary = entry.get("vary") or {}
        if not isinstance(vary, dict) or not all(isinstance(v, list) and v for v in vary.values()):
            raise ReproError(f"{path}: grid[{i}].vary should map parameter names to non-empty lists")
        keys = list(vary)
        for combo in itertools.product(*(vary[k] for k in keys)):
            values = dict(zip(keys, combo))
            try:
                name = str(entry["name"]).format(**values)
            except KeyError as exc:
                raise ReproError(f"{path}: grid[{i}] name '{entry['name']}' uses {exc}, "
                                 f"which is not in vary ({', '.join(keys)})") from None
            params = {**defaults, **(entry.get("parameters") or {}), **values}
            runs.append(PlanRun(name, str(entry["notebook"]), params,
                                frozenset(defaults) - set(entry.get("parameters") or {}) - set(values)))
    if not runs:
        raise ReproError(f"plan {path} lists no runs; add a 'runs' or 'grid' section")
    seen: set[str] = set()
    for run in runs:
        if not _NAME.match(run.name):
            raise ReproError(f"plan {path}: run name '{run.name}' should use letters, digits, '.', '_' or '-'")
        if run.name in seen:
            raise ReproError(f"plan {path}: run name '{run.name}' appears twice; names must be unique")
        seen.add(run.name)
    return Plan(path, runs, data.get("kaggle") or {})
