"""Run plans: a list or grid of (notebook, parameters) pairs, shared by `repro batch` and `repro kaggle prepare`.

A plan is a YAML file in the format of PLAN_FORMAT below (which `repro batch --help` prints). Grid entries
expand to the cartesian product of `vary` (in the order written), each value passed as the notebook parameter
of the same name, so `vary` keys must be parameters the notebook declares (for config keys, list runs with
their `overrides` instead).

A run may be a cohort (`repro.train.cohort`): `cohort:` gives the cohort inline (a base preset or config, shared
overrides and members) or as the path of a cohort file, instead of `preset`/`overrides`. The train notebook
receives it as its `cohort` parameter, always as a mapping (a file is read here), and trains every member into
out_dir/<member>/, so the whole cohort travels inside the notebook (on Kaggle too, where only the notebook is
uploaded).
"""
from __future__ import annotations

import copy
import itertools
import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .errors import ReproError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# The train notebook's parameters, as its parameters cell declares them (a test keeps the two equal).
TRAIN_NOTEBOOK_PARAMETERS = ("preset", "config_file", "cohort", "overrides", "out_dir", "max_steps", "time_budget",
                             "checkpoint_every", "seed", "device", "resume_from", "nproc")
# Parameters a cohort run takes from its cohort instead (the plan's `defaults` for them do not apply to it).
COHORT_OWNS = ("preset", "config_file", "overrides")
COHORT_KEYS = ("preset", "config", "overrides", "members")

PLAN_FORMAT = """plan format (YAML):

  defaults:                       # merged into the parameters of every run whose notebook declares them
    device: cuda
  runs:                           # one notebook execution each
    - name: slak-t-cifar100       # unique (letters, digits, . _ -); the run folder is OUT/<name>
      notebook: train.ipynb       # train, evaluate or report (.ipynb) from notebooks/, or a path
      parameters:                 # names from the notebook's parameters cell
        preset: seed-slak-tiny-cifar100
        overrides: ["data.root=/data/cifar", "train.epochs=100"]   # config keys: `repro presets --keys`
    - name: students-from-slak-t  # a cohort: members OUT/<name>/<member>/, one data stream and teacher forward
      cohort:                     # instead of preset/overrides (or the path of a cohort file)
        preset: cifar100-distill
        overrides: ["distill.teacher=runs/slak-t-cifar100"]
        members:
          - {name: kd, overrides: [distill.method=kd]}
          - {name: alone, overrides: [distill.method=null]}
  grid:                           # one run per combination of the `vary` lists
    - name: "student-s{seed}"     # formatted from each combination
      notebook: train.ipynb
      parameters: {preset: cifar100-student}
      vary: {seed: [0, 1, 2]}     # notebook parameters only; config keys go in `overrides`
  kaggle: {owner: NAME, pack: 2}  # read by `repro kaggle prepare` only (see kaggle/README.md)

{parameters}
A parameter the notebook does not declare, a value of another type than the notebook's default, an unknown
preset or config key, and a cohort member differing from the others in a key the cohort shares are refused
before anything runs (papermill alone would inject an undeclared parameter and the notebook would ignore it).
Each run gets out_dir=OUT/<name> unless it sets out_dir. A cohort run's notebook defaults to train.ipynb; the
defaults' preset, config_file and overrides do not apply to it, its `seed` applies to every member.
""".replace("{parameters}", textwrap.fill("train.ipynb declares: " + ", ".join(TRAIN_NOTEBOOK_PARAMETERS) + ".",
                                       104))


@dataclass
class PlanRun:
    """One notebook execution: its unique name, the notebook and its parameters."""

    name: str
    notebook: str
    parameters: dict[str, Any] = field(default_factory=dict)
    from_defaults: frozenset[str] = frozenset()  # parameters set only by the plan's `defaults`

    @property
    def cohort(self) -> dict | None:
        """The run's cohort (a mapping), None for a single run."""
        return self.parameters.get("cohort")


@dataclass
class Plan:
    """A parsed plan: the expanded runs plus the raw `kaggle` section."""

    path: Path
    runs: list[PlanRun]
    kaggle: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ cohorts

def cohort_mapping(value: str | Path | dict, base_dir: str | Path | None = None, *, overrides: Iterable[str] = (),
                   seed: int | None = None) -> dict:
    """A cohort as a mapping: a cohort file (relative to `base_dir`) is read, a local relative `config` is made
    absolute, and `overrides` (then `seed`) are appended to the shared overrides, so they apply to every member."""
    where = "the cohort"
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise ReproError(f"cohort file {path} not found; expected a YAML file with a base (preset or config, "
                             "plus overrides) and members (each a name and its overrides)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ReproError(f"cohort file {path} is not valid YAML ({exc}); fix the file") from None
        base_dir, where = path.parent, f"cohort file {path}"
    else:
        data = value
    if not isinstance(data, dict):
        raise ReproError(f"{where}: expected a mapping with preset or config, overrides and members, found "
                         f"{type(data).__name__}")
    data = copy.deepcopy(data)
    config = data.get("config")
    if isinstance(config, str) and base_dir is not None and ":" not in config and not Path(config).is_absolute() \
            and (Path(base_dir) / config).is_file():
        data["config"] = str((Path(base_dir) / config).resolve())
    extra = list(overrides) + ([f"seed={seed}"] if seed is not None else [])
    if extra:
        shared = data.get("overrides") or []
        if not isinstance(shared, list):
            raise ReproError(f"{where}: overrides must be a list of 'key=value' strings, found {shared!r}")
        data["overrides"] = list(shared) + extra
    return data


def cohort_members(cohort: dict) -> list[str]:
    """The member names of a cohort mapping, in file order."""
    return [m["name"] for m in cohort.get("members") or [] if isinstance(m, dict) and isinstance(m.get("name"), str)]


def cohort_state(run_dir: str | Path, cohort: dict) -> str | None:
    """'complete' when every member's folder under run_dir holds a complete run, None otherwise."""
    names = cohort_members(cohort)
    for name in names:
        try:
            summary = json.loads((Path(run_dir) / name / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(summary, dict) or summary.get("status") != "complete":
            return None
    return "complete" if names else None


def check_cohort(parameters: dict[str, Any], deferred: Callable[[Any], bool] = lambda value: False):
    """The run's cohort resolved as the notebook will (its `overrides` and `seed` added to every member), refusing a
    member that differs in a shared key, naming it, and options a cohort does not take. Returns the
    `repro.train.cohort.Cohort`, or None when its base config is read only where the run executes (`deferred`,
    e.g. a Kaggle input) and is checked there."""
    from .train.cohort import load_cohort

    cohort = parameters.get("cohort")
    if cohort is None:
        return None
    if parameters.get("nproc") not in (None, 1):
        raise ReproError(f"a cohort runs in one process (its members step one after another), so nproc must be 1, "
                         f"found {parameters['nproc']!r}; to use two GPUs, pack two runs side by side "
                         "(kaggle.pack: 2, or repro batch --pack 2)")
    if parameters.get("resume_from"):
        raise ReproError("resume_from applies to single runs; a cohort resumes each member from its own folder "
                         "(on Kaggle also from the attached previous session), so leave it out")
    if isinstance(cohort, dict) and deferred(cohort.get("config")):
        return None
    overrides = parameters.get("overrides") or []
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise ReproError(f"overrides should be a list of 'key=value' strings, found {overrides!r}; fix the plan")
    return load_cohort(cohort_mapping(cohort, overrides=overrides, seed=parameters.get("seed")))


# --------------------------------------------------------------------------------------------- the plan

def _check_entry(entry: Any, where: str) -> dict:
    if isinstance(entry, dict) and "cohort" in entry and "notebook" not in entry:
        entry = {**entry, "notebook": "train.ipynb"}  # the notebook that trains cohorts
    if not isinstance(entry, dict) or "notebook" not in entry or "name" not in entry:
        raise ReproError(f"{where} should be a mapping with at least 'name' and 'notebook', found {entry!r}")
    unknown = sorted(set(entry) - {"name", "notebook", "parameters", "cohort", "vary"})
    if unknown:
        raise ReproError(f"{where} has unknown keys {unknown}; a run has name, notebook, parameters and optionally "
                         "cohort (grid entries also vary)")
    return entry


def _parameters(entry: dict, defaults: dict, where: str, base_dir: Path) -> tuple[dict, frozenset[str]]:
    """The run's parameters (the defaults, then its own) and the names set only by the defaults."""
    own = entry.get("parameters") or {}
    if not isinstance(own, dict):
        raise ReproError(f"{where}.parameters should be a mapping of notebook parameters, found {own!r}")
    if "cohort" not in entry:
        return {**defaults, **own}, frozenset(defaults) - set(own)
    if "cohort" in own:
        raise ReproError(f"{where}: give the cohort once, as the run's `cohort:` (not also in parameters)")
    clash = [k for k in COHORT_OWNS if k in own]
    if clash:
        raise ReproError(f"{where}: a cohort run takes {', '.join(clash)} from its cohort; move them into `cohort:` "
                         "(preset or config, and the shared overrides) or into a member's overrides")
    cohort = entry["cohort"]
    if not isinstance(cohort, (str, dict)):
        raise ReproError(f"{where}.cohort should be a mapping (preset or config, overrides, members) or the path of a "
                         f"cohort file, found {cohort!r}")
    mapping = cohort_mapping(cohort, base_dir)
    unknown = sorted(set(mapping) - set(COHORT_KEYS))
    if unknown:
        raise ReproError(f"{where}.cohort has unknown keys {unknown}; a cohort has preset or config, overrides and "
                         "members")
    if not cohort_members(mapping) or len(cohort_members(mapping)) != len(mapping.get("members") or []):
        raise ReproError(f"{where}.cohort.members should be a non-empty list of {{name, overrides}}, found "
                         f"{mapping.get('members')!r}")
    kept = {k: v for k, v in defaults.items() if k not in COHORT_OWNS}
    return {**kept, **own, "cohort": mapping}, frozenset(kept) - set(own)


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
        where = f"{path}: runs[{i}]"
        entry = _check_entry(entry, where)
        params, from_defaults = _parameters(entry, defaults, where, path.parent)
        runs.append(PlanRun(str(entry["name"]), str(entry["notebook"]), params, from_defaults))
    for i, entry in enumerate(data.get("grid") or []):
        where = f"{path}: grid[{i}]"
        entry = _check_entry(entry, where)
        vary = entry.get("vary") or {}
        if not isinstance(vary, dict) or not all(isinstance(v, list) and v for v in vary.values()):
            raise ReproError(f"{path}: grid[{i}].vary should map parameter names to non-empty lists")
        keys = list(vary)
        params, from_defaults = _parameters(entry, defaults, where, path.parent)
        for combo in itertools.product(*(vary[k] for k in keys)):
            values = dict(zip(keys, combo))
            try:
                name = str(entry["name"]).format(**values)
            except KeyError as exc:
                raise ReproError(f"{path}: grid[{i}] name '{entry['name']}' uses {exc}, "
                                 f"which is not in vary ({', '.join(keys)})") from None
            runs.append(PlanRun(name, str(entry["notebook"]), {**copy.deepcopy(params), **values},
                                from_defaults - set(values)))
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
