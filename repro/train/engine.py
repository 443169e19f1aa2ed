"""The training engine: teacher training, student training and distillation in one loop that resumes exactly.

The loop reads like the algorithm: get batch, forward (student and, when distilling, the frozen teacher),
loss, backward, optimizer step, sparse-mask step, EMA, log, maybe evaluate, maybe checkpoint. Everything a
restart needs lives in `Trainer.state_dict()`. Randomness is re-seeded from (seed, rank, micro-step) before
every micro-batch and each sample's augmentation from (seed, epoch, position), so a run resumed from any
checkpoint replays the same numbers as one that never stopped.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import random
import signal
import socket
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import __version__
from ..config import RunConfig, config_differences
from ..device import in_kaggle, kaggle_root, resolve_device, resolve_precision
from ..errors import ReproError
from .budget import StopSignal, TimeBudget, parse_duration
from .checkpoint import (
    atomic_write_text,
    candidate_folders,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    run_of,
    save_checkpoint,
    state_digest,
)
from .distributed import any_rank, barrier, cleanup, init_distributed
from .evaluate import autocast_context, eval_loader, evaluate_model

log = logging.getLogger("repro.train")
_CRASH_AT = os.environ.get("REPRO_CRASH_AT")


def step_seed(seed: int, rank: int, micro_step: int) -> int:
    """A 63-bit seed for one micro-batch, independent of how many draws came before it."""
    digest = hashlib.sha256(f"repro:{seed}:{rank}:{micro_step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global generators' states (python, numpy, torch, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The source tree's git commit, when it is a checkout (asked once per process)."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class SupervisedLoss(nn.Module):
    """Cross-entropy with hard (label-smoothed) or soft (mixup/cutmix) targets, in the criterion interface."""

    uses_features = False

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, student_logits, student_map, teacher_logits, teacher_map, target, step=None):
        if target.ndim == 2:
            loss = torch.sum(-target * torch.log_softmax(student_logits, dim=-1), dim=-1).mean()
        else:
            loss = nn.functional.cross_entropy(student_logits, target, label_smoothing=self.label_smoothing)
        return loss, {"ce": loss.detach()}


class TrainModule(nn.Module):
    """The student and the loss's own parameters (the FD projector) behind one forward, so DDP syncs both."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images, target, teacher_logits=None, teacher_map=None, step=None):
        if getattr(self.criterion, "uses_features", False):
            from ..models import logits_and_features
            logits, fmap = logits_and_features(self.model, images)
        else:
            logits, fmap = self.model(images), None
        loss, parts = self.criterion(logits.float(), None if fmap is None else fmap.float(),
                                     None if teacher_logits is None else teacher_logits.float(),
                                     None if teacher_map is None else teacher_map.float(), target, step=step)
        return loss, parts


class Trainer:
    """Builds a run from its config and trains it to completion or to a clean stop.

    Args:
        cfg: the run's configuration (resolved: num_classes is filled in from the data).
        out_dir: the run folder (config.yaml, metrics.jsonl, checkpoints/, summary.json).
        max_steps: stop (resumably) after this many optimizer steps in total; the schedule is unchanged.
        time_budget: this session's wall-clock budget (seconds or "11h30m"); stop leaves room for the save.
        checkpoint_every: save every N optimizer steps (default: at epoch ends, at most every 10 minutes).
        device: cpu, cuda or cuda:N (default: cuda when available).
        resume_from: extra read-only run folders to look for checkpoints in (each must exist).
        force: resume even when the config differs from the checkpoint's.
        progress: show a tqdm bar.
    """

    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, max_steps: int | None = None,
                 time_budget: str | float | None = None, checkpoint_every: int | None = None,
                 device: str | None = None, resume_from: Iterable[str | Path] = (), force: bool = False,
                 progress: bool = True):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(out_dir)
        self.max_steps = max_steps
        self.budget = TimeBudget(parse_duration(time_budget))
        self.checkpoint_every = checkpoint_every
        self.resume_from = [Path(p) for p in resume_from]
        self.force = force
        self.progress = progress
        if max_steps is not None and max_steps < 0:
            raise ReproError(f"--max-steps must be 0 or more, found {max_steps}")
        if checkpoint_every is not None and checkpoint_every <= 0:
            raise ReproError(f"--checkpoint-every must be a positive number of steps, found {checkpoint_every}")
        for folder in self.resume_from:
            if not folder.is_dir():
                found = "a file" if folder.exists() else "nothing"
                raise ReproError(f"--resume-from {folder}: expected a run folder (or its checkpoints/ folder), found "
                                 f"{found} there; fix the path or leave the option out")
        self._forced_diffs: set[str] = set()
        self.device = resolve_device(device)
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self._build()

    # ----------------------------------------------------------------------------------------------- set-up
    def _build(self) -> None:
        from ..data import ResumableSampler, build_data, build_loader
        from ..models import count_params, create_model

        cfg, tc = self.cfg, self.cfg.train
        self.data = build_data(cfg.data, num_classes_expected=cfg.model.num_classes)
        cfg.model.num_classes = self.data.num_classes
        world = self.dist.world_size
        per_step = tc.batch_size * world * tc.accum_steps
        self.steps_per_epoch = len(self.data.train) // (tc.batch_size * world) // tc.accum_steps
        if self.steps_per_epoch == 0:
            raise ReproError(f"the training set has {len(self.data.train)} images, fewer than one optimizer step "
                             f"needs ({tc.batch_size} x {world} processes x {tc.accum_steps} accumulation); "
                             "lower train.batch_size or train.accum_steps")
        self.steps_total = tc.epochs * self.steps_per_epoch
        self.lr = tc.lr if tc.lr is not None else tc.base_lr * per_step / tc.base_batch
        if tc.min_lr > self.lr:
            log.warning("train.min_lr %.2e is above the peak learning rate %.2e, so the cosine schedule rises "
                        "instead of decaying; lower train.min_lr (e.g. %.0e)", tc.min_lr, self.lr, self.lr / 1000)

        # The teacher comes first: a wrong teacher must fail before anything is written.
        self.teacher = None
        if cfg.distill.method:
            self.teacher = self._build_teacher()

        seed_all(cfg.seed)
        model_kwargs = dict(cfg.model.kwargs)
        if cfg.model.pretrained_file:
            model_kwargs["pretrained_file"] = cfg.model.pretrained_file
        model = create_model(cfg.model.name, num_classes=self.data.num_classes,
                             drop_path_rate=cfg.model.drop_path_rate, img_size=cfg.data.img_size, **model_kwargs)
        if tc.sync_bn and self.dist.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if tc.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.criterion = self._build_criterion().to(self.device)
        self.module = TrainModule(model, self.criterion)

        from timm.optim import create_optimizer_v2
        opt_kwargs = {"momentum": tc.momentum} if tc.opt == "sgd" else {}
        if tc.opt not in ("adamw", "sgd"):
            raise ReproError(f"train.opt expects adamw or sgd, found '{tc.opt}'")
        if tc.fused_optimizer and self.device.type in ("cpu", "cuda"):
            opt_kwargs["fused"] = True
        self.optimizer = create_optimizer_v2(self.module, opt=tc.opt, lr=self.lr, weight_decay=tc.weight_decay,
                                             **opt_kwargs)
        from timm.scheduler import CosineLRScheduler
        warmup = min(int(round(tc.warmup_epochs * self.steps_per_epoch)), self.steps_total - 1)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=max(1, self.steps_total - warmup),
                                           lr_min=tc.min_lr, warmup_t=warmup, warmup_lr_init=0.0,
                                           warmup_prefix=True, t_in_epochs=False)
        self.scheduler.step_update(0)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

        # Data: one ordering for all ranks, each rank its share; resumable to any position.
        self.sampler = ResumableSampler(len(self.data.train), seed=cfg.seed, shuffle=True, rank=self.dist.rank,
                                        world_size=world, drop_last=False)
        self.loader = build_loader(self.data.train, batch_size=tc.batch_size, sampler=self.sampler,
                                   num_workers=cfg.data.num_workers, seed=cfg.seed, device_type=self.device.type,
                                   drop_last=True)
        eval_bs = cfg.data.eval_batch_size or tc.batch_size
        self.val_loader = eval_loader(self.data.val, eval_bs, cfg.data.num_workers, self.dist, self.device.type)
        self.test_loader = (eval_loader(self.data.test, eval_bs, cfg.data.num_workers, self.dist,
                                        self.device.type) if self.data.eval_split == "val" else None)

        self.mixup = None
        if tc.mixup > 0 or tc.cutmix > 0:
            from timm.data import Mixup
            self.mixup = Mixup(mixup_alpha=tc.mixup, cutmix_alpha=tc.cutmix, prob=tc.mixup_prob,
                               switch_prob=tc.mixup_switch_prob, label_smoothing=tc.label_smoothing,
                               num_classes=self.data.num_classes)
            if tc.batch_size % 2:
                raise ReproError(f"mixup/cutmix need an even train.batch_size, found {tc.batch_size}")

        self.sparsity = None
        if cfg.sparse.sparsity > 0:
            self.sparsity = self._build_sparsity()
        self.ema = None
        if tc.ema_decay > 0:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=tc.ema_decay)
        counts = count_params(model)
        self.params_total, self.params_nonzero = counts["total"], counts["nonzero"]

        self.ddp = DDP(self.module, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None) \
            if self.dist.enabled else self.module

        # Mutable run state (all of it goes into checkpoints).
        self.step = 0
        self.elapsed_before = 0.0
        self.resumes = 0
        self.best = {"top1": None, "epoch": None, "is": None}
        self.last_eval: dict[str, Any] = {}
        self.epoch_loss = [0.0, 0]

    def _build_teacher(self):
        from ..distill import load_teacher
        dc = self.cfg.distill
        if not dc.teacher:
            raise ReproError(f"distill.method is '{dc.method}' but no teacher is set; pass "
                             "--set distill.teacher=RUN_DIR_OR_CHECKPOINT (or distill.method=null)")
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        return load_teacher(dc.teacher, model_name=dc.teacher_model, num_classes=self.data.num_classes,
                            img_size=self.cfg.data.img_size, device=self.device, deploy=dc.teacher_deploy,
                            channels_last=self.cfg.train.channels_last, amp_dtype=amp,
                            student_mean=self.data.mean, student_std=self.data.std,
                            **self._teacher_normalisation(Path(dc.teacher)))

    @staticmethod
    def _teacher_normalisation(source: Path) -> dict:
        """The mean/std a teacher run of this package was trained with (its inputs are re-normalised to them)."""
        cfg_file = source / "config.yaml" if source.is_dir() else source.parent.parent / "config.yaml"
        if not cfg_file.is_file():
            return {}
        from ..data.transforms import dataset_mean_std
        name = ((yaml.safe_load(cfg_file.read_text()) or {}).get("data") or {}).get("name")
        if not name:
            return {}
        mean, std = dataset_mean_std(name)
        return {"mean": mean, "std": std}

    def _build_criterion(self) -> nn.Module:
        dc, tc = self.cfg.distill, self.cfg.train
        smoothing = tc.label_smoothing if not (tc.mixup > 0 or tc.cutmix > 0) else 0.0
        if not dc.method:
            return SupervisedLoss(smoothing)
        from ..distill import build_distill_loss
        from ..models import feature_channels
        kwargs: dict[str, Any] = {"temperature": dc.temperature, "alpha": dc.alpha, "beta": dc.beta}
        if "fd" in dc.method.split("+"):
            kwargs.update(student_channels=feature_channels(self.model), teacher_channels=self.teacher.channels,
                          fd_weight=dc.fd_weight, fd_loss=dc.fd_loss)
        if dc.method == "fd":
            kwargs["label_smoothing"] = smoothing
        return build_distill_loss(dc.method, **{k: v for k, v in kwargs.items() if v is not None})

    def _snip_batch(self):
        """The first batch of the epoch-0 order on ONE process, so every rank scores the same images."""
        from ..data import ResumableSampler
        order = ResumableSampler(len(self.data.train), seed=self.cfg.seed, shuffle=True)
        order.set_epoch(0)
        items = [self.data.train[i] for i in order.epoch_order()[: self.cfg.train.batch_size]]
        x = torch.stack([it[0] for it in items]).to(self.device)
        y = torch.as_tensor([int(it[1]) for it in items], device=self.device)
        return x, y

    def _build_sparsity(self):
        from ..sparse import DynamicSparsity
        sc = self.cfg.sparse
        state = rng_state()
        seed_all(step_seed(self.cfg.seed, 0, -1))
        init_batch = self._snip_batch() if sc.init == "snip" else None
        set_rng_state(state)
        return DynamicSparsity(self.model, self.optimizer, sparsity=sc.sparsity, init=sc.init,
                               update_frequency=sc.update_frequency, prune_rate=sc.prune_rate, growth=sc.growth,
                               prune=sc.prune, layers=sc.layers, total_steps=self.steps_total, seed=self.cfg.seed,
                               init_batch=init_batch, min_prune_rate=sc.min_prune_rate,
                               regrow_pruned=sc.regrow_pruned, dense_cutoff=sc.dense_cutoff)

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this run is."""
        return {
            "format": "repro-checkpoint-1",
            "version": __version__,
            "config": self.cfg.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "model_ema": self.ema.module.state_dict() if self.ema is not None else None,
            "sparsity": self.sparsity.state_dict() if self.sparsity is not None else None,
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "best": dict(self.best),
            "last_eval": dict(self.last_eval),
            "epoch_loss": list(self.epoch_loss),
            "elapsed": self.elapsed_before + self.budget.elapsed(),
            "resumes": self.resumes,
            "teacher": self.teacher.identity() if self.teacher is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict() (the inverse of state_dict)."""
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("model_ema") is not None:
            self.ema.module.load_state_dict(state["model_ema"])
        if self.sparsity is not None and state.get("sparsity") is not None:
            self.sparsity.load_state_dict(state["sparsity"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.best = dict(state["best"])
        self.last_eval = dict(state.get("last_eval") or {})
        self.epoch_loss = list(state["epoch_loss"])
        self.elapsed_before = float(state["elapsed"])
        self.resumes = int(state["resumes"]) + 1
        self.scheduler.step_update(self.step)

    # ---------------------------------------------------------------------------------------------- resume
    def _check_compatible(self, saved_cfg: dict, teacher: dict | None) -> list[str]:
        diffs = config_differences(saved_cfg, self.cfg)
        if self.teacher is not None and teacher and teacher.get("sha256") != self.teacher.identity().get("sha256"):
            diffs.append(f"teacher weights: sha256 {str(teacher.get('sha256'))[:12]} -> "
                         f"{str(self.teacher.identity().get('sha256'))[:12]}")
        return diffs

    def _refuse_or_force(self, diffs: list[str], where: Path) -> None:
        if diffs and not self.force:
            raise ReproError(
                f"{where} holds a run with a different setup, so resuming would mix two experiments:\n  "
                + "\n  ".join(diffs) + "\nUse another --out folder, or --force to resume anyway.")
        new = [d for d in diffs if d not in self._forced_diffs]
        if new:  # config.yaml and the checkpoint usually show the same differences: say them once
            log.warning("resuming despite config differences (--force): %s", "; ".join(new))
            self._forced_diffs.update(new)

    def _resume(self) -> Path | None:
        saved_cfg = self.out / "config.yaml"
        if saved_cfg.is_file():
            self._refuse_or_force(self._check_compatible(yaml.safe_load(saved_cfg.read_text()) or {}, None),
                                  self.out)
        kaggle_input = kaggle_root() / "input" if in_kaggle() else None
        folders = candidate_folders(self.out, self.resume_from, kaggle_input)
        own_or_asked = {self.out / "checkpoints"} | {p / "checkpoints" for p in self.resume_from} \
            | set(self.resume_from)
        candidates = []
        for folder in folders:
            if folder not in own_or_asked:
                cfg_file = folder.parent / "config.yaml"
                if not cfg_file.is_file():
                    continue
                if config_differences(yaml.safe_load(cfg_file.read_text()) or {}, self.cfg):
                    continue  # another run's outputs attached to this session
            candidates.extend(list_checkpoints(folder))
        candidates.sort(key=checkpoint_step, reverse=True)
        for path in candidates:
            state = load_checkpoint(path, map_location="cpu")
            if state is None:
                continue
            if state.get("format") != "repro-checkpoint-1":
                log.warning("skipping %s: not a training checkpoint of this package", path)
                continue
            self._refuse_or_force(self._check_compatible(state["config"], state.get("teacher")), path)
            self.load_state_dict(state)
            self._carry_history(path.parent.parent)
            log.info("resumed from %s at step %d/%d", path, self.step, self.steps_total)
            return path
        return None

    def _carry_history(self, source_run: Path) -> None:
        """Resuming from another folder (e.g. the previous Kaggle session's output): bring its metrics along."""
        mine, theirs = self.out / "metrics.jsonl", source_run / "metrics.jsonl"
        if self.dist.is_main and source_run.resolve() != self.out.resolve() and theirs.is_file() \
                and not mine.is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(mine, theirs.read_text())

    # ------------------------------------------------------------------------------------------- outputs
    def _write_json(self, name: str, data: dict) -> None:
        atomic_write_text(self.out / name, json.dumps(data, indent=2, default=float) + "\n")

    def _truncate_metrics(self) -> None:
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.step]
        atomic_write_text(path, "".join(line + "\n" for line in keep))

    def _save(self) -> None:
        t0 = time.monotonic()
        if self.dist.is_main:
            save_checkpoint(self.out, self.step, self.state_dict(), keep=self.cfg.train.keep_checkpoints)
            self._write_json("summary.json", self.summary(status="stopped", stop_reason="checkpoint"))
        barrier(self.dist)
        self.budget.record_save(time.monotonic() - t0)
        self._last_save = time.monotonic()

    def summary(self, status: str, stop_reason: str | None) -> dict:
        """The run's summary.json content (the single source every table and figure is computed from)."""
        import timm
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        le = self.last_eval
        teacher = None
        if self.teacher is not None:
            ident = self.teacher.identity()
            teacher = {"method": self.cfg.distill.method, "teacher_model": ident.get("model_name"),
                       "teacher_path": ident.get("path"), "teacher_sha256": ident.get("sha256"),
                       "teacher_top1": self._teacher_top1()}
        return {
            "name": self.cfg.name, "status": status, "stop_reason": stop_reason,
            "model": self.cfg.model.name, "dataset": self.cfg.data.name, "img_size": self.cfg.data.img_size,
            "num_classes": self.data.num_classes, "seed": self.cfg.seed,
            "epochs_total": self.cfg.train.epochs, "epochs_done": self.step // self.steps_per_epoch,
            "steps_done": self.step, "steps_total": self.steps_total,
            "eval_split": self.data.eval_split,
            "top1": le.get("top1"), "top5": le.get("top5"), "top1_ema": le.get("top1_ema"),
            "top5_ema": le.get("top5_ema"),
            "best_top1": self.best["top1"], "best_epoch": self.best["epoch"], "best_is": self.best["is"],
            "ema_better": self.best["is"] == "ema",
            "test_top1": le.get("test_top1"), "test_top5": le.get("test_top5"),
            "test_top1_raw": le.get("test_top1_raw"), "test_top1_ema": le.get("test_top1_ema"),
            "final_is": le.get("final_is"),
            "params_total": self.params_total, "params_nonzero": self._params_nonzero(),
            "sparsity": self.cfg.sparse.sparsity, "distill": teacher,
            "wall_time_s": round(self.elapsed_before + self.budget.elapsed(), 3), "resumes": self.resumes,
            "images_per_s": self._images_per_s(), "precision": self.precision,
            "state_digest": state_digest(self.model.state_dict()),
            "env": {"torch": torch.__version__, "timm": timm.__version__, "repro": __version__,
                    "device": str(self.device), "gpu": gpu, "world_size": self.dist.world_size,
                    "git_revision": git_revision(), "python": platform.python_version(),
                    "hostname": socket.gethostname(), "kaggle": in_kaggle()},
        }

    def _teacher_top1(self) -> float | None:
        """The teacher's top-1 as its run reported it, for the weights actually loaded (raw or EMA); None when
        the teacher is not a run's last checkpoint (then no recorded number describes it)."""
        from ..distill.teacher import read_run_summary

        ident = self.teacher.identity()
        run_dir, last = run_of(Path(ident.get("path") or ""))
        if run_dir is None or not last:
            return None
        s = read_run_summary(run_dir) or {}
        ema = str(ident.get("weights", "")).endswith("_ema")
        exact = s.get("test_top1_ema" if ema else "test_top1_raw")
        if exact is not None:
            return exact
        return s.get("test_top1") if s.get("final_is") == ("ema" if ema else "raw") else None

    def _params_nonzero(self) -> int:
        from ..models import count_params
        return count_params(self.model)["nonzero"]

    def _images_per_s(self) -> float | None:
        if getattr(self, "_timed_steps", 0) < 1:
            return None
        return round(self._timed_images / self._timed_seconds, 2)

    # ------------------------------------------------------------------------------------------ evaluate
    def _evaluate(self, loader) -> dict:
        kw = dict(precision=self.precision, dist_info=self.dist, channels_last=self.cfg.train.channels_last,
                  class_index_map=getattr(loader.dataset.dataset, "class_index_map", None))
        raw = evaluate_model(self.model, loader, self.device, **kw)
        ema = evaluate_model(self.ema.module, loader, self.device, **kw) if self.ema is not None else None
        return {"raw": raw, "ema": ema}

    def _eval_and_log(self, epoch: int) -> None:
        res = self._evaluate(self.val_loader)
        raw, ema = res["raw"], res["ema"]
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = self.epoch_loss[0] / max(1, self.epoch_loss[1])
        row = {"epoch": epoch, "step": self.step, "train_loss": train_loss, "lr": lr,
               "split": self.data.eval_split, "top1": raw["top1"], "top5": raw["top5"], "loss": raw["loss"],
               "top1_ema": ema["top1"] if ema else None, "top5_ema": ema["top5"] if ema else None,
               "images_per_s": self._images_per_s(), "time_s": round(self.elapsed_before + self.budget.elapsed(), 3)}
        self.last_eval = {"top1": raw["top1"], "top5": raw["top5"], "top1_ema": row["top1_ema"],
                          "top5_ema": row["top5_ema"]}
        for which, acc in (("raw", raw["top1"]), ("ema", row["top1_ema"])):
            if acc is not None and (self.best["top1"] is None or acc > self.best["top1"]):
                self.best = {"top1": acc, "epoch": epoch, "is": which}
        if self.dist.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        log.info("epoch %d step %d: %s top1 %.2f top5 %.2f%s", epoch, self.step, self.data.eval_split,
                 raw["top1"], raw["top5"], f" (EMA {row['top1_ema']:.2f})" if ema else "")

    def _final_test(self) -> None:
        """Test-split scores of the final weights: raw or EMA, whichever did better at the last evaluation."""
        le = self.last_eval
        final_is = "ema" if (le.get("top1_ema") or -1) > (le.get("top1") or -1) else "raw"
        if self.test_loader is None:  # no held-out split: the last evaluation was on the test set
            scores = {"raw": {"top1": le.get("top1"), "top5": le.get("top5")},
                      "ema": {"top1": le.get("top1_ema"), "top5": le.get("top5_ema")} if self.ema else None}
        else:
            scores = self._evaluate(self.test_loader)
        chosen = scores[final_is] or scores["raw"]
        le.update(test_top1=chosen["top1"], test_top5=chosen["top5"], final_is=final_is,
                  test_top1_raw=scores["raw"]["top1"],
                  test_top1_ema=scores["ema"]["top1"] if scores["ema"] else None)

    # ------------------------------------------------------------------------------------------------ loop
    def _micro_batches(self):
        """Yield (images, targets) for the remaining micro-batches, epoch after epoch, from self.step on."""
        tc = self.cfg.train
        while True:
            epoch, pos = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(pos * tc.accum_steps * tc.batch_size)
            n_left = (self.steps_per_epoch - pos) * tc.accum_steps
            for i, batch in enumerate(self.loader):
                if i >= n_left:
                    break
                yield batch
            if self.step >= self.steps_total:
                return

    def _should_stop(self, step_seconds: float, signals: StopSignal) -> str | None:
        reason = None
        if self.max_steps is not None and self.step >= self.max_steps:
            reason = "max_steps"
        elif signals.received is not None:
            reason = "signal"
        elif self.budget.exhausted(step_seconds):
            reason = "time_budget"
        if any_rank(reason is not None, self.dist, self.device):
            return reason or "signal"
        return None

    def run(self) -> dict:
        """Train until complete or stopped; returns the summary (also written to summary.json)."""
        tc = self.cfg.train
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        resumed = self._resume()
        previous = self.out / "summary.json"
        previous = json.loads(previous.read_text()) if previous.is_file() else {}
        if self.step >= self.steps_total and previous.get("status") == "complete":
            log.info("%s is already complete (%d steps); nothing to do", self.out, self.step)
            cleanup(self.dist)
            return previous
        if self.dist.is_main:
            self.cfg.save(self.out / "config.yaml")
            self._truncate_metrics()
        barrier(self.dist)
        if resumed is None and self.step == 0:
            log.info("training %s on %s: %d steps (%d epochs x %d), lr %.2e, %s on %s", self.cfg.model.name,
                     self.cfg.data.name, self.steps_total, tc.epochs, self.steps_per_epoch, self.lr,
                     self.precision, self.device)
        self._timed_steps, self._timed_images, self._timed_seconds = 0, 0, 0.0
        self._last_save = time.monotonic()
        stop_reason = None
        bar = None
        if self.progress and self.dist.is_main:
            import warnings
            with warnings.catch_warnings():  # without ipywidgets a notebook gets the text bar, which is fine
                warnings.simplefilter("ignore")
                from tqdm.auto import tqdm
            bar = tqdm(total=self.steps_total, initial=self.step, unit="step", dynamic_ncols=True,
                       desc=self.cfg.name, mininterval=1.0)
        batches = self._micro_batches()
        step_seconds = 0.0
        autocast = autocast_context(self.device, self.precision)
        try:
            with StopSignal() as signals:
                while self.step < self.steps_total:
                    stop_reason = self._should_stop(step_seconds, signals)
                    if stop_reason:
                        break
                    t0 = time.monotonic()
                    loss_value = self._train_step(batches, autocast)
                    self.epoch_loss[0] += loss_value
                    self.epoch_loss[1] += 1
                    step_seconds = time.monotonic() - t0
                    if self.step > 1:  # the first step includes warm-up work (allocation, workers)
                        self._timed_steps += 1
                        self._timed_seconds += step_seconds
                        self._timed_images += tc.batch_size * tc.accum_steps * self.dist.world_size
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                        img_s=self._images_per_s(), refresh=False)
                    epoch_end = self.step % self.steps_per_epoch == 0
                    if epoch_end:
                        epoch = self.step // self.steps_per_epoch
                        if epoch % tc.eval_every == 0 or self.step == self.steps_total:
                            self._eval_and_log(epoch)
                        self.epoch_loss = [0.0, 0]
                    if self.step < self.steps_total and self._checkpoint_due(epoch_end):
                        self._save()
        finally:
            if bar is not None:
                bar.close()
        if self.step >= self.steps_total:
            self._final_test()
            status, stop_reason = "complete", None
        else:
            status = "stopped"
        self._save_final(status, stop_reason)
        summary = self.summary(status, stop_reason)
        if status == "stopped":
            log.info("stopped (%s) at step %d/%d; %s", stop_reason, self.step, self.steps_total,
                     self._continue_hint(stop_reason))
        cleanup(self.dist)
        return summary

    def _continue_hint(self, stop_reason: str | None) -> str:
        """How to continue after a stop: the step limit would stop the same command again at once."""
        if stop_reason == "max_steps":
            return (f"to continue, run again without --max-steps (max_steps in Python) or with a value above "
                    f"{self.step}")
        return "run the same command again to continue"

    def _checkpoint_due(self, epoch_end: bool) -> bool:
        if self.checkpoint_every is not None:
            return self.step % self.checkpoint_every == 0
        return epoch_end and time.monotonic() - self._last_save >= 600

    def _save_final(self, status: str, stop_reason: str | None) -> None:
        if self.dist.is_main:
            if self.step > 0 and not (self.out / "checkpoints" / f"ckpt-{self.step:08d}.pt").is_file():
                save_checkpoint(self.out, self.step, self.state_dict(), keep=self.cfg.train.keep_checkpoints)
            self._write_json("summary.json", self.summary(status, stop_reason))
        barrier(self.dist)

    def _train_step(self, batches, autocast) -> float:
        """One optimizer step over `accum_steps` micro-batches; returns the mean loss."""
        tc = self.cfg.train
        total = 0.0
        for micro in range(tc.accum_steps):
            images, targets = next(batches)
            if _CRASH_AT == f"{self.step}:{micro}":  # fault injection for the kill -9 resume tests
                os.kill(os.getpid(), signal.SIGKILL)
            seed_all(step_seed(self.cfg.seed, self.dist.rank, self.step * tc.accum_steps + micro))
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if tc.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            t_logits = t_map = None
            if self.teacher is not None:
                t_logits, t_map = self.teacher(images)
            last = micro == tc.accum_steps - 1
            sync = nullcontext() if (last or not self.dist.enabled) else self.ddp.no_sync()
            with sync:
                with autocast:
                    loss, _ = self.ddp(images, targets, t_logits, t_map, step=self.step)
                # Every rank takes the same decision, so a NaN on one GPU cannot leave the others waiting.
                if self.precision != "fp16" and any_rank(not torch.isfinite(loss), self.dist, self.device):
                    raise ReproError(
                        f"the loss became {loss.item()} at step {self.step} (micro-batch {micro}); training stopped "
                        f"without saving it. The last good checkpoint in {self.out / 'checkpoints'} is kept. "
                        "Lower the learning rate (train.lr), enable clip_grad, or use fp32.")
                self.scaler.scale(loss / tc.accum_steps).backward()
            total += loss.item()
        if tc.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), tc.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.sparsity is not None:
            self.sparsity.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
            if self.sparsity is not None:
                self.sparsity.apply_to(self.ema.module)
        return total / tc.accum_steps


def train(cfg: RunConfig, out_dir: str | Path, *, max_steps: int | None = None,
          time_budget: str | float | None = None, checkpoint_every: int | None = None, device: str | None = None,
          resume_from: Iterable[str | Path] = (), force: bool = False, progress: bool = True) -> dict:
    """Train (or resume) the run in `out_dir`; returns its summary. See `Trainer` for the arguments."""
    done = _complete_summary(cfg, Path(out_dir))
    if done is not None:  # before any data loading or model building: a finished run costs nothing
        log.info("%s is already complete (%s steps); nothing to do", out_dir, done.get("steps_done"))
        return done
    return Trainer(cfg, out_dir, max_steps=max_steps, time_budget=time_budget,
                   checkpoint_every=checkpoint_every, device=device, resume_from=resume_from, force=force,
                   progress=progress).run()


def _complete_summary(cfg: RunConfig, out: Path) -> dict | None:
    """The summary of `out` when it holds a complete run of this very config, else None."""
    try:
        summary = json.loads((out / "summary.json").read_text())
        saved = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not (isinstance(summary, dict) and summary.get("status") == "complete" and isinstance(saved, dict)):
        return None
    mine = RunConfig.from_dict(cfg.to_dict())
    if mine.model.num_classes is None:  # filled in from the data when the run was built
        mine.model.num_classes = (saved.get("model") or {}).get("num_classes")
    return summary if not config_differences(saved, mine) else None
