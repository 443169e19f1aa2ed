"""`repro erf`: the effective receptive field of a run folder, a checkpoint of this package or a released file."""
from __future__ import annotations

import argparse
import json

from .erf import RELEASED_SIZE, SMALL_SCALE, THRESHOLDS, run_erf


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `erf` subcommand."""
    p = subparsers.add_parser(
        "erf", help="effective receptive field: area ratios (erf.json) and heatmap (erf.png) of a model",
        description="Effective receptive field as in the SLaK code (erf/visualize_erf.py, erf/analyze_erf.py): "
                    "the input gradient of the last-stage feature at the centre, relu'd, summed over channels "
                    "and averaged over the first N images of a split (non-finite ones skipped), then "
                    "log10(x + 1) / max and, per threshold t in "
                    f"{', '.join(map(str, THRESHOLDS))}, the area ratio of the smallest centred square holding "
                    "more than t of the total. Writes erf.json, erf.npy (the map) and erf.png into the run "
                    "folder or --out; `repro report` shows them.")
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="run folder, checkpoint of this package, or released weight file")
    p.add_argument("--model", help="architecture for files that do not record it (e.g. slak_tiny)")
    p.add_argument("--split", default="test", choices=("val", "test"),
                   help="test (default; ImageNet's val/ folder, which the released script reads) or val")
    p.add_argument("--images", type=int, default=50, help="number of images, first of the split (default 50)")
    p.add_argument("--size", type=int, metavar="S",
                   help=f"square input side (default {RELEASED_SIZE} for models trained at 224 px or more, "
                        f"{SMALL_SCALE}x the training size below: 160 for 32x32 models)")
    p.add_argument("--out", metavar="DIR", help="where to write erf.json/erf.npy/erf.png (default: the run folder)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="data overrides, e.g. data.root=/data")
    p.add_argument("--weights", choices=("final", "raw", "ema"), default="final",
                   help="final (default): the run's final model as its summary.json says (EMA or raw)")
    p.add_argument("--batch-size", type=int, default=1, help="images per backward pass (same maps; default 1)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Measure, write the files and print the record."""
    record = run_erf(args.source, model_name=args.model, split=args.split, images=args.images, size=args.size,
                     out_dir=args.out, data_overrides=args.set or (),
                     use_ema={"final": None, "raw": False, "ema": True}[args.weights], device=args.device,
                     batch_size=args.batch_size, progress=not args.no_progress)
    files = record.pop("files")
    print(json.dumps(record, indent=2))
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0
