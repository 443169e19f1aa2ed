"""Run folders nobody can corrupt: one process per folder, stop signals at any moment, no checkpoint holding
NaN or infinity, checksums inside checkpoint files, unreadable checkpoints set aside, full disks."""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro.config import load_config
from repro.errors import ReproError
from repro.train import list_checkpoints, train
from repro.train import checkpoint as ckpt_mod
from repro.train.checkpoint import load_checkpoint, nonfinite_entries, read_checkpoint, seal, verify_seal
from repro.train.runlock import RunLock

ROOT = Path(__file__).resolve().parents[1]
# 8 steps per epoch, 2 epochs, dense: a few seconds per run.
SMALL = ["data.train_limit=128", "train.epochs=2", "train.batch_size=16", "sparse.sparsity=0",
         "train.ema_decay=0.9"]


def cfg_for(*extra):
    return load_config("quickstart-teacher", overrides=SMALL + list(extra))


def _args(out, *extra):
    args = [sys.executable, "-m", "repro", "train", "--preset", "quickstart-teacher", "--out", str(out),
            "--no-progress"]
    for o in SMALL:
        args += ["--set", o]
    return args + list(extra)


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    return out, train(cfg_for(), out, progress=False)


# --------------------------------------------------------------------------------------------------- lock
def test_two_trainings_on_one_folder_one_runs_and_matches_a_single_run(tmp_path):
    alone = tmp_path / "alone"  # the same command by itself (same thread count: CPU sums depend on it)
    assert subprocess.run(_args(alone), env=_env(), cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "run"
    procs = [subprocess.Popen(_args(out), env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, err in results]
    refused = next(err for rc, err in results if rc == 2)
    assert "is in use by pid" in refused and socket.gethostname() in refused and "Traceback" not in refused
    assert len(refused.strip().splitlines()) == 1
    assert _summary(out)["state_digest"] == _summary(alone)["state_digest"]


def test_lock_of_a_dead_process_is_reclaimed_with_a_message(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 1.0}))
    with caplog.at_level("WARNING", logger="repro.train"):
        s = train(cfg_for(), out, max_steps=1, progress=False)
    assert s["steps_done"] == 1 and "reclaimed the lock" in caplog.text and str(dead.pid) in caplog.text
    assert (out / ".lock").read_text() == ""  # released at the end


def test_lock_refuses_a_live_holder_in_process(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(ReproError, match=f"in use by pid {os.getpid()}"):
            # flock is per open file: a second lock from this very process is refused too
            RunLock(tmp_path / "run").acquire()
    RunLock(tmp_path / "run").acquire().release()  # free again


def test_an_out_that_is_a_file_is_one_line(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    res = subprocess.run(_args(target), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "is a file" in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------------ signals
def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while not predicate() and time.time() < deadline:
        time.sleep(0.05)
    assert predicate(), "timed out"


def test_ctrl_c_says_at_once_then_saves_and_exits_zero(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_args(out, "--checkpoint-every", "1"), env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: list_checkpoints(out / "checkpoints"))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Ctrl-C: the run will stop after this step and save (press Ctrl-C again to abort without saving)" in stderr
    assert "Traceback" not in stderr
    s = _summary(out)
    assert s["status"] == "stopped" and s["stop_reason"] == "signal"
    assert (out / "checkpoints" / f"ckpt-{s['steps_done']:08d}.pt").is_file()


def test_second_ctrl_c_aborts_without_traceback_keeping_checkpoints(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_args(out, "--checkpoint-every", "1"), env=_env(REPRO_SLOW_STEP="3"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(list_checkpoints(out / "checkpoints")) >= 1)
    kept = {p.name for p in list_checkpoints(out / "checkpoints")}
    time.sleep(0.5)  # inside the next step (each sleeps 3 s first)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "aborting without saving" in stderr
    remaining = {p.name for p in list_checkpoints(out / "checkpoints")}
    assert remaining and all(load_checkpoint(p) is not None for p in list_checkpoints(out / "checkpoints"))
    assert min(kept) in remaining or len(remaining) == 3  # nothing written was lost (keep_checkpoints=3)


def test_sigterm_during_start_up_is_a_clean_stop(tmp_path):
    """The lock file appears during start-up, before the data are loaded and the model is built."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_args(out), env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: (out / ".lock").is_file() and (out / ".lock").read_text())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    assert "SIGTERM: the run will stop" in stderr
    s = _summary(out)
    assert s["status"] == "stopped" and s["stop_reason"] == "signal" and s["steps_done"] == 0


@pytest.mark.parametrize("phase", ["_final_test", "_save_final"])
def test_signal_during_final_evaluation_or_save_finishes_cleanly(tmp_path, monkeypatch, phase, capsys):
    from repro.train.engine import Trainer

    real = getattr(Trainer, phase)

    def with_signal(self, *args):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the real method runs
        return real(self, *args)

    monkeypatch.setattr(Trainer, phase, with_signal)
    before = signal.getsignal(signal.SIGTERM)
    s = train(cfg_for(), tmp_path / "run", progress=False)
    assert s["status"] == "complete" and s["test_top1"] is not None
    assert "SIGTERM: the run will stop" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored


# ----------------------------------------------------------------------------------------- non-finite state
def test_diverging_run_never_keeps_a_poisoned_checkpoint(tmp_path):
    out = tmp_path / "run"
    over = ["train.lr=1e6", "train.warmup_epochs=0", "train.log_every=3"]
    with pytest.raises(ReproError) as err:
        train(cfg_for(*over), out, checkpoint_every=1, progress=False)
    msg = str(err.value)
    assert "became nan" in msg or "non-finite" in msg, msg
    assert "fp32" not in msg and "lower the learning rate" in msg  # fp32 advice only for mixed precision
    for path in list_checkpoints(out / "checkpoints"):
        state, why = read_checkpoint(path)
        assert state is not None, why
        assert not nonfinite_entries(state)
    # A rerun resumes from the newest finite checkpoint and says the same thing, not a resume error.
    with pytest.raises(ReproError) as again:
        train(cfg_for(*over), out, checkpoint_every=1, progress=False)
    assert str(again.value).split(";")[0] == msg.split(";")[0]


def test_non_finite_advice_fits_a_mixed_precision_run(tmp_path):
    with pytest.raises(ReproError, match=r"train\.precision=fp32"):
        train(cfg_for("train.lr=1e6", "train.warmup_epochs=0", "train.precision=bf16"), tmp_path / "r",
              checkpoint_every=1, progress=False)


def test_a_poisoned_checkpoint_from_an_older_version_is_skipped_and_set_aside(tmp_path, caplog):
    out = tmp_path / "run"
    train(cfg_for(), out, max_steps=4, checkpoint_every=2, progress=False)
    newest = list_checkpoints(out / "checkpoints")[0]
    state = torch.load(newest, weights_only=False)
    next(v for k, v in state["model"].items() if k.endswith("running_var")).fill_(float("inf"))
    buf = io.BytesIO()
    torch.save(state, buf)
    newest.write_bytes(seal(buf.getvalue()))
    with caplog.at_level("WARNING", logger="repro.train"):
        s = train(cfg_for(), out, max_steps=5, progress=False)
    assert "non-finite values" in caplog.text and s["steps_done"] == 5
    assert (out / "checkpoints" / (newest.name + ".bad")).is_file()


# ----------------------------------------------------------------------------------------- checksums
def test_checksum_lives_inside_the_checkpoint(tmp_path, caplog):
    out = tmp_path / "run"
    train(cfg_for(), out, max_steps=2, checkpoint_every=1, progress=False)
    newest = list_checkpoints(out / "checkpoints")[0]
    assert not newest.with_suffix(".pt.sha256").exists()
    data = bytearray(newest.read_bytes())
    assert verify_seal(bytes(data)) is True
    assert torch.load(newest, weights_only=False)["step"] == 2  # still an ordinary torch file
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    newest.write_bytes(bytes(data))
    state, why = read_checkpoint(newest)
    assert state is None and "checksum mismatch" in why


def test_a_checkpoint_without_checksum_is_verified_by_loading_and_said_so(tmp_path, caplog):
    path = tmp_path / "ckpt-00000001.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": 1}, path)
    with caplog.at_level("WARNING", logger="repro.train"):
        state = load_checkpoint(path)
    assert state["step"] == 1 and "carries no checksum" in caplog.text
    torch.save({"model": {"w": torch.tensor([float("nan")])}, "step": 1}, path)
    assert load_checkpoint(path) is None


def test_all_checkpoints_unreadable_restart_from_zero_and_keep_the_new_ones(tmp_path, caplog):
    out = tmp_path / "run"
    train(cfg_for(), out, max_steps=6, checkpoint_every=2, progress=False)
    for path in list_checkpoints(out / "checkpoints"):
        path.write_bytes(b"garbage")
    with caplog.at_level("WARNING", logger="repro.train"):
        s = train(cfg_for(), out, max_steps=3, checkpoint_every=1, progress=False)
    assert "training starts again from step 0" in caplog.text and s["resumes"] == 0
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"ckpt-{i:08d}.pt" for i in (3, 2, 1)]
    assert len(list((out / "checkpoints").glob("*.bad"))) == 3
    s = train(cfg_for(), out, max_steps=4, progress=False)
    assert s["resumes"] == 1 and s["steps_done"] == 4  # resumed from step 3, not from 0 again


# -------------------------------------------------------------------------------------------- full disk
def test_full_disk_during_a_save_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        if str(dst).endswith(".pt") and "ckpt-" in str(dst):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    with pytest.raises(ReproError) as err:
        train(cfg_for(), out, checkpoint_every=2, progress=False)
    msg = str(err.value)
    assert msg.startswith("no space left on ") and "while saving step 4" in msg
    assert "the checkpoint of step 2 is intact" in msg
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert _summary(out)["status"] == "stopped"


def test_temporaries_of_killed_saves_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    junk = [out / "checkpoints" / ".ckpt-00000009.pt.tmp4242", out / ".summary.json.tmp4242"]
    for p in junk:
        p.write_bytes(b"partial")
    train(cfg_for(), out, max_steps=1, progress=False)
    assert not any(p.exists() for p in junk)
