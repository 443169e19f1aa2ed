"""repro.data.device_augment: each op against timm's Pillow implementation, the parameter draws against timm's,
the whole pipeline against the PIL loader, exact resume on any number of ranks, and the choice of path.

Tolerances (grey levels, 0..255, after the op, on the same image and magnitude):

| ops | mean absolute difference | max difference |
|---|---|---|
| AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd (look-up tables, integer arithmetic) | <= 1/255 | 0 |
| Color, Contrast, Brightness, Sharpness (Pillow's integer grey, float32 blend, SMOOTH kernel) | <= 1/255 | 0 |
| Rotate, ShearX/Y, TranslateX/Y (Pillow's bicubic filter in float64) | <= 1/255 | 1 |

On this CPU every op reproduces Pillow exactly; the one grey level allowed for the bicubic ops covers a float64
implementation that rounds differently at a truncation boundary (the GPU's).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from repro.config import DataConfig, load_config
from repro.data import ResumableSampler, build_data, build_loader, derive_seed, resolve_augment_on, seeded_rngs
from repro.data import device_augment as da
from repro.data.datasets import ArrayImageDataset, TransformedSubset
from repro.data.transforms import CIFAR100_MEAN, CIFAR100_STD, _posterize_all_bits, train_transform
from repro.errors import ReproError

RECIPE = dict(randaugment="rand-m9-mstd0.5-inc1", reprob=0.25, hflip=0.5)
FILL = tuple(min(255, round(255 * m)) for m in CIFAR100_MEAN)  # timm's RandAugment fill colour: the mean
LEVEL = 1.0 / 255  # one grey level in ToTensor units


def photo_patches(n: int, seed: int = 0) -> np.ndarray:
    """n 32x32 RGB patches of scikit-learn's two sample photographs, at a few scales (real image content)."""
    import sklearn
    from PIL import Image

    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    rng = np.random.default_rng(seed)
    photos = []
    for name in ("china.jpg", "flower.jpg"):
        im = Image.open(folder / name).convert("RGB")
        photos += [np.asarray(im.resize((im.width // s, im.height // s), Image.BICUBIC)) for s in (2, 4, 8)]
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        a = photos[i % len(photos)]
        y, x = rng.integers(0, a.shape[0] - 32), rng.integers(0, a.shape[1] - 32)
        out[i] = a[y:y + 32, x:x + 32]
    return out


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return photo_patches(384)


def train_view(images: np.ndarray, **recipe) -> TransformedSubset:
    """A training view as build_data makes it: a TransformedSubset of an in-memory dataset, PIL transform."""
    base = ArrayImageDataset(images, [i % 10 for i in range(len(images))], [str(c) for c in range(10)])
    tf = train_transform(32, mean=CIFAR100_MEAN, std=CIFAR100_STD, native_size=32, **(recipe or RECIPE))
    return TransformedSubset(base, range(len(base)), tf)


def device_loader(view, sampler, batch_size, **kw):
    recipe = kw.pop("recipe", RECIPE)
    return da.build_device_loader(view, batch_size=batch_size, sampler=sampler, device="cpu", seed=sampler.seed,
                                  img_size=32, mean=CIFAR100_MEAN, std=CIFAR100_STD, **recipe, **kw)


# ------------------------------------------------------------------------------------- ops vs Pillow
def _timm_op(name: str):
    from timm.data import auto_augment as aa

    fn = aa.NAME_TO_OP[name]
    return _posterize_all_bits if fn is aa.posterize else fn  # the package's Pillow >= 11 posterize (0 bits)


EXACT_OPS = ["AutoContrast", "Equalize", "Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal",
             "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color", "ColorIncreasing", "Contrast",
             "ContrastIncreasing", "Brightness", "BrightnessIncreasing", "Sharpness", "SharpnessIncreasing"]
BICUBIC_OPS = ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "TranslateX", "TranslateY"]


@pytest.mark.parametrize("name", EXACT_OPS + BICUBIC_OPS)
def test_each_op_matches_timm_pillow_on_the_same_images_and_magnitudes(patches, name):
    from PIL import Image
    from timm.data.auto_augment import LEVEL_TO_ARG

    images = patches[:96]
    levels = np.linspace(0.0, 10.0, len(images))  # both ends included: posterize to 0 bits, solarize at 256, ...
    op = da.RandOp(name, 0.5, 9.0, 0.5, None, 0.45, 14.0)
    hparams = {"translate_const": 14, "img_mean": FILL}
    args, ref = [], []
    for i, (img, level) in enumerate(zip(images, levels)):
        # timm's level -> argument rule draws its sign from `random`; ours from the generator it is given
        with seeded_rngs(i):
            expected = LEVEL_TO_ARG[name](level, hparams) if LEVEL_TO_ARG[name] else ()
        arg = da.level_to_arg(name, level, op, random.Random(i))
        assert expected == () or arg == expected[0], (name, level)
        args.append(arg)
        out = _timm_op(name)(Image.fromarray(img), *expected, fillcolor=FILL, resample=Image.BICUBIC)
        ref.append(np.asarray(out))
    matrices = torch.tensor([da.affine_matrix(name, a, 32) if name in BICUBIC_OPS else (0.0,) * 6 for a in args],
                            dtype=torch.float64)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    got = da.apply_op(name, x, torch.tensor(args, dtype=torch.float64), matrices, FILL).permute(0, 2, 3, 1)
    diff = (got.numpy() - np.stack(ref).astype(np.float32)).__abs__()
    assert diff.mean() <= 1.0, (name, diff.mean())
    assert diff.max() <= (1 if name in BICUBIC_OPS else 0), (name, diff.max())
    assert (got.numpy() != images).any() or name in ("Posterize",), "the op changed nothing: a vacuous test"


def test_a_layer_of_mixed_ops_applies_each_image_its_own_op(patches):
    from PIL import Image

    names = (EXACT_OPS + BICUBIC_OPS) * 2
    images = patches[:len(names)]
    rng = random.Random(0)
    ops = {name: da.RandOp(name, 0.5, 9.0, 0.5, None, 0.45, 14.0) for name in names}
    args = [da.level_to_arg(name, rng.uniform(0, 10), ops[name], rng) for name in names]
    matrices = torch.tensor([da.affine_matrix(n, a, 32) if n in BICUBIC_OPS else (0.0,) * 6
                             for n, a in zip(names, args)], dtype=torch.float64)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    got = x.clone()
    for family in da._FAMILIES:
        rows = [i for i, n in enumerate(names) if da._family(n) == family]
        got[rows] = da.apply_family(family, x[rows], [names[i] for i in rows],
                                    torch.tensor(args, dtype=torch.float64)[rows], matrices[rows], FILL)
    for i, (name, arg) in enumerate(zip(names, args)):
        pil_arg = () if name in ("AutoContrast", "Equalize", "Invert") else (
            int(arg) if name.startswith(("Posterize", "Solarize")) else arg,)
        ref = np.asarray(_timm_op(name)(Image.fromarray(images[i]), *pil_arg, fillcolor=FILL, resample=Image.BICUBIC))
        assert np.abs(got[i].permute(1, 2, 0).numpy() - ref).max() <= (1 if name in BICUBIC_OPS else 0), name


# ---------------------------------------------------------------------------- parameters vs timm's draws
def _cpu_recipe_parts():
    """The CPU transform's RandAugment (each op recording its arguments instead of running) and its erasing."""
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing

    tf = train_transform(32, mean=CIFAR100_MEAN, std=CIFAR100_STD, native_size=32, **RECIPE)
    ra = next(t for t in tf.transforms if isinstance(t, RandAugment))
    erase = next(t for t in tf.transforms if isinstance(t, RandomErasing))
    record = []
    for op in ra.ops:
        op.aug_fn = (lambda name: lambda img, *a, **k: record.append((name, a)) or img)(op.name)
    return tf, ra, erase, record


def test_parameters_equal_the_cpu_pipelines_draws_seed_for_seed():
    """Same seed -> the crop, flip, ops, arguments and erasing the PIL path draws (torch, numpy, random)."""
    from PIL import Image
    from torchvision.transforms import RandomCrop

    tf, ra, erase, record = _cpu_recipe_parts()
    recipe = da.compile_transform(tf, 32)
    names = [op.name for op in recipe.ops]
    sampler = da.ParameterSampler(recipe)
    seeds = [derive_seed(0, 1, p) for p in range(300)] + [random.Random(s).getrandbits(63) for s in range(300)]
    plan = sampler.draw(seeds)
    padded = Image.new("RGB", (40, 40))
    for i, seed in enumerate(seeds):
        with seeded_rngs(seed):  # as PerSampleSeeded runs the CPU transform
            top, left, _, _ = RandomCrop.get_params(padded, (32, 32))
            flip = bool(torch.rand(1) < 0.5)
            record.clear()
            ra(padded)
            erased = erase(torch.full((3, 32, 32), float("nan")))
        assert plan.crop[i].tolist() == [top, left] and bool(plan.flip[i]) == flip
        drawn = [(names[k], float(a)) for k, a in zip(plan.ops[i].tolist(), plan.args[i].tolist()) if k >= 0]
        assert drawn == [(n, float(a[0]) if a else 0.0) for n, a in record], seed
        hit = torch.isfinite(erased[0])
        if plan.boxes[i]:
            (t, l, h, w), = plan.boxes[i]
            assert hit.sum() == h * w and hit[t:t + h, l:l + w].all()
            assert torch.equal(erased[:, t:t + h, l:l + w], plan.noise[i][0])
        else:
            assert not hit.any()
    assert 0.15 < np.mean([bool(b) for b in plan.boxes]) < 0.35  # reprob 0.25


def test_op_choice_and_magnitudes_follow_timms_distribution_over_10k_draws():
    """10k draws of ours and 10k independent draws of timm's RandAugment: same op and magnitude frequencies."""
    from scipy.stats import chi2_contingency

    tf, ra, erase, record = _cpu_recipe_parts()
    recipe = da.compile_transform(tf, 32)
    names = [op.name for op in recipe.ops]
    plan = da.ParameterSampler(recipe).draw([seed * 7919 + 1 for seed in range(10_000)])
    ours = [(names[k], a) for row_k, row_a in zip(plan.ops.tolist(), plan.args.tolist())
            for k, a in zip(row_k, row_a) if k >= 0]
    skipped_ours = int((plan.ops < 0).sum())
    theirs = []
    img = object()
    for seed in range(10_000):
        with seeded_rngs(10**9 + seed):  # seeds our draws never used: an independent sample
            record.clear()
            ra(img)
            theirs += [(n, float(a[0]) if a else 0.0) for n, a in record]
    skipped_theirs = 2 * 10_000 - len(theirs)
    # Op choice (15 ops, each applied with probability 0.5): a chi-square test of the two samples' counts.
    counts = [[sum(n == name for n, _ in sample) for name in names] + [skipped]
              for sample, skipped in ((ours, skipped_ours), (theirs, skipped_theirs))]
    assert chi2_contingency(counts)[1] > 1e-3, counts
    assert abs(skipped_ours / 20_000 - 0.5) < 4 * (0.25 / 20_000) ** 0.5  # binomial bound, 4 sigma
    # Magnitudes: rotation angle (|degrees| = 3 x level, level ~ clip(N(9, 0.5), 0, 10)), binned.
    bins = np.linspace(24, 30.001, 7)  # below 24 degrees (level < 8): pooled into the first bin
    angles = [np.histogram(np.clip([abs(a) for n, a in s if n == "Rotate"], 24, 30), bins)[0]
              for s in (ours, theirs)]
    assert chi2_contingency(angles)[1] > 1e-3, angles
    # Posterize to 0 bits happens exactly when the level clips at 10: P(N(9, 0.5) >= 10) = 2.28%.
    for sample in (ours, theirs):
        bits = [a for n, a in sample if n == "PosterizeIncreasing"]
        share = np.mean(np.array(bits) == 0)
        assert abs(share - 0.02275) < 4 * (0.02275 * 0.97725 / len(bits)) ** 0.5, share
    # Sign: each signed op is negated half the time.
    signs = [a < 0 for n, a in ours if n in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")]
    assert abs(np.mean(signs) - 0.5) < 4 * (0.25 / len(signs)) ** 0.5


def test_raw_draw_shortcuts_match_numpy_and_torch():
    """The sampler reads numpy's and torch's MT19937 outputs directly; both shortcuts hold on this install."""
    assert da._torch_draws_are_mt19937()
    bits = np.random.MT19937()
    state = np.random.RandomState(bits)
    for seed in range(300):
        state.seed(seed)
        expected = state.randint(0, 15, size=2).tolist()
        state.seed(seed)
        assert da._bounded(bits.random_raw(8).tolist(), 15, 2) == expected
    assert da._bounded([15, 15, 15], 15, 2) is None  # too few accepted draws: the caller asks numpy itself


# ------------------------------------------------------------------------------- the whole pipeline
def test_device_loader_gives_the_pil_loaders_batches_and_statistics(patches):
    view = train_view(patches)
    sampler = ResumableSampler(len(view), seed=11)
    sampler.set_epoch(3)
    pil = list(build_loader(view, batch_size=64, sampler=sampler, num_workers=0, seed=11))
    dev = list(device_loader(view, sampler, 64))
    assert len(pil) == len(dev) == len(view) // 64
    step = LEVEL / min(CIFAR100_STD)
    for (xa, ya), (xb, yb) in zip(pil, dev):
        assert torch.equal(ya, yb) and xb.dtype == torch.float32 and xb.shape == xa.shape
        diff = (xa - xb).abs()
        assert diff.max() <= step * 1.001 and (diff > 0).float().mean() < 1e-4
    # Per-channel mean and std of the augmented images (in ToTensor units) agree within 1%.
    mean, std = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    a = torch.cat([x for x, _ in pil]) * std + mean
    b = torch.cat([x for x, _ in dev]) * std + mean
    for stat in (lambda t: t.mean((0, 2, 3)), lambda t: t.std((0, 2, 3))):
        assert torch.allclose(stat(b), stat(a), rtol=0.01, atol=0), (stat(a), stat(b))
    order = [index for index, _ in sampler]  # the source image of each output
    plain = torch.from_numpy(patches[order[:len(b)]]).permute(0, 3, 1, 2) / 255
    assert (plain - b).abs().mean() > 0.05  # augmentation did something


def test_without_randaugment_or_erasing_the_paths_still_agree(patches):
    view = train_view(patches[:64], randaugment=None, reprob=0.0, hflip=0.5)
    sampler = ResumableSampler(len(view), seed=2)
    pil = torch.cat([x for x, _ in build_loader(view, batch_size=32, sampler=sampler, num_workers=0, seed=2)])
    dev = torch.cat([x for x, _ in device_loader(view, sampler, 32, recipe=dict(randaugment=None, reprob=0.0,
                                                                                   hflip=0.5))])
    assert torch.equal(pil, dev)


def _outputs_by_position(loader, sampler, epoch, start=0):
    """{position in the epoch's order: (image, target)} for one pass from `start` on this sampler's rank."""
    sampler.set_epoch(epoch)
    sampler.set_start(start)
    out, k = {}, start
    for images, targets in loader:
        for img, t in zip(images, targets):
            out[sampler.rank + k * sampler.world_size] = (img, int(t))
            k += 1
    return out


def test_resume_mid_epoch_and_two_ranks_give_each_sample_the_same_augmentation(patches):
    view = train_view(patches[:96])
    full_sampler = ResumableSampler(len(view), seed=5)
    full = _outputs_by_position(device_loader(view, full_sampler, 8), full_sampler, epoch=2)
    assert len(full) == 96

    # A restart: a fresh loader, in the middle of the epoch.
    resumed_sampler = ResumableSampler(len(view), seed=5)
    resumed = _outputs_by_position(device_loader(view, resumed_sampler, 8), resumed_sampler, epoch=2, start=40)
    assert sorted(resumed) == list(range(40, 96))
    # Two processes, each its share; and another grouping of the work (one batch per pass).
    ranks = {}
    for rank in (0, 1):
        s = ResumableSampler(len(view), seed=5, rank=rank, world_size=2)
        ranks.update(_outputs_by_position(device_loader(view, s, 8, pass_size=8), s, epoch=2))
    assert sorted(ranks) == list(range(96))
    for other in (resumed, ranks):
        for pos, (img, target) in other.items():
            assert target == full[pos][1] and torch.equal(img, full[pos][0]), pos
    # Another epoch, other augmentation.
    again = _outputs_by_position(device_loader(view, full_sampler, 8), full_sampler, epoch=3)
    assert sum(torch.equal(again[p][0], full[p][0]) for p in full) < 5


def test_loading_leaves_the_global_generators_alone(patches):
    view = train_view(patches[:32])
    sampler = ResumableSampler(len(view), seed=1)
    loader = device_loader(view, sampler, 16)
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    list(loader)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


# ----------------------------------------------------------------- build_data, the recipe, the choice
@pytest.fixture
def no_data_search(tmp_path, monkeypatch):
    """Every dataset search stays inside tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REPRO_KAGGLE_ROOT", str(tmp_path / "no-kaggle"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    return tmp_path


@pytest.mark.filterwarnings("ignore::repro.data.DataWarning")
@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_reads_build_datas_training_split_without_pil(no_data_search, name):
    from repro.data.synthetic import write_fake_cifar

    if name == "cifar10":
        write_fake_cifar(no_data_search / "data", num_classes=10, train_per_class=8, test_per_class=1)
    cfg = DataConfig(name=name, root=str(no_data_search / "data") if name != "digits" else None,
                     num_workers=0, **RECIPE)
    bundle = build_data(cfg)
    images, targets = da.in_memory_arrays(bundle.train)
    assert images.dtype == np.uint8 and images.shape == (len(bundle.train), 32, 32, 3)
    assert targets == list(bundle.train.targets)
    for i in (0, len(bundle.train) - 1):
        pil_image, target = bundle.train.base[bundle.train.indices[i]]
        assert np.array_equal(np.asarray(pil_image), images[i]) and target == targets[i]
    sampler = ResumableSampler(len(bundle.train), seed=0)
    loader = da.build_device_loader(bundle.train, batch_size=16, sampler=sampler, device="cpu", seed=0,
                                    img_size=cfg.img_size, mean=bundle.mean, std=bundle.std, **RECIPE)
    x, y = next(iter(loader))
    ref_x, ref_y = next(iter(build_loader(bundle.train, batch_size=16, sampler=sampler, num_workers=0, seed=0)))
    assert torch.equal(y, ref_y) and (x - ref_x).abs().max() <= LEVEL / min(bundle.std) * 1.001


def test_compile_transform_reads_the_cpu_recipe_and_refuses_what_it_cannot_run():
    from torchvision import transforms as T

    tf = train_transform(32, mean=CIFAR100_MEAN, std=CIFAR100_STD, native_size=32, **RECIPE)
    r = da.compile_transform(tf, 32)
    assert (r.padding, r.hflip, r.num_layers, r.fill, r.reprob, r.erase_mode) == (4, 0.5, 2, FILL, 0.25, "pixel")
    assert [op.name for op in r.ops][:4] == ["AutoContrast", "Equalize", "Invert", "Rotate"] and len(r.ops) == 15
    assert all(op.magnitude == 9 and op.magnitude_std == 0.5 and op.prob == 0.5 for op in r.ops)
    with pytest.raises(ReproError, match="ColorJitter"):
        da.compile_transform(T.Compose([T.ColorJitter(0.4), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)]), 32)


def test_build_device_loader_refuses_other_sizes_and_datasets(patches):
    view = train_view(patches[:16])
    sampler = ResumableSampler(16, seed=0)
    with pytest.raises(ReproError, match="img_size=64"):
        da.build_device_loader(view, batch_size=8, sampler=sampler, device="cpu", seed=0, img_size=64,
                               mean=CIFAR100_MEAN, std=CIFAR100_STD, **RECIPE)
    with pytest.raises(ReproError, match="seed"):
        da.build_device_loader(view, batch_size=8, sampler=sampler, device="cpu", seed=1, img_size=32,
                               mean=CIFAR100_MEAN, std=CIFAR100_STD, **RECIPE)
    with pytest.raises(ReproError, match="TransformedSubset"):
        da.in_memory_arrays(view.base)


@pytest.mark.parametrize("cfg, device, expected", [
    (dict(name="cifar100", augment_on="auto"), "cuda", "device"),
    (dict(name="cifar100", augment_on="auto"), "cpu", "cpu"),
    (dict(name="digits", augment_on="device"), "cpu", "device"),
    (dict(name="cifar10", augment_on="cpu"), "cuda", "cpu"),
    (dict(name="imagenet", augment_on="auto", img_size=224), "cuda", "cpu"),
    (dict(name="cifar100", augment_on="auto", img_size=224), "cuda", "cpu"),
    (dict(name="cifar100", augment_on="auto", randaugment="rand-m9-t3a"), "cuda", "cpu"),
])
def test_resolve_augment_on(cfg, device, expected):
    cfg = {"randaugment": RECIPE["randaugment"], **cfg}
    assert resolve_augment_on(DataConfig(**cfg), torch.device(device)) == expected


def test_device_augmentation_of_folder_datasets_is_refused_naming_the_datasets_it_serves():
    with pytest.raises(ReproError) as err:
        resolve_augment_on(DataConfig(name="imagenet", img_size=224, augment_on="device"), torch.device("cuda"))
    assert "cifar10, cifar100, digits" in str(err.value) and "augment_on=cpu" in str(err.value)
    with pytest.raises(ReproError, match="img_size=64"):
        resolve_augment_on(DataConfig(name="cifar100", img_size=64, augment_on="device"), "cpu")
    with pytest.raises(ReproError, match="Desaturate"):
        resolve_augment_on(DataConfig(name="cifar100", randaugment="rand-m9-t3a", augment_on="device"), "cpu")
    with pytest.raises(ReproError, match="auto, cpu, device"):
        resolve_augment_on(DataConfig(augment_on="gpu"), "cpu")


def test_config_key_defaults_to_auto_and_rejects_other_values():
    assert DataConfig().augment_on == "auto"
    assert load_config(overrides=["data.augment_on=device"]).data.augment_on == "device"
    with pytest.raises(ReproError, match="data.augment_on must be one of auto, cpu, device"):
        load_config(overrides=["data.augment_on=gpu"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpus_results_without_waiting_on_the_gpu(patches):
    view = train_view(patches)
    sampler = ResumableSampler(len(view), seed=4)
    kw = dict(batch_size=64, sampler=sampler, seed=4, img_size=32, mean=CIFAR100_MEAN, std=CIFAR100_STD, **RECIPE)
    cpu = list(da.build_device_loader(view, device="cpu", **kw))
    cuda_loader = da.build_device_loader(view, device="cuda", **kw)
    list(cuda_loader)  # warm-up: pinned buffers, kernels
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        gpu = list(cuda_loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for (xa, ya), (xb, yb) in zip(cpu, gpu):
        assert torch.equal(ya, yb.cpu()) and (xa - xb.cpu()).abs().max() <= LEVEL / min(CIFAR100_STD) * 1.001
