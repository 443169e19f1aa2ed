# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Train a teacher or a student, alone or by distillation
#
# One notebook for every training run of the reproduction: a SLaK teacher, a ConvNeXt student trained alone,
# or a student distilled from a teacher (a preset or an override sets `distill.method` and `distill.teacher`).
# It is a thin layer over `repro.train.train`; `repro batch`, `repro quickstart` and `repro kaggle` execute it
# with papermill, filling in the parameters below.
#
# Executing it again with the same `out_dir` resumes the run from its newest checkpoint; a `time_budget`
# (e.g. `"11h30m"` in a 12-hour Kaggle session) stops it cleanly in time, and the next session continues.
# With `nproc` > 1 the engine runs under `torchrun` in a child process (DDP, e.g. Kaggle's two T4s), so the
# notebook's own process never initialises CUDA.
#
# Overrides are `"key=value"` strings, e.g. `overrides = ["train.epochs=30", "distill.teacher=runs/teacher"]`
# (`repro presets --keys` lists the keys).
#
# With `cohort` (a cohort file, or its mapping: a shared preset or config and overrides, and members each with a
# name and overrides), every member trains into `out_dir/<name>/` on one data stream and one teacher forward,
# each bit-identical to its own single run (`repro.train.cohort`); `preset` and `config_file` are then ignored,
# and `overrides` and `seed` apply to every member.

# %% tags=["parameters"]
preset = "quickstart-teacher"  # a shipped preset (`repro presets`); ignored when config_file is given
config_file = None  # a YAML config file instead of a preset
cohort = None  # a cohort file or mapping: its members train side by side into out_dir/<name>/
overrides = []  # config overrides: strings in the key-equals-value form shown above
out_dir = "runs/train"  # the run folder; the same folder resumes
max_steps = None  # stop after this many optimizer steps in total (resumable)
time_budget = None  # wall-clock budget of this session: seconds or "11h30m", "45m", "90s"
checkpoint_every = None  # save every N optimizer steps (default: at an epoch end, 10 min or more after the last save)
seed = None  # run seed; None keeps the preset's
device = None  # "cpu", "cuda" or None (CUDA when available)
resume_from = []  # extra read-only run folders to resume from (e.g. a previous session's output)
nproc = 1  # processes (GPUs) to train with; > 1 launches torchrun in a child process

# %%
from IPython.display import Image, display

from repro.config import load_config
from repro.logs import notebook_logging
from repro.report import run_curves, run_overview

notebook_logging()  # progress to stdout, problems to stderr: papermill.log keeps their levels apart
if cohort is not None:
    from repro.plan import check_cohort

    spec = check_cohort(dict(cohort=cohort, overrides=overrides, seed=seed, nproc=nproc, resume_from=resume_from))
    for name, member in spec.members:
        print(f"# member {name}\n{member.to_yaml()}")
else:
    preset = None if config_file else preset
    cfg = load_config(preset, config_file, list(overrides) + ([f"seed={seed}"] if seed is not None else []))
    print(cfg.to_yaml())

# %%
options = dict(max_steps=max_steps, time_budget=time_budget, checkpoint_every=checkpoint_every, device=device,
               resume_from=list(resume_from))
if cohort is not None:
    from repro.train.cohort import train_cohort

    options.pop("resume_from")  # each member resumes from its own folder (on Kaggle also from the inputs)
    summaries = train_cohort(spec, out_dir, **options)
    runs = [f"{out_dir}/{name}" for name in summaries]
    for name, summary in summaries.items():
        print(f"{name}: {summary['status']}: {summary['steps_done']}/{summary['steps_total']} steps")
elif nproc > 1:
    from repro.batch import train_subprocess

    summary = train_subprocess(nproc=nproc, preset=preset, config_file=config_file, overrides=overrides,
                               out_dir=out_dir, seed=seed, **options)
else:
    from repro.train import train

    summary = train(cfg, out_dir, **options)
if cohort is None:
    runs = [out_dir]
    print(f"{summary['status']}: {summary['steps_done']}/{summary['steps_total']} steps in {out_dir}")

# %% [markdown]
# ## Summary and training curves

# %%
for run in runs:
    display(run_overview(run))

# %%
for run in runs:
    curves = run_curves(run)
    if curves:
        display(Image(filename=str(curves)))
