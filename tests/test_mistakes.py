"""User mistakes answered in one line (what was expected, what was found, what to do), and docs that match.

Covers repro.paths (output folders), the plan-parameter and eval-override checks, CIFAR pickles with byte-string
keys, the resume check before building, baked Kaggle notebooks executed with extra papermill parameters,
`repro kaggle plan-sessions` on subset trials, and the command-line help. Where the message is the point, the
command runs as a user runs it (a subprocess): exit status 2, one line on stderr, no traceback.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from repro.cli import build_parser, main
from repro.errors import ReproError

REPO = Path(__file__).resolve().parent.parent
TRAIN_NOTEBOOK = REPO / "notebooks" / "train.ipynb"


def run_cli(*args: str, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", "repro", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def one_line_error(stderr: str) -> str:
    """The single `error: ...` line a refused command prints (and nothing that looks like a traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def read_only_prefix(folder: Path) -> list[str] | None:
    """A command prefix under which `folder` is read-only: a private read-only bind mount (root) or none needed
    after chmod (other users); None when neither is possible here."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        return None
    script = f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' && exec \"$@\""
    prefix = ["unshare", "-rm", "sh", "-c", script, "sh"]
    probe = subprocess.run([*prefix, "touch", str(folder / "probe")], capture_output=True, text=True)
    return prefix if probe.returncode != 0 and "Read-only" in probe.stderr else None


# --------------------------------------------------------------------------------------- output folders

def test_output_folder_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    from repro.paths import ensure_writable_dir

    (tmp_path / "taken").write_text("x")
    with pytest.raises(ReproError, match=r"the report folder \(--out\) .*taken is a file, expected a folder"):
        ensure_writable_dir(tmp_path / "taken", "the report folder (--out)")
    with pytest.raises(ReproError, match=r"cannot create .*taken/sub/deeper: .*taken is a file, not a folder"):
        ensure_writable_dir(tmp_path / "taken" / "sub" / "deeper", "the report folder (--out)")
    made = ensure_writable_dir(tmp_path / "new" / "nested", "the report folder (--out)")
    assert made.is_dir() and not list(made.iterdir())  # the write probe leaves nothing behind


def test_report_into_a_read_only_folder_says_so_in_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    prefix = read_only_prefix(ro)
    if prefix is None:
        pytest.skip("no way to make a read-only folder here (root without unshare)")
    try:
        proc = run_cli("report", "--runs", str(tmp_path), "--out", str(ro / "results"), prefix=prefix)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 2
    line = one_line_error(proc.stderr)
    assert f"cannot create the report folder (--out) {ro / 'results'}" in line
    assert "read-only" in line or "not writable" in line
    assert "pass a folder you can write to" in line


def test_report_batch_and_prepare_refuse_a_file_as_output(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert main(["report", "--runs", str(tmp_path), "--out", str(tmp_path / "taken")]) == 2
    assert "the report folder (--out)" in one_line_error(capsys.readouterr().err)

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('out_dir = "x"\ntime_budget = None\n')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "tiny.ipynb"))
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"runs": [{"name": "a", "notebook": "tiny.ipynb"}], "kaggle": {"owner": "alice"}}))
    assert main(["batch", str(plan), "--out", str(tmp_path / "taken")]) == 2
    assert "the batch output folder (--out)" in one_line_error(capsys.readouterr().err)
    assert main(["kaggle", "prepare", str(plan), "--out", str(tmp_path / "taken" / "build")]) == 2
    assert "cannot create the kernel folder (--out)" in one_line_error(capsys.readouterr().err)


def test_a_run_on_a_read_only_kaggle_input_is_continued_with_resume_from(tmp_path, monkeypatch):
    from repro.paths import ensure_writable_dir, read_only_hint

    monkeypatch.setenv("REPRO_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    run = tmp_path / "kaggle" / "input" / "repro-slak-t-s1" / "slak-t"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    hint = read_only_hint(run)
    assert hint and f"--resume-from {run} --out /kaggle/working/slak-t" in hint
    with pytest.raises(ReproError, match="the run folder \\(--out\\) .* --resume-from .* --out /kaggle/working"):
        ensure_writable_dir(run, "the run folder (--out)")
    assert read_only_hint(tmp_path) is None  # a writable folder outside /kaggle/input needs no advice


# ------------------------------------------------------------------------------------------ plan-sessions

def _trial(folder: Path, *, train_limit: int | None, epochs: int, name: str = "seed-slak-tiny-cifar100") -> Path:
    """A run folder as a short trial leaves it: 8 steps of batch 64 at 100 images/s on one GPU."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "name": name, "data": {"name": "cifar100", "val_fraction": 0.1, "train_limit": train_limit},
        "train": {"epochs": epochs, "batch_size": 64, "accum_steps": 1}}))
    steps_per_epoch = (train_limit or 45000) // 64
    (folder / "summary.json").write_text(json.dumps({
        "status": "stopped", "steps_done": 8, "steps_total": steps_per_epoch * epochs, "epochs_total": epochs,
        "wall_time_s": 60.0, "images_per_s": 100.0, "env": {"world_size": 1, "device": "cuda:0", "gpu": "T4"}}))
    return folder


def test_plan_sessions_scales_a_subset_trial_to_the_real_epoch_or_refuses(tmp_path, capsys):
    from repro.kaggle.sessions import plan_sessions_from_run

    smoke = _trial(tmp_path / "smoke", train_limit=512, epochs=1)
    assert main(["kaggle", "plan-sessions", "--run", str(smoke)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "data.train_limit=512" in line and "--epochs" in line and "trains 300" in line

    estimate = plan_sessions_from_run(smoke, epochs=300)
    assert estimate["steps_per_epoch"] == 45000 // 64  # the whole CIFAR-100 training split, not 512 images
    assert estimate["seconds_per_epoch"] == pytest.approx(703 * 64 / 100 * 1.10)
    assert estimate["sessions"] == 4 and "images/s" in estimate["basis"]  # 41 h, not one session

    # A trial that kept the preset's 300 epochs needs no --epochs; a full-data trial is timed as before.
    assert plan_sessions_from_run(_trial(tmp_path / "limited", train_limit=512, epochs=300))["sessions"] == 4
    full = plan_sessions_from_run(_trial(tmp_path / "full", train_limit=None, epochs=300))
    assert full["seconds_per_epoch"] == pytest.approx(60.0 / 8 * 703)


def test_plan_sessions_refuses_a_subset_of_a_dataset_of_unknown_size(tmp_path):
    from repro.kaggle.sessions import plan_sessions_from_run

    trial = _trial(tmp_path / "t", train_limit=512, epochs=300)
    cfg = yaml.safe_load((trial / "config.yaml").read_text())
    cfg["data"]["name"] = "folder"
    (trial / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ReproError, match="full size is not known.*without data.train_limit"):
        plan_sessions_from_run(trial, epochs=300)


# ------------------------------------------------------------------------------------- plan parameters

def test_train_notebook_parameters_match_the_documented_list():
    from repro.batch import declared_parameters
    from repro.plan import PLAN_FORMAT, TRAIN_NOTEBOOK_PARAMETERS

    assert tuple(declared_parameters(TRAIN_NOTEBOOK)) == TRAIN_NOTEBOOK_PARAMETERS
    assert all(name in PLAN_FORMAT.replace("\n", " ") for name in TRAIN_NOTEBOOK_PARAMETERS)


@pytest.mark.parametrize("name,value,expected", [
    ("max_steps", "ten", "parameter max_steps of train.ipynb expects int or None (the notebook's default is "
                         "None), found 'ten' (str)"),
    ("nproc", "two", "parameter nproc of train.ipynb expects int (the notebook's default is 1), found 'two'"),
    ("overrides", "train.epochs=3", "parameter overrides of train.ipynb expects list (the notebook's default is "
                                    "[]), found 'train.epochs=3' (str)"),
    ("seed", True, "parameter seed of train.ipynb expects int or None"),
    ("time_budget", "ten", "parameter time_budget of train.ipynb expects a duration like 11h30m"),
])
def test_a_wrong_typed_plan_parameter_names_run_parameter_type_and_value(name, value, expected):
    from repro.batch import check_parameter_types, declared_parameters

    declared = declared_parameters(TRAIN_NOTEBOOK)
    with pytest.raises(ReproError) as err:
        check_parameter_types({"preset": "quickstart-teacher", name: value}, declared, TRAIN_NOTEBOOK,
                              run="slak-t")
    assert str(err.value).startswith("run 'slak-t': ") and expected in str(err.value)
    assert "fix the value in the plan" in str(err.value)
    check_parameter_types({"max_steps": 10, "time_budget": "11h", "nproc": "auto", "seed": None}, declared,
                          TRAIN_NOTEBOOK, also_accepted={"nproc": ("auto",)})


def test_batch_reports_a_wrong_typed_parameter_under_the_run_name(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"runs": [{"name": "smoke", "notebook": str(TRAIN_NOTEBOOK),
                                              "parameters": {"preset": "quickstart-teacher", "max_steps": "ten"}}]}))
    assert main(["batch", str(plan), "--out", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr().out
    assert "smoke: failed: parameter max_steps of train.ipynb expects int or None" in out
    assert not (tmp_path / "runs" / "smoke").exists()  # refused before anything ran


# ----------------------------------------------------------------------------------------------- CIFAR

def test_cifar_pickled_with_bytes_keys_loads_like_the_release(tmp_path):
    from repro.data.cifar import load_cifar
    from repro.data.synthetic import write_fake_cifar

    folder = write_fake_cifar(tmp_path / "data", num_classes=3, train_per_class=2, test_per_class=1)
    with pytest.warns(UserWarning):
        release = load_cifar("cifar100", str(tmp_path / "data"))
    for name in ("train", "test", "meta"):  # re-saved from Python 3 after reading with encoding="bytes"
        with open(folder / name, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
        assert b"data" in raw or b"fine_label_names" in raw
        with open(folder / name, "wb") as f:
            pickle.dump(raw, f)
    with pytest.warns(UserWarning):
        copy = load_cifar("cifar100", str(tmp_path / "data"))
    assert copy.classes == release.classes == ["class_000", "class_001", "class_002"]
    assert (copy.train.data == release.train.data).all() and copy.test.targets == release.test.targets
    img, label = copy.train[0]
    assert img.size == (32, 32) and label == release.train.targets[0]

    with open(folder / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    del raw[b"fine_labels"]
    with open(folder / "train", "wb") as f:
        pickle.dump(raw, f)
    with pytest.raises(ReproError) as err:
        load_cifar("cifar100", str(tmp_path / "data"))
    message = str(err.value)  # names what is missing and lists what is there, in the same spelling
    assert "has no 'fine_labels' entry (keys: batch_label, coarse_labels, data, filenames)" in message
    assert "b'" not in message


# ------------------------------------------------------------------------------- eval, resume, models

def test_eval_refuses_a_set_key_evaluation_does_not_use():
    proc = run_cli("eval", "--checkpoint", "no-such-run", "--set", "data.root=/data", "--set", "train.epochs=3")
    assert proc.returncode == 2
    line = one_line_error(proc.stderr)
    assert "repro eval does not use train.epochs (--set train.epochs=3)" in line and "data.root" in line


def test_eval_overrides_it_uses_pass_and_typos_get_suggestions():
    from repro.train.evaluation import check_eval_overrides

    check_eval_overrides(["data.root=/data", "data.img_size=224", "model.kwargs.kernel_size=[51,49,47,13,5]"])
    with pytest.raises(ReproError, match="did you mean data.root"):
        check_eval_overrides(["data.rot=/data"])
    with pytest.raises(ReproError, match="does not use sparse.sparsity"):
        check_eval_overrides(["sparse.sparsity=0.4"])


def test_resuming_with_another_preset_is_refused_before_anything_is_built(tmp_path):
    from repro.config import load_config
    from repro.train.resume_check import check_resume_config

    out = tmp_path / "run"
    out.mkdir()
    saved = load_config("quickstart-teacher")
    saved.model.num_classes = 10  # as the engine saves it, filled in from the data
    saved.save(out / "config.yaml")
    check_resume_config(out, load_config("quickstart-teacher"), force=False)  # the same run continues
    check_resume_config(tmp_path / "fresh", load_config("quickstart-student"), force=False)
    other = load_config("quickstart-student")
    with pytest.raises(ReproError) as err:
        check_resume_config(out, other, force=False)
    message = str(err.value)
    assert message.startswith(f"{out} holds a run with a different setup, so resuming would mix two experiments:")
    assert "model.name: 'slak_micro' -> 'l2s_convnext_micro'" in message
    assert message.endswith("Use another --out folder, or --force to resume anyway.")
    check_resume_config(out, other, force=True)


def test_unknown_model_suggestions_do_not_repeat():
    from repro.models import create_model

    with pytest.raises(ReproError) as err:
        create_model("convnext_tinyy")
    text = str(err.value)
    close = ast.literal_eval(text.split("Close matches: ")[1].split(". Known here")[0])
    assert "convnext_tiny" in close and len(close) == len(set(close))


def test_preflight_without_train_arguments_says_what_the_launch_needs():
    from repro.kaggle.preflight import preflight

    facts = {"error": None, "gpu_count": 0, "gpus": [], "in_kaggle": False, "kaggle_run_type": None,
             "device": "cpu", "precision": "fp32", "torch": "2.x"}
    notes = preflight([], facts=facts)["notes"]
    assert any("--preset" in n and "--out" in n and "after --" in n for n in notes)
    assert preflight(facts=facts)["notes"] == []  # a notebook launching training itself needs no such advice
    assert preflight(["--preset", "p", "--out", "o"], facts=facts)["notes"] == []


# ------------------------------------------------------------------------------------ baked notebooks

def test_a_baked_notebook_keeps_its_values_under_extra_papermill_parameters(tmp_path):
    import papermill

    from repro.kaggle.prepare import prepare_plan

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "runs": [{"name": "slak-t", "notebook": str(TRAIN_NOTEBOOK),
                  "parameters": {"preset": "seed-slak-tiny-cifar100", "overrides": ["data.root=/data/cifar"]}}],
        "kaggle": {"owner": "alice"}}))
    folder, = prepare_plan(plan, tmp_path / "build")
    baked = folder / "train.ipynb"
    nb = nbformat.read(str(baked), as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)

    # As `papermill baked.ipynb out.ipynb -p seed 3` prepares it (a kernel would run the cells in this order).
    papermill.execute_notebook(str(baked), str(tmp_path / "out.ipynb"), parameters={"seed": 3},
                               prepare_only=True, kernel_name="python3", progress_bar=False)
    cells = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells
    tags = [c.metadata.get("tags", []) for c in cells]
    scope: dict = {}
    for cell, tag in zip(cells, tags):
        if "parameters" in tag or "injected-parameters" in tag:
            exec(cell.source, scope)
    assert scope["seed"] == 3
    assert scope["preset"] == "seed-slak-tiny-cifar100" and scope["overrides"] == ["data.root=/data/cifar"]
    assert scope["out_dir"] == "/kaggle/working/slak-t" and scope["time_budget"] == "11h15m"
    session = tags.index(["repro-kaggle-session"])
    assert "parameters" in tags[session - 2] and "injected-parameters" in tags[session - 1]


def test_baking_replaces_each_default_in_place_and_keeps_comments():
    from repro.batch import bake_parameter_defaults

    source = 'a = 1  # the first\nb = [\n    "x",\n]  # a list\nc: int = 3\nt = "é"  # ünïcode\nif True:\n    d = None\n'
    baked = bake_parameter_defaults(source, {"a": 2, "b": ["y"], "c": 4, "t": "ß", "d": "z"}, header="# baked")
    assert baked.splitlines()[:4] == ["# baked", "a = 2  # the first", 'b = ["y"]  # a list', "c: int = 4"]
    assert baked.splitlines()[4].endswith("  # ünïcode")
    scope: dict = {}
    exec(baked, scope)
    assert (scope["a"], scope["b"], scope["c"], scope["t"], scope["d"]) == (2, ["y"], 4, "ß", "z")


# ------------------------------------------------------------------------------------------------ docs

def _subparsers(parser: argparse.ArgumentParser, prefix: tuple = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _subparsers(sub, prefix + (name,))


def test_every_subcommand_help_has_a_description():
    missing = [" ".join(name) for name, sub in _subparsers(build_parser()) if not (sub.description or "").strip()]
    assert not missing, f"subcommands without a description: {missing}"


def test_presets_show_their_purpose_and_keys_their_type_default_and_meaning(capsys):
    from repro.config import all_keys, key_table, list_presets

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_presets()
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # every preset has a purpose
    assert any(line.startswith("seed-slak-tiny-cifar100") and "SLaK-T" in line for line in lines)

    table = key_table()
    assert [row["key"] for row in table] == all_keys()
    assert all(row["type"] and row["default"] and row["meaning"] for row in table), \
        [row["key"] for row in table if not row["meaning"]]
    assert main(["presets", "--keys"]) == 0
    out = capsys.readouterr().out
    epochs = next(line for line in out.splitlines() if line.startswith("train.epochs "))
    assert epochs.split()[1:3] == ["int", "300"] and "passes over the training set" in epochs


def test_batch_help_shows_the_plan_format(capsys):
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    out = capsys.readouterr().out
    assert "plan format (YAML)" in out and "runs:" in out and "vary:" in out and "overrides:" in out
    assert "repro/plan.py" not in out


def test_readme_says_where_data_and_weights_come_from():
    readme = (REPO / "README.md").read_text()
    smoke = readme.index("--out runs/smoke")
    assert readme.rfind("cifar-100-python", 0, smoke) != -1 and readme.rfind("/kaggle/input", 0, smoke) != -1
    released = readme.index("repro eval --checkpoint SLaK_tiny_checkpoint.pth")
    assert "VITA-Group/SLaK" in readme[released - 300:released]
    assert "papermill notebooks/train.ipynb" in readme and "Passed unknown parameter" in readme
    ignored = (REPO / ".gitignore").read_text().split()
    assert "/results/" in ignored or "`results/` is not" in readme  # a report into results/ is expected there
