"""repro.report: tables and figures regenerated from run folders (tests/fixtures/runs) and the published CSVs.

The fixture run folders are synthetic (their numbers are invented for the tests). The expected report in
tests/fixtures/expected_report/ was checked by hand once; after an intended change to the tables, rewrite it
with `REPRO_UPDATE_EXPECTED=1 pytest tests/test_report.py` and review the diff.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from repro.distill import direct_gain, effective_gain
from repro.errors import ReproError
from repro.report import (build_report, distillation_grid, load_published, load_runs, model_label,
                          paper_vs_reproduction, published_files, read_run, runs_table)
from repro.report import cli as report_cli
from repro.report.published import COLUMNS

FIXTURES = Path(__file__).parent / "fixtures"
RUNS = FIXTURES / "runs"
EXPECTED = FIXTURES / "expected_report"
TABLES = ["runs", "paper_vs_reproduction", "distillation_grid"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report([RUNS], out), out


@pytest.fixture(scope="module")
def runs():
    return load_runs([RUNS])


def test_report_matches_expected_files(report):
    written, out = report
    files = ["report.md"] + [f"tables/{t}.{ext}" for t in TABLES for ext in ("md", "csv")]
    if os.environ.get("REPRO_UPDATE_EXPECTED"):
        for f in files:
            (EXPECTED / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / f, EXPECTED / f)
    for f in files:
        assert (out / f).read_text() == (EXPECTED / f).read_text(), f"{f} differs from tests/fixtures/expected_report"
    assert written["report"] == out / "report.md"
    assert {f"{t}_{ext}" for t in TABLES for ext in ("md", "csv")} <= set(written)


def test_figures_are_pngs_per_dataset(report):
    written, out = report
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "curves-cifar100.png", "curves-digits.png", "teacher_student-digits.png"]
    for key in ("curves_cifar100", "curves_digits", "teacher_student_digits"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert written[key].stat().st_size > 10_000
    assert "![Training curves, digits](figures/curves-digits.png)" in (out / "report.md").read_text()


def test_stale_figures_are_removed(tmp_path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "curves-imagenet.png").write_bytes(b"old")
    build_report([RUNS / "digits-student-s0"], out)
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["curves-digits.png"]


def test_labels_come_from_model_names_not_folders(runs):
    table = runs_table(runs).set_index("run")
    # The folder says "b" but the run trained slak_small: the seed report's swapped label must not come back.
    assert table.loc["slak-b-cifar100", "model"] == "SLaK-S"
    assert table.loc["slak-base-cifar100", "model"] == "SLaK-B"
    assert model_label("slak_tiny") == "SLaK-T"
    assert model_label("slak_small") == "SLaK-S"
    assert model_label("slak_base") == "SLaK-B"
    assert model_label("slak_small_mxm") == "SLaK-S (MxM)"
    assert model_label("l2s_convnext_tiny") == "ConvNeXt-T (7x7+BN)"
    assert model_label("convnext_tiny") == "ConvNeXt-T"
    assert model_label("some_timm_model") == "some_timm_model"


def test_means_over_seeds_exclude_stopped_runs(runs):
    pvr = paper_vs_reproduction(runs, load_published())
    slak_t = pvr[(pvr["model_name"] == "slak_tiny") & (pvr["status"] == "complete")].iloc[0]
    s0, s1 = (read_run(RUNS / f"slak-t-cifar100-s{i}").summary["test_top1"] for i in (0, 1))
    assert slak_t["n"] == 2
    assert slak_t["top1_mean"] == pytest.approx((s0 + s1) / 2)
    assert slak_t["top1_std"] == pytest.approx(np.std([s0, s1], ddof=1))
    assert slak_t["published_top1"] == 69.40
    assert slak_t["delta_top1"] == pytest.approx((s0 + s1) / 2 - 69.40)

    nkd = pvr[(pvr["method"] == "nkd")]
    assert list(nkd["status"]) == ["complete", "stopped (time_budget) at epoch 2/4"]
    assert list(nkd["n"]) == [2, 1]
    assert nkd.iloc[0]["runs"] == "digits-student-nkd-s0 digits-student-nkd-s1"
    stopped = nkd.iloc[1]
    assert stopped["runs"] == "digits-student-nkd-stopped" and math.isnan(stopped["delta_top1"])
    # A stopped run without a published counterpart still appears, flagged.
    slak_b = pvr[pvr["model_name"] == "slak_base"].iloc[0]
    assert slak_b["status"].startswith("stopped (time_budget)") and slak_b["top1_mean"] == 22.5


def test_recipes_are_never_averaged_together(runs):
    pvr = paper_vs_reproduction(runs, load_published())
    alone = pvr[(pvr["model_name"] == "l2s_convnext_micro") & (pvr["method"] == "")]
    assert list(alone["recipe"]) == ["train.lr=0.001", "train.lr=0.002"]
    assert list(alone["n"]) == [2, 1]


def test_distillation_grid_gains(runs):
    grid = distillation_grid(runs).set_index(["method", "status"])
    alone = [read_run(RUNS / f"digits-student-s{i}").summary["test_top1"] for i in (0, 1)]
    nkd_runs = [read_run(RUNS / f"digits-student-nkd-s{i}").summary["test_top1"] for i in (0, 1)]
    teacher = read_run(RUNS / "digits-slak-micro-teacher").summary["test_top1"]
    nkd = grid.loc[("nkd", "complete")]
    # The reference is the student with the same recipe (lr 0.001), not the lr 0.002 run.
    assert nkd["alone_runs"] == "digits-student-s0 digits-student-s1"
    assert nkd["alone_top1_mean"] == pytest.approx(np.mean(alone))
    # The teacher's accuracy comes from its run folder when it is among the runs (94.0, not the recorded 93.0).
    assert nkd["teacher_top1"] == teacher == 94.0
    assert nkd["direct_gain"] == pytest.approx(direct_gain(np.mean(nkd_runs), np.mean(alone)))
    assert nkd["effective_gain"] == pytest.approx(effective_gain(np.mean(nkd_runs), np.mean(alone), teacher))
    assert nkd["effective_gain"] == pytest.approx((np.mean(nkd_runs) - np.mean(alone)) / teacher)
    kd = grid.loc[("kd", "complete")]
    assert kd["teacher_top1"] == read_run(RUNS / "digits-student-kd").summary["distill"]["teacher_top1"]
    stopped = grid.loc[("nkd", "stopped (time_budget) at epoch 2/4")]
    assert math.isnan(stopped["direct_gain"]) and math.isnan(stopped["effective_gain"])


def test_direct_gain_carries_its_uncertainty(runs):
    """± is the standard deviation of the difference of the two means; one run on a side takes the other's
    seed standard deviation; two single runs have none."""
    from repro.report.tables import difference_std, distillation_grid_markdown
    grid = distillation_grid(runs).set_index(["method", "status"])
    alone = [read_run(RUNS / f"digits-student-s{i}").summary["test_top1"] for i in (0, 1)]
    nkd_runs = [read_run(RUNS / f"digits-student-nkd-s{i}").summary["test_top1"] for i in (0, 1)]
    s_alone, s_nkd = np.std(alone, ddof=1), np.std(nkd_runs, ddof=1)
    nkd, kd = grid.loc[("nkd", "complete")], grid.loc[("kd", "complete")]
    assert nkd["direct_gain_std"] == pytest.approx(math.sqrt(s_nkd ** 2 / 2 + s_alone ** 2 / 2))
    assert (kd["n"], kd["alone_n"]) == (1, 2)
    assert kd["direct_gain_std"] == pytest.approx(math.sqrt(s_alone ** 2 / 1 + s_alone ** 2 / 2))
    assert nkd["effective_gain_std"] == pytest.approx(nkd["direct_gain_std"] / nkd["teacher_top1"])
    assert math.isnan(difference_std(float("nan"), 1, float("nan"), 1))
    assert difference_std(1.0, 3, 2.0, 4) == pytest.approx(math.sqrt(1 / 3 + 4 / 4))
    text = distillation_grid_markdown(distillation_grid(runs))
    assert f"+{kd['direct_gain']:.2f} ± {kd['direct_gain_std']:.2f}" in text


def test_runs_table_names_the_split_of_each_top1(runs):
    from repro.report.tables import runs_markdown
    table = runs_table(runs).set_index("run")
    assert table.loc["slak-t-cifar100-s0", "split"] == "test"
    lines = runs_markdown(runs_table(runs)).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[6:9] == ["Top-1", "Top-5", "Split"]
    row = next(line for line in lines if line.startswith("| slak-t-cifar100-s0 "))
    assert [c.strip() for c in row.strip("|").split("|")][8] == "test"


def test_teacher_student_figure_shows_differences_n_and_gains(runs):
    from repro.report.figures import teacher_student_figure
    grid = distillation_grid(runs)
    fig = teacher_student_figure(grid[grid["dataset"] == "digits"])
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    # Zoomed to the numbers (82-94 here), not 0-100, where a gain of a point or two would not show.
    assert 70 <= low < 88 and high < 100
    texts = [t.get_text() for t in ax.texts]
    kd = grid[(grid["method"] == "kd")].iloc[0]
    assert f"Direct Gain {kd['direct_gain']:+.2f} ± {kd['direct_gain_std']:.2f}" in texts
    assert any("n=2" in t for t in texts) and any("n=1" in t for t in texts)
    assert "axis from" in ax.get_ylabel()


def test_loss_curves_of_different_definitions_get_their_own_panels(runs):
    from repro.report.figures import curves_figure, loss_definition
    digits = [r for r in runs if r.summary["dataset"] == "digits"]
    assert {loss_definition(r) for r in digits} == {"CE", "CE + KD", "CE + NKD"}
    fig = curves_figure(digits)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels[:3] == ["training loss (CE)", "training loss (CE + KD)", "training loss (CE + NKD)"]
    assert len(fig.axes) == 5 and labels[3].startswith("top-1")
    # Each loss panel holds exactly the runs of its definition.
    assert len(fig.axes[1].lines) == sum(r.method == "kd" for r in digits)
    one = curves_figure([r for r in digits if r.method is None])
    assert [ax.get_ylabel() for ax in one.axes][0] == "training loss (CE)" and len(one.axes) == 3


def test_best_basis_reads_best_epoch_and_its_top5(runs):
    table = runs_table(runs, basis="best").set_index("run")
    row = table.loc["slak-b-cifar100"]
    metrics = read_run(RUNS / "slak-b-cifar100").metrics
    assert row["basis"] == "best epoch (EMA)" and row["split"] == "val"
    assert row["top1"] == read_run(RUNS / "slak-b-cifar100").summary["best_top1"]
    assert row["top5"] == [m for m in metrics if m["epoch"] == 150][0]["top5_ema"]
    assert table.loc["slak-t-cifar100-s1", "top1"] == 68.75
    with pytest.raises(ReproError, match="basis"):
        runs_table(runs, basis="median")


def _perturbed_copy(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Fixture runs and published numbers with every measured value changed."""
    runs = tmp_path / "runs"
    shutil.copytree(RUNS, runs)
    change = {"top1", "top5", "top1_ema", "top5_ema", "best_top1", "test_top1", "test_top5", "teacher_top1",
              "wall_time_s", "params_total", "params_nonzero", "train_loss", "lr"}

    def shift(obj):
        if isinstance(obj, dict):
            return {k: (v * 0.97 + 0.11 if k in change and isinstance(v, (int, float)) else shift(v))
                    for k, v in obj.items()}
        return obj

    for path in runs.rglob("summary.json"):
        path.write_text(json.dumps(shift(json.loads(path.read_text()))))
    for path in runs.rglob("metrics.jsonl"):
        path.write_text("".join(json.dumps(shift(json.loads(line))) + "\n" for line in path.read_text().splitlines()))
    published = load_published()
    published["value"] = published["value"] * 0.97 + 0.11
    return runs, published


def test_no_number_is_typed_by_hand(tmp_path, runs):
    """Every number in the tables moves when the summaries and published values move (except counts and
    settings such as seeds, epochs and image sizes, which identify runs)."""
    moved_runs, moved_published = _perturbed_copy(tmp_path)
    moved = load_runs([moved_runs])
    pairs = [(runs_table(runs), runs_table(moved)),
             (paper_vs_reproduction(runs, load_published()), paper_vs_reproduction(moved, moved_published)),
             (distillation_grid(runs), distillation_grid(moved))]
    identity = {"img_size", "seed", "epochs", "epochs_done", "epochs_total", "best_epoch", "n", "alone_n"}
    checked = 0
    for before, after in pairs:
        assert before.shape == after.shape
        for col in before.columns:
            if col in identity or not pd.api.types.is_numeric_dtype(before[col]):
                continue
            for a, b in zip(before[col], after[col]):
                if pd.isna(a):
                    assert pd.isna(b), col
                    continue
                assert a != pytest.approx(b, abs=1e-9), f"{col}={a} did not come from the inputs"
                checked += 1
    assert checked > 100


def test_published_values_trace_to_the_csv(runs):
    published = load_published()
    pvr = paper_vs_reproduction(runs, published)
    top1 = published[published["metric"] == "top1"]
    for row in pvr[pvr["published_top1"].notna()].itertuples():
        match = top1[(top1["model"] == row.model_name) & (top1["dataset"] == row.dataset)
                     & (top1["source"] == row.source)]
        assert row.published_top1 in set(match["value"])


def test_published_csv_transcription():
    table = load_published()
    assert {p.name for p in published_files()} == {"imagenet.csv", "cifar100_seed_report.csv"}

    def value(**kw):
        rows = table
        for k, v in kw.items():
            rows = rows[rows[k] == v]
        assert len(rows) == 1, kw
        return rows["value"].iloc[0]

    assert value(model="l2s_convnext_tiny", teacher="slak_tiny", distill_method="nkd", epochs=300,
                 metric="top1") == 83.1
    assert value(model="slak_small", dataset="imagenet", img_size=224, metric="top1") == 83.8
    assert value(model="slak_base", dataset="imagenet", img_size=224, metric="top1") == 84.0
    assert value(model="slak_small", dataset="cifar100", metric="top1") == 58.05
    assert value(model="slak_tiny", dataset="cifar100", metric="top5") == 89.29
    # Unknown numbers are stored empty, never guessed.
    assert math.isnan(value(model="slak_base", dataset="cifar100", metric="top1"))
    table1 = table[table["source"] == "Table 1 (teacher comparison)"]
    assert len(table1) == 30 and table1["value"].isna().all()
    for path in published_files():
        assert pd.read_csv(path, dtype=str).columns.tolist() == COLUMNS


def test_unknown_published_values_show_as_missing(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(RUNS / "digits-student-s0", runs / "r")
    summary = json.loads((runs / "r" / "summary.json").read_text())
    summary.update(model="resnet50", dataset="imagenet", img_size=224, epochs_total=120, epochs_done=120,
                   distill={"method": "kd", "teacher_model": "slak_tiny", "teacher_path": "x",
                            "teacher_sha256": "0", "teacher_top1": None})
    (runs / "r" / "summary.json").write_text(json.dumps(summary))
    out = build_report([runs], tmp_path / "out")
    pvr = pd.read_csv(out["paper_vs_reproduction_csv"])
    row = pvr[pvr["model_name"] == "resnet50"].iloc[0]
    assert row["source"] == "Table 1 (teacher comparison)" and pd.isna(row["published_top1"])
    line = [ln for ln in out["paper_vs_reproduction_md"].read_text().splitlines() if ln.startswith("| ResNet-50")][0]
    assert "| — | Huang et al. ICML 2023: Table 1 (teacher comparison) |" in line
    # Published ImageNet numbers that no run reproduces yet are listed as "not run".
    not_run = pvr[pvr["status"] == "not run"]
    assert {"slak_tiny", "l2s_convnext_tiny"} <= set(not_run["model_name"])


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ReproError, match="not found"):
        load_runs([tmp_path / "missing"])
    with pytest.raises(ReproError, match="no run folders"):
        load_runs([tmp_path])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text("{not json")
    with pytest.raises(ReproError, match="not valid JSON"):
        load_runs([tmp_path])
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(ReproError, match="lacks model"):
        load_runs([tmp_path])


def test_truncated_metrics_line_is_skipped(tmp_path):
    shutil.copytree(RUNS / "digits-student-s0", tmp_path / "r")
    path = tmp_path / "r" / "metrics.jsonl"
    path.write_text(path.read_text() + '{"epoch": 5, "st')
    assert len(read_run(tmp_path / "r").metrics) == 4


def test_cli_writes_report(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    report_cli.register(parser.add_subparsers())
    args = parser.parse_args(["report", "--runs", str(RUNS / "digits-student-s0"), str(RUNS / "digits-student-s1"),
                              "--out", str(tmp_path), "--title", "Two runs"])
    assert args.func(args) == 0
    assert (tmp_path / "report.md").read_text().startswith("# Two runs\n")
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out


def test_copies_of_a_run_count_once(tmp_path):
    # The same run attached to a later Kaggle session as input: same weights, same step.
    shutil.copytree(RUNS / "digits-student-s0", tmp_path / "session1" / "digits-student-s0")
    shutil.copytree(RUNS / "digits-student-s0", tmp_path / "session2" / "digits-student-s0")
    shutil.copytree(RUNS / "digits-student-s1", tmp_path / "session2" / "digits-student-s1")
    out = build_report([tmp_path / "session1", tmp_path / "session2"], tmp_path / "out")
    pvr = pd.read_csv(out["paper_vs_reproduction_csv"])
    assert list(pvr["n"]) == [2]
    assert "Ignored 1 run folders holding the same weights" in out["report"].read_text()


def test_interrupted_run_is_flagged(tmp_path):
    shutil.copytree(RUNS / "digits-student-nkd-stopped", tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    summary["stop_reason"] = "checkpoint"  # what the engine leaves behind while running or after a kill
    (tmp_path / "r" / "summary.json").write_text(json.dumps(summary))
    assert runs_table(load_runs([tmp_path]))["status"].tolist() == ["stopped (interrupted) at epoch 2/4"]


def test_run_stopped_before_any_evaluation_has_no_split_and_integer_epochs(tmp_path):
    shutil.copytree(RUNS / "digits-student-nkd-stopped", tmp_path / "r")
    shutil.copytree(RUNS / "digits-student-s0", tmp_path / "s")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    summary.update(top1=None, top5=None, best_top1=None, best_epoch=None, epochs_done=0, steps_done=3)
    (tmp_path / "r" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    for basis in ("last", "best"):
        table = runs_table(load_runs([tmp_path]), basis=basis).set_index("run")
        assert table.loc["r", "split"] == "" and pd.isna(table.loc["r", "top1"])
        assert table.loc["s", "split"] in ("val", "test")
    csv = tmp_path / "runs.csv"
    runs_table(load_runs([tmp_path])).to_csv(csv, index=False)
    row = pd.read_csv(csv, dtype=str).set_index("run").loc["s"]
    assert "." not in row["best_epoch"] and "." not in row["epochs_done"]  # 2, not 2.0


RUNS_TEACHER = "runs/digits-slak-micro-teacher/checkpoints/ckpt-00000040.pt"


def _student_of(tmp_path: Path, source: str, folder: str, teacher_path: str, sha: str, teacher_top1: float) -> Path:
    """A copy of a distilled fixture run whose teacher is replaced (and whose weights thus differ)."""
    run = tmp_path / "runs" / folder
    shutil.copytree(RUNS / source, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["distill"].update(teacher_path=teacher_path, teacher_sha256=sha, teacher_top1=teacher_top1)
    summary["state_digest"] = sha[:8] + summary["state_digest"][8:]
    (run / "summary.json").write_text(json.dumps(summary))
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace(f"teacher: {RUNS_TEACHER}", f"teacher: {teacher_path}"))
    return run


def test_students_of_different_teachers_are_never_averaged(tmp_path):
    """The same student recipe distilled from a long-trained and from a short-trained teacher of one model gives
    two rows (each with its own teacher top-1); seeds of one teacher are still averaged."""
    strong, weak = RUNS_TEACHER, "runs/tb2/checkpoints/ckpt-00000045.pt"
    _student_of(tmp_path, "digits-student-nkd-s0", "strong-s0", strong, "1" * 64, 98.33)
    _student_of(tmp_path, "digits-student-nkd-s1", "strong-s1", strong, "1" * 64, 98.33)
    _student_of(tmp_path, "digits-student-nkd-s0", "weak-s0", weak, "3" * 64, 79.94)
    runs = load_runs([tmp_path / "runs"])
    grid = distillation_grid(runs).set_index("runs")
    assert sorted(grid.index) == ["strong-s0 strong-s1", "weak-s0"]
    assert list(grid.loc[["strong-s0 strong-s1", "weak-s0"], "n"]) == [2, 1]
    assert list(grid.loc[["strong-s0 strong-s1", "weak-s0"], "teacher_top1"]) == [98.33, 79.94]
    assert grid.loc["strong-s0 strong-s1", "recipe"] == "teacher=digits-slak-micro-teacher/ckpt-00000040.pt"
    assert grid.loc["weak-s0", "recipe"] == "teacher=tb2/ckpt-00000045.pt"
    pvr = paper_vs_reproduction(runs, load_published())
    assert sorted(pvr[pvr["method"] == "nkd"]["runs"]) == ["strong-s0 strong-s1", "weak-s0"]

    # Teachers whose checkpoints have the same folder and file names are told apart by their sha256.
    shutil.rmtree(tmp_path / "runs" / "weak-s0")
    _student_of(tmp_path, "digits-student-nkd-s0", "weak-s0", "/elsewhere/" + strong, "3" * 64, 79.94)
    grid = distillation_grid(load_runs([tmp_path / "runs"])).set_index("runs")
    assert grid.loc["weak-s0", "recipe"] == "teacher=digits-slak-micro-teacher/ckpt-00000040.pt (sha256 333333333333)"
    assert grid.loc["strong-s0 strong-s1", "recipe"].endswith("(sha256 111111111111)")
