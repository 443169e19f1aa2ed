"""Dataset building blocks: in-memory images, transformed index subsets and the stratified split."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from torch.utils.data import Dataset


class ArrayImageDataset(Dataset):
    """Images held as a (N, H, W, 3) uint8 array; items are (PIL image, class index) like torchvision's."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str]):
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return Image.fromarray(self.images[index]), self.targets[index]


class TransformedSubset(Dataset):
    """The samples `indices` of `base` (which returns untransformed images), with `transform` applied.

    Train and validation views of one training set share the decoded data but not their transforms.
    """

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Callable | None):
        self.base = base
        self.indices = [int(i) for i in indices]
        self.transform = transform
        targets = list(base.targets)
        self.targets = [targets[i] for i in self.indices]
        self.classes = list(getattr(base, "classes", []))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        img, target = self.base[self.indices[index]]
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def stratified_split(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (keep, held_out), holding out `fraction` of the samples evenly across classes.

    The held-out total is round(fraction * N); each class gives floor(fraction * its count) and the rest go,
    one each, to the classes with the largest remainders (ties in a seeded random order), so small datasets
    still get a validation set. Every class keeps at least one sample. Fixed by `seed`; both lists sorted.
    """
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(targets, return_counts=True)
    quota = fraction * counts
    n_held = np.minimum(np.floor(quota).astype(int), counts - 1)
    total = min(int(np.floor(fraction * len(targets) + 0.5)), int((counts - 1).sum()))
    tie_break = rng.permutation(len(classes))
    order = sorted(range(len(classes)), key=lambda k: (-(quota[k] - np.floor(quota[k])), tie_break[k]))
    extra = total - int(n_held.sum())
    for k in order:
        if extra <= 0:
            break
        if n_held[k] < counts[k] - 1:
            n_held[k] += 1
            extra -= 1
    keep, held = [], []
    for c, n in zip(classes, n_held):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        held.append(idx[:n])
        keep.append(idx[n:])
    return sorted(np.concatenate(keep).tolist()), sorted(np.concatenate(held).tolist())
