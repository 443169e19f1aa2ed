"""CIFAR-10-C / CIFAR-100-C: the published .npy files when a user has them, else generated from the test split.

Layout (Hendrycks & Dietterich's release; generated sets are written the same way): one `<corruption>.npy`
of shape (5 * N, 32, 32, 3) uint8 per corruption, severity s in rows (s - 1) * N .. s * N - 1, and
`labels.npy` (5 * N,) holding the test labels once per severity (N = 10,000 in the release).

Published folders are found like the other datasets (data.robustness_root, else ./data, ~/data and Kaggle
inputs, searched recursively); a folder is taken when its labels are those of the run's test split. Without
one, the corruptions of `repro.data.corruptions` are applied to the first N test images, each image with a
generator seeded by (seed, corruption, severity, image index): the first n images of a larger set equal a
smaller set, whatever the order or batching of the work. Generated sets are cached under
`<cache>/<dataset>-c/<seed, N, test-split digest>/` so repeated evaluation reads them back.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ReproError
from .corruptions import (ALL_CORRUPTIONS, IMAGE_SIZE, SEVERITIES, check_names, corrupt, find_frost_pictures,
                          load_frost_pictures)
from .locate import find_all, places, search_roots

log = logging.getLogger("repro.data")

LABELS_FILE = "labels.npy"
INFO_FILE = "info.json"
# Bumped whenever generated images change, so caches made by other code are regenerated, never mixed in.
GENERATOR_VERSION = 1
BENCHMARK_NAMES = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}
_CHUNK = 250  # images per task when several processes generate


def benchmark_name(dataset: str) -> str:
    """CIFAR-10-C, CIFAR-100-C, or '<dataset>-C' for another 32x32 dataset (e.g. digits)."""
    return BENCHMARK_NAMES.get(dataset, f"{dataset}-C")


def default_cache_dir() -> Path:
    """Where generated sets go: $REPRO_CACHE/corruptions, else $XDG_CACHE_HOME (or ~/.cache)/repro/corruptions."""
    if os.environ.get("REPRO_CACHE"):
        return Path(os.environ["REPRO_CACHE"]).expanduser() / "corruptions"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "repro" / "corruptions"


@dataclass
class CorruptionBenchmark:
    """A folder in the CIFAR-C layout: which corruptions it holds, for how many images per severity, and how
    it was made ('published', or 'generated' from a test split with `seed`)."""

    name: str
    folder: Path
    source: str
    per_severity: int
    labels: np.ndarray  # (per_severity,) labels of one severity block
    corruptions: list[str]
    seed: int | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # corruption -> why it is not in the benchmark
    split_sha256: str | None = None  # of the test split a generated set was made from

    def images(self, corruption: str, severity: int, limit: int | None = None) -> np.ndarray:
        """The (n, 32, 32, 3) uint8 images of one corruption and severity (memory-mapped); n = limit or all."""
        if corruption not in self.corruptions:
            raise ReproError(f"{self.name} in {self.folder} has no {corruption}: "
                             f"{self.unavailable.get(corruption, 'not in the folder')}")
        n = self.per_severity if limit is None else min(limit, self.per_severity)
        array = np.load(self.folder / f"{corruption}.npy", mmap_mode="r")
        start = (severity - 1) * self.per_severity
        return array[start:start + n]

    def dataset(self, corruption: str, severity: int, transform: Callable | None, classes: Sequence[str] = (),
                limit: int | None = None):
        """A dataset of (transformed image, label) for one corruption and severity."""
        from .datasets import ArrayImageDataset, TransformedSubset

        images = self.images(corruption, severity, limit)
        base = ArrayImageDataset(images, self.labels[:len(images)], classes)
        return TransformedSubset(base, range(len(images)), transform)

    def describe(self) -> dict:
        """What robustness.json records about where the images came from."""
        return {"benchmark": self.name, "source": self.source, "folder": str(self.folder),
                "seed": self.seed, "images_per_severity": self.per_severity,
                "generator_version": GENERATOR_VERSION if self.source == "generated" else None,
                "split_sha256": self.split_sha256}


def split_arrays(view) -> tuple[np.ndarray, np.ndarray]:
    """((N, H, W, 3) uint8 images, (N,) labels) of a dataset view in its order: a TransformedSubset of a base
    that holds its images as an array (`.data` for torchvision's CIFAR, `.images`) or returns PIL images."""
    base = getattr(view, "base", view)
    indices = list(getattr(view, "indices", range(len(view))))
    array = getattr(base, "data", None)
    if not isinstance(array, np.ndarray):
        array = getattr(base, "images", None)
    if isinstance(array, np.ndarray) and array.ndim == 4 and array.dtype == np.uint8:
        images = np.ascontiguousarray(array[indices])
    else:
        images = np.stack([np.asarray(base[i][0].convert("RGB")) for i in indices])
    return images, np.asarray(base.targets, dtype=np.int64)[indices]


# --- published files -------------------------------------------------------------------------------------

def _published_candidates(root: str | None) -> list[Path]:
    roots = search_roots(root)
    return find_all(roots, lambda d: (d / LABELS_FILE).is_file()
                    and any((d / f"{c}.npy").is_file() for c in ALL_CORRUPTIONS))


def _read_labels(folder: Path) -> np.ndarray:
    try:
        labels = np.load(folder / LABELS_FILE, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ReproError(f"{folder / LABELS_FILE} cannot be read as a NumPy array ({exc}); replace the file "
                         "(it is part of the CIFAR-10-C / CIFAR-100-C release)") from None
    if labels.ndim != 1 or len(labels) % len(SEVERITIES):
        raise ReproError(f"{folder / LABELS_FILE} has shape {labels.shape}; expected (5 * N,), the test labels "
                         "once per severity")
    return np.asarray(labels)


def _check_published_file(path: Path, rows: int) -> str | None:
    """Why a published corruption file is unusable, or None."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        return f"cannot be read as a NumPy array ({exc})"
    if array.shape != (rows, IMAGE_SIZE, IMAGE_SIZE, 3) or array.dtype != np.uint8:
        return (f"has shape {array.shape} {array.dtype}; expected ({rows}, 32, 32, 3) uint8 (5 severity blocks "
                "of the labels' length)")
    return None


def find_published(dataset: str, test_labels: np.ndarray, root: str | None = None) -> CorruptionBenchmark | None:
    """The first folder in the CIFAR-C layout whose labels are the test split's (None when there is none)."""
    name = benchmark_name(dataset)
    rejected = []
    for folder in _published_candidates(root):
        labels = _read_labels(folder)
        n = len(labels) // len(SEVERITIES)
        blocks = labels.reshape(len(SEVERITIES), n)
        if n > len(test_labels) or not (blocks == blocks[0]).all() \
                or not np.array_equal(blocks[0], np.asarray(test_labels[:n])):
            rejected.append(folder)
            continue
        corruptions, unavailable = [], {}
        for c in ALL_CORRUPTIONS:
            path = folder / f"{c}.npy"
            if not path.is_file():
                unavailable[c] = f"not in the published folder {folder}"
                continue
            problem = _check_published_file(path, len(labels))
            if problem:
                raise ReproError(f"{name}: {path} {problem}; replace it with the released file or remove it")
            corruptions.append(c)
        return CorruptionBenchmark(name=name, folder=folder, source="published", per_severity=n,
                                   labels=blocks[0].astype(np.int64), corruptions=corruptions,
                                   unavailable=unavailable)
    for folder in rejected:
        log.info("%s is in the CIFAR-C layout but its labels are not those of the %s test split; skipped",
                 folder, dataset)
    return None


# --- generated sets --------------------------------------------------------------------------------------

def split_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of a split's images and labels: a cache made from other test images is never reused."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def image_seed(seed: int, corruption: str, severity: int, index: int) -> np.random.SeedSequence:
    """The seed of one corrupted image: fixed by the run-independent `seed`, the corruption's name (not its
    position in any list), the severity and the image's index in the test split."""
    return np.random.SeedSequence([seed, zlib.crc32(corruption.encode()), severity, index])


def _generate_chunk(task) -> np.ndarray:
    images, start, corruption, severity, seed, frost_folder = task
    pictures = load_frost_pictures(frost_folder) if corruption == "frost" else None
    return np.stack([corrupt(img, corruption, severity, np.random.default_rng(image_seed(seed, corruption,
                                                                                         severity, start + i)),
                             frost_pictures=pictures) for i, img in enumerate(images)])


def generate_corruption(images: np.ndarray, corruption: str, *, seed: int = 0,
                        frost_folder: str | Path | None = None, workers: int = 1,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(5 * N, 32, 32, 3) uint8: the N images corrupted at each severity, severity blocks stacked (CIFAR-C)."""
    check_names([corruption])
    images = np.asarray(images)
    tasks = [(images[i:i + _CHUNK], i, corruption, s, seed, None if frost_folder is None else str(frost_folder))
             for s in SEVERITIES for i in range(0, len(images), _CHUNK)]
    out = np.empty((len(SEVERITIES) * len(images),) + images.shape[1:], dtype=np.uint8)
    rows = [(s - 1) * len(images) + i for s in SEVERITIES for i in range(0, len(images), _CHUNK)]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for row, chunk in zip(rows, pool.map(_generate_chunk, tasks)):
                out[row:row + len(chunk)] = chunk
                if progress:
                    progress(len(chunk))
    else:
        for row, task in zip(rows, tasks):
            chunk = _generate_chunk(task)
            out[row:row + len(chunk)] = chunk
            if progress:
                progress(len(chunk))
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file and a rename: an interrupted run never leaves a truncated file."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _cache_folder(cache_dir: Path, dataset: str, seed: int, n: int, digest: str) -> Path:
    return cache_dir / f"{dataset}-c" / f"seed{seed}-n{n}-{digest[:12]}-v{GENERATOR_VERSION}"


def _cached_sets(cache_dir: Path, dataset: str, seed: int, digest: str) -> list[tuple[int, Path]]:
    """(N, folder) of the cached sets made from this split with this seed and generator, largest first."""
    parent = cache_dir / f"{dataset}-c"
    found = []
    for folder in parent.glob(f"seed{seed}-n*-{digest[:12]}-v{GENERATOR_VERSION}") if parent.is_dir() else []:
        try:
            info = json.loads((folder / INFO_FILE).read_text())
        except (OSError, ValueError):
            continue
        if info.get("split_sha256") == digest and info.get("seed") == seed:
            found.append((int(info["images_per_severity"]), folder))
    return sorted(found, reverse=True)


def generated_benchmark(dataset: str, images: np.ndarray, labels: np.ndarray, *, corruptions: Sequence[str],
                        limit: int | None = None, seed: int = 0, cache_dir: str | Path | None = None,
                        frost_folder: str | Path | None = None, workers: int = 1,
                        progress: bool = False) -> CorruptionBenchmark:
    """The corruptions of the first `limit` (default all) test images, generated once and cached."""
    check_names(corruptions)
    n = len(images) if limit is None else min(int(limit), len(images))
    if n < 1:
        raise ReproError(f"the corruption image limit must be at least 1, found {limit}")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = split_digest(images, labels)
    frost = find_frost_pictures(frost_folder)
    unavailable = {}
    if frost is None and "frost" in corruptions:
        unavailable["frost"] = ("the frost photographs are missing: pass their folder (frost1.png ... frost6.jpg), "
                                "or install them with `pip install --no-deps imagecorruptions`")
    wanted = [c for c in corruptions if c not in unavailable]
    # A cached set of at least n images holding every wanted corruption serves as it is.
    for size, folder in _cached_sets(cache_dir, dataset, seed, digest):
        if size >= n and all((folder / f"{c}.npy").is_file() for c in wanted):
            return CorruptionBenchmark(name=benchmark_name(dataset), folder=folder, source="generated",
                                       per_severity=size, labels=np.asarray(labels[:size], dtype=np.int64),
                                       corruptions=wanted, seed=seed, unavailable=unavailable, split_sha256=digest)
    folder = _cache_folder(cache_dir, dataset, seed, n, digest)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReproError(f"cannot create the corruption cache {folder} ({exc.strerror or exc}); pass a writable "
                         "folder as --corruption-cache") from None
    info = {"benchmark": benchmark_name(dataset), "dataset": dataset, "seed": seed, "images_per_severity": n,
            "split_sha256": digest, "generator_version": GENERATOR_VERSION,
            "layout": "<corruption>.npy: (5 * N, 32, 32, 3) uint8, severity blocks 1-5; labels.npy: (5 * N,)"}
    _save_npy(folder / LABELS_FILE, np.tile(np.asarray(labels[:n]).astype(np.int64), len(SEVERITIES)))
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    todo = [c for c in wanted if not (folder / f"{c}.npy").is_file()]
    bar = None
    if todo and progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo) * len(SEVERITIES) * n, desc="corrupting test images", unit="img")
    for c in todo:
        log.info("generating %s for %d %s test images x 5 severities (seed %d) into %s", c, n, dataset, seed, folder)
        array = generate_corruption(images[:n], c, seed=seed, frost_folder=frost, workers=workers,
                                    progress=bar.update if bar else None)
        _save_npy(folder / f"{c}.npy", array)
    if bar is not None:
        bar.close()
    return CorruptionBenchmark(name=benchmark_name(dataset), folder=folder, source="generated", per_severity=n,
                               labels=np.asarray(labels[:n], dtype=np.int64), corruptions=wanted, seed=seed,
                               unavailable=unavailable, split_sha256=digest)


def corruption_benchmark(dataset: str, images: np.ndarray, labels: np.ndarray, *,
                         corruptions: Sequence[str] | None = None, source: str = "auto", root: str | None = None,
                         limit: int | None = None, seed: int = 0, cache_dir: str | Path | None = None,
                         frost_folder: str | Path | None = None, workers: int = 1,
                         progress: bool = False) -> CorruptionBenchmark:
    """The CIFAR-C benchmark of a test split: the published folder (source 'auto' or 'published') when one
    matches the split's labels, else (source 'auto' or 'generated') the corruptions generated and cached."""
    corruptions = check_names(list(corruptions) if corruptions is not None else list(ALL_CORRUPTIONS))
    if source not in ("auto", "published", "generated"):
        raise ReproError(f"corruption source expects auto, published or generated, found '{source}'")
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ReproError(f"{benchmark_name(dataset)} needs 32x32 RGB test images, found shape {images.shape}")
    if source != "generated":
        found = find_published(dataset, labels, root)
        if found is not None:
            found.unavailable = {c: why for c, why in found.unavailable.items() if c in corruptions}
            found.corruptions = [c for c in found.corruptions if c in corruptions]
            return found
        if source == "published":
            raise ReproError(
                f"no {benchmark_name(dataset)} folder (labels.npy and <corruption>.npy files whose labels are the "
                f"{dataset} test labels) found. Looked in:\n{places(search_roots(root))}\nTo fix: pass "
                "--set data.robustness_root=FOLDER (the folder holding the .npy files), attach the dataset on "
                "Kaggle, or use --corruption-source generated to make the corruptions from the test split")
    return generated_benchmark(dataset, images, labels, corruptions=corruptions, limit=limit, seed=seed,
                               cache_dir=cache_dir, frost_folder=frost_folder, workers=workers, progress=progress)
