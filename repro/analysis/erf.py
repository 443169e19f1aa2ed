"""Effective receptive field (ERF): which input pixels move a model's last-stage feature at the centre.

The method of SLaK (Liu et al., "More ConvNets in the 2020s: Scaling up Kernels Beyond 51x51 using Sparsity",
ICLR 2023, after RepLKNet), which Huang et al. ("Are Large Kernels Better Teachers than Transformers for
ConvNets?", ICML 2023) use to show that students inherit a large-kernel teacher's ERF. Original code:
https://github.com/VITA-Group/SLaK, erf/visualize_erf.py (the map) and erf/analyze_erf.py (area ratios, heatmap).

Each image is resized (bicubic) to a square S x S input. The score is the sum over channels of relu(last-stage
feature map at its centre pixel); relu(d score / d input) summed over channels is the image's map; the maps are
averaged over images, skipping non-finite ones (`effective_receptive_field`). `area_ratios` takes
log10(map + 1) divided by its maximum and, for each threshold t, the smallest centred square of side 2i + 1
whose sum exceeds t of the total, reported as its share of the input area, (side / S)^2.

S is the released 1024 for models trained at 224 px and, for smaller training images, 5x their size
(`default_erf_size`); the images are the first of the split in dataset order, as the released loop takes them
(an image with a non-finite map is skipped and the next one taken).

Beyond the released scripts: S is a parameter (they hard-code 1024); every model of `repro.models` is measured
on its unpooled last-stage map (`logits_and_features`, which gives ViT tokens and Swin's NHWC maps as
(B, C, H, W)); weights are resolved as `repro eval` resolves them, so the released SLaK checkpoints load (the
released script builds SLaK with a stage-4 kernel of 7 instead of 13, which they do not fit); the square search
starts at side 1 (theirs starts at 3, so a one-pixel ERF would read as 3) and may grow to the whole map (theirs
stops one short of it and fails when a threshold is not reached before).
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import ReproError

__all__ = ["THRESHOLDS", "ERFResult", "accumulate_erf", "effective_receptive_field", "normalized_erf",
           "area_ratios", "square_sides", "default_erf_size", "plot_erf", "erf_heatmap", "run_erf"]

log = logging.getLogger("repro.analysis")

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
RELEASED_SIZE = 1024  # the released script's input size, for models trained at 224 px
SMALL_SCALE = 5  # below 224 px: this many times the training size (the integer closest to the released 1024/224)
ERF_JSON, ERF_MAP, ERF_PNG = "erf.json", "erf.npy", "erf.png"


@dataclass
class ERFResult:
    """The mean relu input-gradient map (H, W), float64 on the CPU, the images it averages and those skipped."""

    map: torch.Tensor
    images: int
    skipped: int


# ------------------------------------------------------------------------------------------ the score map

def _batches(images: torch.Tensor | Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    """(B, C, H, W) tensors from a tensor of images, or from an iterable of tensors or (tensor, label) pairs;
    single images are stacked `batch_size` at a time, batches pass as they come."""
    if torch.is_tensor(images):
        yield from (images.unsqueeze(0) if images.ndim == 3 else images).split(batch_size)
        return
    pending: list[torch.Tensor] = []
    for item in images:
        if isinstance(item, (tuple, list)):
            item = item[0]  # (image, label) from a dataset or a DataLoader
        if not torch.is_tensor(item):
            raise ReproError(f"ERF images must be tensors (C, H, W) or (B, C, H, W), or (tensor, label) pairs; "
                             f"found {type(item).__name__}. Give the dataset a ToTensor transform.")
        if item.ndim != 3:
            if pending:
                yield _stack(pending)
                pending = []
            yield item
            continue
        pending.append(item)
        if len(pending) == batch_size:
            yield _stack(pending)
            pending = []
    if pending:
        yield _stack(pending)


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    if len({tuple(t.shape) for t in images}) > 1:
        raise ReproError(f"ERF images must all have one size; found {sorted({tuple(t.shape) for t in images})}. "
                         "Resize them to one square size first.")
    return torch.stack(images)


@contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with its parameters frozen for the duration, then restored as it was.

    Only the input's gradient is needed; frozen parameters also keep custom autograd functions (SLaK's
    depthwise convolution) from computing weight gradients nobody reads.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _gradient_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, H, W): relu of the input gradient of the centre score, summed over channels, one map per image.

    The score sums over the batch, but in eval mode images do not interact, so each image's map is what a
    batch of one (the released loop) gives.
    """
    from ..models import logits_and_features

    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        _, fmap = logits_and_features(model, x)
        h, w = fmap.shape[-2:]
        score = torch.relu(fmap[:, :, h // 2, w // 2]).sum()
        (grad,) = torch.autograd.grad(score, x)
    return torch.relu(grad).sum(1)


def accumulate_erf(model: nn.Module, images: torch.Tensor | Iterable, *, count: int | None = None,
                   batch_size: int = 1, progress: bool = False) -> ERFResult:
    """Mean relu input-gradient map of `model` over `images`, skipping (and counting) images whose map is not
    finite; `count` stops after that many finite maps, as the released loop does (None: every image).

    `images`: a (N, C, H, W) tensor, or an iterable of (C, H, W) / (B, C, H, W) tensors or (tensor, label)
    pairs, already normalised for the model; they go to the device of the model's parameters.
    """
    if count is not None and count < 1:
        raise ReproError(f"the number of ERF images must be at least 1, found {count}")
    if batch_size < 1:
        raise ReproError(f"the ERF batch size must be at least 1, found {batch_size}")
    from tqdm import tqdm  # the text bar: notebooks without ipywidgets show it too

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total, used, skipped = None, 0, 0
    bar = tqdm(total=count, desc="ERF", unit="image", disable=not progress, dynamic_ncols=True)
    try:
        with _frozen_eval(model):
            for batch in _batches(images, batch_size):
                if count is not None and used >= count:
                    break
                if batch.ndim != 4:
                    raise ReproError(f"ERF images must be (C, H, W) or (B, C, H, W) tensors; found shape "
                                     f"{tuple(batch.shape)}")
                batch = batch.to(device) if batch.is_floating_point() else batch.to(device, torch.float32)
                for one in _gradient_maps(model, batch):
                    if count is not None and used >= count:
                        break
                    if not torch.isfinite(one).all():
                        skipped += 1
                        bar.set_postfix(skipped=skipped)
                        continue
                    if total is not None and one.shape != total.shape:
                        raise ReproError(f"ERF images must all have one size; found {tuple(one.shape)} after "
                                         f"{tuple(total.shape)}. Resize them to one square size first.")
                    total = one.double() if total is None else total + one.double()
                    used += 1
                    bar.update(1)
    finally:
        bar.close()
    if total is None:
        raise ReproError(f"no image gave a finite input gradient ({skipped} skipped as non-finite, none given "
                         "otherwise); check the weights for NaN/inf values and pass some images")
    return ERFResult(map=(total / used).cpu(), images=used, skipped=skipped)


def effective_receptive_field(model: nn.Module, images: torch.Tensor | Iterable, *, count: int | None = None,
                              batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """The averaged relu input-gradient map (H, W) of the last-stage centre score, before the log."""
    return accumulate_erf(model, images, count=count, batch_size=batch_size, progress=progress).map


# ------------------------------------------------------------------------------------------ area ratios

def normalized_erf(erf_map: torch.Tensor | np.ndarray) -> torch.Tensor:
    """log10(map + 1) divided by its maximum (float64): the released scaling, comparable across models."""
    data = torch.as_tensor(erf_map).detach().cpu().double()
    if data.ndim != 2:
        raise ReproError(f"an ERF map is (H, W); found shape {tuple(data.shape)}")
    if not torch.isfinite(data).all() or (data < 0).any():
        raise ReproError("an ERF map holds finite, non-negative contributions; this one has negative or "
                         "non-finite values (pass the map from effective_receptive_field, before any log)")
    data = torch.log10(data + 1)
    peak = data.max()
    if not peak > 0:
        raise ReproError("the ERF map is zero everywhere: the centre score does not depend on the input (every "
                         "centre feature was negative for these images); use other images or weights")
    return data / peak


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    values = [float(t) for t in thresholds]
    bad = [t for t in values if not 0 <= t < 1]
    if bad or not values:
        raise ReproError(f"ERF thresholds are fractions of the total contribution in [0, 1); found "
                         f"{list(thresholds)}. The released ones are {list(THRESHOLDS)}.")
    return values


def _squares(erf_map, thresholds: Sequence[float]) -> dict[float, tuple[int, float]]:
    """{t: (side, area ratio)} of the smallest centred square whose share of the normalised map exceeds t."""
    data = normalized_erf(erf_map).numpy()
    h, w = data.shape
    ch, cw = h // 2, w // 2  # the centre the released code uses, for the feature map and the input alike
    total = data.sum()
    pending = sorted(set(_check_thresholds(thresholds)))
    found: dict[float, tuple[int, float]] = {}
    # Sides 1, 3, 5, ... until the square covers the whole map (clipped at its border), whose share is 1 > t.
    for i in range(max(ch, h - 1 - ch, cw, w - 1 - cw) + 1):
        r0, r1, c0, c1 = max(ch - i, 0), min(ch + i + 1, h), max(cw - i, 0), min(cw + i + 1, w)
        share = data[r0:r1, c0:c1].sum() / total
        while pending and share > pending[0]:
            # (side / S)^2 for a square S x S map: the released ratio with its 1024 replaced by S.
            found[pending.pop(0)] = (max(r1 - r0, c1 - c0), (r1 - r0) * (c1 - c0) / (h * w))
        if not pending:
            break
    return found


def area_ratios(erf_map: torch.Tensor | np.ndarray,
                thresholds: Sequence[float] = THRESHOLDS) -> dict[float, float]:
    """{threshold: area ratio}: the share of the input covered by the smallest centred square holding more
    than `threshold` of log10(map + 1) / max (the released "high-contribution area ratio")."""
    squares = _squares(erf_map, thresholds)
    return {float(t): squares[float(t)][1] for t in thresholds}


def square_sides(erf_map: torch.Tensor | np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[float, int]:
    """{threshold: side in pixels} of the squares behind `area_ratios`."""
    squares = _squares(erf_map, thresholds)
    return {float(t): squares[float(t)][0] for t in thresholds}


# --------------------------------------------------------------------------------------------- heatmaps

def _colormap():
    # The released heatmap is seaborn's coolwarm centred at 0 over values in [0, 1]: the upper half of coolwarm.
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["coolwarm"](np.linspace(0.5, 1.0, 256)), name="coolwarm_upper")


def plot_erf(ax, erf_map: torch.Tensor | np.ndarray, title: str | None = None):
    """Draw log10(map + 1) / max on a matplotlib Axes, coloured as the released heatmap; returns the image."""
    image = ax.imshow(normalized_erf(erf_map).numpy(), cmap=_colormap(), vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return image


def erf_heatmap(erf_map: torch.Tensor | np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """Write the heatmap of one ERF map as a PNG (no pyplot state touched); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    ax = fig.subplots()
    image = plot_erf(ax, erf_map, title)
    fig.colorbar(image, ax=ax, shrink=0.85, label="log10(x + 1) / max")
    FigureCanvasAgg(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no metadata: same map, same file
    return path


# ----------------------------------------------------------------------------- runs, checkpoints, files

def default_erf_size(trained_size: int) -> int:
    """ERF input side: the released 1024 for models trained at 224 px or more, else 5x the training size.

    160 for 32x32 models: a stride-32 ConvNet then has a 5x5 last-stage map, whose centre pixel sits at the
    centre of the input, where the centred squares are measured (an even map, as 1024 gives, puts it half a
    stride off centre).
    """
    return RELEASED_SIZE if trained_size >= 224 else SMALL_SCALE * int(trained_size)


def _resolve_weights(source: Path, model_name: str | None, data_overrides: Iterable[str], use_ema: bool | None):
    """(picked weights, config) of a run folder, a checkpoint of this package or a released file, resolved as
    `repro eval` resolves them."""
    from ..config import RunConfig, parse_override, set_value
    from ..train.evaluation import _warn_if_unfinished, pick_run_weights

    picked = pick_run_weights(source, use_ema, without_ema="run the ERF without --weights ema")
    if picked.run_dir is not None:
        _warn_if_unfinished(picked.run_dir)
    cfg = RunConfig.from_dict(picked.config) if picked.config else RunConfig()
    if model_name:
        cfg.model.name = model_name
    elif not picked.config:
        raise ReproError(f"{source} does not record its architecture; pass --model NAME (see `repro models`)")
    if not picked.config:
        cfg.data.val_fraction = 0.0  # a released file's data has no held-out part: val is the test split
    for text in data_overrides:
        set_value(cfg, *parse_override(text))
    return picked, cfg


def _erf_images(cfg, split: str):
    """(the split's images in dataset order, as PIL images until `_erf_transform` is set on them; the class
    count of the data; the split's name as evaluated)."""
    from ..data import IMAGENET_NUM_CLASSES, build_data, imagenet_wnids, load_robustness_folder
    from ..data.datasets import TransformedSubset
    from ..train.evaluation import _val_only_imagenet

    if _val_only_imagenet(cfg, split):  # a released ImageNet model with val/ alone, as the released script reads
        folder = Path(cfg.data.root) / "val"
        return (load_robustness_folder(folder, wnids=imagenet_wnids(), label="ImageNet val folder"),
                IMAGENET_NUM_CLASSES, "test")
    data = build_data(cfg.data)
    view = data.val if split == "val" else data.test
    name = "test" if split == "val" and data.eval_split == "test" else split
    return TransformedSubset(view.base, view.indices, None), data.num_classes, name


def _erf_transform(dataset_name: str, size: int):
    """Bicubic resize to size x size (no crop), then the training normalisation, as the released script does."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    from ..data import dataset_mean_std

    mean, std = dataset_mean_std(dataset_name)
    return transforms.Compose([transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
                               transforms.ToTensor(), transforms.Normalize(mean, std)])


def _build_model(cfg, weights: dict, num_classes: int, source: Path, saved: dict | None) -> nn.Module:
    """The architecture of `cfg` with `weights` loaded strictly (foreign layouts mapped first, as teachers are)."""
    from ..distill.teacher import misfit_text, weights_misfit
    from ..models import adapt_state_dict, create_model
    from ..train.evaluation import _misfit_message

    try:
        model = create_model(cfg.model.name, num_classes=num_classes, img_size=cfg.data.img_size,
                             **dict(cfg.model.kwargs))
    except (TypeError, ValueError, KeyError) as exc:
        raise ReproError(_misfit_message(source, saved, cfg, num_classes, f"{type(exc).__name__}: {exc}")) from None
    if not saved:
        weights = adapt_state_dict(model, weights)
    misfit = weights_misfit(model, weights, num_classes)
    if misfit is not None:
        raise ReproError(_misfit_message(source, saved, cfg, num_classes, misfit_text(misfit),
                                         file_classes=misfit["file_classes"]))
    model.load_state_dict(weights, strict=True)
    return model


def _resizable(model: nn.Module, name: str) -> bool:
    """Whether the model takes inputs of another size than it was built for (ConvNets; timm ViT and Swin)."""
    from ..models.factory import SIZED_MODELS

    return name not in SIZED_MODELS or hasattr(model, "set_input_size")


def _erf_size(model: nn.Module, name: str, size: int | None, trained: int) -> tuple[int, str]:
    """(input side, why that side) for the ERF of `model`, trained at `trained` px."""
    if not _resizable(model, name):
        if size not in (None, trained):
            raise ReproError(f"{name} takes only the {trained} px inputs it was built for (its position "
                             f"embedding or attention windows are tied to them); pass --size {trained} or leave "
                             "--size out")
        return trained, f"the training size ({name} takes no other)"
    if size is not None:
        return int(size), "given"
    size = default_erf_size(trained)
    return size, ("the released 1024, for models trained at 224 px or more" if size == RELEASED_SIZE
                  else f"{SMALL_SCALE}x the training size of {trained} px")


def _at_input_size(model: nn.Module, name: str, trained: int, size: int) -> str | None:
    """Let a model built for one input size (timm ViT, Swin) take `size`; says how, None when nothing changed."""
    if size == trained or not hasattr(model, "set_input_size"):
        return None  # ConvNets take any size as they are
    try:
        model.set_input_size(img_size=(size, size))
    except (AssertionError, ValueError, RuntimeError, TypeError) as exc:
        raise ReproError(f"{name} trained at {trained} px cannot take a {size} px input ({type(exc).__name__}: "
                         f"{exc}); pass a --size that its patch and window sizes divide (e.g. "
                         f"{SMALL_SCALE * trained})") from None
    # timm resamples the position embeddings (ViT) and scales the windows with the patch grid (Swin).
    return f"timm set_input_size({size}) from {trained} px"


def _output_folder(source: Path, out_dir: str | Path | None) -> Path:
    """--out, else the run folder of which `source` is the last state; checked writable before any work."""
    from ..paths import ensure_writable_dir
    from ..train.checkpoint import run_of

    if out_dir is not None:
        return ensure_writable_dir(out_dir, "the ERF folder (--out)")
    run_dir, last = run_of(source)
    if run_dir is None or not last:
        what = (f"an earlier checkpoint of the run {run_dir}" if run_dir is not None
                else "not a run folder of this package, nor its newest checkpoint")
        raise ReproError(f"{source} is {what}, so erf.json has no run folder to go to; pass --out DIR")
    return ensure_writable_dir(run_dir, "the run folder")


def run_erf(source: str | Path, *, model_name: str | None = None, split: str = "test", images: int = 50,
            size: int | None = None, out_dir: str | Path | None = None, data_overrides: Iterable[str] = (),
            use_ema: bool | None = None, device: str | None = None, batch_size: int = 1,
            progress: bool = True) -> dict[str, Any]:
    """Measure the ERF of a run folder, a checkpoint of this package or a released checkpoint on the first
    `images` images of `split` (dataset order; non-finite ones are skipped and the next taken, as the released
    loop does), at a `size` x `size` input (default: `default_erf_size` of the training size).

    Writes erf.json, erf.npy (the mean map, before the log) and erf.png into `out_dir`, by default the run folder
    when `source` is a run's last state; returns the erf.json record with the written paths under 'files'.
    `use_ema`: None takes the run's final model (EMA or raw, as `repro eval` does), True EMA, False raw. A
    released file needs `model_name` and `data_overrides` naming its data, e.g. ["data.name=imagenet",
    "data.root=/data/imagenet", "data.img_size=224"].
    """
    from .. import __version__
    from ..device import resolve_device
    from ..report.labels import model_label
    from ..train.checkpoint import atomic_write_text, checkpoint_step

    source = Path(source)
    if split not in ("val", "test"):
        raise ReproError(f"the ERF split is val or test, found '{split}'")
    if images < 1:
        raise ReproError(f"--images must be at least 1, found {images}")
    if not source.exists():
        raise ReproError(f"{source} not found; pass a run folder, a checkpoint of this package or a released "
                         "weight file")
    if size is not None and size < 8:
        raise ReproError(f"the ERF input size must be at least 8 pixels, found {size}")
    out = _output_folder(source, out_dir)
    dev = resolve_device(device)
    picked, cfg = _resolve_weights(source, model_name, data_overrides, use_ema)
    dataset, num_classes, split_name = _erf_images(cfg, split)
    if len(dataset) < images:
        log.warning("the %s split of %s holds %d images, fewer than the %d asked for; using them all",
                    split_name, cfg.data.name, len(dataset), images)
    model = _build_model(cfg, picked.state_dict, num_classes, source, picked.config)
    size, rule = _erf_size(model, cfg.model.name, size, cfg.data.img_size)
    resized = _at_input_size(model, cfg.model.name, cfg.data.img_size, size)
    dataset.transform = _erf_transform(cfg.data.name, size)
    model.to(dev)
    log.info("ERF of %s (%s weights) on the first %d %s images of %s at %dx%d (%s)", cfg.model.name,
             picked.weights, images, split_name, cfg.data.name, size, size, rule)
    result = accumulate_erf(model, (dataset[i][0] for i in range(len(dataset))), count=images,
                            batch_size=batch_size, progress=progress)
    if result.skipped:
        log.warning("%d images gave a non-finite gradient map and were skipped", result.skipped)
    squares, step = _squares(result.map, THRESHOLDS), checkpoint_step(picked.file)
    record = {
        "model": cfg.model.name, "checkpoint": str(source), "file": str(picked.file), "weights": picked.weights,
        "step": step if step >= 0 else None,  # to tell an erf.json from weights the run has since replaced
        "dataset": cfg.data.name, "split": split_name, "trained_img_size": cfg.data.img_size,
        "size": size, "size_rule": rule, "input_resized": resized,
        "images": result.images, "skipped": result.skipped,
        "area_ratio": {str(t): squares[t][1] for t in THRESHOLDS},
        "side": {str(t): squares[t][0] for t in THRESHOLDS},
        "map": ERF_MAP, "heatmap": ERF_PNG, "device": str(dev), "version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / ERF_MAP, result.map.numpy().astype(np.float32))
    erf_heatmap(result.map, out / ERF_PNG,
                title=f"{model_label(cfg.model.name)}: ERF at {size}x{size}, {result.images} images")
    atomic_write_text(out / ERF_JSON, json.dumps(record, indent=2) + "\n")
    return {**record, "files": {"json": out / ERF_JSON, "map": out / ERF_MAP, "heatmap": out / ERF_PNG}}
