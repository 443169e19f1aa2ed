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
# # Effective receptive field
#
# The ERF of a run folder, a checkpoint of this package, or a released SLaK / L2S checkpoint, measured as in the
# SLaK code (`erf/visualize_erf.py`, `erf/analyze_erf.py`): the input gradient of the last-stage feature at the
# centre, averaged over the first images of a split, and the area ratio of the smallest centred square holding
# more than t of it. A released file records no architecture: give `model`, and point the data at ImageNet, e.g.
# `overrides = ["data.name=imagenet", "data.root=/data/imagenet", "data.img_size=224"]`.
# A thin layer over `repro.analysis.erf.run_erf`, the same as `repro erf`; `repro report` shows the result.

# %% tags=["parameters"]
source = "runs/quickstart/teacher"  # run folder, checkpoint file, or released weight file
model = None  # architecture of a checkpoint that does not record it, e.g. "slak_tiny" (`repro models`)
overrides = []  # data settings: strings in the key-equals-value form shown above
split = "test"  # "test" (ImageNet's val/ folder, as the released script reads) or "val"
images = 50  # the first this many images of the split
size = None  # square input side; None: 1024 for models trained at 224 px or more, 5x the training size below
use_ema = None  # None: the run's final model (EMA or raw, as its summary.json says); True: EMA; False: raw
device = None  # "cpu", "cuda" or None (CUDA when available)
out_dir = None  # folder for erf.json, erf.npy and erf.png; None: the run folder

# %%
import pandas as pd
from IPython.display import Image, display

from repro.analysis.erf import run_erf

record = run_erf(source, model_name=model, split=split, images=images, size=size, out_dir=out_dir,
                 data_overrides=overrides, use_ema=use_ema, device=device)
print(f"{record['model']} ({record['weights']} weights): {record['images']} {record['split']} images of "
      f"{record['dataset']} at {record['size']}x{record['size']} ({record['size_rule']}), "
      f"{record['skipped']} skipped; written to {record['files']['json'].parent}")

# %%
pd.DataFrame({"threshold": list(record["area_ratio"]), "side (px)": list(record["side"].values()),
              "area ratio (%)": [100 * r for r in record["area_ratio"].values()]})

# %%
display(Image(filename=str(record["files"]["heatmap"])))
