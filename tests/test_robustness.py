"""Robustness: CIFAR-C corruptions (generated from a seed, or read from published files), ImageNet-C folders,
the mCE arithmetic, `repro eval --robustness` writing robustness.json, and the report's robustness table."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from repro.analysis.robustness import corruption_errors, summarize_corruptions
from repro.config import DataConfig, load_config
from repro.data import build_imagenet_c_sets, imagenet_wnids
from repro.data import cifar_c
from repro.data.cifar_c import corruption_benchmark, generate_corruption, generated_benchmark, image_seed
from repro.data.corruptions import (ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, FROST_FILES, SEVERITIES,
                                    corrupt, find_frost_pictures, load_frost_pictures, parse_corruptions)
from repro.data.folders import imagenet_c_folders
from repro.data.synthetic import write_fake_cifar, write_fake_imagefolder
from repro.errors import ReproError

pytestmark = pytest.mark.filterwarnings("ignore::repro.data.DataWarning")

FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "runs"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real ./data, ~/data, Kaggle inputs or cache: every search and cache lives inside tmp_path."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REPRO_KAGGLE_ROOT", str(tmp_path / "no-kaggle"))
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    return tmp_path


def scenes(n: int, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8 images with smooth shading, an edge and a little texture, like small photographs."""
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        img = np.zeros((32, 32, 3))
        for _ in range(4):
            fx, fy, phase = rng.uniform(0.5, 3), rng.uniform(0.5, 3), rng.uniform(0, 2 * np.pi)
            img += rng.uniform(0.1, 0.4, 3) * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)[..., None]
        img = (img - img.min()) / (img.max() - img.min())
        img[8:20, 10:22] = rng.uniform(0, 1, 3)
        img += rng.normal(0, 0.03, img.shape)
        out.append((np.clip(img, 0, 1) * 230 + 10).astype(np.uint8))
    return np.stack(out)


def frost_folder(root: Path) -> Path:
    """Six stand-in frost photographs (bright, blotchy), under the benchmark's file names."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for k, name in enumerate(FROST_FILES):
        h, w = 200 + 10 * k, 300
        blotches = np.kron(rng.uniform(0, 1, (h // 10, w // 10, 1)), np.ones((10, 10, 1)))
        img = np.clip(150 + 100 * blotches + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / name)
    return root


# --- generated corruptions -------------------------------------------------------------------------------

def test_generated_corruptions_are_deterministic_from_the_seed(tmp_path):
    images = scenes(3)
    frost = frost_folder(tmp_path / "frost")
    for name in ALL_CORRUPTIONS:
        a = generate_corruption(images, name, seed=0, frost_folder=frost)
        assert a.shape == (15, 32, 32, 3) and a.dtype == np.uint8, name
        assert np.array_equal(a, generate_corruption(images, name, seed=0, frost_folder=frost)), name
        # Each image has its own generator: the first images of a larger set are a smaller set, per severity.
        first_two = generate_corruption(images[:2], name, seed=0, frost_folder=frost)
        assert np.array_equal(first_two.reshape(5, 2, 32, 32, 3), a.reshape(5, 3, 32, 32, 3)[:, :2]), name
    # The seed matters for the random corruptions only.
    for name in ("gaussian_noise", "glass_blur", "motion_blur", "fog", "frost", "elastic_transform", "spatter"):
        b = generate_corruption(images, name, seed=1, frost_folder=frost)
        assert not np.array_equal(b, generate_corruption(images, name, seed=0, frost_folder=frost)), name
    for name in ("contrast", "brightness", "pixelate", "jpeg_compression", "defocus_blur", "saturate"):
        assert np.array_equal(generate_corruption(images, name, seed=1), generate_corruption(images, name, seed=0))
    # Several processes make the same images.
    assert np.array_equal(generate_corruption(images, "glass_blur", seed=0, workers=2),
                          generate_corruption(images, "glass_blur", seed=0))
    # Block s, row i is corrupt(image i, severity s) with that image's own seeded generator.
    a = generate_corruption(images, "shot_noise", seed=5)
    rng = np.random.default_rng(image_seed(5, "shot_noise", 4, 2))
    assert np.array_equal(a[3 * 3 + 2], corrupt(images[2], "shot_noise", 4, rng))


def test_severity_raises_the_change_each_corruption_makes(tmp_path):
    """Higher severity changes images more, measured the way each corruption's parameters grow."""
    images = scenes(6, seed=3)
    pictures = load_frost_pictures(frost_folder(tmp_path / "frost"))

    def change(name, severity, measure):
        # The same generator for every severity (common random numbers), so only the severity differs.
        return np.mean([measure(img, corrupt(img, name, severity, np.random.default_rng([11, i]),
                                             frost_pictures=pictures)) for i, img in enumerate(images)])

    def mean_abs(clean, out):
        return np.abs(out.astype(float) - clean).mean()

    def lost_share(clean, out):  # how much of the clean image no longer shows (frost blends it away)
        return 1 - np.corrcoef(clean.ravel().astype(float), out.ravel().astype(float))[0, 1]

    # Some CIFAR-10-C parameters do not grow in one direction, and are checked the way they do grow: frost
    # trades image for frost (the share of the clean image lost grows; the pixel change peaks at 3), saturate
    # desaturates (1-2) then saturates (3-5), spatter is water (1-3) then mud (4-5), glass blur shuffles once
    # (1-3) or twice (4-5) with more blur before the shuffle (which then moves less), and elastic shrinks its
    # affine jitter while its local warp grows (below).
    families = {"saturate": [(1, 2), (3, 4, 5)], "spatter": [(1, 2, 3), (4, 5)]}
    for name in ALL_CORRUPTIONS:
        if name == "elastic_transform":
            continue
        measure = lost_share if name == "frost" else mean_abs
        values = {s: change(name, s, measure) for s in SEVERITIES}
        if name == "glass_blur":
            assert min(values[4], values[5]) > max(values[1], values[2], values[3]), values
            continue
        for family in families.get(name, [SEVERITIES]):
            steps = [values[s] for s in family]
            # Motion blur's severities 3 and 4 differ only in kernel taps of weight < 1e-9: equal images.
            assert all(b >= a - 1e-9 for a, b in zip(steps, steps[1:])), (name, values)
            assert steps[-1] > steps[0], (name, values)

    class NoAffine:
        """A generator whose first draw (the affine jitter) is zero, so only the elastic field moves pixels."""

        def __init__(self, seed):
            self.rng, self.first = np.random.default_rng(seed), True

        def uniform(self, low, high, size):
            if self.first:
                self.first = False
                return np.zeros(size)
            return self.rng.uniform(low, high, size)

    local = [np.mean([mean_abs(img, corrupt(img, "elastic_transform", s, NoAffine(i))) for i, img in
                      enumerate(images)]) for s in SEVERITIES]
    assert local[0] == 0 and all(b > a for a, b in zip(local, local[1:])), local


def test_generated_set_has_the_cifar_c_layout_and_is_cached(tmp_path, monkeypatch):
    images, labels = scenes(4), np.array([3, 1, 4, 1])
    cache = tmp_path / "cache"
    bench = generated_benchmark("cifar10", images, labels, corruptions=["gaussian_noise", "frost", "contrast"],
                                seed=2, cache_dir=cache)
    assert bench.source == "generated" and bench.name == "CIFAR-10-C" and bench.per_severity == 4
    # No frost photographs here: frost is left out and says why.
    assert bench.corruptions == ["gaussian_noise", "contrast"] and "frost" in bench.unavailable
    stored = np.load(bench.folder / "gaussian_noise.npy")
    assert stored.shape == (20, 32, 32, 3) and stored.dtype == np.uint8
    assert np.array_equal(np.load(bench.folder / "labels.npy"), np.tile(labels, 5))
    assert np.array_equal(bench.images("gaussian_noise", 3), stored[8:12])
    assert np.array_equal(stored, generate_corruption(images, "gaussian_noise", seed=2))
    ds = bench.dataset("contrast", 5, transform=None, limit=2)
    assert len(ds) == 2 and ds[1][1] == 1 and np.array_equal(np.asarray(ds[1][0]), bench.images("contrast", 5)[1])

    # A second request (or a smaller one) reads the cache back; nothing is generated again.
    def no_generation(*args, **kwargs):
        raise AssertionError("the cached set should have been reused")

    monkeypatch.setattr(cifar_c, "generate_corruption", no_generation)
    again = generated_benchmark("cifar10", images, labels, corruptions=["contrast"], seed=2, cache_dir=cache, limit=3)
    assert again.folder == bench.folder and np.array_equal(again.images("contrast", 2, limit=3),
                                                           bench.images("contrast", 2)[:3])
    # Other test images or another seed never reuse it.
    with pytest.raises(AssertionError, match="reused"):
        generated_benchmark("cifar10", images[::-1].copy(), labels, corruptions=["contrast"], seed=2,
                            cache_dir=cache)
    with pytest.raises(AssertionError, match="reused"):
        generated_benchmark("cifar10", images, labels, corruptions=["contrast"], seed=3, cache_dir=cache)


def test_frost_pictures_are_found_in_a_folder_and_checked(tmp_path):
    folder = frost_folder(tmp_path / "frost")
    assert find_frost_pictures(folder) == folder
    pictures = load_frost_pictures(folder)
    assert len(pictures) == 6 and pictures[0].shape == (40, 60, 3)  # scaled to a fifth
    (folder / "frost3.png").unlink()
    with pytest.raises(ReproError, match="lacks frost3.png"):
        find_frost_pictures(folder)
    with pytest.raises(ReproError, match="frost needs the six frost photographs"):
        corrupt(scenes(1)[0], "frost", 1, np.random.default_rng(0))


def test_corruption_names_and_bad_inputs():
    assert parse_corruptions("main") == list(CORRUPTIONS) and parse_corruptions("extra") == list(EXTRA_CORRUPTIONS)
    assert parse_corruptions("fog,main")[:2] == ["fog", "gaussian_noise"] and parse_corruptions("all") is None
    with pytest.raises(ReproError, match="unknown corruption fogg; choose from gaussian_noise"):
        parse_corruptions("fogg")
    with pytest.raises(ReproError, match=r"need \(32, 32, 3\) uint8 images, found \(16, 16, 3\)"):
        corrupt(np.zeros((16, 16, 3), np.uint8), "fog", 1, np.random.default_rng(0))
    with pytest.raises(ReproError, match="severity must be one of 1-5, found 6"):
        corrupt(scenes(1)[0], "fog", 6, np.random.default_rng(0))


# --- published CIFAR-C files -----------------------------------------------------------------------------

def write_published(folder: Path, labels: np.ndarray, names=("gaussian_noise", "fog")) -> dict[str, np.ndarray]:
    """A folder in the released CIFAR-10-C layout with random images."""
    folder.mkdir(parents=True)
    np.save(folder / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    arrays = {}
    for k, name in enumerate(names):
        arrays[name] = np.random.default_rng(k).integers(0, 256, (5 * len(labels), 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", arrays[name])
    return arrays


def test_published_files_are_read_for_the_matching_test_split(isolated):
    labels = np.array([0, 2, 1, 2, 0, 1])
    images = scenes(6)
    # A folder for another dataset (other labels) is skipped; the one whose labels match is read.
    write_published(isolated / "work" / "data" / "CIFAR-100-C" / "0-other", np.array([5, 7, 9, 9, 8, 5]))
    arrays = write_published(isolated / "work" / "data" / "CIFAR-10-C", labels)
    bench = corruption_benchmark("cifar10", images, labels)
    assert bench.source == "published" and bench.folder.name == "CIFAR-10-C" and bench.per_severity == 6
    assert bench.corruptions == ["gaussian_noise", "fog"] and "snow" in bench.unavailable
    assert np.array_equal(bench.images("fog", 4), arrays["fog"][18:24])
    assert np.array_equal(bench.images("gaussian_noise", 2, limit=2), arrays["gaussian_noise"][6:8])
    assert bench.describe()["source"] == "published" and bench.describe()["seed"] is None
    # Through data.robustness_root too, and the corruptions can be narrowed.
    other = corruption_benchmark("cifar10", images, labels, root=str(isolated / "work" / "data"),
                                 corruptions=["fog", "snow"])
    assert other.corruptions == ["fog"] and list(other.unavailable) == ["snow"]
    # Forced generation ignores the published files.
    assert corruption_benchmark("cifar10", images, labels, corruptions=["fog"], source="generated",
                                limit=2).source == "generated"
    # Required but absent (no folder matches these labels): the places searched and the fixes.
    with pytest.raises(ReproError, match="(?s)no CIFAR-10-C folder .*Looked in:.*--corruption-source generated"):
        corruption_benchmark("cifar10", images, labels[::-1].copy(), source="published")
    np.save(isolated / "work" / "data" / "CIFAR-10-C" / "snow.npy", np.zeros((30, 16, 16, 3), np.uint8))
    with pytest.raises(ReproError, match=r"snow.npy has shape \(30, 16, 16, 3\) uint8; expected \(30, 32, 32, 3\)"):
        corruption_benchmark("cifar10", images, labels)


# --- mCE -------------------------------------------------------------------------------------------------

def test_mce_against_a_hand_computation():
    model = {"gaussian_noise": {"1": {"top1": 80.0, "n": 10}, "2": {"top1": 60.0, "n": 10}},
             "contrast": {"1": {"top1": 90.0, "n": 10}, "2": {"top1": 70.0, "n": 10}},
             "speckle_noise": {"1": {"top1": 10.0, "n": 10}, "2": {"top1": 0.0, "n": 10}}}
    base = {"gaussian_noise": {"1": {"top1": 70.0, "n": 10}, "2": {"top1": 50.0, "n": 10}},
            "contrast": {"1": {"top1": 80.0, "n": 10}, "2": {"top1": 60.0, "n": 10}},
            "speckle_noise": {"1": {"top1": 90.0, "n": 10}, "2": {"top1": 90.0, "n": 10}}}
    res = corruption_errors(model, base, clean=95.0, clean_baseline=90.0)
    # CE = summed errors / the baseline's: (20 + 40) / (30 + 50) and (10 + 30) / (20 + 40); extras never count.
    assert res["ce"] == pytest.approx({"gaussian_noise": 75.0, "contrast": 200 / 3})
    assert res["mce"] == pytest.approx((75.0 + 200 / 3) / 2) and res["corruptions"] == ["gaussian_noise", "contrast"]
    # Relative CE subtracts each model's clean error (5 and 10): (15 + 35) / (20 + 40), (5 + 25) / (10 + 30).
    assert res["relative_ce"] == pytest.approx({"gaussian_noise": 250 / 3, "contrast": 75.0})
    assert res["relative_mce"] == pytest.approx((250 / 3 + 75.0) / 2)
    # A severity scored on other images (another n) is not compared.
    base["contrast"]["2"]["n"] = 99
    assert corruption_errors(model, base)["ce"]["contrast"] == pytest.approx(100 * 10 / 20)
    summary = summarize_corruptions(model)
    assert summary["per_corruption"]["gaussian_noise"] == {"top1": 70.0, "by_severity": {"1": 80.0, "2": 60.0},
                                                           "images": 20}
    assert summary["per_severity"] == pytest.approx({"1": 85.0, "2": 65.0})
    assert summary["mean_corruption_accuracy"] == pytest.approx(75.0)
    assert summary["extra_mean_accuracy"] == pytest.approx(5.0) and "fog" in summary["missing_from_mean"]


# --- ImageNet-C ------------------------------------------------------------------------------------------

def test_imagenet_c_folders_and_their_scores(isolated):
    from repro.models import create_model
    from repro.train import evaluate_robustness

    wnids = imagenet_wnids()
    chosen = [wnids[5], wnids[300], wnids[998]]
    root = isolated / "robust"
    # Flat (<corruption>/<severity>/) and grouped (blur/<corruption>/<severity>/) trees, and ImageNet-R beside.
    for corruption, severity in (("gaussian_noise", 1), ("gaussian_noise", 3)):
        write_fake_imagefolder(root / "imagenet-c" / corruption / str(severity), chosen, per_class=2, size=32)
    write_fake_imagefolder(root / "imagenet-c" / "blur" / "motion_blur" / "2", chosen, per_class=1, size=32)
    write_fake_imagefolder(root / "imagenet-r", chosen[:2], per_class=1, size=32)
    (root / "imagenet-c" / "gaussian_noise" / "notes").mkdir()
    found = imagenet_c_folders(root)
    assert list(found) == ["gaussian_noise", "motion_blur"] and sorted(found["gaussian_noise"]) == [1, 3]
    assert found["motion_blur"][2] == root / "imagenet-c" / "blur" / "motion_blur" / "2"
    cfg = DataConfig(name="imagenet", robustness_root=str(root), img_size=32)
    sets = build_imagenet_c_sets(cfg)
    assert sorted(sets) == [("gaussian_noise", 1), ("gaussian_noise", 3), ("motion_blur", 2)]
    assert sets["gaussian_noise", 3].class_index_map == [5, 300, 998] and len(sets["gaussian_noise", 3]) == 6
    assert list(build_imagenet_c_sets(cfg, severities=[3])) == [("gaussian_noise", 3)]

    torch.manual_seed(0)
    model = create_model("l2s_convnext_micro", num_classes=1000, img_size=32)
    torch.save({"model": model.state_dict()}, isolated / "released.pth")
    res = evaluate_robustness(isolated / "released.pth", model_name="l2s_convnext_micro", limit=3,
                              data_overrides=["data.name=imagenet", f"data.robustness_root={root}",
                                              "data.img_size=32", "data.num_workers=0"])
    assert res["sets"]["imagenet-r"]["n"] == 2
    bench = res["corruption"]
    assert bench["benchmark"] == "ImageNet-C" and sorted(bench["scores"]) == ["gaussian_noise", "motion_blur"]
    assert bench["scores"]["gaussian_noise"]["3"]["n"] == 3  # evenly spaced over the classes
    assert bench["scores"]["motion_blur"]["2"]["n"] == 3
    # The same top-1 by hand: argmax over the three classes' logits of images 0, 2 and 5 (one per class).
    ds = sets["gaussian_noise", 3]
    model.eval()
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in (0, 2, 5)])
        y = torch.tensor([ds[i][1] for i in (0, 2, 5)])
        hits = model(x)[:, [5, 300, 998]].argmax(1).eq(y).sum().item()
    assert bench["scores"]["gaussian_noise"]["3"]["top1"] == pytest.approx(100 * hits / 3)
    with pytest.raises(ReproError, match="holds no ImageNet-A/-R/-Sketch style folder .* and no ImageNet-C tree"):
        evaluate_robustness(isolated / "released.pth", model_name="l2s_convnext_micro",
                            data_overrides=["data.name=imagenet", f"data.robustness_root={isolated / 'work'}",
                                            "data.img_size=32"])


# --- repro eval --robustness and the report --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny ConvNeXt trained for five steps on a generated CIFAR-10-format dataset (checkpoints kept)."""
    from repro.train import train

    root = tmp_path_factory.mktemp("tiny")
    write_fake_cifar(root / "data", num_classes=10, train_per_class=8, test_per_class=3)
    cfg = load_config("quickstart-student", overrides=[
        "data.name=cifar10", f"data.root={root / 'data'}", "data.num_workers=0", "data.val_fraction=0",
        "train.epochs=1", "train.batch_size=16", "train.keep_checkpoints=5"])
    summary = train(cfg, root / "run", checkpoint_every=1, progress=False)
    assert summary["status"] == "complete" and summary["steps_done"] == 5
    return root / "run"


def test_repro_eval_robustness_writes_robustness_json(tiny_run, tmp_path, capsys):
    from repro.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cache = tmp_path / "corruptions"
    common = ["--limit", "4", "--corruptions", "gaussian_noise,contrast,speckle_noise", "--corruption-cache",
              str(cache), "--no-progress"]
    assert main(["eval", "--checkpoint", str(run), "--robustness", *common]) == 0
    record = json.loads((run / "robustness.json").read_text())
    bench = record["corruption"]
    assert record["model"] == "l2s_convnext_micro" and record["step"] == 5 and record["sets"] == {}
    assert bench["benchmark"] == "CIFAR-10-C" and bench["source"] == "generated" and bench["seed"] == 0
    assert sorted(bench["scores"]) == ["contrast", "gaussian_noise", "speckle_noise"]
    assert all(bench["scores"][c][str(s)]["n"] == 4 for c in bench["scores"] for s in SEVERITIES)
    assert bench["per_severity"].keys() == {"1", "2", "3", "4", "5"} and 0 <= bench["clean_top1"] <= 100
    main_mean = np.mean([bench["per_corruption"][c]["top1"] for c in ("gaussian_noise", "contrast")])
    assert bench["mean_corruption_accuracy"] == pytest.approx(main_mean)  # the extra corruption stays out
    assert bench["mce"]["mce"] is None and "no baseline given" in bench["mce"]["note"]
    assert "robustness.json:" in capsys.readouterr().out

    # Against a baseline (here an earlier checkpoint of the same run), with the baseline named in the file.
    baseline = run / "checkpoints" / "ckpt-00000002.pt"
    assert main(["eval", "--checkpoint", str(run), "--robustness", "--baseline", str(baseline), *common]) == 0
    record = json.loads((run / "robustness.json").read_text())
    mce = record["corruption"]["mce"]
    assert mce["baseline"]["file"] == str(baseline) and mce["corruptions"] == ["gaussian_noise", "contrast"]
    assert mce["mce"] == pytest.approx(np.mean(list(mce["ce"].values())))
    assert "mean over 2 of the 15 benchmark corruptions" in mce["note"] and "not scored for both" in mce["note"]
    # The run against itself as baseline: every CE is 100 (when the baseline makes errors at all).
    out = tmp_path / "self"
    assert main(["eval", "--checkpoint", str(run), "--robustness", "--baseline", str(run), "--out", str(out),
                 *common]) == 0
    self_mce = json.loads((out / "robustness.json").read_text())["corruption"]["mce"]
    assert all(v == pytest.approx(100.0) for v in self_mce["ce"].values() if v is not None)
    # An earlier checkpoint has no run folder to write to.
    assert main(["eval", "--checkpoint", str(baseline), "--robustness", *common]) == 2
    assert "pass --out DIR" in capsys.readouterr().err
    # A baseline scored on other images (another seed) is refused, not compared.
    other = json.loads((out / "robustness.json").read_text())
    other["corruption"]["seed"] = 9
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["eval", "--checkpoint", str(run), "--robustness", "--baseline", str(tmp_path / "other.json"),
                 *common]) == 2
    assert "scored on other corruption images (seed 0 for the model, 9 for the baseline)" in capsys.readouterr().err


def test_report_robustness_table(tiny_run, tmp_path):
    from repro.analysis.robustness import run_robustness
    from repro.report import build_report, load_published

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run, runs / "cifar")
    run_robustness(runs / "cifar", data_overrides=["data.num_workers=0"], corruptions=["fog"], limit=3,
                   cache_dir=tmp_path / "corruptions", baseline=runs / "cifar")
    # An ImageNet student of SLaK-T with an ImageNet-R score (summary and robustness.json written by hand).
    shutil.copytree(FIXTURE_RUNS / "digits-student-s0", runs / "inet")
    summary = json.loads((runs / "inet" / "summary.json").read_text())
    summary.update(model="l2s_convnext_tiny", dataset="imagenet", img_size=224, epochs_total=120, epochs_done=120,
                   distill={"method": "nkd", "teacher_model": "slak_tiny", "teacher_path": "x",
                            "teacher_sha256": "0", "teacher_top1": None}, state_digest="inet")
    (runs / "inet" / "summary.json").write_text(json.dumps(summary))
    (runs / "inet" / "robustness.json").write_text(json.dumps({
        "format": 1, "model": "l2s_convnext_tiny", "weights": "ema", "step": None, "corruption": None,
        "sets": {"imagenet-r": {"top1": 46.0, "top5": 60.0, "n": 30000}}}))
    written = build_report([runs], tmp_path / "out")
    table = pd.read_csv(written["robustness_csv"])
    cifar = table[table["dataset"] == "cifar10"].iloc[0]
    assert cifar["set"] == "CIFAR-10-C (generated, seed 0, 1 of 15 corruptions)"
    assert cifar["mce_mean"] == pytest.approx(100.0) and cifar["images"] == "3 per severity"
    assert pd.isna(cifar["published_top1"])
    r = table[(table["dataset"] == "imagenet") & (table["set"] == "ImageNet-R") & (table["status"] == "complete")]
    assert len(r) == 1 and r.iloc[0]["published_top1"] == 47.58 and r.iloc[0]["delta_top1"] == pytest.approx(-1.58)
    assert r.iloc[0]["teacher"] == "SLaK-T" and r.iloc[0]["source"] == "Robustness (authors' raw logs)"
    # Every other published ImageNet-A/-R/-Sketch number is listed as not run: 9 students x 3 sets, less one.
    not_run = table[table["status"] == "not run"]
    assert len(not_run) == 26 and set(not_run["set"]) == {"ImageNet-A", "ImageNet-R", "ImageNet-Sketch"}
    published = load_published()
    robust = published[published["metric"].str.startswith("imagenet_")]
    assert len(robust) == 27 and robust["value"].notna().all()
    assert len(robust.groupby(["model", "teacher"])) == 9
    md = written["robustness_md"].read_text()
    assert "| ConvNeXt-T (7x7+BN) | SLaK-T | NKD | imagenet | 224 | ImageNet-R | 30000 | 46.00 | 1 | 47.58 |" in md
    assert "## Robustness" in written["report"].read_text()
    # A robustness.json of weights the run has since trained past is left out and named.
    record = json.loads((runs / "cifar" / "robustness.json").read_text())
    (runs / "cifar" / "robustness.json").write_text(json.dumps({**record, "step": 2}))
    written = build_report([runs], tmp_path / "out2")
    assert "cifar10" not in set(pd.read_csv(written["robustness_csv"])["dataset"])
    assert "Left out: the robustness.json of" in written["report"].read_text()
