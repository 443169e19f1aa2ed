"""Finding datasets on disk: which folders are searched, how deep, and how a miss is reported.

Without `data.root` the search covers ./data, ~/data and, inside Kaggle, every attached input under
<kaggle_root>/input (mount paths differ between datasets and competitions, so it is searched recursively).
The walk is breadth-first, sorted, and never descends into very large folders (image class folders), so
searching next to an attached ImageNet stays fast.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..device import in_kaggle, kaggle_root

# Folders with more entries than this hold images, not datasets: listing their children would be slow.
MAX_ENTRIES = 2000


@dataclass(frozen=True)
class SearchRoot:
    """A folder to search, how many levels below it, and where it came from (for messages)."""

    path: Path
    depth: int
    origin: str

    def describe(self) -> str:
        """One line for error messages: the folder, its origin and whether it exists."""
        state = f"searched {self.depth} levels deep" if self.path.is_dir() else "does not exist"
        return f"{self.path} ({self.origin}; {state})"


def search_roots(root: str | None) -> list[SearchRoot]:
    """The folders to search: `root` alone when given, else ./data, ~/data and Kaggle inputs."""
    if root:
        return [SearchRoot(Path(root).expanduser().absolute(), 4, "data.root")]
    roots = [SearchRoot(Path.cwd() / "data", 3, "default"), SearchRoot(Path.home() / "data", 3, "default")]
    if in_kaggle():
        roots.append(SearchRoot(kaggle_root() / "input", 6, "Kaggle inputs"))
    return roots


def walk_dirs(root: Path, max_depth: int) -> Iterator[Path]:
    """`root` and the folders below it, breadth-first in name order, at most `max_depth` levels down."""
    if not root.is_dir():
        return
    seen: set[str] = set()
    level = [root]
    for depth in range(max_depth + 1):
        below: list[Path] = []
        for folder in level:
            real = os.path.realpath(folder)
            if real in seen:  # symlink loops
                continue
            seen.add(real)
            yield folder
            if depth == max_depth:
                continue
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError:
                continue
            if len(entries) > MAX_ENTRIES:
                continue
            below += sorted(Path(e.path) for e in entries
                            if not e.name.startswith(".") and _is_dir(e))
        level = below


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def find_first(roots: list[SearchRoot], accept: Callable[[Path], bool]) -> Path | None:
    """The first folder (roots in order) for which `accept` is true."""
    for r in roots:
        for folder in walk_dirs(r.path, r.depth):
            if accept(folder):
                return folder
    return None


def find_all(roots: list[SearchRoot], accept: Callable[[Path], bool]) -> list[Path]:
    """Every folder under the roots for which `accept` is true, in search order."""
    return [f for r in roots for f in walk_dirs(r.path, r.depth) if accept(f)]


def places(roots: list[SearchRoot]) -> str:
    """The searched folders as an indented list for error messages."""
    return "\n".join(f"  - {r.describe()}" for r in roots)
