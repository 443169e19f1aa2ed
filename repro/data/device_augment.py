"""Augmentation on the training device for in-memory datasets (CIFAR-10/100, digits), batched.

The CPU path (`build_loader` over `train_transform`: torchvision's RandomCrop(32, padding=4) and horizontal
flip, timm's RandAugment on PIL images, ToTensor, Normalize, timm's RandomErasing) augments one image at a
time in DataLoader workers. Here the uint8 training set lives on the training device and batches are augmented
there in batched tensor operations, as airbench-style CIFAR pipelines do (timm's RandAugment and RandomErasing,
torchvision's crop and flip, and Pillow's arithmetic are the reference throughout).

Same augmentation, sample for sample. `compile_transform` reads the CPU transform that `train_transform` builds
(so both paths follow one configuration), and `ParameterSampler` draws every random parameter of a sample from
that sample's seed (the `sample_seed` ResumableSampler yields) exactly as the CPU path draws it: torch for the
crop, flip and erasing noise, numpy for RandAugment's op choice, Python's `random` for the op probability,
magnitude noise, sign and the erasing box, each generator seeded as `PerSampleSeeded` seeds it. A sample
therefore gets the same crop, flip, ops, magnitudes and erasing on both paths, on every resume and on any
number of processes; its parameters never depend on the batch it lands in, nor on how many batches are
augmented together (`DeviceLoader` augments 512 images per pass).

The pixel operations replay Pillow's arithmetic: the bicubic filter of `Image.transform` (4x4 taps, a = -1,
edge clamping, float64, truncation, the fill colour outside the source), Pillow's integer RGB -> L conversion
and float32 `Image.blend` for the ImageEnhance ops, the SMOOTH kernel of Sharpness, and the look-up tables of
autocontrast, equalize, posterize (0 bits: black, as repro.data.transforms maps it) and solarize. On CPU the
device path's batches equal the PIL path's bit for bit; tests/test_device_augment.py states the tolerance of
each op (one grey level for the bicubic ops, none for the others) and checks it against timm and Pillow.

Scope: the stored 32x32 resolution (the RandomCrop branch of train_transform) and RandAugment's ops in OPS;
other sizes, folder datasets (ImageNet) and other policies keep the CPU path (`resolve_augment_on`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import ReproError

AUGMENT_ON_CHOICES = ("auto", "cpu", "device")
DEVICE_DATASETS = ("cifar10", "cifar100", "digits")  # held in memory as uint8 arrays
DEVICE_IMAGE_SIZE = 32  # their stored size: train_transform's RandomCrop(padding=4) branch

_INF = float("inf")
_LEVEL_DENOM = 10.0  # timm's magnitude scale: level / 10 is the fraction of an op's range

# RandAugment ops run here (timm's names), by kind. The level -> argument rules follow timm's LEVEL_TO_ARG.
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel")
_NO_ARG = ("AutoContrast", "Equalize", "Invert")
_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")
OPS = (_NO_ARG + _GEOMETRIC + ("Posterize", "PosterizeIncreasing", "PosterizeOriginal", "Solarize",
                               "SolarizeIncreasing", "SolarizeAdd")
       + _ENHANCE + tuple(f"{name}Increasing" for name in _ENHANCE))


# ------------------------------------------------------------------------------------------ which path
def resolve_augment_on(data_cfg: Any, device: torch.device | str) -> str:
    """'cpu' or 'device' for this run: `data.augment_on`, with 'auto' = device on CUDA for in-memory datasets."""
    choice = getattr(data_cfg, "augment_on", "auto")
    if choice not in AUGMENT_ON_CHOICES:
        raise ReproError(f"data.augment_on expects one of {', '.join(AUGMENT_ON_CHOICES)}, found {choice!r}; "
                         "auto augments on the GPU for in-memory datasets and on the CPU otherwise")
    if choice == "cpu":
        return "cpu"
    reason = _not_served(data_cfg)
    if choice == "device":
        if reason:
            raise ReproError(f"data.augment_on=device augments the in-memory datasets {', '.join(DEVICE_DATASETS)} "
                             f"at their stored {DEVICE_IMAGE_SIZE}x{DEVICE_IMAGE_SIZE} size on the training "
                             f"device, but {reason}; set data.augment_on=cpu (or auto, which picks the path)")
        return "device"
    return "device" if torch.device(device).type == "cuda" and not reason else "cpu"


def _not_served(data_cfg: Any) -> str | None:
    """Why the device path cannot run this data config, or None when it can."""
    if data_cfg.name not in DEVICE_DATASETS:
        return f"data.name={data_cfg.name} is read from image files, so it is augmented on the CPU"
    if data_cfg.img_size != DEVICE_IMAGE_SIZE:
        return (f"data.img_size={data_cfg.img_size} resizes the images first (only the CPU path does that)")
    unsupported = _unsupported_ops(data_cfg.randaugment)
    if unsupported:
        return (f"data.randaugment={data_cfg.randaugment} uses {', '.join(unsupported)}, which only the CPU path "
                f"implements (device ops: {', '.join(OPS)})")
    return None


def _unsupported_ops(randaugment: str | None) -> list[str]:
    if not randaugment:
        return []
    try:
        from timm.data.auto_augment import rand_augment_transform

        ra = rand_augment_transform(randaugment, {"translate_const": 14, "img_mean": (128, 128, 128)})
    except Exception:  # malformed strings, and AutoAugment/AugMix policies, are left to train_transform
        return [randaugment]
    return sorted({op.name for op in ra.ops} - set(OPS))


# --------------------------------------------------------------------------------- the compiled recipe
@dataclass(frozen=True)
class RandOp:
    """One RandAugment op as timm's AugmentOp holds it."""

    name: str
    prob: float
    magnitude: float
    magnitude_std: float
    magnitude_max: float | None
    translate_pct: float
    translate_const: float


@dataclass(frozen=True)
class AugmentRecipe:
    """Every setting of the CPU training transform, read from it (see `compile_transform`)."""

    size: int
    padding: int
    hflip: float
    ops: tuple[RandOp, ...]
    num_layers: int
    choice_weights: tuple[float, ...] | None
    fill: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    reprob: float
    erase_area: tuple[float, float]
    erase_log_aspect: tuple[float, float]
    erase_count: tuple[int, int]
    erase_mode: str


def compile_transform(tf: Any, size: int) -> AugmentRecipe:
    """Read the steps of `train_transform(...)` for `size`-pixel images into an AugmentRecipe."""
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    found = dict(padding=0, hflip=0.0, ops=(), num_layers=0, choice_weights=None, fill=(0, 0, 0), reprob=0.0,
                 erase_area=(0.02, 1 / 3), erase_log_aspect=(0.0, 0.0), erase_count=(1, 1), erase_mode="const")
    mean = std = None
    for step in getattr(tf, "transforms", [tf]):
        if isinstance(step, T.RandomCrop):
            if tuple(step.size) != (size, size) or step.padding_mode != "constant" or step.fill != 0 \
                    or not isinstance(step.padding, int):
                raise ReproError(f"the device path crops {size}x{size} with constant zero padding; the CPU "
                                 f"transform has {step}")
            found["padding"] = step.padding
        elif isinstance(step, T.RandomHorizontalFlip):
            found["hflip"] = float(step.p)
        elif isinstance(step, RandAugment):
            ops = []
            for op in step.ops:
                if op.name not in OPS:
                    raise ReproError(f"RandAugment op {op.name} has no device implementation (device ops: "
                                     f"{', '.join(OPS)}); set data.augment_on=cpu")
                if isinstance(op.kwargs.get("resample"), (list, tuple)) or int(op.kwargs["resample"]) != 3:
                    raise ReproError("the device path replays Pillow's bicubic filter; the CPU transform's "
                                     f"RandAugment resamples with {op.kwargs.get('resample')}")
                ops.append(RandOp(op.name, float(op.prob), float(op.magnitude), float(op.magnitude_std),
                                  op.magnitude_max, float(op.hparams.get("translate_pct", 0.45)),
                                  float(op.hparams["translate_const"])))
                found["fill"] = tuple(int(v) for v in op.kwargs["fillcolor"])
            found.update(ops=tuple(ops), num_layers=int(step.num_layers),
                         choice_weights=None if step.choice_weights is None
                         else tuple(float(w) for w in step.choice_weights))
        elif type(step).__name__ in ("ToTensor", "MaybeToTensor"):
            pass
        elif isinstance(step, T.Normalize):
            mean, std = tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)
        elif isinstance(step, RandomErasing):
            if step.num_splits > 1:
                raise ReproError("random erasing with num_splits has no device implementation")
            found.update(reprob=float(step.probability), erase_area=(step.min_area, step.max_area),
                         erase_log_aspect=tuple(step.log_aspect_ratio),
                         erase_count=(int(step.min_count), int(step.max_count)), erase_mode=step.mode or "const")
        else:
            raise ReproError(f"the training transform step {type(step).__name__} has no device implementation; "
                             "set data.augment_on=cpu")
    if mean is None:
        raise ReproError("the training transform has no Normalize step; the device path needs mean and std")
    return AugmentRecipe(size=size, mean=mean, std=std, **found)


# ------------------------------------------------------------------------------ per-sample parameters
@dataclass
class AugmentPlan:
    """The random parameters of a batch, one row per sample (CPU tensors).

    crop: (n, 2) top and left of the crop in the padded image; flip: (n,) bool; ops: (n, L) op index per
    RandAugment layer (-1: skipped); args: (n, L) the op's scalar argument (factor, bits, threshold, add);
    affine: (n, L, 6) Pillow's inverse affine matrix for geometric ops; boxes[i]: erasing boxes of sample i
    as (top, left, h, w); noise[i]: their fill values (normalised units).
    """

    crop: torch.Tensor
    flip: torch.Tensor
    ops: torch.Tensor
    args: torch.Tensor
    affine: torch.Tensor
    boxes: list[list[tuple[int, int, int, int]]]
    noise: list[list[torch.Tensor]]


def level_rule(op: RandOp):
    """timm's level -> argument rule of `op` (LEVEL_TO_ARG) as `rule(level, rng)`; signs are drawn from rng."""
    name = op.name

    def signed(scale: float):
        def rule(level: float, rng: random.Random) -> float:
            v = level / _LEVEL_DENOM * scale
            return -v if rng.random() > 0.5 else v  # timm's _randomly_negate: flip when the draw exceeds 1/2
        return rule

    if name == "Rotate":
        return signed(30.0)
    if name in ("ShearX", "ShearY"):
        return signed(0.3)
    if name in ("TranslateXRel", "TranslateYRel"):
        return signed(op.translate_pct)
    if name in ("TranslateX", "TranslateY"):
        return signed(op.translate_const)
    if name == "Posterize":
        return lambda level, rng: float(int(level / _LEVEL_DENOM * 4))
    if name == "PosterizeIncreasing":
        return lambda level, rng: float(4 - int(level / _LEVEL_DENOM * 4))
    if name == "PosterizeOriginal":
        return lambda level, rng: float(int(level / _LEVEL_DENOM * 4) + 4)
    if name == "Solarize":
        return lambda level, rng: float(min(256, int(level / _LEVEL_DENOM * 256)))
    if name == "SolarizeIncreasing":
        return lambda level, rng: float(256 - min(256, int(level / _LEVEL_DENOM * 256)))
    if name == "SolarizeAdd":
        return lambda level, rng: float(min(128, int(level / _LEVEL_DENOM * 110)))
    if name in _ENHANCE:
        return lambda level, rng: level / _LEVEL_DENOM * 1.8 + 0.1
    if name.endswith("Increasing"):  # the enhance ops moving away from 1.0 (no change), at least 0.1
        move = signed(0.9)
        return lambda level, rng: max(0.1, 1.0 + move(level, rng))
    return lambda level, rng: 0.0  # AutoContrast, Equalize, Invert take no argument


def level_to_arg(name: str, level: float, op: RandOp, rng: random.Random) -> float:
    """timm's level -> argument rule for `name` at `level` (0..10); sign draws come from `rng`."""
    return level_rule(dataclasses.replace(op, name=name))(level, rng)


def affine_matrix(name: str, arg: float, size: int) -> tuple[float, ...]:
    """Pillow's inverse affine matrix (output pixel -> source point) for a geometric op of timm's."""
    if name == "Rotate":  # Image.rotate about the centre, without expand
        angle = -math.radians(arg % 360.0)
        m = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
             round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
        cx = cy = size / 2
        m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx
        m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy
        return tuple(m)
    if name == "ShearX":
        return (1.0, arg, 0.0, 0.0, 1.0, 0.0)
    if name == "ShearY":
        return (1.0, 0.0, 0.0, arg, 1.0, 0.0)
    pixels = arg * size if name.endswith("Rel") else arg
    if name.startswith("TranslateX"):
        return (1.0, 0.0, pixels, 0.0, 1.0, 0.0)
    return (1.0, 0.0, 0.0, 0.0, 1.0, pixels)


def _bounded(raw: Sequence[int], high: int, size: int) -> list[int] | None:
    """`RandomState.randint(0, high, size)` from the 32-bit outputs `raw` of its MT19937 (None: too few).

    numpy's legacy stream is frozen: bounded integers below 2**32 are `next_uint32 & mask`, redrawn while above
    high - 1, where mask is the smallest all-ones number covering high - 1 (the tests check it against randint).
    """
    top = high - 1
    mask = (1 << top.bit_length()) - 1
    out = [v & mask for v in raw if v & mask <= top][:size]
    return out if len(out) == size else None


@functools.lru_cache(maxsize=1)
def _torch_draws_are_mt19937() -> bool:
    """Whether torch's CPU generator, seeded with s, yields MT19937(s mod 2**32)'s outputs as assumed below.

    torch seeds its Mersenne Twister like numpy's legacy RandomState (the low 32 bits), draws randint over a
    small range as `next % range` and rand (float32) as the low 24 bits of `next` over 2**24. Checked here once
    on a few seeds; where it does not hold, the sampler asks torch's generator for every sample instead.
    """
    bits = np.random.MT19937()
    state = np.random.RandomState(bits)
    g = torch.Generator()
    for seed in (0, 1, 12345, 2**40 + 7, 2**63 - 25):
        g.manual_seed(seed)
        expected = torch.randint(0, 9, (2,), generator=g).tolist() + [torch.rand(1, generator=g).item()]
        state.seed(seed & 0xFFFFFFFF)
        r = bits.random_raw(3).tolist()
        if expected != [r[0] % 9, r[1] % 9, (r[2] & 0xFFFFFF) * 2.0 ** -24]:
            return False
    return True


class ParameterSampler:
    """Draws each sample's augmentation parameters from its seed, in the CPU pipeline's order of draws."""

    def __init__(self, recipe: AugmentRecipe):
        self.recipe = recipe
        # Reused generators, re-seeded per sample (cheaper than creating them): torch's CPU generator,
        # Python's random, and numpy's legacy RandomState over a bit generator whose raw outputs it can read.
        self._torch = torch.Generator()
        self._py = random.Random()
        self._bits = np.random.MT19937()
        self._np = np.random.RandomState(self._bits)
        self._weights = None if recipe.choice_weights is None else np.asarray(recipe.choice_weights)
        # A float32 threshold: torchvision compares torch.rand(1) (float32) with p in float32
        self._hflip = float(np.float32(recipe.hflip))
        self._fast = _torch_draws_are_mt19937()

    def _crop_flip(self, seed: int, raw: list[int]) -> tuple[int, int, bool]:
        """torchvision RandomCrop.get_params (top, then left) and RandomHorizontalFlip (torch.rand(1) < p)."""
        span = 2 * self.recipe.padding + 1
        if self._fast:  # torch's stream is numpy's: the first outputs of the sample's MT19937
            flip = self.recipe.hflip > 0 and (raw[2] & 0xFFFFFF) * 2.0 ** -24 < self._hflip
            return raw[0] % span, raw[1] % span, flip
        g = self._torch
        g.manual_seed(seed)
        top, left = torch.randint(0, span, (2,), generator=g).tolist()
        return top, left, self.recipe.hflip > 0 and torch.rand(1, generator=g).item() < self._hflip

    def _torch_after_crop_flip(self, seed: int) -> torch.Generator:
        """The sample's torch generator in the state the CPU path leaves it in after the crop and flip."""
        g = self._torch
        g.manual_seed(seed)
        torch.randint(0, 2 * self.recipe.padding + 1, (2,), generator=g)
        if self.recipe.hflip > 0:
            torch.rand(1, generator=g)
        return g

    def draw(self, seeds: Sequence[int]) -> AugmentPlan:
        """The plan of a batch whose samples have these seeds (one row each, in order)."""
        r = self.recipe
        n, layers, n_ops = len(seeds), r.num_layers, len(r.ops)
        crops, flips, boxes, noise = [], [], [], []
        ops = np.full((n, layers), -1, np.int64)
        args = np.zeros((n, layers), np.float64)
        affine = np.zeros((n, layers, 6), np.float64)
        py, nprs, bits = self._py, self._np, self._bits
        geometric = [op.name in _GEOMETRIC for op in r.ops]
        rules = [level_rule(op) for op in r.ops]
        for i, seed in enumerate(seeds):
            # The seeds PerSampleSeeded gives the global torch, random and numpy generators.
            py.seed(seed)
            nprs.seed(seed & 0xFFFFFFFF)
            raw = bits.random_raw(8).tolist()
            top, left, flip = self._crop_flip(seed, raw)
            crops.append((top, left))
            flips.append(flip)
            if layers:
                # timm RandAugment: np.random.choice over the ops, with replacement unless weighted
                chosen = _bounded(raw, n_ops, layers) if self._weights is None else None
                if chosen is None:
                    nprs.seed(seed & 0xFFFFFFFF)
                    chosen = (nprs.randint(0, n_ops, size=layers) if self._weights is None
                              else nprs.choice(n_ops, layers, replace=False, p=self._weights)).tolist()
                for layer, k in enumerate(chosen):
                    # timm AugmentOp.__call__: apply with probability prob, magnitude noise, clip to [0, max]
                    op = r.ops[k]
                    if op.prob < 1.0 and py.random() > op.prob:
                        continue
                    level = op.magnitude
                    if op.magnitude_std == _INF:
                        level = py.uniform(0, level)
                    elif op.magnitude_std > 0:
                        level = py.gauss(level, op.magnitude_std)
                    level = max(0.0, min(level, op.magnitude_max or _LEVEL_DENOM))
                    arg = rules[k](level, py)
                    ops[i, layer], args[i, layer] = k, arg
                    if geometric[k]:
                        affine[i, layer] = affine_matrix(op.name, arg, r.size)
            sample_boxes, sample_noise = self._erase(seed, py) if r.reprob > 0 else ([], [])
            boxes.append(sample_boxes)
            noise.append(sample_noise)
        return AugmentPlan(torch.tensor(crops, dtype=torch.int64).view(n, 2), torch.tensor(flips, dtype=torch.bool),
                           torch.from_numpy(ops), torch.from_numpy(args), torch.from_numpy(affine), boxes, noise)

    def _erase(self, seed: int, py: random.Random):
        """timm RandomErasing._erase's boxes and fill values for one image."""
        r = self.recipe
        if py.random() > r.reprob:
            return [], []
        g = self._torch_after_crop_flip(seed)
        size, chans = r.size, len(r.mean)
        lo, hi = r.erase_count
        count = lo if lo == hi else py.randint(lo, hi)
        boxes, noise = [], []
        for _ in range(count):
            for _attempt in range(10):
                target_area = py.uniform(*r.erase_area) * size * size / count
                aspect = math.exp(py.uniform(*r.erase_log_aspect))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < size and h < size:
                    top = py.randint(0, size - h)
                    left = py.randint(0, size - w)
                    if r.erase_mode == "pixel":
                        fill = torch.empty((chans, h, w)).normal_(generator=g)
                    elif r.erase_mode == "rand":
                        fill = torch.empty((chans, 1, 1)).normal_(generator=g).expand(chans, h, w)
                    else:
                        fill = torch.zeros((chans, h, w))
                    boxes.append((top, left, h, w))
                    noise.append(fill)
                    break
        return boxes, noise


# ------------------------------------------------------------------------------------ pixel operations
def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; CPU tensors reach a GPU through pinned memory, without blocking.

    A plain `.to('cuda')` from pageable memory synchronises the stream: the host would wait for all queued GPU
    work (the previous training step) before preparing the next batch.
    """
    if t.device == device or device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# Images are float32 (n, C, H, W) holding the integers 0..255, as Pillow's uint8 images do between ops.
# The ops come in four families, each run as one batched call over all images of a layer that drew one of its
# ops (fewer, larger tensor operations: at batch 64 the per-call cost dominates):
#   point ops, per-channel look-up tables: AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd;
#   blends with a degenerate image (ImageEnhance): Color, Contrast, Brightness, Sharpness;
#   shifts along one axis (bicubic, 4 taps): ShearX/Y, TranslateX/Y (the y ops on the transposed image);
#   Rotate (bicubic, 16 taps).
_POINT = ("AutoContrast", "Equalize", "Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal",
          "Solarize", "SolarizeIncreasing", "SolarizeAdd")
_BLEND = _ENHANCE + tuple(f"{name}Increasing" for name in _ENHANCE)
_SHIFT_Y = ("ShearY", "TranslateY", "TranslateYRel")
_FAMILIES = ("point", "blend", "shift", "rotate")


def _family(name: str) -> str:
    if name in _POINT:
        return "point"
    if name in _BLEND:
        return "blend"
    return "rotate" if name == "Rotate" else "shift"


def _base(name: str) -> str:
    """The op without timm's level variant (SolarizeIncreasing -> Solarize, ColorIncreasing -> Color)."""
    for suffix in ("Increasing", "Original"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _select(kind: torch.Tensor, choices: dict[int, torch.Tensor], default: torch.Tensor) -> torch.Tensor:
    """Per image (dim 0), the tensor of its kind."""
    out = default
    for k, value in choices.items():
        out = torch.where(kind.view(-1, *([1] * (value.dim() - 1))) == k, value, out)
    return out


# Point ops --------------------------------------------------------------------------------------------
def _histogram(levels: torch.Tensor) -> torch.Tensor:
    """(n, C, 256) int64 counts of each grey level, from the images' levels as (n, C, H * W) int64."""
    n, c, _ = levels.shape
    counts = torch.zeros(n * c, 256, dtype=torch.int64, device=levels.device)
    flat = levels.reshape(n * c, -1)
    counts.scatter_add_(1, flat, torch.ones(1, 1, dtype=torch.int64, device=levels.device).expand_as(flat))
    return counts.view(n, c, 256)


def _first_last(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest grey level present per (image, channel) (every channel has some pixel)."""
    present = (hist > 0).to(torch.uint8)
    return present.argmax(-1), 255 - present.flip(-1).argmax(-1)  # argmax: the first of the maxima


def _autocontrast_lut(hist: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0): each channel's range stretched to 0..255, int(i * scale + offset)."""
    lo, hi = _first_last(hist)
    flat = hi <= lo
    # A tensor numerator: `255.0 / tensor` runs as reciprocal-then-multiply, not Python's correctly rounded division
    scale = torch.full(lo.shape, 255.0, dtype=torch.float64, device=hist.device) / torch.where(flat, 1, hi - lo)
    offset = -lo.double() * scale
    lut = (levels.double() * scale[..., None] + offset[..., None]).trunc_().clamp_(0, 255)
    return torch.where(flat[..., None], levels.double(), lut).float()


def _equalize_lut(hist: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize: (step // 2 + pixels below level) // step, step = (pixels - last bin) // 255."""
    _, hi = _first_last(hist)
    last = torch.gather(hist, 2, hi.clamp(min=0)[..., None]).squeeze(-1)
    step = (hist.sum(-1) - last) // 255
    below = torch.cumsum(hist, -1) - hist
    lut = ((step // 2)[..., None] + below) // step.clamp(min=1)[..., None]
    identity = ((hist > 0).sum(-1) <= 1) | (step == 0)
    return torch.where(identity[..., None], levels, lut.clamp_(max=255)).float()


def _rows_by_kind(names: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    """{op without its level variant: indices (on `device`) of the images that run it}, in first-seen order."""
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows.setdefault(_base(name), []).append(i)
    return {kind: to_device(torch.tensor(r), device) for kind, r in rows.items()}


def point_ops(img: torch.Tensor, names: Sequence[str], args: torch.Tensor) -> torch.Tensor:
    """Apply point op names[i] (with argument args[i]: bits, threshold or addend) to image i."""
    n, c, h, w = img.shape
    index = img.reshape(n, c, h * w).long()
    levels = torch.arange(256, device=img.device)
    grid = levels.float().view(1, 1, 256)
    a = to_device(args, img.device).to(torch.float32).view(-1, 1, 1)
    lut = torch.empty(n, c, 256, device=img.device)
    # Each kind's tables are built for its own images only, then placed in their rows of `lut`.
    for kind, rows in _rows_by_kind(names, img.device).items():
        if kind in ("AutoContrast", "Equalize"):
            hist = _histogram(index.index_select(0, rows))
            table = _autocontrast_lut(hist, levels) if kind == "AutoContrast" else _equalize_lut(hist, levels)
        elif kind == "Invert":
            table = (255 - grid).expand(len(rows), c, 256)
        elif kind == "Posterize":  # keep the top `bits` bits; 0 bits is black, as repro.data.transforms maps it
            dropped = (8 - a.index_select(0, rows).clamp(0, 8)).long()
            table = (grid - torch.remainder(grid, torch.bitwise_left_shift(torch.ones_like(dropped), dropped)))
        elif kind == "Solarize":  # invert the levels at or above the threshold
            table = torch.where(grid < a.index_select(0, rows), grid, 255 - grid)
        else:  # timm's solarize_add: add (capped at 255) to the levels below 128
            table = torch.where(grid < 128, (grid + a.index_select(0, rows)).clamp_(max=255), grid)
        lut.index_copy_(0, rows, table.expand(len(rows), c, 256))
    return torch.gather(lut, 2, index).view(n, c, h, w)


# Blends -----------------------------------------------------------------------------------------------
def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Image.blend(degenerate, img, factor): float32 degenerate + factor * (img - degenerate), truncated."""
    alpha = factor.to(torch.float32).view(-1, 1, 1, 1)
    return (degenerate + alpha * (img - degenerate)).trunc_().clamp_(0, 255)


def _grey(img: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L: (19595 R + 38470 G + 7471 B + 32768) >> 16 (exact in float32), as (n, 1, H, W)."""
    r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def _smooth(img: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH (3x3, centre 5, scale 13; Pillow adds 0.5 and truncates; border pixels kept)."""
    h, w = img.shape[-2:]
    total = sum(img[..., dy:h - 2 + dy, dx:w - 2 + dx] for dy in range(3) for dx in range(3))
    out = img.clone()
    out[..., 1:-1, 1:-1] = torch.floor((total + 4 * img[..., 1:-1, 1:-1] + 6.5) / 13)
    return out


def blend_ops(img: torch.Tensor, names: Sequence[str], factors: torch.Tensor) -> torch.Tensor:
    """ImageEnhance op names[i] with factors[i] on image i: Color, Contrast, Brightness or Sharpness."""
    degenerate = torch.empty_like(img)
    for kind, rows in _rows_by_kind(names, img.device).items():
        part = img.index_select(0, rows)
        if kind == "Color":  # the grey image
            part = _grey(part).expand_as(part)
        elif kind == "Contrast":  # the mean grey level, rounded (ImageStat mean + 0.5, truncated)
            grey = _grey(part)
            mean = grey.double().sum((1, 2, 3)) / (grey.shape[-1] * grey.shape[-2])
            part = torch.floor(mean + 0.5).to(img.dtype).view(-1, 1, 1, 1).expand_as(part)
        elif kind == "Sharpness":
            part = _smooth(part)
        else:  # Brightness: black
            part = torch.zeros_like(part)
        degenerate.index_copy_(0, rows, part)
    return _blend(degenerate, img, to_device(factors, img.device))


# Geometric ops -----------------------------------------------------------------------------------------
def _cubic(v1, v2, v3, v4, d):
    """Pillow's BICUBIC macro (a = -1) with Pillow's float64 rounding.

    The taps are integers, so the polynomial coefficients p2 = v3 - v1, p3 = 2 (v1 - v2) + v3 - v4 and
    p4 = -(v1 - v2) - (v3 - v4) are exact in any order; the Horner steps in d are Pillow's, term for term.
    """
    a, b = v1 - v2, v3 - v4
    t = torch.add(b, a, alpha=2).sub_(a.add_(b).mul_(d))  # p3 + d * p4 = p3 - d * (a + b)
    return t.mul_(d).add_(v3 - v1).mul_(d).add_(v2)  # v2 + d * (p2 + d * t)


def affine(img: torch.Tensor, matrix: torch.Tensor, fill: Sequence[int], axes: str = "xy") -> torch.Tensor:
    """Image.transform(AFFINE, matrix, BICUBIC, fillcolor=fill) per image; matrix (n, 6) maps output to source.

    `axes="x"` is for matrices that move points along x only (shears and translations in x): each source row
    is then the output row, on a pixel centre, where Pillow's cubic weights are (0, 1, 0, 0), so four taps
    give the same result as sixteen.
    """
    n, c, h, w = img.shape
    m = to_device(matrix, img.device).to(torch.float64).view(n, 6, 1, 1)
    ys = (torch.arange(h, device=img.device, dtype=torch.float64) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, device=img.device, dtype=torch.float64) + 0.5).view(1, 1, w)
    xin = m[:, 0] * xs + m[:, 1] * ys + m[:, 2]  # Pillow's order of operations
    inside = (xin >= 0) & (xin < w)
    x0 = torch.floor(xin.sub_(0.5))
    dx = (xin - x0).unsqueeze(1)
    cols = (x0.long().unsqueeze(1) + torch.arange(-1, 3, device=img.device).view(1, 4, 1, 1)).clamp_(0, w - 1)
    if axes == "x":  # the source rows are the output rows (yin = y + 0.5 lies inside, on a pixel centre)
        rows = (torch.arange(h, device=img.device) * w).view(1, 1, h, 1)
    else:
        yin = m[:, 3] * xs + m[:, 4] * ys + m[:, 5]
        inside &= (yin >= 0) & (yin < h)
        y0 = torch.floor(yin.sub_(0.5))
        dy = (yin - y0).unsqueeze(1)
        rows = (y0.long().unsqueeze(1) + torch.arange(-1, 3, device=img.device).view(1, 4, 1, 1)).clamp_(0, h - 1)
        rows = rows.mul_(w)
    # All taps in one gather: index (n, source rows, source columns, H, W), clamped to the edge.
    ky = rows.shape[1]
    index = (rows.unsqueeze(2) + cols.unsqueeze(1)).expand(n, ky, 4, h, w).reshape(n, 1, -1).expand(n, c, -1)
    taps = torch.gather(img.reshape(n, c, h * w).double(), 2, index).view(n, c, ky, 4, h, w)
    v = _cubic(*taps.unbind(3), dx.unsqueeze(2))  # along x, per source row
    v = _cubic(*v.unbind(2), dy) if ky == 4 else v[:, :, 0]  # then along y
    value = v.trunc_().clamp_(0, 255).to(img.dtype)
    fill_t = to_device(torch.tensor(fill, dtype=img.dtype).view(1, c, 1, 1), img.device)
    return torch.where(inside.unsqueeze(1), value, fill_t)


def shift_ops(img: torch.Tensor, names: Sequence[str], matrix: torch.Tensor, fill: Sequence[int]) -> torch.Tensor:
    """Shears and translations (names[i], Pillow matrix[i]) in one 4-tap pass.

    A y op on an image is the x op on its transpose (Pillow's transform treats both axes alike on square
    images), with the matrix's x and y roles swapped.
    """
    along_y = [name in _SHIFT_Y for name in names]
    k = along_y.index(True) if any(along_y) else len(names)
    if k == len(names):
        return affine(img, matrix, fill, "x")
    matrix = to_device(matrix, img.device)
    swapped = matrix[:, [4, 3, 5, 1, 0, 2]]
    if all(along_y[k:]):  # x ops first, then y ops (the order the loader groups them in)
        out = affine(torch.cat([img[:k], img[k:].transpose(2, 3)]), torch.cat([matrix[:k], swapped[k:]]), fill, "x")
        return torch.cat([out[:k], out[k:].transpose(2, 3)])
    flip = to_device(torch.tensor(along_y), img.device)
    out = affine(torch.where(flip.view(-1, 1, 1, 1), img.transpose(2, 3), img),
                 torch.where(flip.view(-1, 1), swapped, matrix), fill, "x")
    return torch.where(flip.view(-1, 1, 1, 1), out.transpose(2, 3), out)


def apply_op(name: str, img: torch.Tensor, arg: torch.Tensor, matrix: torch.Tensor | None,
             fill: Sequence[int]) -> torch.Tensor:
    """Apply RandAugment op `name` to every image of a batch: per-image arguments (n,), matrices (n, 6)."""
    return apply_family(_family(name), img, [name] * len(img), arg, matrix, fill)


def apply_family(family: str, img: torch.Tensor, names: Sequence[str], args: torch.Tensor,
                 matrix: torch.Tensor | None, fill: Sequence[int]) -> torch.Tensor:
    """Apply ops of one family (names[i] to image i) in one batched pass."""
    if family == "point":
        return point_ops(img, names, args)
    if family == "blend":
        return blend_ops(img, names, args)
    if family == "shift":
        return shift_ops(img, names, matrix, fill)
    return affine(img, matrix, fill, "xy")


# -------------------------------------------------------------------------------------- the pipeline
class DeviceAugment:
    """A recipe applied to uint8 batches on their device: crop + flip, RandAugment, normalise, erase."""

    def __init__(self, recipe: AugmentRecipe, device: torch.device | str = "cpu"):
        self.recipe = recipe
        self.device = torch.device(device)
        self.sampler = ParameterSampler(recipe)
        self.mean = torch.tensor(recipe.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(recipe.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # A tensor divisor: CUDA divides by a Python scalar as a multiply by its reciprocal (not ToTensor's
        # correctly rounded division), so this keeps CPU and GPU results equal.
        self.max_level = torch.full((1, 1, 1, 1), 255.0, device=self.device)

    def __call__(self, images: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
        """Augment `images` (n, C, H, W) uint8 on the device with `plan`; returns float32, normalised."""
        x = self._crop_flip(images, plan).float()
        x = self._rand_augment(x, plan)
        x = x.div(self.max_level).sub_(self.mean).div_(self.std)  # ToTensor, then Normalize, in the CPU path's order
        return self._erase(x, plan)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Copy a CPU tensor to the device without making the host wait for queued GPU work."""
        return to_device(t, self.device)

    def _crop_flip(self, images: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
        """RandomCrop(size, padding) from the zero-padded image, then the horizontal flip, as one gather."""
        n, c, h, w = images.shape
        size, pad = self.recipe.size, self.recipe.padding
        offsets = self.to_device(torch.cat([plan.crop, plan.flip.long()[:, None]], 1))
        span = torch.arange(size, device=self.device)
        rows = offsets[:, 0:1] + span - pad  # source rows, (n, size)
        cols = offsets[:, 1:2] + torch.where(offsets[:, 2:3].bool(), size - 1 - span, span) - pad
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        index = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
        out = torch.gather(images.reshape(n, c, h * w), 2, index.view(n, 1, -1).expand(n, c, -1))
        return out.view(n, c, size, size) * valid[:, None].to(images.dtype)

    def _rand_augment(self, x: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
        # Per layer, the images are grouped by op family on the CPU (so nothing waits on the device); each
        # family runs once on its group, written back in place. An image is in at most one group per layer.
        ops = self.recipe.ops
        family_of = [_FAMILIES.index(_family(op.name)) for op in ops] + [len(_FAMILIES)]  # last: skipped
        for layer in range(plan.ops.shape[1]):
            chosen = plan.ops[:, layer].tolist()
            groups = [[] for _ in range(len(_FAMILIES) + 1)]
            for i, k in enumerate(chosen):
                groups[family_of[k]].append(i)
            groups[_FAMILIES.index("shift")].sort(key=lambda i: ops[chosen[i]].name in _SHIFT_Y)  # x first, then y
            active = [i for group in groups[:-1] for i in group]
            if not active:
                continue
            active_t = torch.tensor(active)
            index = self.to_device(active_t)
            args = self.to_device(plan.args[active_t, layer])
            geometric = groups[_FAMILIES.index("shift")] or groups[_FAMILIES.index("rotate")]
            mats = self.to_device(plan.affine[active_t, layer]) if geometric else None
            start = 0
            for family, group in zip(_FAMILIES, groups):
                if group:
                    end = start + len(group)
                    part = index[start:end]
                    out = apply_family(family, x.index_select(0, part), [ops[chosen[i]].name for i in group],
                                       args[start:end], mats[start:end] if mats is not None else None,
                                       self.recipe.fill)
                    x.index_copy_(0, part, out)
                    start = end
        return x

    def _erase(self, x: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
        """RandomErasing: each box replaced by its fill values (drawn on the CPU, from the sample's seed)."""
        n, c, h, w = x.shape
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        slots = max((len(b) for b in plan.boxes), default=0)
        for slot in range(slots):  # in drawing order: a later box of an image overwrites an earlier one, as in timm
            rows = [i for i, b in enumerate(plan.boxes) if len(b) > slot]
            top, left, bh, bw = torch.tensor([plan.boxes[i][slot] for i in rows]).view(-1, 4, 1, 1).unbind(1)
            mask = ((ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)).unsqueeze(1).expand(-1, c, h, w)
            # Row-major order of the mask is each box's (C, h, w) order, so the values scatter into place.
            fill = torch.zeros(len(rows), c, h, w).masked_scatter_(
                mask, torch.cat([plan.noise[i][slot].reshape(-1) for i in rows]))
            index, fill, mask = self.to_device(torch.tensor(rows)), self.to_device(fill), self.to_device(mask)
            x.index_copy_(0, index, torch.where(mask, fill, x.index_select(0, index)))
        return x


# ----------------------------------------------------------------------------------------- the loader
def in_memory_arrays(dataset: Any) -> tuple[np.ndarray, list[int]]:
    """The uint8 (N, H, W, 3) images and targets of a training view built by build_data, without PIL."""
    base, indices = getattr(dataset, "base", None), getattr(dataset, "indices", None)
    if base is None or indices is None:
        raise ReproError(f"the device path reads a TransformedSubset of an in-memory dataset (build_data's "
                         f"train split); found {type(dataset).__name__}")
    array = getattr(base, "images", None)  # ArrayImageDataset (digits)
    if array is None:
        array = getattr(base, "data", None)  # torchvision's CIFAR10/100
    if not (isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 4 and array.shape[-1] == 3):
        raise ReproError(f"the device path needs the images as a uint8 (N, H, W, 3) array; "
                         f"{type(base).__name__} holds {type(array).__name__} "
                         f"{getattr(array, 'shape', '')} {getattr(array, 'dtype', '')}; set data.augment_on=cpu")
    return array[np.asarray(indices, dtype=np.int64)], list(dataset.targets)


class DeviceLoader:
    """Iterable of (images, targets) batches augmented on the device, in the order `sampler` yields.

    Like the DataLoader of `build_loader`: each iteration reads the sampler's current epoch and start, so
    `sampler.set_epoch(e); sampler.set_start(k); for batch in loader` resumes mid-epoch. Batches are augmented
    `pass_size` images at a time (whole batches, at least one): fewer, larger tensor operations; a sample's
    augmentation depends only on its seed, so the grouping changes nothing in the output.
    """

    def __init__(self, images: np.ndarray, targets: Sequence[int], *, sampler, batch_size: int,
                 augment: DeviceAugment, drop_last: bool = True, pass_size: int = 512):
        if batch_size < 1:
            raise ReproError(f"batch size must be at least 1, found {batch_size}")
        device = augment.device
        # Once, and once only: the uint8 training set, NCHW, on the device (CIFAR-100: ~150 MB).
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        self.targets = torch.as_tensor(list(targets), dtype=torch.int64).to(device)
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.augment = augment
        self.drop_last = drop_last
        self.batches_per_pass = max(1, int(pass_size) // self.batch_size)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        keys = list(iter(self.sampler))
        stop = len(keys) - len(keys) % self.batch_size if self.drop_last else len(keys)
        step = self.batch_size * self.batches_per_pass
        for start in range(0, stop, step):
            part = keys[start:min(start + step, stop)]
            index = self.augment.to_device(torch.tensor([k[0] for k in part], dtype=torch.int64))
            images = self.augment(self.images.index_select(0, index), self.augment.sampler.draw([k[1] for k in part]))
            targets = self.targets.index_select(0, index)
            for b in range(0, len(part), self.batch_size):
                yield images[b:b + self.batch_size], targets[b:b + self.batch_size]


def build_device_loader(dataset: Any, *, batch_size: int, sampler, device: torch.device | str, seed: int,
                        img_size: int, randaugment: str | None, reprob: float, hflip: float,
                        mean: Sequence[float], std: Sequence[float], drop_last: bool = True,
                        pass_size: int = 512) -> DeviceLoader:
    """A drop-in for `build_loader(...)` on the training set that augments batches on `device`.

    `sampler` must yield (index, sample_seed) pairs (ResumableSampler); `seed` is the run seed those sample
    seeds derive from. The augmentation is the CPU transform `train_transform(img_size, ...)` would apply.
    """
    from .transforms import train_transform

    if getattr(sampler, "seed", seed) != seed:
        raise ReproError(f"the sampler was built with seed {sampler.seed} but the loader with seed {seed}; "
                         "pass the run seed to both")
    images, targets = in_memory_arrays(dataset)
    native = images.shape[1]
    if img_size != native or images.shape[2] != native:
        raise ReproError(f"the device path augments at the stored size ({native}x{images.shape[2]}); "
                         f"data.img_size={img_size} needs the CPU path (set data.augment_on=cpu)")
    tf = train_transform(img_size, mean=mean, std=std, randaugment=randaugment, reprob=reprob, hflip=hflip,
                         native_size=native)
    augment = DeviceAugment(compile_transform(tf, img_size), device)
    return DeviceLoader(images, targets, sampler=sampler, batch_size=batch_size, augment=augment,
                        drop_last=drop_last, pass_size=pass_size)
