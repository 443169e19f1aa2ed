"""Thin wrappers over the official `kaggle` command line, always run in a subprocess.

`import kaggle` authenticates at import time (and older clients exit the process without credentials), so
this package never imports it: it runs the `kaggle` executable, or `python -m kaggle` when only the module
is installed. Credentials stay the official client's business (`kaggle auth login`, KAGGLE_API_TOKEN or
~/.kaggle/access_token for the 2.x client; ~/.kaggle/kaggle.json or KAGGLE_USERNAME / KAGGLE_KEY for older ones).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ReproError
from .metadata import KERNEL_METADATA_FILE, read_metadata, validate_kernel_metadata

CREDENTIALS_HINT = ("sign in with `kaggle auth login`, or put the API token from kaggle.com/settings/api in "
                    "KAGGLE_API_TOKEN or ~/.kaggle/access_token (clients before 2.0: ~/.kaggle/kaggle.json)")


def kaggle_command() -> list[str]:
    """The argv prefix that runs the official client."""
    exe = shutil.which("kaggle")
    if exe:
        return [exe]
    if importlib.util.find_spec("kaggle") is not None:
        return [sys.executable, "-m", "kaggle"]
    raise ReproError("the official Kaggle client is not installed; pip install 'repro-lkt[kaggle]' (or "
                     f"pip install kaggle six), then {CREDENTIALS_HINT}")


def run_kaggle(args: list[str], *, capture: bool = False) -> subprocess.CompletedProcess:
    """Run `kaggle ARGS`; a non-zero status raises ReproError with the client's message."""
    proc = subprocess.run([*kaggle_command(), *args], capture_output=capture, text=True)
    if proc.returncode != 0:
        detail = (proc.stdout + proc.stderr).strip()[-2000:] if capture else "see the output above"
        if "ModuleNotFoundError" in detail or "ImportError" in detail:
            raise ReproError(f"the official Kaggle client is installed but cannot start ({detail.splitlines()[-1]}); "
                             "install what it lacks (pip install 'repro-lkt[kaggle]' adds six, which kaggle 2.x "
                             "imports without declaring it) and check `kaggle --version`")
        raise ReproError(f"`kaggle {' '.join(args)}` failed with status {proc.returncode} ({detail}); check the "
                         f"credentials ({CREDENTIALS_HINT}), the ids, and `kaggle --version`")
    return proc


def kernel_ref(target: str | Path) -> str:
    """'owner/slug' from a kernel folder made by `repro kaggle prepare`, or the string itself."""
    path = Path(target)
    if (path / KERNEL_METADATA_FILE).is_file():
        return read_metadata(path / KERNEL_METADATA_FILE)["id"]
    if re.fullmatch(r"[^/\s]+/[^/\s]+", str(target)):
        return str(target)
    raise ReproError(f"'{target}' is neither a kernel folder (with {KERNEL_METADATA_FILE}) nor 'owner/slug'")


def parse_status(text: str) -> str:
    """The status word ('complete', 'running', 'error', 'queued', 'cancelacknowledged', ...) in client output."""
    m = re.search(r'has status "([^"]+)"', text)
    if not m:
        raise ReproError(f"could not read a kernel status from the client's output: {text.strip()[-500:]!r}")
    return m.group(1).rsplit(".", 1)[-1].lower()


def kernel_status(target: str | Path) -> str:
    """The status of a kernel's latest version, as reported by `kaggle kernels status`."""
    proc = run_kaggle(["kernels", "status", kernel_ref(target)], capture=True)
    return parse_status(proc.stdout)


def push(folder: str | Path, *, check_previous: bool = True) -> str:
    """Validate a kernel folder and `kaggle kernels push` it; returns its id.

    For session k > 1 the previous session's kernel (the last kernel source) must have completed first, or
    its output would be missing or stale when this session starts.
    """
    folder = Path(folder)
    meta = read_metadata(folder / KERNEL_METADATA_FILE) if folder.is_dir() else None
    if meta is None:
        raise ReproError(f"{folder} is not a kernel folder; pass one made by `repro kaggle prepare` "
                         "(e.g. kaggle/build/<run>/s1)")
    problems = validate_kernel_metadata(meta, folder)
    if problems:
        raise ReproError(f"{folder / KERNEL_METADATA_FILE} is not valid:\n  - " + "\n  - ".join(problems))
    session = re.search(r"-s(\d+)$", meta["id"])
    if check_previous and session and int(session.group(1)) > 1 and meta.get("kernel_sources"):
        previous = meta["kernel_sources"][-1]
        state = kernel_status(previous)
        if state != "complete":
            raise ReproError(f"the previous session {previous} has status '{state}', not 'complete'; push this "
                             "session once it has finished (or pass --no-check-previous)")
    run_kaggle(["kernels", "push", "-p", str(folder)])
    return meta["id"]


def download_output(target: str | Path, dest: str | Path | None = None) -> Path:
    """`kaggle kernels output` of a kernel into `dest` (default runs/kaggle/<slug>)."""
    ref = kernel_ref(target)
    dest = Path(dest) if dest else Path("runs") / "kaggle" / ref.split("/")[1]
    dest.mkdir(parents=True, exist_ok=True)
    run_kaggle(["kernels", "output", ref, "-p", str(dest)])
    return dest
