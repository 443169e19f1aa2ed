"""Output folders a command writes into: created and checked before any work, refused in one line.

Every command that writes (`repro train --out`, `repro report --out`, `repro batch --out`,
`repro kaggle prepare --out`) calls `ensure_writable_dir` first, so a folder that is a file, cannot be created
or is read-only (a Kaggle dataset under /kaggle/input, a read-only mount, a folder without write permission)
fails at once with what to do, instead of as an OSError after minutes of work. A run folder that cannot be
written can still be continued: `read_only_hint` says how (resume from it into a writable folder).
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import ReproError

RUN_FOLDER_MARKERS = ("config.yaml", "checkpoints", "summary.json")


def _nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists (where creating `path` would start)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _read_only_mount(path: Path) -> bool:
    """True when `path` lives on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows) or the path vanished
        return False


def _why_not_writable(folder: Path) -> str | None:
    """Why files cannot be created in the existing folder `folder`, or None when they can (probed, so it is
    right for root, ACLs and network file systems, where permission bits alone mislead)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".repro-write-test-", dir=folder)
    except OSError as exc:
        if exc.errno == errno.EROFS or _read_only_mount(folder):
            return "is on a read-only file system"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "is not writable (no permission to create files there)"
        if exc.errno == errno.ENOSPC:
            return "is on a full disk (no space left to create a file)"
        return f"cannot be written ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


def _under_kaggle_input(path: Path) -> bool:
    """True for a path under Kaggle's /kaggle/input, where attached datasets and outputs are read-only."""
    from .device import kaggle_root  # imported late (it brings torch), and only once something is wrong
    try:
        return path.resolve().is_relative_to((kaggle_root() / "input").resolve())
    except OSError:
        return False


def _where_to_write(path: Path) -> str:
    return "pass a folder you can write to" + (" (on Kaggle: under /kaggle/working)"
                                               if _under_kaggle_input(path) else "")


def is_run_folder(path: str | Path) -> bool:
    """True when `path` holds the files of a training run (config.yaml, checkpoints/ or summary.json)."""
    return any((Path(path) / name).exists() for name in RUN_FOLDER_MARKERS)


def read_only_hint(path: str | Path) -> str | None:
    """For a run folder that cannot be written (e.g. attached under /kaggle/input): the sentence saying how to
    continue it (--resume-from it with a writable --out); None when the folder is writable or absent."""
    path = Path(path)
    if not path.is_dir():
        return None
    under_input = _under_kaggle_input(path)
    why = _why_not_writable(path)
    if why is None and not under_input:
        return None
    where = "is attached read-only under /kaggle/input" if under_input else why
    target = (Path("/kaggle/working") if under_input else Path("runs")) / path.name
    return (f"{path} {where}, so the run cannot continue in place; keep it as the source and write to a new "
            f"folder: --resume-from {path} --out {target} (the run continues there from its newest checkpoint)")


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Create the folder `path` (with its parents) and check that files can be written in it; returns it.

    `what` names the folder in the message, e.g. "the report folder (--out)". Raises ReproError in one line
    when the path is a file, cannot be created, or is read-only, saying what to do.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ReproError(f"{what} {path} is a file, expected a folder; pass a folder path (or move the file "
                         "away)")
    if not path.is_dir():
        start = _nearest_existing(path.parent)
        if not start.is_dir():
            raise ReproError(f"cannot create {what} {path}: {start} is a file, not a folder; pass a path whose "
                             "parents are folders")
        why = _why_not_writable(start)
        if why is not None:
            raise ReproError(f"cannot create {what} {path}: {start} {why}; {_where_to_write(start)}")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a race, or a file system that refuses what the probe allowed
            raise ReproError(f"cannot create {what} {path} ({exc.strerror or exc}); "
                             f"{_where_to_write(path)}") from None
        return path
    hint = read_only_hint(path) if is_run_folder(path) else None
    if hint is not None:
        raise ReproError(f"{what} {hint}")
    why = _why_not_writable(path)
    if why is not None:
        raise ReproError(f"{what} {path} {why}; {_where_to_write(path)}")
    return path
