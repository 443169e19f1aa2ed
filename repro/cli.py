"""The `repro` command line: a thin layer over the library (train, eval, doctor, presets, and the
batch/report/quickstart/kaggle commands registered by their modules)."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from . import __version__
from .errors import ReproError

# Modules that add their own subcommands through register(subparsers).
_COMMAND_MODULES = ("repro.doctor", "repro.batch", "repro.report.cli", "repro.quickstart", "repro.kaggle.cli",
                    "repro.export", "repro.analysis.cli")


def _cmd_train(args) -> int:
    from .config import load_config
    from .train import train
    from .train.budget import StopSignal

    if args.cohort:
        return _cmd_train_cohort(args)
    if not args.preset and not args.config:
        raise ReproError("repro train needs --preset NAME, --config FILE or --cohort FILE (see `repro presets`)")
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    # From here a stop signal is a clean stop (start-up and data loading included); a second one aborts.
    with StopSignal() as signals:
        signals.phase = "start-up"
        cfg = load_config(args.preset, args.config, overrides)
        summary = train(cfg, args.out, max_steps=args.max_steps, time_budget=args.time_budget,
                        checkpoint_every=args.checkpoint_every, device=args.device,
                        resume_from=args.resume_from or (), force=args.force, progress=not args.no_progress)
    keys = ("status", "stop_reason", "steps_done", "steps_total", "epochs_done", "eval_split", "top1", "top5",
            "best_top1", "test_top1", "wall_time_s")
    if summary.get("env", {}).get("world_size", 1) == 1 or _rank() == 0:
        print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
        print(f"run folder: {args.out}")
    return 0


def _cmd_train_cohort(args) -> int:
    from .train.budget import StopSignal
    from .train.cohort import train_cohort

    if args.set or args.seed is not None or args.resume_from:
        raise ReproError("with --cohort, put overrides (and the seed) in the cohort file's shared overrides; "
                         "--set, --seed and --resume-from apply to single runs")
    with StopSignal() as signals:
        signals.phase = "start-up"
        results = train_cohort(args.cohort, args.out, max_steps=args.max_steps, time_budget=args.time_budget,
                               checkpoint_every=args.checkpoint_every, device=args.device, force=args.force,
                               progress=not args.no_progress)
    keys = ("status", "stop_reason", "steps_done", "steps_total", "top1", "test_top1")
    print(json.dumps({name: {k: s.get(k) for k in keys} for name, s in results.items()}, indent=2))
    print(f"cohort folder: {args.out} (members: {', '.join(results)})")
    return 0


def _rank() -> int:
    import os
    return int(os.environ.get("RANK", "0"))


def _cmd_eval(args) -> int:
    from .train import evaluate

    use_ema = {"final": None, "raw": False, "ema": True}[args.weights]
    if args.robustness:
        from .analysis.robustness import run_robustness
        from .data.corruptions import parse_corruptions, parse_severities

        record = run_robustness(
            args.checkpoint, baseline=args.baseline, out_dir=args.out, model_name=args.model,
            data_overrides=args.set or (), device=args.device, use_ema=use_ema, batch_size=args.batch_size,
            deploy=args.deploy, corruptions=parse_corruptions(args.corruptions),
            severities=parse_severities(args.severities), limit=args.limit, seed=args.corruption_seed,
            corruption_source=args.corruption_source, cache_dir=args.corruption_cache, frost_folder=args.frost_images,
            progress=not args.no_progress)
        print(json.dumps({k: v for k, v in record.items() if k != "corruption"}
                         | {"corruption": _corruption_digest(record.get("corruption"))}, indent=2))
        print(f"robustness.json: {record['file_written']}")
        return 0
    if args.baseline or args.out:
        raise ReproError("--baseline and --out belong to --robustness; add --robustness (or drop them)")
    res = evaluate(args.checkpoint, model_name=args.model, data_overrides=args.set or (), device=args.device,
                   split=args.split, use_ema=use_ema, batch_size=args.batch_size, deploy=args.deploy)
    print(json.dumps(res, indent=2))
    return 0


def _corruption_digest(corruption: dict | None) -> dict | None:
    """The headline corruption numbers of a robustness record (the file holds every score)."""
    if corruption is None:
        return None
    keys = ("benchmark", "source", "folder", "seed", "images_per_severity", "clean_top1", "mean_corruption_accuracy",
            "per_severity", "missing_from_mean", "unavailable")
    digest = {k: corruption.get(k) for k in keys}
    digest["per_corruption"] = {c: v["top1"] for c, v in corruption.get("per_corruption", {}).items()}
    digest["mce"] = {k: corruption["mce"].get(k) for k in ("mce", "relative_mce", "baseline", "note")}
    return digest


def _cmd_presets(args) -> int:
    from .config import key_table, list_presets, load_config, preset_purpose

    if args.keys:
        rows = [{"key": "key", "type": "type", "default": "default", "meaning": "meaning"}] + key_table()
        width = {c: max(len(r[c]) for r in rows) for c in ("key", "type", "default")}
        print("\n".join(f"{r['key']:<{width['key']}}  {r['type']:<{width['type']}}  "
                        f"{r['default']:<{width['default']}}  {r['meaning']}".rstrip() for r in rows))
    elif args.show:
        print(load_config(args.show).to_yaml(), end="")
    else:
        names = list_presets()
        width = max(map(len, names))
        print("\n".join(f"{name:<{width}}  {preset_purpose(name)}".rstrip() for name in names))
    return 0


def _cmd_models(args) -> int:
    from .models import describe_model, list_models

    names = list_models()
    width = max(map(len, names))
    print("\n".join(f"{name:<{width}}  {describe_model(name)}" for name in names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="repro", description="Reproduce 'Are Large Kernels Better Teachers than Transformers for ConvNets?' "
        "(SLaK teachers, ConvNeXt students): train, distill, resume, evaluate, report, run on Kaggle.")
    parser.add_argument("--version", action="version", version=f"repro {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a teacher or a student (distillation when the config names a teacher)",
                       description="Train, or resume the run in --out from its newest valid checkpoint.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a shipped preset (see `repro presets`)")
    src.add_argument("--config", help="a YAML config file")
    src.add_argument("--cohort", metavar="FILE",
                     help="a cohort file: members sharing one data stream and one teacher forward, each trained "
                          "into --out/<name>/ and bit-identical to its solo run (see README)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", required=True, help="run folder (created; resumed when it holds checkpoints)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total (resumable)")
    p.add_argument("--time-budget", help="wall-clock budget for this session, e.g. 11h30m; stops cleanly, exit 0")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="save every N optimizer steps")
    p.add_argument("--seed", type=int, help="run seed (same as --set seed=S)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--resume-from", action="append", metavar="DIR", help="extra read-only run folder to resume from")
    p.add_argument("--force", action="store_true", help="resume even when the config differs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5/loss of a checkpoint or run folder",
                       description="Score a run folder (its final model by default), a checkpoint of this package "
                                   "or a released weight file on a dataset split; prints top-1, top-5 and loss as "
                                   "JSON. The model and data come from the checkpoint's recorded config; a "
                                   "released file needs --model and --set data.* (e.g. data.name=imagenet "
                                   "data.root=/data/imagenet data.img_size=224).")
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint of this package, or released file")
    p.add_argument("--model", help="architecture for checkpoints that do not record it (e.g. slak_tiny)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a data.* or model.* key evaluation uses, e.g. data.root=/data (others are refused)")
    p.add_argument("--split", default="test", choices=("val", "test", "robustness"),
                   help="robustness: every ImageNet-A/-R/-Sketch folder under data.robustness_root")
    p.add_argument("--weights", choices=("final", "raw", "ema"), default="final",
                   help="final (default): what the run's summary.json reports as its final model (EMA or raw); "
                        "raw or ema to choose")
    p.add_argument("--ema", action="store_const", const="ema", dest="weights", help="same as --weights ema")
    p.add_argument("--deploy", action="store_true", help="evaluate the re-parameterized (deploy) form")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device")
    r = p.add_argument_group(
        "robustness", "--robustness scores every set found for the run's data and writes robustness.json (into the "
        "run folder, or --out): CIFAR-10/100 (and digits) on the 15 + 4 corruptions x 5 severities of CIFAR-10-C / "
        "CIFAR-100-C, read from the published .npy files when found (data.robustness_root, ./data, ~/data, Kaggle "
        "inputs), else generated from the test split and cached; ImageNet on the ImageNet-A/-R/-Sketch folders "
        "and the ImageNet-C tree under data.robustness_root. Per-corruption and per-severity top-1, mean "
        "corruption accuracy, and the mCE against --baseline.")
    r.add_argument("--robustness", action="store_true", help="score the robustness sets, write robustness.json")
    r.add_argument("--baseline", metavar="RUN",
                   help="run folder, checkpoint or robustness.json whose errors normalise the mCE (scored on the "
                        "same images when its robustness.json does not hold them)")
    r.add_argument("--out", metavar="DIR", help="where to write robustness.json (default: the run folder)")
    r.add_argument("--corruptions", metavar="NAMES",
                   help="comma-separated corruption names, or all (default), main (the 15) or extra (the 4)")
    r.add_argument("--severities", metavar="S", help="comma-separated severities 1-5 (default: all)")
    r.add_argument("--limit", type=int, metavar="N",
                   help="images per corruption and severity (the first N test images; evenly spaced for "
                        "ImageNet-C); default all")
    r.add_argument("--corruption-seed", type=int, default=0, metavar="S",
                   help="seed of generated corruptions (default 0; the same seed gives the same images)")
    r.add_argument("--corruption-source", choices=("auto", "published", "generated"), default="auto",
                   help="auto (default): published CIFAR-C files when found for the test split, else generated")
    r.add_argument("--corruption-cache", metavar="DIR",
                   help="folder for generated sets (default: $REPRO_CACHE/corruptions or ~/.cache/repro/corruptions)")
    r.add_argument("--frost-images", metavar="DIR",
                   help="folder with the benchmark's frost1.png ... frost6.jpg (default: those of an installed "
                        "imagecorruptions package; without them frost is skipped)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("presets", help="list presets, show one resolved, or list config keys",
                       description="List the shipped presets with their purpose, print one resolved (every key, "
                                   "after its base presets), or list every config key with its type, default "
                                   "and meaning (the keys of --set and of config files).")
    p.add_argument("--show", metavar="NAME", help="print the resolved preset as YAML")
    p.add_argument("--keys", action="store_true", help="list every config key: type, default, meaning")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("models", help="list model names",
                       description="List the model names of this package (SLaK teachers, the paper's students, "
                                   "the timm models built offline), each with what it is; any timm model name "
                                   "also works as model.name.")
    p.set_defaults(func=_cmd_models)

    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name and exc.name.startswith("repro"):
                continue  # that part of the package is not installed in this build
            raise
        module.register(sub)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `repro` console script."""
    import signal
    import threading

    # Until a command installs its own stop handling (training: stop after this step and save), SIGTERM is
    # an interrupt like Ctrl-C: one line, no traceback.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        level = logging.DEBUG if args.verbose else logging.INFO
        if _rank() != 0 and not args.verbose:
            level = logging.WARNING  # under torchrun, rank 0 tells the story; the others speak up only for problems
        logging.basicConfig(level=level, format="%(message)s")
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        from .train.budget import RunAborted

        try:
            return int(args.func(args) or 0)
        except RunAborted as exc:
            return 128 + int(exc.signum)  # the handler has already said what happened, in one line
    except ReproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        print(f"{name}: stopped; files already written are kept", file=sys.stderr)
        return 128 + int(signum)
    finally:
        if previous is not None:  # main() called in-process (tests, notebooks) leaves no handler behind
            signal.signal(signal.SIGTERM, previous)
