"""One process per run folder: a lock taken before anything is written, released when the run ends.

The lock is an exclusive `flock` on `<run>/.lock`, which the kernel drops when its holder dies (kill -9
included), so a crashed run never blocks the next one on a local disk or Kaggle's /kaggle/working. The file
also names its holder (pid, host, start time): a second process is refused with that name, and a lock file left
by a process that no longer exists is reported as reclaimed. On file systems without flock the pid and host
alone decide: a live holder on this host, or any holder on another host, keeps the folder.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import ReproError

try:
    import fcntl
except ImportError:  # Windows: pid/host only
    fcntl = None

log = logging.getLogger("repro.train")

LOCK_NAME = ".lock"
# Lock files this process holds. A forked child (a DataLoader worker) inherits the descriptor and with it the
# flock, which would outlive a killed trainer until its workers notice: children close them at once.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunFolderBusy(ReproError):
    """Another live process holds the run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    started = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{since}"


class RunLock:
    """An exclusive lock on a run folder (a context manager; `acquire` / `release` for longer scopes)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        """Take the lock or raise RunFolderBusy naming the holder; creates the folder if needed."""
        if self._fd is not None:
            return self
        from ..paths import ensure_writable_dir

        ensure_writable_dir(self.run_dir, "the run folder (--out)")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ReproError(f"cannot create the lock file {self.path} ({exc.strerror or exc}); pass a writable "
                             "--out") from None
        locked_by_kernel = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked_by_kernel = True
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise self._busy(self._read_holder()) from None
                # ENOLCK / EOPNOTSUPP: a file system without flock; fall back to pid and host.
        holder = self._read_holder()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        if holder and holder.get("pid") != me["pid"]:
            same_host = holder.get("host") == me["host"]
            if not locked_by_kernel and (not same_host or _pid_alive(int(holder.get("pid") or 0))):
                os.close(fd)
                raise self._busy(holder)
            log.warning("%s: reclaimed the lock left by %s, which no longer holds it (the process ended "
                        "without releasing it)", self.run_dir, _describe(holder))
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        _HELD.add(fd)
        return self

    def _busy(self, holder: dict) -> RunFolderBusy:
        who = _describe(holder) if holder else "another process"
        return RunFolderBusy(f"{self.run_dir} is in use by {who}: one run folder takes one training at a time; "
                             "wait for it to finish, stop it, or pass another --out")

    def release(self) -> None:
        """Give the folder back (idempotent)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
