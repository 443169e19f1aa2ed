"""repro.quickstart: the teacher comparison in miniature (three teachers, KD students and the student alone, two
seeds each), the presets it trains, the report it writes (gains per teacher with their spread, the gains
figure, the ERF table) and, slow, the whole quickstart run twice."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from repro import quickstart
from repro.batch import find_notebook
from repro.config import flat_dict, load_config
from repro.models import create_model
from repro.report import build_report, distillation_grid, load_runs
from repro.report.figures import gains_figure
from repro.train.cohort import load_cohort

ROOT = Path(__file__).resolve().parent.parent


def test_the_three_teachers_run_through_the_train_notebook(tmp_path):
    runs = quickstart.quickstart_runs(tmp_path / "qs", device="cpu")
    assert [(r.name, r.notebook, r.parameters["preset"], r.parameters["device"]) for r in runs] == [
        ("teacher", "train.ipynb", "quickstart-teacher", "cpu"),
        ("teacher-convnext", "train.ipynb", "quickstart-teacher-convnext", "cpu"),
        ("teacher-vit", "train.ipynb", "quickstart-teacher-vit", "cpu")]
    assert find_notebook(runs[0].notebook) == ROOT / "notebooks" / "train.ipynb"


def test_teachers_are_a_large_kernel_a_small_kernel_convnet_and_a_transformer_on_digits():
    cfgs = {p: load_config(p) for p in ("quickstart-teacher", "quickstart-teacher-convnext", "quickstart-teacher-vit")}
    assert {(c.data.name, c.data.img_size, c.distill.method) for c in cfgs.values()} == {("digits", 32, None)}
    slak = create_model("slak_micro", num_classes=10, img_size=32, **cfgs["quickstart-teacher"].model.kwargs)
    assert tuple(slak.kernel_size) == (51, 49, 47, 13, 5) and cfgs["quickstart-teacher"].sparse.sparsity == 0.4
    convnext = cfgs["quickstart-teacher-convnext"]
    assert convnext.model.name == "l2s_convnext_micro" and convnext.sparse.sparsity == 0.0
    assert tuple(create_model(convnext.model.name, num_classes=10).kernel_size)[:4] == (7, 7, 7, 7)
    vit = cfgs["quickstart-teacher-vit"]
    model = create_model(vit.model.name, num_classes=10, img_size=32, **vit.model.kwargs)
    assert vit.model.name == "vit_small_l2s" and len(model.blocks) == 4 and model.embed_dim == 96
    assert model.patch_embed.proj.kernel_size == (8, 8) and model.blocks[0].attn.scale == pytest.approx(24 ** -0.5)
    # The teachers train longer than the students they teach.
    student = load_config("quickstart-kd")
    assert all(c.train.epochs > student.train.epochs for c in cfgs.values())


def test_student_cohorts_pair_every_teacher_and_seed_with_the_same_student_recipe(tmp_path):
    out = tmp_path / "qs"
    cohorts = quickstart.student_cohorts(out)
    assert [(teacher, folder.name) for teacher, folder, _ in cohorts] == [
        ("teacher", "students-slak-seed0"), ("teacher-convnext", "students-convnext-seed0"),
        ("teacher-vit", "students-vit-seed0"), ("teacher", "students-slak-seed1"),
        ("teacher-convnext", "students-convnext-seed1"), ("teacher-vit", "students-vit-seed1")]
    members = {}
    for teacher, _, spec in cohorts:
        resolved = load_cohort(spec)  # the shared keys agree, or this raises
        for name, cfg in resolved.members:
            assert name not in members
            assert cfg.distill.teacher == str(out / teacher)
            members[name] = cfg
    assert sorted(members) == ["alone-seed0", "alone-seed1", "kd-convnext-seed0", "kd-convnext-seed1",
                               "kd-slak-seed0", "kd-slak-seed1", "kd-vit-seed0", "kd-vit-seed1"]
    assert {n: (c.seed, c.distill.method) for n, c in members.items() if n.startswith("alone")} == {
        "alone-seed0": (0, None), "alone-seed1": (1, None)}
    assert {c.distill.method for n, c in members.items() if n.startswith("kd")} == {"kd"}

    # Direct Gain compares runs equal in every setting outside `distill` (and the seed): check that here.
    def recipe(cfg):
        return {k: v for k, v in flat_dict(cfg).items() if not k.startswith("distill.") and k not in ("name", "seed")}
    assert all(recipe(c) == recipe(members["alone-seed0"]) for c in members.values())
    assert members["kd-slak-seed0"].model.name == "l2s_convnext_micro"


def _fake_run(path: Path, cfg, *, top1: float, steps: int, teacher: Path | None = None, erf: float | None = None):
    """A complete run folder as the engine writes it (the fields the report reads), numbers given."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    summary = {"name": path.name, "status": "complete", "model": cfg.model.name, "dataset": "digits",
               "img_size": 32, "seed": cfg.seed, "epochs_total": cfg.train.epochs, "epochs_done": cfg.train.epochs,
               "steps_done": steps, "test_top1": top1, "test_top5": 100.0, "final_is": "raw",
               "state_digest": f"digest-{path.name}", "env": {"device": "cpu"}}
    if teacher is not None:
        t = json.loads((teacher / "summary.json").read_text())
        summary["distill"] = {"method": cfg.distill.method, "teacher_model": t["model"],
                              "teacher_path": str(teacher / "checkpoints" / "ckpt.pt"),
                              "teacher_sha256": f"sha-{teacher.name}", "teacher_top1": t["test_top1"]}
    (path / "summary.json").write_text(json.dumps(summary))
    if erf is not None:
        np.save(path / "erf.npy", np.ones((16, 16), dtype=np.float32))
        (path / "erf.json").write_text(json.dumps({
            "step": steps, "size": 160, "split": "test", "images": 50, "skipped": 0, "map": "erf.npy",
            "area_ratio": {"0.2": erf, "0.3": 2 * erf, "0.5": 4 * erf, "0.99": 0.9}}))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """The quickstart's run layout with invented numbers, and its report."""
    out = tmp_path_factory.mktemp("qs") / "runs"
    teacher_top1 = {"teacher": 96.0, "teacher-convnext": 95.5, "teacher-vit": 95.0}
    for name, preset, _ in quickstart.TEACHERS:
        _fake_run(out / name, load_config(preset), top1=teacher_top1[name], steps=300, erf=0.05)
    distilled = {"slak": (93.0, 93.6), "convnext": (92.4, 92.8), "vit": (91.9, 92.7)}
    for teacher, folder, spec in quickstart.student_cohorts(out):
        for name, cfg in load_cohort(spec).members:
            seed = cfg.seed
            if cfg.distill.method is None:
                _fake_run(folder / name, cfg, top1=(92.0, 92.6)[seed], steps=160, erf=0.02)
            else:
                _fake_run(folder / name, cfg, top1=distilled[name.split("-")[1]][seed], steps=160,
                          teacher=out / teacher, erf=0.03)
    results = out.parent / "results"
    return build_report([out], results, title=quickstart.TITLE, gains=True), out


def test_the_report_shows_direct_and_effective_gain_per_teacher_with_their_spread(comparison):
    written, out = comparison
    rows = [line for line in written["distillation_grid_md"].read_text().splitlines()
            if line.startswith("| ConvNeXt-micro")]
    assert len(rows) == 3
    by_teacher = {cells[1]: cells for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows)}
    assert sorted(by_teacher) == ["ConvNeXt-micro (7x7+BN)", "SLaK-micro", "vit_small_l2s"]
    slak = by_teacher["SLaK-micro"]
    # Student alone 92.3 ± 0.42 (n 2), distilled 93.3 ± 0.42 (n 2), teacher 96.0.
    assert slak[6:11] == ["96.00", "93.30 ± 0.42", "2", "92.30 ± 0.42", "2"]
    spread = np.sqrt(0.18 / 2 + 0.18 / 2)
    assert slak[11] == f"+1.00 ± {spread:.2f}" and slak[12] == f"+{1 / 96:.4f} ± {spread / 96:.4f}"
    report = written["report"].read_text()
    assert report.startswith(f"# {quickstart.TITLE}")
    assert "![Direct and Effective Gain, digits](figures/gains-digits.png)" in report
    assert written["gains_digits"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_has_the_erf_of_teachers_the_student_alone_and_distilled_students(comparison):
    written, _ = comparison
    erf = written["erf_md"].read_text()
    roles = [line.split("|")[1].strip() for line in erf.splitlines()[2:]]
    assert roles == ["teacher"] * 3 + ["student alone"] + ["distilled"] * 3
    assert "## Effective receptive field" in written["report"].read_text() and written["erf_digits"].is_file()


def test_the_gains_figure_spans_the_gains_not_the_accuracy_scale(comparison):
    _, out = comparison
    grid = distillation_grid(load_runs([out]))
    fig = gains_figure(grid, title="gains")
    direct, effective = fig.axes
    low, high = direct.get_ylim()
    # Gains of +0.2 .. +1.0 points with spreads below 0.6: the axis shows them and zero, not 0-100.
    assert low < 0 < high and high - low < 4
    bars = [p.get_height() for p in direct.patches]
    assert sorted(round(b, 2) for b in bars) == sorted(round(g, 2) for g in grid["direct_gain"])
    assert len(direct.lines) + len(direct.collections) > 1  # error bars (and the zero line) are drawn
    assert effective.get_ylim()[1] - effective.get_ylim()[0] < 0.05


def test_erf_is_measured_once_per_final_weights(tmp_path):
    cfg = load_config("quickstart-student")
    _fake_run(tmp_path / "done", cfg, top1=90.0, steps=160, erf=0.02)
    assert quickstart.measure_erf(tmp_path / "done") is False  # erf.json already describes step 160
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "summary.json").write_text(json.dumps({"status": "stopped"}))
    assert quickstart.measure_erf(tmp_path / "stopped") is False


@pytest.mark.slow
def test_quickstart_end_to_end_then_again_skipping_every_run(tmp_path):
    result = quickstart.run_quickstart(tmp_path / "runs", tmp_path / "results", device="cpu", progress=False)
    assert [r["status"] for r in result["runs"]] == ["complete"] * 11, result["runs"]
    results = tmp_path / "results"
    grid = (results / "tables" / "distillation_grid.md").read_text()
    for teacher in ("SLaK-micro", "| ConvNeXt-micro (7x7+BN) | KD", "vit_small_l2s"):
        assert teacher in grid
    assert grid.count(" ± ") >= 9  # distilled top-1, Direct Gain and Effective Gain of each teacher
    assert (results / "figures" / "gains-digits.png").is_file() and (results / "tables" / "erf.md").is_file()
    assert sorted(p.name for p in (results / "notebooks").iterdir()) == [
        "teacher-convnext.ipynb", "teacher-vit.ipynb", "teacher.ipynb"]
    again = quickstart.run_quickstart(tmp_path / "runs", tmp_path / "results", device="cpu", progress=False)
    assert [r["status"] for r in again["runs"]] == ["skipped"] * 11
    assert (results / "tables" / "distillation_grid.md").read_text() == grid
