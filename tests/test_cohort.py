"""Cohorts: one data stream and one teacher forward for many students, each member bit-identical to its solo
run (kill -9 and resume included), with mixup/cutmix, drop path and sparsity on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro.config import load_config
from repro.errors import ReproError
from repro.train import train
from repro.train.cohort import load_cohort, train_cohort

ROOT = Path(__file__).resolve().parents[1]
# 4 steps per epoch (128 digits // 16 // 2 accumulation), 2 epochs.
SHARED = ["data.train_limit=128", "train.epochs=2", "train.batch_size=16", "train.accum_steps=2",
          "data.num_workers=0", "train.mixup=0.8", "train.cutmix=1.0", "data.randaugment=rand-m9-mstd0.5-inc1",
          "data.reprob=0.25"]
MEMBERS = {
    "kd": ["distill.method=kd", "sparse.sparsity=0.3", "sparse.update_frequency=3", "model.drop_path_rate=0.1"],
    "nkd": ["distill.method=nkd", "train.lr=1e-3", "train.ema_decay=0.9"],
    "alone": ["distill.method=null", "model.drop_path_rate=0.2"],
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "t"
    train(load_config("quickstart-teacher", overrides=["data.train_limit=128", "train.epochs=1",
                                                       "sparse.sparsity=0", "data.num_workers=0"]),
          out, progress=False)
    return out


def cohort_file(tmp_path, teacher, members=MEMBERS):
    spec = {"preset": "quickstart-student", "overrides": SHARED + [f"distill.teacher={teacher}"],
            "members": [{"name": n, "overrides": o} for n, o in members.items()]}
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def solos(teacher, tmp_path_factory):
    """Each member trained on its own, in a subprocess like the cohort runs below (same thread count)."""
    base = tmp_path_factory.mktemp("solo")
    digests = {}
    for name, over in MEMBERS.items():
        out = base / name
        args = ["train", "--preset", "quickstart-student", "--out", str(out), "--no-progress"]
        for o in SHARED + [f"distill.teacher={teacher}"] + over + [f"name={name}"]:
            args += ["--set", o]
        res = _cli(*args)
        assert res.returncode == 0, res.stderr[-2000:]
        digests[name] = json.loads((out / "summary.json").read_text())["state_digest"]
    return digests


def _cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "repro", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_every_member_equals_its_solo_run_and_writes_an_ordinary_run_folder(tmp_path, teacher, solos):
    out = tmp_path / "cohort"
    res = _cli("train", "--cohort", str(cohort_file(tmp_path, teacher)), "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    for name in MEMBERS:
        s = json.loads((out / name / "summary.json").read_text())
        assert s["status"] == "complete" and s["name"] == name
        assert s["state_digest"] == solos[name], name
        assert (out / name / "config.yaml").is_file() and (out / name / "metrics.jsonl").is_file()
    assert json.loads((out / "cohort.json").read_text())["kd"]["status"] == "complete"
    assert (out / "cohort.yaml").is_file()


def test_kill_9_of_the_cohort_then_resume_still_equals_the_solo_runs(tmp_path, teacher, solos):
    out = tmp_path / "cohort"
    path = cohort_file(tmp_path, teacher)
    killed = _cli("train", "--cohort", str(path), "--out", str(out), "--no-progress", "--checkpoint-every", "2",
                  env_extra={"REPRO_CRASH_AT": "5:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = _cli("train", "--cohort", str(path), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in MEMBERS:
        s = json.loads((out / name / "summary.json").read_text())
        assert s["state_digest"] == solos[name] and s["resumes"] == 1, name


def test_members_at_different_steps_catch_up_on_the_shared_stream(tmp_path, teacher, solos):
    """One member's folder is further on (as after a kill between two members' saves): the cohort replays
    the stream from the earliest member, the others wait for it, and all still equal their solo runs."""
    out = tmp_path / "cohort"
    path = cohort_file(tmp_path, teacher)
    train_cohort(path, out, max_steps=2, checkpoint_every=1, progress=False)
    spec = load_cohort(path)
    train(dict(spec.members)["nkd"], out / "nkd", max_steps=5, checkpoint_every=1, progress=False)
    results = train_cohort(path, out, progress=False)
    assert {n: s["status"] for n, s in results.items()} == {n: "complete" for n in MEMBERS}
    # This ran in-process (pytest's thread count): compare with an in-process solo run of one member.
    solo = train(dict(load_cohort(path).members)["alone"], tmp_path / "solo-alone", progress=False)
    assert results["alone"]["state_digest"] == solo["state_digest"]


def test_a_member_differing_in_a_shared_key_is_refused_naming_it(tmp_path, teacher):
    members = {**MEMBERS, "odd": ["distill.method=kd", "train.batch_size=32"]}
    with pytest.raises(ReproError, match=r"member odd has train\.batch_size=32 but kd has 16"):
        load_cohort(cohort_file(tmp_path, teacher, members))
    assert not (tmp_path / "cohort").exists()


@pytest.mark.parametrize("bad,match", [
    ({"members": []}, "non-empty list"),
    ({"members": [{"name": "a/b"}]}, "plain folder name"),
    ({"members": [{"name": "a"}, {"name": "a"}]}, "unique"),
    ({"members": [{"name": "a", "overrides": "train.lr=1"}]}, "list of 'key=value' strings"),
    ({"members": [{"name": "a"}], "extra": 1}, "unknown keys"),
])
def test_malformed_cohort_files_are_one_line(bad, match):
    with pytest.raises(ReproError, match=match):
        load_cohort({"preset": "quickstart-student", **bad})
