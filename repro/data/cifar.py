"""CIFAR-10 and CIFAR-100 from the python-pickle release (as torchvision writes it and Kaggle datasets ship it).

The folder is located by its files, not its name (Kaggle uploads often rename `cifar-100-python/`), then read
with torchvision's CIFAR classes. torchvision's own check compares MD5 sums and fails with one generic
message; here every file is checked for presence and structure with a message naming it, and the MD5 sums
of the official release are compared separately: a structurally valid copy that differs (a modified or
re-pickled dataset) loads with a `DataWarning`, since its numbers would not compare to published ones.

Both kinds of pickle found in the wild load: the release's Python 2 pickles, whose keys read as 'data' with
torchvision's latin-1 decoding, and copies re-saved from Python 3 after reading with `encoding='bytes'`, whose
keys (and class names) are byte strings such as b'data' and b'fine_labels'.
"""
from __future__ import annotations

import functools
import hashlib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from ..errors import ReproError
from .locate import SearchRoot, find_all, find_first, places, search_roots


class DataWarning(UserWarning):
    """The data loaded, but differs from the official release (results may not compare to published ones)."""


@dataclass(frozen=True)
class CifarSpec:
    """File names and pickle keys of one CIFAR release."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    labels_key: str
    names_key: str
    archive: str

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files + (self.meta_file,)


CIFAR_SPECS = {
    "cifar100": CifarSpec("cifar100", "cifar-100-python", ("train",), ("test",), "meta", "fine_labels",
                          "fine_label_names", "cifar-100-python.tar.gz"),
    "cifar10": CifarSpec("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                         ("test_batch",), "batches.meta", "labels", "label_names", "cifar-10-python.tar.gz"),
}


@dataclass
class CifarData:
    """Both splits (torchvision datasets returning PIL images), the class names and provenance."""

    train: object
    test: object
    classes: list[str]
    folder: Path
    official: bool


def _torchvision_class(name: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR100 if name == "cifar100" else CIFAR10


@functools.lru_cache(maxsize=None)
def _reader_class(name: str):
    """torchvision's CIFAR dataset class reading the folder itself (pickles with text or byte-string keys), with
    the file checks done by this module."""
    from torchvision.datasets import VisionDataset

    spec = CIFAR_SPECS[name]

    class Reader(_torchvision_class(name)):
        base_folder = ""  # `root` is the folder holding the pickles, whatever it is called

        def __init__(self, root: str, train: bool = True) -> None:
            # torchvision's own reading indexes the pickles with str keys only; this one takes bytes keys too.
            VisionDataset.__init__(self, root)
            self.train = train
            files = spec.train_files if train else spec.test_files
            entries = [_unpickle(Path(root) / name) for name in files]
            self.data = np.vstack([e["data"] for e in entries]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
            self.targets = [int(t) for e in entries for t in e[spec.labels_key]]
            self._load_meta()

        def _check_integrity(self) -> bool:
            return True  # presence and structure were checked by load_cifar, MD5 sums by _official_release

        def _load_meta(self) -> None:
            meta = _unpickle(Path(self.root) / spec.meta_file)
            self.classes = [_text(c) for c in meta[spec.names_key]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Reader.__name__ = Reader.__qualname__ = f"{name.upper()}Pickles"
    return Reader


def _text(value):
    """A byte string decoded as the release's latin-1 text; anything else unchanged."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _unpickle(path: Path):
    """One release file; a dict's byte-string keys (a copy re-saved from Python 3) become text keys."""
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")  # the release is Python 2 pickles of byte strings
    return {_text(k): v for k, v in obj.items()} if isinstance(obj, dict) else obj


def _problem(path: Path, spec: CifarSpec) -> str | None:
    """What is wrong with one release file, or None when it looks right."""
    try:
        obj = _unpickle(path)
    except Exception as exc:  # truncated downloads raise EOFError, UnpicklingError, ValueError, ...
        return f"cannot be read as a pickle ({type(exc).__name__}: {exc}); it is truncated or corrupt"
    if not isinstance(obj, dict):
        return f"holds a {type(obj).__name__}, expected a dict"
    if path.name == spec.meta_file:
        return None if spec.names_key in obj else f"has no '{spec.names_key}' entry (keys: {_keys(obj)})"
    missing = [k for k in ("data", spec.labels_key) if k not in obj]
    if missing:
        return f"has no {' or '.join(repr(k) for k in missing)} entry (keys: {_keys(obj)})"
    data, labels = obj["data"], obj[spec.labels_key]
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] != 3 * 32 * 32 or shape[0] != len(labels):
        return (f"holds data of shape {shape} for {len(labels)} labels; expected one row of 3072 values "
                "(3x32x32) per label")
    return None


def _keys(obj: dict) -> str:
    return ", ".join(sorted(map(str, obj))) or "none"


def _raise_bad_file(folder: Path, spec: CifarSpec, files: tuple[str, ...], exc: Exception | None) -> NoReturn:
    for name in files:
        problem = _problem(folder / name, spec)
        if problem:
            raise ReproError(f"{spec.name}: file {folder / name} {problem}. Replace the dataset files (re-attach "
                             "the Kaggle dataset, re-extract the archive, or delete the folder and rerun with "
                             "data.download=true when online)")
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    raise ReproError(f"{spec.name}: could not read {', '.join(files)} in {folder}{detail}; "
                     "replace the dataset files") from exc


def _md5(path: Path) -> str:
    st = path.stat()
    return _md5_of(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _md5_of(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and modification time: rebuilding the data in one process re-hashes only changed files.
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _official_release(folder: Path, spec: CifarSpec) -> bool:
    """True when every file has the MD5 sum torchvision lists for the official release."""
    tv = _torchvision_class(spec.name)
    expected = dict(tv.train_list + tv.test_list)
    expected[tv.meta["filename"]] = tv.meta["md5"]
    return all(_md5(folder / name) == expected[name] for name in spec.files)


def _complete(spec: CifarSpec):
    return lambda folder: all((folder / name).is_file() for name in spec.files)


def _locate(spec: CifarSpec, roots: list[SearchRoot], download: bool) -> Path:
    folder = find_first(roots, _complete(spec))
    if folder is not None:
        return folder
    partial = find_all(roots, lambda f: f.name == spec.folder or any((f / n).is_file() for n in spec.files))
    if partial:
        missing = [n for n in spec.files if not (partial[0] / n).is_file()]
        raise ReproError(
            f"{spec.name}: folder {partial[0]} looks like the {spec.folder} release but lacks "
            f"{', '.join(missing)}; expected files: {', '.join(spec.files)}. Re-extract {spec.archive} or "
            "re-attach the complete dataset")
    archives = find_all(roots, lambda f: (f / spec.archive).is_file())
    hint = (f"\nFound the archive {archives[0] / spec.archive}: extract it (tar xzf) into a writable folder "
            "and pass that folder as data.root." if archives else "")
    raise ReproError(
        f"{spec.name}: no {spec.folder} folder (files {', '.join(spec.files)}) found. Looked in:\n"
        f"{places(roots)}{hint}\nTo fix: on Kaggle attach a CIFAR dataset in the python format (Add Input); "
        f"elsewhere pass --set data.root=FOLDER (the folder holding {spec.folder}/, or the files themselves)"
        + ("" if download else ", or add --set data.download=true to let torchvision download it (needs "
                               "internet)") + ".")


def _download(spec: CifarSpec, root: str | None) -> Path:
    target = Path(root or "data").expanduser().absolute()
    try:
        _torchvision_class(spec.name)(str(target), train=True, download=True)
    except Exception as exc:  # no network, disk full, bad checksum
        raise ReproError(f"{spec.name}: torchvision could not download the dataset into {target} "
                         f"({type(exc).__name__}: {exc}); copy the files there by hand or attach the dataset "
                         "on Kaggle, and set data.download=false") from exc
    return target


def load_cifar(name: str, root: str | None = None, download: bool = False) -> CifarData:
    """Locate, check and read CIFAR-10/100; raises ReproError naming the folder or file at fault."""
    spec = CIFAR_SPECS[name]
    roots = search_roots(root)
    try:
        folder = _locate(spec, roots, download)
    except ReproError:
        if not download:
            raise
        target = _download(spec, root)
        folder = _locate(spec, [SearchRoot(target, 1, "downloaded")], download)
    reader = _reader_class(name)
    splits = {}
    for split, files in (("train", spec.train_files), ("test", spec.test_files)):
        try:
            ds = reader(str(folder), train=split == "train")
        except Exception as exc:
            _raise_bad_file(folder, spec, files + (spec.meta_file,), exc)
        if len(ds.data) != len(ds.targets):
            _raise_bad_file(folder, spec, files, None)
        bad = [t for t in ds.targets if not 0 <= t < len(ds.classes)]
        if bad:
            raise ReproError(f"{spec.name}: {folder} has {split} labels up to {max(bad)} but {spec.meta_file} "
                             f"names only {len(ds.classes)} classes; the files do not belong together")
        splits[split] = ds
    official = _official_release(folder, spec)
    if not official:
        warnings.warn(f"{spec.name} files in {folder} differ from the official release (MD5 sums do not match "
                      "torchvision's); they are used as they are, but accuracies may not compare to published "
                      "ones. If you downloaded them, a damaged copy would also show this: re-download.",
                      DataWarning, stacklevel=3)
    return CifarData(splits["train"], splits["test"], list(splits["train"].classes), folder, official)
