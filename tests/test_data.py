"""repro.data: dataset discovery and reading, bad-input errors, splits, transforms, resumable loading."""
from __future__ import annotations

import pickle
import random
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from repro.config import DataConfig
from repro.data import (DIGITS_MEAN, DIGITS_STD, DataWarning, ResumableSampler, build_data, build_loader,
                        build_robustness_sets, imagenet_wnids, load_robustness_folder, stratified_split)
from repro.data.synthetic import write_fake_cifar, write_fake_imagefolder
from repro.errors import ReproError

pytestmark = pytest.mark.filterwarnings("ignore::repro.data.DataWarning")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real ./data, ~/data or Kaggle inputs: every search happens inside tmp_path."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REPRO_KAGGLE_ROOT", str(tmp_path / "no-kaggle"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    return tmp_path


def cifar_cfg(name="cifar100", **kw) -> DataConfig:
    return DataConfig(name=name, num_workers=0, **kw)


# ---------------------------------------------------------------- digits (embedded)

def test_digits_load_offline_with_fixed_stratified_split():
    from sklearn.datasets import load_digits

    from repro.data.digits import digits_arrays, digits_stats

    bundle = build_data(DataConfig(name="digits", val_fraction=0.1))
    sizes = bundle.info["sizes"]
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797
    assert sizes["test"] == 359 and sizes["val"] == 144 and bundle.eval_split == "val"
    assert bundle.num_classes == 10 and bundle.classes == [str(d) for d in range(10)]
    assert np.bincount(bundle.test.targets).min() >= 35  # stratified: about 36 of each digit
    # the same 8x8 scans as scikit-learn's public loader, upsampled bilinearly, grey repeated in RGB
    images, labels = digits_arrays()
    ref = load_digits()
    assert np.array_equal(labels, ref.target)
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])
    grey = torch.from_numpy(ref.images / 16.0).float()[:, None]
    up = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    assert np.array_equal(images[..., 0], (up[:, 0] * 255).round().to(torch.uint8).numpy())
    coarse = images[..., 0].reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4))
    assert np.corrcoef(coarse.ravel(), ref.images.ravel())[0, 1] > 0.95
    # the hard-coded normalisation is the training split's statistics
    mean, std = digits_stats()
    assert np.allclose(mean, DIGITS_MEAN, atol=1e-4) and np.allclose(std, DIGITS_STD, atol=1e-4)
    x, y = bundle.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    # the split does not depend on anything but the dataset: a second build gives the same images
    again = build_data(DataConfig(name="digits", val_fraction=0.1))
    assert again.train.indices == bundle.train.indices and again.val.indices == bundle.val.indices


def test_val_split_is_stratified_disjoint_and_uses_eval_transforms():
    bundle = build_data(DataConfig(name="digits", val_fraction=0.2, randaugment="rand-m9-mstd0.5-inc1"))
    train_idx, val_idx = set(bundle.train.indices), set(bundle.val.indices)
    assert not train_idx & val_idx and len(train_idx | val_idx) == 1438
    assert np.bincount(bundle.val.targets).min() >= 27  # about 29 of each class
    assert torch.equal(bundle.val[5][0], bundle.val[5][0])  # eval transforms are deterministic
    torch.manual_seed(0)
    a = bundle.train[5][0]
    assert any(not torch.equal(a, bundle.train[5][0]) for _ in range(5))  # training ones are random
    whole = build_data(DataConfig(name="digits", val_fraction=0.0))
    assert whole.eval_split == "test" and whole.val is whole.test and len(whole.train) == 1438


def test_stratified_split_small_classes_still_hold_out():
    targets = np.repeat(np.arange(100), 5)
    keep, held = stratified_split(targets, 0.1, seed=0)
    assert len(held) == 50 and len(keep) == 450 and not set(keep) & set(held)
    assert np.bincount(targets[held], minlength=100).max() == 1
    assert np.bincount(targets[keep], minlength=100).min() >= 4
    assert stratified_split(targets, 0.1, seed=0) == (keep, held)
    assert stratified_split(targets, 0.1, seed=1) != (keep, held)


# ---------------------------------------------------------------- CIFAR

def test_cifar100_reads_generated_pickles_exactly(isolated):
    folder = write_fake_cifar(isolated / "work" / "data", num_classes=100, train_per_class=5, test_per_class=2)
    with pytest.warns(DataWarning, match="differ from the official release"):
        bundle = build_data(cifar_cfg(val_fraction=0.1))
    assert bundle.num_classes == 100 and bundle.info["root"] == str(folder)
    assert bundle.info["sizes"] == {"train": 450, "val": 50, "test": 200}
    assert bundle.info["official_files"] is False and bundle.info["split_seed"] == 0
    with open(folder / "test", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert set(raw) >= {b"data", b"fine_labels", b"coarse_labels", b"filenames"}
    base = bundle.test.base
    assert base.targets == raw[b"fine_labels"]
    # torchvision's reading, HWC: pixel (y, x, c) is row value c*1024 + y*32 + x
    img = np.array(base[7][0])
    assert np.array_equal(img, raw[b"data"][7].reshape(3, 32, 32).transpose(1, 2, 0))
    x = bundle.test[7][0]
    mean, std = torch.tensor(bundle.mean)[:, None, None], torch.tensor(bundle.std)[:, None, None]
    assert torch.allclose(x, (torch.from_numpy(img).permute(2, 0, 1) / 255 - mean) / std, atol=1e-6)
    assert bundle.mean == (0.5071, 0.4865, 0.4409) and bundle.std == (0.2673, 0.2564, 0.2762)


def test_cifar10_layout_and_class_check(isolated):
    write_fake_cifar(isolated / "work" / "data", num_classes=10, train_per_class=5, test_per_class=2)
    bundle = build_data(cifar_cfg("cifar10", val_fraction=0.0), num_classes_expected=10)
    assert bundle.num_classes == 10 and len(bundle.train) == 50 and len(bundle.test) == 20
    assert bundle.mean == (0.4914, 0.4822, 0.4465)
    with pytest.raises(ReproError, match=r"10 classes but the model is configured for 100.*model\.num_classes"):
        build_data(cifar_cfg("cifar10"), num_classes_expected=100)


@pytest.mark.parametrize("where", ["root-parent", "root-folder", "renamed", "home", "kaggle"])
def test_cifar_is_found_in_every_supported_place(isolated, monkeypatch, where):
    root = None
    if where == "root-parent":
        write_fake_cifar(isolated / "mine", num_classes=4)
        root = str(isolated / "mine")
    elif where == "root-folder":
        root = str(write_fake_cifar(isolated / "mine", num_classes=4))
    elif where == "renamed":  # Kaggle uploads often drop the cifar-100-python folder name
        folder = write_fake_cifar(isolated / "mine", num_classes=4)
        folder.rename(isolated / "mine" / "cifar100")
        root = str(isolated / "mine")
    elif where == "home":
        write_fake_cifar(isolated / "home" / "data", num_classes=4)
    else:
        deep = isolated / "kaggle" / "input" / "competitions" / "some-slug" / "v2"
        write_fake_cifar(deep, num_classes=4)
        monkeypatch.setenv("REPRO_KAGGLE_ROOT", str(isolated / "kaggle"))
    bundle = build_data(cifar_cfg(root=root))
    assert bundle.num_classes == 4 and len(bundle.test) == 8


def test_missing_cifar_lists_every_place_and_remedies(isolated, monkeypatch):
    (isolated / "kaggle" / "input" / "other-dataset").mkdir(parents=True)
    monkeypatch.setenv("REPRO_KAGGLE_ROOT", str(isolated / "kaggle"))
    with pytest.raises(ReproError) as err:
        build_data(cifar_cfg())
    msg = str(err.value)
    for place in (isolated / "work" / "data", isolated / "home" / "data", isolated / "kaggle" / "input"):
        assert str(place) in msg
    assert "data.root" in msg and "data.download=true" in msg and "attach" in msg
    with pytest.raises(ReproError, match=r"nowhere.*does not exist"):
        build_data(cifar_cfg(root=str(isolated / "nowhere")))


def test_unextracted_archive_is_pointed_out(isolated):
    (isolated / "work" / "data").mkdir()
    (isolated / "work" / "data" / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ReproError, match="Found the archive .*cifar-100-python.tar.gz: extract it"):
        build_data(cifar_cfg())


def test_cifar_bad_files_are_named(isolated):
    data = isolated / "work" / "data"
    folder = write_fake_cifar(data, num_classes=5)
    (folder / "test").unlink()
    with pytest.raises(ReproError, match=r"cifar-100-python looks like .* lacks test\b"):
        build_data(cifar_cfg())

    folder = write_fake_cifar(data, num_classes=5)
    raw = (folder / "train").read_bytes()
    (folder / "train").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReproError, match=rf"file {folder / 'train'} cannot be read .* truncated"):
        build_data(cifar_cfg())

    folder = write_fake_cifar(data, num_classes=5)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"coarse_label_names": []}, f)
    with pytest.raises(ReproError, match=rf"file {folder / 'meta'} has no 'fine_label_names'"):
        build_data(cifar_cfg())

    folder = write_fake_cifar(data, num_classes=5, img_size=16)
    with pytest.raises(ReproError, match=r"file .*train holds data of shape \(25, 768\).* 3072"):
        build_data(cifar_cfg())


def test_cifar_download_failure_is_explained(isolated, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(ReproError, match="could not download .*network is unreachable"):
        build_data(cifar_cfg(download=True))


def test_config_errors():
    with pytest.raises(ReproError, match="unknown data.name 'cifar1000'; choose one of digits, cifar10"):
        build_data(DataConfig(name="cifar1000"))
    with pytest.raises(ReproError, match="val_fraction"):
        build_data(DataConfig(val_fraction=1.0))
    with pytest.raises(ReproError, match="randaugment 'rand-x9' is not a valid"):
        build_data(DataConfig(randaugment="rand-x9"))
    with pytest.raises(ReproError, match="10 classes but the model is configured for 100"):
        build_data(DataConfig(), num_classes_expected=100)


def test_transforms_follow_official_recipe():
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    from repro.data import eval_transform, train_transform

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    small = train_transform(32, mean=mean, std=std, randaugment="rand-m9-mstd0.5-inc1", reprob=0.25,
                            native_size=32).transforms
    names = [type(t).__name__ for t in small]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "RandAugment", "MaybeToTensor", "Normalize",
                     "RandomErasing"]
    assert small[0].padding == 4 and small[0].size == (32, 32)
    assert isinstance(small[-1], RandomErasing) and small[-1].mode == "pixel" and small[-1].probability == 0.25
    big = train_transform(224, mean=mean, std=std, randaugment="rand-m9-mstd0.5-inc1", native_size=32).transforms
    assert type(big[0]).__name__ == "RandomResizedCropAndInterpolation" and big[0].scale == (0.08, 1.0)
    assert "ColorJitter" not in [type(t).__name__ for t in big]
    at224 = eval_transform(224, mean=mean, std=std, native_size=32).transforms
    assert isinstance(at224[0], T.Resize) and at224[0].size == 256  # 224 / 0.875, shorter side
    assert at224[0].interpolation == T.InterpolationMode.BICUBIC and at224[1].size == (224, 224)
    at384 = eval_transform(384, mean=mean, std=std).transforms
    assert at384[0].size == (384, 384)  # ConvNeXt resizes without cropping from 384 px on
    assert [type(t).__name__ for t in eval_transform(32, mean=mean, std=std, native_size=32).transforms] == [
        "ToTensor", "Normalize"]
    smaller = train_transform(16, mean=mean, std=std, hflip=0.0, native_size=32).transforms
    assert [type(t).__name__ for t in smaller][:2] == ["Resize", "RandomCrop"]
    assert "RandomHorizontalFlip" not in [type(t).__name__ for t in smaller]


# ---------------------------------------------------------------- class folders

def test_folder_dataset_and_its_errors(isolated):
    root = isolated / "shapes"
    write_fake_imagefolder(root / "train", ["cat", "dog", "eel"], per_class=4, size=20)
    write_fake_imagefolder(root / "val", ["cat", "dog", "eel"], per_class=2, size=20, seed=1)
    bundle = build_data(DataConfig(name="folder", root=str(root), img_size=16, val_fraction=0.25))
    assert bundle.classes == ["cat", "dog", "eel"] and bundle.num_classes == 3
    assert bundle.info["sizes"] == {"train": 9, "val": 3, "test": 6}
    assert bundle.train[0][0].shape == (3, 16, 16) and bundle.test[0][0].shape == (3, 16, 16)
    assert bundle.mean == (0.485, 0.456, 0.406)
    with pytest.raises(ReproError, match="3 classes but the model is configured for 5"):
        build_data(DataConfig(name="folder", root=str(root)), num_classes_expected=5)
    with pytest.raises(ReproError, match="needs data.root"):
        build_data(DataConfig(name="folder"))
    with pytest.raises(ReproError, match=r"expected .*missing/train/<class>/.*does not exist"):
        build_data(DataConfig(name="folder", root=str(isolated / "missing")))
    write_fake_imagefolder(isolated / "odd" / "train", ["cat", "dog"], per_class=1, size=8)
    write_fake_imagefolder(isolated / "odd" / "val", ["cat"], per_class=1, size=8)
    with pytest.raises(ReproError, match=r"val has 1 class folders .* has 2.*Missing in val: dog"):
        build_data(DataConfig(name="folder", root=str(isolated / "odd")))


def test_imagenet_layout_found_by_search(isolated):
    wnids = ["n01440764", "n01443537", "n01484850"]
    base = isolated / "work" / "data" / "imagenet"
    write_fake_imagefolder(base / "train", wnids, per_class=3, size=12)
    (base / "val").mkdir()
    (base / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(ReproError, match="val has no class folders .*LOC_val_solution.csv"):
        build_data(DataConfig(name="imagenet"))
    (base / "val" / "ILSVRC2012_val_00000001.JPEG").unlink()
    write_fake_imagefolder(base / "val", wnids, per_class=1, size=12)
    bundle = build_data(DataConfig(name="imagenet", img_size=16, val_fraction=0.0))
    assert bundle.classes == wnids and len(bundle.test) == 3 and bundle.info["root"] == str(base)
    assert imagenet_wnids(base / "train") == wnids


def test_robustness_sets_map_wnids_to_head_indices(isolated):
    full = imagenet_wnids()
    assert len(full) == 1000 and full == sorted(full) and full[0] == "n01440764"
    subset = [full[1], full[2], full[999]]
    write_fake_imagefolder(isolated / "robust" / "imagenet-r", subset, per_class=2, size=12)
    write_fake_imagefolder(isolated / "robust" / "sketch", full[:4], per_class=1, size=12)
    sets = build_robustness_sets(DataConfig(robustness_root=str(isolated / "robust"), img_size=16))
    assert sorted(sets) == ["imagenet-r", "sketch"]
    r = sets["imagenet-r"]
    assert r.class_index_map == [1, 2, 999] and r.classes == subset
    x, y = r[5]
    assert x.shape == (3, 16, 16) and full[r.class_index_map[y]] == subset[2]
    logits = torch.zeros(1, 1000)
    logits[0, 999] = 5.0
    assert logits[:, r.class_index_map].argmax(1).item() == 2  # restricting the head to the set's classes
    own = load_robustness_folder(isolated / "robust" / "imagenet-r", wnids=[full[999], full[2], full[1]])
    assert own.class_index_map == [2, 1, 0]
    write_fake_imagefolder(isolated / "bad", ["n99999999"], per_class=1, size=8)
    with pytest.raises(ReproError, match="n99999999 are not among the model's 1000 classes"):
        build_robustness_sets(DataConfig(robustness_root=str(isolated / "bad")))


# ---------------------------------------------------------------- sampler and loader

@pytest.mark.parametrize("n,world,drop_last", [(10, 3, False), (10, 3, True), (9, 3, False), (2, 4, False)])
def test_sampler_shares_match_distributed_sampler(n, world, drop_last):
    for rank in range(world):
        ours = ResumableSampler(n, seed=0, shuffle=False, rank=rank, world_size=world, drop_last=drop_last)
        ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=drop_last)
        assert [i for i, _ in ours] == list(ref) and len(ours) == len(ref)


def test_sampler_order_is_seeded_shared_and_resumable():
    shares = [list(ResumableSampler(10, seed=3, rank=r, world_size=2)) for r in range(2)]
    indices = [i for s in shares for i, _ in s]
    assert sorted(indices) == list(range(10))  # ranks split one permutation
    seeds = [s for share in shares for _, s in share]
    assert len(set(seeds)) == 10
    a = ResumableSampler(10, seed=3, world_size=2)
    assert list(a) == shares[0]
    a.set_epoch(1)
    assert [i for i, _ in a] != [i for i, _ in shares[0]]
    a.set_start(3)
    rest = list(a)
    assert len(a) == 2
    full = ResumableSampler(10, seed=3, world_size=2)
    full.set_epoch(1)
    assert rest == list(full)[3:]
    state = a.state_dict()
    b = ResumableSampler(10, seed=3, world_size=2)
    b.load_state_dict(state)
    assert b.epoch == 1 and list(b) == rest
    b.set_epoch(2)
    assert b.start == 0 and len(b) == 5
    # another world size resumes at the same global position (6 of 10 consumed -> 6 per single rank)
    single = ResumableSampler(10, seed=3)
    single.load_state_dict(state)
    assert single.start == 6 and list(single) == list(full_order(epoch=1))[6:]
    assert b.state_dict(samples_done=4)["consumed"] == 8
    with pytest.raises(ReproError, match="training set of 10 samples, this one has 11"):
        ResumableSampler(11, seed=3).load_state_dict(state)


def full_order(epoch, n=10, seed=3):
    """(index, sample seed) over a whole epoch on one rank."""
    sampler = ResumableSampler(n, seed=seed)
    sampler.set_epoch(epoch)
    return sampler


def _epoch_batches(dataset, *, start, num_workers, epoch=2, batch=4):
    sampler = ResumableSampler(len(dataset), seed=11)
    sampler.set_epoch(epoch)
    sampler.set_start(start)
    loader = build_loader(dataset, batch_size=batch, sampler=sampler, num_workers=num_workers, seed=11)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.fixture(scope="module")
def augmented_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    write_fake_cifar(root, num_classes=6, train_per_class=4, test_per_class=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        bundle = build_data(DataConfig(name="cifar100", root=str(root), val_fraction=0.0, num_workers=0,
                                       randaugment="rand-m9-mstd0.5-inc1", reprob=0.5))
    return bundle.train


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_epoch_yields_identical_augmented_batches(augmented_cifar, num_workers):
    full = _epoch_batches(augmented_cifar, start=0, num_workers=0)
    assert len(full) == 6
    resumed = _epoch_batches(augmented_cifar, start=3 * 4, num_workers=num_workers)
    assert len(resumed) == 3
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)  # bitwise, random augmentation included
    if num_workers:  # worker count does not change the data either
        assert all(torch.equal(a[0], b[0]) for a, b in zip(full, _epoch_batches(augmented_cifar, start=0,
                                                                                num_workers=2)))
    # the augmentation really is random: another epoch sees the same images differently
    other = _epoch_batches(augmented_cifar, start=0, num_workers=0, epoch=3)
    by_label = {}
    for batches in (full, other):
        for x, y in batches:
            for img, label in zip(x, y):
                by_label.setdefault(int(label), []).append(img)
    pairs = [(a, b) for imgs in by_label.values() for a, b in zip(imgs, imgs[1:])]
    assert not any(torch.equal(a, b) for a, b in pairs)


def test_loading_leaves_global_rngs_alone(augmented_cifar):
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    _epoch_batches(augmented_cifar, start=0, num_workers=0)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_loader_options_follow_device(augmented_cifar):
    sampler = ResumableSampler(len(augmented_cifar), seed=0)
    cpu = build_loader(augmented_cifar, batch_size=4, sampler=sampler, num_workers=2, seed=0)
    assert not cpu.pin_memory and not cpu.persistent_workers and cpu.drop_last
    gpu = build_loader(augmented_cifar, batch_size=4, sampler=sampler, num_workers=2, seed=0, device_type="cuda",
                       drop_last=False)
    assert gpu.pin_memory and gpu.persistent_workers and not gpu.drop_last


def test_randaugment_posterize_to_zero_bits_gives_black_image():
    """timm's rand-...-inc1 asks Pillow for 0-bit posterize at high magnitudes; that must not crash."""
    from PIL import Image
    from timm.data.auto_augment import RandAugment

    from repro.data.transforms import train_transform

    tf = train_transform(32, mean=(0.5,) * 3, std=(0.5,) * 3, randaugment="rand-m10-inc1", native_size=32)
    ra = next(t for t in tf.transforms if isinstance(t, RandAugment))
    post = next(op for op in ra.ops if op.name == "PosterizeIncreasing")
    post.prob = 1.0
    img = Image.new("RGB", (32, 32), (200, 100, 50))
    assert post(img).getpixel((0, 0)) == (0, 0, 0)  # magnitude 10 keeps 0 bits
