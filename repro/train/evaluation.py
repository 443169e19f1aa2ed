"""`repro eval`: top-1/top-5/loss of a run folder, a checkpoint of this package or a released checkpoint."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from ..config import RunConfig, parse_override, set_value
from ..device import resolve_device, resolve_precision
from ..distill.teacher import final_is_ema, misfit_text, pick_weights, read_run_summary, weights_misfit
from ..errors import ReproError
from .checkpoint import list_checkpoints, load_checkpoint, run_of
from .distributed import DistInfo
from .evaluate import eval_loader, evaluate_model

log = logging.getLogger("repro.train")


def _read_weights(path: Path) -> tuple[dict, dict | None]:
    """(state_dict, config dict or None) from a run folder or a checkpoint/weight file."""
    if path.is_dir():
        ckpts = list_checkpoints(path / "checkpoints")
        if not ckpts:
            raise ReproError(f"{path} has no checkpoints/ckpt-*.pt; pass a run folder that has trained, "
                             "or a checkpoint file")
        for ckpt_path in ckpts:
            state = load_checkpoint(ckpt_path)
            if state is not None:
                return state, state.get("config")
        raise ReproError(f"every checkpoint in {path / 'checkpoints'} is corrupt or truncated")
    if not path.is_file():
        raise ReproError(f"checkpoint not found: {path}; pass a run folder or a checkpoint file")
    state = load_checkpoint(path)
    if state is None:
        raise ReproError(f"{path} could not be read as a checkpoint (corrupt, truncated or not a torch file)")
    return state, state.get("config") if isinstance(state, dict) else None


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
    "data.img_size=224"]. `deploy` evaluates the re-parameterized form. split='robustness' scores every
    ImageNet-A/-R/-Sketch style folder under data.robustness_root on the 1000-class head (returns 'sets').
    """
    from ..data import build_data
    from ..models import create_model, reparameterize

    path = Path(checkpoint_or_run_dir)
    state, saved = _read_weights(path)
    run_dir, last = run_of(path)
    if run_dir is not None:
        _warn_if_unfinished(run_dir)
    if use_ema is None:  # the run's final model; an earlier checkpoint (or a foreign file) is scored raw
        use_ema = last and final_is_ema(run_dir)
    cfg = RunConfig.from_dict(saved) if saved else RunConfig()
    if model_name:
        cfg.model.name = model_name
    elif not saved:
        raise ReproError(f"{path} does not record its architecture; pass --model NAME (see `repro models`)")
    if not saved:
        cfg.data.val_fraction = 0.0
    for text in data_overrides:
        set_value(cfg, *parse_override(text))
    if split not in ("val", "test", "robustness"):
        raise ReproError(f"split expects val, test or robustness, found '{split}'")
    weights = {k.removeprefix("module."): v for k, v in _weights_to_evaluate(state, saved, path, use_ema).items()}
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
    kwargs = dict(cfg.model.kwargs)
    try:
        model = create_model(cfg.model.name, num_classes=num_classes, img_size=cfg.data.img_size, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        # model.kwargs recorded for another architecture (--model changed) do not build this one.
        raise ReproError(_misfit_message(path, saved, cfg, num_classes, f"{type(exc).__name__}: {exc}")) from None
    misfit = weights_misfit(model, weights, num_classes)
    if misfit is not None:
        raise ReproError(_misfit_message(path, saved, cfg, num_classes, misfit_text(misfit),
                                         file_classes=misfit["file_classes"]))
    model.load_state_dict(weights, strict=True)
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


def _weights_to_evaluate(state, saved: dict | None, path: Path, use_ema: bool) -> dict:
    """The raw or EMA state dict of a checkpoint; a run trained without EMA says so."""
    if use_ema and saved and isinstance(state, dict) and state.get("model_ema") is None \
            and not (saved.get("train") or {}).get("ema_decay"):
        raise ReproError(f"{path} has no EMA weights: the run was trained with train.ema_decay=0; evaluate "
                         "without --ema")
    weights, _ = pick_weights(state, path, use_ema, without_ema="evaluate without --ema")
    return weights


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
