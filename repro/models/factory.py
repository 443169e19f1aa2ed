"""One factory for every model: SLaK teachers, the paper's students and timm models, all built offline.

Nothing is ever downloaded: timm is always called with pretrained=False and weights come only from a local file
(`pretrained_file`). The ViTs, Swin-T and CSWin-T get patch/window sizes that suit the input (32x32 CIFAR or
224x224).
"""
import argparse
import difflib
import os
import pickle
import re
import sys
import warnings
from typing import Dict, List, Optional

import timm
import torch
import torch.nn as nn
from timm.models import load_state_dict as timm_load_state_dict

from ..errors import ReproError
from .cswin import cswin_tiny
from .slak import SLAK_MODELS, SLaK
from .vit_l2s import vit_small_l2s

TIMM_MODELS = ['convnext_atto', 'convnext_femto', 'convnext_pico', 'convnext_nano', 'convnext_tiny',
               'convnext_small', 'convnext_base', 'resnet50']
SIZED_MODELS = ['vit_small', 'swin_tiny', 'vit_small_l2s', 'cswin_tiny']


def list_models() -> List[str]:
    """Sorted names this factory knows (any other timm model name is passed through to timm)."""
    return sorted(SLAK_MODELS + TIMM_MODELS + SIZED_MODELS)


def _vit_small(img_size: int, **kwargs) -> nn.Module:
    """ViT-S: patch 16 at 224 (standard), patch 4 below 224 (8x8 tokens at 32x32)."""
    kwargs = {'patch_size': 16 if img_size >= 224 else 4, **kwargs}
    _check_divisible('vit_small', img_size, kwargs['patch_size'], f'patch size {kwargs["patch_size"]}')
    return timm.create_model('vit_small_patch16_224', pretrained=False, img_size=img_size, **kwargs)


def _vit_small_l2s(img_size: int, **kwargs) -> nn.Module:
    """The authors' ViT-S: patch 16 at 224 (as released), patch 4 below 224 (8x8 tokens at 32x32)."""
    kwargs = {'patch_size': 16 if img_size >= 224 else 4, **kwargs}
    _check_divisible('vit_small_l2s', img_size, kwargs['patch_size'], f'patch size {kwargs["patch_size"]}')
    return vit_small_l2s(img_size=img_size, **kwargs)


def _cswin_tiny(img_size: int, **kwargs) -> nn.Module:
    """CSWin-T: stem stride 4 / split 1-2-7-7 at 224 (as released), stride 2 / split 1-2-2-2 below 224 (maps
    16/8/4/2 at 32x32: stripes of 1 and 2, two 2-wide stripes on the 4x4 map, full attention on the last)."""
    small = img_size < 224
    kwargs = {'patch_size': 2 if small else 4, 'split_size': [1, 2, 2, 2] if small else [1, 2, 7, 7], **kwargs}
    return cswin_tiny(img_size=img_size, **kwargs)


def _swin_tiny(img_size: int, **kwargs) -> nn.Module:
    """Swin-T: patch 4 / window 7 at 224 (standard), patch 2 / window 4 below 224 (maps 16/8/4/2 at 32x32)."""
    patch, window = (4, 7) if img_size >= 224 else (2, 4)
    kwargs = {'patch_size': patch, 'window_size': window, **kwargs}
    # Three patch merges halve the map three times, so the input must divide by patch * 8.
    patch = kwargs['patch_size']
    _check_divisible('swin_tiny', img_size, patch * 8, f'patch size {patch} times 8 (three patch merges)')
    return timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, img_size=img_size, **kwargs)


def _check_divisible(name: str, img_size: int, divisor: int, why: str) -> None:
    if img_size % divisor:
        raise ReproError(f'{name} needs img_size divisible by {divisor} ({why}); got img_size={img_size}. '
                         f'Use e.g. 32 or 224.')


def _unknown_name(name: str) -> ReproError:
    """A ReproError naming close matches among our and timm's models."""
    if ':' in name:
        return ReproError(f'model name {name!r} has a source prefix; models are built offline only. '
                          f'Use a plain name from repro.models.list_models() or timm.list_models().')
    # Our names include timm's ConvNeXt/ResNet ones: each candidate once, so no suggestion repeats.
    close = difflib.get_close_matches(name, list(dict.fromkeys(list_models() + timm.list_models())), n=6,
                                      cutoff=0.6)
    return ReproError(f'unknown model {name!r}. Close matches: {close or "none"}. '
                      f'Known here: {list_models()}; any timm.list_models() name also works.')


def _build(name: str, img_size: int, kwargs: Dict) -> nn.Module:
    """Build the architecture (random init), translating argument errors into ReproError."""
    try:
        if name == 'vit_small':
            return _vit_small(img_size, **kwargs)
        if name == 'swin_tiny':
            return _swin_tiny(img_size, **kwargs)
        if name == 'vit_small_l2s':
            return _vit_small_l2s(img_size, **kwargs)
        if name == 'cswin_tiny':
            return _cswin_tiny(img_size, **kwargs)
        if name in SLAK_MODELS or name in TIMM_MODELS:
            return timm.create_model(name, pretrained=False, **kwargs)
        try:
            return timm.create_model(name, pretrained=False, img_size=img_size, **kwargs)
        except TypeError as e:
            if "'img_size'" not in str(e):
                raise
            # Size-agnostic architectures (most ConvNets) take no img_size.
            return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        if 'unexpected keyword argument' not in str(e):
            raise
        raise ReproError(f'model {name!r} does not take one of the given arguments {sorted(kwargs)}: {e}. '
                         f'Remove the argument or pick a model that has it (stem_stride/sync_bn are SLaK-only).')


def create_model(name: str, num_classes: int = 1000, drop_path_rate: float = 0., img_size: int = 224,
                 pretrained_file: Optional[str] = None, **kwargs) -> nn.Module:
    """Build any model by name (see list_models), offline; weights, if any, from the local pretrained_file.

    Args:
        name: A name from list_models() or any timm model name.
        num_classes: Classes of the head.
        drop_path_rate: Stochastic depth rate.
        img_size: Input size; picks ViT/Swin patch and window sizes, ignored by size-agnostic ConvNets.
        pretrained_file: Local checkpoint ({'model': ...}, {'state_dict': ...}, plain state dict or .safetensors;
            the raw weights, not an EMA copy, unless the file holds only EMA weights, as CSWin's
            {'state_dict_ema': ...} does); a head of another class count is dropped with a warning.
        **kwargs: Passed to the architecture (e.g. stem_stride, sync_bn, kernel_size for SLaK; in_chans).
    """
    if name not in list_models() and not timm.is_model(name):
        raise _unknown_name(name)
    if pretrained_file is not None and not os.path.isfile(pretrained_file):
        raise ReproError(f'pretrained_file {pretrained_file!r} does not exist (expected a local checkpoint file for '
                         f'{name!r}). Copy the weights to this machine (e.g. a Kaggle dataset) and pass that path, or '
                         f'leave pretrained_file unset to start from random weights.')
    model = _build(name, img_size, dict(num_classes=num_classes, drop_path_rate=drop_path_rate, **kwargs))
    if pretrained_file is not None:
        load_pretrained_file(model, pretrained_file)
    return model


def _read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """State dict from a checkpoint file without running arbitrary pickled code."""
    try:
        # Training scripts (ConvNeXt/SLaK main.py) save their argparse Namespace next to the weights.
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = timm_load_state_dict(path, use_ema=False, weights_only=True)
            if _holds_only_ema(state):
                # Some releases (CSWin's cswin_tiny_224.pth) ship only their EMA weights: those are the weights.
                state = timm_load_state_dict(path, use_ema=True, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, OSError) as e:
        raise ReproError(f'could not read checkpoint {path!r}: {e}. Expected a torch checkpoint holding tensors '
                         f'({{"model": state_dict}}, {{"state_dict": ...}} or a plain state dict) or .safetensors; '
                         f're-save it as torch.save({{"model": model.state_dict()}}, path).')
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ReproError(f'checkpoint {path!r} does not hold a state dict (name -> tensor). '
                         f'Re-save it as torch.save({{"model": model.state_dict()}}, path).')
    return state


def _holds_only_ema(checkpoint) -> bool:
    """Whether a loaded checkpoint has EMA weights ('state_dict_ema' / 'model_ema') but no raw ones."""
    return (isinstance(checkpoint, dict) and not any(k in checkpoint for k in ('state_dict', 'model'))
            and any(isinstance(checkpoint.get(k), dict) for k in ('state_dict_ema', 'model_ema')))


def adapt_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map foreign key layouts onto the model's own: timm's per-architecture filters, old SLaK strip names."""
    if isinstance(model, SLaK):
        # An earlier revision of the released SLaK code named the two strips Decom1/Decom2.
        return {re.sub(r'\.Decom([12])\.', r'.LoRA\1.', k): v for k, v in state.items()}
    filter_fn = getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)
    return filter_fn(state, model) if filter_fn is not None else state


def _classifier_prefix(model: nn.Module) -> Optional[str]:
    """Module path of the classification head (for dropping a head trained on another class count)."""
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    for name, module in model.named_modules():
        if module is head and name:
            return name + '.'
    return None


def load_pretrained_file(model: nn.Module, path: str) -> nn.Module:
    """Load weights from a local file strictly; a head of another shape is dropped (warning) and left random."""
    state = adapt_state_dict(model, _read_checkpoint(path))
    own = model.state_dict()
    head = _classifier_prefix(model)
    dropped = [k for k, v in state.items() if head and k.startswith(head) and (k not in own or own[k].shape != v.shape)]
    if dropped:
        warnings.warn(f'{path}: dropping classifier weights {dropped} (checkpoint head does not match the model\'s '
                      f'{getattr(model, "num_classes", "?")} classes); the head stays randomly initialised.')
        state = {k: v for k, v in state.items() if k not in dropped}
    bad = [f'{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}' for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not (dropped and k.startswith(head))]
    unexpected = [k for k in state if k not in own]
    if bad or missing or unexpected:
        raise ReproError(f'checkpoint {path!r} does not fit {type(model).__name__}: shape mismatches {bad[:5]}, '
                         f'missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}). '
                         f'Check that the model name and its arguments (e.g. kernel_size, width, Decom) match the '
                         f'checkpoint.')
    model.load_state_dict(state, strict=not dropped)
    return model
