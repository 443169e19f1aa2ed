"""repro.analysis.erf: the effective receptive field (analytic cases, agreement with a float64 transcription of
the released SLaK computation, skipped non-finite images), `repro erf` on a tiny run, and the report's ERF table."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from repro.analysis.erf import (THRESHOLDS, accumulate_erf, area_ratios, default_erf_size, effective_receptive_field,
                                normalized_erf, square_sides)
from repro.errors import ReproError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_RUNS = ROOT / "tests" / "fixtures" / "runs"
KEYS = ["0.2", "0.3", "0.5", "0.99"]


class FeatureModel(nn.Module):
    """A timm-style model whose last-stage feature map is `features(x)`."""

    def __init__(self, features: nn.Module, channels: int):
        super().__init__()
        self.features, self.num_features = features, channels

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x):
        return x.mean((2, 3))


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def averaging_conv(k: int) -> FeatureModel:
    conv = nn.Conv2d(3, 4, k, padding=k // 2, bias=False)
    nn.init.constant_(conv.weight, 1.0 / (3 * k * k))
    return FeatureModel(conv, 4)


# ------------------------------------------------------------------------------------------ analytic cases

@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_averaging_conv_has_an_erf_of_side_k(k):
    """A k x k averaging conv gives a map that is uniform on the k x k window around the centre: the square of
    side k holds all of it and the one of side k - 2 holds ((k - 2) / k)^2 < 0.99 of it, so at t = 0.99 the
    side is exactly k (for every t >= ((k - 2) / k)^2, in fact), and below that the side shrinks."""
    model = averaging_conv(k).train()
    erf = effective_receptive_field(model, torch.rand(3, 3, 32, 32) + 0.1)  # positive: the centre feature is live
    assert erf.shape == (32, 32)
    assert torch.count_nonzero(erf) == k * k
    assert square_sides(erf)[0.99] == k
    assert area_ratios(erf)[0.99] == pytest.approx((k / 32) ** 2)
    sides = square_sides(erf, thresholds=[((k - 2) / k) ** 2 - 1e-9, ((k - 2) / k) ** 2])
    assert list(sides.values()) == [k - 2, k]
    # The model comes back as it was given: training mode, parameters trainable.
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_identity_like_model_has_side_one():
    model = FeatureModel(nn.Identity(), 3)
    erf = effective_receptive_field(model, torch.rand(2, 3, 31, 31) + 0.1)
    assert torch.count_nonzero(erf) == 1 and erf[15, 15] == 3  # one per channel at the centre pixel
    assert square_sides(erf) == {t: 1 for t in THRESHOLDS}
    assert area_ratios(erf) == {t: pytest.approx(1 / 31 ** 2) for t in THRESHOLDS}


def test_a_spread_map_reaches_the_whole_input():
    """A uniform map needs the whole input at t = 0.99 (the released search stops one side short of it)."""
    assert area_ratios(np.ones((16, 16)))[0.99] == 1.0
    assert square_sides(np.ones((15, 15))) == {0.2: 7, 0.3: 9, 0.5: 11, 0.99: 15}


def test_bad_maps_and_thresholds_are_refused():
    with pytest.raises(ReproError, match="zero everywhere"):
        area_ratios(np.zeros((8, 8)))
    with pytest.raises(ReproError, match=r"\[0, 1\)"):
        area_ratios(np.ones((8, 8)), thresholds=(0.5, 1.0))
    with pytest.raises(ReproError, match="non-negative"):
        normalized_erf(-np.ones((8, 8)))


def test_default_size_follows_the_released_one():
    assert default_erf_size(224) == default_erf_size(384) == 1024
    assert default_erf_size(32) == 160  # a 5x5 last-stage map for stride-32 ConvNets: its centre is centred


# ------------------------------------------------------------------------------ the released computation

def _released_erf(model: nn.Module, images: torch.Tensor, size: int) -> tuple[np.ndarray, dict]:
    """The released computation (erf/visualize_erf.py, erf/analyze_erf.py) redone in float64: one image at a
    time on the unpooled last stage, NaN maps dropped, squares searched from side 3 to one short of the map,
    and the input size in place of the hard-coded 1024."""
    model = model.double().eval()
    maps = []
    for one in images.double().split(1):
        one.requires_grad_(True)
        fmap = model.forward_features(one)
        centre = fmap[:, :, fmap.shape[2] // 2, fmap.shape[3] // 2]
        (g,) = torch.autograd.grad(torch.relu(centre).sum(), one)
        m = torch.relu(g).sum(dim=(0, 1)).detach().numpy()
        if not np.isnan(m.sum()):
            maps.append(m)
    mean = np.mean(maps, axis=0)
    scaled = np.log10(mean + 1)
    scaled /= scaled.max()
    n, c = scaled.shape[0], scaled.shape[0] // 2
    ratios = {}
    for t in THRESHOLDS:
        half = next(i for i in range(1, n // 2)
                    if scaled[c - i:c + i + 1, c - i:c + i + 1].sum() / scaled.sum() > t)
        ratios[t] = ((2 * half + 1) / size) ** 2
    return mean, ratios


def test_agrees_with_a_float64_transcription_of_the_released_code():
    from repro.models import create_model

    torch.manual_seed(0)
    # Layer scale 1 instead of 1e-6, so that the large-kernel branches shape the field as after training.
    model = create_model("slak_micro", num_classes=10, layer_scale_init_value=1.0)
    images = torch.randn(3, 3, 96, 96)  # 96: the released search reaches every threshold (at 64 not t = 0.99)
    ours = effective_receptive_field(model, images)
    reference, released_ratios = _released_erf(copy.deepcopy(model), images, 96)
    assert ours.dtype == torch.float64 and ours.shape == (96, 96)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-6 * reference.max())
    assert area_ratios(ours) == pytest.approx(released_ratios, rel=1e-12)  # the same squares
    assert min(square_sides(ours).values()) > 3  # a real field, not a corner case of the square search
    # Batches give each image's own map (eval mode: images do not interact).
    torch.testing.assert_close(effective_receptive_field(model, images, batch_size=3), ours, rtol=1e-5, atol=1e-9)


def test_non_finite_images_are_skipped_and_counted():
    """sqrt has an infinite slope at 0: an image with a zero pixel under the centre gets an infinite map. The
    released loop skips such images and takes the next, until it has the number asked for."""
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    nn.init.constant_(conv.weight, 0.1)
    model = FeatureModel(nn.Sequential(Lambda(torch.sqrt), conv), 2)
    images = torch.rand(6, 3, 16, 16) + 0.5
    images[1, 0, 8, 8] = images[3, 2, 7, 9] = 0.0
    result = accumulate_erf(model, images, count=4)
    assert (result.images, result.skipped) == (4, 2)
    good = [0, 2, 4, 5]
    expected = torch.stack([effective_receptive_field(model, images[i]) for i in good]).mean(0)
    torch.testing.assert_close(result.map, expected)
    # Without a count every image is used, and a DataLoader of (image, label) pairs works as well.
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(6)), batch_size=4)
    result = accumulate_erf(model, loader)
    assert (result.images, result.skipped) == (4, 2)
    torch.testing.assert_close(result.map, expected)
    with pytest.raises(ReproError, match="no image gave a finite"):
        accumulate_erf(model, images[[1, 3]])


@pytest.mark.parametrize("name", ["slak_micro", "l2s_convnext_micro", "convnext_atto", "resnet50"])
def test_every_convnet_of_the_zoo_gives_a_map(name):
    from repro.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32)
    erf = effective_receptive_field(model, torch.randn(1, 3, 64, 64))
    ratios = list(area_ratios(erf).values())
    assert erf.shape == (64, 64) and torch.isfinite(erf).all() and erf[32, 32] > 0
    assert 0 < ratios[0] <= ratios[1] <= ratios[2] <= ratios[3] <= 1


# --------------------------------------------------------------------------------------- `repro erf` on runs

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A complete one-step run of the quickstart student on digits."""
    from repro.config import load_config
    from repro.train import train

    out = tmp_path_factory.mktemp("erf") / "student"
    cfg = load_config("quickstart-student", overrides=["train.epochs=1", "train.batch_size=512",
                                                       "data.val_fraction=0.5"])
    summary = train(cfg, out, progress=False, device="cpu")
    assert summary["status"] == "complete"
    return out, summary


def test_cli_writes_erf_json_into_the_run_folder(tiny_run, capsys):
    from repro.cli import main

    run, summary = tiny_run
    assert main(["erf", str(run), "--images", "3", "--size", "64", "--device", "cpu", "--no-progress"]) == 0
    erf = json.loads((run / "erf.json").read_text())
    assert list(erf["area_ratio"]) == KEYS
    assert (erf["size"], erf["images"], erf["skipped"]) == (64, 3, 0)
    assert erf["weights"] == summary["final_is"] and erf["step"] == summary["steps_done"]
    assert erf["model"] == "l2s_convnext_micro" and erf["split"] == "test" and erf["dataset"] == "digits"
    for key in KEYS:
        assert erf["area_ratio"][key] == pytest.approx((erf["side"][key] / 64) ** 2)
    assert np.load(run / "erf.npy").shape == (64, 64)
    assert (run / "erf.png").read_bytes()[:4] == b"\x89PNG"
    assert '"area_ratio"' in capsys.readouterr().out


def test_default_size_and_a_released_file(tiny_run, tmp_path):
    """Without --size a 32 px model is measured at 160; a released {'model': ...} file needs --model and --out."""
    from repro.analysis.erf import run_erf
    from repro.train import list_checkpoints

    run, _ = tiny_run
    record = run_erf(run, images=2, out_dir=tmp_path / "default", device="cpu", progress=False)
    assert record["size"] == 160 and "5x the training size" in record["size_rule"]
    released = tmp_path / "released.pth"
    state = torch.load(list_checkpoints(run / "checkpoints")[0], map_location="cpu", weights_only=False)
    torch.save({"model": state["model"]}, released)
    with pytest.raises(ReproError, match="pass --out DIR"):
        run_erf(released, model_name="l2s_convnext_micro", images=1, progress=False)
    with pytest.raises(ReproError, match="pass --model NAME"):
        run_erf(released, images=1, out_dir=tmp_path / "x", progress=False)
    record = run_erf(released, model_name="l2s_convnext_micro", images=2, size=64, out_dir=tmp_path / "released",
                     device="cpu", progress=False)
    assert record["weights"] == "raw" and record["step"] is None
    assert json.loads((tmp_path / "released" / "erf.json").read_text())["area_ratio"] == record["area_ratio"]
    # Batches of images give the same map.
    run_erf(released, model_name="l2s_convnext_micro", images=2, size=64, out_dir=tmp_path / "batched",
            device="cpu", progress=False, batch_size=2)
    one_by_one = np.load(tmp_path / "released" / "erf.npy")
    np.testing.assert_allclose(np.load(tmp_path / "batched" / "erf.npy"), one_by_one, rtol=1e-4,
                               atol=1e-5 * one_by_one.max())


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's position-table interpolation notes
@pytest.mark.parametrize("name", ["vit_small", "swin_tiny"])
def test_vit_and_swin_are_measured_at_another_size(name, tmp_path):
    """Models built for one input size take the ERF size through timm's set_input_size."""
    from repro.analysis.erf import run_erf
    from repro.models import create_model

    torch.manual_seed(0)
    torch.save({"model": create_model(name, num_classes=10, img_size=32).state_dict()}, tmp_path / "w.pth")
    record = run_erf(tmp_path / "w.pth", model_name=name, images=1, size=64, out_dir=tmp_path, device="cpu",
                     progress=False)
    assert record["input_resized"] and record["size"] == 64 and record["images"] == 1
    assert 0 < record["area_ratio"]["0.2"] <= record["area_ratio"]["0.99"] <= 1


def test_a_model_tied_to_its_input_size_is_measured_at_that_size(tmp_path):
    """CSWin's blocks are built for their stage resolutions: its ERF input is its training size."""
    from repro.analysis.erf import run_erf
    from repro.models import create_model

    torch.manual_seed(0)
    torch.save({"model": create_model("cswin_tiny", num_classes=10, img_size=32).state_dict()}, tmp_path / "w.pth")
    with pytest.raises(ReproError, match="pass --size 32"):
        run_erf(tmp_path / "w.pth", model_name="cswin_tiny", images=1, size=64, out_dir=tmp_path, progress=False)
    record = run_erf(tmp_path / "w.pth", model_name="cswin_tiny", images=1, out_dir=tmp_path, device="cpu",
                     progress=False)
    assert record["size"] == 32 and "takes no other" in record["size_rule"] and record["input_resized"] is None


# ------------------------------------------------------------------------------------------- the report

def _erf_runs(tmp_path: Path) -> Path:
    """Fixture runs (teacher, two students alone, two NKD students of that teacher) with synthetic ERF files:
    uniform squares of known sides on a 33 x 33 map."""
    runs = tmp_path / "runs"
    sides = {"digits-slak-micro-teacher": 21, "digits-student-s0": 5, "digits-student-s1": 7,
             "digits-student-nkd-s0": 11, "digits-student-nkd-s1": 13}
    for name, side in sides.items():
        run = shutil.copytree(FIXTURE_RUNS / name, runs / name)
        erf_map = np.zeros((33, 33), np.float32)
        lo = 16 - side // 2
        erf_map[lo:lo + side, lo:lo + side] = 1.0
        np.save(run / "erf.npy", erf_map)
        steps = json.loads((run / "summary.json").read_text())["steps_done"]
        record = {"area_ratio": {str(t): r for t, r in area_ratios(erf_map).items()}, "size": 33, "images": 50,
                  "skipped": 0, "weights": "raw", "split": "test", "step": steps, "map": "erf.npy"}
        (run / "erf.json").write_text(json.dumps(record))
    return runs


def test_report_adds_the_erf_table_and_heatmap_row(tmp_path):
    from repro.report import build_report

    runs = _erf_runs(tmp_path)
    shutil.copytree(FIXTURE_RUNS / "digits-student-kd", runs / "digits-student-kd")  # no erf.json: no row
    written = build_report([runs], tmp_path / "out")
    table = pd.read_csv(written["erf_csv"])
    assert list(table["role"]) == ["teacher", "student alone", "distilled"]
    assert list(table["n"]) == [1, 2, 2] and list(table["method"].fillna("")) == ["", "", "nkd"]
    # A uniform a x a square: at t, the smallest odd side s with (s / a)^2 > t, and r = (s / 33)^2, averaged
    # over seeds; for a = 21 that is s = 11, 13, 15 and 21 at t = 0.2, 0.3, 0.5 and 0.99.
    for key in KEYS:
        expected = [_uniform_ratio(21, key), (_uniform_ratio(5, key) + _uniform_ratio(7, key)) / 2,
                    (_uniform_ratio(11, key) + _uniform_ratio(13, key)) / 2]
        assert table[f"area_ratio_{key}"].tolist() == pytest.approx(expected, abs=1e-4)
    teacher = " | ".join(f"{100 * (s / 33) ** 2:.2f}" for s in (11, 13, 15, 21))
    assert f"| teacher | SLaK-micro | — | — | digits | 32 | 33x33 | test | 50 | {teacher} | 1 | complete |" \
        in written["erf_md"].read_text()
    report = written["report"].read_text()
    assert "## Effective receptive field" in report and "figures/erf-digits.png" in report
    assert written["erf_digits"].read_bytes()[:4] == b"\x89PNG"


def _uniform_ratio(side: int, threshold: str) -> float:
    s = next(s for s in range(1, side + 1, 2) if (s / side) ** 2 > float(threshold))
    return (s / 33) ** 2


def test_stale_erf_is_left_out_and_runs_without_erf_have_no_table(tmp_path):
    from repro.report import build_report

    runs = _erf_runs(tmp_path)
    teacher = runs / "digits-slak-micro-teacher" / "erf.json"
    teacher.write_text(json.dumps({**json.loads(teacher.read_text()), "step": 1}))  # trained on since then
    written = build_report([runs], tmp_path / "out")
    assert "teacher" not in pd.read_csv(written["erf_csv"])["role"].tolist()
    assert "digits-slak-micro-teacher" in written["report"].read_text().split("## Effective receptive field")[1]
    plain = build_report([FIXTURE_RUNS / "digits-student-s0"], tmp_path / "plain")
    assert "erf_md" not in plain and "Effective receptive field" not in plain["report"].read_text()


# ------------------------------------------------------------------------------------------- the notebook

def test_erf_notebook_is_paired_packaged_and_declares_its_parameters():
    import jupytext
    import nbformat
    import papermill as pm

    py, ipynb = ROOT / "notebooks" / "erf.py", ROOT / "notebooks" / "erf.ipynb"
    cells = [[(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in jupytext.read(p).cells]
             for p in (py, ipynb)]
    assert cells[0] == cells[1], "run `jupytext --sync notebooks/erf.py`"
    nb = nbformat.read(ipynb, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    assert (ROOT / "repro" / "notebooks" / "erf.ipynb").read_bytes() == ipynb.read_bytes()
    params = pm.inspect_notebook(str(ipynb))
    assert list(params) == ["source", "model", "overrides", "split", "images", "size", "use_ema", "device",
                            "out_dir"]
    assert all(p["help"] for p in params.values())
