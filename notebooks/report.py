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
# # Results from run folders
#
# Regenerates every table and figure from run folders (their `summary.json` and `metrics.jsonl`) and the
# published numbers shipped in `repro/published/`: the runs table, paper vs reproduction (mean ± std over
# seeds), the distillation grid (Direct and Effective Gain), training curves and teacher-vs-student bars.
# The same as `repro report --runs ... --out ...`.

# %% tags=["parameters"]
runs = ["runs"]  # run folders, or folders holding run folders
out_dir = "results"  # where report.md, tables/ and figures/ are written
title = None  # title of report.md
basis = "last"  # "last": the final model's accuracy; "best": the best evaluation during training

# %%
from IPython.display import Image, Markdown, display

from repro.logs import notebook_logging
from repro.report import build_report

notebook_logging()  # notes to stdout, problems to stderr: papermill.log keeps their levels apart

written = build_report(runs, out_dir, title=title, basis=basis)
print(f"report: {written['report']}")

# %% [markdown]
# ## Runs

# %%
display(Markdown(written["runs_md"].read_text()))

# %% [markdown]
# ## Paper vs reproduction

# %%
display(Markdown(written["paper_vs_reproduction_md"].read_text()))

# %% [markdown]
# ## Distillation

# %%
display(Markdown(written["distillation_grid_md"].read_text()))

# %% [markdown]
# ## Figures

# %%
for key in sorted(k for k in written if k.startswith(("curves_", "teacher_student_", "erf_"))):
    display(Image(filename=str(written[key])))
