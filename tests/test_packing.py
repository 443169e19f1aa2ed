"""Cohort runs in plans (repro batch, repro kaggle prepare, the train notebook), packing runs side by side (one per
GPU; on CPU they share it) and the whole-plan quota estimate (repro kaggle plan-sessions PLAN)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from repro import batch, packing
from repro.cli import main
from repro.config import load_config
from repro.errors import ReproError
from repro.kaggle import chain_status, prepare_plan, validate_kernel_metadata
from repro.kaggle.quota import estimate, plan_jobs, plan_quota
from repro.plan import cohort_state, load_plan
from repro.train import train
from repro.train.cohort import train_cohort

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.train_limit=128", "train.epochs=1", "sparse.sparsity=0", "data.num_workers=0"]
COHORT = {"preset": "quickstart-student", "overrides": TINY,
          "members": [{"name": "a", "overrides": ["train.lr=1e-3"]},
                      {"name": "b", "overrides": ["train.lr=3e-3", "model.drop_path_rate=0.1"]}]}
SOLO = {"preset": "quickstart-teacher", "overrides": TINY}


def _plan(tmp_path: Path, runs: list, kaggle: dict | None = None, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"defaults": {"device": "cpu"}, "runs": runs,
                                    **({"kaggle": kaggle} if kaggle else {})}, sort_keys=False))
    return path


PAIR = [{"name": "coh", "cohort": COHORT}, {"name": "solo", "notebook": "train.ipynb", "parameters": SOLO}]


def _digest(folder: Path) -> str:
    return json.loads((folder / "summary.json").read_text())["state_digest"]


@pytest.fixture(scope="module")
def one_after_the_other(tmp_path_factory):
    """The cohort and the single run trained one after the other, in this process with one thread (as the packed
    children below, which get OMP_NUM_THREADS=1)."""
    out = tmp_path_factory.mktemp("sequential")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        digests = {f"coh/{n}": s["state_digest"] for n, s in train_cohort(COHORT, out / "coh", progress=False).items()}
        digests["solo"] = train(load_config(SOLO["preset"], None, SOLO["overrides"]), out / "solo",
                                progress=False)["state_digest"]
    finally:
        torch.set_num_threads(threads)
    return digests


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))


# ------------------------------------------------------------------------------------------ plans

def test_a_plan_run_gives_its_cohort_inline_or_as_a_file(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(COHORT))
    plan = load_plan(_plan(tmp_path, [{"name": "inline", "cohort": COHORT},
                                      {"name": "file", "cohort": "c.yaml", "parameters": {"seed": 3}}]))
    inline, from_file = plan.runs
    assert inline.notebook == "train.ipynb" and inline.cohort == COHORT == from_file.cohort
    assert inline.parameters == {"device": "cpu", "cohort": COHORT}
    assert from_file.parameters["seed"] == 3


def test_the_defaults_preset_and_overrides_do_not_reach_a_cohort_but_its_own_are_refused(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"preset": "cifar100-distill", "overrides": ["x=1"], "seed": 1},
                                    "runs": [{"name": "c", "cohort": COHORT}]}))
    assert load_plan(path).runs[0].parameters == {"seed": 1, "cohort": COHORT}
    with pytest.raises(ReproError, match="a cohort run takes preset from its cohort"):
        load_plan(_plan(tmp_path, [{"name": "c", "cohort": COHORT, "parameters": {"preset": "quickstart-student"}}]))
    with pytest.raises(ReproError, match=r"cohort\.members should be a non-empty list"):
        load_plan(_plan(tmp_path, [{"name": "c", "cohort": {"preset": "quickstart-student", "members": []}}]))
    with pytest.raises(ReproError, match="cohort file .* not found"):
        load_plan(_plan(tmp_path, [{"name": "c", "cohort": "missing.yaml"}]))


def test_a_member_differing_in_a_shared_key_is_refused_before_anything_runs(tmp_path):
    odd = {**COHORT, "members": COHORT["members"] + [{"name": "odd", "overrides": ["train.batch_size=32"]}]}
    records = batch.run_plan(_plan(tmp_path, [{"name": "c", "cohort": odd}]), tmp_path / "runs", progress=False)
    assert records[0]["status"] == "failed"
    assert "member odd has train.batch_size=32 but a has 64" in records[0]["error"]
    assert not (tmp_path / "runs" / "c" / "executed.ipynb").exists()
    plan = _plan(tmp_path, [{"name": "c", "cohort": odd}], {"owner": "alice"}, name="k.yaml")
    with pytest.raises(ReproError, match="run 'c' would fail on Kaggle: .*member odd has train.batch_size"):
        prepare_plan(plan, tmp_path / "build")
    with pytest.raises(ReproError, match="nproc must be 1"):
        prepare_plan(_plan(tmp_path, [{"name": "c", "cohort": COHORT, "parameters": {"nproc": 2}}],
                           {"owner": "alice"}, name="n.yaml"), tmp_path / "build")


def test_a_cohort_is_complete_when_every_member_is(tmp_path):
    for name, status in (("a", "complete"), ("b", "stopped")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"status": status}))
    assert cohort_state(tmp_path, COHORT) is None
    (tmp_path / "b" / "summary.json").write_text(json.dumps({"status": "complete"}))
    assert cohort_state(tmp_path, COHORT) == "complete"
    assert batch.run_state(tmp_path, {"cohort": COHORT}) == "complete"


# ------------------------------------------------------------------------------------------ packing

def test_repro_batch_pack_2_runs_a_cohort_notebook_and_a_single_run_side_by_side(tmp_path, one_thread,
                                                                                one_after_the_other, capsys):
    """Two notebooks at once, each in its own process with its own CUDA_VISIBLE_DEVICES (no effect on CPU): the
    train notebook trains the cohort into member folders, and every digest equals the runs trained one after the
    other."""
    plan = _plan(tmp_path, PAIR)
    out = tmp_path / "runs"
    parser = argparse.ArgumentParser()
    batch.register(parser.add_subparsers())
    args = parser.parse_args(["batch", str(plan), "--out", str(out), "--pack", "2", "--no-progress"])
    assert args.func(args) == 0, [(p, p.read_text()[-2000:]) for p in out.glob("*/pack.log")]
    printed = capsys.readouterr().out
    assert "coh: started on GPU 0" in printed and "solo: started on GPU 1" in printed
    assert {f"coh/{n}": _digest(out / "coh" / n) for n in "ab"} | {"solo": _digest(out / "solo")} \
        == one_after_the_other
    log = (out / "coh" / "papermill.log").read_text()
    assert "# member a" in log and "# member b" in log
    assert json.loads((out / "coh" / "batch.json").read_text())["status"] == "complete"
    assert batch.run_state(out / "coh", load_plan(plan).runs[0].parameters) == "complete"  # a rerun skips it


@pytest.mark.slow
def test_packed_kaggle_children_train_side_by_side_with_the_same_digests(tmp_path, one_thread, one_after_the_other):
    """What a packed Kaggle session runs: `repro train` / `repro train --cohort` children, one per slot, each with
    the session's budget and its own log; the results table names every member."""
    runs = [{"name": "coh", "cohort": COHORT, "out_dir": str(tmp_path / "coh"), "device": "cpu"},
            {"name": "solo", **SOLO, "out_dir": str(tmp_path / "solo"), "device": "cpu"}]
    rows = packing.train_side_by_side(runs, time_budget="1h", slots=["0", "1"])
    assert [(r["run"], r["member"], r["gpu"], r["status"]) for r in rows] == [
        ("coh", "a", "0", "complete"), ("coh", "b", "0", "complete"), ("solo", None, "1", "complete")]
    assert {f"coh/{n}": _digest(tmp_path / "coh" / n) for n in "ab"} | {"solo": _digest(tmp_path / "solo")} \
        == one_after_the_other
    assert (tmp_path / "solo" / "train.log").is_file() and (tmp_path / "coh" / "train.log").is_file()
    assert yaml.safe_load((tmp_path / "coh" / "cohort.yaml").read_text())["members"] == COHORT["members"]


def test_a_failing_packed_child_is_reported_after_the_others_end(tmp_path, one_thread, monkeypatch):
    ok = packing.Job("ok", [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                     tmp_path / "ok.log")
    bad = packing.Job("bad", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "bad.log")
    assert packing.run_side_by_side([ok, bad], ["4", "7"], announce=False) is None
    assert (ok.returncode, bad.returncode) == (0, 3) and (ok.slot, bad.slot) == ("4", "7")
    assert (tmp_path / "ok.log").read_text().strip() == "4"
    # A child that fails at once (`repro train` without --out) stands in for a failing run.
    monkeypatch.setattr(packing, "train_args", lambda run, budget: ["train"])
    with pytest.raises(ReproError, match="packed run\\(s\\) failed: x \\(exit status 2"):
        packing.train_side_by_side([{"name": "x", "out_dir": str(tmp_path / "x")}], slots=["0"])


def test_each_packed_child_gets_the_sessions_budget_and_its_cohort_file(tmp_path):
    solo = packing.train_args({"name": "s", **SOLO, "out_dir": str(tmp_path / "s"), "seed": 2}, "11h15m")
    assert solo[:4] == ["train", "--out", str(tmp_path / "s"), "--no-progress"]
    assert solo[4:6] == ["--preset", "quickstart-teacher"] and solo[-4:] == ["--seed", "2", "--time-budget", "11h15m"]
    coh = packing.train_args({"name": "c", "cohort": COHORT, "out_dir": str(tmp_path / "c"), "seed": 5}, "1h")
    assert coh[4:] == ["--cohort", str(tmp_path / "c" / "cohort.yaml"), "--time-budget", "1h"]
    assert yaml.safe_load((tmp_path / "c" / "cohort.yaml").read_text())["overrides"] == TINY + ["seed=5"]
    with pytest.raises(ReproError, match="nproc must be 1"):
        packing.train_args({"name": "d", **SOLO, "out_dir": "x", "nproc": 2}, None)


def test_gpu_slots_follow_the_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert packing.gpu_slots(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert packing.gpu_slots(2) == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with pytest.raises(ReproError, match="needs 2 GPUs"):
        packing.gpu_slots(2)
    with pytest.raises(ReproError, match="found 1"):
        packing.check_gpus(2, gpu_count=1)
    assert "share the CPU" in packing.check_gpus(2, gpu_count=0)


# ------------------------------------------------------------------------------------------ Kaggle

def test_prepare_pairs_runs_into_packed_sessions_and_bakes_cohorts(tmp_path):
    runs = PAIR + [{"name": "third", "notebook": "train.ipynb", "parameters": SOLO}]
    plan = _plan(tmp_path, runs, {"owner": "alice", "pack": 2, "sessions": 2,
                                  "runs": {"coh": {"sessions": 1, "kernel_sources": ["alice/teacher-s1"]}}})
    folders = prepare_plan(plan, tmp_path / "build")
    assert [str(f.relative_to(tmp_path / "build")) for f in folders] == [
        "coh+solo/s1", "coh+solo/s2", "third/s1", "third/s2"]
    meta = json.loads((folders[1] / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/repro-coh-solo-s2" and meta["code_file"] == "train-packed.ipynb"
    assert meta["kernel_sources"] == ["alice/teacher-s1", "alice/repro-coh-solo-s1"]
    assert validate_kernel_metadata(meta, folders[1]) == []
    nb = nbformat.read(str(folders[1] / "train-packed.ipynb"), as_version=4)
    scope: dict = {}
    exec(next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source, scope)
    assert [r["name"] for r in scope["runs"]] == ["coh", "solo"] and scope["time_budget"] == "11h15m"
    assert scope["runs"][0]["cohort"] == COHORT and scope["runs"][0]["out_dir"] == "/kaggle/working/coh"
    session = "".join(c.source for c in nb.cells)
    assert "require_previous_cohort(_run['name']" in session and "train_side_by_side(runs" in session
    # A cohort run on its own: the train notebook with the cohort baked in; session 2 checks every member.
    folder = prepare_plan(_plan(tmp_path, PAIR, {"owner": "alice", "sessions": 2}, name="p1.yaml"),
                          tmp_path / "b1", runs=["coh"])[1]
    nb = nbformat.read(str(folder / "train.ipynb"), as_version=4)
    source = "".join(c.source for c in nb.cells)
    assert "require_previous_cohort('coh', ['a', 'b'], 2, previous='alice/repro-coh-s1', out_dir=out_dir)" in source
    with pytest.raises(ReproError, match="machine_shape NvidiaL4X1 has one"):
        prepare_plan(_plan(tmp_path, PAIR, {"owner": "alice", "pack": 2, "machine_shape": "NvidiaL4X1"},
                           name="l4.yaml"), tmp_path / "b2")


def test_status_names_cohort_members_by_their_run(tmp_path, capsys):
    """Members of two cohorts with the same member name are two runs, not two sessions of one."""
    for run in ("from-x", "from-y"):
        folder = tmp_path / run / "kd"
        folder.mkdir(parents=True)
        (tmp_path / run / "cohort.yaml").write_text("members: []\n")
        (folder / "summary.json").write_text(json.dumps({"status": "complete", "steps_done": 4, "steps_total": 4}))
    assert [(r["run"], r["session"]) for r in chain_status([tmp_path])] == [("from-x/kd", 1), ("from-y/kd", 1)]
    assert main(["kaggle", "status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "from-x/kd: complete after 1 session(s)" in out and "from-y/kd: complete after 1 session(s)" in out


# ------------------------------------------------------------------------------------------ quota

CALIBRATION = {"device": "test", "precision": "fp32", "batch": 64, "img_size": 32, "steps": 1,
               "train": {"l2s_convnext_micro": 0.002, "slak_micro": 0.004}, "forward": {"slak_micro": 0.001}}


def test_plan_quota_with_and_without_cohorts_and_packing(tmp_path):
    teacher = {"name": "teacher", "notebook": "train.ipynb", "parameters": {"preset": "quickstart-teacher"}}
    members = [{"name": m, "overrides": [f"distill.method={m}"]} for m in ("kd", "nkd", "fd")]
    cohort = {"preset": "quickstart-student", "overrides": ["distill.teacher=kaggle-input:teacher"],
              "members": members + [{"name": "alone", "overrides": ["distill.method=null"]}]}
    plan = _plan(tmp_path, [teacher, {"name": "students", "cohort": cohort}])
    jobs = plan_jobs(plan)
    assert [(j.name, j.teacher, len(j.students)) for j in jobs] == [("teacher", None, 1),
                                                                    ("students", "slak_micro", 4)]
    digits = jobs[0].images_per_epoch
    result = plan_quota([plan], calibration=CALIBRATION, anchors=["slak_micro=500"], pack=2, overhead=0.0,
                        session_overhead="0s")
    assert result["scale"] == pytest.approx((1 / 500) / 0.004)
    single, cohorts, packed, both = result["scenarios"]
    steps = digits // 64
    # Per image: the teacher run 4 ms; as single runs, 3 distilled students at 1 + 2 ms and the one alone at 2 ms
    # (no teacher); as a cohort one teacher forward and 4 student steps, 1 + 4 x 2 ms.
    per_epoch_h = steps * 64 * result["scale"] / 3600
    teacher_h, students_h = per_epoch_h * jobs[0].epochs, per_epoch_h * jobs[1].epochs  # the presets' epochs
    assert single["gpu_hours"] == pytest.approx(teacher_h * 0.004 + students_h * (3 * 0.003 + 0.002))
    assert cohorts["gpu_hours"] == pytest.approx(teacher_h * 0.004 + students_h * 0.009)
    assert (single["chains"], cohorts["chains"], packed["chains"], both["chains"]) == (5, 2, 3, 1)
    assert packed["gpu_hours"] == pytest.approx(single["gpu_hours"])
    assert both["quota_hours"] == pytest.approx(max(teacher_h * 0.004, students_h * 0.009))
    assert both["quota_hours"] < cohorts["quota_hours"] < single["quota_hours"]
    tripled = estimate(jobs, CALIBRATION, scale=result["scale"], seeds=3, overhead=0.0, session_overhead="0s")
    assert tripled[0].gpu_hours == pytest.approx(3 * single["gpu_hours"]) and tripled[0].chains == 15


def test_plan_sessions_cli_prints_what_is_measured_and_what_is_estimated(tmp_path, capsys):
    (tmp_path / "cal.json").write_text(json.dumps({"calibration": CALIBRATION}))
    plan = _plan(tmp_path, [{"name": "t", "notebook": "train.ipynb", "parameters": {"preset": "quickstart-teacher"}}])
    assert main(["kaggle", "plan-sessions", str(plan), "--calibration", str(tmp_path / "cal.json"),
                 "--seeds", "3", "--save", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "measured: per-image costs on test" in out and "no anchor" in out
    assert "estimates, not measurements" in out and "cohorts, packed 2 per session" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["scenarios"][0]["chains"] == 3  # one run, three seeds
    assert main(["kaggle", "plan-sessions", str(plan), "--calibration", str(tmp_path / "cal.json"),
                 "--anchor", "nope=3"]) == 2
    assert "expected MODEL=IMAGES_PER_S" in capsys.readouterr().err


def test_the_shipped_cifar100_plans_estimate(tmp_path):
    plans = [REPO / "kaggle" / "plans" / n for n in ("cifar100-teachers.yaml", "cifar100-distill-grid.yaml")]
    jobs = [j for p in plans for j in plan_jobs(p)]
    models = {m for j in jobs for _, m, _ in j.students}
    teachers = {j.teacher for j in jobs if j.teacher}
    calibration = {**CALIBRATION, "train": {m: 0.001 for m in models}, "forward": {t: 0.0005 for t in teachers}}
    result = plan_quota(plans, calibration=calibration, pack=2)
    single, _, _, both = result["scenarios"]
    assert both["quota_hours"] < single["quota_hours"] / 2


@pytest.mark.slow
def test_a_packed_session_chain_in_a_simulated_kaggle(tmp_path, monkeypatch):
    """Sessions 1 and 2 of a packed kernel (a cohort and a single run), executed by papermill as Kaggle does: session
    1 stops early, session 2 finds every run's (every member's) checkpoints among its inputs and completes them."""
    import papermill

    kaggle = tmp_path / "kaggle"
    (kaggle / "input").mkdir(parents=True)
    (kaggle / "working").mkdir()
    plan = _plan(tmp_path, PAIR, {"owner": "alice", "pack": 2, "sessions": 2, "working_dir": str(kaggle / "working")})
    s1, s2 = prepare_plan(plan, tmp_path / "build")
    nb = nbformat.read(str(s1 / "train-packed.ipynb"), as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += "for _run in runs:\n    _run['max_steps'] = 1  # stands in for the time budget\n"
    nbformat.write(nb, str(s1 / "train-packed.ipynb"))
    for key, value in (("REPRO_KAGGLE_ROOT", str(kaggle)), ("PYTHONPATH", str(REPO)), ("OMP_NUM_THREADS", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(kaggle)  # the working folder is replaced between the sessions
    papermill.execute_notebook(str(s1 / "train-packed.ipynb"), str(tmp_path / "s1.ipynb"), kernel_name="python3",
                               progress_bar=False)
    folders = [kaggle / "working" / "coh" / "a", kaggle / "working" / "coh" / "b", kaggle / "working" / "solo"]
    assert [json.loads((f / "summary.json").read_text())["status"] for f in folders] == ["stopped"] * 3
    shutil.copytree(kaggle / "working", kaggle / "input" / "repro-coh-solo-s1")
    shutil.rmtree(kaggle / "working")
    (kaggle / "working").mkdir()
    papermill.execute_notebook(str(s2 / "train-packed.ipynb"), str(tmp_path / "s2.ipynb"), kernel_name="python3",
                               progress_bar=False)
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["resumes"] == 1, folder
    log = "".join(o.get("text", "") for c in nbformat.read(str(tmp_path / "s2.ipynb"), 4).cells
                  for o in c.get("outputs", []))
    assert "session 2: resuming coh/a from" in log and "session 2: resuming solo from" in log
    rows = [r["run"] for r in chain_status([kaggle])]
    assert rows.count("coh/a") == 2 and rows.count("solo") == 2
