"""The authors' ViT-S (vit_small_l2s) and CSWin-T (cswin_tiny) teachers against independent re-implementations of
the original forwards (VITA-Group/SLaK timm1 vision_transformer.py, microsoft/CSWin-Transformer models/cswin.py),
written here from the original key layout: strict loading, equal outputs, parameter counts, the CIFAR variants,
the feature API, teacher loading and `repro models`."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath

from repro import cli
from repro.distill import FDLoss, Teacher, load_teacher
from repro.errors import ReproError
from repro.models import (MODEL_DESCRIPTIONS, count_params, create_model, describe_model, feature_channels,
                          list_models, logits_and_features)

TEACHERS = ['vit_small_l2s', 'cswin_tiny']


def ln(x, sd, prefix, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + '.weight'], sd[prefix + '.bias'], eps)


def linear(x, sd, prefix):
    return F.linear(x, sd[prefix + '.weight'], sd.get(prefix + '.bias'))


def mlp(x, sd, prefix):
    return linear(F.gelu(linear(x, sd, prefix + '.fc1')), sd, prefix + '.fc2')


def random_state(shapes, seed=0):
    """Random float32 tensors (as weight files store them) for every key; norm weights near 1 so every layer
    keeps a useful signal."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        t = torch.randn(shape, generator=g) * 0.2
        state[k] = t + 1 if 'norm' in k and k.endswith('weight') else t
    return state


def as_float64(state):
    return {k: v.double() for k, v in state.items()}


# ---------------------------------------------------------------- the original ViT (timm1 vision_transformer.py)

def vit_shapes(img=224, patch=16, in_chans=3, embed=768, depth=8, mlp_ratio=3., classes=1000, qkv_bias=False):
    """Keys and shapes of the original VisionTransformer (no distillation token, no pre-logits)."""
    hidden, tokens = int(embed * mlp_ratio), (img // patch) ** 2 + 1
    shapes = {'cls_token': (1, 1, embed), 'pos_embed': (1, tokens, embed),
              'patch_embed.proj.weight': (embed, in_chans, patch, patch), 'patch_embed.proj.bias': (embed,)}
    for i in range(depth):
        p = f'blocks.{i}.'
        shapes.update({p + 'norm1.weight': (embed,), p + 'norm1.bias': (embed,),
                       p + 'attn.qkv.weight': (3 * embed, embed), p + 'attn.proj.weight': (embed, embed),
                       p + 'attn.proj.bias': (embed,), p + 'norm2.weight': (embed,), p + 'norm2.bias': (embed,),
                       p + 'mlp.fc1.weight': (hidden, embed), p + 'mlp.fc1.bias': (hidden,),
                       p + 'mlp.fc2.weight': (embed, hidden), p + 'mlp.fc2.bias': (embed,)})
        if qkv_bias:
            shapes[p + 'attn.qkv.bias'] = (3 * embed,)
    shapes.update({'norm.weight': (embed,), 'norm.bias': (embed,), 'head.weight': (classes, embed),
                   'head.bias': (classes,)})
    return shapes


def vit_reference(sd, x, patch, heads, scale):
    """(logits, normalised patch tokens) as the original forward computes them."""
    x = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat((sd['cls_token'].expand(x.shape[0], -1, -1), x), dim=1) + sd['pos_embed']
    i = 0
    while f'blocks.{i}.norm1.weight' in sd:
        p = f'blocks.{i}'
        B, N, C = x.shape
        qkv = linear(ln(x, sd, p + '.norm1'), sd, p + '.attn.qkv')
        qkv = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        x = x + linear((attn @ v).transpose(1, 2).reshape(B, N, C), sd, p + '.attn.proj')
        x = x + mlp(ln(x, sd, p + '.norm2'), sd, p + '.mlp')
        i += 1
    x = ln(x, sd, 'norm')
    return linear(x[:, 0], sd, 'head'), x[:, 1:]


SMALL_VIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=10)


@pytest.mark.parametrize('qk_scale,layout', [('default', 'model'), (None, 'plain'), (0.3, 'model')])
def test_vit_matches_the_original_forward(qk_scale, layout, tmp_path):
    sd = random_state(vit_shapes(img=32, patch=8, embed=48, depth=2, classes=10))
    torch.save({'model': sd} if layout == 'model' else sd, tmp_path / 'vit.pth')
    kwargs = {} if qk_scale == 'default' else {'qk_scale': qk_scale}
    model = create_model('vit_small_l2s', pretrained_file=str(tmp_path / 'vit.pth'), **SMALL_VIT, **kwargs)
    model = model.double().eval()
    # The released weights need 768**-0.5 whatever the width; None falls back to head_dim**-0.5.
    scale = {'default': 768 ** -0.5, None: (48 // 4) ** -0.5}.get(qk_scale, qk_scale)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_logits, ref_tokens = vit_reference(as_float64(sd), x, patch=8, heads=4, scale=scale)
    with torch.no_grad():
        logits, fmap = logits_and_features(model, x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fmap, ref_tokens.transpose(1, 2).reshape(3, 48, 4, 4), rtol=1e-10, atol=1e-10)
    assert logits.std() > 0.1  # a forward that lost its signal would match too easily
    assert model.blocks[0].norm1.eps == 1e-5 and model.blocks[0].attn.qkv.bias is None


def test_vit_linear_patch_projection_loads(tmp_path):
    """Weights trained before the conv patchifier store the patch projection flat; the original filter folds it."""
    sd = random_state(vit_shapes(img=32, patch=8, embed=48, depth=2, classes=10))
    flat = dict(sd, **{'patch_embed.proj.weight': sd['patch_embed.proj.weight'].reshape(48, -1)})
    torch.save(flat, tmp_path / 'old.pth')
    model = create_model('vit_small_l2s', pretrained_file=str(tmp_path / 'old.pth'), **SMALL_VIT)
    torch.testing.assert_close(model.patch_embed.proj.weight, sd['patch_embed.proj.weight'], rtol=0, atol=0)


# ---------------------------------------------------------------- the original CSWin (models/cswin.py)

def cswin_shapes(in_chans=3, embed=64, depth=(1, 2, 21, 1), reso=(56, 28, 14, 7), split=(1, 2, 7, 7), mlp_ratio=4.,
                 classes=1000):
    """Keys and shapes of the original CSWinTransformer (qkv_bias=True, as every released variant)."""
    shapes = {'stage1_conv_embed.0.weight': (embed, in_chans, 7, 7), 'stage1_conv_embed.0.bias': (embed,),
              'stage1_conv_embed.2.weight': (embed,), 'stage1_conv_embed.2.bias': (embed,)}
    for s in range(4):
        dim = embed * 2 ** s
        if s:
            shapes.update({f'merge{s}.conv.weight': (dim, dim // 2, 3, 3), f'merge{s}.conv.bias': (dim,),
                           f'merge{s}.norm.weight': (dim,), f'merge{s}.norm.bias': (dim,)})
        branches = 1 if s == 3 or reso[s] == split[s] else 2
        hidden = int(dim * mlp_ratio)
        for j in range(depth[s]):
            p = f'stage{s + 1}.{j}.'
            shapes.update({p + 'qkv.weight': (3 * dim, dim), p + 'qkv.bias': (3 * dim,), p + 'norm1.weight': (dim,),
                           p + 'norm1.bias': (dim,), p + 'proj.weight': (dim, dim), p + 'proj.bias': (dim,),
                           p + 'mlp.fc1.weight': (hidden, dim), p + 'mlp.fc1.bias': (hidden,),
                           p + 'mlp.fc2.weight': (dim, hidden), p + 'mlp.fc2.bias': (dim,),
                           p + 'norm2.weight': (dim,), p + 'norm2.bias': (dim,)})
            for b in range(branches):
                shapes.update({f'{p}attns.{b}.get_v.weight': (dim // branches, 1, 3, 3),
                               f'{p}attns.{b}.get_v.bias': (dim // branches,)})
    last = embed * 8
    shapes.update({'norm.weight': (last,), 'norm.bias': (last,), 'head.weight': (classes, last),
                   'head.bias': (classes,)})
    return shapes


def img2windows(img, h_sp, w_sp):
    B, C, H, W = img.shape
    img = img.view(B, C, H // h_sp, h_sp, W // w_sp, w_sp)
    return img.permute(0, 2, 4, 3, 5, 1).contiguous().reshape(-1, h_sp * w_sp, C)


def windows2img(windows, h_sp, w_sp, H, W):
    B = int(windows.shape[0] / (H * W / h_sp / w_sp))
    img = windows.view(B, H // h_sp, W // w_sp, h_sp, w_sp, -1)
    return img.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def lepe_attention(sd, prefix, qkv, reso, idx, split, heads):
    """One stripe branch: window attention + depthwise-conv LePE on V, with the original's reshapes."""
    h_sp, w_sp = {-1: (reso, reso), 0: (reso, split), 1: (split, reso)}[idx]
    q, k, v = qkv[0], qkv[1], qkv[2]
    B, L, C = q.shape

    def im2cswin(t):
        t = img2windows(t.transpose(-2, -1).contiguous().view(B, C, reso, reso), h_sp, w_sp)
        return t.reshape(-1, h_sp * w_sp, heads, C // heads).permute(0, 2, 1, 3).contiguous()

    q, k = im2cswin(q), im2cswin(k)
    t = v.transpose(-2, -1).contiguous().view(B, C, reso // h_sp, h_sp, reso // w_sp, w_sp)
    t = t.permute(0, 2, 4, 1, 3, 5).contiguous().reshape(-1, C, h_sp, w_sp)
    lepe = F.conv2d(t, sd[prefix + 'get_v.weight'], sd[prefix + 'get_v.bias'], padding=1, groups=C)
    lepe = lepe.reshape(-1, heads, C // heads, h_sp * w_sp).permute(0, 1, 3, 2)
    v = t.reshape(-1, heads, C // heads, h_sp * w_sp).permute(0, 1, 3, 2)
    attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    x = ((attn @ v) + lepe).transpose(1, 2).reshape(-1, h_sp * w_sp, C)
    return windows2img(x, h_sp, w_sp, reso, reso).view(B, -1, C)


def cswin_reference(sd, x, stride, depth, split, heads):
    """(logits, normalised last-stage tokens) as the original forward computes them (stem padding 2 at stride 4,
    3 below: the map is always img / stride)."""
    x = F.conv2d(x, sd['stage1_conv_embed.0.weight'], sd['stage1_conv_embed.0.bias'], stride=stride,
                 padding=2 if stride == 4 else 3)
    reso = x.shape[-1]
    x = ln(x.flatten(2).transpose(1, 2), sd, 'stage1_conv_embed.2')
    for s in range(4):
        if s:
            B, L, C = x.shape
            x = x.transpose(-2, -1).contiguous().view(B, C, reso, reso)
            x = F.conv2d(x, sd[f'merge{s}.conv.weight'], sd[f'merge{s}.conv.bias'], stride=2, padding=1)
            reso = x.shape[-1]
            x = ln(x.view(B, 2 * C, -1).transpose(-2, -1).contiguous(), sd, f'merge{s}.norm')
        for j in range(depth[s]):
            p = f'stage{s + 1}.{j}.'
            B, L, C = x.shape
            qkv = linear(ln(x, sd, p + 'norm1'), sd, p + 'qkv').reshape(B, -1, 3, C).permute(2, 0, 1, 3)
            if s < 3 and reso != split[s]:
                att = torch.cat([lepe_attention(sd, p + 'attns.0.', qkv[:, :, :, :C // 2], reso, 0, split[s],
                                                heads[s] // 2),
                                 lepe_attention(sd, p + 'attns.1.', qkv[:, :, :, C // 2:], reso, 1, split[s],
                                                heads[s] // 2)], dim=2)
            else:
                att = lepe_attention(sd, p + 'attns.0.', qkv, reso, -1, split[s], heads[s])
            x = x + linear(att, sd, p + 'proj')
            x = x + mlp(ln(x, sd, p + 'norm2'), sd, p + 'mlp')
    x = ln(x, sd, 'norm')
    return linear(x.mean(dim=1), sd, 'head'), x


# stride4 (the released stem): 1-wide stripes, then a map equal to its split (one full branch), then 2-wide
# stripes; cifar (the 32x32 variant): stripes of 1, 2 and 2, then full attention on the 2x2 map.
CSWIN_CASES = {
    'stride4': dict(img_size=64, patch_size=4, embed_dim=16, depth=[1, 1, 2, 1], split_size=[1, 8, 2, 2],
                    num_heads=[2, 2, 4, 4]),
    'cifar': dict(img_size=32, patch_size=2, embed_dim=16, depth=[1, 1, 2, 1], split_size=[1, 2, 2, 2],
                  num_heads=[2, 2, 4, 4]),
}
BRANCHES = {'stride4': [2, 1, 2, 1], 'cifar': [2, 2, 2, 1]}


@pytest.mark.parametrize('case', sorted(CSWIN_CASES))
def test_cswin_matches_the_original_forward(case, tmp_path):
    cfg = CSWIN_CASES[case]
    img, stride = cfg['img_size'], cfg['patch_size']
    reso = [img // stride // 2 ** s for s in range(4)]
    sd = random_state(cswin_shapes(embed=16, depth=cfg['depth'], reso=reso, split=cfg['split_size'], classes=10))
    torch.save({'state_dict_ema': sd}, tmp_path / 'cswin.pth')  # the released file holds only the EMA weights
    model = create_model('cswin_tiny', num_classes=10, pretrained_file=str(tmp_path / 'cswin.pth'), **cfg)
    model = model.double().eval()
    branches = [len(stage[0].attns) for stage in (model.stage1, model.stage2, model.stage3, model.stage4)]
    assert branches == BRANCHES[case]
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_logits, ref_tokens = cswin_reference(as_float64(sd), x, stride, cfg['depth'], cfg['split_size'],
                                             cfg['num_heads'])
    with torch.no_grad():
        logits, fmap = logits_and_features(model, x)
    side = reso[3]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fmap, ref_tokens.transpose(1, 2).reshape(2, 128, side, side), rtol=1e-10, atol=1e-10)
    assert logits.std() > 0.1


# ---------------------------------------------------------------- full size: layout, counts, CIFAR variants

@pytest.mark.parametrize('name,shapes,count', [
    ('vit_small_l2s', vit_shapes(), 48_754_408),
    ('cswin_tiny', cswin_shapes(), 22_320_552)])
def test_full_size_layout_and_parameter_counts(name, shapes, count):
    with torch.device('meta'):
        model = create_model(name, num_classes=1000, img_size=224)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert sum(math.prod(s) for s in shapes.values()) == count
    assert count_params(model)['total'] == count


@pytest.mark.parametrize('name,channels,side', [('vit_small_l2s', 768, 8), ('cswin_tiny', 512, 2)])
def test_cifar_variants_forward_at_32(name, channels, side):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, fmap = logits_and_features(model, x)
        torch.testing.assert_close(logits, model(x))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert fmap.shape == (2, channels, side, side) and feature_channels(model) == channels


@pytest.mark.parametrize('name,fewer_blocks', [('vit_small_l2s', dict(depth=2)),
                                               ('cswin_tiny', dict(depth=[1, 1, 1, 1]))])
def test_cifar_variants_train_with_drop_path(name, fewer_blocks):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32, drop_path_rate=0.1, **fewer_blocks).train()
    assert any(isinstance(m, DropPath) for m in model.modules())
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_reduced_configurations_by_name():
    with torch.device('meta'):
        vit = create_model('vit_small_l2s', num_classes=10, img_size=32, embed_dim=96, depth=2, num_heads=4,
                           qkv_bias=True)
        cswin = create_model('cswin_tiny', num_classes=10, img_size=32, embed_dim=32, depth=[1, 1, 2, 1],
                             num_heads=[2, 2, 4, 8], mlp_ratio=2., qkv_bias=False)
    assert len(vit.blocks) == 2 and vit.blocks[0].attn.qkv.bias is not None and vit.num_features == 96
    assert vit.patch_embed.proj.stride == (4, 4)  # CIFAR patch below 224
    assert len(cswin.stage3) == 2 and cswin.num_features == 256 and cswin.stage1[0].qkv.bias is None
    assert cswin.stage1[0].mlp.fc1.out_features == 64


def test_input_and_configuration_errors(tmp_path):
    model = create_model('vit_small_l2s', **SMALL_VIT)
    with pytest.raises(ReproError, match='built for 32x32'):
        model(torch.randn(1, 3, 64, 64))
    cswin = create_model('cswin_tiny', **CSWIN_CASES['cifar'])
    with pytest.raises(ReproError, match='built for 32x32'):
        cswin(torch.randn(1, 3, 64, 64))
    with pytest.raises(ReproError, match='divisible'):
        create_model('cswin_tiny', img_size=40)
    with pytest.raises(ReproError, match='split size'):
        create_model('cswin_tiny', img_size=32, split_size=[3, 2, 2, 2])
    with pytest.raises(ReproError, match='divisible by 4'):
        create_model('vit_small_l2s', img_size=30)
    for name in TEACHERS:
        with pytest.raises(ReproError, match='does not exist'):
            create_model(name, img_size=32, pretrained_file=str(tmp_path / 'missing.pth'))
        with pytest.raises(ReproError, match='not downloaded'):
            timm.create_model(name, pretrained=True)


# ---------------------------------------------------------------- teachers: official files, FD

@pytest.mark.parametrize('name,entry', [pytest.param('vit_small_l2s', None, marks=pytest.mark.slow),
                                        ('cswin_tiny', 'state_dict_ema')])
def test_load_teacher_takes_the_official_files(name, entry, tmp_path):
    """A full-size 1000-class file in the released layout loads as a frozen teacher with strict=True."""
    state = random_state(vit_shapes() if name == 'vit_small_l2s' else cswin_shapes())
    path = tmp_path / f'{name}.pth'
    torch.save({entry: state} if entry else state, path)
    teacher = load_teacher(path, model_name=name, num_classes=1000, img_size=224)
    loaded = teacher.model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert teacher.identity()['weights'] == (entry or 'state_dict')
    assert teacher.channels == {'vit_small_l2s': 768, 'cswin_tiny': 512}[name]


@pytest.mark.parametrize('name', TEACHERS)
def test_teachers_drive_feature_distillation(name):
    torch.manual_seed(0)
    small = dict(SMALL_VIT, patch_size=4) if name == 'vit_small_l2s' else dict(CSWIN_CASES['cifar'], num_classes=10)
    teacher = Teacher(create_model(name, **small))
    student = create_model('l2s_convnext_micro', num_classes=10, img_size=32)
    x = torch.randn(2, 3, 32, 32)
    t_logits, t_map = teacher(x)
    side = 8 if name == 'vit_small_l2s' else 2  # the 8x8 patch grid; CSWin's last 2x2 stage
    assert t_logits.shape == (2, 10) and t_map.shape == (2, teacher.channels, side, side)
    assert not t_map.requires_grad
    _, s_map = logits_and_features(student, x)
    fd = FDLoss(feature_channels(student), teacher.channels)
    loss = fd(s_map, t_map)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# ---------------------------------------------------------------- `repro models`

def test_repro_models_lists_every_model_with_a_description(capsys):
    assert cli.main(['models']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_models()
    assert set(MODEL_DESCRIPTIONS) == set(list_models())
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)
    by_name = {line.split()[0]: line for line in lines}
    assert "authors' ViT-S" in by_name['vit_small_l2s'] and 'DeiT-style' in by_name['vit_small']
    assert 'CSWin-T' in by_name['cswin_tiny']
    assert describe_model('efficientnet_b0').startswith('a timm model')
