"""`repro doctor`: what this machine can run, and whether the installed torch can drive its GPU.

The report names the versions (python, torch, timm, repro, cuDNN), the CUDA devices with their compute
capability and memory (total, and free as the driver reports it: what a run can actually reserve), whether this
torch build ships kernels for each (a P100, capability 6.0, on a current Kaggle image has none), whether it runs
inside Kaggle (and as a committed Batch run or an Interactive session), and the precision the engine picks for
`train.precision: auto`. `repro kaggle preflight` builds on the same facts.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform

import torch

from . import __version__, device
from .errors import ReproError


def _distribution_version(name: str) -> str | None:
    # Metadata only: importing timm would cost seconds in the pre-flight's child process.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cudnn_version() -> int | None:
    """cuDNN's version number as torch reports it, or None when it is not usable (no CUDA device)."""
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:  # a broken cuDNN install raises here rather than in training
        return None


def cudnn_text(version: int | None) -> str:
    """9.1.0 from 90100 (cuDNN 9 counts major x 10000), 8.9.7 from 8907 (cuDNN 8: major x 1000)."""
    if not version:
        return "none"
    major = version // 10000 if version >= 10000 else version // 1000
    rest = version % 10000 if version >= 10000 else version % 1000
    return f"{major}.{rest // 100}.{rest % 100}"


def _free_memory_mib(index: int) -> int | None:
    """Free memory of device `index` in MiB as the driver reports it (opens a CUDA context there), or None."""
    try:
        free, _ = torch.cuda.mem_get_info(index)
    except (RuntimeError, AssertionError):  # no driver, a device this process cannot open
        return None
    return int(free // 2**20)


def doctor() -> dict:
    """Versions, devices, kernel support, Kaggle context and recommended precision, as a JSON-ready dict.

    `error` holds the ReproError text when a visible GPU cannot run this torch build, else None.
    """
    gpus, error = [], None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index in range(count):
        info = device.gpu_info(index)
        total = torch.cuda.get_device_properties(index).total_memory
        gpus.append({"index": index, "name": info.name, "capability": list(info.capability), "sm": info.sm,
                     "memory_gb": round(info.memory_gb, 1), "total_memory_mib": int(total // 2**20),
                     "free_memory_mib": _free_memory_mib(index), "kernels_available": info.supported})
        if error is None:
            try:
                device.check_gpu_runs(info)
            except ReproError as exc:
                error = str(exc)
    capability = tuple(gpus[0]["capability"]) if gpus else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "repro": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": _cudnn_version() if count else None,  # a CUDA build carries cuDNN; without a GPU it is unused
        "timm": _distribution_version("timm"),
        "arch_list": list(torch.cuda.get_arch_list()) if count else [],
        "device": "cuda" if gpus else "cpu",
        "gpu_count": count,
        "gpus": gpus,
        "precision": device.recommended_precision(capability),
        "in_kaggle": device.in_kaggle(),
        "kaggle_run_type": os.environ.get("KAGGLE_KERNEL_RUN_TYPE"),
        "kaggle_root": str(device.kaggle_root()),
        "error": error,
    }


def format_doctor(d: dict) -> str:
    """The doctor report as aligned text lines."""
    rows = [
        ("python", f"{d['python']} ({d['platform']})"),
        ("repro", d["repro"]),
        ("torch", f"{d['torch']} (CUDA {d['torch_cuda'] or 'none'})"),
        ("cuDNN", cudnn_text(d.get("cudnn")) + ("" if d.get("cudnn") else " (no CUDA device)")),
        ("timm", d["timm"] or "not installed"),
        ("device", d["device"]),
        ("GPUs", str(d["gpu_count"])),
    ]
    for gpu in d["gpus"]:
        support = "kernels available" if gpu["kernels_available"] else "NO kernels in this torch build"
        rows.append((f"  cuda:{gpu['index']}", f"{gpu['name']}, compute capability "
                     f"{gpu['capability'][0]}.{gpu['capability'][1]} ({gpu['sm']}), {gpu['memory_gb']} GB, {support}"))
        free = gpu.get("free_memory_mib")
        rows.append(("    memory", f"{gpu.get('total_memory_mib')} MiB total, "
                     + (f"{free} MiB free" if free is not None else "free memory unknown")))
    if d["gpu_count"]:
        rows.append(("torch archs", " ".join(d["arch_list"]) or "none"))
    kaggle = "no"
    if d["in_kaggle"]:
        kaggle = f"yes ({d['kaggle_run_type'] or 'run type unknown'}; root {d['kaggle_root']})"
    rows.append(("in Kaggle", kaggle))
    rows.append(("precision", f"{d['precision']} (what train.precision=auto picks here)"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    if d["error"]:
        lines.append(f"PROBLEM: {d['error']}")
    return "\n".join(lines)


def _run(args) -> int:
    d = doctor()
    print(json.dumps(d, indent=2) if args.json else format_doctor(d))
    if d["error"]:
        raise ReproError(d["error"])
    return 0


def register(subparsers) -> None:
    """Add `repro doctor` to the command line."""
    p = subparsers.add_parser(
        "doctor", help="report versions, GPUs, kernel support, Kaggle context and precision",
        description="Report python/torch/timm/cuDNN versions, the GPUs with their memory and whether this torch "
                    "build has kernels for them, whether this runs inside Kaggle, and the precision `auto` picks. "
                    "Exits with status 2 when a visible GPU cannot run this torch build (e.g. a P100 on current "
                    "Kaggle images).")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run)
