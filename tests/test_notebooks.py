"""notebooks/: pairing with their jupytext .py sources, parameters papermill sees, packaged copies, and execution
of each notebook through papermill on CPU with tiny settings (one short training run shared by all)."""
from __future__ import annotations

import json
from pathlib import Path

import jupytext
import nbformat
import papermill as pm
import pytest

from repro import batch
from repro.plan import PlanRun

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PACKAGED = ROOT / "repro" / "notebooks"
NAMES = ["train", "evaluate", "report", "erf"]

PARAMETERS = {
    "train": ["preset", "config_file", "cohort", "overrides", "out_dir", "max_steps", "time_budget",
              "checkpoint_every", "seed", "device", "resume_from", "nproc"],
    "evaluate": ["checkpoint", "model", "overrides", "split", "use_ema", "deploy", "batch_size", "device", "out_dir"],
    "report": ["runs", "out_dir", "title", "basis"],
    "erf": ["source", "model", "overrides", "split", "images", "size", "use_ema", "device", "out_dir"],
}

# One optimizer step per epoch: digits with half held out for validation, a batch larger than half the rest.
TINY = ["train.epochs=1", "train.batch_size=512", "data.val_fraction=0.5"]


def _cells(path: Path) -> list[tuple[str, str, list[str]]]:
    nb = jupytext.read(path)
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_every_notebook_has_both_forms():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == sorted(NAMES)
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_py_and_ipynb_are_in_sync(name):
    py, ipynb = _cells(NOTEBOOKS / f"{name}.py"), _cells(NOTEBOOKS / f"{name}.ipynb")
    assert py == ipynb, f"notebooks/{name}.py and .ipynb differ: run `jupytext --sync notebooks/{name}.py`"


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_is_clean_and_runnable_by_papermill(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    # Outputs are not kept in the repository; executed copies live in run folders.
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", NAMES)
def test_papermill_sees_the_documented_parameters(name):
    params = pm.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    assert list(params) == PARAMETERS[name]
    assert all(p["help"] for p in params.values()), "every parameter has a help comment"


@pytest.mark.parametrize("name", NAMES)
def test_packaged_copies_match(name):
    assert (PACKAGED / f"{name}.ipynb").read_bytes() == (NOTEBOOKS / f"{name}.ipynb").read_bytes(), \
        "repro/notebooks/ is stale: copy notebooks/*.ipynb into repro/notebooks/"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """train.ipynb (one step); then evaluate.ipynb on its weights saved as a released checkpoint
    ({'model': state_dict}, so the architecture comes from the `model` parameter) and report.ipynb on its
    run folder, all through repro.batch."""
    import torch

    out = tmp_path_factory.mktemp("nb")
    run_dir = out / "student"
    train = PlanRun("student", "train.ipynb", {"preset": "quickstart-student", "overrides": TINY, "device": "cpu"})
    records = batch.run_notebooks([train], out, progress=False)
    if records[0]["status"] == "complete":
        ckpt = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1]
        torch.save({"model": torch.load(ckpt, map_location="cpu", weights_only=False)["model"]},
                   out / "released.pth")
    runs = [PlanRun("eval", "evaluate.ipynb", {"checkpoint": str(out / "released.pth"),
                                               "model": "l2s_convnext_micro", "device": "cpu"}),
            PlanRun("report", "report.ipynb", {"runs": [str(run_dir)], "title": "Notebook test"})]
    records += batch.run_notebooks(runs, out, progress=False)
    return out, {r["name"]: r for r in records}


def _outputs(path: Path) -> list[dict]:
    nb = nbformat.read(path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_train_notebook_trains_and_shows_summary_and_curves(executed):
    out, records = executed
    assert records["student"]["status"] == "complete", records["student"]["error"]
    summary = json.loads((out / "student" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["model"] == "l2s_convnext_micro"
    assert summary["dataset"] == "digits" and 0 <= summary["test_top1"] <= 100
    outputs = _outputs(out / "student" / "executed.ipynb")
    assert any("image/png" in o.get("data", {}) for o in outputs), "the training curves are shown"
    assert any("text/html" in o.get("data", {}) and "best_top1" in o["data"]["text/html"] for o in outputs)
    assert (out / "student" / "curves.png").is_file()


def test_evaluate_notebook_writes_the_table(executed):
    out, records = executed
    assert records["eval"]["status"] == "complete", records["eval"]["error"]
    result = json.loads((out / "eval" / "evaluation.json").read_text())
    summary = json.loads((out / "student" / "summary.json").read_text())
    # The same weights on the same test split as the engine's final test.
    assert result["split"] == "test" and result["model"] == "l2s_convnext_micro"
    assert result["top1"] == pytest.approx(summary["test_top1"])
    assert result["weights"] == summary["final_is"]  # the run's final model, EMA or raw
    assert (out / "eval" / "evaluation.csv").read_text().startswith(
        "checkpoint,model,weights,deploy,split,n,top1,top5,loss")


def test_report_notebook_regenerates_results(executed):
    out, records = executed
    assert records["report"]["status"] == "complete", records["report"]["error"]
    report = (out / "report" / "report.md").read_text()
    assert report.startswith("# Notebook test") and "| student | ConvNeXt-micro (7x7+BN) | digits |" in report
    assert sum("image/png" in o.get("data", {}) for o in _outputs(out / "report" / "executed.ipynb")) >= 1


def test_rerun_skips_complete_runs(executed):
    out, _ = executed
    runs = [PlanRun("student", "train.ipynb", {"preset": "quickstart-student", "overrides": TINY, "device": "cpu"})]
    assert batch.run_notebooks(runs, out, progress=False)[0]["status"] == "skipped"


@pytest.mark.slow
def test_train_notebook_with_torchrun(tmp_path):
    """nproc > 1: the notebook launches torchrun (gloo on CPU here, as DDP over Kaggle's two T4s)."""
    runs = [PlanRun("ddp", "train.ipynb", {"preset": "quickstart-student", "device": "cpu", "nproc": 2,
                                            "overrides": ["train.epochs=1", "train.batch_size=256",
                                                          "data.val_fraction=0.5"]})]
    record = batch.run_notebooks(runs, tmp_path, progress=False)[0]
    assert record["status"] == "complete", record["error"]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["env"]["world_size"] == 2 and summary["status"] == "complete"
    assert "torch.distributed.run" in (tmp_path / "ddp" / "papermill.log").read_text()
