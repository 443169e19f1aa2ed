"""Parameter and multiply-accumulate counts, dense and non-zero (sparse weights), as the papers report them."""
from typing import Dict

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .slak import LargeKernelConv2d, crop_kernel_to_input


def count_params(model: nn.Module) -> Dict[str, int]:
    """{'total': parameters, 'nonzero': non-zero parameters}; on the meta device (no values) nonzero = total."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    nonzero = sum(p.numel() if p.is_meta else int(torch.count_nonzero(p)) for p in params)
    return {'total': total, 'nonzero': nonzero}


def _density(module: nn.Module, x: torch.Tensor) -> float:
    """Fraction of non-zero weights this conv/linear actually applies to x (after kernel cropping)."""
    weight = module.weight
    if weight.is_meta:
        return 1.0
    if isinstance(module, LargeKernelConv2d) and module.crop:
        weight, _ = crop_kernel_to_input(weight, x.shape[-2], x.shape[-1], module.padding)
    return float(torch.count_nonzero(weight)) / weight.numel()


@torch.no_grad()
def count_flops(model: nn.Module, img_size: int, batch: int = 1, in_chans: int = 3,
                as_executed: bool = False) -> Dict[str, float]:
    """Multiply-accumulates of one forward pass: {'dense': MACs, 'nonzero': MACs counting only non-zero weights}.

    The numbers are multiply-accumulates, the unit the papers call "FLOPs" (ConvNeXt-T: 4.5G at 224);
    torch's FlopCounterMode counts 2 FLOPs per MAC, so its total is halved. Convolutions and linear layers are
    scaled by the non-zero fraction of their weights for 'nonzero'; weight-free matmuls (attention) count fully.
    Large kernels count at their full size, as the papers count them (SLaK-T: 8.7G dense at 224); with
    as_executed=True kernels cropped to small maps count as run (8.5G). Works on the meta device (then
    nonzero = dense).
    """
    param = next(model.parameters())
    x = torch.zeros(batch, in_chans, img_size, img_size, device=param.device, dtype=param.dtype)
    counter, saved = FlopCounterMode(display=False), {'flops': 0.0}
    # Read the running total around each weighted layer to learn what it cost, then discount its zero weights.
    hooks = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def pre(m, args):
                m._flops_before = counter.get_total_flops()

            def post(m, args, out):
                saved['flops'] += (counter.get_total_flops() - m._flops_before) * (1.0 - _density(m, args[0]))
                del m._flops_before
            hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    cropping = {m: m.crop for m in model.modules() if isinstance(m, LargeKernelConv2d)}
    was_training = model.training
    try:
        model.eval()  # no BatchNorm statistics updates from the dummy input
        for m in cropping:
            m.crop = m.crop and as_executed
        with counter:
            model(x)
    finally:
        model.train(was_training)
        for m, crop in cropping.items():
            m.crop = crop
        for h in hooks:
            h.remove()
    dense = counter.get_total_flops() / 2
    return {'dense': dense, 'nonzero': dense - saved['flops'] / 2}
