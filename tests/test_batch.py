"""repro.batch: plans executed through papermill, past failures, skipping complete runs and resuming stopped ones.

The notebooks here are small stand-ins for train.ipynb (they write a summary.json as the engine does), so the
batch logic is tested without training; tests/test_notebooks.py executes the real notebooks.
"""
from __future__ import annotations

import argparse
import json
import sys
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
