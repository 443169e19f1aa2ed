"""Tests for the exact speed levers of the large-kernel convs: cropping in every form, and the CPU depthwise gradients.

Each lever must leave the forward, the input gradient and the weight gradient of the plain convolution unchanged;
all comparisons run in float64. Speed itself is measured in benchmarks/, never here.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from repro.models import create_model, reparameterize
from repro.models.slak import LargeKernelConv2d, depthwise_input_grad, depthwise_weight_grad

DT = torch.float64


def _plain(x, weight, bias, padding):
    """Output and (input, weight, bias) gradients of F.conv2d for a fixed upstream gradient."""
    x = x.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True)
    bias = None if bias is None else bias.detach().requires_grad_(True)
    out = F.conv2d(x, weight, bias, 1, padding, 1, weight.shape[0])
    g = torch.linspace(-1, 1, out.numel(), dtype=DT).reshape(out.shape)
    grads = torch.autograd.grad(out, [t for t in (x, weight, bias) if t is not None], g)
    return out, g, grads


SHAPES = [  # (N, C, H, W, kh, kw, ph, pw)
    (2, 3, 9, 7, 51, 5, 25, 2),     # tall strip larger than the map
    (2, 3, 9, 7, 5, 51, 2, 25),     # wide strip
    (2, 3, 8, 8, 15, 5, 7, 2),      # a cropped strip (51x5 on 8x8 -> 15x5)
    (3, 2, 6, 5, 7, 7, 3, 3),       # the student's 7x7
    (2, 4, 1, 1, 1, 1, 0, 0),       # 1x1 map, 1x1 kernel
    (1, 2, 5, 6, 3, 5, 0, 1),       # "valid"-like and asymmetric padding
    (2, 2, 4, 4, 3, 3, 2, 2),       # padding larger than "same"
]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('channels_last', [False, True])
def test_depthwise_grads_equal_the_plain_conv(shape, channels_last):
    n, c, h, w, kh, kw, ph, pw = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=DT, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, kh, kw, dtype=DT, generator=gen)
    _, g, (gx, gw) = _plain(x, weight, None, (ph, pw))
    torch.testing.assert_close(depthwise_weight_grad(x, g, (ph, pw)), gw, rtol=1e-12, atol=1e-12)
    if ph < kh and pw < kw:
        torch.testing.assert_close(depthwise_input_grad(g, weight, (ph, pw)), gx, rtol=1e-12, atol=1e-12)


def _conv_pair(kernel, padding, bias, crop):
    """A LargeKernelConv2d with the fast CPU backward and an identical one without it."""
    torch.manual_seed(0)
    fast = LargeKernelConv2d(4, 4, kernel, 1, padding, groups=4, bias=bias, crop=crop).to(DT)
    plain = copy.deepcopy(fast)
    plain.fast_backward = False
    assert fast.fast_backward
    return fast, plain


@pytest.mark.parametrize('kernel,hw', [((51, 5), (8, 8)), ((5, 51), (8, 6)), ((13, 5), (1, 1)), ((7, 7), (10, 9))])
@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('crop', [False, True])
def test_fast_backward_conv_matches_plain_conv(kernel, hw, bias, crop):
    fast, plain = _conv_pair(kernel, (kernel[0] // 2, kernel[1] // 2), bias, crop)
    x = torch.randn(3, 4, *hw, dtype=DT, generator=torch.Generator().manual_seed(1))
    results = []
    for conv in (fast, plain):
        xi = x.clone().requires_grad_(True)
        out = conv(xi)
        g = torch.cos(torch.arange(out.numel(), dtype=DT)).reshape(out.shape)
        params = [conv.weight] + ([conv.bias] if bias else [])
        results.append((out, torch.autograd.grad(out, [xi] + params, g), out.grad_fn.name()))
    (out_f, grads_f, fn_f), (out_p, grads_p, fn_p) = results
    assert 'DepthwiseConv2d' in fn_f and 'DepthwiseConv2d' not in fn_p  # the lever really ran, and only there
    torch.testing.assert_close(out_f, out_p, rtol=0, atol=0)
    for a, b in zip(grads_f, grads_p):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fast_backward_supports_double_backward():
    fast, plain = _conv_pair((7, 3), (3, 1), True, True)
    x = torch.randn(2, 4, 5, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    second = []
    for conv in (fast, plain):
        xi = x.clone().requires_grad_(True)
        gx, gw = torch.autograd.grad(conv(xi).pow(2).sum(), (xi, conv.weight), create_graph=True)
        second.append(torch.autograd.grad((gx.sin().sum() + gw.cos().sum()), (xi, conv.weight, conv.bias)))
    for a, b in zip(*second):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fast_backward_stays_off_where_it_does_not_apply():
    fast, _ = _conv_pair((7, 7), (3, 3), False, True)
    x = torch.randn(1, 4, 6, 6, dtype=DT)
    assert fast(x).grad_fn.name() != 'ConvolutionBackward0'  # weight needs grad: the lever runs
    with torch.no_grad():
        assert fast(x).grad_fn is None
    with torch.autocast('cpu', dtype=torch.bfloat16):  # autocast keeps the native path (mixed dtypes)
        assert 'DepthwiseConv2d' not in fast.float()(x.float()).grad_fn.name()
    strided = LargeKernelConv2d(4, 4, 3, 2, 1, groups=4)
    dense = LargeKernelConv2d(4, 4, 3, 1, 1)
    assert not strided.fast_backward and not dense.fast_backward


def test_model_gradients_unchanged_by_fast_backward():
    torch.manual_seed(0)
    fast = create_model('slak_micro', num_classes=5).to(DT).train()
    plain = copy.deepcopy(fast)
    for m in plain.modules():
        if isinstance(m, LargeKernelConv2d):
            m.fast_backward = False
    x = torch.randn(2, 3, 32, 32, dtype=DT, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 3])
    losses = []
    for model in (fast, plain):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-13)
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-13, msg=name)


class _ConvShapes(TorchDispatchMode):
    """Records the weight shape of every convolution actually executed."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # Under inference mode F.conv2d reaches dispatch as conv2d; with autograd on, as convolution.
        if func in (torch.ops.aten.convolution.default, torch.ops.aten.conv2d.default):
            self.shapes.append(tuple(args[1].shape[-2:]))
        return func(*args, **(kwargs or {}))


def test_kernels_are_cropped_in_training_and_deploy_forms():
    # slak_micro has SLaK-T's kernels; at 32x32 (stem 4) the maps are 8, 4, 2, 1, so 51x5 runs as 15x5, etc.
    torch.manual_seed(0)
    model = create_model('slak_micro', num_classes=5).train()
    x = torch.randn(2, 3, 32, 32)
    with _ConvShapes() as seen:
        model(x).sum().backward()
    assert {(15, 5), (5, 15), (7, 5), (5, 7), (3, 3), (1, 1)} <= set(seen.shapes)
    assert not any(max(s) > 15 for s in seen.shapes)
    deploy = reparameterize(copy.deepcopy(model).eval())
    with _ConvShapes() as seen, torch.inference_mode():
        deploy(x)
    assert {(15, 5), (5, 15), (7, 5), (5, 7), (3, 3), (1, 1)} <= set(seen.shapes)
    assert not any(max(s) > 15 for s in seen.shapes)
