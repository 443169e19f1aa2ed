"""repro.batch: plans executed through papermill, past failures, skipping complete runs and resuming stopped ones,
and clean stops on Ctrl-C and SIGTERM.

The notebooks here are small stand-ins for train.ipynb (they write a summary.json as the engine does), so the
batch logic is tested without training; tests/test_notebooks.py executes the real notebooks. Only the stop-signal
test of `repro batch` itself trains (tiny runs), since the signal must reach the engine inside the kernel.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from repro import batch
from repro.errors import ReproError

# Stands in for the engine: "stop" leaves the run stopped the first time and completes it when executed again
# in the same folder (as a resumed run does); "fail" raises in the notebook.
FAKE_TRAIN = '''
import json, pathlib
out = pathlib.Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
count = out / "executions"
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
print(f"execution {n} of {out.name}")
if mode == "fail":
    raise ValueError("this run fails on purpose")
status = "stopped" if mode == "stop" and n == 1 else "complete"
(out / "summary.json").write_text(json.dumps({"status": status}))
'''


def _fake_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('mode = "complete"\nout_dir = "runs/x"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(FAKE_TRAIN)]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def plan(tmp_path):
    _fake_notebook(tmp_path / "fake.ipynb")
    (tmp_path / "plan.yaml").write_text(
        "runs:\n"
        "  - {name: ok, notebook: fake.ipynb}\n"
        "  - {name: resumes, notebook: fake.ipynb, parameters: {mode: stop}}\n"
        "  - {name: broken, notebook: fake.ipynb, parameters: {mode: fail}}\n")
    return tmp_path / "plan.yaml"


def _executions(run_dir: Path) -> int:
    return int((run_dir / "executions").read_text())


def _kernel_socket_dirs() -> set:
    import tempfile
    return set(Path(tempfile.gettempdir()).glob("repro-kernel-*"))


def test_batch_goes_past_failures_skips_complete_and_resumes(plan, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sockets_before = _kernel_socket_dirs()
    out = tmp_path / "runs"
    records = batch.run_plan(plan, out, notebooks_out=tmp_path / "executed", progress=False)
    assert [(r["name"], r["status"]) for r in records] == [("ok", "complete"), ("resumes", "stopped"),
                                                           ("broken", "failed")]
    assert "ValueError: this run fails on purpose" in records[2]["error"]
    for name in ("ok", "resumes", "broken"):
        run_dir = out / name
        assert (run_dir / "executed.ipynb").is_file() and (run_dir / "papermill.log").is_file()
        # The notebook's output goes to the run's log.
        assert f"execution 1 of {name}" in (run_dir / "papermill.log").read_text()
        assert json.loads((run_dir / "batch.json").read_text())["parameters"]["out_dir"] == str(run_dir)
    assert sorted(p.name for p in (tmp_path / "executed").iterdir()) == ["broken.ipynb", "ok.ipynb", "resumes.ipynb"]
    executed = nbformat.read(out / "ok" / "executed.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)

    # Again, through the command line: complete runs are skipped, the stopped one resumes, failures are reported.
    parser = argparse.ArgumentParser()
    batch.register(parser.add_subparsers())
    args = parser.parse_args(["batch", str(plan), "--out", str(out), "--no-progress"])
    capsys.readouterr()
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert _executions(out / "ok") == 1
    assert _executions(out / "resumes") == 2
    assert _executions(out / "broken") == 2
    assert json.loads((out / "resumes" / "summary.json").read_text())["status"] == "complete"
    table = captured.out.splitlines()
    assert any(line.split()[:2] == ["ok", "skipped"] for line in table)
    assert any(line.split()[:2] == ["resumes", "complete"] for line in table)
    assert any(line.split()[:2] == ["broken", "failed"] for line in table)
    assert "1 of 3 runs failed: broken" in captured.err
    # The kernels' unix sockets lived in private temporary folders, all removed; none in the working directory.
    assert not list(tmp_path.glob("kernel-ipc*"))
    assert _kernel_socket_dirs() <= sockets_before


def test_only_selects_runs_and_rejects_unknown_names(plan, tmp_path):
    records = batch.run_plan(plan, tmp_path / "runs", only=["ok"], progress=False)
    assert [r["name"] for r in records] == ["ok"]
    assert not (tmp_path / "runs" / "broken").exists()
    with pytest.raises(ReproError, match="does not have"):
        batch.run_plan(plan, tmp_path / "runs", only=["nope"])


def test_out_dir_in_parameters_wins(tmp_path):
    _fake_notebook(tmp_path / "fake.ipynb")
    target = tmp_path / "elsewhere"
    (tmp_path / "plan.yaml").write_text(f"runs:\n  - {{name: a, notebook: fake.ipynb, "
                                        f"parameters: {{out_dir: '{target}'}}}}\n")
    records = batch.run_plan(tmp_path / "plan.yaml", tmp_path / "runs", progress=False)
    assert records[0]["status"] == "complete" and records[0]["run_dir"] == target
    assert (target / "summary.json").is_file() and not (tmp_path / "runs").exists()


def test_non_training_notebook_is_skipped_once_done_with_same_parameters(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    params = {"checkpoint": "x", "out_dir": str(run_dir)}
    (run_dir / "batch.json").write_text(json.dumps({"status": "complete", "parameters": params}))
    assert batch.run_state(run_dir, params) == "complete"
    assert batch.run_state(run_dir, {**params, "checkpoint": "y"}) is None
    (run_dir / "summary.json").write_text(json.dumps({"status": "stopped"}))
    assert batch.run_state(run_dir, params) is None


def test_find_notebook(tmp_path):
    repo_train = Path(batch.__file__).resolve().parent.parent / "notebooks" / "train.ipynb"
    assert batch.find_notebook("train.ipynb") == repo_train
    assert batch.find_notebook("train") == repo_train
    assert batch.find_notebook("train.py") == repo_train
    mine = _fake_notebook(tmp_path / "mine.ipynb")
    assert batch.find_notebook("mine.ipynb", base_dir=tmp_path) == tmp_path / "mine.ipynb"
    assert batch.find_notebook(mine) == mine
    with pytest.raises(ReproError, match="not found"):
        batch.find_notebook("missing.ipynb")


def test_missing_kernel_is_reported_with_the_fix():
    with pytest.raises(ReproError, match="ipykernel install"):
        batch.check_kernel("no-such-kernel-xyz")


def test_train_command_for_torchrun():
    cmd = batch.train_command(nproc=2, preset="cifar100-student", overrides=["train.epochs=3", "seed=1"],
                              out_dir="runs/a", time_budget="11h30m", device="cuda", resume_from=["/kaggle/input/x"])
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "repro", "train", "--out", "runs/a", "--preset", "cifar100-student",
                       "--set", "train.epochs=3", "--set", "seed=1", "--time-budget", "11h30m", "--device", "cuda",
                       "--resume-from", "/kaggle/input/x"]
    assert "--config" in batch.train_command(nproc=2, config_file="c.yaml", out_dir="o")
    with pytest.raises(ReproError, match="exactly one"):
        batch.train_command(nproc=2, preset="a", config_file="b.yaml", out_dir="o")
    with pytest.raises(ReproError, match="at least 1"):
        batch.train_command(nproc=0, preset="a", out_dir="o")


def test_train_subprocess_reports_failure(tmp_path, monkeypatch):
    # A command that fails at once stands in for torchrun: the error names the exit status and the folder.
    failing = [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]
    monkeypatch.setattr(batch, "train_command", lambda **kw: failing)
    with pytest.raises(ReproError, match="status 3"):
        batch.train_subprocess(nproc=2, out_dir=tmp_path / "run", preset="x")


def test_run_waits_for_the_run_it_requires(tmp_path):
    from repro.plan import PlanRun

    nb = _fake_notebook(tmp_path / "fake.ipynb")
    runs = [PlanRun("teacher", str(nb), {"mode": "fail"}), PlanRun("student", str(nb), {})]
    records = batch.run_notebooks(runs, tmp_path / "runs", progress=False, requires={"student": "teacher"})
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert records[1]["error"] == "not run: teacher did not complete"
    assert not (tmp_path / "runs" / "student").exists()


def test_undeclared_parameter_fails_that_run_only(tmp_path):
    """A plan parameter the notebook does not declare would be injected and ignored: refuse the run."""
    from repro.batch import run_notebooks
    from repro.plan import PlanRun

    records = run_notebooks([PlanRun("typo", "train.ipynb", {"preset": "quickstart-student", "epochs": 3})],
                            tmp_path, progress=False)
    assert records[0]["status"] == "failed"
    assert "declares no parameter epochs" in records[0]["error"] and "overrides" in records[0]["error"]


@pytest.mark.skipif(sys.platform == "win32", reason="unix sockets are POSIX only")
def test_kernel_sockets_live_in_a_private_temporary_folder(tmp_path, monkeypatch):
    """Jupyter's ipc transport would put kernel-ipc-N sockets in the working directory (left behind when a run is
    killed); here they go to a private temporary folder, removed at kernel shutdown."""
    import asyncio
    import tempfile

    monkeypatch.chdir(tmp_path)
    km = batch._local_kernel_transport()["kernel_manager_class"]()
    assert km.transport == "ipc"
    folder = Path(km.ip).parent
    assert folder.is_dir() and folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith("repro-kernel-")
    asyncio.run(km.cleanup_resources())
    assert not folder.exists() and not list(tmp_path.iterdir())


def test_training_runs_with_a_bad_config_fail_before_executing(tmp_path):
    """A misspelt preset or key, or overrides that are not strings, fail that run at once with the reason."""
    (tmp_path / "plan.yaml").write_text(
        "runs:\n"
        "  - {name: typo, notebook: train.ipynb, parameters: {preset: quickstart-teachr}}\n"
        "  - {name: key, notebook: train.ipynb, parameters: {overrides: ['train.epoch=3']}}\n"
        "  - {name: types, notebook: train.ipynb, parameters: {overrides: [1]}}\n")
    records = batch.run_plan(tmp_path / "plan.yaml", tmp_path / "runs", progress=False)
    assert [r["status"] for r in records] == ["failed"] * 3
    assert "unknown preset 'quickstart-teachr'" in records[0]["error"]
    assert "unknown config key 'train.epoch'" in records[1]["error"]
    assert "overrides should be a list of 'key=value' strings" in records[2]["error"]
    assert not any((tmp_path / "runs" / r["name"] / "executed.ipynb").exists() for r in records)


def test_plan_defaults_apply_where_the_notebook_declares_them(tmp_path):
    """`defaults: {device: cuda}` reaches training notebooks but not a notebook without `device`; a run's own
    undeclared parameter is still refused."""
    from repro.plan import load_plan

    _fake_notebook(tmp_path / "fake.ipynb")
    (tmp_path / "plan.yaml").write_text(
        "defaults: {mode: stop, device: cuda}\n"
        "runs:\n"
        "  - {name: a, notebook: fake.ipynb}\n"
        "  - {name: b, notebook: fake.ipynb, parameters: {device: cpu}}\n")
    a, b = load_plan(tmp_path / "plan.yaml").runs
    assert batch.run_parameters(a, tmp_path) == {"mode": "stop"}
    assert batch.run_parameters(b, tmp_path) == {"mode": "stop", "device": "cpu"}
    with pytest.raises(ReproError, match="declares no parameter device"):
        batch.check_parameters(tmp_path / "fake.ipynb", batch.run_parameters(b, tmp_path))


# ------------------------------------------------------------------------------------------- stop signals
ROOT = Path(batch.__file__).resolve().parent.parent


def _wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert predicate(), "timed out"


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_batch_stops_cleanly_on_a_signal(tmp_path, sig, code, name):
    """The signal reaches the training engine inside the notebook's kernel: the run saves and stops, the next run is
    not started, the table and batch.json are written, and the exit status is the signal's, without a traceback."""
    (tmp_path / "plan.yaml").write_text(
        "defaults: {preset: quickstart-teacher, checkpoint_every: 1, device: cpu,\n"
        "           overrides: ['data.train_limit=128', 'train.epochs=50', 'sparse.sparsity=0']}\n"
        "runs:\n  - {name: first, notebook: train.ipynb}\n  - {name: second, notebook: train.ipynb}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "repro", "batch", "plan.yaml", "--out", "runs", "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "runs" / "first"
    try:  # kernel start-up and the first step take several seconds
        _wait_for(lambda: any((first / "checkpoints").glob("ckpt-*.pt")) or proc.poll() is not None)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    assert f"{name}: stopping the running notebook of first" in stderr  # said at once, on stderr
    summary = json.loads((first / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stop_reason"] == "signal"
    assert (first / "checkpoints" / f"ckpt-{summary['steps_done']:08d}.pt").is_file()
    record = json.loads((first / "batch.json").read_text())
    assert record["status"] == "stopped" and f"stopped by {name}" in record["error"]
    # The kernel got the interrupt (SIGINT) in the engine's handler: a clean stop, not a KeyboardInterrupt.
    assert "Ctrl-C: the run will stop after this step and save" in (first / "papermill.log").read_text()
    table = stdout.splitlines()
    assert any(line.split()[:2] == ["first", "stopped"] for line in table)
    assert any(line.split()[:3] == ["second", "not", "run"] for line in table)
    assert not (tmp_path / "runs" / "second").exists()


def _cell_notebook(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('out_dir = "runs/x"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source),
                nbformat.v4.new_code_cell("(pathlib.Path(out_dir) / 'next-cell').write_text('')")]
    nbformat.write(nb, path)
    return path


def _signal_when(path: Path, sig: int, times: int = 1) -> threading.Thread:
    """Send `sig` to this process (the batch) once `path` exists, `times` times."""
    def send():
        _wait_for(path.exists, timeout=60)
        for _ in range(times):
            time.sleep(0.3)
            os.kill(os.getpid(), sig)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


STARTED = "import pathlib, signal, time\npathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)\n"


def test_a_notebook_interrupted_outside_training_stops_and_runs_no_further_cell(tmp_path):
    """Outside the engine the forwarded SIGINT is a KeyboardInterrupt in the running cell; a cell that handles it
    (as the engine does) ends, and the notebook's next cell is not executed."""
    from repro.plan import PlanRun

    nb = _cell_notebook(tmp_path / "nb.ipynb", STARTED + "(pathlib.Path(out_dir) / 'started').write_text('')\n"
                        "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('interrupted')\n")
    out, messages = tmp_path / "runs", io.StringIO()
    sender = _signal_when(out / "a" / "started", signal.SIGINT)
    with batch.BatchStop(stream=messages) as stop:
        records = batch.run_notebooks([PlanRun("a", str(nb), {}), PlanRun("b", str(nb), {})], out, progress=False,
                                      stop=stop)
    sender.join()
    assert stop.exit_code == 130 and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [r["status"] for r in records] == ["stopped", "not run"]
    assert records[0]["error"] == "stopped by Ctrl-C before cell 4 of executed.ipynb" and records[0]["seconds"] < 30
    assert not (out / "a" / "next-cell").exists() and not (out / "b").exists()
    assert "interrupted" in (out / "a" / "papermill.log").read_text()
    assert json.loads((out / "a" / "batch.json").read_text())["status"] == "stopped"
    assert "Ctrl-C: stopping the running notebook of a" in messages.getvalue()


@pytest.mark.parametrize("times, wait, reason", [(2, 60.0, "killed by a second SIGTERM"),
                                                 (1, 1.0, "killed: not stopped 1 s after SIGTERM")])
def test_a_notebook_that_does_not_stop_is_killed(tmp_path, times, wait, reason):
    """A second signal, or the end of the wait, kills a kernel that ignores the interrupt; the run is stopped."""
    from repro.plan import PlanRun

    nb = _cell_notebook(tmp_path / "nb.ipynb", STARTED + "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                        "(pathlib.Path(out_dir) / 'started').write_text('')\ntime.sleep(60)\n")
    out = tmp_path / "runs"
    sender = _signal_when(out / "a" / "started", signal.SIGTERM, times)
    with batch.BatchStop(wait=wait, stream=io.StringIO()) as stop:
        records = batch.run_notebooks([PlanRun("a", str(nb), {})], out, progress=False, stop=stop)
    sender.join()
    assert stop.exit_code == 143
    assert records[0]["status"] == "stopped" and records[0]["error"].startswith(reason), records[0]["error"]
    assert records[0]["seconds"] < 30 and (out / "a" / "executed.ipynb").is_file()
