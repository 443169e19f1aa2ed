"""repro: reproduce "Are Large Kernels Better Teachers than Transformers for ConvNets?" (ICML 2023).

Sparse large-kernel ConvNets (SLaK) as teachers, small-kernel ConvNeXt students, distillation, and one
training engine that resumes exactly and stops inside a time budget (built for Kaggle sessions).
"""

__version__ = "0.1.0"

from .errors import ReproError  # noqa: E402

__all__ = ["ReproError", "__version__"]
