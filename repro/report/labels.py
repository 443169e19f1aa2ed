"""Display names and number formats for tables and figures.

Model labels are derived from the model name recorded in each summary, never from folder or preset names:
the seed report swapped the SLaK-S and SLaK-B labels, and a folder name is whatever a user typed.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

_SIZES = {"tiny": "T", "small": "S", "base": "B", "large": "L", "xlarge": "XL", "atto": "Atto", "femto": "Femto",
          "pico": "Pico", "nano": "Nano", "micro": "micro"}

_FIXED = {"resnet50": "ResNet-50", "resnet18": "ResNet-18", "vit_small": "ViT-S", "vit_tiny": "ViT-Ti",
          "vit_base": "ViT-B", "swin_tiny": "Swin-T", "swin_small": "Swin-S", "cswin_tiny": "CSWin-T"}

_METHODS = {"kd": "KD", "hard": "hard KD", "nkd": "NKD", "dkd": "DKD", "fd": "FD", "kd+fd": "KD+FD",
            "nkd+fd": "NKD+FD"}


def model_label(name: str | None) -> str:
    """Paper-style label of a model name: slak_small -> SLaK-S, l2s_convnext_tiny -> ConvNeXt-T (7x7+BN)."""
    if not name:
        return "—"
    if name in _FIXED:
        return _FIXED[name]
    parts = name.split("_")
    if parts[0] == "slak" and len(parts) >= 2 and parts[1] in _SIZES:
        # The _mxm variants are SLaK without kernel decomposition (one M x M depthwise kernel).
        suffix = " (MxM)" if parts[2:] == ["mxm"] else ""
        return f"SLaK-{_SIZES[parts[1]]}{suffix}" if not parts[2:] or suffix else name
    if parts[0] == "l2s" and parts[1:2] == ["convnext"] and len(parts) == 3 and parts[2] in _SIZES:
        # The paper's student: the SLaK skeleton with 7x7 kernels and BatchNorm.
        return f"ConvNeXt-{_SIZES[parts[2]]} (7x7+BN)"
    if parts[0] == "convnext" and len(parts) == 2 and parts[1] in _SIZES:
        return f"ConvNeXt-{_SIZES[parts[1]]}"
    return name


def method_label(method: str | None) -> str:
    """KD method label (NKD, KD+FD, ...); '—' when trained alone."""
    if not method:
        return "—"
    return _METHODS.get(method.lower(), method)


def is_missing(value: Any) -> bool:
    """True for None, NaN and pandas NA."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def fmt(value: Any, digits: int = 2, signed: bool = False) -> str:
    """A number with fixed decimals; '—' for a missing value."""
    if is_missing(value):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_mean_std(mean: Any, std: Any, digits: int = 2) -> str:
    """'mean ± std', or just the mean when there is one run; '—' when missing."""
    if is_missing(mean):
        return "—"
    return fmt(mean, digits) if is_missing(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_gain(value: Any, std: Any, digits: int = 2) -> str:
    """A signed gain with its standard deviation ('+1.20 ± 0.35'), the gain alone without one; '—' when missing."""
    if is_missing(value):
        return "—"
    return fmt(value, digits, signed=True) + ("" if is_missing(std) else f" ± {std:.{digits}f}")


def fmt_count(value: Any) -> str:
    """Parameter counts as 30.47M / 812.3K."""
    if is_missing(value):
        return "—"
    value = float(value)
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}K"
    return f"{value:.0f}"


def fmt_duration(seconds: Any) -> str:
    """Wall time as 2.04 h / 35.2 min / 42 s."""
    if is_missing(seconds):
        return "—"
    seconds = float(seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def hardware_label(env: dict[str, Any] | None) -> str:
    """Where a run trained: '2x Tesla T4', 'NVIDIA H100', or 'CPU'."""
    env = env or {}
    gpu = env.get("gpu")
    world = int(env.get("world_size") or 1)
    if not gpu:
        device = str(env.get("device") or "cpu")
        return "CPU" if device.startswith("cpu") else device
    return f"{world}x {gpu}" if world > 1 else str(gpu)
