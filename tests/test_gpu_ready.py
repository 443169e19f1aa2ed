"""The loop a GPU needs, proved on CPU: no host transfer inside a step, resume across precisions and process
counts, torch.compile within its tolerance, and what a run reports while it trains (train records,
TensorBoard, progress lines, weights files, every session's environment)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from repro.config import load_config
from repro.errors import ReproError
from repro.train import train
from repro.train.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.train_limit=128", "train.epochs=2", "train.batch_size=16", "data.num_workers=0"]
HOST_TRANSFERS = {"item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"}


def cfg_for(*extra):
    return load_config("quickstart-teacher", overrides=SMALL + list(extra))


def records(out, kind):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == kind]


class HostTransfers(TorchFunctionMode):
    """Counts tensor -> host transfers (on a GPU each one waits for the device)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.paused = False
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if not self.paused and name in HOST_TRANSFERS:
            self.count += 1
            self.names.append(name)
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------------------- sync-free
def test_steady_state_steps_make_no_host_transfer(tmp_path, monkeypatch):
    """Mixup/cutmix, EMA, drop path, sparsity (masks re-applied every step), accumulation: zero transfers in a
    step; one per log_every window; evaluation counted apart (it accumulates on the device, one read at its end)."""
    counter = HostTransfers()
    steps, windows = [], []
    real_step, real_window, real_eval = Trainer._train_step, Trainer._end_window, Trainer._evaluate

    def counted(real, log):
        def wrapper(self, *args, **kwargs):
            before = counter.count
            with counter:
                out = real(self, *args, **kwargs)
            log.append(counter.count - before)
            return out
        return wrapper

    def data_uncounted(self, batches):
        def paused():
            while True:
                counter.paused = True
                try:
                    batch = next(batches)
                finally:
                    counter.paused = False
                yield batch
        return real_step(self, paused())

    evals: list[int] = []
    monkeypatch.setattr(Trainer, "_train_step", counted(data_uncounted, steps))
    monkeypatch.setattr(Trainer, "_end_window", counted(real_window, windows))
    monkeypatch.setattr(Trainer, "_evaluate", counted(real_eval, evals))
    cfg = cfg_for("train.accum_steps=2", "train.batch_size=8", "train.log_every=3", "train.mixup=0.8",
                  "train.cutmix=1.0", "train.ema_decay=0.9", "model.drop_path_rate=0.1", "sparse.sparsity=0.4",
                  "sparse.update_frequency=1000")
    s = train(cfg, tmp_path / "run", progress=False)
    assert s["status"] == "complete" and len(steps) == s["steps_total"] == 16
    assert sum(steps) == 0, counter.names
    assert all(n <= 1 for n in windows), windows
    # windows at steps 3, 6, 8 (epoch end), 9, 12, 15, 16 (epoch end); the post-loop call finds nothing left
    assert sum(windows) == 7 and sum(1 for n in windows if n) == 7
    assert len(evals) == 3  # epochs 1, 2 and the final test, counted apart (data loading included there)


def test_evaluation_reads_its_sums_once():
    from repro.train.evaluate import evaluate_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7))
    batches = [(torch.randn(5, 3, 2, 2), torch.randint(0, 7, (5,))) for _ in range(4)]
    expected = sum((model(x).argmax(1) == y).sum().item() for x, y in batches) / 20 * 100
    counter = HostTransfers()
    with counter:
        res = evaluate_model(model, batches, torch.device("cpu"))
    assert counter.count == 1 and res["n"] == 20 and res["top1"] == pytest.approx(expected)


def test_non_finite_loss_is_found_at_the_window_end_with_its_step(tmp_path, monkeypatch):
    from repro.train import engine

    real = engine.SupervisedLoss.forward

    def inf_at_step_5(self, *args, step=None):
        loss, parts = real(self, *args, step=step)
        return (loss * float("inf"), parts) if step == 5 else (loss, parts)

    monkeypatch.setattr(engine.SupervisedLoss, "forward", inf_at_step_5)
    with pytest.raises(ReproError, match="the loss became inf at step 5"):
        train(cfg_for("train.log_every=4"), tmp_path / "run", progress=False)


# ----------------------------------------------------------------------------------- across hardware
@pytest.mark.parametrize("first,then", [("fp32", "bf16"), ("bf16", "fp32")])
def test_other_precision_is_refused_in_one_line_or_forced(tmp_path, first, then):
    out = tmp_path / "run"
    train(cfg_for(f"train.precision={first}"), out, max_steps=2, progress=False)
    with pytest.raises(ReproError) as err:
        train(cfg_for(f"train.precision={then}"), out, progress=False)
    msg = str(err.value)
    assert f"trained in {first}" in msg and f"resolves train.precision to {then}" in msg
    assert f"--set train.precision={first}" in msg and "--force" in msg and "\n" not in msg
    s = train(cfg_for(f"train.precision={then}"), out, max_steps=3, force=True, progress=False)
    assert s["steps_done"] == 3 and s["precision"] == then
    assert [e["precision"] for e in s["sessions"]] == [first, then]


def test_other_global_batch_is_refused_naming_the_accumulation_that_keeps_it(tmp_path):
    out = tmp_path / "run"
    train(cfg_for("train.accum_steps=2"), out, max_steps=2, progress=False)
    with pytest.raises(ReproError, match=r"global batch of 32 .*--set train\.accum_steps=2"):
        train(cfg_for("train.accum_steps=1"), out, progress=False)
    # Same global batch another way (batch 32 x 1): continues.
    s = train(cfg_for("train.accum_steps=1", "train.batch_size=32"), out, max_steps=3, progress=False)
    assert s["steps_done"] == 3


def _trace_cmd(out, nproc, *extra):
    args = ["train", "--preset", "quickstart-teacher", "--out", str(out), "--no-progress"]
    for o in SMALL + ["sparse.sparsity=0"] + list(extra):
        args += ["--set", o]
    driver = str(ROOT / "tests" / "fixtures" / "trace_samples.py")
    if nproc == 1:
        return [sys.executable, driver, *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port",
            str(29600 + os.getpid() % 1000), driver, *args]


def _run_traced(out, trace, nproc, accum, *flags):
    trace.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "REPRO_TRACE": str(trace)}
    res = subprocess.run(_trace_cmd(out, nproc, f"train.accum_steps={accum}") + list(flags), env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]


def _steps(trace, batch=16):
    """The set of sample indices each optimizer step consumed, from per-rank traces (lines 'index')."""
    ranks = sorted(trace.glob("rank*.txt"))
    lists = [[int(x) for x in p.read_text().split()] for p in ranks]
    world = len(lists)
    per_step = batch * 32 // (batch * world) // batch  # micro-batches per step per rank (global batch 32)
    n_steps = len(lists[0]) // (batch * per_step)
    return [sorted(i for lst in lists for i in lst[s * batch * per_step:(s + 1) * batch * per_step])
            for s in range(n_steps)]


def test_two_processes_continue_on_one_with_accumulation_and_back(tmp_path):
    """Global batch 32 = 2 processes x 16 = 1 process x 16 x 2 accumulation: the samples of every step equal
    the uninterrupted run's, whichever way the run moves mid-epoch."""
    straight = tmp_path / "straight"
    _run_traced(tmp_path / "s", straight, 1, 2)
    expected = _steps(straight)
    assert len(expected) == 8 and all(len(s) == 32 for s in expected)

    _run_traced(tmp_path / "a", tmp_path / "a1", 2, 1, "--max-steps", "3")
    _run_traced(tmp_path / "a", tmp_path / "a2", 1, 2)
    assert _steps(tmp_path / "a1") + _steps(tmp_path / "a2") == expected

    _run_traced(tmp_path / "b", tmp_path / "b1", 1, 2, "--max-steps", "5")
    _run_traced(tmp_path / "b", tmp_path / "b2", 2, 1)
    assert _steps(tmp_path / "b1") + _steps(tmp_path / "b2") == expected
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [e["world_size"] for e in summary["sessions"]] == [1, 2]


# ------------------------------------------------------------------------------------------- compile
@pytest.mark.slow
def test_compiled_student_step_matches_eager_within_1e_5(tmp_path):
    over = ["model.name=l2s_convnext_micro", "sparse.sparsity=0", "train.log_every=1", "train.mixup=0",
            "train.cutmix=0", "model.drop_path_rate=0"]
    eager = train(cfg_for(*over), tmp_path / "eager", max_steps=2, progress=False)
    comp = train(cfg_for(*over, "train.compile=student"), tmp_path / "compiled", max_steps=2, progress=False)
    a, b = records(tmp_path / "eager", "train"), records(tmp_path / "compiled", "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
    assert comp["compile"] == "student" and comp["compile_seconds"] > 0 and eager["compile_seconds"] is None


def test_compile_setting_is_checked():
    with pytest.raises(ReproError, match="train.compile expects one of off, student, all"):
        train(cfg_for("train.compile=fast"), "/nonexistent/never-written", progress=False)


# ------------------------------------------------------------------------------- reporting while training
def test_train_records_tensorboard_weights_and_sessions(tmp_path):
    out = tmp_path / "run"
    train(cfg_for("train.log_every=4"), out, max_steps=6, progress=False)
    s = train(cfg_for("train.log_every=4"), out, progress=False)
    rows = records(out, "train")
    assert [r["step"] for r in rows] == [4, 8, 12, 16]  # the row at step 6 (the stop) was replaced on resume
    for key in ("epoch", "lr", "loss", "ce", "images_per_s", "data_wait", "peak_memory_mib", "nonfinite_losses"):
        assert key in rows[0], key
    assert 0 <= rows[-1]["data_wait"] <= 1 and rows[-1]["loss"] > 0
    assert [r["epoch"] for r in records(out, "eval")] == [1, 2]
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 2  # one per session, in the same TensorBoard run folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 8, 12, 16]
    assert "eval_val/top1" in acc.Tags()["scalars"]
    # Weights people can take away, with where they come from.
    assert s["weights_final"]["file"] == "weights-final.pt" and s["weights_final"]["is"] == s["final_is"]
    assert s["weights_best"]["split"] == "val" and s["weights_best"]["epoch"] == s["best_epoch"]
    from repro.models import create_model
    model = create_model("slak_micro", num_classes=10, img_size=32, pretrained_file=str(out / "weights-final.pt"))
    assert model is not None
    assert [e["first_step"] for e in s["sessions"]] == [0, 6] and s["env"] == s["sessions"][-1]


def test_progress_off_a_terminal_is_a_few_concise_lines(tmp_path):
    args = [sys.executable, "-m", "repro", "train", "--preset", "quickstart-teacher", "--out", str(tmp_path / "r")]
    for o in SMALL + ["train.log_every=5", "train.epochs=3", "sparse.sparsity=0"]:
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("step ")]
    assert "\r" not in res.stdout + res.stderr  # no carriage-return redraws in a log file
    assert 4 <= len(lines) <= 7, lines  # steps 5, 10, 15, 20, 24 (24 steps), plus at most a 60 s line
    assert lines[-1].startswith("step 24/24 | epoch 3 | loss ") and "img/s" in lines[-1]
