"""CSWin Transformer: self-attention in cross-shaped windows, with locally-enhanced positional encoding (LePE).

Paper: Dong et al., "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows",
CVPR 2022 (arXiv 2107.00652); CSWin-T is a Transformer teacher of Huang et al., ICML 2023.
Original code: https://github.com/microsoft/CSWin-Transformer (models/cswin.py; the SLaK repository vendors the
same file). Module and parameter names follow it, so the released `cswin_tiny_224.pth` ({'state_dict_ema': ...})
loads with strict=True and gives the same outputs. What shapes the outputs, as in the original: each block splits
channels and heads in half between horizontal and vertical stripes of width `split_size` (one full-attention
branch where the map is no larger than a stripe: the last stage, or any stage whose resolution equals its split
size); LePE is a depthwise 3x3 conv on V applied inside each stripe window; the stem is a 7x7 stride-4 conv +
LayerNorm and stages are joined by 3x3 stride-2 convs + LayerNorm; the head averages all tokens.

Beyond the original: `patch_size` is the stem stride (the original ignores it and always uses 4; 4 is what every
released variant passes) so 32x32 inputs can keep more resolution, `num_features` is the last stage's width (the
feature API needs it; the original leaves the stem width there), forward_features returns the normalised tokens
before pooling, and sizes that do not tile are refused with a ReproError.
"""
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import register_model

from ..errors import ReproError

__all__ = ['CSWinTransformer']


def _to_windows(x: torch.Tensor, res: int, h_sp: int, w_sp: int) -> torch.Tensor:
    """Tokens (B, res*res, C) -> windows (B * windows, h_sp * w_sp, C), windows and tokens row-major."""
    B, _, C = x.shape
    x = x.view(B, res // h_sp, h_sp, res // w_sp, w_sp, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h_sp * w_sp, C)


def _from_windows(x: torch.Tensor, res: int, h_sp: int, w_sp: int) -> torch.Tensor:
    """Inverse of _to_windows: (B * windows, h_sp * w_sp, C) -> (B, res*res, C)."""
    C = x.shape[-1]
    x = x.view(-1, res // h_sp, res // w_sp, h_sp, w_sp, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, res * res, C)


class LePEAttention(nn.Module):
    """Attention inside stripe windows (idx 0: full-height columns of width split_size, 1: full-width rows,
    -1: the whole map) plus LePE, a depthwise 3x3 conv of V within each window."""

    def __init__(self, dim: int, resolution: int, idx: int, split_size: int = 7, dim_out=None, num_heads: int = 8,
                 attn_drop: float = 0., proj_drop: float = 0., qk_scale=None):
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out or dim
        self.resolution = resolution
        self.split_size = split_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        if idx not in (-1, 0, 1):
            raise ReproError(f'LePEAttention idx must be -1 (full map), 0 (columns) or 1 (rows); got {idx}.')
        self.H_sp, self.W_sp = {-1: (resolution, resolution), 0: (resolution, split_size),
                                1: (split_size, resolution)}[idx]
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)
        self.attn_drop = attn_drop  # the original's proj_drop is accepted and, as there, never applied

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """Windows (B', N, C) -> (B', heads, N, C // heads)."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv: (3, B, L, C) -> (B, L, C)."""
        res, h_sp, w_sp = self.resolution, self.H_sp, self.W_sp
        q, k, v = (_to_windows(t, res, h_sp, w_sp) for t in qkv)
        windows, n, c = v.shape
        # LePE sees each window as its own image: zero padding at the window's edges, as in the original.
        lepe = self.get_v(v.transpose(1, 2).reshape(windows, c, h_sp, w_sp)).flatten(2).transpose(1, 2)
        x = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v),
                                           dropout_p=self.attn_drop if self.training else 0., scale=self.scale)
        x = x + self._heads(lepe)
        return _from_windows(x.transpose(1, 2).reshape(windows, n, c), res, h_sp, w_sp)


class CSWinBlock(nn.Module):
    """x + proj(cross-shaped attention(norm1(x))), then x + mlp(norm2(x)), with stochastic depth."""

    def __init__(self, dim: int, reso: int, num_heads: int, split_size: int = 7, mlp_ratio: float = 4.,
                 qkv_bias: bool = False, qk_scale=None, drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 act_layer: Callable[..., nn.Module] = nn.GELU, norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 last_stage: bool = False):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.patches_resolution = reso
        self.split_size = split_size
        self.mlp_ratio = mlp_ratio
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm1 = norm_layer(dim)
        # A map no larger than one stripe gets one full-attention branch, as in the last stage.
        last_stage = last_stage or reso == split_size
        self.branch_num = 1 if last_stage else 2
        self.proj = nn.Linear(dim, dim)
        # The original also builds a proj_drop here that its forward never applies: no dropout after proj.
        if last_stage:
            self.attns = nn.ModuleList([LePEAttention(dim, resolution=reso, idx=-1, split_size=split_size,
                                                      num_heads=num_heads, dim_out=dim, qk_scale=qk_scale,
                                                      attn_drop=attn_drop, proj_drop=drop)])
        else:
            self.attns = nn.ModuleList([LePEAttention(dim // 2, resolution=reso, idx=i, split_size=split_size,
                                                      num_heads=num_heads // 2, dim_out=dim // 2, qk_scale=qk_scale,
                                                      attn_drop=attn_drop, proj_drop=drop) for i in range(2)])
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), out_features=dim, act_layer=act_layer,
                       drop=drop)
        self.norm2 = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H*W, C) at the block's resolution."""
        B, L, C = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, L, 3, C).permute(2, 0, 1, 3)
        if self.branch_num == 2:
            # First half of the channels (and heads) attend in columns, the second half in rows.
            attended = torch.cat([self.attns[0](qkv[..., :C // 2]), self.attns[1](qkv[..., C // 2:])], dim=2)
        else:
            attended = self.attns[0](qkv)
        x = x + self.drop_path(self.proj(attended))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Merge_Block(nn.Module):
    """Between stages: 3x3 stride-2 conv to the next width on the token map, then LayerNorm."""

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, 2, 1)
        self.norm = norm_layer(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        side = int(round(L ** 0.5))
        x = self.conv(x.transpose(1, 2).reshape(B, C, side, side))
        return self.norm(x.flatten(2).transpose(1, 2))


class _Tokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C), row-major (the original's einops Rearrange, which has no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class CSWinTransformer(nn.Module):
    """CSWin Transformer: conv stem, four stages of CSWin blocks joined by Merge_Blocks, mean-pooled head.

    Args:
        img_size: Input size (square); fixed, since every block is built for its stage's resolution.
        patch_size: Stem stride (4 in the paper; 2 keeps 16x16 tokens at 32x32). The stem kernel stays 7x7,
            padded so the map is img_size / patch_size.
        in_chans: Input channels.
        num_classes: Classes of the head (0: no head, forward returns pooled features).
        embed_dim: Width of stage 1 (doubled by each merge).
        depth: Blocks per stage (4 numbers).
        split_size: Stripe width per stage (4 numbers; the last stage always attends over its whole map).
        num_heads: Heads per stage (4 numbers; halved between the two stripe branches).
        mlp_ratio: MLP hidden width / block width.
        qkv_bias: Bias in the qkv projection.
        qk_scale: Attention scale; None means head_dim**-0.5.
        drop_rate: Dropout in the MLPs.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth rate, rising linearly over all blocks to this value.
        norm_layer: Normalisation of the blocks and the final norm (stem and merges use nn.LayerNorm, as the
            original).
        use_chk: Gradient checkpointing of every block while training.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 64, depth: Sequence[int] = (1, 2, 21, 1), split_size: Sequence[int] = (1, 2, 7, 7),
                 num_heads: Sequence[int] = (2, 4, 8, 16), mlp_ratio: float = 4., qkv_bias: bool = True,
                 qk_scale=None, drop_rate: float = 0., attn_drop_rate: float = 0., drop_path_rate: float = 0.,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm, use_chk: bool = False):
        super().__init__()
        _check_args(img_size, patch_size, embed_dim, depth, split_size, num_heads)
        self.use_chk = use_chk
        self.img_size = img_size
        self.num_classes = num_classes
        self.num_prefix_tokens = 0  # tokens only: the feature API reshapes them to the square last-stage map
        self.stage1_conv_embed = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim, 7, patch_size, (8 - patch_size) // 2), _Tokens(), nn.LayerNorm(embed_dim))

        dpr = torch.linspace(0, drop_path_rate, sum(depth), device='cpu').tolist()
        dims = [embed_dim * 2 ** i for i in range(4)]
        for i in range(4):
            if i:
                setattr(self, f'merge{i}', Merge_Block(dims[i - 1], dims[i]))
            start = sum(depth[:i])
            setattr(self, f'stage{i + 1}', nn.ModuleList([
                CSWinBlock(dim=dims[i], num_heads=num_heads[i], reso=img_size // patch_size // 2 ** i,
                           mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, split_size=split_size[i],
                           drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[start + j], norm_layer=norm_layer,
                           last_stage=i == 3)
                for j in range(depth[i])]))
        self.embed_dim = embed_dim
        self.num_features = dims[-1]
        self.norm = norm_layer(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'}  # as the original (CSWin has neither)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.use_chk = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised last-stage tokens (B, H*W, C), row-major, before pooling."""
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ReproError(f'this CSWin was built for {self.img_size}x{self.img_size} inputs (every block is '
                             f'built for its stage resolution) but got {x.shape[-2]}x{x.shape[-1]}; build it with '
                             f'img_size={x.shape[-1]} or resize the input.')
        x = self.stage1_conv_embed(x)
        for i, stage in enumerate((self.stage1, self.stage2, self.stage3, self.stage4)):
            if i:
                x = getattr(self, f'merge{i}')(x)
            for blk in stage:
                if self.use_chk and torch.is_grad_enabled():
                    x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
                else:
                    x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (or pooled features with pre_logits=True) from the mean of forward_features' tokens."""
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_args(img_size, patch_size, embed_dim, depth, split_size, num_heads) -> None:
    """Reject configurations whose maps, stripes or heads do not tile, with a message saying what to change."""
    if len(depth) != 4 or len(split_size) != 4 or len(num_heads) != 4:
        raise ReproError(f'CSWin expects 4 depths, 4 split sizes and 4 head counts; got depth={list(depth)}, '
                         f'split_size={list(split_size)}, num_heads={list(num_heads)}.')
    if not 1 <= patch_size <= 8 or img_size % (patch_size * 8):
        raise ReproError(f'CSWin needs a stem stride (patch_size) of 1-8 and img_size divisible by patch_size * 8 '
                         f'(three stride-2 merges); got img_size={img_size}, patch_size={patch_size}. Use e.g. '
                         f'patch_size 4 at 224 or 2 at 32.')
    for i in range(4):
        res, split, heads, dim = img_size // patch_size // 2 ** i, split_size[i], num_heads[i], embed_dim * 2 ** i
        branches = 1 if i == 3 or res == split else 2
        if branches == 2 and (res % split or heads % 2 or (dim // 2) % (heads // 2)):
            raise ReproError(f'CSWin stage {i + 1} (map {res}x{res}, width {dim}) needs a split size dividing the '
                             f'map and an even head count dividing the width in half-channel branches; got '
                             f'split_size {split}, num_heads {heads}. Use e.g. split_size [1, 2, 2, 2] at 32x32.')
        if branches == 1 and dim % heads:
            raise ReproError(f'CSWin stage {i + 1} width {dim} must divide by num_heads {heads}.')


@register_model
def cswin_tiny(pretrained: bool = False, **kwargs) -> CSWinTransformer:
    """CSWin-T (the original CSWin_64_12211_tiny_224): width 64, depths 1-2-21-1, split 1-2-7-7, heads 2-4-8-16."""
    if pretrained:
        raise ReproError('CSWin weights are not downloaded: build with pretrained=False and pass a local weight file '
                         '(e.g. cswin_tiny_224.pth) via repro.models.create_model(name, pretrained_file=PATH).')
    for key in ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir'):
        kwargs.pop(key, None)
    variant = dict(patch_size=4, embed_dim=64, depth=[1, 2, 21, 1], split_size=[1, 2, 7, 7], num_heads=[2, 4, 8, 16],
                   mlp_ratio=4.)
    return CSWinTransformer(**{**variant, **kwargs})
