"""Knowledge distillation: logit losses (KD, NKD, DKD), feature distillation (FD), the frozen teacher and
the paper's gain metrics. Pieces used by the training engine; this package knows nothing about it.
"""
from .losses import (DEFAULTS, METHODS, DistillCriterion, DKDLoss, FDLoss, KDLoss, NKDLoss, build_distill_loss,
                     cross_entropy, hard_labels)
from .metrics import direct_gain, effective_gain
from .pairs import (PAPER_IMG_SIZES, PAPER_PAIRS, PAPER_STUDENTS, PAPER_TEACHERS, Pair, model_feature_channels,
                    paper_pairs)
from .teacher import Teacher, file_sha256, load_teacher, renormalize

__all__ = [
    "KDLoss", "NKDLoss", "DKDLoss", "FDLoss", "DistillCriterion", "build_distill_loss", "METHODS", "DEFAULTS",
    "cross_entropy", "hard_labels", "direct_gain", "effective_gain", "Teacher", "load_teacher", "file_sha256",
    "renormalize", "PAPER_TEACHERS", "PAPER_STUDENTS", "PAPER_PAIRS", "PAPER_IMG_SIZES", "Pair", "paper_pairs",
    "model_feature_channels",
]
