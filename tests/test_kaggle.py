"""repro.kaggle: metadata rules, baked notebooks, offline bundle, chained sessions, pre-flight, CLI wrappers."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import torch
import yaml

from repro.cli import main
from repro.config import load_config
from repro.errors import ReproError
from repro.kaggle import (chain_status, find_in_input, parse_settings, plan_sessions, plan_sessions_from_run,
                          preflight, prepare_plan, require_previous_session, resolve_input_refs, slugify,
                          validate_dataset_metadata, validate_kernel_metadata)
from repro.kaggle import official
from repro.kaggle.bundle import (ASSUMED_ON_KAGGLE, build_bundle, download_wheels, normalize, verify_bundle,
                                 wheel_requirements)
from repro.kaggle.bundle import dataset_metadata
from repro.kaggle.prepare import SESSION_TAG, SETUP_TAG, kernel_metadata
from repro.kaggle.sessions import format_chain_status
from repro.models import list_models
from repro.plan import load_plan

REPO = Path(__file__).resolve().parent.parent
CURRENT_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


# ----------------------------------------------------------------------------------------------- helpers

@pytest.fixture
def notebook(tmp_path):
    """A small notebook with the train notebook's kind of parameters cell."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('preset = "quickstart-student"\noverrides = []\nout_dir = "runs/x"\n'
                                       'time_budget = None\ndevice = None\nresume_from = []\nnproc = 1\n')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, nbformat.v4.new_code_cell("print(out_dir)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "nb" / "tiny.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, str(path))
    return path


def write_plan(tmp_path, notebook, kaggle, runs=None, name="plan.yaml"):
    runs = runs or [{"name": "run-a", "notebook": str(notebook), "parameters": {"preset": "quickstart-student"}},
                    {"name": "run-b", "notebook": str(notebook), "parameters": {"device": "cuda"}}]
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"runs": runs, "kaggle": kaggle}))
    return path


def cell_values(cell) -> dict:
    scope: dict = {}
    exec(cell.source, scope)
    return {k: v for k, v in scope.items() if not k.startswith("__")}


@pytest.fixture
def fake_gpus(monkeypatch):
    """Make torch.cuda report the given (name, capability) devices and arch list, without a GPU."""
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setenv("REPRO_KAGGLE_ROOT", "/nonexistent-kaggle-root")

    def install(gpus, arch_list=CURRENT_ARCHS):
        props = [SimpleNamespace(name=n, major=c[0], minor=c[1], total_memory=16 * 2**30) for n, c in gpus]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(gpus))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props[i])
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
    return install


# ------------------------------------------------------------------------------------- kernel metadata

def valid_kernel_meta() -> dict:
    settings = parse_settings({"owner": "alice", "data_sources": ["{owner}/cifar-100-python"]})
    return kernel_metadata(settings, "slak-tiny-cifar100", 2, "train.ipynb")


def test_slugify_agrees_with_the_official_client():
    official_slugify = pytest.importorskip("slugify").slugify
    for title in ["repro slak-tiny-cifar100 s1", "It's a Test", "a_b  c.d", "--x--", "Ünïcode tést", "1,000 runs",
                  "SLaK-T CIFAR-100 (300 ep)"]:
        assert slugify(title) == official_slugify(title), title


def test_generated_kernel_metadata_is_valid():
    meta = valid_kernel_meta()
    assert validate_kernel_metadata(meta) == []
    assert meta["id"] == "alice/repro-slak-tiny-cifar100-s2" and slugify(meta["title"]) == "repro-slak-tiny-cifar100-s2"
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True and meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["dataset_sources"] == ["alice/repro-lkt-code", "alice/cifar-100-python"]
    assert meta["kernel_sources"] == ["alice/repro-slak-tiny-cifar100-s1"]
    assert meta["kernel_type"] == "notebook" and meta["language"] == "python" and meta["is_private"] is True


@pytest.mark.parametrize("shape", ["NvidiaTeslaT4", "NvidiaL4X1", "NvidiaL4", "NvidiaH100", "TpuV5E8", "TpuV6E8"])
def test_the_clients_current_accelerator_ids_are_accepted(shape):
    meta = {**valid_kernel_meta(), "machine_shape": shape, "enable_gpu": shape.startswith("Nvidia")}
    assert validate_kernel_metadata(meta) == []
    assert parse_settings({"owner": "alice", "machine_shape": shape}).enable_gpu == shape.startswith("Nvidia")


def test_a_chain_keeps_its_docker_image():
    def pinning(**kaggle):
        meta = kernel_metadata(parse_settings({"owner": "alice", **kaggle}), "run", 1, "train.ipynb")
        return meta.get("docker_image_pinning_type")
    assert pinning(sessions=3) == "original" and pinning(sessions=1) is None
    assert pinning(sessions=3, docker_image_pinning_type="latest") == "latest"


def _without(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


@pytest.mark.parametrize("change,expected", [
    (_without("id"), "id is missing"),
    (_set("id", "alice/repro-slak-tiny-cifar100-s2/3"), "names a version"),
    (_set("id", "alice"), "'owner/kernel-slug'"),
    (_set("title", "abc"), "at least five characters"),
    (_set("title", "Something else entirely"), "slugifies to 'something-else-entirely'"),
    (_without("code_file"), "code_file is missing"),
    (_set("code_file", "train.py"), "needs an .ipynb code_file"),
    (_set("language", "julia"), "language should be one of"),
    (_set("kernel_type", "app"), "kernel_type should be one of"),
    (_without("enable_internet"), "enable_internet is missing"),
    (_set("enable_internet", True), "enable_internet is true"),
    (_set("enable_internet", "true"), "enable_internet is true"),
    (_set("enable_gpu", "yes"), "enable_gpu should be true or false"),
    (_set("machine_shape", "NvidiaTeslaK80"), "not a Kaggle accelerator id"),
    (_set("machine_shape", "NvidiaTeslaP100"), "retired"),
    (_set("machine_shape", "NvidiaTeslaT4Highmem"), "internal Kaggle pool, not offered to users"),
    (_set("docker_image", ""), "docker_image should be an image name"),
    (_set("enable_gpu", False), "is a GPU but enable_gpu is false"),
    (_set("kernel_sources", ["alice/abc"]), "shorter than five characters"),
    (_set("kernel_sources", ["no-owner-slug"]), "kernel_sources[0] should be 'owner/kernel-slug'"),
    (_set("kernel_sources", ["alice/some-kernel/"]), "version after the last '/' is empty"),
    (_set("kernel_sources", "alice/some-kernel"), "kernel_sources should be a list of strings"),
    (_set("dataset_sources", ["a/b/c/d"]), "dataset_sources[0]"),
    (_set("dataset_sources", ["alice/cifar/latest"]), "should be a number"),
    (_set("model_sources", ["google/gemma/pytorch"]), "model_sources[0]"),
    (_set("docker_image_pinning_type", "newest"), "docker_image_pinning_type"),
])
def test_invalid_kernel_metadata_is_flagged(change, expected):
    meta = valid_kernel_meta()
    change(meta)
    problems = validate_kernel_metadata(meta)
    assert any(expected in p for p in problems), problems


def test_kernel_metadata_checks_the_code_file_in_its_folder(tmp_path):
    meta = valid_kernel_meta()
    assert any("not found" in p for p in validate_kernel_metadata(meta, tmp_path))
    (tmp_path / "train.ipynb").write_text("not json")
    assert any("not ipynb JSON" in p for p in validate_kernel_metadata(meta, tmp_path))
    (tmp_path / "train.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    assert validate_kernel_metadata(meta, tmp_path) == []
    meta["enable_internet"] = True
    assert validate_kernel_metadata(meta, tmp_path, allow_internet=True) == []
    assert validate_kernel_metadata(["not", "a", "dict"]) == ["kernel metadata should be a JSON object, found list"]


@pytest.mark.parametrize("change,expected", [
    (_without("id"), "id should be 'owner/dataset-slug'"),
    (_set("id", "alice/code"), "must have 6 to 50"),
    (_set("id", "alice/" + "x" * 51), "must have 6 to 50"),
    (_set("id", "alice/My_Code_Bundle"), "lower-case"),
    (_set("title", "short"), "6 to 50 characters"),
    (_set("title", "t" * 51), "6 to 50 characters"),
    (_set("licenses", []), "exactly one entry"),
    (_set("licenses", [{"name": "CC0-1.0"}, {"name": "other"}]), "exactly one entry"),
    (_set("licenses", [{"name": "MIT"}]), "not one Kaggle documents"),
    (_set("subtitle", "too short"), "20 to 80"),
    (_set("resources", [{"path": "a.whl"}, {"path": "a.whl"}]), "more than once"),
])
def test_dataset_metadata_rules(change, expected):
    meta = dataset_metadata("alice")
    assert validate_dataset_metadata(meta) == []
    change(meta)
    problems = validate_dataset_metadata(meta)
    assert any(expected in p for p in problems), problems


# ---------------------------------------------------------------------------------------------- prepare

def test_prepare_writes_chained_kernel_folders(tmp_path, notebook):
    source_text = notebook.read_text()
    plan = write_plan(tmp_path, notebook, {"owner": "alice", "data_sources": ["{owner}/cifar-100-python"],
                                           "time_budget": "11h", "runs": {"run-a": {"sessions": 3}}})
    folders = prepare_plan(plan, tmp_path / "build")
    rel = [str(f.relative_to(tmp_path / "build")) for f in folders]
    assert rel == ["run-a/s1", "run-a/s2", "run-a/s3", "run-b/s1"]
    metas = [json.loads((f / "kernel-metadata.json").read_text()) for f in folders]
    for folder, meta in zip(folders, metas):
        assert validate_kernel_metadata(meta, folder) == []
        assert meta["code_file"] == "tiny.ipynb" and meta["enable_internet"] is False
        assert meta["dataset_sources"] == ["alice/repro-lkt-code", "alice/cifar-100-python"]
    assert [m["id"] for m in metas] == ["alice/repro-run-a-s1", "alice/repro-run-a-s2", "alice/repro-run-a-s3",
                                        "alice/repro-run-b-s1"]
    assert [m["kernel_sources"] for m in metas] == [[], ["alice/repro-run-a-s1"], ["alice/repro-run-a-s2"], []]
    index = json.loads((tmp_path / "build" / "kernels-plan.json").read_text())
    assert [(k["run"], k["session"], k["id"]) for k in index][:2] == [("run-a", 1, "alice/repro-run-a-s1"),
                                                                      ("run-a", 2, "alice/repro-run-a-s2")]

    nb = nbformat.read(str(folders[1] / "tiny.ipynb"), as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags[0] == [SETUP_TAG] and ["parameters"] in tags and ["injected-parameters"] not in tags
    setup = nb.cells[0].source
    assert '"--no-index"' in setup and '"--find-links"' in setup and '"repro-lkt"' in setup
    assert "torch" not in setup.split("import repro")[0].replace("torch is never touched", "")
    baked = cell_values(nb.cells[tags.index(["parameters"])])  # the run's values are the cell's own defaults
    assert {k: baked[k] for k in ("preset", "out_dir", "time_budget")} == {
        "preset": "quickstart-student", "out_dir": "/kaggle/working/run-a", "time_budget": "11h"}
    session = nb.cells[tags.index(["parameters"]) + 1]
    assert session.metadata["tags"] == [SESSION_TAG]
    assert "_preflight = preflight()" in session.source
    assert ("resume_from = list(resume_from) + [str(require_previous_session('run-a', 2, "
            "previous='alice/repro-run-a-s1', out_dir=out_dir))]") in session.source
    first = nbformat.read(str(folders[0] / "tiny.ipynb"), as_version=4)
    assert "require_previous_session(" not in "".join(c.source for c in first.cells)
    assert notebook.read_text() == source_text  # the source notebook is never edited


def test_prepare_session_cell_resolves_nproc_and_input_refs(tmp_path, notebook):
    runs = [{"name": "student", "notebook": str(notebook),
             "parameters": {"nproc": "auto", "overrides": ["distill.teacher=kaggle-input:teacher-run"]}}]
    plan = write_plan(tmp_path, notebook, {"owner": "alice", "machine_shape": "NvidiaTeslaT4"}, runs)
    folder, = prepare_plan(plan, tmp_path / "build")
    nb = nbformat.read(str(folder / "tiny.ipynb"), as_version=4)
    session = next(c for c in nb.cells if c.metadata.get("tags") == [SESSION_TAG]).source
    assert 'nproc = _preflight["world_size"]' in session
    assert "overrides = resolve_input_refs(overrides)" in session
    assert json.loads((folder / "kernel-metadata.json").read_text())["machine_shape"] == "NvidiaTeslaT4"


@pytest.mark.parametrize("kaggle,runs,expected", [
    ({"owner": "alice", "machine": "NvidiaTeslaT4"}, None, "did you mean machine_shape"),
    ({"owner": "alice", "machine_shape": "NvidiaTeslaP100"}, None, "is retired"),
    ({"owner": "alice", "machine_shape": "TeslaT4"}, None, "not a Kaggle accelerator id"),
    ({"owner": "alice", "machine_shape": "NvidiaTeslaT4Highmem"}, None, "internal Kaggle pool"),
    ({"owner": "alice", "sessions": 0}, None, "sessions should be 1 or more"),
    ({"owner": "alice", "sessions": "2"}, None, "kaggle.sessions expects int"),
    ({"owner": "alice", "time_budget": "13h"}, None, "at most 11h30m"),
    ({}, None, "no Kaggle owner"),
    ({"owner": "alice", "runs": {"run-z": {"sessions": 2}}}, None, "run-z, which are not runs"),
    ({"owner": "alice", "kernel_sources": ["alice/abc"]}, None, "shorter than five characters"),
    ({"owner": "alice"}, [{"name": "r1", "notebook": "NB", "parameters": {"epochs": 3}}], "declares no parameter"),
    ({"owner": "alice"}, [{"name": "r1", "notebook": "missing.ipynb"}], "not found"),
    ({"owner": "alice"}, [{"name": "a.b", "notebook": "NB"}, {"name": "a_b", "notebook": "NB"}], "both map to"),
    ({"owner": "Al ice"}, None, "is not a user name"),
    ({"owner": "alice"}, [{"name": "r1", "notebook": "NB", "parameters": {"preset": "quickstart-studnt"}}],
     "run 'r1' would fail on Kaggle: unknown preset 'quickstart-studnt'"),
    ({"owner": "alice"}, [{"name": "r1", "notebook": "NB", "parameters": {"overrides": ["train.epoch=3"]}}],
     "run 'r1' would fail on Kaggle: unknown config key 'train.epoch'"),
    ({"owner": "alice"}, [{"name": "r1", "notebook": "NB", "parameters": {"overrides": "train.epochs=3"}}],
     "overrides should be a list"),
    ({"owner": "alice", "time_budget": "abc"}, None, "kaggle.time_budget expects a duration"),
])
def test_prepare_refuses_bad_plans_and_writes_nothing(tmp_path, notebook, monkeypatch, kaggle, runs, expected):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    if runs:
        runs = [{**r, "notebook": str(notebook) if r["notebook"] == "NB" else r["notebook"]} for r in runs]
    plan = write_plan(tmp_path, notebook, kaggle, runs)
    with pytest.raises(ReproError, match=expected.replace("(", r"\(")):
        prepare_plan(plan, tmp_path / "build")
    assert not (tmp_path / "build").exists()


def test_prepare_drops_stale_later_sessions(tmp_path, notebook):
    plan = write_plan(tmp_path, notebook, {"owner": "alice", "sessions": 3})
    prepare_plan(plan, tmp_path / "build", runs=["run-a"])
    assert sorted(p.name for p in (tmp_path / "build" / "run-a").iterdir()) == ["s1", "s2", "s3"]
    plan = write_plan(tmp_path, notebook, {"owner": "alice", "sessions": 1})
    prepare_plan(plan, tmp_path / "build", owner="bob", runs=["run-a"])
    assert sorted(p.name for p in (tmp_path / "build" / "run-a").iterdir()) == ["s1"]
    meta = json.loads((tmp_path / "build" / "run-a" / "s1" / "kernel-metadata.json").read_text())
    assert meta["id"] == "bob/repro-run-a-s1"


def test_shipped_plans_prepare_valid_and_consistent_kernels(tmp_path):
    plans = sorted((REPO / "kaggle" / "plans").glob("*.yaml"))
    names = {p.name for p in plans}
    assert {"seed-slak-tiny-cifar100.yaml", "cifar100-distill-grid.yaml"} <= names
    kernels, sources, teachers, runs = set(), set(), set(), set()
    for path in plans:
        plan = load_plan(path)
        for run in plan.runs:
            runs.add(run.name)
            if run.cohort is not None:  # every member's config resolves; the teacher is a run of the plans
                from repro.train.cohort import load_cohort
                shared = run.cohort.get("overrides", [])
                teachers |= {o.split("kaggle-input:")[1] for o in shared if "kaggle-input:" in o}
                for name, cfg in load_cohort(run.cohort).members:
                    assert cfg.model.name in list_models(), (path.name, name, cfg.model.name)
                continue
            overrides = [o.split("kaggle-input:")[0] + str(tmp_path) if "kaggle-input:" in o else o
                         for o in run.parameters.get("overrides", [])]
            teachers |= {o.split("kaggle-input:")[1] for o in run.parameters.get("overrides", [])
                         if "kaggle-input:" in o}
            cfg = load_config(run.parameters["preset"], None, overrides)  # presets and keys exist
            assert cfg.model.name in list_models(), (path.name, run.name, cfg.model.name)
        for folder in prepare_plan(plan, tmp_path / "build", owner="alice"):
            meta = json.loads((folder / "kernel-metadata.json").read_text())
            assert validate_kernel_metadata(meta, folder) == [], folder
            kernels.add(meta["id"])
            sources |= set(meta["kernel_sources"])
    assert sources <= kernels, sources - kernels  # every attached kernel is one the shipped plans produce
    assert teachers and teachers <= runs, teachers - runs


# ----------------------------------------------------------------------------------------------- bundle

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("setuptools", minversion="61")  # builds the wheel without network (no build isolation)
    out = tmp_path_factory.mktemp("bundle") / "code"
    return out, build_bundle(out, owner="alice")


def test_bundle_holds_a_pure_wheel_and_valid_metadata(bundle):
    out, result = bundle
    assert result["wheels"] == ["repro_lkt-0.1.0-py3-none-any.whl"] and result["downloaded"] == []
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert validate_dataset_metadata(meta, out) == [] and meta["id"] == "alice/repro-lkt-code"
    wheel = out / result["wheels"][0]
    names = zipfile.ZipFile(wheel).namelist()
    assert "repro/kaggle/prepare.py" in names and "repro/presets/seed-slak-tiny-cifar100.yaml" in names
    # Every requirement is preinstalled on Kaggle, so nothing else has to travel, and torch is not pinned.
    assert set(wheel_requirements(wheel)) <= {normalize(n) for n in ASSUMED_ON_KAGGLE}
    assert "torch" in wheel_requirements(wheel)


def test_bundle_installs_offline_into_a_fresh_environment(bundle):
    out, _ = bundle
    result = verify_bundle(out)
    assert result["version"] == "0.1.0"
    assert Path(result["repro_file"]).is_relative_to(Path(result["python"]).parent.parent)


def test_scratch_environment_hides_every_install_of_this_package():
    from repro.kaggle.bundle import _is_this_package
    hidden = ["repro", "repro_lkt-0.1.0.dist-info", "__editable__.repro_lkt-0.1.0.pth",
              "__editable___repro_lkt_0_1_0_finder.py", "repro-lkt.egg-link", "distutils-precedence.pth"]
    assert all(_is_this_package(n) for n in hidden)
    assert not any(_is_this_package(n) for n in ["torch", "timm-1.0.31.dist-info", "reproducible", "yaml"])


def test_bundle_include_fetches_wheels_through_pip(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    with zipfile.ZipFile(index / "tinydep-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("tinydep/__init__.py", "")
        zf.writestr("tinydep-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n")
        zf.writestr("tinydep-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("tinydep-1.0.dist-info/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    out = tmp_path / "out"
    out.mkdir()
    assert [p.name for p in download_wheels(["tinydep"], out)] == ["tinydep-1.0-py3-none-any.whl"]
    with pytest.raises(ReproError, match="could not get a wheel of 'no-such-dist'"):
        download_wheels(["no-such-dist"], out)


def test_bundle_refuses_a_folder_with_other_files(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    with pytest.raises(ReproError, match="--owner"):
        build_bundle(tmp_path / "x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ReproError, match="holds other files"):
        build_bundle(tmp_path, owner="alice")


# ------------------------------------------------------------------------------- chained sessions

def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(stat.S_IREAD | stat.S_IEXEC if path.is_dir() else stat.S_IREAD)


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(stat.S_IRWXU)


@pytest.mark.filterwarnings("ignore::repro.data.DataWarning")  # generated CIFAR files, not the release
def test_chained_session_resumes_from_kaggle_input(tmp_path, monkeypatch):
    from repro.data.synthetic import write_fake_cifar
    from repro.train import train
    kaggle = tmp_path / "kaggle"
    (kaggle / "working").mkdir(parents=True)
    write_fake_cifar(kaggle / "input" / "alice-cifar-100-python", num_classes=100, train_per_class=2,
                     test_per_class=1)
    monkeypatch.setenv("REPRO_KAGGLE_ROOT", str(kaggle))
    # The data are found among the attached inputs, as on Kaggle; 200 images make 2 steps of 100 an epoch.
    cfg = load_config("quickstart-student", overrides=["data.name=cifar100", "data.val_fraction=0",
                                                       "train.epochs=2", "train.batch_size=100"])

    first = train(cfg, kaggle / "working" / "run", max_steps=2, progress=False)
    assert first["status"] == "stopped" and first["steps_done"] == 2 < first["steps_total"] == 4
    # Session 1's output comes back read-only under /kaggle/input/<kernel slug>/, the working dir is fresh.
    attached = kaggle / "input" / "alice" / "repro-run-s1" / "run"
    shutil.copytree(kaggle / "working" / "run", attached)
    shutil.rmtree(kaggle / "working" / "run")
    _make_read_only(kaggle / "input")
    try:
        with pytest.raises(ReproError, match="attach the output of kernel alice/repro-other-s1"):
            require_previous_session("other", 2, previous="alice/repro-other-s1")
        # What the prepared notebook's session cell does; the engine would also find `attached` by itself.
        assert require_previous_session("run", 2, out_dir=kaggle / "working" / "run") == attached
        second = train(cfg, kaggle / "working" / "run", progress=False)
        assert second["status"] == "complete" and second["steps_done"] == second["steps_total"]
        assert second["resumes"] == 1
        # The last session's output holds the whole run's history: epoch 1 (session 1) and epoch 2.
        from repro.report.runs import read_metrics
        metrics = read_metrics(kaggle / "working" / "run" / "metrics.jsonl")  # the evaluation rows
        assert [(m["epoch"], m["step"]) for m in metrics] == [(1, 2), (2, 4)]

        rows = chain_status([kaggle / "input", kaggle / "working"])
        assert [(r["session"], r["status"], r["steps_done"]) for r in rows] == \
            [(1, "stopped", 2), (2, "complete", 4)]
        assert rows[1]["resumed_from_step"] == 2 and rows[1]["session_wall_s"] > 0
        assert "run: complete after 2 session(s)" in format_chain_status(rows)
        # Which split each accuracy is on: best validation top-1, and the test top-1 once complete.
        assert rows[0]["test_top1"] is None and rows[1]["test_top1"] == second["test_top1"]
        table = format_chain_status(rows).splitlines()
        assert table[0].split()[5:7] == ["val1", "test1"]
        assert table[2].split()[5:7] == [f"{second['best_top1']:.2f}", f"{second['test_top1']:.2f}"]
        assert "more session(s)" in format_chain_status(rows[:1])
        estimate = plan_sessions_from_run(kaggle / "working" / "run", epochs=300)
        assert estimate["sessions"] >= 1 and estimate["seconds_per_epoch"] > 0
    finally:
        _make_writable(kaggle / "input")


def test_plan_sessions_arithmetic():
    quick = plan_sessions(epochs=300, images_per_s=1000, train_size=45000)  # 49.5 s an epoch with 10% overhead
    assert quick["sessions"] == 1 and quick["seconds_per_epoch"] == pytest.approx(49.5)
    slow = plan_sessions(epochs=300, images_per_s=100, train_size=45000)  # 41.25 h
    assert slow["sessions"] == 4 and slow["epochs_per_session"] == 81
    assert plan_sessions(epochs=150, seconds_per_epoch=600, budget="10h", overhead=0)["sessions"] == 3
    with pytest.raises(ReproError, match="images/s"):
        plan_sessions(epochs=10, images_per_s=100)
    with pytest.raises(ReproError, match="at most 11h30m"):
        plan_sessions(epochs=10, seconds_per_epoch=1, budget="12h")


def test_plan_sessions_cli(capsys):
    assert main(["kaggle", "plan-sessions", "--images-per-s", "100", "--train-size", "45000", "--epochs", "300"]) == 0
    assert "sessions: 4" in capsys.readouterr().out
    assert main(["kaggle", "plan-sessions", "--seconds-per-epoch", "10", "--epochs", "3", "--budget", "abc"]) != 0
    assert "--budget expects a duration" in capsys.readouterr().err


def test_installed_official_client_starts():
    """`make install` pins kaggle 2.x, which imports six without declaring it; the kaggle extra adds it."""
    import importlib.util

    from repro.kaggle.official import kaggle_command
    if importlib.util.find_spec("kaggle") is None:  # finds the module without importing (it logs in at import)
        pytest.skip("the kaggle extra is not installed")
    proc = subprocess.run([*kaggle_command(), "--version"], capture_output=True, text=True,
                          env={**os.environ, "HOME": "/nonexistent-home"})
    assert proc.returncode == 0 and "Kaggle" in proc.stdout, proc.stdout + proc.stderr


def test_a_client_that_cannot_start_is_named_as_such(monkeypatch):
    from repro.kaggle import official
    monkeypatch.setattr(official, "kaggle_command",
                        lambda: [sys.executable, "-c", "import no_such_module_for_kaggle"])
    with pytest.raises(ReproError, match="installed but cannot start.*ModuleNotFoundError"):
        official.run_kaggle(["kernels", "status", "alice/abcde"])
    monkeypatch.setattr(official, "kaggle_command", lambda: [sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(ReproError, match=r"was refused \(exit status 1\): no output") as exc:
        official.run_kaggle(["kernels", "status", "alice/abcde"])
    assert "credentials" not in str(exc.value)  # only a 401/403 is about credentials


# ------------------------------------------------------------------------------------ inputs on Kaggle

def test_input_references_resolve_to_attached_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_KAGGLE_ROOT", str(tmp_path))
    teacher = tmp_path / "input" / "repro-slak-tiny-cifar100-s2" / "slak-tiny-cifar100"
    teacher.mkdir(parents=True)
    (tmp_path / "input" / "a" / "b" / "c" / "d" / "e" / "deep").mkdir(parents=True)
    assert find_in_input("slak-tiny-cifar100") == [teacher]
    assert find_in_input("deep") == []  # beyond the depth limit
    resolved = resolve_input_refs(["train.epochs=3", "distill.teacher=kaggle-input:slak-tiny-cifar100"])
    assert resolved == ["train.epochs=3", f"distill.teacher={teacher}"]
    nested = {"t": "kaggle-input:repro-slak-tiny-cifar100-s2/slak-tiny-cifar100"}
    assert resolve_input_refs(nested) == {"t": str(teacher)}
    with pytest.raises(ReproError, match="no 'missing-run' under"):
        resolve_input_refs("kaggle-input:missing-run")
    (tmp_path / "input" / "other-kernel" / "slak-tiny-cifar100").mkdir(parents=True)
    with pytest.raises(ReproError, match="ambiguous"):
        resolve_input_refs("kaggle-input:slak-tiny-cifar100")


# ---------------------------------------------------------------------------------------------- preflight

def test_preflight_refuses_a_p100_without_sm60_kernels(fake_gpus):
    fake_gpus([("Tesla P100-PCIE-16GB", (6, 0))])
    with pytest.raises(ReproError, match="no kernel image.*T4") as exc:
        preflight(["--preset", "seed-slak-tiny-cifar100"], isolated=False)
    assert "machine_shape NvidiaTeslaT4" in str(exc.value)


@pytest.mark.parametrize("gpus,precision,device", [
    ([("Tesla T4", (7, 5))], "fp16", "cuda"), ([("NVIDIA L4", (8, 9))], "bf16", "cuda"), ([], "fp32", "cpu")])
def test_preflight_precision_and_single_process_launch(fake_gpus, gpus, precision, device):
    fake_gpus(gpus)
    result = preflight(["--preset", "p", "--out", "o"], isolated=False)
    assert (result["precision"], result["device"], result["world_size"]) == (precision, device, 1)
    assert result["command"] == [sys.executable, "-m", "repro", "train", "--preset", "p", "--out", "o"]


def test_preflight_launches_torchrun_over_two_gpus(fake_gpus):
    fake_gpus([("Tesla T4", (7, 5)), ("Tesla T4", (7, 5))])
    result = preflight(["--preset", "p", "--out", "o"], isolated=False)
    assert result["world_size"] == 2 and result["precision"] == "fp16" and result["gpu_count"] == 2
    cmd = result["command"]
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]  # torchrun, without relying on PATH
    assert cmd[4:] == ["--nproc_per_node=2", "-m", "repro", "train", "--preset", "p", "--out", "o"]
    assert any("torchrun" in n for n in result["notes"])


def test_preflight_notes_a_kaggle_session_without_gpu(fake_gpus, monkeypatch):
    fake_gpus([])
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    result = preflight(isolated=False)
    assert result["in_kaggle"] and result["kaggle_run_type"] == "Interactive"
    assert any("no GPU" in n for n in result["notes"])


def test_preflight_probes_in_a_child_process():
    result = preflight(["--help"])
    assert result["device"] in ("cpu", "cuda") and result["torch"] == torch.__version__


# ------------------------------------------------------------------------------------- official client

def test_importing_the_package_never_imports_the_kaggle_client():
    code = ("import argparse, sys, repro, repro.kaggle, repro.kaggle.cli, repro.kaggle.official, repro.doctor; "
            "repro.kaggle.cli.register(argparse.ArgumentParser().add_subparsers()); "
            "assert 'kaggle' not in sys.modules, 'kaggle imported'")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


def test_parse_status_and_kernel_refs(tmp_path):
    assert official.parse_status('alice/repro-x-s1 has status "KernelWorkerStatus.COMPLETE"') == "complete"
    assert official.parse_status('a/b has status "running"\nFailure message: ""') == "running"
    with pytest.raises(ReproError):
        official.parse_status("401 Unauthorized")
    (tmp_path / "kernel-metadata.json").write_text(json.dumps(valid_kernel_meta()))
    assert official.kernel_ref(tmp_path) == "alice/repro-slak-tiny-cifar100-s2"
    assert official.kernel_ref("alice/some-kernel") == "alice/some-kernel"
    with pytest.raises(ReproError):
        official.kernel_ref("not a kernel")


def test_push_validates_and_waits_for_the_previous_session(tmp_path, monkeypatch):
    calls = []
    pushed = "Kernel version 2 successfully pushed.  Please check progress at https://www.kaggle.com/code/x"
    monkeypatch.setattr(official, "run_kaggle", lambda args, **kw: calls.append(args) or
                        subprocess.CompletedProcess(args, 0, pushed, ""))
    monkeypatch.setattr(official, "kernel_docker_image", lambda ref: None)
    folder = tmp_path / "s2"
    folder.mkdir()
    meta = valid_kernel_meta()
    (folder / "kernel-metadata.json").write_text(json.dumps({**meta, "enable_internet": True}))
    (folder / "train.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    with pytest.raises(ReproError, match="enable_internet is true"):
        official.push(folder)
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    monkeypatch.setattr(official, "kernel_state", lambda ref: {"status": "running", "failure_message": None})
    with pytest.raises(ReproError, match="repro-slak-tiny-cifar100-s1 has status 'running'"):
        official.push(folder)
    assert calls == []
    monkeypatch.setattr(official, "kernel_state", lambda ref: {"status": "complete", "failure_message": None})
    with pytest.raises(ReproError, match="no version of it is known here.*--previous-version N"):
        official.push(folder)
    record = official.push(folder, previous_version=3)
    assert (record["id"], record["version"]) == (meta["id"], 2)
    assert calls == [["kernels", "push", "-p", str(folder)]]
    pinned = json.loads((folder / "kernel-metadata.json").read_text())
    assert pinned["kernel_sources"] == ["alice/repro-slak-tiny-cifar100-s1/3"]


def test_cli_prepare_and_status(tmp_path, notebook, capsys):
    plan = write_plan(tmp_path, notebook, {"owner": "alice"})
    assert main(["kaggle", "prepare", str(plan), "--out", str(tmp_path / "build"), "--run", "run-b"]) == 0
    assert "alice/repro-run-b-s1" in capsys.readouterr().out
    assert main(["kaggle", "status", str(tmp_path / "build")]) == 0
    assert "no summary.json found" in capsys.readouterr().out
    assert main(["kaggle", "prepare", str(plan), "--out", str(tmp_path / "b2"), "--run", "nope"]) == 2


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::repro.data.DataWarning")
def test_prepared_notebooks_run_a_chain_in_a_simulated_kaggle(tmp_path, monkeypatch):
    """Session 1 and 2 of a prepared train notebook, executed by papermill as Kaggle does, over /kaggle."""
    import papermill
    from repro.data.synthetic import write_fake_cifar
    kaggle = tmp_path / "kaggle"
    write_fake_cifar(kaggle / "input" / "alice-cifar-100-python", num_classes=100, train_per_class=2,
                     test_per_class=1)
    (kaggle / "working").mkdir()
    runs = [{"name": "chain", "notebook": "train.ipynb",
             "parameters": {"preset": "quickstart-student", "device": "cpu",
                            "overrides": ["data.name=cifar100", "data.val_fraction=0", "train.epochs=2",
                                          "train.batch_size=100"]}}]
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"runs": runs, "kaggle": {"owner": "alice", "sessions": 2,
                                                             "working_dir": str(kaggle / "working")}}))
    s1, s2 = prepare_plan(plan, tmp_path / "build")
    # Session 1 stops early: a max_steps added to its baked parameters stands in for the time budget.
    nb = nbformat.read(str(s1 / "train.ipynb"), as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += "max_steps = 2\n"
    nbformat.write(nb, str(s1 / "train.ipynb"))
    monkeypatch.setenv("REPRO_KAGGLE_ROOT", str(kaggle))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.chdir(kaggle / "working")
    papermill.execute_notebook(str(s1 / "train.ipynb"), str(tmp_path / "s1.ipynb"), kernel_name="python3",
                               progress_bar=False)
    run = kaggle / "working" / "chain"
    assert json.loads((run / "summary.json").read_text())["status"] == "stopped"
    shutil.copytree(run, kaggle / "input" / "repro-chain-s1" / "chain")
    shutil.rmtree(run)
    papermill.execute_notebook(str(s2 / "train.ipynb"), str(tmp_path / "s2.ipynb"), kernel_name="python3",
                               progress_bar=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps_done"] == summary["steps_total"]
    assert summary["resumes"] == 1
    from repro.report.runs import read_metrics
    assert len(read_metrics(run / "metrics.jsonl")) == 2  # both epochs' evaluations, across the two sessions
    log = "".join(o.get("text", "") for c in nbformat.read(str(tmp_path / "s2.ipynb"), 4).cells
                  for o in c.get("outputs", []))
    assert "session 2: resuming chain from" in log and "precision  fp32" in log


@pytest.mark.parametrize("train_args,expected", [
    (["--preset", "nope", "--out", "x"], "unknown preset 'nope'"),
    (["--preset", "quickstart-teacher", "--out", "x", "--set", "train.epoch=2"], "unknown config key 'train.epoch'"),
    (["--preset", "quickstart-teacher"], "not valid for `repro train`"),
    (["--out", "x"], "need --preset NAME or --config FILE"),
])
def test_preflight_checks_the_train_arguments_before_the_gpu(train_args, expected, capsys):
    assert main(["kaggle", "preflight", "--", *train_args]) == 2
    assert expected in capsys.readouterr().err


# ---------------------------------------------------------------- the real client against a stand-in server

class _StandIn:
    """A local stand-in for Kaggle's API: the installed client reaches it through an HTTP proxy on loopback
    (KAGGLE_API_ENVIRONMENT=LOCALHOST), so every request the client makes is answered here and recorded."""

    def __init__(self):
        import http.server
        import threading

        self.calls: list[tuple[str, dict]] = []
        self.answers: dict[str, tuple[int, dict]] = {}
        self.files: dict[str, bytes] = {}
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                rpc = self.path.rsplit("/", 1)[-1]
                stand_in.calls.append((rpc, body))
                default = (200, {"active": True, "username": "alice"}) if rpc == "IntrospectToken" \
                    else (404, {"code": 404, "message": "Not found"})
                status, answer = stand_in.answers.get(rpc, default)
                if isinstance(answer, str):  # an error page rather than a JSON error
                    self._reply(status, answer.encode(), "text/html")
                else:
                    self._reply(status, json.dumps(answer).encode(), "application/json")

            def do_GET(self):  # noqa: N802
                name = self.path.rsplit("/files/", 1)[-1]
                self._reply(200, stand_in.files[name], "application/octet-stream") if name in stand_in.files \
                    else self._reply(404, b"missing", "text/plain")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def rpcs(self) -> list[str]:
        return [rpc for rpc, _ in self.calls if rpc != "IntrospectToken"]

    def body(self, rpc: str) -> dict:
        return [b for r, b in self.calls if r == rpc][-1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kaggle_api(tmp_path, monkeypatch):
    import importlib.util
    if importlib.util.find_spec("kaggle") is None:
        pytest.skip("the kaggle extra is not installed")
    stand_in = _StandIn()
    for name in ("NO_PROXY", "no_proxy", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_KERNEL_RUN_TYPE", "HTTPS_PROXY",
                 "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    for name, value in (("KAGGLE_API_ENVIRONMENT", "LOCALHOST"), ("KAGGLE_API_TOKEN", "test-token"),
                        ("HOME", str(home)), ("HTTP_PROXY", f"http://127.0.0.1:{stand_in.port}"),
                        ("http_proxy", f"http://127.0.0.1:{stand_in.port}")):
        monkeypatch.setenv(name, value)
    yield stand_in
    stand_in.close()


def _pushed(version: int, ref: str) -> tuple[int, dict]:
    return 200, {"ref": f"/code/{ref}", "url": f"https://www.kaggle.com/code/{ref}", "versionNumber": version,
                 "error": ""}


@pytest.fixture
def chain(tmp_path, notebook):
    """Kernel folders of a two-session run, as `repro kaggle prepare` writes them."""
    plan = write_plan(tmp_path, notebook, {"owner": "alice", "sessions": 2}, runs=[
        {"name": "run-a", "notebook": str(notebook), "parameters": {"preset": "quickstart-student"}}])
    return prepare_plan(plan, tmp_path / "build")


def test_a_refused_push_is_not_reported_as_pushed(kaggle_api, chain, capsys):
    s1, _ = chain
    kaggle_api.answers["GetDataset"] = (200, {"currentVersionNumber": 3})
    kaggle_api.answers["SaveKernel"] = (200, {"error": "Notebook title is already in use by another notebook"})
    # The client itself prints the refusal and exits 0.
    assert main(["kaggle", "push", str(s1)]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("error: Kaggle refused the push of alice/repro-run-a-s1: Notebook title is already in "
                            "use by another notebook\n")
    assert "pushed" not in captured.out and not (s1 / official.PUSHED_FILE).exists()


def test_pushes_pin_the_chain_to_the_versions_it_started_with(kaggle_api, chain, capsys):
    s1, s2 = chain
    kaggle_api.answers["GetDataset"] = (200, {"currentVersionNumber": 3})
    kaggle_api.answers["SaveKernel"] = _pushed(4, "alice/repro-run-a-s1")
    assert main(["kaggle", "push", str(s1)]) == 0
    out = capsys.readouterr().out
    assert "pushed alice/repro-run-a-s1 version 4: https://www.kaggle.com/code/alice/repro-run-a-s1" in out
    assert "pinned: code alice/repro-lkt-code/3" in out
    sent = kaggle_api.body("SaveKernel")
    assert sent["datasetDataSources"] == ["alice/repro-lkt-code/3"] and sent["enableInternet"] is False
    assert json.loads((s1 / official.PUSHED_FILE).read_text())["version"] == 4

    # Meanwhile a new code version was uploaded: session 2 keeps the chain's, attaches session 1's version
    # and runs on its image.
    image = "gcr.io/kaggle-images/python@sha256:0123abcd"
    kaggle_api.answers["GetDataset"] = (200, {"currentVersionNumber": 5})
    kaggle_api.answers["GetKernelSessionStatus"] = (200, {"status": "COMPLETE"})
    kaggle_api.answers["GetKernel"] = (200, {
        "metadata": {"ref": "alice/repro-run-a-s1", "dockerImage": image, "language": "python",
                     "kernelType": "notebook"},
        "blob": {"source": "{}", "language": "python", "kernelType": "notebook"}})
    kaggle_api.answers["SaveKernel"] = _pushed(1, "alice/repro-run-a-s2")
    record = official.push(s2)
    sent = kaggle_api.body("SaveKernel")
    assert sent["kernelDataSources"] == ["alice/repro-run-a-s1/4"]
    assert sent["datasetDataSources"] == ["alice/repro-lkt-code/3"]
    assert sent["dockerImage"] == image and sent["dockerImagePinningType"] == "original"
    assert kaggle_api.body("GetKernelSessionStatus") == {"userName": "alice", "kernelSlug": "repro-run-a-s1"}
    assert record["pinned"] == {"kernel": "alice/repro-run-a-s1/4", "code_dataset": "alice/repro-lkt-code/3",
                                "docker_image": image}


@pytest.mark.parametrize("answer,expected,credentials", [
    ((404, {"code": 404, "message": "Not found"}), "no such kernel alice/nope-kernel", False),
    ((400, "<html>Bad Request</html>"), "Kaggle rejected `kaggle kernels status alice/nope-kernel` as a bad "
     "request: 400 Client Error: Bad Request", False),
    ((400, {"code": 400, "message": "Invalid kernel slug"}),
     "`kaggle kernels status alice/nope-kernel` was refused (exit status 1): Invalid kernel slug", False),
    ((403, {"code": 403, "message": "Permission denied"}), "no such kernel alice/nope-kernel", False),
    ((500, {"code": 500, "message": "Internal error"}), "a problem on Kaggle's side", False),
])
def test_client_errors_come_as_one_line_with_advice(kaggle_api, answer, expected, credentials):
    kaggle_api.answers["GetKernelSessionStatus"] = answer
    with pytest.raises(ReproError, match=re.escape(expected)) as exc:
        official.kernel_status("alice/nope-kernel")
    message = str(exc.value)
    assert "\n" not in message and "usage:" not in message and "Option A" not in message
    assert ("credentials" in message) == credentials


def test_push_errors_by_status(kaggle_api, chain):
    s1, _ = chain
    kaggle_api.answers["GetDataset"] = (200, {"currentVersionNumber": 3})
    kaggle_api.answers["SaveKernel"] = (400, {"code": 400, "message": "Invalid machine shape"})
    with pytest.raises(ReproError, match="Kaggle refused the push of alice/repro-run-a-s1: Invalid machine shape$"):
        official.push(s1)
    kaggle_api.answers["SaveKernel"] = (403, {"code": 403, "message": "Permission denied"})
    with pytest.raises(ReproError, match="refused access to alice/repro-run-a-s1 .*kaggle auth login"):
        official.push(s1)
    kaggle_api.answers.pop("GetDataset")
    with pytest.raises(ReproError, match="no such dataset alice/repro-lkt-code .*kaggle datasets create"):
        official.push(s1)


def test_bad_credentials_and_no_network(kaggle_api, monkeypatch):
    kaggle_api.answers["IntrospectToken"] = (200, {"active": False})
    with pytest.raises(ReproError, match=r"did not accept the credentials .*\(401\); sign in with `kaggle auth "
                                         "login`") as exc:
        official.kernel_status("alice/some-kernel")
    assert "\n" not in str(exc.value)
    port = kaggle_api.port
    kaggle_api.close()  # nothing listens there any more
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    with pytest.raises(ReproError, match=r"could not reach Kaggle \(network\)") as exc:
        official.kernel_status("alice/some-kernel")
    assert "credentials" not in str(exc.value)
    kaggle_api.close = lambda: None


def test_status_passes_the_failure_message_through(kaggle_api, capsys):
    kaggle_api.answers["GetKernelSessionStatus"] = (200, {"status": "ERROR",
                                                          "failureMessage": "CUDA error: out of memory"})
    assert official.kernel_state("alice/repro-run-a-s1") == {"status": "error",
                                                            "failure_message": "CUDA error: out of memory"}
    assert main(["kaggle", "status", "alice/repro-run-a-s1"]) == 0
    assert capsys.readouterr().out == "alice/repro-run-a-s1: error\n  failure message: CUDA error: out of memory\n"
    kaggle_api.answers["GetKernelSessionStatus"] = (200, {"status": "CANCEL_ACKNOWLEDGED"})
    assert official.kernel_status("alice/repro-run-a-s1") == "cancel_acknowledged" in official.STATUSES


def test_output_downloads_the_run_records_by_default(kaggle_api, tmp_path):
    names = ["run-a/summary.json", "run-a/metrics.jsonl", "run-a/config.yaml", "__notebook__.ipynb",
             "run-a/checkpoints/ckpt-00000010.pt", "run-a/checkpoints/ckpt-00000010.pt.sha256",
             "run-a/weights-final.pt", "run-a/tb/events.out.tfevents.1"]
    kaggle_api.files = {name.replace("/", "_"): f"content of {name}".encode() for name in names}
    kaggle_api.answers["ListKernelSessionOutput"] = (200, {
        "files": [{"fileName": n, "url": f"http://localhost/files/{n.replace('/', '_')}"} for n in names],
        "log": "[{\"data\": \"session log\"}]"})

    def files(folder):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    dest = official.download_output("alice/repro-run-a-s1", tmp_path / "records")
    assert files(dest) == ["__notebook__.ipynb", "repro-run-a-s1.log", "run-a/config.yaml", "run-a/metrics.jsonl",
                           "run-a/summary.json"]
    assert (dest / "run-a" / "summary.json").read_text() == "content of run-a/summary.json"
    dest = official.download_output("alice/repro-run-a-s1", tmp_path / "ckpt", checkpoints=True)
    assert "run-a/checkpoints/ckpt-00000010.pt" in files(dest) and "run-a/weights-final.pt" in files(dest)
    assert "run-a/tb/events.out.tfevents.1" not in files(dest)
    dest = official.download_output("alice/repro-run-a-s1", tmp_path / "pattern", file_pattern=r"summary\.json$")
    assert files(dest) == ["repro-run-a-s1.log", "run-a/summary.json"]
    assert len(files(official.download_output("alice/repro-run-a-s1", tmp_path / "all", everything=True))) == 9


def test_a_failed_download_leaves_no_empty_folder(kaggle_api, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["kaggle", "output", "alice/nope-kernel"]) == 2  # the stand-in knows no such kernel
    assert not (tmp_path / "runs").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(ReproError, match="no such kernel alice/nope-kernel"):
        official.download_output("alice/nope-kernel", tmp_path / "mine" / "a" / "b")
    assert (tmp_path / "mine").is_dir() and not (tmp_path / "mine" / "a").exists()
    with pytest.raises(ReproError, match="not a regular expression"):
        official.download_output("alice/nope-kernel", tmp_path / "x", file_pattern="(")


@pytest.mark.parametrize("stdout,stderr,kind,expected", [
    ("", "Not found\n\nThe resource was not found. Check the spelling of the reference you passed.\n", "push",
     "answered 404 to `kaggle kernels push -p F` (Not found): something it names does not exist"),
    ("", "Not found\n\nThe resource was not found. Check the spelling", "dataset", "no such dataset alice/x-data"),
    ("", "429 Client Error: Too Many Requests for url: http://x\n\nYou have been rate limited.", "kernel",
     "rate-limiting"),
    ("", "usage: kaggle kernels output [-h]\nkaggle: error: unrecognized arguments: --file-pattern x", "kernel",
     "does not know `kaggle kernels push -p F` (kaggle: error: unrecognized arguments"),
    ("", "Traceback (most recent call last):\n  File \"x\", line 1\nrequests.exceptions.ConnectionError: "
     "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded", "kernel",
     "could not reach Kaggle (network) for `kaggle kernels push -p F`: requests.exceptions.ConnectionError"),
])
def test_client_error_advice_by_status(stdout, stderr, kind, expected):
    proc = subprocess.CompletedProcess([], 1, stdout, stderr)
    ref = "alice/x-data" if kind == "dataset" else "alice/some-kernel"
    message = str(official.client_error(["kernels", "push", "-p", "F"], proc, ref=ref, kind=kind))
    assert expected in message and "\n" not in message
    assert "credentials" not in message
