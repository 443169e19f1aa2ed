"""The authors' ViT-S teacher: the original (2021) timm `vit_small_patch16_224`, vendored by the SLaK code.

Papers:
    Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", ICLR 2021.
    Huang et al., "Are Large Kernels Better Teachers than Transformers for ConvNets?", ICML 2023: its "ViT-S".
Original code: https://github.com/VITA-Group/SLaK (timm1/models/vision_transformer.py, built by main_KD.py with
pretrained weights). That "small" ViT is not today's DeiT-style ViT-S (384 wide, 12 deep; `vit_small` here):
it is 768 wide, 8 deep, 8 heads, MLP ratio 3, without qkv bias, LayerNorm eps 1e-5, classified from the class
token, 48,754,408 parameters with 1000 classes, and its weights expect the attention scale 768**-0.5 (the
original sets it whenever it loads them). Module and parameter names follow the original, so its weight file
loads with strict=True and gives the same outputs.

Beyond the original: forward_features / forward_head (tokens before the class-token head, for feature
distillation), input-size checks that raise ReproError, and overridable variant numbers so reduced or
CIFAR-sized configurations of the same network can be built by name.
"""
from functools import partial
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import register_model

from ..errors import ReproError

__all__ = ['VisionTransformer', 'checkpoint_filter_fn']


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens (B, N, C) by one strided convolution; the input size is fixed."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        if img_size % patch_size:
            raise ReproError(f'ViT needs img_size divisible by patch_size; got img_size={img_size}, '
                             f'patch_size={patch_size}. Use e.g. patch_size 16 at 224 or 4 at 32.')
        self.img_size, self.patch_size = (img_size, img_size), (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ReproError(f'this ViT was built for {self.img_size[0]}x{self.img_size[1]} inputs (its position '
                             f'embedding has one entry per patch) but got {x.shape[-2]}x{x.shape[-1]}; build it '
                             f'with img_size={x.shape[-1]} or resize the input.')
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; `qk_scale` overrides head_dim**-0.5 (768**-0.5 for the released weights)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        if dim % num_heads:
            raise ReproError(f'ViT embed_dim {dim} must divide by num_heads {num_heads}.')
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        # Same as softmax(q k^T * scale) v with dropout on the weights, in fused kernels where available.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.,
                                           scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 act_layer: Callable[..., nn.Module] = nn.GELU, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                              proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT with a class token and learned position embedding, in the original timm 0.4 layout.

    Args:
        img_size: Input size (square); fixed, as the position embedding has one entry per patch.
        patch_size: Patch edge (16 at 224; 4 suits 32x32).
        in_chans: Input channels.
        num_classes: Classes of the head (0: no head, forward returns the class token's features).
        embed_dim: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width / embed_dim.
        qkv_bias: Bias in the qkv projection.
        qk_scale: Attention scale; None means head_dim**-0.5.
        representation_size, distilled: The original's pre-logits layer and DeiT distillation token; the L2S
            teacher has neither, and only their defaults (None, False) are accepted.
        drop_rate: Dropout after the position embedding, the attention projection and in the MLP.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth rate, rising linearly over the blocks to this value.
        embed_layer: Patch embedding module class.
        norm_layer: Normalisation layer (default LayerNorm with eps 1e-6, as the original class; the ViT-S
            variant uses plain nn.LayerNorm, eps 1e-5).
        act_layer: MLP activation (default GELU).
        weight_init: '' (the original's default truncated-normal scheme) only.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, representation_size: Optional[int] = None,
                 distilled: bool = False, drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0., embed_layer: Callable[..., nn.Module] = PatchEmbed,
                 norm_layer: Optional[Callable[..., nn.Module]] = None,
                 act_layer: Optional[Callable[..., nn.Module]] = None, weight_init: str = ''):
        super().__init__()
        if representation_size or distilled or weight_init:
            raise ReproError(f'this ViT has no pre-logits layer, distillation token or alternative init '
                             f'(representation_size={representation_size}, distilled={distilled}, '
                             f'weight_init={weight_init!r}); leave them at None/False/"" or use a timm ViT/DeiT.')
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = self.num_prefix_tokens = 1  # the class token (the feature API drops it)
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU

        self.patch_embed = embed_layer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                       embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], act_layer=act_layer, norm_layer=norm_layer)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.pre_logits = nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False

        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(_init_weights)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, 1 + N, C): the class token, then the patch tokens in row-major order."""
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in self.blocks:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class-token logits (or its features with pre_logits=True) from forward_features' tokens."""
        x = self.pre_logits(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    """The original's default init: truncated normal (std .02) linears with zero bias, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.zeros_(m.bias)
        nn.init.ones_(m.weight)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VisionTransformer) -> Dict[str, torch.Tensor]:
    """The original's weight-file filter: unwrap {'model': ...} and turn a linear patch projection into a conv."""
    if 'model' in state_dict and isinstance(state_dict['model'], dict):
        state_dict = state_dict['model']
    out = {}
    for k, v in state_dict.items():
        if k == 'patch_embed.proj.weight' and v.ndim < 4:
            # Weights trained before the conv patchifier store the projection as (embed_dim, C * p * p).
            out_ch, _, h, w = model.patch_embed.proj.weight.shape
            v = v.reshape(out_ch, -1, h, w)
        out[k] = v
    return out


def _create(pretrained: bool, kwargs: dict, **variant) -> VisionTransformer:
    """Build a variant from its numbers, overridden by user kwargs; weights only come from local files."""
    if pretrained:
        raise ReproError('ViT weights are not downloaded: build with pretrained=False and pass a local weight file '
                         'via repro.models.create_model(name, pretrained_file=PATH).')
    for key in ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir'):
        kwargs.pop(key, None)
    return VisionTransformer(**{**variant, **kwargs})


@register_model
def vit_small_l2s(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The authors' ViT-S (original timm vit_small_patch16_224): 768 wide, depth 8, 8 heads, MLP 3, scale 768**-0.5."""
    # The released weights were trained with this scale; the original sets it whenever it loads them, and the
    # teacher here is always that network (pass qk_scale=None for head_dim**-0.5).
    kwargs.setdefault('qk_scale', 768 ** -0.5)
    return _create(pretrained, kwargs, patch_size=16, embed_dim=768, depth=8, num_heads=8, mlp_ratio=3.,
                   qkv_bias=False, norm_layer=nn.LayerNorm)
