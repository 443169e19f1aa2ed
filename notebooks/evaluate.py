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
# # Evaluate a checkpoint
#
# Top-1, top-5 and loss of a run folder, a checkpoint of this package, or a released SLaK / L2S checkpoint
# (`{'model': state_dict}`, which records no architecture: give `model`, and point the data at ImageNet, e.g.
# `overrides = ["data.name=imagenet", "data.root=/data/imagenet", "data.img_size=224"]`).
# A thin layer over `repro.train.evaluate`; the result is also written to `out_dir` when one is given.

# %% tags=["parameters"]
checkpoint = "runs/quickstart/teacher"  # run folder, checkpoint file, or released weight file
model = None  # architecture of a checkpoint that does not record it, e.g. "slak_tiny" (`repro models`)
overrides = []  # data settings: strings in the key-equals-value form shown above
split = "test"  # "test", "val", or "robustness" (every ImageNet-A/-R/-Sketch folder under data.robustness_root)
use_ema = None  # None: the run's final model (EMA or raw, as its summary.json says); True: EMA; False: raw
deploy = False  # evaluate the re-parameterized (deploy) form
batch_size = None  # evaluation batch size; None keeps the config's
device = None  # "cpu", "cuda" or None (CUDA when available)
out_dir = None  # folder for evaluation.json and evaluation.csv; None writes nothing

# %%
import json
from pathlib import Path

import pandas as pd

from repro.logs import notebook_logging

notebook_logging()  # progress to stdout, problems to stderr; before timm's import, which would warn about tqdm
from repro.train import evaluate  # noqa: E402

result = evaluate(checkpoint, model_name=model, data_overrides=overrides, device=device, split=split,
                  use_ema=use_ema, batch_size=batch_size, deploy=deploy)

# %%
scores = result["sets"] if split == "robustness" else {result["split"]: result}
table = pd.DataFrame([{"checkpoint": str(checkpoint), "model": result["model"], "weights": result["weights"],
                       "deploy": result["deploy"], "split": name,
                       **{k: r.get(k) for k in ("n", "top1", "top5", "loss")}} for name, r in scores.items()])
if out_dir:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(out_dir, "evaluation.json").write_text(json.dumps({"checkpoint": str(checkpoint), **result}, indent=2,
                                                           default=str) + "\n")
    table.to_csv(Path(out_dir, "evaluation.csv"), index=False)
table
