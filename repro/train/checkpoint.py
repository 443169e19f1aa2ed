"""One checkpoint format: atomic writes with a checksum, newest-valid discovery, and the run's state digest."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

import torch

log = logging.getLogger("repro.train")

CKPT_DIR = "checkpoints"
_CKPT = re.compile(r"^ckpt-(\d{8})\.pt$")


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for key, t in state_dict.items():
        if not torch.is_tensor(t):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync and rename, so readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode())


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save `state` as checkpoints/ckpt-<step>.pt with a .sha256 beside it; keep the newest `keep`."""
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = folder / f"ckpt-{step:08d}.pt"
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_suffix(".pt.sha256"), hashlib.sha256(data).hexdigest() + "\n")
    for old in list_checkpoints(folder)[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt.sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, newest (highest step) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint file was written at (from its name)."""
    m = _CKPT.match(Path(path).name)
    return int(m.group(1)) if m else -1


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Load a checkpoint after checking its checksum; None (with a warning) when it is corrupt or truncated."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("skipping unreadable checkpoint %s (%s)", path, exc)
        return None
    sidecar = path.with_suffix(".pt.sha256")
    if sidecar.is_file():
        expected = sidecar.read_text().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            log.warning("skipping checkpoint %s: checksum mismatch (truncated or corrupt)", path)
            return None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:  # any unpickling failure means the file is unusable
        log.warning("skipping checkpoint %s: cannot be read (%s)", path, type(exc).__name__)
        return None


def candidate_folders(run_dir: Path, extra: Iterable[Path], kaggle_input: Path | None) -> list[Path]:
    """Checkpoint folders to consider: the run's own, then --resume-from folders, then Kaggle inputs."""
    folders = [Path(run_dir) / CKPT_DIR]
    for d in extra:
        d = Path(d)
        folders.append(d / CKPT_DIR if (d / CKPT_DIR).is_dir() else d)
    if kaggle_input is not None and kaggle_input.is_dir():
        from ..data.locate import walk_dirs  # bounded walk: an attached ImageNet has a million files
        folders.extend(f for f in walk_dirs(kaggle_input, 6) if f.name == CKPT_DIR and list_checkpoints(f))
    unique = []
    for f in folders:
        if f not in unique:
            unique.append(f)
    return unique


def run_of(path: Path) -> tuple[Path | None, bool]:
    """(the run folder of `path`, whether `path` is that run's last state) for a run folder or a checkpoint in
    its checkpoints/; (None, False) for anything else (a released file, a folder without summary.json)."""
    path = Path(path)
    if path.is_dir():
        return (path, True) if (path / "summary.json").is_file() else (None, False)
    if path.parent.name == "checkpoints" and (path.parent.parent / "summary.json").is_file():
        newest = list_checkpoints(path.parent)
        return path.parent.parent, bool(newest) and newest[0].resolve() == path.resolve()
    return None, False
