"""A run moving between machines: precision and process count on resume, kernel determinism, torch.compile.

`precision: auto` resolves to fp16 on a T4 and bf16 on an L4, and a Kaggle run may continue on one GPU what it
began on two. Both are fine when nothing that changes results changes: the resolved precision is recorded in
every checkpoint and a different one is refused (or, with --force, continued with a fresh loss scaler), and the
global batch (batch_size x processes x accum_steps) must stay the same, so the sample order, the schedule and
the position in both carry over exactly.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

from ..errors import ReproError

log = logging.getLogger("repro.train")

# Config keys whose change is judged here, by what they mean for the run, not by their literal values.
HARDWARE_KEYS = ("train.accum_steps", "train.batch_size", "train.precision")
COMPILE_CHOICES = ("off", "student", "all")


def without_hardware_keys(diffs: list[str]) -> list[str]:
    """Config differences other than the ones `check_global_batch` and `check_precision` decide."""
    return [d for d in diffs if not d.startswith(tuple(k + ":" for k in HARDWARE_KEYS))]


def saved_precision(state: dict) -> str | None:
    """The resolved precision a checkpoint was trained in; for older checkpoints what can be told (fp16 left
    a loss-scaler state; an explicit config value), else None."""
    if state.get("precision"):
        return state["precision"]
    if state.get("scaler"):
        return "fp16"
    value = ((state.get("config") or {}).get("train") or {}).get("precision")
    return value if value in ("fp32", "fp16", "bf16") else None


def check_precision(saved: str | None, now: str, force: bool, where) -> bool:
    """Refuse to continue a run in another precision unless forced; True when the loss scaler starts fresh."""
    if saved is None or saved == now:
        return False
    if not force:
        raise ReproError(
            f"{where} was trained in {saved} and this machine resolves train.precision to {now}; continuing would "
            f"change the numerics mid-run. Pass --set train.precision={saved} to keep {saved}"
            + (" (fp16 needs a CUDA GPU)" if saved == "fp16" else "")
            + f", or --force to continue in {now} with a fresh loss scaler")
    log.warning("continuing a %s run in %s (--force): the loss scaler starts fresh", saved, now)
    return True


def global_batch(batch_size: int, world_size: int, accum_steps: int) -> int:
    """Images per optimizer step over all processes."""
    return batch_size * world_size * accum_steps


def check_global_batch(saved: dict, batch_size: int, world_size: int, accum_steps: int, where) -> None:
    """Refuse a resume whose global batch differs; name the accum_steps (or batch_size) that keeps it.

    `saved` holds the checkpoint's batch_size, world_size and accum_steps.
    """
    old = global_batch(saved["batch_size"], saved["world_size"], saved["accum_steps"])
    new = global_batch(batch_size, world_size, accum_steps)
    if old == new:
        if (saved["world_size"], saved["accum_steps"], saved["batch_size"]) != (world_size, accum_steps, batch_size):
            log.info("continuing a run of %d process(es) x batch %d x %d accumulation on %d x %d x %d (global "
                     "batch %d either way)", saved["world_size"], saved["batch_size"], saved["accum_steps"],
                     world_size, batch_size, accum_steps, new)
        return
    fixes = []
    if old % (batch_size * world_size) == 0:
        fixes.append(f"--set train.accum_steps={old // (batch_size * world_size)}")
    if old % (world_size * accum_steps) == 0:
        fixes.append(f"--set train.batch_size={old // (world_size * accum_steps)}")
    todo = (" or ".join(fixes) + " keeps it") if fixes else (
        f"run on {saved['world_size']} process(es) with batch {saved['batch_size']} x {saved['accum_steps']} "
        "accumulation as before")
    raise ReproError(
        f"{where} was trained with a global batch of {old} ({saved['world_size']} process(es) x batch "
        f"{saved['batch_size']} x {saved['accum_steps']} accumulation); this launch has {new} ({world_size} x "
        f"{batch_size} x {accum_steps}), which would change the schedule and the sample order: {todo}")


def configure_kernels(device: torch.device, deterministic: bool) -> None:
    """On CUDA: deterministic cuDNN/cuBLAS when asked, else cudnn.benchmark. CPU kernels are left as they are
    (they are deterministic already, and changing them would change CPU results)."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False


def check_compile(value: str) -> str:
    """Validate train.compile."""
    if value not in COMPILE_CHOICES:
        raise ReproError(f"train.compile expects one of {', '.join(COMPILE_CHOICES)}, found {value!r} "
                         "(set e.g. --set train.compile=student)")
    return value


def compiled(module: nn.Module, what: str) -> nn.Module:
    """torch.compile(module): parameters stay shared with `module`, so checkpoints keep their plain keys.
    Compilation happens lazily on the first call; the engine reports how long that step took."""
    try:
        return torch.compile(module, dynamic=False)
    except Exception as exc:  # e.g. no C++ compiler for the CPU backend, an unsupported Python
        raise ReproError(f"torch.compile of the {what} failed ({type(exc).__name__}: {exc}); "
                         "set train.compile=off to train eagerly") from None
