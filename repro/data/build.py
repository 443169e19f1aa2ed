"""`build_data`: from a DataConfig to train / validation / test datasets with their transforms.

Model selection never looks at the test set: `data.val_fraction` of the training set is held out (stratified,
with the fixed SPLIT_SEED, independent of the run seed, so every run of a dataset holds out the same images)
and evaluated with the eval transforms. With val_fraction 0 the validation set is the test set, and the
bundle says so (`eval_split == 'test'`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..config import DataConfig
from ..errors import ReproError
from .datasets import TransformedSubset, stratified_split
from .transforms import dataset_mean_std, eval_transform, train_transform

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagenet", "folder")
SPLIT_SEED = 0
SMALL_IMAGE_SIZE = 32  # stored resolution of digits (as embedded) and CIFAR


@dataclass
class DataBundle:
    """Datasets ready for loaders, with what an evaluator and a run summary need to know about them."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_split: str
    info: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


def _check_config(cfg: DataConfig) -> None:
    if cfg.name not in DATASET_NAMES:
        raise ReproError(f"unknown data.name '{cfg.name}'; choose one of {', '.join(DATASET_NAMES)}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ReproError(f"data.val_fraction must be in [0, 1), found {cfg.val_fraction}; "
                         "0 evaluates on the test set, 0.1 holds out a tenth of the training set")
    if cfg.img_size < 8:
        raise ReproError(f"data.img_size must be at least 8 pixels, found {cfg.img_size}")
    for key in ("reprob", "hflip"):
        value = getattr(cfg, key)
        if not 0.0 <= value <= 1.0:
            raise ReproError(f"data.{key} is a probability in [0, 1], found {value}")


def _check_num_classes(name: str, found: int, expected: int | None) -> None:
    if expected is not None and found != expected:
        raise ReproError(f"data '{name}' has {found} classes but the model is configured for {expected} "
                         f"(model.num_classes); set model.num_classes={found} (or null to follow the data), "
                         f"or use a dataset with {expected} classes")


def _load(cfg: DataConfig, expected: int | None):
    """(train base, test base, class names, where it came from, extra info, native size) for cfg.name."""
    def check(classes):
        _check_num_classes(cfg.name, len(classes), expected)

    if cfg.name == "digits":
        from .digits import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, load_digits_splits

        train, test = load_digits_splits()
        extra = {"test_split": f"fixed stratified {DIGITS_TEST_FRACTION:.0%} (seed {DIGITS_SPLIT_SEED})"}
        return train, test, train.classes, "embedded (scikit-learn handwritten digits)", extra, SMALL_IMAGE_SIZE
    if cfg.name in ("cifar10", "cifar100"):
        from .cifar import load_cifar

        data = load_cifar(cfg.name, cfg.root, cfg.download)
        return (data.train, data.test, data.classes, str(data.folder), {"official_files": data.official},
                SMALL_IMAGE_SIZE)
    from .folders import load_class_folders, load_imagenet

    loader = load_imagenet if cfg.name == "imagenet" else load_class_folders
    data = loader(cfg.root, on_classes=check)
    return data.train, data.test, data.classes, str(data.folder), {}, None


def build_data(cfg: DataConfig, *, num_classes_expected: int | None = None) -> DataBundle:
    """Locate and read the dataset, hold out the validation split, and attach the transforms."""
    _check_config(cfg)
    train_base, test_base, classes, source, extra, native = _load(cfg, num_classes_expected)
    _check_num_classes(cfg.name, len(classes), num_classes_expected)
    mean, std = dataset_mean_std(cfg.name)
    train_tf = train_transform(cfg.img_size, mean=mean, std=std, randaugment=cfg.randaugment,
                               reprob=cfg.reprob, hflip=cfg.hflip, native_size=native)
    eval_tf = eval_transform(cfg.img_size, mean=mean, std=std, native_size=native)

    # The bases return untransformed images; each view applies its own transform to shared data.
    if cfg.val_fraction > 0:
        train_idx, val_idx = stratified_split(train_base.targets, cfg.val_fraction, SPLIT_SEED)
        if not val_idx:
            raise ReproError(f"data.val_fraction={cfg.val_fraction} of {len(train_base)} training images holds "
                             "out none; raise it, or set data.val_fraction=0 to evaluate on the test set")
        train = TransformedSubset(train_base, train_idx, train_tf)
        val = TransformedSubset(train_base, val_idx, eval_tf)
        eval_split = "val"
    else:
        train = TransformedSubset(train_base, range(len(train_base)), train_tf)
        val = None
        eval_split = "test"
    if cfg.train_limit is not None:
        if cfg.train_limit <= 0:
            raise ReproError(f"data.train_limit must be a positive number of images, found {cfg.train_limit}")
        # A stratified subset, so a smoke run still sees every class (the split seed keeps it fixed).
        keep, _ = stratified_split(train.targets,
                                   1 - min(cfg.train_limit, len(train)) / len(train), SPLIT_SEED) \
            if cfg.train_limit < len(train) else (list(range(len(train))), None)
        train = TransformedSubset(train_base, [train.indices[i] for i in keep], train_tf)
    test = TransformedSubset(test_base, range(len(test_base)), eval_tf)
    if val is None:
        val = test
    info = {"name": cfg.name, "root": source, "num_classes": len(classes), "img_size": cfg.img_size,
            "sizes": {"train": len(train), "val": len(val), "test": len(test)},
            "val_fraction": cfg.val_fraction, "split_seed": SPLIT_SEED, "eval_split": eval_split, **extra}
    return DataBundle(train=train, val=val, test=test, num_classes=len(classes), mean=tuple(mean),
                      std=tuple(std), eval_split=eval_split, info=info, classes=list(classes))


def build_robustness_sets(cfg: DataConfig, *, wnids: list[str] | None = None,
                          required: bool = True) -> dict[str, Dataset]:
    """ImageNet-A/-R/-Sketch style sets under cfg.robustness_root, each with `class_index_map`.

    `wnids` is the head's class order (e.g. `imagenet_wnids(train_dir)`); by default the standard sorted
    ImageNet-1K list, which is the order of every model trained on the ImageNet train folder. Without any such
    set: an error, or {} when not `required` (the folder may hold ImageNet-C alone).
    """
    from .folders import imagenet_wnids, load_robustness_folder, robustness_folders

    if not cfg.robustness_root:
        raise ReproError("no robustness sets configured: pass --set data.robustness_root=FOLDER (a folder of "
                         "wnid class folders such as imagenet-r/, or a folder holding several such sets)")
    wnids = list(wnids) if wnids is not None else imagenet_wnids()
    mean, std = dataset_mean_std("imagenet")
    tf = eval_transform(cfg.img_size, mean=mean, std=std)
    return {name: load_robustness_folder(path, wnids=wnids, transform=tf)
            for name, path in robustness_folders(Path(cfg.robustness_root), required=required).items()}


def build_imagenet_c_sets(cfg: DataConfig, *, corruptions: list[str] | None = None,
                          severities: list[int] | None = None,
                          wnids: list[str] | None = None) -> dict[tuple[str, int], Dataset]:
    """ImageNet-C (<corruption>/<severity>/<wnid>/ folders at or below cfg.robustness_root) as
    {(corruption, severity): dataset with `class_index_map`}, evaluated like ImageNet val (resize, centre crop,
    as the authors' robustness script does). {} when the folder holds no ImageNet-C tree."""
    from .folders import imagenet_c_folders, imagenet_wnids, load_robustness_folder

    if not cfg.robustness_root:
        raise ReproError("no robustness sets configured: pass --set data.robustness_root=FOLDER (the folder "
                         "holding ImageNet-C's <corruption>/<severity>/ folders, or its parent)")
    root = Path(cfg.robustness_root).expanduser()
    if not root.is_dir():
        raise ReproError(f"data.robustness_root {root} does not exist; point it at the ImageNet-C folder "
                         "(<corruption>/<severity 1-5>/<wnid>/ images) or at a folder holding it")
    wnids = list(wnids) if wnids is not None else imagenet_wnids()
    mean, std = dataset_mean_std("imagenet")
    tf = eval_transform(cfg.img_size, mean=mean, std=std)
    sets = {}
    for corruption, levels in imagenet_c_folders(root).items():
        if corruptions is not None and corruption not in corruptions:
            continue
        for severity, path in levels.items():
            if severities is None or severity in severities:
                sets[corruption, severity] = load_robustness_folder(
                    path, wnids=wnids, transform=tf, label=f"ImageNet-C {corruption} severity {severity}")
    return sets
