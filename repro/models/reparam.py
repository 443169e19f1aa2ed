"""Re-parameterization for deployment: fold every BatchNorm into its conv and merge the kernel branches.

The released SLaK code can merge only non-decomposed kernels; here every variant is merged. The default deploy form
keeps the two strips (M x N with the N x N kernel folded in, and N x M), which costs what the training form costs;
`dense=True` merges everything into one M x M kernel, whose depthwise convs cost about 4.9x the strips' multiply-adds
(SLaK-T at 224: 6.4 vs 1.3 GMACs).
"""
import torch.nn as nn
from timm.models import reparameterize_model

from .slak import ReparamLargeKernelConv


def reparameterize(model: nn.Module, dense: bool = False) -> nn.Module:
    """Convert model to its deploy form in place (eval outputs unchanged) and return it."""
    for module in model.modules():
        if isinstance(module, ReparamLargeKernelConv):
            module.reparameterize(dense)
    # timm architectures with their own deploy form (RepVGG-style, MobileOne, ...); a no-op for the others.
    return reparameterize_model(model, inplace=True)
