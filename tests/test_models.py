"""Tests for repro.models: official SLaK layout, exact kernel cropping, deploy forms, accounting, offline factory."""
import argparse
import copy
import socket

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.errors import ReproError
from repro.models import (SLaK, count_flops, count_params, create_model, crop_kernel_to_input, feature_channels,
                          large_kernel_param_names, list_models, logits_and_features, reparameterize)
from repro.models.slak import LargeKernelConv2d

OURS_SLAK = ['slak_tiny', 'slak_small', 'slak_base', 'slak_large', 'slak_tiny_mxm', 'slak_small_mxm', 'slak_base_mxm',
             'slak_micro', 'l2s_convnext_tiny', 'l2s_convnext_small', 'l2s_convnext_micro']
# Models run for real at 32x32 in the default run: the CPU-sized SLaKs and the paper's timm students/teachers.
REAL_AT_32 = ['slak_micro', 'l2s_convnext_micro', 'convnext_atto', 'convnext_tiny', 'resnet50', 'vit_small',
              'swin_tiny']


# ---------------------------------------------------------------- the official layout, written out independently

def official_shapes(depths, dims, kernel_size, decom, num_classes, width=1.3, in_chans=3):
    """State-dict names and shapes of the released SLaK code (PAPERS.md, "Architecture (code)")."""
    d = [int(x * width) for x in dims]
    shapes = {'downsample_layers.0.0.weight': (d[0], in_chans, 4, 4), 'downsample_layers.0.0.bias': (d[0],),
              'downsample_layers.0.1.weight': (d[0],), 'downsample_layers.0.1.bias': (d[0],)}
    for i in range(1, 4):
        p = f'downsample_layers.{i}.'
        shapes.update({p + '0.weight': (d[i - 1],), p + '0.bias': (d[i - 1],),
                       p + '1.weight': (d[i], d[i - 1], 2, 2), p + '1.bias': (d[i],)})
    for i in range(4):
        m, n, c = kernel_size[i], kernel_size[-1], d[i]
        branches = {'LoRA1': (m, n), 'LoRA2': (n, m)} if decom else {'lkb_origin': (m, m)}
        if n < m:
            branches['small_conv'] = (n, n)
        for j in range(depths[i]):
            p = f'stages.{i}.{j}.'
            for b, (kh, kw) in branches.items():
                shapes[f'{p}large_kernel.{b}.conv.weight'] = (c, 1, kh, kw)
                for s in ('weight', 'bias', 'running_mean', 'running_var'):
                    shapes[f'{p}large_kernel.{b}.bn.{s}'] = (c,)
                shapes[f'{p}large_kernel.{b}.bn.num_batches_tracked'] = ()
            shapes.update({f'{p}norm.weight': (c,), f'{p}norm.bias': (c,), f'{p}pwconv1.weight': (4 * c, c),
                           f'{p}pwconv1.bias': (4 * c,), f'{p}pwconv2.weight': (c, 4 * c), f'{p}pwconv2.bias': (c,),
                           f'{p}gamma': (c,)})
    shapes.update({'norm.weight': (d[3],), 'norm.bias': (d[3],), 'head.weight': (num_classes, d[3]),
                   'head.bias': (num_classes,)})
    return shapes


def random_state(shapes, seed=0):
    """Random float32 tensors (as checkpoints store them) for every key; BatchNorm variances positive."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith('num_batches_tracked'):
            state[k] = torch.tensor(7)
        elif k.endswith('running_var'):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.2
    return state


def official_forward(sd, x, depths, kernel_size, decom):
    """The released forward pass, written from its description with plain functional ops (full, uncropped kernels)."""
    def ln_first(x, p):  # the released channels_first LayerNorm
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return sd[p + 'weight'][:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + sd[p + 'bias'][:, None, None]

    def conv_bn(x, p):
        w = sd[p + 'conv.weight']
        y = F.conv2d(x, w, None, 1, (w.shape[2] // 2, w.shape[3] // 2), 1, w.shape[0])
        return F.batch_norm(y, sd[p + 'bn.running_mean'], sd[p + 'bn.running_var'], sd[p + 'bn.weight'],
                            sd[p + 'bn.bias'], False, 0.1, 1e-5)

    for i in range(4):
        if i == 0:
            x = ln_first(F.conv2d(x, sd['downsample_layers.0.0.weight'], sd['downsample_layers.0.0.bias'], 4),
                         'downsample_layers.0.1.')
        else:
            x = F.conv2d(ln_first(x, f'downsample_layers.{i}.0.'), sd[f'downsample_layers.{i}.1.weight'],
                         sd[f'downsample_layers.{i}.1.bias'], 2)
        for j in range(depths[i]):
            p = f'stages.{i}.{j}.'
            lk = p + 'large_kernel.'
            y = conv_bn(x, lk + 'LoRA1.') + conv_bn(x, lk + 'LoRA2.') if decom else conv_bn(x, lk + 'lkb_origin.')
            if kernel_size[-1] < kernel_size[i]:
                y = y + conv_bn(x, lk + 'small_conv.')
            y = F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2], sd[p + 'norm.weight'], sd[p + 'norm.bias'], 1e-6)
            y = F.linear(F.gelu(F.linear(y, sd[p + 'pwconv1.weight'], sd[p + 'pwconv1.bias'])),
                         sd[p + 'pwconv2.weight'], sd[p + 'pwconv2.bias'])
            x = x + (sd[p + 'gamma'] * y).permute(0, 3, 1, 2)
    x = F.layer_norm(x.mean((-2, -1)), x.shape[1:2], sd['norm.weight'], sd['norm.bias'], 1e-6)
    return F.linear(x, sd['head.weight'], sd['head.bias'])


MICRO = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))


@pytest.mark.parametrize('name,kernel_size,decom,width,img', [
    ('slak_micro', (51, 49, 47, 13, 5), True, 1.3, 32),
    ('slak_micro', (51, 49, 47, 13, 5), True, 1.3, 64),
    ('l2s_convnext_micro', (7, 7, 7, 7, 100), False, 1.0, 32),
    ('slak_micro', (51, 49, 47, 13, 5), False, 1.3, 32),
])
def test_official_checkpoint_loads_strict_and_matches_reference(name, kernel_size, decom, width, img, tmp_path):
    shapes = official_shapes(MICRO['depths'], MICRO['dims'], kernel_size, decom, 10, width)
    state = random_state(shapes)
    path = tmp_path / 'official.pth'
    torch.save({'model': state, 'epoch': 3, 'args': argparse.Namespace(model='SLaK_tiny')}, path)
    model = create_model(name, num_classes=10, Decom=decom, pretrained_file=str(path)).double().eval()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    x = torch.randn(2, 3, img, img, dtype=torch.float64)
    with torch.no_grad():
        exact = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
        expected = official_forward(exact, x, MICRO['depths'], kernel_size, decom)
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


def test_full_size_official_names_and_shapes():
    with torch.device('meta'):
        for name, depths, dims in [('slak_tiny', (3, 3, 9, 3), (96, 192, 384, 768)),
                                   ('slak_base', (3, 3, 27, 3), (128, 256, 512, 1024))]:
            model = create_model(name)
            got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            assert got == official_shapes(depths, dims, (51, 49, 47, 13, 5), True, 1000)
        got = {k: tuple(v.shape) for k, v in create_model('l2s_convnext_tiny').state_dict().items()}
        assert got == official_shapes((3, 3, 9, 3), (96, 192, 384, 768), (7, 7, 7, 7, 100), False, 1000, width=1.0)


def test_legacy_strip_names_and_sync_bn(tmp_path):
    shapes = official_shapes(MICRO['depths'], MICRO['dims'], (51, 49, 47, 13, 5), True, 10)
    legacy = {'.LoRA1.': '.Decom1.', '.LoRA2.': '.Decom2.'}
    state = {k.replace('.LoRA1.', legacy['.LoRA1.']).replace('.LoRA2.', legacy['.LoRA2.']): v
             for k, v in random_state(shapes).items()}
    torch.save(state, tmp_path / 'legacy.pth')
    model = create_model('slak_micro', num_classes=10, sync_bn=True, pretrained_file=str(tmp_path / 'legacy.pth'))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in create_model('slak_micro', sync_bn=True).modules())
    assert any(type(m) is nn.BatchNorm2d for m in create_model('slak_micro').modules())


# ---------------------------------------------------------------- exact kernel cropping

def _conv_pair(weight, x, padding):
    """Outputs and grads of the plain conv and of the cropped conv."""
    results = []
    for crop in (False, True):
        w, xi = weight.clone().requires_grad_(), x.clone().requires_grad_()
        wc, pc = crop_kernel_to_input(w, x.shape[-2], x.shape[-1], padding) if crop else (w, padding)
        out = F.conv2d(xi, wc, None, 1, pc, 1, w.shape[0])
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        results.append((out.detach(), xi.grad, w.grad, wc.shape))
    return results


@pytest.mark.parametrize('kernel,hw', [((51, 51), (8, 8)), ((51, 5), (8, 8)), ((5, 49), (3, 4)), ((47, 5), (2, 2)),
                                       ((13, 13), (1, 1)), ((13, 5), (7, 3)), ((7, 7), (8, 8))])
def test_crop_is_exact_for_same_padding(kernel, hw):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 1, *kernel, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)
    (out, gx, gw, _), (out_c, gx_c, gw_c, shape_c) = _conv_pair(w, x, (kernel[0] // 2, kernel[1] // 2))
    assert tuple(shape_c[-2:]) == tuple(min(k, 2 * s - 1) for k, s in zip(kernel, hw))
    torch.testing.assert_close(out_c, out, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx_c, gx, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw_c, gw, rtol=0, atol=1e-12)  # cropped-away taps: zero in both


def test_crop_is_exact_for_any_padding():
    g = torch.Generator().manual_seed(2)
    for _ in range(25):
        kh, kw = (int(v) for v in torch.randint(1, 16, (2,), generator=g))
        h, w_ = (int(v) for v in torch.randint(1, 7, (2,), generator=g))
        ph, pw = (int(torch.randint(0, k + 2, (1,), generator=g)) for k in (kh, kw))
        if h + 2 * ph - kh < 0 or w_ + 2 * pw - kw < 0:
            continue
        w = torch.randn(2, 1, kh, kw, generator=g, dtype=torch.float64)
        x = torch.randn(1, 2, h, w_, generator=g, dtype=torch.float64)
        (out, gx, gw, _), (out_c, gx_c, gw_c, _) = _conv_pair(w, x, (ph, pw))
        for a, b in [(out_c, out), (gx_c, gx), (gw_c, gw)]:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_cropping_in_model_matches_uncropped_model():
    torch.manual_seed(0)
    model = create_model('slak_micro', num_classes=5, layer_scale_init_value=1.0).double()
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, LargeKernelConv2d):
            m.crop = False
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    outs = []
    for net in (model, plain):
        xi = x.clone().requires_grad_()
        out = net(xi)
        out.square().sum().backward()
        outs.append((out, xi.grad, {n: p.grad for n, p in net.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-10, atol=1e-12)
    for n in outs[1][2]:
        torch.testing.assert_close(outs[0][2][n], outs[1][2][n], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- re-parameterization

def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize('name,kwargs', [('slak_micro', {}), ('slak_micro', {'Decom': False}),
                                         ('l2s_convnext_micro', {}), ('slak_micro', {'bn': False}),
                                         ('slak_micro', {'stem_stride': 1})])
@pytest.mark.parametrize('dense', [False, True])
def test_reparameterize_keeps_outputs_and_round_trips(name, kwargs, dense):
    torch.manual_seed(0)
    model = _randomize_bn(create_model(name, num_classes=10, layer_scale_init_value=1.0, **kwargs)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        assert reparameterize(model, dense=dense) is model
        after = model(x)
    assert _rel_err(after, before) < 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    lk = model.stages[0][0].large_kernel
    if kwargs.get('Decom', name == 'slak_micro') and not dense:
        assert lk.LoRA1_reparam.weight.shape[-2:] == (51, 5) and lk.LoRA2_reparam.weight.shape[-2:] == (5, 51)
    else:
        assert lk.lkb_reparam.weight.shape[-2:] == ((7, 7) if name.startswith('l2s') else (51, 51))
    fresh = reparameterize(create_model(name, num_classes=10, **kwargs), dense=dense).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    plain = copy.deepcopy(fresh)  # deploy convs crop too: compare against the uncropped deploy model
    for m in plain.modules():
        if isinstance(m, LargeKernelConv2d):
            m.crop = False
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), after)
        assert _rel_err(plain(x), after) < 1e-5


def test_dense_deploy_costs_the_square_kernels():
    with torch.device('meta'):
        strips = reparameterize(create_model('slak_tiny'))
        dense = reparameterize(create_model('slak_tiny'), dense=True)
    assert strips.stages[0][0].large_kernel.LoRA1_reparam.bias is not None
    assert strips.stages[0][0].large_kernel.LoRA2_reparam.bias is None
    # Per output pixel and channel the strips cost 2*M*N (N x N folded in), the dense form M*M.
    sides, dims, depths = (56, 28, 14, 7), (124, 249, 499, 998), (3, 3, 9, 3)
    extra = sum(s * s * c * d * (m * m - 2 * m * 5) for s, c, d, m in zip(sides, dims, depths, (51, 49, 47, 13)))
    assert count_flops(dense, 224)['dense'] - count_flops(strips, 224)['dense'] == extra


# ---------------------------------------------------------------- accounting

def _meta(name, **kwargs):
    with torch.device('meta'):
        return create_model(name, **kwargs)


def _nonzero_at_60(model):
    """Non-zero count when every 2-D and 4-D weight keeps exactly 60% (rounded) of its entries."""
    return sum(round(0.6 * p.numel()) if p.dim() in (2, 4) else p.numel() for p in model.parameters())


@pytest.mark.parametrize('name,dense_m,sparse_m', [('slak_tiny', 50.70, 30.47), ('slak_small', 91.13, 54.78),
                                                   ('slak_base', 157.95, 94.91)])
def test_slak_parameter_counts(name, dense_m, sparse_m):
    model = _meta(name)
    assert round(count_params(model)['total'] / 1e6, 2) == dense_m
    assert round(_nonzero_at_60(model) / 1e6, 2) == sparse_m


def test_student_parameter_counts():
    assert round(count_params(_meta('l2s_convnext_tiny'))['total'] / 1e6, 2) == 28.60
    assert round(count_params(_meta('convnext_tiny'))['total'] / 1e6, 2) == 28.59


def test_nonzero_params_and_macs_follow_masks():
    torch.manual_seed(0)
    model = create_model('slak_micro', num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0) if p.dim() not in (2, 4) else None
            if p.dim() in (2, 4):
                keep = torch.zeros(p.numel())
                keep[torch.randperm(p.numel())[:round(0.6 * p.numel())]] = 1
                p.mul_(keep.reshape(p.shape)).add_(keep.reshape(p.shape) * 1e-3)
    assert count_params(model)['nonzero'] == _nonzero_at_60(model)
    flops = count_flops(model, 32)
    assert abs(flops['nonzero'] / flops['dense'] - 0.6) < 2e-3
    head_only = create_model('slak_micro', num_classes=10)
    with torch.no_grad():
        head_only.head.weight[:5] = 0  # half the head rows
    flops = count_flops(head_only, 32, batch=2)
    assert flops['dense'] - flops['nonzero'] == pytest.approx(0.5 * 2 * 10 * 166)


def test_flops_of_the_papers():
    assert count_flops(_meta('slak_tiny'), 32)['dense'] / 1e9 == pytest.approx(0.18, abs=0.005)
    assert count_flops(_meta('slak_tiny'), 224)['dense'] / 1e9 == pytest.approx(8.7, abs=0.05)
    assert count_flops(_meta('slak_tiny'), 224, as_executed=True)['dense'] < 8.6e9  # 47x47 cropped to 27 at 14x14
    assert count_flops(_meta('convnext_tiny'), 224)['dense'] / 1e9 == pytest.approx(4.46, abs=0.05)
    assert count_flops(_meta('l2s_convnext_tiny'), 224)['dense'] / 1e9 == pytest.approx(4.46, abs=0.05)


# ---------------------------------------------------------------- shapes, features, factory

PAPER_MODELS = ['slak_tiny', 'slak_micro', 'l2s_convnext_tiny', 'l2s_convnext_micro', 'convnext_tiny', 'resnet50',
                'vit_small', 'swin_tiny']
SHAPE_CASES = [(n, 32) for n in list_models()] + [
    (n, 224) if n in PAPER_MODELS else pytest.param(n, 224, marks=pytest.mark.slow) for n in list_models()]


@pytest.mark.parametrize('name,img', SHAPE_CASES)
def test_every_model_shapes_on_meta(name, img):
    with torch.device('meta'):
        model = create_model(name, num_classes=7, img_size=img)
        logits, fmap = logits_and_features(model, torch.empty(2, 3, img, img))
    assert logits.shape == (2, 7)
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, feature_channels(model))
    side = {'vit_small': img // 4 if img < 224 else img // 16, 'swin_tiny': img // 16 if img < 224 else img // 32,
            'vit_small_l2s': img // 4 if img < 224 else img // 16,
            'cswin_tiny': img // 16 if img < 224 else img // 32}
    assert fmap.shape[-2:] == (side.get(name, img // 32),) * 2


@pytest.mark.parametrize('name', REAL_AT_32)
def test_real_forward_and_features_at_32(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, fmap = logits_and_features(model, x)
        torch.testing.assert_close(logits, model(x))
    expected_hw = {'vit_small': 8, 'swin_tiny': 2}.get(name, 1)
    assert fmap.shape == (2, feature_channels(model), expected_hw, expected_hw)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize('name', ['slak_micro', 'l2s_convnext_micro'])
def test_micro_at_224_and_timm_api(name):
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fmap = model.forward_features(x)
        assert fmap.shape == (1, model.num_features, 7, 7)
        assert model.forward_head(fmap, pre_logits=True).shape == (1, model.num_features)
        model.reset_classifier(3)
        assert model(x).shape == (1, 3) and model.num_classes == 3
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)


@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in sorted(set(OURS_SLAK) | {'convnext_atto', 'convnext_femto',
                                                                       'convnext_pico', 'convnext_nano',
                                                                       'convnext_tiny', 'convnext_small',
                                                                       'convnext_base', 'resnet50', 'vit_small',
                                                                       'swin_tiny'})])
@pytest.mark.parametrize('img', [32, 224])
def test_real_forward_every_model(name, img):
    model = create_model(name, num_classes=10, img_size=img).eval()
    with torch.no_grad():
        logits, fmap = logits_and_features(model, torch.randn(1, 3, img, img))
    assert logits.shape == (1, 10) and fmap.shape[:2] == (1, feature_channels(model))


def test_timm_registry_and_no_hub_weights():
    with torch.device('meta'):
        model = timm.create_model('slak_tiny', pretrained=False, num_classes=3)
    assert isinstance(model, SLaK) and model.num_features == 998
    with pytest.raises(ReproError, match='pretrained_file'):
        timm.create_model('slak_micro', pretrained=True)
    assert sorted(OURS_SLAK) == sorted(n for n in list_models() if n.startswith(('slak', 'l2s')))


def test_large_kernel_param_names():
    model = create_model('slak_micro')
    names = large_kernel_param_names(model)
    assert 'stages.0.0.large_kernel.LoRA1.conv.weight' in names and len(names) == 2 * 5
    assert not any('small_conv' in n or '.bn.' in n for n in names)
    assert len(large_kernel_param_names(reparameterize(model))) == 2 * 5
    assert large_kernel_param_names(create_model('convnext_atto')) == []


@pytest.mark.filterwarnings('ignore:.*dropping classifier')
def test_factory_errors(tmp_path):
    with pytest.raises(ReproError, match='slak_tiny'):
        create_model('slak_tiy')
    missing = tmp_path / 'nope.pth'
    with pytest.raises(ReproError, match='nope.pth'):
        create_model('slak_micro', pretrained_file=str(missing))
    with pytest.raises(ReproError, match='stem_stride'):
        create_model('convnext_atto', stem_stride=2)
    torch.save({'model': create_model('l2s_convnext_micro').state_dict()}, tmp_path / 'other.pth')
    with pytest.raises(ReproError, match='does not fit'):
        create_model('slak_micro', pretrained_file=str(tmp_path / 'other.pth'))


def test_pretrained_file_head_mismatch_keeps_body(tmp_path):
    torch.manual_seed(0)
    source = create_model('convnext_atto', num_classes=1000).eval()
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'w.pth')
    with pytest.warns(UserWarning, match='head'):
        model = create_model('convnext_atto', num_classes=10, pretrained_file=str(tmp_path / 'w.pth')).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), source.forward_features(x))


def test_creation_never_touches_the_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError('network access attempted')
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    torch.save(create_model('convnext_atto', num_classes=10).state_dict(), tmp_path / 'w.pth')
    create_model('convnext_atto', num_classes=10, pretrained_file=str(tmp_path / 'w.pth'))
    with torch.device('meta'):
        for name in ['slak_tiny', 'l2s_convnext_tiny', 'convnext_tiny', 'resnet50', 'vit_small', 'swin_tiny']:
            create_model(name, num_classes=10, img_size=32)
        create_model('efficientnet_b0', num_classes=10)  # a pass-through timm name
