"""Class-folder datasets: ImageNet-1K, any `folder` dataset, and ImageNet-A/-R/-Sketch for robustness.

ImageNet is expected as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (torchvision ImageFolder); class indices
follow the sorted wnids, as in every released ImageNet checkpoint. The robustness sets hold a subset of the
classes (200 for A and R, all 1000 for Sketch); each set's `class_index_map` lists, for its own classes in
order, the index of that class in the 1000-way head, so an evaluator scores `logits[:, class_index_map]`
against the set's targets.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ReproError
from .locate import find_all, find_first, places, search_roots, walk_dirs

WNID = re.compile(r"^n\d{8}$")
IMAGENET_NUM_CLASSES = 1000


@dataclass
class FolderData:
    """Train and test ImageFolders (returning PIL images) with their shared class list."""

    train: object
    test: object
    classes: list[str]
    folder: Path


def class_folders(path: Path) -> list[str]:
    """Sorted names of the sub-folders of `path` (ImageFolder's class order)."""
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _has_wnid_folders(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return any(WNID.match(e.name) and e.is_dir() for e in it)
    except OSError:
        return False


def _image_folder(path: Path, what: str):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, OSError) as exc:
        raise ReproError(f"{what}: {path} is not a usable class-folder tree ({exc}); expected "
                         f"{path}/<class>/<image files> with at least one image per class") from exc


def _check_same_classes(train: list[str], test: list[str], train_dir: Path, test_dir: Path) -> None:
    if train != test:
        missing = sorted(set(train) - set(test))
        extra = sorted(set(test) - set(train))
        raise ReproError(
            f"{test_dir} has {len(test)} class folders and {train_dir} has {len(train)}; they must be the same "
            f"classes, or labels would shift. Missing in {test_dir.name}: {', '.join(missing[:5]) or 'none'}"
            f"{' ...' if len(missing) > 5 else ''}; extra: {', '.join(extra[:5]) or 'none'}"
            f"{' ...' if len(extra) > 5 else ''}")


def _load_pair(folder: Path, test_name: str, what: str, on_classes: Callable[[list[str]], None] | None):
    train_dir, test_dir = folder / "train", folder / test_name
    classes = class_folders(train_dir)
    if not classes:
        raise ReproError(f"{what}: {train_dir} has no class folders; expected {train_dir}/<class>/<images>")
    _check_same_classes(classes, class_folders(test_dir), train_dir, test_dir)
    if on_classes is not None:  # before the (slow) scan of every image file
        on_classes(classes)
    train = _image_folder(train_dir, what)
    test = _image_folder(test_dir, what)
    return FolderData(train, test, classes, folder)


def load_imagenet(root: str | None, on_classes: Callable[[list[str]], None] | None = None) -> FolderData:
    """Locate ImageNet (a folder with train/ and val/ wnid class folders) and read both splits."""
    roots = search_roots(root)
    found = find_first(roots, lambda d: (d / "val").is_dir() and _has_wnid_folders(d / "train")
                       and _has_wnid_folders(d / "val"))
    if found is None:
        flat = find_all(roots, lambda d: _has_wnid_folders(d / "train") and (d / "val").is_dir())
        if flat:
            raise ReproError(
                f"imagenet: {flat[0]}/val has no class folders (the Kaggle/ILSVRC release ships val images "
                f"flat, with labels in LOC_val_solution.csv); arrange them as {flat[0]}/val/<wnid>/<image> "
                "in a writable folder and pass its parent as data.root")
        raise ReproError(
            "imagenet: no folder with train/<wnid>/ and val/<wnid>/ class folders found. Looked in:\n"
            f"{places(roots)}\nTo fix: pass --set data.root=FOLDER (the folder holding train/ and val/), or on "
            "Kaggle attach an ImageNet dataset in class-folder layout.")
    return _load_pair(found, "val", "imagenet", on_classes)


def load_class_folders(root: str | None, on_classes: Callable[[list[str]], None] | None = None) -> FolderData:
    """Read a `folder` dataset: root/train/<class>/ and root/val/<class>/ (or root/test/<class>/)."""
    if not root:
        raise ReproError("data.name=folder needs data.root: a folder holding train/<class>/ and val/<class>/ "
                         "image folders; pass --set data.root=FOLDER")
    folder = Path(root).expanduser().absolute()
    if not (folder / "train").is_dir():
        state = "does not exist" if not folder.is_dir() else f"holds {', '.join(class_folders(folder)) or 'no folders'}"
        raise ReproError(f"folder dataset: expected {folder}/train/<class>/ and {folder}/val/<class>/, but "
                         f"{folder} {state}; point data.root at the folder holding train/ and val/")
    test_name = next((n for n in ("val", "test") if (folder / n).is_dir()), None)
    if test_name is None:
        raise ReproError(f"folder dataset: {folder} has train/ but no val/ (or test/) folder with the same "
                         "classes; add one (the held-out images to report accuracy on)")
    return _load_pair(folder, test_name, "folder dataset", on_classes)


def imagenet_wnids(train_dir: str | Path | None = None) -> list[str]:
    """The 1000-way head's class order: sorted wnid folders of `train_dir`, or the standard ImageNet-1K list."""
    if train_dir is not None:
        return class_folders(Path(train_dir))
    from timm.data import ImageNetInfo

    return sorted(ImageNetInfo("imagenet-1k").label_names())


def load_robustness_folder(path: str | Path, *, wnids: Sequence[str], transform: Callable | None = None,
                           label: str = "robustness set"):
    """An ImageFolder of wnid class folders with `class_index_map` into the head defined by `wnids`; `label`
    names the folder in errors."""
    path = Path(path)
    classes = class_folders(path)
    position = {w: i for i, w in enumerate(wnids)}
    unknown = [c for c in classes if c not in position]
    if unknown:
        raise ReproError(f"{label} {path}: class folders {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''} are not among the model's {len(wnids)} classes; "
                         "the folders must be ImageNet wnids (n01440764, ...)")
    ds = _image_folder(path, f"{label} {path.name}")
    ds.transform = transform
    ds.class_index_map = [position[c] for c in ds.classes]
    ds.name = path.name
    return ds


def robustness_folders(root: str | Path, *, required: bool = True) -> dict[str, Path]:
    """{name: folder} for ImageNet-A/-R/-Sketch style sets: `root` itself or each sub-folder of wnid folders
    (none found: an error, or {} when not `required`)."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise ReproError(f"data.robustness_root {root} does not exist; point it at a folder of wnid class "
                         "folders (e.g. imagenet-r/) or at a folder holding several such sets")
    if _has_wnid_folders(root):
        return {root.name: root}
    sets = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and _has_wnid_folders(p)}
    if not sets and required:
        raise ReproError(f"data.robustness_root {root} holds no wnid class folders (n01440764/ ...) directly or "
                         "one level down; expected e.g. imagenet-a/n01498041/*.jpg")
    return sets


def imagenet_c_folders(root: str | Path, max_depth: int = 3) -> dict[str, dict[int, Path]]:
    """{corruption: {severity: folder of wnid class folders}} for ImageNet-C trees (<corruption>/<1-5>/<wnid>/)
    at or up to `max_depth` levels below `root` (the release extracts flat or grouped as noise/, blur/, ...);
    the first tree found for a corruption wins."""
    from .corruptions import ALL_CORRUPTIONS, SEVERITIES

    found: dict[str, dict[int, Path]] = {}
    for folder in walk_dirs(Path(root).expanduser().absolute(), max_depth):
        if folder.name not in ALL_CORRUPTIONS or folder.name in found:
            continue
        levels = {s: folder / str(s) for s in SEVERITIES if _has_wnid_folders(folder / str(s))}
        if levels:
            found[folder.name] = levels
    return {c: found[c] for c in ALL_CORRUPTIONS if c in found}
