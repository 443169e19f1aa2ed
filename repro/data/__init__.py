"""Datasets, transforms and resumable loaders.

Datasets (`data.name`): `digits` (embedded, no download), `cifar10`, `cifar100` (python-pickle release,
found under data.root, ./data, ~/data or Kaggle inputs), `imagenet` (train/ and val/ wnid class folders)
and `folder` (any train/ + val/ class-folder tree); ImageNet-A/-R/-Sketch style sets for robustness.

    bundle = build_data(cfg.data, num_classes_expected=cfg.model.num_classes)
    sampler = ResumableSampler(len(bundle.train), seed=cfg.seed, rank=rank, world_size=world_size)
    loader = build_loader(bundle.train, batch_size=128, sampler=sampler, num_workers=2, seed=cfg.seed)
    for epoch in ...: sampler.set_epoch(epoch); for images, labels in loader: ...

To resume mid-epoch: `sampler.load_state_dict(saved)` (or set_epoch + set_start(samples done on this rank))
and build the loader again; the batches, including their random augmentation, are those an uninterrupted
run would have seen.
"""
from .build import DATASET_NAMES, SPLIT_SEED, DataBundle, build_data, build_robustness_sets
from .cifar import DataWarning
from .datasets import stratified_split
from .digits import DIGITS_MEAN, DIGITS_STD
from .folders import IMAGENET_NUM_CLASSES, imagenet_wnids, load_robustness_folder
from .loader import PerSampleSeeded, ResumableSampler, build_loader, derive_seed, seeded_rngs
from .transforms import dataset_mean_std, eval_transform, train_transform

__all__ = [
    "DATASET_NAMES", "SPLIT_SEED", "DataBundle", "build_data", "build_robustness_sets", "DataWarning",
    "stratified_split", "DIGITS_MEAN", "DIGITS_STD", "IMAGENET_NUM_CLASSES", "imagenet_wnids",
    "load_robustness_folder", "PerSampleSeeded", "ResumableSampler", "build_loader", "derive_seed",
    "seeded_rngs", "dataset_mean_std", "eval_transform", "train_transform",
]
