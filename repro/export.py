"""`repro export`: a run's weights as one file that other code loads (this package, timm, the released SLaK code).

The file holds the weights of one model, chosen from a run folder or a checkpoint of this package: the run's
final model (`final`, raw or EMA as its summary.json says), its best evaluation (`best`, kept by the engine as
weights-best.pt), or the raw / EMA weights of a checkpoint. Two formats:

- `pt`: `{'model': state_dict, 'export': record}`, the layout of the checkpoints released with SLaK
  (VITA-Group/SLaK, `checkpoint['model']`) and one that `timm.models.load_state_dict` reads;
- `safetensors`: the tensors, with the record as JSON in the header's metadata.

Both load with `repro.models.create_model(name, pretrained_file=FILE, ...)` and, for architectures timm
defines itself, `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=FILE, ...))`.
With `deploy` the file holds the re-parameterised form (`repro.models.reparameterize`: BatchNorms folded into
their convs, kernel branches merged); its parameter names differ from the training form's, so it is loaded
into a re-parameterised model (`load_exported` does that). The record says which form the file holds.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .errors import ReproError

log = logging.getLogger("repro.export")

WEIGHTS = ("final", "best", "raw", "ema")
FORMATS = ("pt", "safetensors")
EXPORT_FORMAT = "repro-export-1"
# summary.json keys of the weights-only files the engine keeps in the run folder.
SUMMARY_KEYS = {"final": "weights_final", "best": "weights_best"}

__all__ = ["export_weights", "load_exported", "read_export_record", "WEIGHTS", "FORMATS"]


def _format_of(out: Path, fmt: str | None) -> str:
    """The file format: `fmt`, or the one the file name's suffix names (pt unless .safetensors)."""
    by_suffix = "safetensors" if out.suffix == ".safetensors" else "pt"
    if fmt is None:
        return by_suffix
    if fmt not in FORMATS:
        raise ReproError(f"--format expects {' or '.join(FORMATS)}, found '{fmt}'")
    if fmt == "safetensors" and out.suffix != ".safetensors" or fmt == "pt" and out.suffix == ".safetensors":
        # timm and this package pick the reader from the suffix: a mismatch would be unreadable there.
        raise ReproError(f"--format {fmt} does not match the file name {out.name}; name a safetensors file "
                         "*.safetensors and a pt file anything else (e.g. *.pt or *.pth)")
    return fmt


def _run_summary(run_dir: Path) -> dict:
    from .distill.teacher import read_run_summary
    return read_run_summary(run_dir) or {}


def _run_config(run_dir: Path | None) -> dict | None:
    """The resolved config saved with a run (config.yaml), None when there is none."""
    import yaml
    path = run_dir / "config.yaml" if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    config = yaml.safe_load(path.read_text())
    return config if isinstance(config, dict) else None


def _weights_file(run_dir: Path, which: str) -> dict | None:
    """The weights-only file the engine keeps for `which` ('final' or 'best'), as a picked-weights record;
    None when the run's summary.json names none."""
    entry = _run_summary(run_dir).get(SUMMARY_KEYS[which])
    if not isinstance(entry, dict) or not entry.get("file"):
        return None
    path = run_dir / entry["file"]
    if not path.is_file():
        raise ReproError(f"{run_dir}/summary.json names {entry['file']} as the run's {which} weights, but the file "
                         f"is missing (a copy of the run without it?); copy {entry['file']} back into {run_dir}, or "
                         "export --weights raw / ema from its checkpoints")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is a bad file for the user
        raise ReproError(f"{path} could not be read ({type(exc).__name__}: {exc}); it should be a torch file "
                         "{'model': state_dict} written by `repro train`") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ReproError(f"{path} should hold {{'model': state_dict}} as `repro train` writes it; found "
                         f"{type(state).__name__}")
    return {"state_dict": {k.removeprefix("module."): v for k, v in state["model"].items()},
            "config": _run_config(run_dir), "weights": entry.get("is") or "raw", "file": path,
            "split": entry.get("split"), "epoch": entry.get("epoch"), "selected": which, "run_dir": run_dir}


def _no_best(run_dir: Path | None, source: Path) -> ReproError:
    if run_dir is None:
        return ReproError(f"--weights best needs a run folder (or a checkpoint inside one); {source} is not part of "
                          "a run. Export --weights raw or ema from it instead")
    return ReproError(f"{run_dir} has no best weights: its summary.json has no 'weights_best' entry (the "
                      "weights-best.pt file the engine keeps from its best held-out evaluation). The run was trained "
                      "by a version of this package that kept only its newest checkpoints, or has not evaluated "
                      "yet. Export --weights final (the run's final model), or train the run again with this "
                      "version to keep its best weights")


def _pick(source: Path, which: str) -> dict:
    """The weights `which` names, from a run folder or a checkpoint file, and where they come from."""
    from .train.checkpoint import run_of
    from .train.evaluation import pick_run_weights

    if which not in WEIGHTS:
        raise ReproError(f"--weights expects one of {', '.join(WEIGHTS)}, found '{which}'")
    if not source.exists():
        raise ReproError(f"{source} does not exist; pass a run folder of this package or one of its checkpoint "
                         "files (checkpoints/ckpt-*.pt)")
    run_dir, last = run_of(source)
    if run_dir is None and source.is_file() and (source.parent / "summary.json").is_file():
        # A weights-only file the engine keeps in the run folder (weights-final.pt, weights-best.pt) is
        # exported as the weights it holds, whatever --weights says.
        for kept in SUMMARY_KEYS:
            entry = _run_summary(source.parent).get(SUMMARY_KEYS[kept])
            if isinstance(entry, dict) and entry.get("file") == source.name:
                return _weights_file(source.parent, kept)
    if which == "best" or (which == "final" and last):
        kept = _weights_file(run_dir, which) if run_dir is not None else None
        if kept is not None:
            return kept
        if which == "best":
            raise _no_best(run_dir, source)
    use_ema = {"final": None, "raw": False, "ema": True}[which]
    picked = pick_run_weights(source, use_ema, without_ema="export --weights raw")
    return {"state_dict": picked.state_dict, "config": picked.config, "weights": picked.weights,
            "file": picked.file, "split": None, "epoch": None,
            # An earlier checkpoint is not the run's final model: it is exported raw, as `repro eval` scores it.
            "selected": which if which != "final" or last else "raw", "run_dir": run_dir}


def _build(config: dict, state: dict, source: Path) -> tuple[nn.Module, int]:
    """The run's architecture with `state` loaded strictly (eval mode), and its class count."""
    from .config import RunConfig
    from .distill.teacher import misfit_text, weights_misfit
    from .models import create_model

    cfg = RunConfig.from_dict(config)
    kwargs = _model_kwargs(cfg)
    num_classes = cfg.model.num_classes or 1000
    model = create_model(cfg.model.name, num_classes=num_classes, img_size=cfg.data.img_size, **kwargs)
    misfit = weights_misfit(model, state, num_classes)
    if misfit is not None and misfit["file_classes"] and misfit["file_classes"] != num_classes \
            and not cfg.model.num_classes:
        # A config without the class count: the head of the weights tells it.
        num_classes = misfit["file_classes"]
        model = create_model(cfg.model.name, num_classes=num_classes, img_size=cfg.data.img_size, **kwargs)
        misfit = weights_misfit(model, state, num_classes)
    if misfit is not None:
        raise ReproError(f"the weights in {source} do not fit the model its config records ({cfg.model.name}, "
                         f"{num_classes} classes): {misfit_text(misfit)}; export from the run's own checkpoints")
    model.load_state_dict(state, strict=True)
    return model.eval(), num_classes


def _model_kwargs(cfg) -> dict:
    # The weights come from the export itself, never from the file the run started from.
    return {k: v for k, v in dict(cfg.model.kwargs).items() if k not in ("pretrained_file", "num_classes")}


def _record(cfg_dict: dict, num_classes: int, picked: dict, form: str) -> dict:
    from .config import RunConfig
    from .data.transforms import dataset_mean_std

    cfg = RunConfig.from_dict(cfg_dict)
    mean, std = dataset_mean_std(cfg.data.name)
    run_dir = picked["run_dir"]
    summary = _run_summary(run_dir) if run_dir is not None else {}
    # The accuracy the run reported for these weights, and the split it was measured on.
    epoch, split, top1 = picked.get("epoch"), picked.get("split"), None
    if picked["selected"] == "best":
        top1 = summary.get("best_top1")
    elif picked["selected"] == "final" and summary.get("status") == "complete":
        # The final model's reported number is its test-split score, when the run has one.
        epoch = summary.get("epochs_done") if epoch is None else epoch
        split = None
        if summary.get("test_top1") is not None:
            split, top1 = "test", summary.get("test_top1")
    return {
        "format": EXPORT_FORMAT, "model": cfg.model.name, "num_classes": int(num_classes),
        "img_size": cfg.data.img_size, "model_kwargs": _model_kwargs(cfg), "dataset": cfg.data.name,
        "mean": list(mean), "std": list(std), "selected": picked["selected"], "weights": picked["weights"],
        "form": form, "source": str(picked["file"]), "run": str(run_dir) if run_dir is not None else None,
        "run_status": summary.get("status"), "split": split, "epoch": epoch, "top1": top1,
        "repro_version": __version__,
    }


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies that share no storage, as safetensors requires.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _encode(tensors: dict[str, torch.Tensor], record: dict, fmt: str) -> bytes:
    if fmt == "safetensors":
        from safetensors.torch import save
        return save(tensors, metadata={"format": "pt", "repro_export": json.dumps(record, sort_keys=True)})
    buf = io.BytesIO()
    torch.save({"model": tensors, "export": record}, buf)
    return buf.getvalue()


def export_weights(source: str | Path, out: str | Path, *, weights: str = "final", deploy: bool = False,
                   fmt: str | None = None) -> dict[str, Any]:
    """Write one model's weights from a run folder or checkpoint to `out`; returns the file's record.

    weights: final (the run's final model: raw or EMA as summary.json says), best (the best held-out
    evaluation's weights-best.pt), raw or ema (from the newest checkpoint, or the checkpoint given).
    deploy: write the re-parameterised form instead of the training form. fmt: pt or safetensors (default:
    from the suffix of `out`). The record (model, classes, image size, model kwargs, normalisation, which
    weights, form, source) is stored in the file too; see `read_export_record`.
    """
    from .models import reparameterize
    from .train.checkpoint import atomic_write_bytes
    from .train.evaluation import _warn_if_unfinished

    source, out = Path(source).expanduser(), Path(out).expanduser()
    fmt = _format_of(out, fmt)
    picked = _pick(source, weights)
    if picked["run_dir"] is not None:
        _warn_if_unfinished(picked["run_dir"])
    if not picked["config"]:
        raise ReproError(f"{source} records no config, so the architecture of its weights is unknown; export from "
                         "a run folder of this package or a checkpoint it wrote (checkpoints/ckpt-*.pt)")
    model, num_classes = _build(picked["config"], picked["state_dict"], picked["file"])
    form = "training"
    if deploy:
        before = set(model.state_dict())
        reparameterize(model)
        # Architectures without a deploy form stay as they are; the record must not claim otherwise.
        form = "deploy" if set(model.state_dict()) != before else "training"
        if form == "training":
            log.warning("%s has no re-parameterised form; the file holds its training form", type(model).__name__)
    record = _record(picked["config"], num_classes, picked, form)
    tensors = _tensors(model)
    data = _encode(tensors, record, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    return {**record, "path": str(out), "file_format": fmt, "bytes": len(data), "tensors": len(tensors)}


def read_export_record(path: str | Path) -> dict[str, Any]:
    """The record stored in a file written by `export_weights` (model, classes, form, weights, ...)."""
    path = Path(path)
    if not path.is_file():
        raise ReproError(f"{path} does not exist; pass a file written by `repro export`")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get("repro_export")
            record = json.loads(text) if text else None
        else:
            record = torch.load(path, map_location="cpu", weights_only=True).get("export")
    except Exception as exc:  # noqa: BLE001 - any failure to read is a bad file for the user
        raise ReproError(f"{path} could not be read ({type(exc).__name__}: {exc}); pass a file written by "
                         "`repro export`") from None
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise ReproError(f"{path} holds no export record; it was not written by `repro export` (load a plain "
                         "weight file with repro.models.create_model(name, pretrained_file=...))")
    return record


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model a `repro export` file describes, with its weights loaded strictly, in eval mode.

    A deploy-form file is loaded into the re-parameterised model, a training-form file into the model as
    built by `repro.models.create_model`.
    """
    from .models import create_model, reparameterize

    path = Path(path)
    record = read_export_record(path)
    model = create_model(record["model"], num_classes=record["num_classes"], img_size=record["img_size"],
                         **record["model_kwargs"])
    if record["form"] == "deploy":
        reparameterize(model.eval())
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        model.load_state_dict(state, strict=True)
    else:
        from .models import load_pretrained_file
        load_pretrained_file(model, str(path))
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------- CLI

def _load_hint(record: dict, path: str) -> list[str]:
    """Lines telling how to load the file, from its record."""
    from .models.factory import SIZED_MODELS
    from .models.slak import SLAK_MODELS

    args = [repr(record["model"]), f"num_classes={record['num_classes']}", f"img_size={record['img_size']}"]
    args += [f"{k}={v!r}" for k, v in record["model_kwargs"].items()]
    if record["form"] == "deploy":
        return [f"load:  repro.export.load_exported({path!r})",
                f"   or: m = repro.models.create_model({', '.join(args)}).eval(); repro.models.reparameterize(m); "
                f"m.load_state_dict(state_dict)"]
    lines = [f"load:  repro.models.create_model({', '.join(args)}, pretrained_file={path!r})"]
    name = record["model"]
    if name not in SLAK_MODELS and name not in SIZED_MODELS:
        extra = "".join(f", {k}={v!r}" for k, v in record["model_kwargs"].items())
        lines.append(f"       timm.create_model({name!r}, pretrained=True, num_classes={record['num_classes']}"
                     f"{extra}, pretrained_cfg_overlay=dict(file={path!r}, num_classes={record['num_classes']}))")
    if name in SLAK_MODELS and record["file_format"] == "pt":
        lines.append("       the released SLaK code: model.load_state_dict(torch.load(FILE)['model'], strict=True)")
    return lines


def _cmd_export(args) -> int:
    res = export_weights(args.source, args.out, weights=args.weights, deploy=args.deploy, fmt=args.format)
    where = ", ".join(part for part in (
        f"epoch {res['epoch']}" if res.get("epoch") is not None else "",
        f"{res['split']} top-1 {res['top1']:.2f}" if res.get("top1") is not None else "") if part)
    print(f"wrote {res['path']} ({res['file_format']}, {res['bytes'] / 2**20:.1f} MiB, {res['tensors']} tensors)")
    chosen = {"final": "the run's final model", "best": "the run's best held-out evaluation"}.get(
        res["selected"], f"from {res['source']}")
    print(f"model: {res['model']}, {res['num_classes']} classes, {res['img_size']}x{res['img_size']} "
          f"({res['dataset']}); {res['weights']} weights, {chosen}" + (f" ({where})" if where else ""))
    from .models.slak import SLAK_MODELS
    slak = res["model"] in SLAK_MODELS
    if res["form"] == "deploy":
        form = "deploy (re-parameterised: BatchNorms folded into the convs, kernel branches merged)"
        if slak:
            # The released code merges square kernels only (lkb_reparam); strips keep names of their own here.
            form += "; the released SLaK code loads the training form (its merge knows square kernels only)"
    else:
        form = "training (the parameter names of the model as built and trained" + (
            ", the released SLaK layout {'model': state_dict}" if slak and res["file_format"] == "pt" else "") + ")"
    print(f"form:  {form}")
    print("\n".join(_load_hint(res, res["path"])))
    return 0


def register(subparsers) -> None:
    """Add `repro export` to the command line."""
    p = subparsers.add_parser(
        "export", help="write a run's weights as a file for this package, timm or the released SLaK code",
        description="Write one model's weights from a run folder or a checkpoint of this package: "
                    "{'model': state_dict} (pt, the layout of the released SLaK checkpoints) or safetensors, "
                    "loadable with repro.models.create_model(name, pretrained_file=FILE) and, for timm's own "
                    "architectures, timm.create_model(name, pretrained=True, "
                    "pretrained_cfg_overlay=dict(file=FILE)).")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run folder or one of its checkpoints/ckpt-*.pt")
    p.add_argument("--weights", choices=WEIGHTS, default="final",
                   help="final (default): the run's final model, raw or EMA as summary.json says; best: the "
                        "weights of its best held-out evaluation (weights-best.pt); raw or ema: from the "
                        "newest checkpoint (or the checkpoint given)")
    p.add_argument("--deploy", action="store_true",
                   help="write the re-parameterised (deploy) form: BatchNorms folded, kernel branches merged")
    p.add_argument("--format", choices=FORMATS, help="pt or safetensors (default: from the --out suffix)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (.pt/.pth or .safetensors)")
    p.set_defaults(func=_cmd_export)
