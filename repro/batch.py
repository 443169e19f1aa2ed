"""`repro batch`: execute a plan's notebooks with papermill, one run folder each, resumable.

Each run of the plan (see `repro.plan`) is its notebook executed with the run's parameters plus
`out_dir=<out>/<name>` (unless the plan gives one). The run folder receives the executed notebook
(executed.ipynb), papermill's log with every cell's output (papermill.log) and batch.json (status, parameters,
duration). A failing run does not stop the others; it is reported at the end. Running the plan again skips
complete runs (summary.json says complete) and re-executes the others, which resume from their newest
checkpoint because the training engine continues a run folder it is given again.

Ctrl-C or SIGTERM (see `BatchStop`) stops the batch cleanly: the running notebook is interrupted (a training run
saves and stops after its current step), the remaining runs are not started, and the summary table and batch.json
are written as usual; the exit status is 130 (143 for SIGTERM). A second signal kills the notebook at once.

A cohort run (a plan run with `cohort:`, see `repro.plan`) is complete when every member's folder is, and is
checked member by member before it starts. `--pack N` executes N runs at a time, each notebook in its own child
process on its own GPU (`repro.packing`).

Also here: `train_subprocess`, which runs the training engine under torchrun from a notebook (DDP over several
GPUs, e.g. Kaggle's T4 x2) without touching CUDA in the notebook's own process.
"""
from __future__ import annotations

import argparse
import ast
import codecs
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import ReproError
from .paths import ensure_writable_dir
from .plan import PLAN_FORMAT, PlanRun, check_cohort, cohort_state, load_plan

PACKAGE_DIR = Path(__file__).resolve().parent
# notebooks/ of a source checkout (editable install) and the copies shipped inside the package (wheel).
NOTEBOOK_DIRS = (PACKAGE_DIR.parent / "notebooks", PACKAGE_DIR / "notebooks")


def find_notebook(name: str | Path, base_dir: str | Path | None = None) -> Path:
    """Resolve a notebook: a path (absolute, or relative to `base_dir` or the working directory), or a name
    in the repository's notebooks/ folder or in the copies shipped with the package."""
    name = Path(name)
    if name.suffix == ".py":  # the jupytext twin of a notebook: papermill needs the .ipynb
        name = name.with_suffix(".ipynb")
    elif name.suffix != ".ipynb":
        name = name.with_name(name.name + ".ipynb")
    candidates = [name] if name.is_absolute() else \
        ([Path(base_dir) / name] if base_dir else []) + [name] + [d / name for d in NOTEBOOK_DIRS]
    for path in candidates:
        if path.is_file():
            return path
    raise ReproError(f"notebook '{name}' not found; looked in {', '.join(str(c.parent) for c in candidates)}. "
                     "Give a path to an .ipynb file or the name of one in notebooks/ (train.ipynb, "
                     "evaluate.ipynb, report.ipynb)")


def check_kernel(kernel: str) -> None:
    """Fail early, with the fix, when the Jupyter kernel papermill should use is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if kernel not in specs:
        raise ReproError(f"Jupyter kernel '{kernel}' is not installed (found: {', '.join(sorted(specs)) or 'none'}); "
                         f"install it with `{sys.executable} -m ipykernel install --sys-prefix --name {kernel}` "
                         "or pass --kernel NAME")


def _pythonpath_with_checkout(current: str | None) -> str | None:
    """PYTHONPATH for a child process, led by this source checkout when `repro` runs from one.

    An installed package (site-packages) is left alone: the child finds it the usual way, and putting
    site-packages on PYTHONPATH could mix it into a kernel of another Python.
    """
    root = PACKAGE_DIR.parent
    if not (root / "setup.cfg").is_file():
        return current
    return os.pathsep.join([str(root)] + ([current] if current else []))


@contextlib.contextmanager
def _kernel_imports_this_package() -> Iterator[None]:
    """Let the notebook kernel import this very `repro` (a source checkout need not be installed)."""
    old = os.environ.get("PYTHONPATH")
    new = _pythonpath_with_checkout(old)
    if new is not None:
        os.environ["PYTHONPATH"] = new
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@contextlib.contextmanager
def _papermill_log(path: Path, echo: bool) -> Iterator[None]:
    """Send papermill's messages and the notebook's output to `path` (and to stderr when `echo`)."""
    logger = logging.getLogger("papermill")
    handlers = [logging.FileHandler(path, mode="a", encoding="utf-8")]
    if echo:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s" if h is handlers[0]
                                         else "%(message)s"))
        logger.addHandler(h)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the console shows papermill's progress bar, not every log line
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_state(run_dir: Path, parameters: dict[str, Any]) -> str | None:
    """'complete' when a run need not execute again: its summary says complete, or (for a notebook that
    trains nothing) its last batch execution succeeded with the same parameters; None otherwise. A cohort run
    is complete when every member's summary says so."""
    if parameters.get("cohort") is not None:
        return cohort_state(run_dir, parameters["cohort"])
    summary = _read_json(run_dir / "summary.json")
    if summary is not None:
        return "complete" if summary.get("status") == "complete" else None
    record = _read_json(run_dir / "batch.json")
    if record and record.get("status") == "complete" and record.get("parameters") == _jsonable(parameters):
        return "complete"
    return None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def declared_parameters(source: str | Path) -> dict:
    """{name: papermill's description} of the parameters cell of notebook `source` (read offline)."""
    import papermill

    logger = logging.getLogger("papermill")
    level = logger.level
    logger.setLevel(logging.WARNING)  # inspect_notebook announces "Input Notebook" at INFO
    try:
        return papermill.inspect_notebook(str(source))
    except ValueError as exc:  # e.g. no kernelspec in the notebook's metadata
        raise ReproError(f"papermill cannot read the parameters of {source} ({exc}); open and save it in "
                         "Jupyter with a Python kernel, or give the notebook's metadata a kernelspec") from None
    finally:
        logger.setLevel(level)


def check_parameters(source: Path, parameters: dict[str, Any]) -> dict:
    """The parameters `source` declares (papermill, offline); refuses any in `parameters` it does not declare.

    papermill would inject an undeclared parameter anyway and the notebook would silently ignore it.
    """
    declared = declared_parameters(source)
    if not declared:
        raise ReproError(f"{source} has no cell tagged 'parameters', so its parameters cannot be set; "
                         "tag the defaults cell with 'parameters'")
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ReproError(f"{source} declares no parameter {', '.join(unknown)} (it declares "
                         f"{', '.join(declared)}); fix the plan (config keys go in `overrides`), or the "
                         "notebook's parameters cell")
    return declared


# Training-notebook parameters whose default (None) does not show their type: what `repro train` takes.
TRAIN_PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "max_steps": (int,), "checkpoint_every": (int,), "seed": (int,), "device": (str,), "config_file": (str,),
    "time_budget": (str, int, float), "cohort": (str, dict)}


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _fits(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never to a notebook parameter
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    if isinstance(value, tuple) and list in types:  # YAML never makes tuples; a Python caller might
        return True
    return isinstance(value, types)


def check_parameter_types(parameters: dict[str, Any], declared: dict, notebook: str | Path, *,
                          run: str | None = None, also_accepted: dict[str, tuple] | None = None) -> None:
    """Refuse a parameter whose value has another type than the notebook's default (a `max_steps: "ten"` would
    fail inside the notebook, minutes later, with a traceback). None is always accepted; `also_accepted` maps a
    name to extra values resolved where the notebook runs (e.g. nproc "auto" on Kaggle)."""
    training = {"preset", "overrides"} <= set(declared)
    where = f"run '{run}': " if run else ""
    for name, value in parameters.items():
        if value is None or name not in declared or value in (also_accepted or {}).get(name, ()):
            continue
        try:
            default = ast.literal_eval(declared[name].get("default", ""))
        except (ValueError, SyntaxError, TypeError):
            continue  # an expression papermill cannot evaluate either: nothing to compare with
        if default is not None:
            types = (type(default),) if not isinstance(default, tuple) else (tuple, list)
        elif training and name in TRAIN_PARAMETER_TYPES:
            types = TRAIN_PARAMETER_TYPES[name]
        else:
            continue
        expected = _type_names(types) + (" or None" if default is None else "")
        if not _fits(value, types):
            raise ReproError(f"{where}parameter {name} of {Path(notebook).name} expects {expected} (the notebook's "
                             f"default is {default!r}), found {value!r} ({type(value).__name__}); fix the value in "
                             "the plan")
        if training and name == "time_budget":
            from .train.budget import parse_duration
            try:
                parse_duration(value, flag=f"parameter time_budget of {Path(notebook).name}")
            except ReproError as exc:
                raise ReproError(f"{where}{exc}; fix the value in the plan") from None


def bake_parameter_defaults(source: str, values: dict[str, Any], header: str = "") -> str:
    """The parameters-cell `source` with `values` as the new defaults, each in place of its assignment.

    Baking values into the parameters cell itself, rather than adding papermill's injected-parameters cell,
    keeps them when the notebook is executed again with `papermill -p NAME VALUE`: papermill replaces an
    injected cell as a whole, but only adds assignments after a parameters cell. Comments are kept.
    """
    from papermill.translators import PythonTranslator

    lines = source.splitlines()
    todo = dict(values)
    for node in reversed(ast.parse(source).body):  # bottom-up: earlier line numbers stay valid
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name = node.target.id
        else:
            continue
        if name not in todo:
            continue
        first, last = node.lineno - 1, node.end_lineno - 1
        # ast's column offsets count UTF-8 bytes, not characters.
        prefix = lines[first].encode()[:node.value.col_offset].decode() if node.value.lineno == node.lineno \
            else f"{name} = "
        tail = lines[last].encode()[node.end_col_offset:].decode()  # the comment after the value, if any
        lines[first:last + 1] = [prefix + PythonTranslator.translate(todo.pop(name)) + tail]
    # A name assigned in a way not rewritten above (e.g. inside an `if`) is set after the defaults.
    lines += [f"{name} = {PythonTranslator.translate(value)}" for name, value in todo.items()]
    return "\n".join(([header] if header else []) + lines) + "\n"


def run_parameters(run: PlanRun, base_dir: str | Path | None = None) -> dict[str, Any]:
    """The run's parameters, without the plan's `defaults` that its notebook does not declare (a `device`
    default meant for training notebooks must not break a report notebook of the same plan)."""
    if not run.from_defaults:
        return dict(run.parameters)
    try:
        declared = declared_parameters(find_notebook(run.notebook, base_dir))
    except ReproError:
        return dict(run.parameters)  # a missing notebook is reported where the run is executed
    return {k: v for k, v in run.parameters.items() if k in declared or k not in run.from_defaults}


def check_run_config(parameters: dict[str, Any], declared: dict, plan_dir: Path,
                     deferred: Callable[[Any], bool] = lambda value: False) -> None:
    """Resolve a training run's config (preset or local config file, then overrides) as the notebook will, so a
    misspelt preset, an unknown key or an out-of-range value fails before the run starts. Values for which
    `deferred` is true (resolved only where the run executes, e.g. Kaggle input references) are not checked."""
    if not {"preset", "overrides"} <= set(declared):
        return  # not a training notebook
    if parameters.get("cohort") is not None:
        check_cohort(parameters, deferred)  # every member, refusing one that differs in a shared key
        return
    from .config import load_config

    overrides = parameters.get("overrides") or []
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise ReproError(f"overrides should be a list of 'key=value' strings, found {overrides!r}; fix the plan")
    config_file = parameters.get("config_file")
    if config_file is not None:
        path = Path(config_file) if Path(config_file).is_absolute() else plan_dir / config_file
        if deferred(config_file) or not path.is_file():
            return  # read where the run executes; checked there
        config_file, preset = path, None
    else:
        preset = parameters.get("preset", declared["preset"].get("default", "").strip("'\""))
    load_config(preset, config_file, [o for o in overrides if not deferred(o)])


def _local_kernel_transport(stop: "BatchStop | None" = None) -> dict[str, Any]:
    """papermill's kernel manager for a batch: it tells `stop` which kernel runs, and on POSIX it talks to the
    local kernel over unix sockets, so no TCP port opens and ipykernel's warning about unencrypted TCP stays out
    of the user's terminal. The sockets live in a private temporary folder (jupyter's default would be
    `kernel-ipc-N` files in the working directory), removed when the kernel shuts down."""
    import tempfile

    from jupyter_client.manager import AsyncKernelManager

    posix = os.name == "posix"

    class BatchKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            self._socket_dir = None
            if posix:
                kwargs.setdefault("transport", "ipc")
                if "ip" not in kwargs:
                    self._socket_dir = tempfile.mkdtemp(prefix="repro-kernel-")
                    kwargs["ip"] = os.path.join(self._socket_dir, "ipc")
            super().__init__(**kwargs)
            if stop is not None:
                stop.kernel = self

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart and self._socket_dir:
                shutil.rmtree(self._socket_dir, ignore_errors=True)

        cleanup_resources = _async_cleanup_resources

    return {"kernel_manager_class": BatchKernelManager}


# --------------------------------------------------------------------------------------- stop signals

# How long the first signal waits for the running notebook to stop by itself (a training step, the DDP ranks
# agreeing at the end of their log window, and the final save), before its kernel is killed.
STOP_WAIT_S = 300.0

_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class NotebookStopped(Exception):
    """The batch was stopped: the notebook's next cell is not executed."""


class BatchStop:
    """The batch's answer to SIGINT and SIGTERM: the first stops the running notebook cleanly, a second kills it.

    The first signal is forwarded to the running notebook's kernel process as SIGINT, which is what a notebook
    interrupt is: inside a training run the engine's handler (`repro.train.budget.StopSignal`) makes it save and
    stop after its current step; elsewhere the cell raises KeyboardInterrupt. Only the kernel process gets it, not
    its process group: DataLoader workers and a torchrun child are stopped by the kernel, and torchrun's workers
    must not count a signal of their own as a second, aborting one. No further cell of the notebook is executed,
    no further run is started, and after `wait` seconds the kernel is killed. A second signal kills it at once.
    Installed as a context manager around the whole batch, so the summary is written whatever the moment.
    """

    def __init__(self, wait: float = STOP_WAIT_S, stream=None):
        self.wait = wait
        self.signum: int | None = None  # the first signal received
        self.killed: str | None = None  # why the kernel was killed (a second signal, or the wait ran out)
        self.kernel = None  # the running notebook's kernel manager (set by its class, see _local_kernel_transport)
        self.run_name: str | None = None  # the run whose notebook is executing
        self._in_cell = False
        self._timer: threading.Timer | None = None
        self._previous: dict = {}
        self._stream = stream

    def __enter__(self) -> "BatchStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._cancel_timer()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        """How the message names the signal: Ctrl-C or SIGTERM."""
        return _SIGNAL_NAMES.get(self.signum, f"signal {self.signum}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + int(self.signum or 0)

    def _say(self, text: str) -> None:
        text = "\n" + text + "\n"
        try:
            stream = self._stream or sys.stderr
            stream.write(text)
            stream.flush()
        except RuntimeError:  # the signal interrupted a write to the same stream (a progress bar): bypass it
            with contextlib.suppress(OSError):
                os.write(2, text.encode())
        except (OSError, ValueError, AttributeError):
            pass

    def _handle(self, signum, frame) -> None:
        # Never raises: papermill and the kernel client stay in control and the batch ends through its own code.
        if self.signum is not None:
            name = _SIGNAL_NAMES.get(signum, f"signal {signum}")
            if self.run_name is not None and not self.killed:
                self._say(f"{name} again: killing the notebook of {self.run_name} now; the files it has written "
                          "(checkpoints included) are kept")
                self._kill(f"killed by a second {name}")
            return
        self.signum = signum
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send SIGTERM again"
        if self.run_name is None:
            self._say(f"{self.name}: the batch stops before its next run")
            return
        self._say(f"{self.name}: stopping the running notebook of {self.run_name} (a training run saves and stops "
                  f"after its current step; waiting up to {self.wait:.0f} s); the remaining runs are not started; "
                  f"{again} to abort it at once")
        if self._in_cell:
            self._interrupt()
        self._timer = threading.Timer(self.wait, self._out_of_time)
        self._timer.daemon = True
        self._timer.start()

    def _kernel_process(self):
        provisioner = getattr(self.kernel, "provisioner", None)
        process = getattr(provisioner, "process", None)
        return provisioner, process if process is not None and process.poll() is None else None

    def _interrupt(self) -> None:
        _, process = self._kernel_process()
        if process is not None and os.name == "posix":
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGINT)

    def _kill(self, reason: str) -> None:
        provisioner, process = self._kernel_process()
        if process is None:
            return  # not started yet (its first cell is refused) or already gone
        pgid = getattr(provisioner, "pgid", None)
        try:
            if pgid and hasattr(os, "killpg"):
                os.killpg(pgid, signal.SIGKILL)  # the kernel and what it started (DataLoader workers, torchrun)
            else:
                process.kill()
        except OSError:
            return
        self.killed = reason

    def _out_of_time(self) -> None:
        if self.run_name is not None and not self.killed:
            self._say(f"the notebook of {self.run_name} did not stop within {self.wait:.0f} s: killing it; the "
                      "files it has written (checkpoints included) are kept")
            self._kill(f"killed: not stopped {self.wait:.0f} s after {self.name}")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # nbclient hooks, around each code cell.
    def before_cell(self, cell=None, cell_index: int = 0, **_) -> None:
        """Refuse to execute another cell once the batch is stopping."""
        if self.signum is not None:
            raise NotebookStopped(f"stopped by {self.name} before cell {cell_index + 1} of executed.ipynb")
        self._in_cell = True

    def after_cell(self, **_) -> None:
        """The cell's reply has arrived: the kernel is idle again."""
        self._in_cell = False

    @contextlib.contextmanager
    def running(self, name: str) -> Iterator[None]:
        """Mark `name` as the run whose notebook executes, for the messages and the kill."""
        self.run_name, self.killed, self._in_cell = name, None, False
        try:
            yield
        finally:
            self._cancel_timer()
            self.run_name, self.kernel, self._in_cell = None, None, False


def _execute(run: PlanRun, notebook: Path, run_dir: Path, parameters: dict[str, Any], *, kernel: str,
             progress: bool, log_output: bool, stop: BatchStop | None = None) -> tuple[str, str | None]:
    """Execute one notebook into its run folder; returns (status, error message)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    run_dir.mkdir(parents=True, exist_ok=True)
    executed = run_dir / "executed.ipynb"
    error = None
    hooks = {"on_cell_execute": stop.before_cell, "on_cell_executed": stop.after_cell} if stop else {}
    log = logging.getLogger("papermill")
    with _papermill_log(run_dir / "papermill.log", echo=log_output), _kernel_imports_this_package(), \
            (stop.running(run.name) if stop else contextlib.nullcontext()):
        log.info("repro batch: run %s, notebook %s, parameters %s", run.name, notebook,
                 json.dumps(_jsonable(parameters)))
        try:
            pm.execute_notebook(str(notebook), str(executed), parameters=parameters, kernel_name=kernel,
                                progress_bar=progress, log_output=True, cwd=os.getcwd(),
                                **_local_kernel_transport(stop), **hooks)
        except PapermillExecutionError as exc:
            error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
        except NotebookStopped as exc:
            error = str(exc)
        except Exception as exc:  # a dead kernel or unreadable notebook fails this run only
            error = f"{type(exc).__name__}: {exc}"
        stopping = stop is not None and stop.signum is not None
        if stopping and stop.killed:
            error = f"{stop.killed} ({error})" if error else stop.killed
        if error:
            log.error("repro batch: run %s %s: %s", run.name, "stopped" if stopping else "failed", error)
    summary = _read_json(run_dir / "summary.json")
    if error:
        # After a stop signal an unfinished notebook was stopped, not broken: running the batch again resumes it.
        return ("stopped" if stopping else "failed"), error
    if parameters.get("cohort") is not None:  # members stopped by their time budget leave the cohort stopped
        return ("complete" if cohort_state(run_dir, parameters["cohort"]) else "stopped"), None
    return (summary.get("status", "complete") if summary else "complete"), None


def _copy_executed(record: dict[str, Any], notebooks_out: str | Path | None) -> None:
    if notebooks_out and record["executed"].is_file():
        Path(notebooks_out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record["executed"], Path(notebooks_out) / f"{record['name']}.ipynb")


def _stopping(stop: BatchStop | None, record: dict[str, Any], done: dict[str, str]) -> bool:
    """True (and the record marked "not run") when the batch has been stopped before this run started."""
    if stop is None or stop.signum is None:
        return False
    record.update(status="not run", error=f"not started: the batch was stopped by {stop.name}")
    done[record["name"]] = "not run"
    return True


def run_notebooks(runs: Iterable[PlanRun], out: str | Path = "runs", *, base_dir: str | Path | None = None,
                  notebooks_out: str | Path | None = None, kernel: str = "python3", progress: bool = True,
                  log_output: bool = False, requires: dict[str, str] | None = None,
                  stop: BatchStop | None = None) -> list[dict[str, Any]]:
    """Execute each run's notebook (skipping complete runs); returns one record per run.

    A record holds name, notebook, run_dir, status (complete, stopped, failed, skipped or "not run"), error,
    seconds, executed (the executed notebook) and log. `requires` maps a run's name to an earlier run that must be
    complete first (e.g. a distilled student to its teacher); otherwise the run is not executed and fails. With
    `stop` (an entered `BatchStop`), a stop signal ends the running notebook cleanly and the runs after it are
    "not run"; without it, Ctrl-C raises KeyboardInterrupt as usual.
    """
    runs = list(runs)
    check_kernel(kernel)
    if any(not run.parameters.get("out_dir") for run in runs):
        ensure_writable_dir(out, "the batch output folder (--out)")
    if notebooks_out:
        ensure_writable_dir(notebooks_out, "the folder for executed notebooks (--notebooks-out)")
    records = []
    done = {}
    for i, run in enumerate(runs, start=1):
        parameters = run_parameters(run, base_dir)
        run_dir = Path(parameters.get("out_dir") or Path(out) / run.name)
        parameters["out_dir"] = str(run_dir)
        record: dict[str, Any] = {"name": run.name, "notebook": run.notebook, "run_dir": run_dir,
                                  "status": None, "error": None, "seconds": 0.0,
                                  "executed": run_dir / "executed.ipynb", "log": run_dir / "papermill.log"}
        records.append(record)
        prefix = f"[{i}/{len(runs)}] {run.name}"
        if _stopping(stop, record, done):
            continue
        needed = (requires or {}).get(run.name)
        if needed and done.get(needed) not in ("complete", "skipped"):
            record.update(status="failed", error=f"not run: {needed} did not complete")
            done[run.name] = "failed"
            print(f"{prefix}: {record['error']}", flush=True)
            continue
        if run_state(run_dir, parameters) == "complete":
            record["status"] = done[run.name] = "skipped"
            old = _read_json(run_dir / "batch.json")
            if old and old.get("parameters") not in (None, _jsonable(parameters)):
                print(f"{prefix}: complete, but its parameters changed since; delete {run_dir} to run it again",
                      flush=True)
            else:
                print(f"{prefix}: complete, skipped ({run_dir})", flush=True)
            _copy_executed(record, notebooks_out)
            continue
        try:
            notebook = find_notebook(run.notebook, base_dir)
            declared = check_parameters(notebook, parameters)
            check_run_config(parameters, declared, base_dir)
            check_parameter_types(parameters, declared, notebook)  # the lines printed name the run
        except ReproError as exc:
            record.update(status="failed", error=str(exc))
            done[run.name] = "failed"
            print(f"{prefix}: failed: {exc}", flush=True)
            continue
        if _stopping(stop, record, done):  # a signal during the checks above
            continue
        print(f"{prefix}: executing {notebook.name} -> {run_dir} (live output: {record['log']})", flush=True)
        start = time.monotonic()
        status, error = _execute(run, notebook, run_dir, parameters, kernel=kernel, progress=progress,
                                 log_output=log_output, stop=stop)
        record.update(status=status, error=error, seconds=round(time.monotonic() - start, 1))
        done[run.name] = status
        (run_dir / "batch.json").write_text(json.dumps(
            {"name": run.name, "notebook": str(notebook), "parameters": _jsonable(parameters), "status": status,
             "error": error, "seconds": record["seconds"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
            indent=2) + "\n")
        _copy_executed(record, notebooks_out)
        detail = f": {error}" if error else ""
        print(f"{prefix}: {status} in {record['seconds']:.0f} s{detail}", flush=True)
    return records


def run_plan(plan_path: str | Path, out: str | Path = "runs", *, only: Iterable[str] | None = None,
             notebooks_out: str | Path | None = None, kernel: str = "python3", progress: bool = True,
             log_output: bool = False, stop: BatchStop | None = None) -> list[dict[str, Any]]:
    """Execute a plan's runs (or only the named ones) into `out/<name>`; returns one record per run (see
    `run_notebooks`, also for `stop`)."""
    plan = load_plan(plan_path)
    runs = plan.runs
    if only:
        names = [r.name for r in runs]
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ReproError(f"--only names {', '.join(unknown)}, which the plan {plan.path} does not have; "
                             f"its runs are: {', '.join(names)}")
        runs = [r for r in runs if r.name in set(only)]
    return run_notebooks(runs, out, base_dir=plan.path.parent, notebooks_out=notebooks_out, kernel=kernel,
                         progress=progress, log_output=log_output, stop=stop)


def status_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table of each run's status (for the end of a batch)."""
    rows = [("run", "status", "time", "folder / error")]
    for r in records:
        rows.append((r["name"], r["status"] or "-", f"{r['seconds']:.0f} s" if r["seconds"] else "-",
                     r["error"] if r["error"] else str(r["run_dir"])))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows)


# ------------------------------------------------------------------------------------- multi-GPU launcher

def train_command(*, nproc: int, preset: str | None = None, config_file: str | None = None,
                  overrides: Iterable[str] = (), out_dir: str | Path, max_steps: int | None = None,
                  time_budget: str | float | None = None, checkpoint_every: int | None = None,
                  seed: int | None = None, device: str | None = None,
                  resume_from: Iterable[str | Path] = ()) -> list[str]:
    """The `torchrun --nproc_per_node=N -m repro train ...` command line for these arguments."""
    if nproc < 1:
        raise ReproError(f"nproc should be the number of processes (GPUs) to train with, at least 1; found {nproc}")
    if bool(preset) == bool(config_file):
        raise ReproError("give exactly one of preset and config_file")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "repro", "train", "--out", str(out_dir)]
    cmd += ["--preset", preset] if preset else ["--config", str(config_file)]
    for text in overrides:
        cmd += ["--set", str(text)]
    for flag, value in (("--max-steps", max_steps), ("--time-budget", time_budget),
                        ("--checkpoint-every", checkpoint_every), ("--seed", seed), ("--device", device)):
        if value is not None:
            cmd += [flag, str(value)]
    for folder in resume_from:
        cmd += ["--resume-from", str(folder)]
    return cmd


def train_subprocess(*, nproc: int, out_dir: str | Path, **kwargs: Any) -> dict:
    """Train under torchrun in a child process, streaming its output; returns the run's summary.

    The calling process never initialises CUDA, which DDP launched from a notebook requires. Keyword
    arguments are those of `train_command`.
    """
    cmd = train_command(nproc=nproc, out_dir=out_dir, **kwargs)
    print(" ".join(cmd[1:]), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pythonpath = _pythonpath_with_checkout(env.get("PYTHONPATH"))
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        # Raw chunks rather than lines: progress bars redraw with '\r' and would otherwise appear only at the end.
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.write(decoder.decode(chunk))
            sys.stdout.flush()
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()  # torchrun forwards it: the workers checkpoint and stop
        proc.wait()
        raise
    if code != 0:
        raise ReproError(f"distributed training exited with status {code}; its output is above. The run folder "
                         f"{out_dir} keeps the last checkpoint: run the same cell again to resume")
    summary = _read_json(Path(out_dir) / "summary.json")
    if summary is None:
        raise ReproError(f"training finished but {Path(out_dir) / 'summary.json'} is missing or unreadable")
    return summary


# ------------------------------------------------------------------------------------------------- CLI

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `batch` subcommand."""
    p = subparsers.add_parser(
        "batch", help="execute a plan's notebooks with papermill (resumable; goes on past failures)",
        description=textwrap.fill(
            "Execute every run of PLAN (a YAML list or grid of notebook + parameters) with papermill into "
            "OUT/<name>/ (executed.ipynb, papermill.log, and the run's own files). Complete runs are skipped, "
            "stopped ones resume; a failing run does not stop the others. Exit status 1 when a run failed. "
            "Ctrl-C (or SIGTERM) stops the running notebook cleanly (a training run saves after its current "
            "step), starts no further run, writes the summary and exits 130 (143); a second one kills the "
            "notebook at once.", 79),
        epilog=PLAN_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", help="plan YAML file (format below; examples in kaggle/plans/)")
    p.add_argument("--out", default="runs", help="parent folder of the run folders (default: runs)")
    p.add_argument("--notebooks-out", metavar="DIR", help="also copy each executed notebook to DIR/<name>.ipynb")
    p.add_argument("--only", nargs="+", metavar="NAME", help="execute only these runs of the plan")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    p.add_argument("--log-output", action="store_true",
                   help="stream every cell's output to the terminal (always written to papermill.log)")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    p.add_argument("--stop-wait", type=float, default=STOP_WAIT_S, metavar="SECONDS",
                   help="after Ctrl-C or SIGTERM, how long the running notebook may take to stop cleanly before "
                        f"it is killed (default: {STOP_WAIT_S:.0f})")
    p.add_argument("--pack", type=int, default=1, metavar="N",
                   help="execute N runs side by side, each notebook in its own process with CUDA_VISIBLE_DEVICES "
                        "set to its own GPU (default 1: one after another); its console output goes to "
                        "OUT/<name>/pack.log")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the plan, print the status table; 1 when any run failed, 130/143 when stopped by SIGINT/SIGTERM."""
    with BatchStop(wait=args.stop_wait) as stop:
        if args.pack != 1:
            from .packing import run_plan_packed
            records, signum = run_plan_packed(args.plan, args.out, pack=args.pack, only=args.only,
                                              notebooks_out=args.notebooks_out, kernel=args.kernel,
                                              log_output=args.log_output, stop_wait=args.stop_wait, stop=stop)
            stop.signum = stop.signum or signum
        else:
            records = run_plan(args.plan, args.out, only=args.only, notebooks_out=args.notebooks_out,
                               kernel=args.kernel, progress=not args.no_progress, log_output=args.log_output,
                               stop=stop)
        print()
        print(status_table(records))
        failed = [r["name"] for r in records if r["status"] == "failed"]
        if failed:
            print(f"\n{len(failed)} of {len(records)} runs failed: {', '.join(failed)}; their papermill.log and "
                  "executed.ipynb show where. Fix and run the same command again: complete runs are skipped.",
                  file=sys.stderr)
        if stop.signum is not None:
            print(f"\nstopped by {stop.name}. Run the same command again to continue: complete runs are skipped, "
                  "stopped ones resume from their last checkpoint.", file=sys.stderr)
            return stop.exit_code
        return 1 if failed else 0
