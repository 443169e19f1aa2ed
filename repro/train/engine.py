"""The training engine: teacher training, student training and distillation in one loop that resumes exactly.

The loop reads like the algorithm: get batch, forward (student and, when distilling, the frozen teacher),
loss, backward, optimizer step, sparse-mask step, EMA, log, maybe evaluate, maybe checkpoint. Everything a
restart needs lives in `Trainer.state_dict()`. Randomness is re-seeded from (seed, rank, micro-step) before
every micro-batch and each sample's augmentation from (seed, epoch, position), so a run resumed from any
checkpoint replays the same numbers as one that never stopped.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import __version__
from ..config import RunConfig, config_differences
from ..device import in_kaggle, kaggle_root, resolve_device, resolve_precision
from ..errors import ReproError
from . import hardware
from .budget import StopSignal, TimeBudget, parse_duration
from .checkpoint import (
    CheckpointWriteError,
    atomic_write_bytes,
    atomic_write_text,
    candidate_folders,
    checkpoint_step,
    list_checkpoints,
    nonfinite_entries,
    read_checkpoint,
    remove_stale_temporaries,
    run_of,
    save_checkpoint,
    set_aside,
    state_digest,
)
from .distributed import barrier, cleanup, init_distributed, max_across
from .evaluate import autocast_context, eval_loader, evaluate_model
from .metrics import RunLog, StepStats, host_record, peak_memory
from .resume_check import check_resume_config, different_setup_message
from .runlock import RunLock
from .seeding import rng_state, seed_all, set_rng_state, step_seed

log = logging.getLogger("repro.train")
_CRASH_AT = os.environ.get("REPRO_CRASH_AT")  # fault injection for tests: "step:micro" to SIGKILL at
_SLOW_STEP = float(os.environ.get("REPRO_SLOW_STEP") or 0)  # tests: seconds of sleep per step (signal timing)


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
        progress: show progress (a tqdm bar on a terminal, concise lines elsewhere).
        shared: objects a cohort's members share instead of building their own ("data", "teacher").
    """

    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, max_steps: int | None = None,
                 time_budget: str | float | None = None, checkpoint_every: int | None = None,
                 device: str | None = None, resume_from: Iterable[str | Path] = (), force: bool = False,
                 progress: bool = True, shared: dict | None = None):
        cfg.validate()
        self._shared = shared or {}  # a cohort's members share the data ("data") and the teacher ("teacher")
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
        hardware.check_compile(cfg.train.compile)
        self.device = resolve_device(device)
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        hardware.configure_kernels(self.device, cfg.train.deterministic)
        from ..data import resolve_augment_on
        # Resolved into the config (as num_classes is), so config.yaml says which path the run used.
        cfg.data.augment_on = resolve_augment_on(cfg.data, self.device)
        check_resume_config(self.out, cfg, force)  # a wrong --out fails before data loading and SNIP
        # One process per run folder, taken before anything is written (under torchrun, by rank 0 for all).
        existed = self.out.exists()
        self.lock = RunLock(self.out)
        if self.dist.is_main:
            self.lock.acquire()
        try:
            self._build()
        except BaseException:
            self.release(remove_empty=not existed)
            raise

    def release(self, remove_empty: bool = False) -> None:
        """Give the run folder back; `remove_empty` also removes a folder this run created and left empty."""
        self.lock.release()
        if remove_empty and self.dist.is_main:
            try:
                (self.out / ".lock").unlink(missing_ok=True)
                self.out.rmdir()
            except OSError:
                pass

    # ----------------------------------------------------------------------------------------------- set-up
    def _build(self) -> None:
        from ..data import ResumableSampler, build_data, build_loader
        from ..models import count_params, create_model

        cfg, tc = self.cfg, self.cfg.train
        self.data = self._shared.get("data") or build_data(cfg.data, num_classes_expected=cfg.model.num_classes)
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
            self.teacher = self._shared.get("teacher") or self._build_teacher()

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
        if cfg.data.augment_on == "device":  # the uint8 set on the device, augmented there batch by batch
            from ..data import build_device_loader
            self.loader = build_device_loader(self.data.train, batch_size=tc.batch_size, sampler=self.sampler,
                                              device=self.device, seed=cfg.seed, img_size=cfg.data.img_size,
                                              randaugment=cfg.data.randaugment, reprob=cfg.data.reprob,
                                              hflip=cfg.data.hflip, mean=self.data.mean, std=self.data.std)
        else:
            self.loader = build_loader(self.data.train, batch_size=tc.batch_size, sampler=self.sampler,
                                       num_workers=cfg.data.num_workers, seed=cfg.seed,
                                       device_type=self.device.type, drop_last=True)
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
        self._build_step_functions()

        # Mutable run state (all of it goes into checkpoints).
        self.step = 0
        self.elapsed_before = 0.0
        self.resumes = 0
        self.best = {"top1": None, "epoch": None, "is": None}
        self.last_eval: dict[str, Any] = {}
        self.epoch_loss = [0.0, 0]  # host copy of the device-side sum, fresh after every fetch
        self.sessions: list[dict] = []  # the environment of every earlier session of this run
        self.weights: dict[str, Any] = {}  # weights-only files kept in the run folder (final, best)
        self.stats = StepStats(self.device)

    def _build_step_functions(self) -> None:
        """The student step and the teacher forward as called in the loop: eager, compiled or graph-replayed."""
        tc = self.cfg.train
        self.forward_fn = self.ddp
        self.teacher_fn = self.teacher
        self.compile_seconds = None
        if tc.compile != "off":
            self.forward_fn = hardware.compiled(self.ddp, "student")
            if self.teacher is not None and tc.compile == "all":
                self.teacher_fn = hardware.compiled(self.teacher, "teacher")
        if self.teacher is not None and tc.teacher_cuda_graph:
            if self.device.type != "cuda":
                log.info("train.teacher_cuda_graph applies to CUDA only; the teacher runs eagerly on %s",
                         self.device)
            else:
                from .graphs import GraphedForward
                self.teacher_fn = GraphedForward(self.teacher_fn, self.device)

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
                          fd_weight=dc.fd_weight, fd_loss=dc.fd_loss, fd_projector=dc.fd_projector)
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
                               regrow_pruned=sc.regrow_pruned, dense_cutoff=sc.dense_cutoff,
                               reset_moments=sc.reset_moments)

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
            # What the run was trained on: checked when it continues elsewhere (hardware.py).
            "precision": self.precision,
            "world_size": self.dist.world_size,
            "batch_size": self.cfg.train.batch_size,
            "accum_steps": self.cfg.train.accum_steps,
            "sessions": self.sessions + [self._environment()],
            "weights": dict(self.weights),
        }

    def load_state_dict(self, state: dict, fresh_scaler: bool = False) -> None:
        """Restore a state_dict() (the inverse of state_dict); `fresh_scaler` keeps this run's new loss scaler
        (a forced change of precision)."""
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if not fresh_scaler and state.get("scaler"):
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
        self.stats.set_epoch_loss(self.epoch_loss)
        self.elapsed_before = float(state["elapsed"])
        self.resumes = int(state["resumes"]) + 1
        self.sessions = list(state.get("sessions") or [])
        self.weights = dict(state.get("weights") or {})
        self.scheduler.step_update(self.step)

    # ---------------------------------------------------------------------------------------------- resume
    def _check_compatible(self, saved_cfg: dict, teacher: dict | None) -> list[str]:
        # Batch, accumulation and precision are judged by what they mean (check_hardware), not literally.
        diffs = hardware.without_hardware_keys(config_differences(saved_cfg, self.cfg))
        if self.teacher is not None and teacher and teacher.get("sha256") != self.teacher.identity().get("sha256"):
            diffs.append(f"teacher weights: sha256 {str(teacher.get('sha256'))[:12]} -> "
                         f"{str(self.teacher.identity().get('sha256'))[:12]}")
        return diffs

    def _check_hardware(self, state: dict, where: Path) -> bool:
        """Same global batch and precision as the checkpoint (else refused); True for a fresh loss scaler."""
        train_cfg = (state.get("config") or {}).get("train") or {}
        saved = {"batch_size": state.get("batch_size", train_cfg.get("batch_size")),
                 "accum_steps": state.get("accum_steps", train_cfg.get("accum_steps")),
                 "world_size": state.get("world_size", (state.get("sampler") or {}).get("world_size", 1))}
        if None not in saved.values():
            tc = self.cfg.train
            hardware.check_global_batch(saved, tc.batch_size, self.dist.world_size, tc.accum_steps, where)
        return hardware.check_precision(hardware.saved_precision(state), self.precision, self.force, where)

    def _refuse_or_force(self, diffs: list[str], where: Path) -> None:
        if diffs and not self.force:
            raise ReproError(different_setup_message(where, diffs))
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
        bad = []
        for path in candidates:
            state, why = read_checkpoint(path, map_location="cpu")
            if state is not None and state.get("format") != "repro-checkpoint-1":
                state, why = None, "not a training checkpoint of this package"
            if state is None:
                log.warning("skipping checkpoint %s: %s", path, why)
                bad.append(path)
                continue
            self._refuse_or_force(self._check_compatible(state["config"], state.get("teacher")), path)
            fresh_scaler = self._check_hardware(state, path)
            self.load_state_dict(state, fresh_scaler=fresh_scaler)
            self._carry_history(path.parent.parent)
            self._set_aside(bad)
            log.info("resumed from %s at step %d/%d", path, self.step, self.steps_total)
            return path
        if bad:
            log.warning("no readable checkpoint among the %d found (newest %s): training starts again from step 0",
                        len(bad), bad[0])
        self._set_aside(bad)
        return None

    def _set_aside(self, bad: list[Path]) -> None:
        """Move this run's own unusable checkpoints out of the way (renamed *.bad), so they never count against
        keep_checkpoints nor shadow the new ones; checkpoints in other folders are left as they are."""
        if not self.dist.is_main:
            return
        own = (self.out / "checkpoints").resolve()
        for path in bad:
            if path.parent.resolve() == own and set_aside(path) is not None:
                log.info("set %s aside as %s.bad", path.name, path.name)

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
        self._end_window()  # the loss check and the epoch sums, before the state is frozen
        state = self.state_dict()
        self._check_finite(state)
        if self.dist.is_main:
            save_checkpoint(self.out, self.step, state, keep=self.cfg.train.keep_checkpoints)
            self._write_json("summary.json", self.summary(status="stopped", stop_reason="checkpoint"))
        barrier(self.dist)
        self.budget.record_save(time.monotonic() - t0)
        self._last_save = time.monotonic()

    def _check_finite(self, state: dict) -> None:
        """Refuse to keep a state with NaN/inf anywhere (model, EMA, optimizer, buffers), agreed over ranks."""
        bad = nonfinite_entries({k: state[k] for k in ("model", "model_ema", "optimizer", "criterion")})
        if max_across([float(bool(bad))], self.dist, self.device)[0]:
            raise self._diverged(None, bad)

    def _diverged(self, first_bad: tuple[int, float] | None, names: list[str] | None = None) -> ReproError:
        """The one message for a run whose loss or state stopped being finite; nothing after it is saved."""
        newest = list_checkpoints(self.out / "checkpoints")
        kept = (f"The newest checkpoint, {newest[0].name} (step {checkpoint_step(newest[0])}), holds finite values "
                "and is kept; running again resumes from it and will diverge the same way unless the recipe "
                "changes" if newest else "No checkpoint was written before it")
        if first_bad is not None:
            what = f"the loss became {first_bad[1]} at step {first_bad[0]}"
        else:
            shown = ", ".join((names or [])[:3])
            what = f"the state at step {self.step} holds non-finite values ({len(names or [])} tensors, e.g. {shown})"
        tc = self.cfg.train
        advice = [f"lower the learning rate (train.lr, now {self.lr:.2e})"]
        if tc.clip_grad is None:
            advice.append("set train.clip_grad (e.g. 1.0)")
        if self.precision != "fp32":
            advice.append(f"or train in fp32 instead of {self.precision} (--set train.precision=fp32)")
        return ReproError(f"{what}; training stopped without saving anything after it. {kept}. To fix it, "
                          + ", ".join(advice) + ".")

    def _write_weights(self, kind: str, which: str, epoch: int) -> None:
        """weights-<kind>.pt: the raw or EMA weights alone ({'model': state_dict}), written atomically."""
        module = self.ema.module if which == "ema" and self.ema is not None else self.model
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        if nonfinite_entries(state):
            log.warning("not writing weights-%s.pt: the %s weights hold non-finite values", kind, which)
            return
        name = f"weights-{kind}.pt"
        if self.dist.is_main:
            import io
            buf = io.BytesIO()
            torch.save({"model": state}, buf)
            try:
                atomic_write_bytes(self.out / name, buf.getvalue())
            except OSError as exc:
                raise CheckpointWriteError(f"could not write {self.out / name} ({exc.strerror or exc}); "
                                           "free some space or use a writable --out, then run again") from None
        # The split the recorded number of these weights comes from: val for best, the final test for final.
        split = self.data.eval_split if kind == "best" else ("test" if self.test_loader is not None
                                                              else self.data.eval_split)
        self.weights[kind] = {"file": name, "split": split,
                              "epoch": epoch, "step": self.step, "is": which}

    def summary(self, status: str, stop_reason: str | None) -> dict:
        """The run's summary.json content (the single source every table and figure is computed from)."""
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
            "compile": self.cfg.train.compile, "compile_seconds": self.compile_seconds,
            "augment_on": self.cfg.data.augment_on,
            "weights_final": self.weights.get("final"), "weights_best": self.weights.get("best"),
            "state_digest": state_digest(self.model.state_dict()),
            "env": self._environment(),
            "sessions": self.sessions + [self._environment()],
        }

    def _environment(self) -> dict:
        """This session's software and hardware (each session of a chained run is recorded in `sessions`)."""
        import timm
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {"torch": torch.__version__, "timm": timm.__version__, "repro": __version__,
                "device": str(self.device), "gpu": gpu, "world_size": self.dist.world_size,
                "precision": self.precision, "git_revision": git_revision(), "python": platform.python_version(),
                "hostname": socket.gethostname(), "kaggle": in_kaggle(), "first_step": self._first_step}

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
        train_loss = self.epoch_loss[0] / max(1, self.epoch_loss[1])  # fresh: the epoch end fetched it
        row = {"epoch": epoch, "step": self.step, "train_loss": train_loss, "lr": lr,
               "split": self.data.eval_split, "top1": raw["top1"], "top5": raw["top5"], "loss": raw["loss"],
               "top1_ema": ema["top1"] if ema else None, "top5_ema": ema["top5"] if ema else None,
               "images_per_s": self._images_per_s(), "time_s": round(self.elapsed_before + self.budget.elapsed(), 3)}
        self.last_eval = {"top1": raw["top1"], "top5": raw["top5"], "top1_ema": row["top1_ema"],
                          "top5_ema": row["top5_ema"]}
        improved = False
        for which, acc in (("raw", raw["top1"]), ("ema", row["top1_ema"])):
            if acc is not None and (self.best["top1"] is None or acc > self.best["top1"]):
                self.best = {"top1": acc, "epoch": epoch, "is": which}
                improved = True
        if improved and self.data.eval_split == "val":  # best by held-out data only, never by the test split
            self._write_weights("best", self.best["is"], epoch)
        self.runlog.eval(row)
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
        self._write_weights("final", final_is if scores[final_is] else "raw", self.step // self.steps_per_epoch)
        le.update(test_top1=chosen["top1"], test_top5=chosen["top5"], final_is=final_is,
                  test_top1_raw=scores["raw"]["top1"],
                  test_top1_ema=scores["ema"]["top1"] if scores["ema"] else None)

    # ------------------------------------------------------------------------------------------------ loop
    def _micro_batches(self, position=None):
        """Yield (images, targets) for the remaining micro-batches, epoch after epoch, from the step that
        `position()` gives (default: this run's own step; a cohort passes its common step)."""
        tc = self.cfg.train
        position = position or (lambda: self.step)
        while True:
            epoch, pos = divmod(position(), self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(pos * tc.accum_steps * tc.batch_size)
            n_left = (self.steps_per_epoch - pos) * tc.accum_steps
            for i, batch in enumerate(self.loader):
                if i >= n_left:
                    break
                yield batch
            if position() >= self.steps_total:
                return

    def _should_stop(self, step_seconds: float, signals: StopSignal) -> str | None:
        """Why to stop before the next step, if at all. One process decides at every step (host state only);
        under DDP the ranks agree at the end of each log_every window, in the same collective as the loss check."""
        if self.max_steps is not None and self.step >= self.max_steps:
            return "max_steps"  # the same on every rank: no agreement needed
        if self.dist.enabled:
            reason, self._agreed_stop = self._agreed_stop, None
            return reason
        return self._local_stop(step_seconds, signals, 1)

    def _local_stop(self, step_seconds: float, signals: StopSignal, steps_ahead: int) -> str | None:
        if signals.received is not None:
            return "signal"
        if self.budget.exhausted(step_seconds * steps_ahead):
            return "time_budget"
        return None

    _STOP_CODES = (None, "signal", "time_budget")

    def _end_window(self, emit: bool = False, signals: StopSignal | None = None,
                    step_seconds: float = 0.0) -> None:
        """Read the window's statistics from the device (one transfer), stop on a non-finite loss, and (`emit`,
        at log_every steps and epoch ends) write the train record. Saves read them too, without a record, so
        records fall on the same steps whether or not a run was interrupted.

        Under DDP the ranks also agree here on the non-finite check and on stopping (signal, time budget),
        in one all-reduce; the budget then has to cover the whole next window.
        """
        if self.stats.micro == 0:
            return
        window_steps = self.step - self._window_start
        stats = self.stats.fetch()
        self.epoch_loss = stats["epoch_loss"]
        stop = self._local_stop(step_seconds, signals, self.cfg.train.log_every) \
            if (signals is not None and self.dist.enabled) else None
        check_loss = self.precision != "fp16"  # fp16: the loss scaler skips overflowing steps by design
        bad = 1.0 if (check_loss and stats["nonfinite"]) else 0.0
        if self.dist.enabled:
            bad, code = max_across([bad, float(self._STOP_CODES.index(stop))], self.dist, self.device)
            self._agreed_stop = self._STOP_CODES[int(code)] if signals is not None else None
        if bad:
            raise self._diverged(stats["first_bad"] or (self._window_start, float("nan")))
        if not emit:
            return
        now = time.monotonic()
        seconds = max(now - self._window_t0, 1e-9)
        images = window_steps * self.cfg.train.batch_size * self.cfg.train.accum_steps * self.dist.world_size
        record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                  "lr": self.optimizer.param_groups[0]["lr"],
                  **{k: stats[k] for k in stats if k not in ("nonfinite", "first_bad", "epoch_loss", "micro")},
                  "nonfinite_losses": stats["nonfinite"], "images_per_s": images / seconds,
                  "data_wait": self._data_wait / seconds, "peak_memory_mib": peak_memory(self.device)}
        self.runlog.train(host_record(record))
        self._last_loss = stats.get("loss")
        self._window_start, self._window_t0, self._data_wait = self.step, now, 0.0

    def run(self) -> dict:
        """Train until complete or stopped; returns the summary (also written to summary.json)."""
        try:
            with StopSignal() as signals:
                return self._run(signals)
        finally:
            self.release()

    def _run(self, signals: StopSignal) -> dict:
        done = self.begin(signals)
        if done is not None:
            return done
        stop_reason = None
        step_seconds = 0.0
        batches = self._micro_batches()
        try:
            while self.step < self.steps_total:
                stop_reason = self._should_stop(step_seconds, signals)
                if stop_reason:
                    break
                t0 = time.monotonic()
                self._train_step(batches)
                step_seconds = time.monotonic() - t0
                self.after_step(step_seconds, signals)
            return self.finish(stop_reason, signals)
        finally:
            self.runlog.close()

    def begin(self, signals: StopSignal) -> dict | None:
        """Start-up: clear debris, resume, write the config, open the logs. Returns the summary when the run is
        already complete (nothing to do), else None."""
        tc = self.cfg.train
        signals.phase = "start-up"
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            for p in remove_stale_temporaries(self.out):
                log.info("removed %s, left by a save that was interrupted", p.name)
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
        self._first_step = self.step
        self._timed_steps, self._timed_images, self._timed_seconds = 0, 0, 0.0
        self._last_save = time.monotonic()
        self._window_start, self._window_t0, self._data_wait = self.step, time.monotonic(), 0.0
        self._agreed_stop, self._last_loss = None, None
        self.autocast = autocast_context(self.device, self.precision)
        self.runlog = RunLog(self.out, enabled=self.dist.is_main, total_steps=self.steps_total,
                             first_step=self.step, name=self.cfg.name, log_every=tc.log_every,
                             tensorboard=tc.tensorboard, progress=self.progress)
        signals.phase = "training"
        return None

    def after_step(self, step_seconds: float, signals: StopSignal) -> None:
        """Everything after an optimizer step: timing, the log window, progress, evaluation, checkpoint."""
        tc = self.cfg.train
        if self.step == self._first_step + 1 and tc.compile != "off":
            self.compile_seconds = round(step_seconds, 3)
            log.info("first step with torch.compile (%s): %.1f s", tc.compile, step_seconds)
        if self.step > self._first_step + 1:  # the first step includes warm-up work (allocation, workers)
            self._timed_steps += 1
            self._timed_seconds += step_seconds
            self._timed_images += tc.batch_size * tc.accum_steps * self.dist.world_size
        epoch_end = self.step % self.steps_per_epoch == 0
        try:
            if epoch_end or self.step % tc.log_every == 0:
                self._end_window(True, signals, step_seconds)
            epoch = self.step // self.steps_per_epoch
            self.runlog.step(self.step, epoch=epoch, loss=self._last_loss,
                             lr=self.optimizer.param_groups[0]["lr"], images_per_s=self._images_per_s())
            if epoch_end:
                if epoch % tc.eval_every == 0 or self.step == self.steps_total:
                    self._eval_and_log(epoch)
                self.stats.reset_epoch()
                self.epoch_loss = [0.0, 0]
            if self.step < self.steps_total and self._checkpoint_due(epoch_end):
                self._save()
        except CheckpointWriteError:
            self._record_stop("disk")
            raise

    def finish(self, stop_reason: str | None, signals: StopSignal) -> dict:
        """After the loop: final test (when complete), final save, summary.json; returns the summary."""
        try:
            self._end_window()
            if self.step >= self.steps_total:
                signals.phase = "final evaluation"
                self._final_test()
                status, stop_reason = "complete", None
            else:
                status = "stopped"
            signals.phase = "saving"
            self._save_final(status, stop_reason)
        except CheckpointWriteError:
            self._record_stop("disk")
            raise
        finally:
            self.runlog.close()
        summary = self.summary(status, stop_reason)
        if status == "stopped":
            log.info("stopped (%s) at step %d/%d; %s", stop_reason, self.step, self.steps_total,
                     self._continue_hint(stop_reason))
        cleanup(self.dist)
        return summary

    def _record_stop(self, reason: str) -> None:
        """Best effort: summary.json says the run stopped (e.g. a full disk), without a new checkpoint."""
        if self.dist.is_main:
            try:
                self._write_json("summary.json", self.summary("stopped", reason))
            except OSError:
                pass

    def _continue_hint(self, stop_reason: str | None) -> str:
        """How to continue after a stop: the step limit would stop the same command again at once."""
        if stop_reason == "max_steps":
            return (f"to continue, run again without --max-steps (max_steps in Python) or with a value above "
                    f"{self.step}")
        return "run the same command again to continue"

    def _checkpoint_due(self, epoch_end: bool) -> bool:
        if self.checkpoint_every is not None:
            return self.step % self.checkpoint_every == 0
        if not epoch_end:
            return False
        due = time.monotonic() - self._last_save >= 600
        # Clocks differ between ranks: they agree (once an epoch), or one would wait for the others forever.
        return bool(max_across([float(due)], self.dist, self.device)[0])

    def _save_final(self, status: str, stop_reason: str | None) -> None:
        self._end_window()
        state = self.state_dict() if self.step > 0 else None
        if state is not None:
            self._check_finite(state)
        if self.dist.is_main:
            if state is not None and not (self.out / "checkpoints" / f"ckpt-{self.step:08d}.pt").is_file():
                save_checkpoint(self.out, self.step, state, keep=self.cfg.train.keep_checkpoints)
            self._write_json("summary.json", self.summary(status, stop_reason))
        barrier(self.dist)

    def _train_step(self, batches) -> None:
        """One optimizer step over `accum_steps` micro-batches. Nothing here waits for the device: the loss and
        its parts are summed there (self.stats) and read every log_every steps."""
        for micro in range(self.cfg.train.accum_steps):
            t_wait = time.monotonic()
            batch = next(batches)
            self._data_wait += time.monotonic() - t_wait
            self.micro_step(*self.micro_inputs(batch, micro), micro)
        self.optimizer_step()

    def micro_inputs(self, batch, micro: int, step: int | None = None):
        """A micro-batch of optimizer step `step` (default: this run's) made ready: on the device, seeded
        randomness, mixup/cutmix, the teacher's outputs. (A cohort computes this once for all its members.)"""
        tc = self.cfg.train
        step = self.step if step is None else step
        if _CRASH_AT == f"{step}:{micro}":  # fault injection for the kill -9 resume tests
            os.kill(os.getpid(), signal.SIGKILL)
        if _SLOW_STEP:
            time.sleep(_SLOW_STEP)
        seed_all(step_seed(self.cfg.seed, self.dist.rank, step * tc.accum_steps + micro))
        images, targets = batch
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if tc.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        t_logits = t_map = None
        if self.teacher is not None:
            t_logits, t_map = self.teacher_fn(images)
        return images, targets, t_logits, t_map

    def micro_step(self, images, targets, t_logits, t_map, micro: int) -> None:
        """The student's forward and backward on one prepared micro-batch."""
        tc = self.cfg.train
        last = micro == tc.accum_steps - 1
        sync = nullcontext() if (last or not self.dist.enabled) else self.ddp.no_sync()
        with sync:
            with self.autocast:
                loss, parts = self.forward_fn(images, targets, t_logits, t_map, step=self.step)
            self.stats.add(loss, parts, self.step)
            self.scaler.scale(loss / tc.accum_steps).backward()

    def optimizer_step(self) -> None:
        """Clip, step, re-apply the sparse masks (prune and regrow when due), schedule, EMA."""
        tc = self.cfg.train
        self.stats.end_step(tc.accum_steps)
        if tc.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), tc.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.sparsity is not None:
            update = self.sparsity.step()
            if update:
                self.runlog.sparse(update)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
            if self.sparsity is not None:
                self.sparsity.apply_to_ema(self.ema.module)


def train(cfg: RunConfig, out_dir: str | Path, *, max_steps: int | None = None,
          time_budget: str | float | None = None, checkpoint_every: int | None = None, device: str | None = None,
          resume_from: Iterable[str | Path] = (), force: bool = False, progress: bool = True) -> dict:
    """Train (or resume) the run in `out_dir`; returns its summary. See `Trainer` for the arguments."""
    done = _complete_summary(cfg, Path(out_dir), device)
    if done is not None:  # before any data loading or model building: a finished run costs nothing
        log.info("%s is already complete (%s steps); nothing to do", out_dir, done.get("steps_done"))
        return done
    # Signals are stop requests from here on: during start-up and data loading too, not only in the loop.
    with StopSignal() as signals:
        signals.phase = "start-up"
        trainer = Trainer(cfg, out_dir, max_steps=max_steps, time_budget=time_budget,
                          checkpoint_every=checkpoint_every, device=device, resume_from=resume_from, force=force,
                          progress=progress)
        return trainer.run()


def _complete_summary(cfg: RunConfig, out: Path, device: str | None = None) -> dict | None:
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
    try:
        from ..data import resolve_augment_on
        mine.data.augment_on = resolve_augment_on(mine.data, resolve_device(device))
    except ReproError:
        return None  # the Trainer says what is wrong
    return summary if not hardware.without_hardware_keys(config_differences(saved, mine)) else None
