"""`repro kaggle prepare`: turn a plan into pushable Kaggle kernel folders, one per run and session.

Kaggle runs a committed notebook with papermill but injects no parameters, so each run's parameters are baked
into its copy of the notebook, as the defaults of its parameters cell. Two cells are added to the copy, the
source notebooks stay untouched: at the top, an offline install of this package from the attached code dataset
(the wheel made by `repro kaggle bundle`, found by searching /kaggle/input, never touching Kaggle's torch);
after the parameters, the pre-flight (refuses a GPU the installed torch cannot run, sets `nproc: auto` to the
GPU count), the check that session k > 1 finds session k-1's checkpoints (added to `resume_from`), and the
resolution of `kaggle-input:` references (see repro.kaggle.inputs).

Session k of run R is kernel `<owner>/<slug_prefix>-<R>-s<k>` (slugified); it attaches the output of session
k-1 through `kernel_sources` and runs the same notebook with the same out_dir under /kaggle/working, so the
engine resumes from the newest checkpoint it finds under /kaggle/input. The layout written is
`OUT/<run>/s<k>/{kernel-metadata.json, <notebook>.ipynb}`.

A cohort run's cohort is baked into the notebook like any parameter (as its `cohort` mapping: Kaggle uploads
the notebook only), and session k > 1 checks every member's checkpoints. With `kaggle.pack: 2` the runs are
paired into packed sessions, one run per GPU (`repro.kaggle.packed`).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..batch import (bake_parameter_defaults, check_parameter_types, check_parameters, check_run_config,
                     find_notebook, run_parameters)
from ..errors import ReproError
from ..plan import Plan, PlanRun, cohort_members, load_plan
from .metadata import (GPU_SHAPES, KERNEL_METADATA_FILE, TPU_SHAPES, shape_problem, slugify,
                       validate_kernel_metadata, write_metadata)
from .official import SESSION_FILE
from .sessions import DEFAULT_SESSION_BUDGET, session_budget_seconds

WHEEL_PREFIX = "repro_lkt-"
DISTRIBUTION = "repro-lkt"
DEFAULT_CODE_DATASET = "repro-lkt-code"
# Notebook parameters that `prepare` sets for every run on Kaggle.
OUT_DIR_PARAM = "out_dir"
TIME_BUDGET_PARAM = "time_budget"
SETUP_TAG = "repro-kaggle-setup"
SESSION_TAG = "repro-kaggle-session"


@dataclass
class KaggleSettings:
    """The plan's `kaggle:` section (see kaggle/README.md); `runs` holds per-run overrides of the same keys.

    Args:
        owner: Kaggle user name owning the kernels and datasets (or --owner, or $KAGGLE_USERNAME).
        slug_prefix: kernels are named `<slug_prefix>-<run>-s<session>`.
        machine_shape: accelerator id (NvidiaTeslaT4 = GPU T4 x2, NvidiaL4X1, ...); null for CPU.
        enable_gpu: defaults to whether machine_shape is a GPU.
        code_dataset: the dataset made by `repro kaggle bundle` ('slug' under owner, or 'owner/slug').
        data_sources: datasets holding the data ('owner/slug' or 'owner/slug/version'; '{owner}' is replaced).
        kernel_sources: other notebooks whose outputs every session needs (e.g. a teacher run).
        model_sources, competition_sources: passed through to kernel-metadata.json.
        sessions: chained sessions per run (see `repro kaggle plan-sessions`).
        time_budget: training budget of each session, under Kaggle's ~12 h limit.
        working_dir: where runs write on Kaggle; out_dir = <working_dir>/<run name>.
        private: keep the kernels private.
        docker_image_pinning_type: original or latest; null: original for a chain of several sessions (which
            `repro kaggle push` also runs on its first session's image), Kaggle's default otherwise.
        keywords: kernel tags.
        parameters: notebook parameters added on Kaggle only (after the plan's own).
        pack: runs side by side in one session, one per GPU (2 on GPU T4 x2; see repro.kaggle.packed).
    """

    owner: str | None = None
    slug_prefix: str = "repro"
    machine_shape: str | None = "NvidiaTeslaT4"
    enable_gpu: bool | None = None
    code_dataset: str = DEFAULT_CODE_DATASET
    data_sources: list = field(default_factory=list)
    kernel_sources: list = field(default_factory=list)
    model_sources: list = field(default_factory=list)
    competition_sources: list = field(default_factory=list)
    sessions: int = 1
    time_budget: str = DEFAULT_SESSION_BUDGET
    working_dir: str = "/kaggle/working"
    private: bool = True
    docker_image_pinning_type: str | None = None
    keywords: list = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    pack: int = 1
    runs: dict = field(default_factory=dict)

    def for_run(self, name: str) -> "KaggleSettings":
        """These settings with the run's overrides from `runs` applied."""
        override = self.runs.get(name) or {}
        merged = {k: v for k, v in dataclasses.asdict(self).items() if k != "runs"}
        if "machine_shape" in override and "enable_gpu" not in override:
            merged["enable_gpu"] = None  # re-derived from the run's own accelerator
        return parse_settings({**merged, **override}, f"kaggle.runs.{name}")


# Expected types of the section's keys; the ones in _NULLABLE may also be null.
_TYPES = {"owner": str, "slug_prefix": str, "machine_shape": str, "enable_gpu": bool, "code_dataset": str,
          "data_sources": list, "kernel_sources": list, "model_sources": list, "competition_sources": list,
          "sessions": int, "time_budget": (str, int, float), "working_dir": str, "private": bool,
          "docker_image_pinning_type": str, "keywords": list, "parameters": dict, "pack": int, "runs": dict}
_NULLABLE = {"owner", "machine_shape", "enable_gpu", "docker_image_pinning_type"}


def parse_settings(section: dict, where: str = "kaggle") -> KaggleSettings:
    """Check a plan's `kaggle:` mapping (names and types) and return KaggleSettings."""
    if not isinstance(section, dict):
        raise ReproError(f"the plan's {where} section should be a mapping, found {section!r}")
    for key, value in section.items():
        if key not in _TYPES:
            close = difflib.get_close_matches(key, list(_TYPES), n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(_TYPES)}"
            raise ReproError(f"unknown key '{key}' in the plan's {where} section{hint}")
        if value is None and key in _NULLABLE:
            continue
        expected = _TYPES[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected in (int, (str, int, float))):
            name = expected.__name__ if isinstance(expected, type) else "a duration like 11h15m"
            raise ReproError(f"{where}.{key} expects {name}, found {value!r}; fix the plan")
    settings = KaggleSettings(**section)
    settings.time_budget = str(settings.time_budget)
    if settings.sessions < 1:
        raise ReproError(f"{where}.sessions should be 1 or more, found {settings.sessions}")
    if settings.pack < 1:
        raise ReproError(f"{where}.pack should be 1 or more (runs side by side, one per GPU), found {settings.pack}")
    if settings.pack > 1 and settings.machine_shape in (None, "NvidiaL4X1"):
        raise ReproError(f"{where}.pack {settings.pack} puts one run on each GPU, but machine_shape "
                         f"{settings.machine_shape} has {'none' if settings.machine_shape is None else 'one'}; "
                         "use NvidiaTeslaT4 (GPU T4 x2) or set pack: 1")
    session_budget_seconds(settings.time_budget, flag=f"{where}.time_budget")
    shape = settings.machine_shape
    if shape is not None and shape not in GPU_SHAPES + TPU_SHAPES:
        raise ReproError(f"{where}.machine_shape {shape_problem(shape)}; or null for CPU")
    if settings.enable_gpu is None:
        settings.enable_gpu = shape in GPU_SHAPES
    for name, override in settings.runs.items():
        if not isinstance(override, dict) or "runs" in override or "pack" in override:
            raise ReproError(f"{where}.runs.{name} should be a mapping of kaggle keys (not 'runs' or 'pack', which "
                             f"apply to the whole plan), found {override!r}")
    return settings


def install_cell_source(code_dataset_slug: str) -> str:
    """The notebook cell installing this package offline from the wheel in an attached dataset."""
    return f'''# Install {DISTRIBUTION} offline from the attached dataset "{code_dataset_slug}" (`repro kaggle bundle`).
# Mount points vary (/kaggle/input/<slug>/, /kaggle/input/datasets/<owner>/<slug>/, ...): look a few levels
# deep. pip takes every requirement from what the image has, so Kaggle's own torch is never touched.
import glob, importlib, importlib.util, os, subprocess, sys
_input = os.path.join(os.environ.get("REPRO_KAGGLE_ROOT", "/kaggle"), "input")
_levels = [os.path.join(_input, *["*"] * depth) for depth in range(4)]
_pattern = "{WHEEL_PREFIX}*.whl"
_wheels = [w for lv in _levels for w in sorted(glob.glob(os.path.join(lv, "{code_dataset_slug}", _pattern)))] \\
    or [w for lv in _levels for w in sorted(glob.glob(os.path.join(lv, _pattern)))]
if _wheels:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                           "--find-links", os.path.dirname(_wheels[0]), "{DISTRIBUTION}"])
    importlib.invalidate_caches()
elif importlib.util.find_spec("repro") is None:
    raise RuntimeError("{DISTRIBUTION} is not installed and no {WHEEL_PREFIX}*.whl was found under " + _input
                       + ": attach the dataset '{code_dataset_slug}' built by `repro kaggle bundle`")
import repro
print("repro", repro.__version__, "from", os.path.dirname(repro.__file__))
'''


def session_cell_source(run: str, session: int, sessions: int, previous: str | None, *,
                        input_refs: list[str] = (), auto_nproc: bool = False, resume_param: bool = False,
                        members: list[str] | None = None) -> str:
    """The cell after the parameters: pre-flight, previous session's output (of every member of a cohort run,
    `members`), `kaggle-input:` paths."""
    lines = [f"# Session {session} of {sessions} of run '{run}' (added by `repro kaggle prepare`).",
             "from repro.kaggle.inputs import require_previous_cohort, require_previous_session, resolve_input_refs"
             if members else "from repro.kaggle.inputs import require_previous_session, resolve_input_refs",
             "from repro.kaggle.preflight import format_preflight, preflight",
             "# Refuses a GPU this torch cannot run (e.g. a P100); probes in a child process, so CUDA stays",
             "# uninitialised here for a torchrun launch.",
             "_preflight = preflight()",
             "print(format_preflight(_preflight))"]
    if auto_nproc:
        lines.append('nproc = _preflight["world_size"]  # nproc "auto": one process per visible GPU')
    if session > 1 and members:
        # Each member's folder receives its history; the engine finds its checkpoints among the inputs.
        lines.append(f"require_previous_cohort({run!r}, {members!r}, {session}, previous={previous!r}, "
                     f"out_dir={OUT_DIR_PARAM})")
    elif session > 1:
        # The notebook's out_dir parameter receives the run's history (config.yaml, metrics.jsonl).
        found = f"require_previous_session({run!r}, {session}, previous={previous!r}, out_dir={OUT_DIR_PARAM})"
        lines.append(f"resume_from = list(resume_from) + [str({found})]" if resume_param else found)
    lines += [f"{name} = resolve_input_refs({name})" for name in input_refs]
    return "\n".join(lines) + "\n"


def _sources(refs: list, owner: str, where: str) -> list[str]:
    out = []
    for ref in refs:
        if not isinstance(ref, str):
            raise ReproError(f"{where} should list 'owner/slug' strings, found {ref!r}")
        ref = ref.replace("{owner}", owner)
        out.append(ref if "/" in ref else f"{owner}/{ref}")
    return out


def kernel_slug(settings: KaggleSettings, run: str, session: int) -> str:
    """The kernel slug of a run's session, e.g. repro-slak-tiny-cifar100-s2."""
    return slugify(kernel_title(settings, run, session))


def kernel_title(settings: KaggleSettings, run: str, session: int) -> str:
    """A title that slugifies to the kernel slug (Kaggle derives the URL from the title)."""
    return f"{settings.slug_prefix} {run} s{session}".strip()


def kernel_metadata(settings: KaggleSettings, run: str, session: int, code_file: str) -> dict:
    """kernel-metadata.json for session `session` of `run`."""
    owner = settings.owner
    code = settings.code_dataset if "/" in settings.code_dataset else f"{owner}/{settings.code_dataset}"
    kernel_sources = _sources(settings.kernel_sources, owner, "kaggle.kernel_sources")
    if session > 1:
        kernel_sources.append(f"{owner}/{kernel_slug(settings, run, session - 1)}")
    meta = {
        "id": f"{owner}/{kernel_slug(settings, run, session)}",
        "title": kernel_title(settings, run, session),
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": settings.private,
        "enable_gpu": settings.enable_gpu,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": [code, *_sources(settings.data_sources, owner, "kaggle.data_sources")],
        "competition_sources": list(settings.competition_sources),
        "kernel_sources": kernel_sources,
        "model_sources": list(settings.model_sources),
        "keywords": list(settings.keywords),
    }
    if settings.machine_shape:
        meta["machine_shape"] = settings.machine_shape
    # A chain keeps the image it started on: new versions of a kernel run on its original image.
    pinning = settings.docker_image_pinning_type or ("original" if settings.sessions > 1 else None)
    if pinning:
        meta["docker_image_pinning_type"] = pinning
    return meta


def _kaggle_parameters(run: PlanRun, settings: KaggleSettings, plan_dir: Path | None = None) -> dict[str, Any]:
    params = {**run_parameters(run, plan_dir), **settings.parameters}
    params[OUT_DIR_PARAM] = f"{settings.working_dir.rstrip('/')}/{run.name}"
    params[TIME_BUDGET_PARAM] = settings.time_budget
    return params


def _has_input_ref(value: Any) -> bool:
    from .inputs import INPUT_REF
    if isinstance(value, (list, tuple)):
        return any(_has_input_ref(v) for v in value)
    if isinstance(value, dict):
        return any(_has_input_ref(v) for v in value.values())
    return isinstance(value, str) and INPUT_REF in value


def _papermill():
    try:
        import nbformat
        import papermill
    except ImportError:
        raise ReproError("`repro kaggle prepare` needs papermill and nbformat: "
                         "pip install 'repro-lkt[notebooks]'") from None
    logging.getLogger("papermill").setLevel(logging.WARNING)  # no per-notebook "Input Notebook" lines
    return nbformat, papermill


def bake_notebook(source: Path, dest: Path, parameters: dict[str, Any], *, code_dataset_slug: str,
                  run: str, session: int, sessions: int, previous: str | None) -> None:
    """Write `source` with `parameters` baked in as the defaults of its parameters cell, and the Kaggle cells.

    The values become the parameters cell's own defaults (no injected-parameters cell), so executing the
    kernel's notebook with `papermill -p NAME VALUE` changes only the names given; the other baked values stay.
    """
    nbformat, _ = _papermill()
    declared = check_parameters(source, parameters)
    nb = nbformat.read(str(source), as_version=4)
    position = max(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells[position].source = bake_parameter_defaults(
        nb.cells[position].source, parameters,
        header=f"# Baked by `repro kaggle prepare` (run '{run}', session {session} of {sessions}); "
               "`papermill -p NAME VALUE` changes one, keeps the rest.")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    setup = nbformat.v4.new_code_cell(install_cell_source(code_dataset_slug))
    setup.metadata["tags"] = [SETUP_TAG]
    check = nbformat.v4.new_code_cell(session_cell_source(
        run, session, sessions, previous, input_refs=[k for k, v in parameters.items() if _has_input_ref(v)],
        auto_nproc=parameters.get("nproc") == "auto", resume_param="resume_from" in declared,
        members=cohort_members(parameters["cohort"]) if parameters.get("cohort") is not None else None))
    check.metadata["tags"] = [SESSION_TAG]
    nb.cells.insert(position + 1, check)  # papermill puts any injected parameters between the two
    nb.cells.insert(0, setup)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    nbformat.write(nb, str(dest))


def prepare_plan(plan: str | Path | Plan, out: str | Path, *, owner: str | None = None,
                 runs: list[str] | None = None) -> list[Path]:
    """Write one kernel folder per run and session under `out` and return them (sessions in push order).

    `owner` overrides the plan's kaggle.owner; `runs` limits the output to those run names (with kaggle.pack, to
    the packs holding them: runs are grouped in plan order, see `repro.kaggle.packed`). Every kernel's metadata
    is validated before anything is written. `out/kernels-<plan name>.json` lists the kernels.
    """
    from .packed import PACKED_NOTEBOOK, pack_groups, pack_label, pack_settings, packed_run_parameters

    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    base = parse_settings(plan.kaggle)
    base.owner = owner or base.owner or os.environ.get("KAGGLE_USERNAME")
    if not base.owner:
        raise ReproError(f"no Kaggle owner: set kaggle.owner in {plan.path}, pass --owner YOUR_KAGGLE_NAME "
                         "or set KAGGLE_USERNAME")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", base.owner):
        raise ReproError(f"Kaggle owner '{base.owner}' is not a user name (letters, digits, '-', '_' or '.', no "
                         "spaces or slashes); pass your user name as shown in your profile URL")
    names = [r.name for r in plan.runs]
    for label, asked in (("--run", runs or []), ("kaggle.runs", list(base.runs))):
        missing = sorted(set(asked) - set(names))
        if missing:
            raise ReproError(f"{label} names {', '.join(missing)}, which are not runs of {plan.path}; "
                             f"it has {', '.join(names)}")
    plan_dir = Path(plan.path).parent
    jobs, ids = [], {}
    # A unit is one kernel chain: a run, or (kaggle.pack > 1) a group of runs side by side.
    for group in pack_groups(plan.runs, base.pack):
        if runs and not any(run.name in runs for run in group):
            continue
        checked = []
        for run in group:
            settings = base.for_run(run.name)
            settings.owner = base.owner
            source = find_notebook(run.notebook, plan_dir)
            parameters = _kaggle_parameters(run, settings, plan_dir)
            declared = check_parameters(source, parameters)
            try:
                check_run_config(parameters, declared, plan_dir, deferred=_has_input_ref)  # a cohort's members too
                check_parameter_types(parameters, declared, source, also_accepted={"nproc": ("auto",)})
                if len(group) > 1:
                    packed_run_parameters(run.name, parameters)
            except ReproError as exc:
                raise ReproError(f"run '{run.name}' would fail on Kaggle: {exc}") from None
            checked.append((run, settings, source))
        if len(group) == 1:
            run, settings, source = checked[0]
            label, code_file = run.name, source.name
        else:
            settings = pack_settings(group, [c[1] for c in checked], base)
            label, code_file, source = pack_label(group), PACKED_NOTEBOOK, None
        for session in range(1, settings.sessions + 1):
            meta = kernel_metadata(settings, label, session, code_file)
            problems = validate_kernel_metadata(meta)
            if problems:
                raise ReproError(f"run '{label}' session {session} would get invalid kernel metadata "
                                 "(fix the plan's kaggle section):\n  - " + "\n  - ".join(problems))
            if meta["id"] in ids:
                raise ReproError(f"runs '{ids[meta['id']]}' and '{label}' both map to kernel {meta['id']}; "
                                 "rename one of them in the plan")
            ids[meta["id"]] = label
            jobs.append((label, group, settings, source, session, meta))
    from ..paths import ensure_writable_dir
    out = ensure_writable_dir(out, "the kernel folder (--out)")
    written, index = [], []
    for label, group, settings, source, session, meta in jobs:
        folder = out / label / f"s{session}"
        folder.mkdir(parents=True, exist_ok=True)
        previous = meta["kernel_sources"][-1] if session > 1 else None
        if source is not None:
            bake_notebook(source, folder / source.name, _kaggle_parameters(group[0], settings, plan_dir),
                          code_dataset_slug=settings.code_dataset.split("/")[-1], run=label, session=session,
                          sessions=settings.sessions, previous=previous)
        else:
            _write_packed(folder / meta["code_file"], group, settings, base, plan_dir, label=label, session=session,
                          previous=previous)
        write_metadata(folder, meta, "kernel")
        # What `repro kaggle push` needs to pin the chain: which source is the code, which the previous session.
        code = settings.code_dataset if "/" in settings.code_dataset else f"{settings.owner}/{settings.code_dataset}"
        record = {"run": label, "session": session, "sessions": settings.sessions, "kernel": meta["id"],
                  "code_dataset": code, "previous": previous}
        if len(group) > 1:
            record["runs"] = [r.name for r in group]
        (folder / SESSION_FILE).write_text(json.dumps(record, indent=2) + "\n")
        written.append(folder)
        index.append({"run": label, "session": session, "sessions": settings.sessions, "id": meta["id"],
                      "folder": str(folder), **({"runs": record["runs"]} if len(group) > 1 else {})})
        if session == settings.sessions:
            # Session folders left by an earlier prepare with more sessions would chain to nothing.
            for stale in (out / label).glob("s*"):
                if stale.name[1:].isdigit() and int(stale.name[1:]) > session \
                        and (stale / KERNEL_METADATA_FILE).is_file():
                    shutil.rmtree(stale)
    (out / f"kernels-{Path(plan.path).stem}.json").write_text(json.dumps(index, indent=2) + "\n")
    return written


def _write_packed(dest: Path, group: list[PlanRun], settings: KaggleSettings, base: KaggleSettings, plan_dir: Path,
                  *, label: str, session: int, previous: str | None) -> None:
    """The notebook of a packed session: each run's parameters baked into its `runs` entry."""
    from .packed import packed_notebook, packed_run_parameters

    nbformat, _ = _papermill()
    runs = []
    for run in group:
        params = _kaggle_parameters(run, base.for_run(run.name), plan_dir)
        params[OUT_DIR_PARAM] = f"{settings.working_dir.rstrip('/')}/{run.name}"
        runs.append(packed_run_parameters(run.name, params))
    nb = packed_notebook(runs, settings.time_budget, label=label, session=session, sessions=settings.sessions,
                         previous=previous, setup_source=install_cell_source(settings.code_dataset.split("/")[-1]),
                         setup_tag=SETUP_TAG, session_tag=SESSION_TAG)
    nbformat.write(nb, str(dest))
