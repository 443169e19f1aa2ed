"""`repro kaggle ...`: prepare, bundle, status, push, output, preflight, plan-sessions."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ReproError
from .sessions import DEFAULT_SESSION_BUDGET


def _prepare(args) -> int:
    from .prepare import prepare_plan
    folders = prepare_plan(args.plan, args.out, owner=args.owner, runs=args.run or None)
    for folder in folders:
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        print(f"{folder}  ->  {meta['id']}")
    print(f"{len(folders)} kernel folder(s); push session 1 of each run with `repro kaggle push DIR`, "
          "each later session once the previous one has completed")
    return 0


def _bundle(args) -> int:
    from .bundle import build_bundle, verify_bundle
    result = build_bundle(args.out, owner=args.owner, slug=args.slug, include=args.include, title=args.title,
                          license_name=args.license)
    print(f"{result['folder']}: {', '.join(result['wheels'])} + dataset-metadata.json "
          f"({result['metadata']['id']})")
    if args.verify:
        installed = verify_bundle(result["folder"])
        print(f"verified: installs offline into a fresh environment (repro {installed['version']})")
    print(f"upload: kaggle datasets create -p {result['folder']}   "
          f"(later versions: kaggle datasets version -p {result['folder']} -m 'new code')")
    return 0


def _status(args) -> int:
    from .official import format_kernel_state, kernel_state
    from .sessions import chain_status, format_chain_status
    paths = [t for t in args.targets if Path(t).exists()]
    remote = [t for t in args.targets if not Path(t).exists()]
    if paths:
        print(format_chain_status(chain_status(paths), budget=args.budget))
    for ref in remote:
        print(format_kernel_state(ref, kernel_state(ref)))
    return 0


def _push(args) -> int:
    from .official import PUSHED_FILE, push
    record = push(args.folder, check_previous=not args.no_check_previous, previous_version=args.previous_version)
    print(f"pushed {record['id']} version {record['version']}: {record['url']}")
    names = {"code_dataset": "code", "kernel": "previous session", "docker_image": "image"}
    if record["pinned"]:
        print("pinned: " + "; ".join(f"{names[k]} {v}" for k, v in record["pinned"].items()))
    if record.get("dropped_tags"):
        print(f"note: Kaggle dropped tags it does not know: {record['dropped_tags']}")
    print(f"recorded in {Path(args.folder) / PUSHED_FILE}; follow it with `repro kaggle status {record['id']}`")
    return 0


def _output(args) -> int:
    from .official import download_output
    dest = download_output(args.kernel, args.path, file_pattern=args.file_pattern, checkpoints=args.checkpoints,
                           everything=args.all)
    print(f"outputs of {args.kernel} in {dest}; summarise with `repro kaggle status {dest}`")
    return 0


def _preflight(args) -> int:
    from .preflight import format_preflight, preflight
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if train_args:
        _check_train_args(train_args)
    result = preflight(train_args)
    print(json.dumps(result, indent=2) if args.json else format_preflight(result))
    return 0


def _check_train_args(train_args: list[str]) -> None:
    """Parse `repro train` arguments and resolve their config, as the launched command will."""
    import contextlib
    import io

    from ..cli import build_parser
    from ..config import load_config

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parsed = build_parser().parse_args(["train", *train_args])
    except SystemExit:
        detail = err.getvalue().strip().splitlines()[-1:] or ["invalid arguments"]
        raise ReproError(f"the arguments after -- are not valid for `repro train` ({detail[0]}); see "
                         "`repro train --help`") from None
    if not parsed.preset and not parsed.config:
        raise ReproError("the arguments after -- need --preset NAME or --config FILE for `repro train`")
    overrides = list(parsed.set or []) + ([f"seed={parsed.seed}"] if parsed.seed is not None else [])
    load_config(parsed.preset, parsed.config, overrides)


def _plan_quota(args) -> int:
    from ..plan import load_plan
    from .quota import format_quota, plan_quota, save_json

    calibration = None
    if args.calibration:
        try:
            calibration = json.loads(Path(args.calibration).read_text())
        except (OSError, ValueError) as exc:
            raise ReproError(f"--calibration {args.calibration}: expected the JSON written by --save, found "
                             f"{exc}") from None
        calibration = calibration.get("calibration", calibration)
    teachers = {}
    for text in args.teacher_model or []:
        ref, sep, model = text.partition("=")
        if not sep or not model:
            raise ReproError(f"--teacher-model {text}: expected TEACHER_RUN=MODEL, e.g. slak-tiny-cifar100=slak_tiny")
        teachers[ref] = model
    pack = args.pack or max([int((load_plan(p).kaggle or {}).get("pack") or 1) for p in args.plans] + [2])
    result = plan_quota(args.plans, calibration=calibration, anchors=args.anchor or (), teacher_models=teachers,
                        device=args.device, calibration_batch=args.calibration_batch, steps=args.calibration_steps,
                        costs=args.costs,
                        pack=pack, budget=args.budget, overhead=0.10 if args.overhead is None else args.overhead,
                        session_overhead=args.session_overhead, weekly_hours=args.weekly_hours, seeds=args.seeds)
    if args.save:
        save_json(result, args.save)
    print(json.dumps(result, indent=2) if args.json else format_quota(result))
    return 0


def _plan_sessions(args) -> int:
    from .sessions import plan_sessions, plan_sessions_from_run
    if args.plans:
        return _plan_quota(args)
    if args.run:
        result = plan_sessions_from_run(args.run, epochs=args.epochs, budget=args.budget,
                                        overhead=args.overhead if args.overhead is not None else 0.0)
    else:
        if args.epochs is None:
            raise ReproError("--epochs is needed with measured numbers (or pass --run RUN_DIR)")
        result = plan_sessions(epochs=args.epochs, images_per_s=args.images_per_s, train_size=args.train_size,
                               seconds_per_epoch=args.seconds_per_epoch, budget=args.budget,
                               overhead=args.overhead if args.overhead is not None else 0.10)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['epochs']} epochs x {result['seconds_per_epoch'] / 60:.1f} min = "
              f"{result['total_hours']:.1f} h; {result['epochs_per_session']} epochs per {args.budget} session "
              f"-> sessions: {result['sessions']}   (kaggle.sessions in the plan)")
    return 0


def register(subparsers) -> None:
    """Add `repro kaggle` and its sub-commands to the command line."""
    kaggle = subparsers.add_parser(
        "kaggle", help="run plans on Kaggle: bundle, prepare, push, status, output, preflight, plan-sessions",
        description="Run plans on Kaggle notebooks, chained over ~12 h sessions. Walk-through: kaggle/README.md.")
    sub = kaggle.add_subparsers(dest="kaggle_command", metavar="COMMAND", required=True)

    p = sub.add_parser("prepare", help="write one kernel folder per plan run and session",
                       description="Bake each run's parameters into its notebook (papermill prepare-only), add "
                                   "the offline install cell and write validated kernel-metadata.json: "
                                   "OUT/<run>/s<k>/. The plan's kaggle section is described in kaggle/README.md.")
    p.add_argument("plan", help="plan YAML (see kaggle/plans/)")
    p.add_argument("--out", default="kaggle/build", help="output folder (default kaggle/build)")
    p.add_argument("--owner", help="Kaggle user name (overrides kaggle.owner in the plan)")
    p.add_argument("--run", action="append", metavar="NAME", help="only this run (repeatable)")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("bundle", help="build the code dataset (wheel + dataset-metadata.json)",
                       description="Build a py3-none-any wheel of this package, plus wheels of requirements the "
                                   "Kaggle image lacks, and dataset-metadata.json. Assumed present on Kaggle: "
                                   "torch, torchvision, timm, safetensors, numpy, scipy, pyyaml, tqdm, pandas, "
                                   "matplotlib, scikit-learn, papermill, nbformat, ipykernel, kaggle.")
    p.add_argument("--out", default="kaggle/build/code", help="output folder (default kaggle/build/code)")
    p.add_argument("--owner", help="Kaggle user name (default $KAGGLE_USERNAME)")
    p.add_argument("--slug", default="repro-lkt-code", help="dataset slug (default repro-lkt-code)")
    p.add_argument("--title", help="dataset title (6-50 characters)")
    p.add_argument("--license", default="other", help="Kaggle licence name (default other: MIT, stated in the "
                                                       "description)")
    p.add_argument("--include", action="append", default=[], metavar="NAME",
                   help="also add a wheel of this distribution (pip download --no-deps; repeatable)")
    p.add_argument("--verify", action="store_true",
                   help="install the bundle offline into a scratch environment to prove it works")
    p.set_defaults(func=_bundle)

    p = sub.add_parser("status", help="summarise a chain from outputs, or ask Kaggle about kernels",
                       description="Existing paths (run folders, downloaded outputs) are summarised per session "
                                   "from their summary.json; 'owner/slug' arguments are looked up with "
                                   "`kaggle kernels status`.")
    p.add_argument("targets", nargs="+", metavar="RUN_OR_OUTPUT_DIR|OWNER/SLUG")
    p.add_argument("--budget", default=DEFAULT_SESSION_BUDGET, help="session budget for the remaining estimate")
    p.set_defaults(func=_status)

    p = sub.add_parser("push", help="validate and push a kernel folder (kaggle kernels push)",
                       description="Validate a kernel folder made by `repro kaggle prepare` (its "
                                   "kernel-metadata.json) and push it with the official client, which "
                                   "starts the kernel on Kaggle. Session k > 1 is pushed only once session k-1 has "
                                   "completed, since it resumes from that output.")
    p.add_argument("folder", help="a folder made by `repro kaggle prepare`, e.g. kaggle/build/RUN/s1")
    p.add_argument("--no-check-previous", action="store_true",
                   help="push session k>1 without checking that session k-1 completed")
    p.add_argument("--previous-version", type=int, metavar="N",
                   help="the version of session k-1's kernel to attach (default: the one pushed from its folder, "
                        "recorded in its pushed.json)")
    p.set_defaults(func=_push)

    p = sub.add_parser("output", help="download a kernel's outputs (kaggle kernels output)",
                       description="Download the output files of a kernel (owner/slug, or a kernel folder made by "
                                   "`repro kaggle prepare`) with the official client; summarise them with "
                                   "`repro kaggle status DIR` or report on them with `repro report --runs DIR`.")
    p.add_argument("kernel", help="owner/slug, owner/slug/version or a kernel folder")
    p.add_argument("-p", "--path", help="destination (default runs/kaggle/<slug>)")
    p.add_argument("--file-pattern", metavar="REGEX",
                   help="download the files whose path matches REGEX (default: summary.json, metrics.jsonl, "
                        "config.yaml and the executed notebook; the session log always comes)")
    p.add_argument("--checkpoints", action="store_true",
                   help="also download the checkpoints and weight files (large)")
    p.add_argument("--all", action="store_true", help="download every output file")
    p.set_defaults(func=_output)

    p = sub.add_parser("preflight", help="check the GPU against this torch, pick precision and launch command",
                       description="Refuses a GPU the installed torch has no kernels for (e.g. a P100), prints "
                                   "the precision `auto` picks and the command to launch training in a "
                                   "subprocess (torchrun over all GPUs when there are several). Arguments "
                                   "after -- are passed to `repro train`.")
    p.add_argument("--json", action="store_true", help="print the decisions as JSON")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then `repro train` arguments")
    p.set_defaults(func=_preflight)

    p = sub.add_parser("plan-sessions", help="estimate the sessions a run needs, or the quota of whole plans",
                       description="With PLAN files: the GPU-hours, sessions and weeks of quota the plans need, "
                                   "with and without cohorts and packing, from per-image costs calibrated on this "
                                   "device (or --calibration) and scaled to the target by --anchor (every figure "
                                   "printed says whether it is measured or estimated). Without: the sessions of one "
                                   "run, from measured throughput (a summary.json's images_per_s and the "
                                   "training-set size), a measured epoch time, or a trial run folder timed on the "
                                   "target accelerator.")
    p.add_argument("plans", nargs="*", metavar="PLAN", help="plan YAML files to estimate together (see kaggle/plans/)")
    p.add_argument("--run", metavar="RUN_DIR", help="a trial run folder (its summary.json times the steps)")
    p.add_argument("--images-per-s", type=float, help="training throughput")
    p.add_argument("--train-size", type=int, help="training images per epoch")
    p.add_argument("--seconds-per-epoch", type=float, help="measured epoch time instead of throughput")
    p.add_argument("--epochs", type=int, help="epochs to train (default with --run: the run's own)")
    p.add_argument("--budget", default=DEFAULT_SESSION_BUDGET, help="training time per session (default 11h15m)")
    p.add_argument("--overhead", type=float, default=None,
                   help="extra share for evaluation and saves (default 0.10 with numbers, 0 with --run)")
    p.add_argument("--json", action="store_true")
    g = p.add_argument_group("with PLAN files")
    g.add_argument("--anchor", action="append", metavar="RUN_DIR|MODEL=IMAGES_PER_S",
                   help="a throughput measured on the target device (a run folder's summary.json, or a model's "
                        "training images/s) that scales the calibrated costs (repeatable)")
    g.add_argument("--costs", choices=("measured", "flops"), default="measured",
                   help="per-image costs timed on this device (default), or counted multiply-accumulates (where "
                        "timing here says little about the target, e.g. a busy CPU; needs --anchor)")
    g.add_argument("--calibration", metavar="FILE", help="reuse the costs of an earlier --save instead of timing")
    g.add_argument("--save", metavar="FILE", help="write the estimate, calibration included, as JSON")
    g.add_argument("--device", help="device to calibrate on (default: cuda when available)")
    g.add_argument("--calibration-batch", type=int, metavar="N",
                   help="time steps of N images (default: the plans' batch size); costs are per image")
    g.add_argument("--calibration-steps", type=int, default=2, metavar="N", help="timed steps per model (default 2)")
    g.add_argument("--teacher-model", action="append", metavar="TEACHER=MODEL",
                   help="the architecture of a teacher the plans name but this machine cannot read")
    g.add_argument("--pack", type=int, help="runs per packed session (default: the plans' kaggle.pack, at least 2)")
    g.add_argument("--seeds", type=int, default=1, help="every run this many times (default 1)")
    g.add_argument("--weekly-hours", type=float, default=30.0, help="free GPU quota per week (default 30)")
    g.add_argument("--session-overhead", default="10m", help="start-up charged per session (default 10m)")
    p.set_defaults(func=_plan_sessions)
