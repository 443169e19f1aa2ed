"""SLaK: sparse large-kernel ConvNets, and the paper's 7x7 ConvNeXt student built on the same skeleton.

Papers:
    Liu et al., "More ConvNets in the 2020s: Scaling up Kernels Beyond 51x51 using Sparsity", ICLR 2023
    (arXiv 2207.03620): the SLaK architecture.
    Huang et al., "Are Large Kernels Better Teachers than Transformers for ConvNets?", ICML 2023
    (arXiv 2305.19412): SLaK teachers and the ConvNeXt student (SLaK skeleton, 7x7 kernel + BatchNorm).
Original code: https://github.com/VITA-Group/SLaK (models/SLaK.py). Module and parameter names follow it, so its
released checkpoints ({'model': state_dict}) load with strict=True and give the same outputs.

Beyond the original: BatchNorm2d unless SyncBatchNorm is asked for, a configurable stem stride for small
images, exact kernel cropping on small feature maps (`crop_kernel_to_input`), and re-parameterization of every
variant, decomposed ones included.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.models import register_model

from ..errors import ReproError


def crop_kernel_to_input(
        weight: torch.Tensor, H: int, W: int, padding: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Crop a stride-1 conv kernel to the taps that can reach an H x W input; returns (weight, padding).

    Output i reads input i - p + a through tap a, so taps a < p - out + 1 and a > p + size - 1 only ever read
    zero padding. Dropping c such taps at both ends (the kernel stays centred: a "same" k x k kernel becomes
    2*size-1 wide once k > 2*size-1) with padding p - c leaves the output, the input gradient and the gradient of
    every kept tap unchanged; the dropped taps would have received zero gradient anyway.
    """
    kh, kw = weight.shape[-2:]
    (ph, pw), out_h, out_w = padding, H + 2 * padding[0] - kh + 1, W + 2 * padding[1] - kw + 1
    # Largest symmetric crop c such that taps [0, c) and [k - c, k) touch only padding for every output.
    ch = max(0, min(ph - out_h + 1, kh - ph - H))
    cw = max(0, min(pw - out_w + 1, kw - pw - W))
    if ch == 0 and cw == 0:
        return weight, (ph, pw)
    return weight[..., ch:kh - ch, cw:kw - cw], (ph - ch, pw - cw)


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, padding: Tuple[int, int]) -> torch.Tensor:
    """Weight gradient (C, 1, kh, kw) of a stride-1 depthwise conv, computed as one depthwise forward conv.

    dL/dw[c, a, b] = sum over n, i, j of x_padded[n, c, i + a, j + b] * grad_out[n, c, i, j]: a depthwise conv
    of the N * C input maps with the N * C gradient maps as kernels, summed over the batch. On CPU this runs
    5-25x faster than PyTorch's own depthwise weight gradient. Wide kernels (kw > kh) are computed on the
    spatially transposed maps, where oneDNN's depthwise kernel is fast, and transposed back.
    """
    n, c, h, w = x.shape
    ho, wo = grad_out.shape[-2:]
    kh, kw = h + 2 * padding[0] - ho + 1, w + 2 * padding[1] - wo + 1
    if kh * kw == 1:  # a 1x1 kernel is a plain product; the conv route is pathologically slow there
        return (x * grad_out).sum((0, 2, 3)).reshape(c, 1, 1, 1)
    if kw > kh:
        return depthwise_weight_grad(x.transpose(-1, -2), grad_out.transpose(-1, -2),
                                     (padding[1], padding[0])).transpose(-1, -2)
    maps = x.transpose(0, 1).reshape(1, c * n, h, w)
    kernels = grad_out.transpose(0, 1).reshape(c * n, 1, ho, wo)
    return F.conv2d(maps, kernels, None, 1, padding, 1, c * n).view(c, n, kh, kw).sum(1, keepdim=True)


def depthwise_input_grad(grad_out: torch.Tensor, weight: torch.Tensor, padding: Tuple[int, int]) -> torch.Tensor:
    """Input gradient of a stride-1 depthwise conv with padding p <= k - 1: the same conv, kernel flipped, padding
    k - 1 - p (a forward conv, faster on CPU than PyTorch's depthwise input gradient)."""
    kh, kw = weight.shape[-2:]
    return F.conv2d(grad_out, weight.flip(-2, -1), None, 1, (kh - 1 - padding[0], kw - 1 - padding[1]), 1,
                    weight.shape[0])


class _DepthwiseConv2d(torch.autograd.Function):
    """Stride-1 depthwise conv whose weight gradient comes from `depthwise_weight_grad` (exact, faster on CPU)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.padding[0] < weight.shape[-2] and ctx.padding[1] < weight.shape[-1]:
                grad_x = depthwise_input_grad(grad_out, weight, ctx.padding)
            else:  # wider padding than the flipped form can express
                grad_x = torch.ops.aten.convolution_backward(
                    grad_out, x, weight, None, (1, 1), ctx.padding, (1, 1), False, (0, 0), x.shape[1],
                    (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, ctx.padding).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class LargeKernelConv2d(nn.Conv2d):
    """Stride-1 zero-padded conv that skips the kernel taps which only see padding (exact, see crop_kernel_to_input).

    When depthwise and training on CPU (outside autocast), its weight gradient is computed by
    `depthwise_weight_grad` unless `fast_backward` is False; outputs and gradients are the plain conv's.
    """

    def __init__(self, *args, crop: bool = True, fast_backward: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        plain = (self.stride == (1, 1) and self.dilation == (1, 1) and self.padding_mode == 'zeros'
                 and isinstance(self.padding, tuple))
        self.crop = crop and plain
        self.fast_backward = fast_backward and plain and self.groups == self.in_channels == self.out_channels

    def _use_fast_backward(self, x: torch.Tensor) -> bool:
        """The custom weight gradient pays off for CPU training in float; autocast keeps the native path."""
        return (self.fast_backward and x.device.type == 'cpu' and torch.is_grad_enabled()
                and (x.requires_grad or self.weight.requires_grad) and not torch.is_autocast_enabled('cpu')
                and x.dim() == 4 and x.shape[1] == self.in_channels)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if not self.crop and not self.fast_backward:
            return super()._conv_forward(x, weight, bias)
        padding = self.padding
        if self.crop:
            weight, padding = crop_kernel_to_input(weight, x.shape[-2], x.shape[-1], padding)
        if self._use_fast_backward(x):
            return _DepthwiseConv2d.apply(x, weight, bias, tuple(padding))
        return F.conv2d(x, weight, bias, 1, padding, 1, self.groups)


class ConvBN(nn.Sequential):
    """Bias-free depthwise conv with "same" padding followed by its own BatchNorm (the official conv_bn)."""

    def __init__(self, channels: int, kernel_size: Tuple[int, int], bn: bool = True, sync_bn: bool = False,
                 crop: bool = True):
        super().__init__()
        padding = (kernel_size[0] // 2, kernel_size[1] // 2)
        self.conv = LargeKernelConv2d(channels, channels, kernel_size, 1, padding, groups=channels, bias=False,
                                      crop=crop)
        if bn:
            self.bn = nn.SyncBatchNorm(channels) if sync_bn else nn.BatchNorm2d(channels)

    def fused_kernel_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Kernel and bias of the conv with its BatchNorm folded in (eval statistics)."""
        kernel = self.conv.weight
        if not hasattr(self, 'bn'):
            return kernel, torch.zeros(kernel.shape[0], device=kernel.device, dtype=kernel.dtype)
        bn = self.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def _pad_to(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad an odd-sized kernel symmetrically to height x width (centres stay aligned)."""
    dh, dw = height - kernel.shape[-2], width - kernel.shape[-1]
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


class ReparamLargeKernelConv(nn.Module):
    """Depthwise large-kernel path: M x N + N x M (+ N x N) strips when decomposed, else M x M (+ N x N).

    `reparameterize` replaces the branches by `LoRA1_reparam` + `LoRA2_reparam` (strips, N x N folded into the
    first) or by one `lkb_reparam` conv (dense, and always for square kernels, as the released merge names it).

    Args:
        channels: Channels (the convs are depthwise).
        kernel_size: Large kernel size M.
        small_kernel: Short edge N; an N x N branch is added when N < M.
        decom: Decompose the M x M kernel into M x N and N x M strips (SLaK) or keep it square.
        bn: Follow every conv by its own BatchNorm.
        sync_bn: Use SyncBatchNorm (multi-GPU training) instead of BatchNorm2d.
        crop: Crop kernels to the input size on small maps (exact).
    """

    def __init__(self, channels: int, kernel_size: int, small_kernel: int, decom: bool = True, bn: bool = True,
                 sync_bn: bool = False, crop: bool = True):
        super().__init__()
        self.channels, self.kernel_size, self.small_kernel, self.crop = channels, kernel_size, small_kernel, crop
        self.decom = decom
        branch = dict(channels=channels, bn=bn, sync_bn=sync_bn, crop=crop)
        if decom:
            self.LoRA1 = ConvBN(kernel_size=(kernel_size, small_kernel), **branch)
            self.LoRA2 = ConvBN(kernel_size=(small_kernel, kernel_size), **branch)
        else:
            self.lkb_origin = ConvBN(kernel_size=(kernel_size, kernel_size), **branch)
        if small_kernel < kernel_size:
            self.small_conv = ConvBN(kernel_size=(small_kernel, small_kernel), **branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, 'lkb_reparam'):
            return self.lkb_reparam(x)
        if hasattr(self, 'LoRA1_reparam'):
            return self.LoRA1_reparam(x) + self.LoRA2_reparam(x)
        out = self.LoRA1(x) + self.LoRA2(x) if self.decom else self.lkb_origin(x)
        if hasattr(self, 'small_conv'):
            out = out + self.small_conv(x)
        return out

    def _deploy_conv(self, kernel: torch.Tensor, bias: Optional[torch.Tensor]) -> LargeKernelConv2d:
        """A depthwise conv with bias (or none) holding the given folded kernel."""
        kh, kw = kernel.shape[-2:]
        conv = LargeKernelConv2d(self.channels, self.channels, (kh, kw), 1, (kh // 2, kw // 2), groups=self.channels,
                                 bias=bias is not None, crop=self.crop, device=kernel.device, dtype=kernel.dtype)
        conv.weight.data.copy_(kernel)
        if bias is not None:
            conv.bias.data.copy_(bias)
        return conv

    @torch.no_grad()
    def reparameterize(self, dense: bool = False) -> None:
        """Fold BatchNorms into the convs and merge branches: two strips (default) or one M x M conv (dense)."""
        if hasattr(self, 'lkb_reparam') or hasattr(self, 'LoRA1_reparam'):
            return
        m, n = self.kernel_size, self.small_kernel
        branches = ['LoRA1', 'LoRA2'] if self.decom else ['lkb_origin']
        branches += ['small_conv'] if hasattr(self, 'small_conv') else []
        fused = {name: getattr(self, name).fused_kernel_bias() for name in branches}
        bias = sum(b for _, b in fused.values())
        if self.decom and not dense:
            strip1 = fused['LoRA1'][0]
            if 'small_conv' in fused:
                strip1 = strip1 + _pad_to(fused['small_conv'][0], m, n)
            self.LoRA1_reparam = self._deploy_conv(strip1, bias)
            self.LoRA2_reparam = self._deploy_conv(fused['LoRA2'][0], None)
        else:
            size = max(m, n) if self.decom else m
            kernel = sum(_pad_to(k, size, size) for k, _ in fused.values())
            self.lkb_reparam = self._deploy_conv(kernel, bias)
        for name in branches:
            delattr(self, name)


def large_kernel_param_names(model: nn.Module) -> List[str]:
    """Names of the large-kernel depthwise weights (M x N, N x M or M x M; not the N x N branch, not BatchNorms)."""
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, ReparamLargeKernelConv):
            names += [f'{prefix}.{name}.weight' for name, conv in module.named_modules()
                      if isinstance(conv, nn.Conv2d) and not name.startswith('small_conv')]
    return names


class Block(nn.Module):
    """SLaK block: large-kernel depthwise path -> LayerNorm -> MLP (4x) -> layer scale -> DropPath -> residual.

    Args:
        dim: Channels.
        kernel_size: (M, N) large kernel and short edge.
        decom: Decompose the large kernel into strips.
        bn: BatchNorm after each depthwise conv.
        drop_path: Stochastic depth rate.
        layer_scale_init_value: Initial layer scale gamma (no gamma if <= 0).
        sync_bn: Use SyncBatchNorm.
        crop: Crop kernels to the input size on small maps (exact).
    """

    def __init__(self, dim: int, kernel_size: Tuple[int, int], decom: bool = True, bn: bool = True,
                 drop_path: float = 0., layer_scale_init_value: float = 1e-6, sync_bn: bool = False,
                 crop: bool = True):
        super().__init__()
        self.large_kernel = ReparamLargeKernelConv(dim, kernel_size[0], kernel_size[1], decom, bn, sync_bn, crop)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.large_kernel(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class SLaK(nn.Module):
    """SLaK (and the SLaK-skeleton ConvNeXt student): a ConvNeXt with large, optionally decomposed kernels.

    Args:
        in_chans: Input channels.
        num_classes: Classes of the head (0: no head, forward returns pooled, normalised features).
        depths: Blocks per stage.
        dims: Base channels per stage, multiplied by width_factor and truncated to int.
        drop_path_rate: Stochastic depth rate, rising linearly over the blocks to this value.
        layer_scale_init_value: Initial layer scale gamma.
        head_init_scale: Factor applied to the initial head weight and bias.
        kernel_size: Large kernel M of each of the 4 stages, then the short edge N.
        width_factor: Channel multiplier (1.3 for SLaK).
        Decom: Decompose each M x M kernel into M x N and N x M strips.
        bn: BatchNorm after every depthwise conv.
        stem_stride: Patchify stem kernel and stride (4 in the papers; smaller keeps more resolution on 32x32).
        sync_bn: Use SyncBatchNorm (as the released code always does) instead of BatchNorm2d.
        crop_kernels: Crop kernels to the feature-map size (exact; saves compute on small images).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Sequence[int] = (3, 3, 9, 3),
            dims: Sequence[int] = (96, 192, 384, 768),
            drop_path_rate: float = 0.,
            layer_scale_init_value: float = 1e-6,
            head_init_scale: float = 1.,
            kernel_size: Sequence[int] = (51, 49, 47, 13, 5),
            width_factor: float = 1.3,
            Decom: bool = True,
            bn: bool = True,
            stem_stride: int = 4,
            sync_bn: bool = False,
            crop_kernels: bool = True,
    ):
        super().__init__()
        _check_args(depths, dims, kernel_size, Decom, stem_stride)
        dims = [int(d * width_factor) for d in dims]
        self.num_classes, self.num_features, self.kernel_size = num_classes, dims[-1], list(kernel_size)
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=stem_stride, stride=stem_stride),
            LayerNorm2d(dims[0], eps=1e-6))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(dims[i], eps=1e-6), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i in range(4):
            self.stages.append(nn.Sequential(*[
                Block(dims[i], (kernel_size[i], kernel_size[-1]), Decom, bn, rates[sum(depths[:i]) + j],
                      layer_scale_init_value, sync_bn, crop_kernels)
                for j in range(depths[i])]))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        if not self.norm.weight.is_meta:  # meta tensors (shape-only builds) hold no values to initialise
            self.apply(self._init_weights)
        if num_classes > 0:
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """The classification head."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with num_classes outputs (0: identity)."""
        self.num_classes = num_classes
        like = dict(device=self.norm.weight.device, dtype=self.norm.weight.dtype)
        self.head = nn.Linear(self.num_features, num_classes, **like) if num_classes > 0 else nn.Identity()
        self._init_weights(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage feature map (B, C, H, W), before pooling."""
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool -> LayerNorm -> head (the head is skipped with pre_logits)."""
        x = self.norm(x.mean((-2, -1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_args(depths, dims, kernel_size, decom, stem_stride) -> None:
    """Reject configurations the architecture cannot build, with a message saying what to change."""
    if len(depths) != 4 or len(dims) != 4 or len(kernel_size) != 5:
        raise ReproError(f'SLaK expects 4 depths, 4 dims and 5 kernel sizes (4 stages + short edge); got '
                         f'depths={list(depths)}, dims={list(dims)}, kernel_size={list(kernel_size)}.')
    small = kernel_size[-1]
    used = [k for k in kernel_size[:4]] + [small for k in kernel_size[:4] if decom or small < k]
    if any(k < 1 or k % 2 == 0 for k in used):
        raise ReproError(f'SLaK kernels must be odd so "same" padding keeps the map size; got '
                         f'kernel_size={list(kernel_size)}. Use odd sizes such as [51, 49, 47, 13, 5].')
    if stem_stride < 1:
        raise ReproError(f'stem_stride must be a positive integer, got {stem_stride}. Use 4 (papers) or 1-2 for 32x32.')


def _create(pretrained: bool, kwargs: dict, **variant) -> SLaK:
    """Build a SLaK variant from its numbers, overridden by user kwargs; weights only come from local files."""
    if pretrained:
        raise ReproError('SLaK weights are not downloaded: build with pretrained=False and pass a local checkpoint '
                         'via repro.models.create_model(name, pretrained_file=PATH).')
    for key in ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir'):
        kwargs.pop(key, None)
    return SLaK(**{**variant, **kwargs})


_T, _S = (3, 3, 9, 3), (3, 3, 27, 3)
_MICRO_DEPTHS, _MICRO_DIMS = (1, 1, 2, 1), (16, 32, 64, 128)
# The paper's ConvNeXt student: SLaK skeleton, 7x7 depthwise conv + BatchNorm; the short edge 100 > 7 disables the
# N x N branch exactly as in the released KD code.
_STUDENT = dict(kernel_size=(7, 7, 7, 7, 100), width_factor=1.0, Decom=False, bn=True)


@register_model
def slak_tiny(pretrained: bool = False, **kwargs) -> SLaK:
    """SLaK-T: depths 3-3-9-3, dims 96-768 (x1.3), 51x51 decomposed kernels."""
    return _create(pretrained, kwargs, depths=_T)


@register_model
def slak_small(pretrained: bool = False, **kwargs) -> SLaK:
    """SLaK-S: depths 3-3-27-3, dims 96-768 (x1.3)."""
    return _create(pretrained, kwargs, depths=_S)


@register_model
def slak_base(pretrained: bool = False, **kwargs) -> SLaK:
    """SLaK-B: depths 3-3-27-3, dims 128-1024 (x1.3)."""
    return _create(pretrained, kwargs, depths=_S, dims=(128, 256, 512, 1024))


@register_model
def slak_large(pretrained: bool = False, **kwargs) -> SLaK:
    """SLaK-L: depths 3-3-27-3, dims 192-1536 (x1.3)."""
    return _create(pretrained, kwargs, depths=_S, dims=(192, 384, 768, 1536))


@register_model
def slak_tiny_mxm(pretrained: bool = False, **kwargs) -> SLaK:
    """SLaK-T with square (non-decomposed) 51x51 kernels."""
    return _create(pretrained, kwargs, depths=_T, Decom=False)


@register_model
def slak_small_mxm(pretrained: bool = False, **kwargs) -> SLaK:
    """SLaK-S with square (non-decomposed) kernels."""
    return _create(pretrained, kwargs, depths=_S, Decom=False)


@register_model
def slak_base_mxm(pretrained: bool = False, **kwargs) -> SLaK:
    """SLaK-B with square (non-decomposed) kernels."""
    return _create(pretrained, kwargs, depths=_S, dims=(128, 256, 512, 1024), Decom=False)


@register_model
def slak_micro(pretrained: bool = False, **kwargs) -> SLaK:
    """A CPU-sized SLaK with the real 51/49/47/13/5 decomposed kernels: depths 1-1-2-1, dims 16-128 (x1.3)."""
    return _create(pretrained, kwargs, depths=_MICRO_DEPTHS, dims=_MICRO_DIMS)


@register_model
def l2s_convnext_tiny(pretrained: bool = False, **kwargs) -> SLaK:
    """The paper's ConvNeXt-T student: depths 3-3-9-3, dims 96-768, 7x7 depthwise conv + BatchNorm."""
    return _create(pretrained, kwargs, depths=_T, **_STUDENT)


@register_model
def l2s_convnext_small(pretrained: bool = False, **kwargs) -> SLaK:
    """The paper's ConvNeXt-S student: depths 3-3-27-3, dims 96-768, 7x7 depthwise conv + BatchNorm."""
    return _create(pretrained, kwargs, depths=_S, **_STUDENT)


@register_model
def l2s_convnext_micro(pretrained: bool = False, **kwargs) -> SLaK:
    """A CPU-sized student: depths 1-1-2-1, dims 16-128, 7x7 depthwise conv + BatchNorm."""
    return _create(pretrained, kwargs, depths=_MICRO_DEPTHS, dims=_MICRO_DIMS, **_STUDENT)


SLAK_MODELS: List[str] = [
    'slak_tiny', 'slak_small', 'slak_base', 'slak_large', 'slak_tiny_mxm', 'slak_small_mxm', 'slak_base_mxm',
    'slak_micro', 'l2s_convnext_tiny', 'l2s_convnext_small', 'l2s_convnext_micro']
