"""`repro eval`: top-1/top-5/loss of a run folder, a checkpoint of this package or a released checkpoint."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..config import RunConfig, parse_override, set_value
from ..device import resolve_device, resolve_precision
from ..distill.teacher import final_is_ema, misfit_text, pick_weights, read_run_summary, weights_misfit
from ..errors import ReproError
from .checkpoint import list_checkpoints, load_checkpoint, run_of
from .distributed import DistInfo
from .evaluate import eval_loader, evaluate_model

log = logging.getLogger("repro.train")


@dataclass
class PickedWeights:
    """Weights chosen from a run folder or a checkpoint file, with what is needed to rebuild their model."""

    state_dict: dict  # parameter name -> tensor, without a DistributedDataParallel "module." prefix
    config: dict | None  # the run's resolved config saved with the checkpoint (None for a foreign file)
    weights: str  # "raw" or "ema"
    file: Path  # the checkpoint file they were read from
    run_dir: Path | None  # the run folder, when the source belongs to one
    last: bool  # whether the file is that run's last state


def _read_weights(path: Path) -> tuple[dict, dict | None, Path]:
    """(state_dict, config dict or None, file read) from a run folder or a checkpoint/weight file."""
    if path.is_dir():
        ckpts = list_checkpoints(path / "checkpoints")
        if not ckpts:
            raise ReproError(f"{path} has no checkpoints/ckpt-*.pt; pass a run folder that has trained, "
                             "or a checkpoint file")
        for ckpt_path in ckpts:
            state = load_checkpoint(ckpt_path)
            if state is not None:
                return state, state.get("config"), ckpt_path
        raise ReproError(f"every checkpoint in {path / 'checkpoints'} is corrupt or truncated")
    if not path.is_file():
        raise ReproError(f"checkpoint not found: {path}; pass a run folder or a checkpoint file")
    state = load_checkpoint(path)
    if state is None:
        raise ReproError(f"{path} could not be read as a checkpoint (corrupt, truncated or not a torch file)")
    return state, state.get("config") if isinstance(state, dict) else None, path


def pick_run_weights(checkpoint_or_run_dir: str | Path, use_ema: bool | None = None, *,
                     without_ema: str = "evaluate without --ema") -> PickedWeights:
    """The raw or EMA weights of a run folder (its newest valid checkpoint) or of a checkpoint file.

    use_ema None picks the run's final model: for a run folder or its newest checkpoint, the weights its
    summary.json reports as final (`final_is`); for an earlier checkpoint or a foreign file, the raw weights.
    `without_ema` is the advice given when EMA weights are asked for but there are none.
    """
    path = Path(checkpoint_or_run_dir)
    state, saved, file = _read_weights(path)
    run_dir, last = run_of(path)
    if use_ema is None:  # the run's final model; an earlier checkpoint (or a foreign file) is taken raw
        use_ema = last and final_is_ema(run_dir)
    weights, key = _weights_to_evaluate(state, saved, path, use_ema, without_ema)
    # A file holding only EMA weights (how CSWin-T ships) is scored as what it holds, whatever was asked.
    which = "ema" if use_ema or (key is not None and "ema" in str(key)) else "raw"
    return PickedWeights(state_dict={k.removeprefix("module."): v for k, v in weights.items()}, config=saved,
                         weights=which, file=file, run_dir=run_dir, last=last)


# The config keys evaluation reads (besides model.kwargs.*); any other --set would be silently ignored.
EVAL_KEYS = ("data.name", "data.root", "data.img_size", "data.val_fraction", "data.num_workers", "data.download",
             "data.eval_batch_size", "data.robustness_root", "model.name")


def check_eval_overrides(overrides: Iterable[str]) -> None:
    """Refuse a `key=value` override that evaluation does not use (or an unknown key or a wrong type)."""
    for text in overrides:
        key, value = parse_override(text)
        set_value(RunConfig(), key, value)  # an unknown key or a wrong type is refused here, with suggestions
        if key not in EVAL_KEYS and not key.startswith("model.kwargs"):
            raise ReproError(f"repro eval does not use {key} (--set {text}): evaluation reads only "
                             f"{', '.join(EVAL_KEYS)} and model.kwargs.*; drop it (the other keys shape "
                             "training, and the weights already hold its result)")


def resolve_eval_config(path: Path, picked: PickedWeights, model_name: str | None,
                        data_overrides: Iterable[str]) -> RunConfig:
    """The config that rebuilds the picked weights' model and data: the one saved with them (defaults for a
    released file, whose data has no held-out part), with `model_name` and the `key=value` overrides applied."""
    cfg = RunConfig.from_dict(picked.config) if picked.config else RunConfig()
    if model_name:
        cfg.model.name = model_name
    elif not picked.config:
        raise ReproError(f"{path} does not record its architecture; pass --model NAME (see `repro models`)")
    if not picked.config:
        cfg.data.val_fraction = 0.0
    for text in data_overrides:
        set_value(cfg, *parse_override(text))
    return cfg


def build_eval_model(cfg: RunConfig, picked: PickedWeights, num_classes: int, path: Path):
    """cfg's architecture with the picked weights loaded strictly (a released file's key layout mapped first, as
    for teachers); weights that do not fit are explained with what to pass instead."""
    from ..models import adapt_state_dict, create_model

    try:
        model = create_model(cfg.model.name, num_classes=num_classes, img_size=cfg.data.img_size,
                             **dict(cfg.model.kwargs))
    except (TypeError, ValueError, KeyError) as exc:
        # model.kwargs recorded for another architecture (--model changed) do not build this one.
        raise ReproError(_misfit_message(path, picked.config, cfg, num_classes,
                                         f"{type(exc).__name__}: {exc}")) from None
    weights = picked.state_dict if picked.config else adapt_state_dict(model, picked.state_dict)
    misfit = weights_misfit(model, weights, num_classes)
    if misfit is not None:
        raise ReproError(_misfit_message(path, picked.config, cfg, num_classes, misfit_text(misfit),
                                         file_classes=misfit["file_classes"]))
    model.load_state_dict(weights, strict=True)
    return model


def evaluate(checkpoint_or_run_dir: str | Path, *, model_name: str | None = None,
             data_overrides: Iterable[str] = (), device: str | None = None, split: str = "test",
             use_ema: bool | None = None, batch_size: int | None = None, precision: str = "auto",
             deploy: bool = False) -> dict:
    """Evaluate weights on a dataset split; returns {'top1', 'top5', 'loss', 'n', 'split', 'model', ...}.

    use_ema: True for the EMA weights, False for the raw ones, None (default) for the run's final model: for a
    run folder or its newest checkpoint, the weights its summary.json reports as final (`final_is`); for any
    other file, the raw weights. Weights of a run that is not complete are scored with a warning.

    The model and data come from the checkpoint's recorded config; a released checkpoint {'model': ...}
    needs `model_name` and `data_overrides` such as ["data.name=imagenet", "data.root=/data/imagenet",
    "data.img_size=224"] (a key outside EVAL_KEYS and model.kwargs.* is refused: evaluation would ignore it).
    `deploy` evaluates the re-parameterized form. split='robustness' scores every
    ImageNet-A/-R/-Sketch style folder under data.robustness_root on the 1000-class head (returns 'sets').
    """
    from ..data import build_data
    from ..models import reparameterize

    path = Path(checkpoint_or_run_dir)
    data_overrides = list(data_overrides)
    check_eval_overrides(data_overrides)  # before any weights are read
    picked = pick_run_weights(path, use_ema)
    if picked.run_dir is not None:
        _warn_if_unfinished(picked.run_dir)
    use_ema = picked.weights == "ema"
    cfg = resolve_eval_config(path, picked, model_name, data_overrides)
    if split not in ("val", "test", "robustness"):
        raise ReproError(f"split expects val, test or robustness, found '{split}'")
    if split == "robustness":  # ImageNet-A/-R/-Sketch folders scored on the 1000-class head
        from ..data import build_robustness_sets
        from ..data.folders import IMAGENET_NUM_CLASSES
        sets = build_robustness_sets(cfg.data)
        num_classes = IMAGENET_NUM_CLASSES
    elif _val_only_imagenet(cfg, split):
        # A released ImageNet checkpoint scored on val/ alone: no train/ folder needed (nor listed).
        from ..data.folders import IMAGENET_NUM_CLASSES, imagenet_wnids, load_robustness_folder
        from ..data.transforms import dataset_mean_std, eval_transform
        mean, std = dataset_mean_std("imagenet")
        val_only = load_robustness_folder(Path(cfg.data.root) / "val", wnids=imagenet_wnids(),
                                          transform=eval_transform(cfg.data.img_size, mean=mean, std=std),
                                          label="ImageNet val folder")
        num_classes = IMAGENET_NUM_CLASSES
        if len(val_only.classes) < IMAGENET_NUM_CLASSES:
            log.warning("%s holds %d of the %d ImageNet classes: top-1 is taken over those classes' head "
                           "columns only and is not comparable with a full ImageNet-val number.",
                           Path(cfg.data.root) / "val", len(val_only.classes), IMAGENET_NUM_CLASSES)
    else:
        data = build_data(cfg.data)
        num_classes = data.num_classes
    model = build_eval_model(cfg, picked, num_classes, path)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model.to(dev).eval()
    if deploy:
        reparameterize(model)
    bs = batch_size or cfg.data.eval_batch_size or 64

    def score(dataset) -> dict:
        loader = eval_loader(dataset, bs, cfg.data.num_workers, DistInfo(), dev.type)
        return evaluate_model(model, loader, dev, precision=prec,
                              class_index_map=getattr(dataset, "class_index_map", None))

    common = dict(model=cfg.model.name, weights="ema" if use_ema else "raw", checkpoint=str(path), deploy=deploy)
    if split == "robustness":
        return {"split": "robustness", "sets": {name: score(ds) for name, ds in sets.items()}, **common}
    if split == "test" and _val_only_imagenet(cfg, split):
        return {**score(val_only), "split": "test", "dataset": "imagenet", **common}
    res = score(data.val if split == "val" else data.test)
    res.update(split=split if not (split == "val" and data.eval_split == "test") else "test",
               dataset=cfg.data.name, **common)
    return res


def evaluate_robustness(checkpoint_or_run_dir: str | Path, *, model_name: str | None = None,
                        data_overrides: Iterable[str] = (), device: str | None = None, use_ema: bool | None = None,
                        batch_size: int | None = None, precision: str = "auto", deploy: bool = False,
                        corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None,
                        limit: int | None = None, seed: int = 0, corruption_source: str = "auto",
                        cache_dir: str | Path | None = None, frost_folder: str | Path | None = None,
                        progress: bool = False) -> dict:
    """Top-1/top-5 of weights on every robustness set found for their data (weights and data resolved as in
    `evaluate`); returns the raw scores that `repro.analysis.robustness` summarises.

    CIFAR-10/100 (and other 32x32 data such as digits): the corruption benchmark in the CIFAR-C layout, the
    published files when found for the test split (data.robustness_root, ./data, ~/data, Kaggle inputs), else
    generated from the test split with `seed` and cached in `cache_dir`; the clean test images are scored too.
    ImageNet: the ImageNet-A/-R/-Sketch style folders and the ImageNet-C tree under data.robustness_root.
    `corruptions`/`severities` choose a subset (default: all found, 1-5); `limit` caps the images per
    corruption and severity (the first test images for CIFAR, evenly spaced ones for ImageNet-C).
    """
    from ..data import IMAGENET_NUM_CLASSES, build_data, build_imagenet_c_sets, build_robustness_sets
    from ..data.cifar_c import corruption_benchmark, split_arrays
    from ..data.corruptions import SEVERITIES, check_names
    from ..data.datasets import TransformedSubset
    from ..models import reparameterize

    path = Path(checkpoint_or_run_dir)
    data_overrides = list(data_overrides)
    check_eval_overrides(data_overrides)
    severities = sorted(set(severities)) if severities is not None else list(SEVERITIES)
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ReproError(f"severities are 1-5, found {', '.join(map(str, bad))}")
    corruptions = check_names(corruptions) if corruptions is not None else None
    if limit is not None and limit < 1:
        raise ReproError(f"the image limit per corruption and severity must be at least 1, found {limit}")
    picked = pick_run_weights(path, use_ema)
    if picked.run_dir is not None:
        _warn_if_unfinished(picked.run_dir)
    cfg = resolve_eval_config(path, picked, model_name, data_overrides)
    named, corrupted, clean, benchmark = {}, {}, None, None
    if cfg.data.name == "imagenet":
        num_classes = IMAGENET_NUM_CLASSES
        if not cfg.data.robustness_root:
            raise ReproError("robustness of an ImageNet model needs its sets: pass --set data.robustness_root=FOLDER "
                             "(holding ImageNet-A/-R/-Sketch wnid folders and/or ImageNet-C's "
                             "<corruption>/<severity>/ folders)")
        named = build_robustness_sets(cfg.data, required=False)
        found = build_imagenet_c_sets(cfg.data, corruptions=corruptions, severities=severities)
        corrupted = {key: _spread_subset(ds, limit) for key, ds in found.items()}
        if not named and not corrupted:
            raise ReproError(f"data.robustness_root {cfg.data.robustness_root} holds no ImageNet-A/-R/-Sketch "
                             "style folder (wnid class folders) and no ImageNet-C tree "
                             "(<corruption>/<severity 1-5>/<wnid>/)" + (f" for {', '.join(corruptions)}"
                                                                        if corruptions else ""))
        if corrupted:
            benchmark = {"benchmark": "ImageNet-C", "source": "published", "folder": str(cfg.data.robustness_root),
                         "seed": None, "images_per_severity": limit, "unavailable": {}}
    elif cfg.data.name in ("cifar10", "cifar100", "digits"):
        data = build_data(cfg.data)
        num_classes = data.num_classes
        images, labels = split_arrays(data.test)
        bench = corruption_benchmark(cfg.data.name, images, labels, corruptions=corruptions, source=corruption_source,
                                     root=cfg.data.robustness_root, limit=limit, seed=seed, cache_dir=cache_dir,
                                     frost_folder=frost_folder, workers=max(1, cfg.data.num_workers),
                                     progress=progress)
        if not bench.corruptions:
            raise ReproError(f"none of the corruptions asked for is available in {bench.name} ({bench.folder}): "
                             + "; ".join(f"{c}: {why}" for c, why in bench.unavailable.items()))
        corrupted = {(c, s): bench.dataset(c, s, data.test.transform, data.classes, limit)
                     for c in bench.corruptions for s in severities}
        n = len(corrupted[bench.corruptions[0], severities[0]])
        clean = TransformedSubset(data.test.base, data.test.indices[:n], data.test.transform)
        benchmark = {**bench.describe(), "unavailable": bench.unavailable}
    else:
        raise ReproError(f"robustness evaluation covers CIFAR-10/100 and digits (corruptions of the test split) and "
                         f"ImageNet (A/-R/-Sketch and -C folders); data.name is '{cfg.data.name}'")
    model = build_eval_model(cfg, picked, num_classes, path)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model.to(dev).eval()
    if deploy:
        reparameterize(model)
    bs = batch_size or cfg.data.eval_batch_size or 64
    everything = list(named.values()) + list(corrupted.values()) + ([clean] if clean is not None else [])
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(-(-len(ds) // bs) for ds in everything), desc="robustness", unit="batch")

    def score(dataset) -> dict:
        loader = eval_loader(dataset, bs, cfg.data.num_workers, DistInfo(), dev.type)
        return evaluate_model(model, loader, dev, precision=prec, progress=bar,
                              class_index_map=getattr(dataset, "class_index_map", None))

    result = {"model": cfg.model.name, "weights": picked.weights, "checkpoint": str(path), "file": str(picked.file),
              "deploy": deploy, "dataset": cfg.data.name, "img_size": cfg.data.img_size,
              "sets": {name: score(ds) for name, ds in named.items()}, "corruption": None}
    if benchmark is not None:
        scores: dict[str, dict[str, dict]] = {}
        for (c, s), ds in corrupted.items():
            scores.setdefault(c, {})[str(s)] = score(ds)
        benchmark.update(severities=severities, limit=limit, scores=scores,
                         clean=score(clean) if clean is not None else None)
        result["corruption"] = benchmark
    if bar is not None:
        bar.close()
    return result


def _spread_subset(dataset, limit: int | None):
    """`limit` evenly spaced samples of a class-sorted folder dataset (every class represented), keeping its
    `class_index_map`; the dataset itself without a limit."""
    import numpy as np
    from torch.utils.data import Subset

    if limit is None or limit >= len(dataset):
        return dataset
    subset = Subset(dataset, np.unique(np.linspace(0, len(dataset) - 1, limit).round().astype(int)).tolist())
    subset.class_index_map = dataset.class_index_map
    return subset


def _weights_to_evaluate(state, saved: dict | None, path: Path, use_ema: bool, without_ema: str) -> tuple:
    """(the raw or EMA state dict of a checkpoint, the key it was found under); a run trained without EMA says
    so."""
    if use_ema and saved and isinstance(state, dict) and state.get("model_ema") is None \
            and not (saved.get("train") or {}).get("ema_decay"):
        raise ReproError(f"{path} has no EMA weights: the run was trained with train.ema_decay=0; "
                         f"{without_ema}")
    return pick_weights(state, path, use_ema, without_ema=without_ema)


def _misfit_message(path: Path, saved: dict | None, cfg: RunConfig, num_classes: int, details: str,
                    file_classes: int | None = None) -> str:
    """Why the weights do not fit the model asked for, and what to pass instead (from the run's record)."""
    recorded = (saved or {}).get("model") or {}
    name, classes = recorded.get("name"), recorded.get("num_classes") or file_classes
    dataset = ((saved or {}).get("data") or {}).get("name")
    asked = f"{cfg.model.name} with {num_classes} classes ({cfg.data.name})"
    fixes = []
    if name and name != cfg.model.name:
        fixes.append(f"pass --model {name} (or leave --model out)")
    if classes and int(classes) != num_classes:
        fixes.append(f"evaluate on a dataset with {classes} classes"
                     + (f" (--set data.name={dataset}, the one it was trained on)" if dataset else ""))
    if name:
        trained = name + (f" with {classes} classes" if classes else "") + (f" ({dataset})" if dataset else "")
        if fixes:
            return f"{path} was trained as {trained}, but {asked} was asked; {' and '.join(fixes)}"
        return (f"the weights in {path} do not fit {asked} although the checkpoint records that model ({details}); "
                "check the --set model.* overrides against the checkpoint's config")
    return (f"the weights in {path} do not fit {asked} ({details}); pass the --model the file was trained as "
            "(see `repro models`)" + (f" and a dataset with {file_classes} classes" if fixes else ""))


def _warn_if_unfinished(run_dir: Path) -> None:
    summary = read_run_summary(run_dir) or {}
    if summary.get("status") not in (None, "complete"):
        log.warning("%s is '%s' after %s of %s steps: these are intermediate weights, not the run's result.",
                    run_dir, summary.get("status"), summary.get("steps_done"), summary.get("steps_total"))


def _val_only_imagenet(cfg: RunConfig, split: str) -> bool:
    """ImageNet given as a folder with val/ class folders but no train/ (enough to evaluate)."""
    root = Path(cfg.data.root).expanduser() if cfg.data.root else None
    return (split == "test" and cfg.data.name == "imagenet" and root is not None
            and (root / "val").is_dir() and not (root / "train").is_dir())
