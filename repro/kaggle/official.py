"""Thin wrappers over the official `kaggle` command line, always run in a subprocess, whose output is read.

`import kaggle` authenticates at import time (and older clients exit the process without credentials), so
this package never imports it: it runs the `kaggle` executable, or `python -m kaggle` when only the module
is installed. Credentials stay the official client's business (`kaggle auth login`, KAGGLE_API_TOKEN or
~/.kaggle/access_token for the 2.x client; ~/.kaggle/kaggle.json or KAGGLE_USERNAME / KAGGLE_KEY for older ones).

The client's exit status does not tell whether a request worked: a push the server refuses is printed as
"Kernel push error: ..." with status 0 (kaggle-cli issues #345, #545), and a failure prints pages of help.
So the output of every call is read here: a refused push fails with the server's message, an HTTP error
with one line of what the client said and advice for its status (404: the id does not exist; 400: what was
rejected; only 401/403 mention credentials), a network failure as such.

Chains: pushing session k > 1 pins the previous session's kernel and the code dataset to the versions the
chain used (`owner/slug/version`) and runs it on the previous session's docker image, so that neither the code
nor the environment changes in the middle of a run. Each push is recorded in the kernel folder (pushed.json).
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ReproError
from .metadata import KERNEL_METADATA_FILE, read_metadata, validate_kernel_metadata

CREDENTIALS_HINT = ("sign in with `kaggle auth login`, or put the API token from kaggle.com/settings/api in "
                    "KAGGLE_API_TOKEN or ~/.kaggle/access_token (clients before 2.0: ~/.kaggle/kaggle.json)")
# Written by `repro kaggle prepare` next to kernel-metadata.json: the run, the session and what it chains to.
SESSION_FILE = "session.json"
# Written by `repro kaggle push`: the version Kaggle gave the push and the versions it pinned.
PUSHED_FILE = "pushed.json"

# The status words of `kaggle kernels status` (kagglesdk KernelWorkerStatus, lower case): one spelling
# everywhere.
STATUSES = ("queued", "running", "complete", "error", "cancel_requested", "cancel_acknowledged", "new_script")

# What the 2.2.5 client prints under an HTTP error (format_http_error), by status.
_HINT_STATUS = (("You don't have access to this resource", 403), ("The resource was not found", 404),
                ("You have been rate limited", 429), ("This is a problem on Kaggle's side", 500))
_NETWORK = re.compile(r"ConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|Failed to establish a new "
                      r"connection|NameResolutionError|Temporary failure in name resolution|ProxyError|SSLError|"
                      r"Connection refused|Connection reset|RemoteDisconnected")
_HTTP_STATUS = re.compile(r"\b([45]\d\d) (?:Client|Server) Error")
_AUTH_HELP = "Authentication required to call the Kaggle API"
# status/output of a kernel these credentials cannot see (wrong slug, or private to another account).
_KERNEL_DENIED = "Permission 'kernels.get' was denied"


def kaggle_command() -> list[str]:
    """The argv prefix that runs the official client."""
    exe = shutil.which("kaggle")
    if exe:
        return [exe]
    if importlib.util.find_spec("kaggle") is not None:
        return [sys.executable, "-m", "kaggle"]
    python = "" if sys.version_info >= (3, 11) else (
        f" The 2.x client needs Python 3.11 or newer, and this is Python {sys.version.split()[0]}: run the "
        "`repro kaggle` commands from a Python 3.11+ environment.")
    raise ReproError("the official Kaggle client is not installed; pip install 'repro-lkt[kaggle]' (or "
                     f"pip install kaggle six), then {CREDENTIALS_HINT}.{python}")


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The line of the client's output that says what went wrong."""
    err = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
    out = [line.strip() for line in (proc.stdout or "").splitlines() if line.strip()]
    if err and ("Traceback (most recent call last)" in proc.stderr or err[0].startswith("usage:")):
        line = err[-1]  # the exception (or argparse's complaint) comes last
    elif err:
        line = err[0]
    elif out:
        line = out[0] if _AUTH_HELP in proc.stdout else out[-1]
    else:
        line = f"no output, exit status {proc.returncode}"
    return line if len(line) <= 300 else line[:297] + "..."


def client_error(args: list[str], proc: subprocess.CompletedProcess, *, ref: str | None = None,
                 kind: str = "kernel") -> ReproError:
    """One ReproError for a failed client call: what the client said, in one line, and what to do about it."""
    text = f"{proc.stdout or ''}\n{proc.stderr or ''}"
    line = _one_line(proc)
    command = f"`kaggle {' '.join(args)}`"
    if "ModuleNotFoundError" in text or "ImportError" in text:
        return ReproError(f"the official Kaggle client is installed but cannot start ({line}); install what it "
                          "lacks (pip install 'repro-lkt[kaggle]' adds six, which kaggle 2.x imports without "
                          "declaring it) and check `kaggle --version`")
    if (proc.stderr or "").lstrip().startswith("usage:"):
        return ReproError(f"the installed Kaggle client does not know {command} ({line}); this package drives the "
                          "2.x client: pip install -U 'repro-lkt[kaggle]' and check `kaggle --version`")
    status = None
    m = _HTTP_STATUS.search(text)
    if m:
        status = int(m.group(1))
    elif _AUTH_HELP in text:
        status = 401
    elif _KERNEL_DENIED in text:
        status = 404  # the client's own reading: most likely a wrong slug
    else:
        status = next((code for hint, code in _HINT_STATUS if hint in text), None)
    if status is None and _NETWORK.search(text):
        return ReproError(f"could not reach Kaggle (network) for {command}: {line}; check this machine's internet "
                          "connection and proxy settings, then run the command again")
    what = ref or "the id"
    if status == 404:
        if kind == "kernel":
            return ReproError(f"no such kernel {what} ({line}); check the owner/slug (the kernel's URL is "
                              "kaggle.com/code/OWNER/SLUG; a private kernel of another account looks the same)")
        if kind == "dataset":
            return ReproError(f"no such dataset {what} ({line}); check the owner/slug, or upload it first "
                              "(`kaggle datasets create -p DIR`)")
        return ReproError(f"Kaggle answered 404 to {command} ({line}): something it names does not exist; check "
                          "the ids in kernel-metadata.json (id, dataset_sources, kernel_sources)")
    if status == 400:
        return ReproError(f"Kaggle rejected {command} as a bad request: {line}")
    if status == 401:
        return ReproError(f"Kaggle did not accept the credentials for {command} (401); {CREDENTIALS_HINT}")
    if status == 403:
        return ReproError(f"Kaggle refused access to {what} (403: {line}); it belongs to another account or is "
                          f"private to it, or the credentials are another user's: check the owner in the id, "
                          f"then {CREDENTIALS_HINT}")
    if status == 429:
        return ReproError(f"Kaggle is rate-limiting these requests (429: {line}); wait a few minutes and run the "
                          "command again")
    if status is not None and status >= 500:
        return ReproError(f"Kaggle failed to answer {command} ({status}: {line}); a problem on Kaggle's side, try "
                          "again later")
    # An error whose status the client does not print (a JSON error body): its message says what was wrong.
    if kind == "push":
        return ReproError(f"Kaggle refused the push of {what}: {line}")
    return ReproError(f"{command} was refused (exit status {proc.returncode}): {line}")


def run_kaggle(args: list[str], *, ref: str | None = None, kind: str = "kernel") -> subprocess.CompletedProcess:
    """Run `kaggle ARGS` with its output captured; a non-zero status raises `client_error`'s ReproError.

    `ref` and `kind` ('kernel', 'dataset' or 'push') name what the call is about, for the advice."""
    proc = subprocess.run([*kaggle_command(), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise client_error(args, proc, ref=ref, kind=kind)
    return proc


def kernel_ref(target: str | Path, *, versioned: bool = False) -> str:
    """'owner/slug' (or 'owner/slug/version' when `versioned`) from a kernel folder made by `repro kaggle
    prepare`, or the string itself."""
    path = Path(target)
    if (path / KERNEL_METADATA_FILE).is_file():
        return read_metadata(path / KERNEL_METADATA_FILE)["id"]
    pattern = r"[^/\s]+/[^/\s]+(/\d+)?" if versioned else r"[^/\s]+/[^/\s]+"
    if re.fullmatch(pattern, str(target)):
        return str(target)
    form = "'owner/slug' or 'owner/slug/version'" if versioned else "'owner/slug'"
    raise ReproError(f"'{target}' is neither a kernel folder (with {KERNEL_METADATA_FILE}) nor {form}")


def parse_status(text: str) -> str:
    """The status word (one of STATUSES: 'complete', 'running', 'error', ...) in the client's output."""
    m = re.search(r'has status "([^"]+)"', text)
    if not m:
        raise ReproError(f"could not read a kernel status from the client's output: {text.strip()[-500:]!r}")
    word = m.group(1).rsplit(".", 1)[-1]
    # Some clients print the enum's camel case (cancelAcknowledged); one spelling here.
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", word).lower()


def parse_failure_message(text: str) -> str | None:
    """The client's 'Failure message: "..."' line, None when there is none (or it is empty)."""
    m = re.search(r'^Failure message: "(.*)"\s*$', text, re.M)
    return m.group(1) or None if m else None


def kernel_state(target: str | Path) -> dict:
    """{'status': ..., 'failure_message': ... or None} of a kernel's latest version (`kaggle kernels status`)."""
    ref = kernel_ref(target, versioned=True)
    proc = run_kaggle(["kernels", "status", ref], ref=ref)
    return {"status": parse_status(proc.stdout), "failure_message": parse_failure_message(proc.stdout)}


def kernel_status(target: str | Path) -> str:
    """The status of a kernel's latest version, as reported by `kaggle kernels status`."""
    return kernel_state(target)["status"]


def format_kernel_state(ref: str, state: dict) -> str:
    """'owner/slug: status' plus the failure message the client passed on, if any."""
    text = f"{ref}: {state['status']}"
    if state.get("failure_message"):
        text += f"\n  failure message: {state['failure_message']}"
    return text


def dataset_version(ref: str) -> int:
    """The current version number of a dataset (`kaggle datasets status --format json(...)`)."""
    proc = run_kaggle(["datasets", "status", ref, "--format", "json(current_version_number)"], ref=ref,
                      kind="dataset")
    try:
        number = json.loads(proc.stdout.strip().splitlines()[-1])["current_version_number"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ReproError(f"could not read the version of dataset {ref} from the client's output "
                         f"{proc.stdout.strip()[-300:]!r}; check `kaggle --version` (2.x needed)") from None
    if not isinstance(number, int) or number < 1:
        raise ReproError(f"dataset {ref} has no version yet (found {number!r}); upload it first "
                         "(`kaggle datasets create -p DIR`)")
    return number


def kernel_docker_image(ref: str) -> str | None:
    """The docker image a kernel's latest version ran on, as `kaggle kernels pull -m` reports it (or None)."""
    with tempfile.TemporaryDirectory(prefix="repro-pull-") as tmp:
        run_kaggle(["kernels", "pull", ref, "-p", tmp, "-m"], ref=ref)
        try:
            meta = json.loads((Path(tmp) / KERNEL_METADATA_FILE).read_text())
        except (OSError, ValueError):
            return None
    return meta.get("docker_image") or None


def _unversioned(ref: str) -> str:
    parts = ref.split("/")
    return "/".join(parts[:2])


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pins(folder: Path, meta: dict, session_info: dict, previous_version: int | None) -> dict:
    """The versions session `folder` is pinned to: the previous session's kernel, the code dataset, the image."""
    pins: dict = {}
    code = session_info.get("code_dataset")
    previous = session_info.get("previous")
    record = _read_json(folder.parent / f"s{session_info['session'] - 1}" / PUSHED_FILE) if previous else None
    if previous:
        version = previous_version or (record or {}).get("version")
        if not version:
            raise ReproError(f"session {session_info['session']} continues {previous}, but no version of it is "
                             f"known here ({folder.parent / ('s' + str(session_info['session'] - 1))}/"
                             f"{PUSHED_FILE} is missing: that session was not pushed from this folder); pass "
                             "--previous-version N, the version number on the previous kernel's page, so that this "
                             "session attaches exactly the output it continues")
        pins["kernel"] = f"{previous}/{int(version)}"
    if code:
        # Session 1 takes the code dataset's current version; later sessions keep the one the chain started with.
        kept = (record or {}).get("code_dataset")
        pins["code_dataset"] = kept if kept and _unversioned(kept) == code else f"{code}/{dataset_version(code)}"
    if previous:
        image = (record or {}).get("docker_image") or kernel_docker_image(pins["kernel"])
        if image:
            pins["docker_image"] = image
    return pins


def _apply_pins(meta: dict, pins: dict) -> dict:
    meta = dict(meta)
    if "kernel" in pins:
        base = _unversioned(pins["kernel"])
        meta["kernel_sources"] = [pins["kernel"] if _unversioned(k) == base else k
                                  for k in meta.get("kernel_sources", [])]
    if "code_dataset" in pins:
        base = _unversioned(pins["code_dataset"])
        meta["dataset_sources"] = [pins["code_dataset"] if _unversioned(d) == base else d
                                   for d in meta.get("dataset_sources", [])]
    if "docker_image" in pins:
        meta["docker_image"] = pins["docker_image"]
        meta.setdefault("docker_image_pinning_type", "original")
    return meta


_PUSH_ERROR = re.compile(r"^Kernel push error: (.*)$", re.M)
_PUSHED = re.compile(r"Kernel version (\d+)?\s*successfully pushed\.\s+Please check progress at (\S+)")
_DROPPED = re.compile(r"^The following are not valid (tags|dataset sources|competition sources|kernel sources) "
                      r"and could not be added to the kernel: (.*)$", re.M)


def parse_push_output(text: str, ref: str) -> dict:
    """{'version', 'url', 'dropped_tags'} from `kaggle kernels push` output; a refusal raises ReproError."""
    refused = _PUSH_ERROR.search(text)
    if refused:
        raise ReproError(f"Kaggle refused the push of {ref}: {refused.group(1).strip()}")
    dropped = {kind: items for kind, items in _DROPPED.findall(text)}
    pushed = _PUSHED.search(text)
    if not pushed:
        line = next((s.strip() for s in reversed(text.splitlines()) if s.strip()), "no output")
        raise ReproError(f"the push of {ref} did not report a new version ({line}); check the kernel's page on "
                         "kaggle.com before pushing again")
    sources = {k: v for k, v in dropped.items() if k != "tags"}
    if sources:
        # The version exists and runs, but without those inputs: it would start from scratch or fail late.
        raise ReproError(f"Kaggle took version {pushed.group(1)} of {ref} ({pushed.group(2)}) but dropped "
                         + "; ".join(f"{k} it does not know: {v}" for k, v in sources.items())
                         + ". That session runs without them: fix the ids in the plan, prepare and push again")
    return {"version": int(pushed.group(1)) if pushed.group(1) else None, "url": pushed.group(2),
            "dropped_tags": dropped.get("tags")}


def push(folder: str | Path, *, check_previous: bool = True, previous_version: int | None = None) -> dict:
    """Validate a kernel folder, pin a chain's versions and `kaggle kernels push` it; returns its pushed.json.

    For session k > 1 the previous session's kernel (the last kernel source) must have completed first, or
    its output would be missing or stale when this session starts; it is attached at the version pushed from
    its folder (or `previous_version`), with the code dataset version and docker image the chain started with.
    """
    folder = Path(folder)
    meta = read_metadata(folder / KERNEL_METADATA_FILE) if folder.is_dir() else None
    if meta is None:
        raise ReproError(f"{folder} is not a kernel folder; pass one made by `repro kaggle prepare` "
                         "(e.g. kaggle/build/<run>/s1)")
    problems = validate_kernel_metadata(meta, folder)
    if problems:
        raise ReproError(f"{folder / KERNEL_METADATA_FILE} is not valid:\n  - " + "\n  - ".join(problems))
    info = _read_json(folder / SESSION_FILE) or {}
    session = info.get("session")
    if session is None:
        m = re.search(r"-s(\d+)$", meta["id"])
        session = int(m.group(1)) if m else 1
    info.setdefault("session", session)
    if "previous" not in info:
        info["previous"] = _unversioned(meta["kernel_sources"][-1]) if session > 1 and meta.get("kernel_sources") \
            else None
    if check_previous and info["previous"]:
        state = kernel_state(info["previous"])
        if state["status"] != "complete":
            failure = f" ({state['failure_message']})" if state.get("failure_message") else ""
            raise ReproError(f"the previous session {info['previous']} has status '{state['status']}'{failure}, not "
                             "'complete'; push this session once it has finished (or pass --no-check-previous)")
    pins = _pins(folder, meta, info, previous_version)
    pinned = _apply_pins(meta, pins)
    if pinned != meta:
        problems = validate_kernel_metadata(pinned, folder)
        if problems:
            raise ReproError(f"pinning {folder / KERNEL_METADATA_FILE} made it invalid:\n  - "
                             + "\n  - ".join(problems))
        (folder / KERNEL_METADATA_FILE).write_text(json.dumps(pinned, indent=2) + "\n")
    proc = run_kaggle(["kernels", "push", "-p", str(folder)], ref=meta["id"], kind="push")
    result = parse_push_output(proc.stdout + "\n" + proc.stderr, meta["id"])
    record = {"id": meta["id"], "version": result["version"], "url": result["url"],
              "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pinned": pins,
              "code_dataset": pins.get("code_dataset"),
              "kernel_sources": pinned.get("kernel_sources", []), "dataset_sources": pinned.get("dataset_sources", []),
              "docker_image": pins.get("docker_image"),
              "docker_image_pinning_type": pinned.get("docker_image_pinning_type"),
              "dropped_tags": result["dropped_tags"]}
    (folder / PUSHED_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


# Files of a run worth having on this machine by default: the record of the run and the executed notebook.
DEFAULT_OUTPUT_PATTERN = r"(^|/)(summary\.json|metrics\.jsonl|config\.yaml)$|\.ipynb$"
CHECKPOINT_PATTERN = r"(^|/)checkpoints/ckpt-\d+\.pt(\.sha256)?$|(^|/)weights-[a-z]+\.pt$"


def output_pattern(file_pattern: str | None = None, *, checkpoints: bool = False, everything: bool = False) \
        -> str | None:
    """The regular expression of the output files to download (None: all of them)."""
    if everything:
        return None
    pattern = file_pattern or DEFAULT_OUTPUT_PATTERN
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ReproError(f"--file-pattern '{pattern}' is not a regular expression ({exc})") from None
    return f"{pattern}|{CHECKPOINT_PATTERN}" if checkpoints else pattern


def _new_folders(dest: Path) -> Path | None:
    """The outermost folder of `dest` (itself included) that does not exist yet."""
    top = None
    for path in [dest, *dest.parents]:
        if path.exists():
            break
        top = path
    return top


def download_output(target: str | Path, dest: str | Path | None = None, *, file_pattern: str | None = None,
                    checkpoints: bool = False, everything: bool = False) -> Path:
    """`kaggle kernels output` of a kernel into `dest` (default runs/kaggle/<slug>): by default only the run
    records (summary.json, metrics.jsonl, config.yaml) and the executed notebook, plus the session log;
    `checkpoints` adds checkpoints and weight files, `everything` takes every file. Folders it created are
    removed again when the download fails."""
    ref = kernel_ref(target, versioned=True)
    dest = Path(dest) if dest else Path("runs") / "kaggle" / ref.split("/")[1]
    created = _new_folders(dest)
    args = ["kernels", "output", ref, "-p", str(dest), "-o"]
    pattern = output_pattern(file_pattern, checkpoints=checkpoints, everything=everything)
    if pattern is not None:
        args += ["--file-pattern", pattern]
    try:
        run_kaggle(args, ref=ref)
    except ReproError:
        if created is not None and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created)
        raise
    return dest
