"""One checkpoint format: atomic writes with a checksum, newest-valid discovery, and the run's state digest."""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import ReproError

log = logging.getLogger("repro.train")

CKPT_DIR = "checkpoints"
_CKPT = re.compile(r"^ckpt-(\d{8})\.pt$")
_TMP = re.compile(r"^\..+\.tmp\d+$")


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


class CheckpointWriteError(ReproError):
    """A save that could not complete (disk full, read-only); the previous files are intact."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync and rename, so readers never see a partial file.

    On failure (a full disk, say) the temporary file is removed and the file under `path` is left as it was.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode())


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files that killed saves left in a run folder and its checkpoints/ (call under the
    run's lock, so no live writer owns them)."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / CKPT_DIR):
        if folder.is_dir():
            for p in folder.iterdir():
                if _TMP.match(p.name):
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


# The checksum lives inside the checkpoint: in the comment field of the zip file's end record, which torch.load
# and every zip reader skip. The file under its final name therefore always carries its own checksum.
_EOCD = b"PK\x05\x06"
_SEAL = b"repro-sha256:"


def seal(data: bytes) -> bytes:
    """torch.save bytes with their sha256 written into the zip end record's comment."""
    at = data.rfind(_EOCD)
    if at < 0 or len(data) - at != 22:
        raise ValueError("not a torch zip file without a comment")
    comment = _SEAL + hashlib.sha256(data[: at + 20]).hexdigest().encode()
    return data[: at + 20] + struct.pack("<H", len(comment)) + comment


def verify_seal(data: bytes) -> bool | None:
    """True when the embedded checksum matches, False when it does not (or the file is cut short), None when
    the file is a complete torch file that carries no checksum."""
    at = data.rfind(_EOCD)
    if at < 0 or len(data) < at + 22:
        return False  # no complete zip end record: a truncated (or foreign) file, never loadable as written
    (n,) = struct.unpack("<H", data[at + 20: at + 22])
    comment = data[at + 22:]
    if not comment.startswith(_SEAL):
        return None
    if len(comment) != n:
        return False
    return hashlib.sha256(data[: at + 20]).hexdigest().encode() == comment[len(_SEAL):]


def nonfinite_entries(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state that hold a NaN or an infinity.

    One fused max-abs reduction per device and dtype group (torch._foreach_norm with ord=inf), then one
    transfer: cheap enough to run before every save, on the device the tensors live on.
    """
    named: list[tuple[str, torch.Tensor]] = []

    def walk(obj, name):
        if torch.is_tensor(obj):
            if obj.is_floating_point() or obj.is_complex():
                named.append((name, obj.detach()))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{name}.{i}" if name else str(i))

    walk(state, prefix)
    if not named:
        return []
    groups: dict[tuple, list[int]] = {}
    for i, (_, t) in enumerate(named):
        groups.setdefault((t.device, t.dtype), []).append(i)
    bad: list[str] = []
    for idx in groups.values():
        norms = torch._foreach_norm([named[i][1] for i in idx], float("inf"))
        finite = torch.isfinite(torch.stack([n.float() for n in norms])).cpu()
        bad.extend(named[i][0] for i, ok in zip(idx, finite.tolist()) if not ok)
    return bad


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save `state` as checkpoints/ckpt-<step>.pt (its checksum inside); keep the newest `keep`.

    A state holding non-finite values is never written (`NonFiniteState`), and a full or read-only disk raises
    CheckpointWriteError naming the newest checkpoint that is still intact.
    """
    folder = Path(run_dir) / CKPT_DIR
    bad = nonfinite_entries(state)
    if bad:
        raise NonFiniteState(step, bad)
    path = folder / f"ckpt-{step:08d}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, seal(buf.getvalue()))
    except OSError as exc:
        raise CheckpointWriteError(_write_failure(exc, folder, step)) from None
    path.with_suffix(".pt.sha256").unlink(missing_ok=True)  # an older format's sidecar, now stale
    for old in list_checkpoints(folder)[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt.sha256").unlink(missing_ok=True)
    return path


def _write_failure(exc: OSError, folder: Path, step: int) -> str:
    intact = [p for p in list_checkpoints(folder) if checkpoint_step(p) != step]
    kept = (f"the checkpoint of step {checkpoint_step(intact[0])} is intact" if intact
            else "no earlier checkpoint exists")
    if exc.errno == errno.ENOSPC:
        what, todo = f"no space left on {_device_of(folder)}", "free some space (or use another --out)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what, todo = f"{folder} is not writable", "use a writable --out"
    else:
        what, todo = f"{exc.strerror or exc}", "check the disk"
    return f"{what} while saving step {step}; {kept}; {todo} and run the same command again"


def _device_of(folder: Path) -> str:
    """The mount point holding `folder`, as a user would name the disk."""
    p = Path(os.path.abspath(folder))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


class NonFiniteState(ReproError):
    """A state about to be saved holds NaN or infinite values; nothing was written."""

    def __init__(self, step: int, names: list[str]):
        self.step, self.names = step, names
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        super().__init__(f"the state at step {step} holds non-finite values ({len(names)} tensors: {shown}); "
                         "it was not saved")


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


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any] | None, str | None]:
    """(state, None) for a sound checkpoint; (None, why) for one that is unreadable, corrupt or non-finite.

    A file of this format carries its checksum inside; an older one may have a .sha256 file beside it. A file
    with neither cannot be verified by checksum, so it is loaded fully and checked for finite values instead.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    sealed = verify_seal(data)
    sidecar = path.with_suffix(".pt.sha256")
    if sealed is False:
        return None, "checksum mismatch (truncated or corrupt)"
    if sealed is None:
        if sidecar.is_file():
            if hashlib.sha256(data).hexdigest() != sidecar.read_text().strip():
                return None, "checksum mismatch (truncated or corrupt)"
        else:
            log.warning("%s carries no checksum (a kill between the two writes of an older version, or a "
                        "copied file); verifying it by a full load and a finiteness check instead", path)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:  # any unpickling failure means the file is unusable
        return None, f"cannot be read ({type(exc).__name__})"
    if not isinstance(state, dict):
        return None, "does not hold a checkpoint dictionary"
    bad = nonfinite_entries({k: state.get(k) for k in ("model", "model_ema", "optimizer", "criterion")})
    if bad:
        return None, f"holds non-finite values ({len(bad)} tensors, e.g. {bad[0]})"
    return state, None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Load a sound checkpoint; None (with a warning) when it is corrupt, truncated or non-finite."""
    state, why = read_checkpoint(path, map_location)
    if state is None:
        log.warning("skipping checkpoint %s: %s", path, why)
    return state


def set_aside(path: Path) -> Path | None:
    """Rename a bad checkpoint to <name>.bad so it no longer counts as a checkpoint (nor against
    keep_checkpoints) but stays on disk for inspection; None when the folder is not writable."""
    path = Path(path)
    target = path.with_name(path.name + ".bad")
    try:
        os.replace(path, target)
        path.with_suffix(".pt.sha256").unlink(missing_ok=True)
    except OSError:
        return None
    return target


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
