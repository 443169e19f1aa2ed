"""Packed Kaggle sessions: two runs (or cohorts) of a plan side by side in one GPU T4 x2 session, one per GPU.

With `kaggle.pack: 2` in a plan, `repro kaggle prepare` pairs the plan's runs in the order written; each pair is
one kernel `<owner>/<slug_prefix>-<run1>-<run2>-s<k>` (the title joins the names with '+'), whose notebook
launches `repro train` (or `repro train --cohort`) once per run in child processes, with CUDA_VISIBLE_DEVICES
set to its GPU, each with the session's time budget, its log in <out_dir>/train.log and its own run folder
under the working directory (`repro.packing.train_side_by_side`). Session k > 1 attaches session k-1's output,
checks that each run (each cohort member) left a checkpoint there, and both runs resume. A pair's settings are
its runs' settings: sessions the larger count, sources the union; accelerator and time budget must agree.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ReproError
from ..plan import PlanRun, cohort_members

PACKED_NOTEBOOK = "train-packed.ipynb"
# Train-notebook parameters a packed run passes to its `repro train` child (the rest is fixed by packing).
_PACKED_KEYS = ("preset", "config_file", "cohort", "overrides", "out_dir", "max_steps", "checkpoint_every", "seed",
                "device", "resume_from", "nproc")


def pack_groups(runs: list[PlanRun], pack: int) -> list[list[PlanRun]]:
    """The runs in groups of `pack`, in plan order (the last group may be smaller)."""
    return [runs[i:i + pack] for i in range(0, len(runs), pack)]


def pack_label(group: list[PlanRun]) -> str:
    """The name of a packed kernel's 'run': its runs' names joined by '+' (slugified to '-' in the kernel id)."""
    return "+".join(r.name for r in group)


def pack_settings(group: list[PlanRun], settings: list, base):
    """The kernel settings of a pack: the larger session count and the union of sources of its runs; the
    accelerator and the time budget must be the same for all."""
    first = settings[0]
    for key in ("machine_shape", "time_budget", "working_dir", "code_dataset", "private",
                "docker_image_pinning_type"):
        values = {str(getattr(s, key)) for s in settings}
        if len(values) > 1:
            raise ReproError(f"the packed runs {', '.join(r.name for r in group)} share one session, but their "
                             f"kaggle.{key} differ ({', '.join(sorted(values))}); give them the same value (or "
                             "order the plan so that runs with the same settings are neighbours)")
    merged = dataclasses.replace(first, sessions=max(s.sessions for s in settings), runs={})
    for key in ("data_sources", "kernel_sources", "model_sources", "competition_sources", "keywords"):
        union: list = []
        for s in settings:
            union += [v for v in getattr(s, key) if v not in union]
        setattr(merged, key, union)
    merged.owner = base.owner
    return merged


def packed_run_parameters(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """One entry of the packed notebook's `runs` parameter: the run's name and its train-notebook parameters."""
    unknown = sorted(set(parameters) - set(_PACKED_KEYS) - {"time_budget"})
    if unknown:
        raise ReproError(f"run '{name}' would be packed, but a packed run passes only {', '.join(_PACKED_KEYS)} to "
                         f"`repro train`, not {', '.join(unknown)}; drop them or set kaggle.pack: 1")
    if parameters.get("nproc") not in (None, 1):
        raise ReproError(f"run '{name}' would be packed, but a packed run has one GPU: nproc must be 1, found "
                         f"{parameters['nproc']!r} (for DDP over both GPUs, set kaggle.pack: 1)")
    return {"name": name, **{k: v for k, v in parameters.items() if k in _PACKED_KEYS}}


def packed_session_source(label: str, runs: list[dict[str, Any]], session: int, sessions: int,
                          previous: str | None) -> str:
    """The cell after the parameters of a packed session: pre-flight, one GPU per run, the previous session's
    checkpoints of every run (every cohort member), `kaggle-input:` paths."""
    where = ", ".join(f"{r['name']} on GPU {i}" for i, r in enumerate(runs))
    lines = [f"# Session {session} of {sessions} of the packed runs '{label}' ({where}); added by "
             "`repro kaggle prepare`.",
             "from repro.kaggle.inputs import require_previous_cohort, require_previous_session, resolve_input_refs",
             "from repro.kaggle.preflight import format_preflight, preflight",
             "from repro.packing import check_gpus",
             "# Refuses a GPU this torch cannot run (e.g. a P100); probes in a child process, so CUDA stays",
             "# uninitialised here and each run's child process gets its own GPU.",
             "_preflight = preflight()",
             "print(format_preflight(_preflight))",
             "print(check_gpus(len(runs), _preflight['gpu_count']) or f\"{len(runs)} runs, one per GPU\")"]
    if session > 1:
        lines += ["for _run in runs:",
                  "    if _run.get('cohort') is not None:",
                  f"        require_previous_cohort(_run['name'], [m['name'] for m in _run['cohort']['members']], "
                  f"{session}, previous={previous!r}, out_dir=_run['out_dir'])",
                  "    else:",
                  f"        _found = require_previous_session(_run['name'], {session}, previous={previous!r}, "
                  "out_dir=_run['out_dir'])",
                  "        _run['resume_from'] = list(_run.get('resume_from') or []) + [str(_found)]"]
    lines.append("runs = resolve_input_refs(runs)")
    return "\n".join(lines) + "\n"


def packed_notebook(runs: list[dict[str, Any]], time_budget: str, *, label: str, session: int, sessions: int,
                    previous: str | None, setup_source: str, setup_tag: str, session_tag: str):
    """The notebook of a packed session (an nbformat notebook): install, parameters, session checks, the runs
    side by side, their results."""
    import nbformat

    from ..batch import bake_parameter_defaults

    v4 = nbformat.v4
    names = " and ".join(f"`{r['name']}`" + (f" (a cohort of {len(cohort_members(r['cohort']))})"
                                              if r.get("cohort") is not None else "") for r in runs)
    intro = v4.new_markdown_cell(
        f"# Packed session {session} of {sessions}: {names}\n\n"
        "Each run trains in its own `repro train` process on its own GPU (CUDA_VISIBLE_DEVICES), with the "
        "session's time budget, into its own run folder; its output goes to `<out_dir>/train.log`. Written by "
        "`repro kaggle prepare` from a plan with `kaggle.pack`; the next session resumes every run.")
    params = v4.new_code_cell(bake_parameter_defaults(
        "runs = []  # one mapping per run: its name, out_dir and train-notebook parameters (`repro train` arguments)\n"
        "time_budget = None  # the training budget of each run in this session\n",
        {"runs": runs, "time_budget": time_budget},
        header=f"# Baked by `repro kaggle prepare` (packed runs '{label}', session {session} of {sessions})."))
    params.metadata["tags"] = ["parameters"]
    check = v4.new_code_cell(packed_session_source(label, runs, session, sessions, previous))
    check.metadata["tags"] = [session_tag]
    setup = v4.new_code_cell(setup_source)
    setup.metadata["tags"] = [setup_tag]
    launch = v4.new_code_cell("from repro.packing import train_side_by_side\n\n"
                              "results = train_side_by_side(runs, time_budget=time_budget)")
    show = v4.new_code_cell("from IPython.display import display\n"
                            "from repro.report import run_overview\n\n"
                            "for _row in results:\n"
                            "    if _row['status']:\n"
                            "        print(_row['folder'])\n"
                            "        display(run_overview(_row['folder']))")
    nb = v4.new_notebook(cells=[setup, intro, params, check, launch, show])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb
