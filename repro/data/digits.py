"""The embedded dataset: scikit-learn's bundled handwritten digits as 32x32 RGB images (no download).

1,797 real 8x8 grey scans of the digits 0-9 (UCI optdigits test set) ship inside scikit-learn; nothing larger
made of real images ships with scikit-learn or torchvision (`load_sample_images` has two photos, Olivetti
faces and LFW are downloads). Images are upsampled bilinearly to 32x32 and the grey channel is repeated
three times, so CIFAR-sized models and transforms apply unchanged. The train/test split is fixed
(stratified 80/20, seed 0, independent of the run seed) so numbers compare across runs.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from .datasets import ArrayImageDataset, stratified_split

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# Per-channel mean/std of the fixed training split at 32x32 in [0, 1] (the three channels are equal);
# recomputed by `digits_stats()` and checked against these values by the tests.
DIGITS_MEAN = (0.3058, 0.3058, 0.3058)
DIGITS_STD = (0.3240, 0.3240, 0.3240)


def _digits_table() -> np.ndarray:
    """(1797, 65) array: 64 pixel values in 0..16, then the label."""
    # Reading the bundled file directly takes milliseconds, where importing sklearn.datasets takes about a
    # second; load_digits() returns the same array (checked by the tests) and serves if the file moves.
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.concatenate([bunch.data, bunch.target[:, None]], axis=1)


@functools.lru_cache(maxsize=1)
def digits_arrays(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ((N, size, size, 3) uint8, (N,) int64 labels)."""
    table = _digits_table()
    grey = torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8) / 16.0).float()
    up = torch.nn.functional.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
    img = (up.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    return np.repeat(img[..., None], 3, axis=-1), table[:, 64].astype(np.int64)


def load_digits_splits() -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """The fixed (train, test) datasets of 32x32 RGB digits, returning PIL images."""
    images, labels = digits_arrays()
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    classes = [str(d) for d in range(10)]
    return (ArrayImageDataset(images[train_idx], labels[train_idx], classes),
            ArrayImageDataset(images[test_idx], labels[test_idx], classes))


def digits_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the fixed training split in [0, 1] (the source of DIGITS_MEAN/STD)."""
    train, _ = load_digits_splits()
    x = train.images.astype(np.float64) / 255.0
    return tuple(x.mean(axis=(0, 1, 2)).tolist()), tuple(x.std(axis=(0, 1, 2)).tolist())
