"""Device and precision decisions shared by the engine, `repro doctor` and the Kaggle pre-flight."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ReproError


def kaggle_root() -> Path:
    """Kaggle's file-system root (/kaggle); REPRO_KAGGLE_ROOT points it elsewhere for tests and dry runs."""
    return Path(os.environ.get("REPRO_KAGGLE_ROOT", "/kaggle"))


def in_kaggle() -> bool:
    """True inside a Kaggle kernel (interactive or committed)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (kaggle_root() / "input").is_dir()


@dataclass
class GpuInfo:
    """What this torch build can do on one CUDA device."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_gb: float
    arch_list: list[str]

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    @property
    def supported(self) -> bool:
        """Whether this torch build ships kernels for the device (exact arch or a compatible PTX)."""
        return kernels_available(self.capability, self.arch_list)


def kernels_available(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """True when `arch_list` (torch.cuda.get_arch_list()) can run on a device of `capability`.

    A cubin runs on the same major version at an equal or higher minor; PTX (compute_XY) is JIT-compiled
    for any device at or above XY.
    """
    major, minor = capability
    for arch in arch_list:
        kind, _, num = arch.partition("_")
        if not num.isdigit():
            continue
        a_major, a_minor = int(num[:-1]), int(num[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def gpu_info(index: int = 0) -> GpuInfo | None:
    """Describe CUDA device `index`, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(index)
    return GpuInfo(index, props.name, (props.major, props.minor), props.total_memory / 2**30,
                   list(torch.cuda.get_arch_list()))


def recommended_precision(capability: tuple[int, int] | None) -> str:
    """fp32 on CPU and Pascal (no tensor cores), fp16 AMP on Volta/Turing (T4), bf16 from Ampere (8.0) on."""
    if capability is None:
        return "fp32"
    if capability >= (8, 0):
        return "bf16"
    if capability >= (7, 0):
        return "fp16"
    return "fp32"


def check_gpu_runs(info: GpuInfo) -> None:
    """Fail fast when the installed torch has no kernels for this GPU (e.g. a P100 on current Kaggle images)."""
    if not info.supported:
        raise ReproError(
            f"GPU {info.name} has compute capability {info.capability[0]}.{info.capability[1]} ({info.sm}), "
            f"but this torch {torch.__version__} only ships kernels for {' '.join(info.arch_list) or 'no GPU'}; "
            "the first CUDA kernel would fail with 'no kernel image is available'. "
            "On Kaggle choose a T4 or L4 accelerator (the P100 is retired); elsewhere install a torch build "
            "that supports this GPU, or run with --device cpu.")


def resolve_device(requested: str | None = None) -> torch.device:
    """cuda when available (checked for kernel support), else cpu; `requested` forces one."""
    if requested in (None, "", "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ReproError("--device cuda was asked for, but torch sees no CUDA GPU "
                             f"(torch {torch.__version__}); use --device cpu or enable a GPU")
        dev = torch.device(requested)
        info = gpu_info(dev.index or 0)
        check_gpu_runs(info)
        return dev
    if requested != "cpu":
        raise ReproError(f"--device expects cpu, cuda or cuda:N, found '{requested}'")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn 'auto' into fp32/fp16/bf16 for `device`, refusing bf16 below compute capability 8.0."""
    choices = ("auto", "fp32", "fp16", "bf16")
    if precision not in choices:
        raise ReproError(f"train.precision expects one of {', '.join(choices)}, found '{precision}'")
    cap = None
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
    if precision == "auto":
        return recommended_precision(cap)
    if precision == "bf16" and device.type == "cuda" and cap < (8, 0):
        raise ReproError(f"bf16 needs compute capability 8.0 or newer, this GPU has {cap[0]}.{cap[1]} "
                         "(torch may claim support through slow emulation); use precision fp16 or auto")
    if precision == "fp16" and device.type == "cpu":
        raise ReproError("fp16 autocast is for CUDA GPUs; on CPU use precision fp32 (or bf16)")
    return precision
