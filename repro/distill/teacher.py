"""A frozen teacher network and the loading of its weights from runs, checkpoints and weight files.

The teacher always runs in eval mode under `torch.inference_mode` (the released KD loop ran it with autograd
on, wasting memory and compute), optionally under autocast and in channels_last, in its re-parameterized
deploy form where the model has one, and re-normalises the student's input when the two were trained with
different mean/std. Its weights never belong to a student: keep the Teacher outside any module that is
checkpointed, and record `teacher.identity()` (file, sha256, model name) with the run instead.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import yaml

from ..errors import ReproError

__all__ = ["Teacher", "load_teacher", "file_sha256", "renormalize", "pick_weights", "weights_misfit",
           "misfit_text"]

_AMP_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
               "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _models():
    # Imported lazily: the models package is the layer below and heavy (timm) to import.
    from .. import models
    return models


def _amp_dtype(value) -> torch.dtype | None:
    if value is None or value in ("fp32", "float32", torch.float32):
        return None
    if isinstance(value, torch.dtype) and value in (torch.float16, torch.bfloat16):
        return value
    if isinstance(value, str) and value.lower() in _AMP_DTYPES:
        return _AMP_DTYPES[value.lower()]
    raise ReproError(f"teacher amp_dtype must be None, 'fp16' or 'bf16' (or a torch dtype); found {value!r}.")


def _stats(name: str, value) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 0 or not torch.isfinite(t).all():
        raise ReproError(f"teacher {name} must be finite per-channel values; found {value!r}.")
    if name.endswith("std") and (t <= 0).any():
        raise ReproError(f"teacher {name} must be positive; found {value!r}.")
    return t.view(1, -1, 1, 1)


def renormalize(x: torch.Tensor, student_mean, student_std, teacher_mean, teacher_std) -> torch.Tensor:
    """Input normalised for the student -> normalised for the teacher: ((x*std_s + mean_s) - mean_t) / std_t."""
    def as_view(v):
        return torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return ((x * as_view(student_std) + as_view(student_mean)) - as_view(teacher_mean)) / as_view(teacher_std)


class Teacher(nn.Module):
    """A frozen teacher: eval mode always, no gradients, forward returns (logits, last-stage feature map).

    Args:
        model: the network (a `repro.models` model).
        mean, std: per-channel normalisation the teacher was trained with.
        student_mean, student_std: the normalisation of the inputs it will receive; when the teacher's
            mean/std are given too and differ, inputs are mapped to the teacher's normalisation before the
            forward. Without the teacher's mean/std the teacher is taken to expect the student's inputs as
            they are (a teacher trained on the same data pipeline).
        deploy: switch to the re-parameterized form (`repro.models.reparameterize`) when the model has one.
        channels_last: run in NHWC memory format.
        amp_dtype: None (fp32), 'fp16' or 'bf16' autocast for the forward.
    """

    def __init__(self, model: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 student_mean: Sequence[float] | None = None, student_std: Sequence[float] | None = None,
                 deploy: bool = True, channels_last: bool = False, amp_dtype: Any = None):
        super().__init__()
        if (mean is None) != (std is None) or (student_mean is None) != (student_std is None):
            raise ReproError("teacher normalisation needs mean and std together, and student_mean and "
                             "student_std together; found only one of a pair.")
        if mean is not None and student_mean is None:
            raise ReproError("the teacher's mean/std were given but not the student's (student_mean, "
                             "student_std); both are needed to map the student's inputs to the teacher's.")
        model.eval()
        if deploy:
            model = _reparameterized(model)
        for p in model.parameters():
            p.requires_grad_(False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        self.deploy = bool(deploy)
        self.channels_last = bool(channels_last)
        self.amp_dtype = _amp_dtype(amp_dtype)
        self.renormalizes = False
        if mean is not None:
            stats = {k: _stats(k, v) for k, v in dict(mean=mean, std=std, student_mean=student_mean,
                                                       student_std=student_std).items()}
            self.renormalizes = not (torch.equal(stats["mean"], stats["student_mean"])
                                     and torch.equal(stats["std"], stats["student_std"]))
            for k, v in stats.items():
                # Non-persistent: follow .to(device) but never reach a state_dict.
                self.register_buffer(k, v, persistent=False)
        self._identity: dict[str, Any] = {"path": None, "sha256": None, "model_name": type(model).__name__}
        super().train(False)

    def train(self, mode: bool = True) -> "Teacher":
        """Stays in eval mode whatever a parent module asks (BatchNorm statistics and dropout stay frozen)."""
        return super().train(False)

    @property
    def channels(self) -> int:
        """Channels of the teacher's last-stage feature map (for FD projectors)."""
        return int(_models().feature_channels(self.model))

    def identity(self) -> dict[str, Any]:
        """What to record in the run: dict(path, sha256, model_name, ...)."""
        return dict(self._identity)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, feature map (B, C, H, W)) as ordinary tensors that carry no graph."""
        autocast = (torch.autocast(device_type=x.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        with torch.inference_mode(), autocast:
            if self.renormalizes:
                x = renormalize(x, self.student_mean, self.student_std, self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits, fmap = _models().logits_and_features(self.model, x)
        # Cloning outside inference mode turns inference tensors into ordinary ones, which autograd may save
        # (e.g. as the target of the FD loss) without complaint.
        return logits.clone(), fmap.clone()


def _reparameterized(model: nn.Module) -> nn.Module:
    out = _models().reparameterize(model)
    return model if out is None else out


# ---------------------------------------------------------------------------------------------- loading

def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - any read failure is a bad file for the user
            raise ReproError(f"could not read the safetensors file {path}: {e}") from None
    try:
        # Official SLaK/ConvNeXt checkpoints pickle their argparse arguments next to the weights.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:  # noqa: BLE001
        raise ReproError(f"could not read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}). "
                         f"Expected a file written by torch.save.") from None
    # Files holding other Python objects (numpy arrays, optimizer extras) need full unpickling; the file is
    # the one the user chose as teacher, so it is trusted like any code they run.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ReproError(f"could not read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}). "
                         f"Expected a file written by torch.save.") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


_CKPT_RE = re.compile(r"ckpt-(\d+)\.pt")

# How a user names the teacher's architecture: the config key on the command line, the argument in Python.
_NAME_IT = "--set distill.teacher_model=NAME (model_name= in Python)"
_LIST_THEM = "`repro models` lists the names (e.g. slak_tiny, slak_small, slak_base, convnext_tiny, swin_tiny)"


def _latest_checkpoint(run_dir: Path) -> Path:
    folder = run_dir / "checkpoints"
    found = sorted((p for p in folder.glob("ckpt-*.pt") if _CKPT_RE.fullmatch(p.name)),
                   key=lambda p: int(_CKPT_RE.fullmatch(p.name).group(1))) if folder.is_dir() else []
    if not found:
        raise ReproError(f"the teacher run folder {run_dir} has no checkpoints/ckpt-*.pt; expected a finished "
                         f"run of this package (config.yaml and checkpoints/). Train the teacher first or pass "
                         f"a checkpoint file.")
    return found[-1]


def read_run_summary(run_dir: Path) -> dict | None:
    """The run's summary.json, None when there is none; an unreadable one reads as an empty record."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _check_finished(run_dir: Path, newest: Path) -> None:
    """Refuse a teacher run folder that has not completed (stopped, still training or crashed): its newest
    checkpoint is a half-trained teacher, which would be used without anyone noticing."""
    summary = read_run_summary(run_dir)
    if summary is not None and summary.get("status") == "complete":
        return
    if summary is None:
        state = (f"has checkpoints (up to step {int(_CKPT_RE.fullmatch(newest.name).group(1))}) but no "
                 f"summary.json: it is still training or it crashed")
    else:
        status = f"'{summary['status']}'" if summary.get("status") else "of unknown status"
        reason = f" ({summary['stop_reason']})" if summary.get("stop_reason") else ""
        done, total = summary.get("steps_done"), summary.get("steps_total")
        progress = f" after {done} of {total} steps" if done is not None and total is not None else ""
        state = f"is {status}{reason}{progress}"
    again = ("without --max-steps" if summary is not None and summary.get("stop_reason") == "max_steps"
             else "")
    raise ReproError(f"the teacher run at {run_dir} {state}; finish it first (run its train command again "
                     f"{again + ' ' if again else ''}with the same --out {run_dir}), or, to distill from it as it is, "
                     f"point distill.teacher at one of its checkpoint files (the newest is {newest}).")


def final_is_ema(run_dir: Path) -> bool:
    """Whether a run's final model (the weights its summary.json reports, `final_is`) is the EMA one.

    The newest checkpoint holds both; which one is "the run's model" was decided at its last evaluation.
    Summaries without `final_is` fall back to `ema_better` (the best evaluation), then to the released code's
    best_acc1 / best_acc1_ema."""
    summary = read_run_summary(run_dir) or {}
    if summary.get("final_is") in ("ema", "raw"):
        return summary["final_is"] == "ema"
    if "ema_better" in summary:
        return bool(summary["ema_better"])
    acc, acc_ema = summary.get("best_acc1"), summary.get("best_acc1_ema")
    return isinstance(acc, (int, float)) and isinstance(acc_ema, (int, float)) and acc_ema > acc


def pick_weights(ckpt: Any, path: Path, use_ema: bool, *,
                 without_ema: str = "use use_ema=False") -> tuple[dict, str]:
    """(state dict, which entry it came from) out of any supported checkpoint layout.

    `without_ema` is the advice given when EMA weights are asked for but the file has none. A file with EMA
    weights only (no 'model' / 'state_dict' entry) gives those, whatever `use_ema` says.
    """
    if _is_state_dict(ckpt):
        if use_ema is True:
            raise ReproError(f"{path} is a plain state dict without EMA weights; {without_ema}.")
        return ckpt, "state_dict"
    if not isinstance(ckpt, dict):
        raise ReproError(f"{path} holds a {type(ckpt).__name__}; expected a state dict or a checkpoint dict "
                         f"with a 'model' or 'state_dict' entry.")
    for raw, ema in (("model", "model_ema"), ("state_dict", "state_dict_ema")):
        if raw in ckpt:
            if use_ema is True:
                if not _is_state_dict(ckpt.get(ema)):
                    raise ReproError(f"{path} has no EMA weights ('{ema}'); {without_ema}.")
                return ckpt[ema], ema
            if not _is_state_dict(ckpt[raw]):
                raise ReproError(f"the '{raw}' entry of {path} is not a state dict of tensors.")
            return ckpt[raw], raw
    for ema in ("model_ema", "state_dict_ema"):
        # Releases that ship only their EMA weights (CSWin's cswin_tiny_224.pth): those are the file's weights.
        if _is_state_dict(ckpt.get(ema)):
            return ckpt[ema], ema
    raise ReproError(f"{path} has none of the entries 'model' or 'state_dict' (found {sorted(map(str, ckpt))[:8]}); "
                     f"expected a checkpoint of this package, an official SLaK checkpoint or a timm weight file.")


def _strip_prefix(state: dict) -> dict:
    # Checkpoints saved from DistributedDataParallel or torch.compile wrappers carry these prefixes.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _adapt_foreign_keys(model: nn.Module, state: dict) -> dict:
    return _models().adapt_state_dict(model, state)


def _classifier_key(model: nn.Module, num_classes: int) -> str | None:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
        head = linears[-1] if linears else None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head:
            return f"{name}.weight"
    return None


def weights_misfit(model: nn.Module, state: dict, num_classes: int) -> dict | None:
    """None when `state` loads into `model` exactly; otherwise what differs: dict(file_classes (the class count
    of the file's classifier, None when not found), missing, unexpected, wrong (shape mismatches))."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or wrong):
        return None
    head = _classifier_key(model, num_classes)
    file_classes = int(state[head].shape[0]) if head is not None and head in state and state[head].dim() else None
    return {"file_classes": file_classes, "missing": missing, "unexpected": unexpected, "wrong": wrong}


def misfit_text(misfit: dict) -> str:
    """The key and shape differences of a `weights_misfit` result, a few of each, on one line."""
    def few(items):
        return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "") or "none"
    return (f"missing keys: {few(misfit['missing'])}; unexpected keys: {few(misfit['unexpected'])}; "
            f"shape mismatches (file vs model): {few(misfit['wrong'])}")


def _check_and_load(model: nn.Module, state: dict, *, model_name: str, num_classes: int, path: Path) -> None:
    misfit = weights_misfit(model, state, num_classes)
    if misfit is not None:
        if misfit["file_classes"] is not None and misfit["file_classes"] != num_classes:
            raise ReproError(
                f"the teacher {path} predicts {misfit['file_classes']} classes but the student's data has "
                f"{num_classes}; distillation needs a teacher trained on the same classes. Train or pick a "
                f"teacher for this dataset.")
        raise ReproError(
            f"the weights in {path} do not fit the architecture {model_name!r}: {misfit_text(misfit)}. Name the "
            f"architecture the teacher was trained as with {_NAME_IT} and use the image size it was trained at; "
            f"{_LIST_THEM}.")
    model.load_state_dict(state, strict=True)


def load_teacher(source: str | Path, *, model_name: str | None = None, num_classes: int, img_size: int,
                 device: str | torch.device = "cpu", use_ema: bool | str = "auto", **kw: Any) -> Teacher:
    """Build a frozen Teacher from a run folder, a checkpoint of this package, an official SLaK checkpoint or a
    timm-style weight file; every mismatch raises ReproError before any training.

    `source` may be
    (a) a run folder of this package (config.yaml + checkpoints/ckpt-*.pt) whose summary.json says 'complete':
        the newest checkpoint is used (a stopped, running or crashed run is refused; pass one of its
        checkpoint files to use it as it is);
    (b) an official SLaK/L2S checkpoint {'model': state_dict, ...} (needs `model_name`);
    (c) a timm-style weight file: a plain state dict, {'state_dict': ...}, an EMA-only {'state_dict_ema': ...}
        (as CSWin ships) or .safetensors (needs `model_name`);
    (d) a checkpoint file of this package {'model': ..., 'config': ...} (the model name comes from its config).
    `use_ema`: True takes the EMA weights ('model_ema' / 'state_dict_ema'), False the raw ones; 'auto' takes
    the EMA weights of a run folder when its summary.json says they were better ("ema_better": true, or
    "best_acc1_ema" > "best_acc1") and the raw weights otherwise. The model is built with
    `repro.models.create_model(name, num_classes=num_classes, img_size=img_size, **config model kwargs)`.
    Other keyword arguments go to `Teacher` (mean, std, student_mean, student_std, deploy, channels_last,
    amp_dtype). Files that hold more than tensors (e.g. numpy arrays) are fully unpickled: load only teacher
    files you trust.
    """
    if use_ema not in (True, False, "auto"):
        raise ReproError(f"use_ema must be True, False or 'auto'; found {use_ema!r}.")
    path = Path(source).expanduser()
    if not path.exists():
        raise ReproError(f"teacher not found: {path} does not exist. Expected a run folder of this package "
                         f"(config.yaml + checkpoints/) or a checkpoint / weight file.")
    config: dict = {}
    if path.is_dir():
        run_dir = path
        path = _latest_checkpoint(run_dir)
        _check_finished(run_dir, path)
        if (run_dir / "config.yaml").is_file():
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if use_ema == "auto":
            use_ema = final_is_ema(run_dir)
    if use_ema == "auto":
        use_ema = False
    ckpt = _read_file(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
        config = ckpt["config"]  # the checkpoint's own record wins over a possibly edited config.yaml
    ours = isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict)
    state, entry = pick_weights(ckpt, path, use_ema)
    state = _strip_prefix(state)

    model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {}
    recorded = model_cfg.get("name")
    if model_name is not None and recorded is not None and model_name != recorded:
        raise ReproError(f"the teacher model {model_name!r} (distill.teacher_model / model_name) contradicts the "
                         f"model {recorded!r} recorded in {path}; leave it unset or set it to {recorded!r}.")
    name = model_name or recorded
    if name is None:
        raise ReproError(f"{path} does not record the teacher's architecture; name it with {_NAME_IT}; "
                         f"{_LIST_THEM}.")
    recorded_classes = model_cfg.get("num_classes")
    if recorded_classes is not None and int(recorded_classes) != int(num_classes):
        raise ReproError(f"the teacher {path} was trained with {recorded_classes} classes but the student's data "
                         f"has {num_classes}; distillation needs a teacher trained on the same classes.")
    extra = dict(model_cfg.get("kwargs") or {})
    # Class count and size come from the arguments (checked above); drop path does nothing in eval mode.
    for key in ("drop_path_rate", "num_classes", "img_size"):
        extra.pop(key, None)
    try:
        model = _models().create_model(name, num_classes=num_classes, img_size=img_size, **extra)
    except ReproError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise ReproError(f"could not build the teacher model {name!r} ({type(e).__name__}: {e}); name a model "
                         f"with {_NAME_IT}; {_LIST_THEM}.") from None
    if not ours:
        # Foreign layouts (older SLaK strip names, original ConvNeXt/ViT files) mapped onto the model's own.
        state = _adapt_foreign_keys(model, state)
    _check_and_load(model, state, model_name=name, num_classes=num_classes, path=path)

    teacher = Teacher(model, **kw).to(device)
    data_cfg = config.get("data") if isinstance(config.get("data"), dict) else {}
    teacher._identity = {"path": str(path.resolve()), "sha256": file_sha256(path), "model_name": name,
                         "weights": entry, "num_classes": int(num_classes),
                         "trained_img_size": data_cfg.get("img_size"), "deploy": teacher.deploy,
                         "renormalizes": teacher.renormalizes}
    return teacher

