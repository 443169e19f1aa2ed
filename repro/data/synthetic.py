"""Small generated datasets in the real on-disk formats, for tests: CIFAR pickles and ImageFolder trees.

The CIFAR files mimic the originals byte-for-byte in structure: Python 2 pickles (protocol 2) whose dict keys
and strings are Python 2 byte strings, so they load as `'data'` with `encoding='latin1'` (as torchvision reads
them) and as `b'data'` with `encoding='bytes'`. Images are a per-class colour plus noise, so a model can learn
them in a few steps.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np


class _Py2Str(str):
    """Text that is pickled as a Python 2 `str` (a byte string), like every string in the CIFAR files."""


class _Py2Pickler(pickle._Pickler):
    """The pure-Python pickler, writing `_Py2Str` with the Python 2 BINSTRING opcodes."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2str(self, obj: _Py2Str) -> None:
        raw = obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2str


def _py2(obj):
    if isinstance(obj, str):
        return _Py2Str(obj)
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    return obj


def _dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(obj))


def _class_images(labels: np.ndarray, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(N, size, size, 3) uint8: a fixed colour per class plus pixel noise."""
    colours = np.random.default_rng(12345).integers(30, 226, size=(num_classes, 3))
    noise = rng.normal(0.0, 25.0, size=(len(labels), size, size, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_fake_cifar(root: str | Path, num_classes: int = 100, train_per_class: int = 5,
                     test_per_class: int = 2, img_size: int = 32, seed: int = 0) -> Path:
    """Write a CIFAR-style pickle folder under `root` and return it.

    `num_classes` 10 writes the CIFAR-10 layout (`cifar-10-batches-py/`: data_batch_1..5, test_batch,
    batches.meta); any other count writes the CIFAR-100 layout (`cifar-100-python/`: train, test, meta) with
    that many fine classes. `img_size` other than 32 writes a malformed file (for error tests).
    """
    rng = np.random.default_rng(seed)
    train_y = _labels(num_classes, train_per_class, rng)
    test_y = _labels(num_classes, test_per_class, rng)

    def rows(labels):  # CIFAR stores each image as one row: 1024 red, 1024 green, 1024 blue values
        img = _class_images(labels, num_classes, img_size, rng)
        return np.ascontiguousarray(img.transpose(0, 3, 1, 2).reshape(len(labels), -1))

    names = [f"class_{c:03d}" for c in range(num_classes)]
    if num_classes == 10:
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        train_x = rows(train_y)
        for b, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
            _dump_py2({"batch_label": f"training batch {b} of 5", "labels": train_y[part].tolist(),
                       "data": train_x[part], "filenames": [f"train_{i:05d}.png" for i in part]},
                      folder / f"data_batch_{b}")
        _dump_py2({"batch_label": "testing batch 1 of 1", "labels": test_y.tolist(), "data": rows(test_y),
                   "filenames": [f"test_{i:05d}.png" for i in range(len(test_y))]}, folder / "test_batch")
        _dump_py2({"label_names": names, "num_cases_per_batch": len(train_y) // 5, "num_vis": 3072},
                  folder / "batches.meta")
        return folder
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    coarse = [c * 20 // num_classes for c in range(num_classes)]
    for split, labels in (("train", train_y), ("test", test_y)):
        _dump_py2({"filenames": [f"{split}_{i:05d}.png" for i in range(len(labels))],
                   "batch_label": f"{split}ing batch 1 of 1", "fine_labels": labels.tolist(),
                   "coarse_labels": [coarse[c] for c in labels], "data": rows(labels)}, folder / split)
    _dump_py2({"fine_label_names": names, "coarse_label_names": [f"super_{c:02d}" for c in range(20)]},
              folder / "meta")
    return folder


def write_fake_imagefolder(root: str | Path, classes: int | Sequence[str], per_class: int, size: int,
                           seed: int = 0) -> Path:
    """Write `root/<class>/<i>.png` (RGB, `size` x `size`) for each class and return `root`."""
    from PIL import Image

    names = [f"class_{c:03d}" for c in range(classes)] if isinstance(classes, int) else list(classes)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(names)), per_class)
    images = _class_images(labels, len(names), size, rng)
    root = Path(root)
    for k, (label, img) in enumerate(zip(labels, images)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{k % per_class:04d}.png")
    return root
