"""The teacher/student grid of the paper, with the feature channels FD projectors need.

Teachers: SLaK-T/S/B (51x51 sparse large kernels), ConvNeXt-T (7x7), ViT-S and Swin-T (Transformers).
Students: ConvNeXt L2S-T (the SLaK-skeleton ConvNeXt of the KD code), timm ConvNeXt atto..tiny, ResNet-50.
Channel counts are read from the model definitions (`repro.models.feature_channels`) on the meta device, so
no weights are allocated; they do not depend on the input size, which is recorded for the FD target size.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..errors import ReproError

__all__ = ["PAPER_TEACHERS", "PAPER_STUDENTS", "PAPER_PAIRS", "PAPER_IMG_SIZES", "Pair", "paper_pairs",
           "model_feature_channels"]

# The paper's five teacher families: ViT-S and CSWin-T in the authors' own networks (vit_small_l2s, cswin_tiny);
# timm's DeiT-style vit_small stays for comparison.
PAPER_TEACHERS = ("slak_tiny", "slak_small", "slak_base", "convnext_tiny", "vit_small_l2s", "cswin_tiny",
                  "vit_small", "swin_tiny")
PAPER_STUDENTS = ("l2s_convnext_tiny", "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano",
                  "convnext_tiny", "resnet50")
PAPER_PAIRS = tuple((t, s) for t in PAPER_TEACHERS for s in PAPER_STUDENTS)
PAPER_IMG_SIZES = (32, 224)


@dataclass(frozen=True)
class Pair:
    """One teacher -> student pairing at one input size, with last-stage channels of both."""

    teacher: str
    student: str
    img_size: int
    teacher_channels: int
    student_channels: int


@lru_cache(maxsize=None)
def model_feature_channels(name: str, img_size: int, num_classes: int = 100) -> int:
    """Channels of the last-stage feature map of model `name`, built on the meta device (no memory)."""
    from .. import models
    with torch.device("meta"):
        model = models.create_model(name, num_classes=num_classes, img_size=img_size)
    return int(models.feature_channels(model))


def paper_pairs(img_size: int = 32, num_classes: int = 100) -> list[Pair]:
    """Every (teacher, student) pair of the paper's grid at `img_size`, with feature channels."""
    if int(img_size) <= 0:
        raise ReproError(f"img_size must be a positive number of pixels; found {img_size!r}.")
    return [Pair(t, s, int(img_size), model_feature_channels(t, int(img_size), num_classes),
                 model_feature_channels(s, int(img_size), num_classes)) for t, s in PAPER_PAIRS]
