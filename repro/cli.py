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
_COMMAND_MODULES = ("repro.doctor", "repro.batch", "repro.report.cli", "repro.quickstart", "repro.kaggle.cli")


def _cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    if not args.preset and not args.config:
        raise ReproError("repro train needs --preset NAME or --config FILE (see `repro presets`)")
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(args.preset, args.config, overrides)
    summary = train(cfg, args.out, max_steps=args.max_steps, time_budget=args.time_budget,
                    checkpoint_every=args.checkpoint_every, device=args.device, resume_from=args.resume_from or (),
                    force=args.force, progress=not args.no_progress)
    keys = ("status", "stop_reason", "steps_done", "steps_total", "epochs_done", "eval_split", "top1", "top5",
            "best_top1", "test_top1", "wall_time_s")
    if summary.get("env", {}).get("world_size", 1) == 1 or _rank() == 0:
        print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
        print(f"run folder: {args.out}")
    return 0


def _rank() -> int:
    import os
    return int(os.environ.get("RANK", "0"))


def _cmd_eval(args) -> int:
    from .train import evaluate

    res = evaluate(args.checkpoint, model_name=args.model, data_overrides=args.set or (), device=args.device,
                   split=args.split, use_ema={"final": None, "raw": False, "ema": True}[args.weights],
                   batch_size=args.batch_size, deploy=args.deploy)
    print(json.dumps(res, indent=2))
    return 0


def _cmd_presets(args) -> int:
    from .config import all_keys, list_presets, load_config

    if args.keys:
        print("\n".join(all_keys()))
    elif args.show:
        print(load_config(args.show).to_yaml(), end="")
    else:
        print("\n".join(list_presets()))
    return 0


def _cmd_models(args) -> int:
    from .models import list_models

    print("\n".join(list_models()))
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

    p = sub.add_parser("eval", help="top-1/top-5/loss of a checkpoint or run folder")
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint of this package, or released file")
    p.add_argument("--model", help="architecture for checkpoints that do not record it (e.g. slak_tiny)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="data overrides, e.g. data.root=/data")
    p.add_argument("--split", default="test", choices=("val", "test", "robustness"),
                   help="robustness: every ImageNet-A/-R/-Sketch folder under data.robustness_root")
    p.add_argument("--weights", choices=("final", "raw", "ema"), default="final",
                   help="final (default): what the run's summary.json reports as its final model (EMA or raw); "
                        "raw or ema to choose")
    p.add_argument("--ema", action="store_const", const="ema", dest="weights", help="same as --weights ema")
    p.add_argument("--deploy", action="store_true", help="evaluate the re-parameterized (deploy) form")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("presets", help="list presets, show one resolved, or list config keys")
    p.add_argument("--show", metavar="NAME", help="print the resolved preset as YAML")
    p.add_argument("--keys", action="store_true", help="list every config key")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("models", help="list model names")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `repro` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    if _rank() != 0 and not args.verbose:
        level = logging.WARNING  # under torchrun, rank 0 tells the story; the others speak up only for problems
    logging.basicConfig(level=level, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ReproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
