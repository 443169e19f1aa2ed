"""The paper's distillation metrics (Huang et al., ICML 2023, Section 4).

Accuracies go in as top-1 percentages (e.g. 82.1). Direct Gain is in percentage points; Effective Gain is
a ratio (points gained per point of teacher accuracy), e.g. (83.1 - 82.1) / 82.5 = 0.0121.
Scalars, numpy arrays and pandas Series all work; a missing value (NaN) gives NaN, so a missing cell of a
table stays missing.
"""
from __future__ import annotations

import numpy as np

from ..errors import ReproError

__all__ = ["direct_gain", "effective_gain"]


def _check_percent(name: str, value, positive: bool = False) -> None:
    arr = np.asarray(value, dtype=float)
    known = arr[~np.isnan(arr)]
    low = 0.0 if not positive else np.nextafter(0.0, 1.0)
    if known.size and (known.min() < low or known.max() > 100.0):
        raise ReproError(f"{name} must be a top-1 accuracy in percent ({'above 0' if positive else '0'}-100); "
                         f"found {value!r}.")


def direct_gain(acc_distilled, acc_student):
    """Direct Gain = acc(distilled student) - acc(student trained alone), in percentage points."""
    _check_percent("acc_distilled", acc_distilled)
    _check_percent("acc_student", acc_student)
    return acc_distilled - acc_student


def effective_gain(acc_distilled, acc_student, acc_teacher):
    """Effective Gain = Direct Gain / acc(teacher), a ratio (all accuracies in percent)."""
    _check_percent("acc_teacher", acc_teacher, positive=True)
    return direct_gain(acc_distilled, acc_student) / acc_teacher
