"""Training and evaluation transforms, as in the ConvNeXt/SLaK code (timm's create_transform).

ImageNet-style (and any input larger than 32 px, as in the papers' CIFAR runs at 224): RandomResizedCrop,
horizontal flip, RandAugment, bicubic interpolation, random erasing ('pixel' mode, one region); evaluation
resizes to img_size / 0.875 and centre-crops (from 384 px on: a plain resize to img_size, no crop).
CIFAR-sized data (32 px or less): the same pipeline with the first step replaced by RandomCrop(padding=4),
exactly as the official code does when the input size is at most 32; evaluation is ToTensor + Normalize.
Colour jitter is off: the official recipe runs RandAugment, which disables it.

Mean/std are per dataset. The official code normalised CIFAR with ImageNet statistics; here CIFAR uses its own
(the usual choice in CIFAR distillation work); the two differ only by a small per-channel shift and scale.
"""
from __future__ import annotations

from typing import Callable

from ..errors import ReproError

CROP_PCT = 0.875  # ConvNeXt's eval crop (224/256)
FULL_RESIZE_FROM = 384  # ConvNeXt evaluates at 384 px and above without a centre crop

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def dataset_mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation mean and std for a dataset name (ImageNet's for imagenet and folder)."""
    if name == "cifar100":
        return CIFAR100_MEAN, CIFAR100_STD
    if name == "cifar10":
        return CIFAR10_MEAN, CIFAR10_STD
    if name == "digits":
        from .digits import DIGITS_MEAN, DIGITS_STD

        return DIGITS_MEAN, DIGITS_STD
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)


def _bicubic():
    from torchvision.transforms import InterpolationMode

    return InterpolationMode.BICUBIC


def train_transform(img_size: int, *, mean, std, randaugment: str | None = None, reprob: float = 0.0,
                    hflip: float = 0.5, native_size: int | None = None) -> Callable:
    """Training augmentation; `native_size` is the stored resolution of small-image datasets (32 for CIFAR)."""
    from timm.data import create_transform
    from torchvision import transforms

    try:
        tf = create_transform(img_size, is_training=True, hflip=hflip, color_jitter=None,
                              auto_augment=randaugment or None, interpolation="bicubic", re_prob=reprob,
                              re_mode="pixel", re_count=1, mean=mean, std=std)
    except Exception as exc:  # timm asserts on malformed augmentation strings
        raise ReproError(f"data.randaugment '{randaugment}' is not a valid timm augmentation string "
                         f"({type(exc).__name__}: {exc}); use e.g. rand-m9-mstd0.5-inc1, or null to disable") \
            from exc
    if native_size is not None and img_size <= native_size:
        first = [transforms.RandomCrop(img_size, padding=4)]
        if img_size < native_size:
            first.insert(0, transforms.Resize(img_size, interpolation=_bicubic()))
        tf.transforms[0:1] = first
    _posterize_zero_bits_safe(tf)
    return tf


def _posterize_all_bits(img, bits_to_keep, **_):
    # Keeping 0 bits is a black image; Pillow >= 11 rejects bits=0, which timm's "inc1" RandAugment asks
    # for at the top magnitudes (m9 with mstd noise reaches them), crashing a worker mid-epoch.
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, bits_to_keep)


def _posterize_zero_bits_safe(tf) -> None:
    """Route every RandAugment posterize op in `tf` through `_posterize_all_bits`."""
    from timm.data.auto_augment import RandAugment, posterize

    for t in getattr(tf, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.aug_fn is posterize:
                    op.aug_fn = _posterize_all_bits


def eval_transform(img_size: int, *, mean, std, native_size: int | None = None) -> Callable:
    """Evaluation preprocessing (resize/crop, ToTensor, Normalize)."""
    from timm.data import create_transform
    from torchvision import transforms

    if native_size is not None and img_size <= native_size:
        steps = [] if img_size == native_size else [transforms.Resize(img_size, interpolation=_bicubic())]
        return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(mean, std)])
    if img_size >= FULL_RESIZE_FROM:
        return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=1.0,
                                crop_mode="squash", mean=mean, std=std)
    return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=CROP_PCT,
                            mean=mean, std=std)
