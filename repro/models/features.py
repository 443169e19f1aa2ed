"""Logits and last-stage feature maps from one forward pass, for every model family (feature distillation)."""
import math
from typing import Tuple

import torch
import torch.nn as nn

from ..errors import ReproError


def feature_channels(model: nn.Module) -> int:
    """Channels of the last-stage feature map returned by logits_and_features."""
    if not hasattr(model, 'num_features'):
        raise ReproError(f'{type(model).__name__} has no num_features; expected a timm-style model from '
                         f'repro.models.create_model.')
    return int(model.num_features)


def _as_map(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) view of forward_features' output: NCHW maps, NHWC maps (Swin) or tokens (ViT)."""
    if features.ndim == 3:
        tokens = features[:, getattr(model, 'num_prefix_tokens', 0):]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ReproError(f'{type(model).__name__} returned {tokens.shape[1]} patch tokens, which do not form a '
                             f'square map; use a square input whose size divides by the patch size.')
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
    if getattr(model, 'output_fmt', 'NCHW') == 'NHWC':
        return features.permute(0, 3, 1, 2)
    return features


def logits_and_features(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits, last-stage feature map (B, C, H, W) before pooling) from a single forward pass."""
    if not (hasattr(model, 'forward_features') and hasattr(model, 'forward_head')):
        raise ReproError(f'{type(model).__name__} lacks forward_features/forward_head; expected a timm-style model '
                         f'from repro.models.create_model (unwrap DDP/compile wrappers first).')
    features = model.forward_features(x)
    return model.forward_head(features), _as_map(model, features)
