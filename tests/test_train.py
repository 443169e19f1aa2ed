"""The engine: exact resume (wherever it stops, kill -9 included), time budget, signals, corrupt checkpoints,
config refusal and two-process DDP, on tiny models over the embedded digits dataset."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro.config import load_config
from repro.errors import ReproError
from repro.report.runs import read_metrics
from repro.train import list_checkpoints, parse_duration, train

ROOT = Path(__file__).resolve().parents[1]

# 5 optimizer steps per epoch (320 training digits // 32 // 2), 2 epochs; sparsity, EMA, accumulation, mixup,
# RandAugment and random erasing on.
TEACHER = ["model.name=slak_micro", "data.train_limit=320", "train.epochs=2", "train.batch_size=32",
           "train.accum_steps=2",
           "train.lr=2e-3", "train.warmup_epochs=0.5", "train.ema_decay=0.9", "train.mixup=0.8",
           "train.cutmix=1.0", "data.randaugment=rand-m9-mstd0.5-inc1", "data.reprob=0.25",
           "sparse.sparsity=0.4", "sparse.update_frequency=3", "sparse.prune_rate=0.3", "model.drop_path_rate=0.1"]


def cfg_for(*overrides, preset="quickstart-teacher"):
    return load_config(preset, overrides=list(overrides))


def digest(run: Path) -> str:
    return json.loads((run / "summary.json").read_text())["state_digest"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted run of the resume configuration, shared by the resume tests."""
    out = tmp_path_factory.mktemp("straight") / "run"
    summary = train(cfg_for(*TEACHER), out, progress=False)
    assert summary["status"] == "complete"
    return out, summary


def test_straight_run_writes_everything(straight):
    out, s = straight
    assert s["steps_done"] == s["steps_total"] == 10 and s["epochs_done"] == 2
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()
    rows = read_metrics(out / "metrics.jsonl")  # the evaluation rows
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 10 and rows[0]["kind"] == "eval"
    assert s["eval_split"] == "val" and s["test_top1"] is not None
    assert 0 < s["params_nonzero"] < s["params_total"]  # 40% sparsity on the masked tensors
    assert s["top1_ema"] is not None and s["best_is"] in ("raw", "ema")
    assert s["env"]["torch"] == torch.__version__ and s["resumes"] == 0
    assert len(s["state_digest"]) == 64


def test_eval_default_weights_for_checkpoint_files_and_unfinished_runs(straight, tmp_path, caplog):
    """The run's newest checkpoint file is its final model (EMA here, as summary.json says); an earlier one is
    scored raw; a stopped run's weights come with a warning."""
    from repro.train import evaluate

    import shutil

    out, s = straight
    assert s["final_is"] == "ema"
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    newest = list_checkpoints(run / "checkpoints")[0]
    older = newest.with_name("ckpt-00000001.pt")
    shutil.copy(newest, older)
    assert evaluate(newest, split="test")["weights"] == "ema"
    assert evaluate(older, split="test")["weights"] == "raw"
    stopped = train(cfg_for(*TEACHER), tmp_path / "stopped", max_steps=2, progress=False)
    assert stopped["status"] == "stopped"
    with caplog.at_level("WARNING", logger="repro.train"):
        evaluate(tmp_path / "stopped", split="val")
    assert "is 'stopped' after 2 of 10 steps: these are intermediate weights" in caplog.text


def test_student_records_the_top1_of_the_teacher_weights_it_used(straight, tmp_path):
    out, s = straight
    student = train(cfg_for("train.epochs=1", "data.train_limit=128", "train.batch_size=32", "distill.method=kd",
                            f"distill.teacher={out}", preset="quickstart-student"),
                    tmp_path / "student", max_steps=1, progress=False)
    assert student["distill"]["teacher_top1"] == s["test_top1_ema"]  # the teacher loaded its EMA weights
    # The newest checkpoint file given directly loads the raw weights: their own number is recorded.
    newest = list_checkpoints(out / "checkpoints")[0]
    student = train(cfg_for("train.epochs=1", "data.train_limit=128", "train.batch_size=32", "distill.method=kd",
                            f"distill.teacher={newest}", preset="quickstart-student"),
                    tmp_path / "student-raw", max_steps=1, progress=False)
    assert s["test_top1_raw"] != s["test_top1_ema"]
    assert student["distill"]["teacher_top1"] == s["test_top1_raw"]


def test_complete_run_returns_before_loading_anything(straight, monkeypatch):
    """Running a finished run's command again (e.g. one Kaggle session too many) loads no data and builds no
    model; a changed config is refused from config.yaml, also before any data are loaded."""
    import repro.data

    out, s = straight

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded for a complete run")
    monkeypatch.setattr(repro.data, "build_data", no_data)
    assert train(cfg_for(*TEACHER), out, progress=False) == json.loads((out / "summary.json").read_text())
    with pytest.raises(ReproError, match="different setup"):
        train(cfg_for(*TEACHER, "train.lr=1e-3"), out, progress=False)


def test_eval_of_a_run_folder_scores_its_final_model(straight):
    """`repro eval RUN` (weights 'final') reproduces the test top-1 the run reported, EMA or raw alike."""
    from repro.train import evaluate

    out, s = straight
    res = evaluate(out, split="test")
    assert res["weights"] == s["final_is"] and res["split"] == "test"
    assert res["top1"] == pytest.approx(s["test_top1"], abs=1e-9)
    other = evaluate(out, split="test", use_ema=s["final_is"] == "raw")
    assert other["weights"] != res["weights"]


@pytest.mark.parametrize("stop_at", [1, 5, 7])
def test_resume_equals_straight(straight, tmp_path, stop_at):
    """Stopping after any step (an epoch end, mid-epoch, right after a sparse update) changes nothing."""
    out = tmp_path / "run"
    first = train(cfg_for(*TEACHER), out, max_steps=stop_at, progress=False)
    assert first["status"] == "stopped" and first["stop_reason"] == "max_steps"
    assert first["steps_done"] == stop_at
    second = train(cfg_for(*TEACHER), out, progress=False)
    assert second["status"] == "complete" and second["resumes"] == 1
    again = train(cfg_for(*TEACHER), out, progress=False)  # a complete run is left as it is
    assert again == json.loads((out / "summary.json").read_text()) and again["resumes"] == 1
    assert second["state_digest"] == straight[1]["state_digest"]
    assert second["top1"] == straight[1]["top1"] and second["test_top1"] == straight[1]["test_top1"]
    untimed = [[{k: v for k, v in r.items() if k not in ("images_per_s", "time_s")} for r in read_metrics(run)]
               for run in (out / "metrics.jsonl", straight[0] / "metrics.jsonl")]
    assert untimed[0] == untimed[1]  # the evaluation rows, train_loss included, are the same numbers


@pytest.fixture(scope="module")
def straight_device(tmp_path_factory):
    """The resume configuration with augmentation on the training device (the CPU here) instead of PIL."""
    out = tmp_path_factory.mktemp("straight-device") / "run"
    summary = train(cfg_for(*TEACHER, "data.augment_on=device"), out, progress=False)
    assert summary["status"] == "complete" and summary["augment_on"] == "device"
    return out, summary


def test_device_augmentation_resumes_bit_identically(straight, straight_device, tmp_path):
    out = tmp_path / "run"
    cfg = cfg_for(*TEACHER, "data.augment_on=device")
    assert train(cfg, out, max_steps=7, progress=False)["status"] == "stopped"
    second = train(cfg_for(*TEACHER, "data.augment_on=device"), out, progress=False)
    assert second["state_digest"] == straight_device[1]["state_digest"]
    # Both paths draw the same parameters and replay Pillow's arithmetic: on CPU the same weights, bit for bit.
    assert second["state_digest"] == straight[1]["state_digest"]
    assert straight[1]["augment_on"] == "cpu"


def test_device_augmentation_resumes_after_kill_9(straight_device, tmp_path):
    out = tmp_path / "run"
    args = _train_args(out, "--checkpoint-every", "2", "--set", "data.augment_on=device")
    killed = _cli(*args, env_extra={"REPRO_CRASH_AT": "3:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = _cli(*_train_args(out, "--set", "data.augment_on=device"))
    assert done.returncode == 0, done.stderr[-2000:]
    # the subprocesses run with the test process's thread settings, as the fixture did
    assert digest(out) == straight_device[1]["state_digest"]


def _cli(*args, env_extra=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "repro", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=300, **kw)


def _train_args(out, *extra):
    args = ["train", "--preset", "quickstart-teacher", "--out", str(out), "--no-progress"]
    for o in TEACHER:
        args += ["--set", o]
    return args + list(extra)


@pytest.mark.parametrize("crash_at", ["3:1", "8:0"])
def test_kill_9_inside_accumulation_then_resume(straight, tmp_path, crash_at):
    """SIGKILL between the two micro-batches of a step; the resumed run still ends bit-identical."""
    out = tmp_path / "run"
    killed = _cli(*_train_args(out, "--checkpoint-every", "2"), env_extra={"REPRO_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    step = int(crash_at.split(":")[0])
    assert list_checkpoints(out / "checkpoints")[0].name == f"ckpt-{step - step % 2:08d}.pt"
    done = _cli(*_train_args(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert digest(out) == straight[1]["state_digest"]


def test_corrupt_newest_checkpoint_is_skipped(straight, tmp_path, caplog):
    out = tmp_path / "run"
    train(cfg_for(*TEACHER), out, max_steps=6, checkpoint_every=2, progress=False)
    newest = list_checkpoints(out / "checkpoints")[0]
    assert newest.name == "ckpt-00000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated, as by a dying session
    summary = train(cfg_for(*TEACHER), out, progress=False)
    assert "checksum mismatch" in caplog.text
    assert summary["state_digest"] == straight[1]["state_digest"]


def test_time_budget_stops_cleanly_then_completes(tmp_path, monkeypatch):
    """On a simulated clock (each reading 0.25 s later) a 3 s budget ends mid-run, inside the budget."""
    from repro.train import TimeBudget

    ticks = iter(range(10 ** 9))
    monkeypatch.setattr(TimeBudget, "clock", staticmethod(lambda: 0.25 * next(ticks)))
    out = tmp_path / "run"
    over = ["train.epochs=2", "data.train_limit=320", "train.batch_size=32", "sparse.sparsity=0"]
    first = train(cfg_for(*over), out, time_budget=3, progress=False)
    assert first["status"] == "stopped" and first["stop_reason"] == "time_budget"
    assert 0 < first["steps_done"] < first["steps_total"]
    assert list_checkpoints(out / "checkpoints")[0].name == f"ckpt-{first['steps_done']:08d}.pt"
    monkeypatch.undo()
    second = train(cfg_for(*over), out, progress=False)
    assert second["status"] == "complete" and second["steps_done"] == second["steps_total"]
    assert second["resumes"] == 1


def test_time_budget_margin_grows_with_slow_saves():
    from repro.train import TimeBudget

    now = [0.0]
    budget = TimeBudget(100, margin=5)
    budget.clock = lambda: now[0]
    budget.start = 0.0
    now[0] = 90.0
    assert not budget.exhausted(step_seconds=4)  # 90 + 4 + 5 <= 100
    assert budget.exhausted(step_seconds=6)
    budget.record_save(4)  # a slow save: the margin becomes 8
    assert budget.exhausted(step_seconds=4)
    assert not TimeBudget(None).exhausted(1e9)


def test_sigterm_saves_and_exits_zero(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "repro", "train", "--preset", "quickstart-teacher",
                             "--out", str(out), "--no-progress", "--checkpoint-every", "1"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list_checkpoints(out / "checkpoints") and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stop_reason"] == "signal"
    assert (out / "checkpoints" / f"ckpt-{summary['steps_done']:08d}.pt").is_file()


def test_different_config_is_refused_unless_forced(tmp_path):
    out = tmp_path / "run"
    train(cfg_for("train.epochs=1", "data.train_limit=256"), out, max_steps=2, progress=False)
    with pytest.raises(ReproError) as err:
        train(cfg_for("train.epochs=1", "data.train_limit=256", "train.lr=1e-3"), out, progress=False)
    assert "train.lr" in str(err.value) and "--force" in str(err.value)
    summary = train(cfg_for("train.epochs=1", "data.train_limit=256", "train.lr=1e-3"), out, max_steps=3,
                    force=True, progress=False)
    assert summary["steps_done"] == 3


def test_distillation_resume_and_teacher_untouched(tmp_path):
    teacher_dir = tmp_path / "teacher"
    train(cfg_for("train.epochs=1", "sparse.sparsity=0.0", "data.train_limit=256"), teacher_dir, progress=False)
    ckpt_before = {p.name: p.read_bytes() for p in (teacher_dir / "checkpoints").iterdir()}
    over = ["train.epochs=1", "data.train_limit=256", "train.batch_size=32", "distill.method=nkd+fd",
            f"distill.teacher={teacher_dir}",
            "train.ema_decay=0.9"]
    straight = train(cfg_for(*over, preset="quickstart-student"), tmp_path / "a", progress=False)
    train(cfg_for(*over, preset="quickstart-student"), tmp_path / "b", max_steps=3, progress=False)
    resumed = train(cfg_for(*over, preset="quickstart-student"), tmp_path / "b", progress=False)
    assert resumed["state_digest"] == straight["state_digest"]
    assert straight["distill"]["method"] == "nkd+fd" and len(straight["distill"]["teacher_sha256"]) == 64
    ckpt = torch.load(list_checkpoints(tmp_path / "a" / "checkpoints")[0], weights_only=False)
    assert ckpt["criterion"] and all(k.startswith("fd.") for k in ckpt["criterion"])  # the FD projector
    assert not any("teacher" in k for k in ckpt["model"])
    assert {p.name: p.read_bytes() for p in (teacher_dir / "checkpoints").iterdir()} == ckpt_before


def test_missing_teacher_fails_before_writing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ReproError, match="teacher"):
        train(cfg_for("distill.teacher=" + str(tmp_path / "nope"), preset="quickstart-distill"), out,
              progress=False)
    assert not out.exists()


def test_class_count_mismatch_fails_before_writing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ReproError, match="10"):
        train(cfg_for("model.num_classes=100"), out, progress=False)
    assert not out.exists()


def test_non_finite_loss_stops_with_message(tmp_path, monkeypatch):
    out = tmp_path / "run"
    over = ("train.epochs=1", "data.train_limit=256", "train.batch_size=32")
    train(cfg_for(*over), out, max_steps=2, checkpoint_every=1, progress=False)
    from repro.train import engine

    real = engine.SupervisedLoss.forward

    def nan_after_step_3(self, *args, step=None):
        loss, parts = real(self, *args, step=step)
        return (loss * float("nan"), parts) if step >= 3 else (loss, parts)

    monkeypatch.setattr(engine.SupervisedLoss, "forward", nan_after_step_3)
    with pytest.raises(ReproError, match="nan at step 3"):
        train(cfg_for(*over), out, checkpoint_every=1, progress=False)
    assert list_checkpoints(out / "checkpoints")[0].name == "ckpt-00000003.pt"  # the last good one


def test_parse_duration():
    assert parse_duration("11h30m") == 41400 and parse_duration("45m") == 2700 and parse_duration(90) == 90
    assert parse_duration("1h 5m 3s") == 3903 and parse_duration(None) is None
    with pytest.raises(ReproError):
        parse_duration("soon")


def test_cli_errors_are_one_line(tmp_path):
    res = _cli("train", "--preset", "quickstart-teachr", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "quickstart-teacher" in res.stderr


def test_two_gloo_processes_train_and_resume(tmp_path):
    """torchrun with 2 CPU processes: stop by max-steps, resume, and match a straight 2-process run."""
    def run(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
               str(29500 + os.getpid() % 1000), "-m", "repro", "train", "--preset", "quickstart-teacher",
               "--out", str(out), "--no-progress", "--set", "train.epochs=3", "--set", "train.batch_size=32",
               "--set", "data.train_limit=256",
               "--set", "train.ema_decay=0.9", "--set", "sparse.update_frequency=4", *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=280)
        assert res.returncode == 0, res.stderr[-3000:]
        logs.append(res.stderr)
        return json.loads((out / "summary.json").read_text())

    logs = []
    a = run(tmp_path / "a", "--max-steps", "12")
    # Only rank 0 logs at INFO level: the run is announced once, not once per process.
    assert sum(line.startswith("training slak_micro") for line in logs[0].splitlines()) == 1, logs[0][-2000:]
    b = run(tmp_path / "b", "--max-steps", "5")
    assert b["status"] == "stopped" and b["env"]["world_size"] == 2
    b = run(tmp_path / "b", "--max-steps", "12")
    assert b["steps_done"] == 12 and b["resumes"] == 1
    assert b["state_digest"] == a["state_digest"]


def test_bf16_autocast_on_cpu_with_sparsity(tmp_path):
    """The mixed-precision path (autocast) trains with masks intact; fp16 + GradScaler is the same code on GPU."""
    s = train(cfg_for("train.precision=bf16", "train.epochs=1", "data.train_limit=128", "train.batch_size=32"),
              tmp_path / "run", max_steps=2, progress=False)
    assert s["precision"] == "bf16" and s["steps_done"] == 2
    assert s["params_nonzero"] < s["params_total"]


def test_eval_robustness_folders_on_the_1000_class_head(tmp_path):
    """ImageNet-A/-R style folders (a subset of wnids) are scored on the matching head columns only."""
    from repro.data.folders import imagenet_wnids
    from repro.data.synthetic import write_fake_imagefolder
    from repro.models import create_model
    from repro.train import evaluate

    wnids = imagenet_wnids()
    chosen = [wnids[3], wnids[500], wnids[999]]
    write_fake_imagefolder(tmp_path / "imagenet-r", chosen, per_class=2, size=32)
    torch.manual_seed(0)
    model = create_model("l2s_convnext_micro", num_classes=1000, img_size=32)
    torch.save({"model": model.state_dict()}, tmp_path / "released.pth")
    res = evaluate(tmp_path / "released.pth", model_name="l2s_convnext_micro", split="robustness",
                   data_overrides=[f"data.robustness_root={tmp_path}", "data.img_size=32", "data.num_workers=0"])
    r = res["sets"]["imagenet-r"]
    assert r["n"] == 6 and 0 <= r["top1"] <= 100
    # The same number by hand: argmax over the three chosen classes' logits.
    from repro.data import build_robustness_sets
    from repro.config import DataConfig
    ds = build_robustness_sets(DataConfig(robustness_root=str(tmp_path), img_size=32))["imagenet-r"]
    assert list(ds.class_index_map) == [3, 500, 999]
    model.eval()
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        y = torch.tensor([ds[i][1] for i in range(len(ds))])
        hits = model(x)[:, [3, 500, 999]].argmax(1).eq(y).sum().item()
    assert r["top1"] == pytest.approx(100 * hits / 6)


def test_eval_released_checkpoint_on_imagenet_val_alone(tmp_path, caplog):
    """A released 1000-class checkpoint scores on an ImageNet val/ folder without a train/ folder; a val/ with
    only some of the classes is scored on their columns, with a warning that the number is not comparable."""
    from repro.data.folders import imagenet_wnids
    from repro.data.synthetic import write_fake_imagefolder
    from repro.models import create_model
    from repro.train import evaluate

    wnids = imagenet_wnids()
    write_fake_imagefolder(tmp_path / "imagenet" / "val", [wnids[0], wnids[7]], per_class=2, size=32)
    torch.manual_seed(0)
    torch.save({"model": create_model("l2s_convnext_micro", num_classes=1000, img_size=32).state_dict()},
               tmp_path / "released.pth")
    with caplog.at_level("WARNING", logger="repro.train"):
        res = evaluate(tmp_path / "released.pth", model_name="l2s_convnext_micro",
                       data_overrides=["data.name=imagenet", f"data.root={tmp_path / 'imagenet'}",
                                       "data.img_size=32", "data.num_workers=0"])
    assert res["split"] == "test" and res["dataset"] == "imagenet" and res["n"] == 4
    assert res["top1"] is not None and 0 <= res["top1"] <= 100
    assert "holds 2 of the 1000 ImageNet classes" in caplog.text and "not comparable" in caplog.text


def test_fused_optimizer_by_default_and_close_to_the_loop(tmp_path):
    """train.fused_optimizer (default on) runs PyTorch's fused AdamW; off, the per-tensor loop. Same recipe, same
    weights up to float rounding after a few steps."""
    from repro.train.engine import Trainer

    common = ("train.epochs=1", "data.train_limit=128", "train.batch_size=32", "train.lr=2e-3")
    runs = {}
    for fused in (True, False):
        trainer = Trainer(cfg_for(*common, f"train.fused_optimizer={str(fused).lower()}"), tmp_path / str(fused),
                          max_steps=3, progress=False)
        assert all(bool(g.get("fused")) is fused for g in trainer.optimizer.param_groups)
        summary = trainer.run()
        assert summary["steps_done"] == 3
        runs[fused] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert not torch.equal(runs[True], runs[False])  # two implementations really ran
    torch.testing.assert_close(runs[True], runs[False], rtol=0, atol=1e-5)


@pytest.mark.parametrize("override, allowed, found", [
    ("train.eval_every=0", "1 or more", "0"), ("train.batch_size=0", "1 or more", "0"),
    ("train.accum_steps=0", "1 or more", "0"), ("train.lr=-1", "above 0", "-1.0"),
    ("train.base_lr=0", "above 0", "0.0"), ("train.min_lr=-1e-6", "0 or more", "-1e-06"),
    ("train.label_smoothing=2", "[0, 1)", "2.0"), ("data.num_workers=-1", "0 or more", "-1"),
    ("train.ema_decay=1.5", "[0, 1)", "1.5"), ("train.clip_grad=-1", "above 0", "-1.0"),
    ("train.warmup_epochs=-1", "0 or more", "-1.0"), ("train.epochs=0", "1 or more", "0"),
    ("train.keep_checkpoints=0", "resuming needs at least one checkpoint", "0"),
    ("train.mixup=-0.2", "0 or more", "-0.2"), ("train.cutmix=-1", "0 or more", "-1.0"),
    ("train.mixup_prob=1.5", "[0, 1]", "1.5"), ("train.mixup_switch_prob=-0.1", "[0, 1]", "-0.1"),
    ("train.momentum=1", "[0, 1)", "1.0"), ("train.lr=.nan", "above 0", "nan"),
    ("sparse.sparsity=1", "[0, 1)", "1.0"), ("sparse.update_frequency=0", "1 or more", "0"),
    ("sparse.prune_rate=1.5", "(0, 1]", "1.5"), ("distill.temperature=0", "above 0", "0.0"),
    ("model.drop_path_rate=1", "[0, 1)", "1.0"),
])
def test_out_of_range_config_is_refused_with_key_value_and_suggestion(override, allowed, found):
    key = override.split("=")[0]
    with pytest.raises(ReproError) as err:
        cfg_for(override)
    message = str(err.value)
    assert "\n" not in message and allowed in message
    assert f"{key} must be" in message and f"found {found} " in message and f"--set {key}=" in message


def test_optional_numbers_accept_null():
    cfg = cfg_for("train.lr=null", "train.clip_grad=null", "distill.temperature=null", "data.train_limit=null")
    assert cfg.train.lr is None and cfg.train.clip_grad is None


def test_out_of_range_config_fails_before_anything_is_built(tmp_path):
    """A config changed after loading (as in a notebook) is checked again by the engine, before data or writing."""
    cfg = cfg_for("train.epochs=1", "data.train_limit=128")
    cfg.train.eval_every = 0
    cfg.data.num_workers = -1
    out = tmp_path / "run"
    with pytest.raises(ReproError, match="train.eval_every must be 1 or more.*data.num_workers|data.num_workers.*"
                                         "train.eval_every"):
        train(cfg, out, progress=False)
    assert not out.exists()


def test_every_preset_loads_and_validates():
    from importlib import resources
    from repro.config import PRESET_PACKAGE, list_presets

    bases = sorted(p.name[:-5] for p in resources.files(PRESET_PACKAGE).iterdir()
                   if p.name.startswith("_") and p.name.endswith(".yaml"))
    assert bases and list_presets()
    for name in list_presets() + bases:
        load_config(name).validate()


def test_missing_resume_from_folder_is_refused(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    out = tmp_path / "run"
    with pytest.raises(ReproError, match=f"--resume-from {missing}: .*found nothing"):
        train(cfg_for("train.epochs=1", "data.train_limit=128"), out, resume_from=[missing], progress=False)
    assert not out.exists()
    res = _cli("train", "--preset", "quickstart-teacher", "--out", str(out), "--resume-from", str(missing))
    assert res.returncode == 2 and "Traceback" not in res.stderr and str(missing) in res.stderr


def test_max_steps_stop_says_how_to_continue(tmp_path, caplog):
    caplog.set_level("INFO", logger="repro.train")
    over = ("train.epochs=1", "data.train_limit=128", "train.batch_size=32", "sparse.sparsity=0")
    out = tmp_path / "run"
    s = train(cfg_for(*over), out, max_steps=1, progress=False)
    assert s["status"] == "stopped" and s["stop_reason"] == "max_steps"
    stops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopped")]
    assert stops == ["stopped (max_steps) at step 1/4; to continue, run again without --max-steps "
                     "(max_steps in Python) or with a value above 1"]
    assert train(cfg_for(*over), out, max_steps=2, progress=False)["steps_done"] == 2  # as the hint says


def test_forced_resume_notes_the_differences_once(tmp_path, caplog):
    over = ("train.epochs=1", "data.train_limit=128", "train.batch_size=32", "sparse.sparsity=0")
    out = tmp_path / "run"
    train(cfg_for(*over), out, max_steps=1, progress=False)
    caplog.clear()
    train(cfg_for(*over, "train.lr=1e-3"), out, max_steps=2, force=True, progress=False)
    notes = [r.getMessage() for r in caplog.records if "--force" in r.getMessage()]
    assert len(notes) == 1 and "train.lr" in notes[0]


def test_min_lr_above_peak_lr_warns(tmp_path, caplog):
    from repro.train.engine import Trainer

    Trainer(cfg_for("train.epochs=1", "data.train_limit=128", "train.lr=1e-3", "train.min_lr=1e-2"),
            tmp_path / "run", progress=False)
    assert "train.min_lr 1.00e-02 is above the peak learning rate 1.00e-03" in caplog.text
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".lock"]  # held, nothing written yet


@pytest.mark.filterwarnings("ignore:cifar100 files")  # the generated CIFAR files are not the official ones
def test_eval_with_the_wrong_model_or_dataset_says_what_to_pass(tmp_path):
    """A checkpoint evaluated as another model, on a dataset with other classes, or with --ema when the run kept
    no EMA weights: one line naming what it was trained as and what to pass, no traceback."""
    from repro.data.synthetic import write_fake_cifar
    from repro.train import evaluate

    out = tmp_path / "run"
    train(cfg_for("train.epochs=1", "data.train_limit=128"), out, progress=False)  # slak_micro, no EMA
    with pytest.raises(ReproError) as err:
        evaluate(out, model_name="l2s_convnext_micro")
    assert "trained as slak_micro with 10 classes (digits), but l2s_convnext_micro" in str(err.value)
    assert "pass --model slak_micro" in str(err.value)
    write_fake_cifar(tmp_path / "data", num_classes=100, train_per_class=2, test_per_class=1)
    with pytest.raises(ReproError, match=r"slak_micro with 100 classes \(cifar100\) was asked; evaluate on a "
                                         r"dataset with 10 classes \(--set data.name=digits"):
        evaluate(out, data_overrides=["data.name=cifar100", f"data.root={tmp_path / 'data'}"])
    with pytest.raises(ReproError, match=r"no EMA weights: the run was trained with train.ema_decay=0; "
                                         r"evaluate without --ema"):
        evaluate(out, use_ema=True)
    res = _cli("eval", "--checkpoint", str(list_checkpoints(out / "checkpoints")[0]), "--model", "l2s_convnext_micro")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "pass --model slak_micro" in res.stderr


def test_unfinished_teacher_run_is_refused_before_writing(tmp_path):
    """A teacher run stopped part-way is not distilled from as a run folder; its checkpoint file still is."""
    teacher_dir = tmp_path / "teacher"
    stopped = train(cfg_for("train.epochs=1", "data.train_limit=256", "sparse.sparsity=0.0"), teacher_dir,
                    max_steps=1, progress=False)
    assert stopped["status"] == "stopped" and stopped["steps_total"] == 4
    out = tmp_path / "student"
    over = ["train.epochs=1", "data.train_limit=128"]
    with pytest.raises(ReproError) as err:
        train(cfg_for(*over, f"distill.teacher={teacher_dir}", preset="quickstart-distill"), out, progress=False)
    newest = teacher_dir / "checkpoints" / "ckpt-00000001.pt"
    assert f"the teacher run at {teacher_dir} is 'stopped' (max_steps) after 1 of 4 steps" in str(err.value)
    assert f"the newest is {newest}" in str(err.value)
    assert not out.exists()
    summary = train(cfg_for(*over, f"distill.teacher={newest}", preset="quickstart-distill"), out, max_steps=1,
                    progress=False)
    assert summary["distill"]["teacher_path"] == str(newest.resolve())


def test_a_section_given_as_a_value_says_it_needs_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: _recipe-cifar\ntrain: [1, 2]\n")
    with pytest.raises(ReproError, match=r"config section 'train' expects a mapping of its keys"):
        load_config(config_file=bad)
    with pytest.raises(ReproError, match=r"config section 'sparse' expects a mapping.*--set sparse.KEY=VALUE"):
        cfg_for("sparse=0.4")
