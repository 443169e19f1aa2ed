"""Cohort runs against single runs: wall time of a 3- and a 6-member cohort and of the same members one by one.

    python benchmarks/bench_cohort.py                   # CPU: tiny CIFAR-size teacher and students
    python benchmarks/bench_cohort.py --device cuda     # GPU: SLaK-T teacher, ConvNeXt-T-form and ResNet-50 students
    python benchmarks/bench_cohort.py --readme          # and write the results into benchmarks/README.md

A cohort (`repro.train.cohort`) loads and augments each batch once and runs the teacher once, then steps every
member; each member ends bit-identical to its single run (tests/test_cohort.py). Measured here, in one process:
the wall time of `train_cohort` for the members against the sum of `train` of each member alone, start-up
(data, models, teacher) and evaluation included, as a user runs them. Data: a generated CIFAR-100-format set
(`repro.data.synthetic.write_fake_cifar`, random 32x32 images), the CIFAR recipe (`cifar100-distill`:
RandAugment, random erasing, mixup/cutmix, label smoothing; DataLoader in the main process, so its cost is
counted), a few dozen steps of one epoch. Members: KD, NKD and FD from the teacher (3), and the same for two
students (6), chosen with the study's cost ratios (see MODELS). Rounds alternate single runs and cohort (so load from other processes hits both), and the
median round is reported. Peak memory of the 6-member cohort against its largest member trained alone: on CPU
the peak resident set of a child process doing each (VmHWM, reset once the imports are done; getrusage's
maxrss where /proc is missing; Python's tracemalloc does not see torch's allocations), on CUDA
torch.cuda.max_memory_reserved. Nothing is asserted.
"""
import argparse
import contextlib
import datetime
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from repro.config import load_config  # noqa: E402
from repro.data.synthetic import write_fake_cifar  # noqa: E402
from repro.train import train  # noqa: E402
from repro.train.cohort import train_cohort  # noqa: E402

README = ROOT / "benchmarks" / "README.md"
# Per device: the teacher, and the two students as (name, model, overrides). The study's two students (the
# ConvNeXt-T form, 0.27 GMAC a training step at 32x32, and ResNet-50, 0.25) cost about the same, and its SLaK-T
# teacher's forward about 0.57 of one student step; on CPU the stand-ins keep those ratios: two tiny students
# of the paper's form (2.7 MMAC a step), with and without drop path as in the study, and a tiny SLaK (1.6 MMAC
# a forward). `--second-student MODEL` times another mix.
MODELS = {"cpu": ("slak_micro", [("l2s-micro", "l2s_convnext_micro", ["model.drop_path_rate=0.1"]),
                                 ("l2s-micro-nodp", "l2s_convnext_micro", ["model.drop_path_rate=0.0"])]),
          "cuda": ("slak_tiny", [("l2s-convnext-tiny", "l2s_convnext_tiny", ["model.drop_path_rate=0.1"]),
                                 ("resnet50", "resnet50", ["model.drop_path_rate=0.0"])])}
METHODS = ("kd", "nkd", "fd")
TARGETS = {3: 0.8, 6: 0.7}
MIB = 2 ** 20


def setup(work: Path, device: str, batch: int, steps: int, students: list) -> tuple[list[str], dict]:
    """The generated data, a teacher run, and the shared overrides and members of the two cohorts."""
    teacher_model = MODELS[device][0]
    per_class = max(2, -(-steps * batch * 10 // 9 // 100))  # 10% is held out for validation
    write_fake_cifar(work / "data", num_classes=100, train_per_class=per_class, test_per_class=1)
    data = [f"data.root={work / 'data'}", "data.num_workers=0", f"data.train_limit={steps * batch}"]
    teacher = work / "teacher"
    if not (teacher / "summary.json").is_file():
        train(load_config("seed-slak-tiny-cifar100", None, data + [
            f"model.name={teacher_model}", "train.epochs=1", "data.train_limit=128", "sparse.sparsity=0"]),
            teacher, device=device, progress=False)
    shared = data + ["train.epochs=1", f"train.batch_size={batch}", f"distill.teacher={teacher}",
                     "train.eval_every=1"]
    members = {n: [{"name": f"{label}-{m}", "overrides": [f"model.name={model}", *extra, f"distill.method={m}"]}
                   for label, model, extra in students[:1 if n == 3 else 2] for m in METHODS] for n in (3, 6)}
    return shared, members


def cohort_spec(shared: list[str], members: list[dict]) -> dict:
    return {"preset": "cifar100-distill", "overrides": shared, "members": members}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_singles(spec: dict, out: Path, device: str) -> float:
    """Seconds to train every member alone, one after the other."""
    from repro.train.cohort import load_cohort

    start = time.perf_counter()
    for name, cfg in load_cohort(spec).members:
        train(cfg, out / name, device=device, progress=False)
    _sync(device)
    return time.perf_counter() - start


def time_cohort(spec: dict, out: Path, device: str) -> float:
    """Seconds to train the members as one cohort."""
    start = time.perf_counter()
    train_cohort(spec, out, device=device, progress=False)
    _sync(device)
    return time.perf_counter() - start


def peak_memory(spec: dict, work: Path, device: str, which: str) -> float:
    """Peak memory (MiB) of training the cohort, or its largest member alone, in a fresh child process."""
    path = work / f"memory-{which}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", which, "--spec", str(path), "--device", device,
                           "--out", str(work / f"memory-{which}")], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(args) -> None:
    """In a child process: train the cohort (or its largest member alone) and print the peak memory."""
    from repro.train.cohort import load_cohort

    spec = json.loads(Path(args.spec).read_text())
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # The imported runtime (torch with its CUDA libraries) already holds about a GiB resident: reset the peak
    # (Linux: "5" to clear_refs resets VmHWM) so that the peak is the training's, and report the growth too.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    start = _status_mib("VmRSS")
    if args.child == "cohort":
        train_cohort(spec, args.out, device=args.device, progress=False)
    else:
        from repro.models import count_params, create_model
        members = load_cohort(spec).members
        largest = max(members, key=lambda m: count_params(create_model(m[1].model.name, num_classes=100,
                                                                      img_size=32))["total"])
        train(largest[1], Path(args.out) / largest[0], device=args.device, progress=False)
    if args.device == "cuda":
        peak, start = torch.cuda.max_memory_reserved() / MIB, 0.0
    else:
        peak = _status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "growth_mib": peak - start}))


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MiB; 0 where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, help="batch size (default 32 on CPU, 64 on CUDA)")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per run (default 24)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (default 2)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--members", type=int, nargs="+", default=[3, 6], choices=(3, 6),
                        help="cohort sizes to time (default: 3 6)")
    parser.add_argument("--second-student", metavar="MODEL",
                        help="the second student of the 6-member cohort (default: the device's, see MODELS)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory children")
    parser.add_argument("--readme", action="store_true", help="write the results into benchmarks/README.md")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    parser.add_argument("--child", choices=("cohort", "single"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("repro").setLevel(logging.WARNING)
    logging.getLogger("timm").setLevel(logging.ERROR)  # "cosine annealing ... no effect" on one-epoch runs
    warnings.filterwarnings("ignore", module="repro.data")  # the generated set is not the CIFAR release
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    batch = args.batch or (64 if args.device == "cuda" else 32)
    load_before = os.getloadavg()[0]
    figures = {"device": args.device, "batch": batch, "steps": args.steps, "rounds": args.rounds, "cohorts": {}}
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        work = Path(tmp)
        students = list(MODELS[args.device][1])
        if args.second_student:
            students[1] = (args.second_student, args.second_student, [])
        figures["students"] = [f"{model} ({', '.join(extra) or 'preset'})" for _, model, extra in students]
        shared, members = setup(work, args.device, batch, args.steps, students)
        for n in args.members:
            spec = cohort_spec(shared, members[n])
            singles, cohorts = [], []
            for r in range(args.rounds):
                order = (("singles", "cohort") if r % 2 == 0 else ("cohort", "singles"))
                for kind in order:
                    out = work / f"r{r}-{n}-{kind}"
                    (singles if kind == "singles" else cohorts).append(
                        time_singles(spec, out, args.device) if kind == "singles" else
                        time_cohort(spec, out, args.device))
            s, c = statistics.median(singles), statistics.median(cohorts)
            figures["cohorts"][n] = {"members": [m["name"] for m in members[n]], "singles_s": singles,
                                     "cohort_s": cohorts, "ratio": c / s}
            print(f"{n} members: single runs {s:.1f} s, cohort {c:.1f} s, ratio {c / s:.2f} "
                  f"(target <= {TARGETS[n]})", flush=True)
        if not args.no_memory:
            spec = cohort_spec(shared, members[6])
            figures["memory_mib"] = {"cohort": peak_memory(spec, work, args.device, "cohort"),
                                     "single": peak_memory(spec, work, args.device, "single")}
            print(f"peak memory: 6-member cohort {figures['memory_mib']['cohort']}, its largest member "
                  f"alone {figures['memory_mib']['single']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    text = report(figures, load_before)
    print(text)
    if args.readme:
        from run_all import replace_section  # benchmarks/run_all.py: the one writer of marked result blocks
        key = f"cohort-{args.device}"
        README.write_text(replace_section(README.read_text(), key, text))
        print(f"results written to {README.relative_to(ROOT)}")


def report(f: dict, load_before: float) -> str:
    """The results block for benchmarks/README.md."""
    device = f["device"]
    teacher = MODELS[device][0]
    first, second = f["students"]
    where = (torch.cuda.get_device_name() if device == "cuda" else
             f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s)")
    lines = [f"### {'CUDA' if device == 'cuda' else 'CPU'}", "",
             f"Written by `python benchmarks/bench_cohort.py{' --device cuda' if device == 'cuda' else ''} --readme` "
             f"on {datetime.datetime.now():%Y-%m-%d %H:%M}; {where}, torch {torch.__version__}; teacher "
             f"`{teacher}`, students {first} (3 members) and {first} + {second} (6), x KD/NKD/FD; "
             f"{f['steps']} steps of batch {f['batch']}, one epoch with its evaluations; {f['rounds']} rounds "
             f"alternating, median. Load average before the run: {load_before:.2f}.", "",
             "| members | single runs, one after another | one cohort | cohort / single runs | target |",
             "|---|---|---|---|---|"]
    for n, c in f["cohorts"].items():
        s, k = statistics.median(c["singles_s"]), statistics.median(c["cohort_s"])
        lines.append(f"| {n} | {s:.1f} s | {k:.1f} s | **{k / s:.2f}x** | <= {TARGETS[int(n)]}x |")
    if "memory_mib" in f:
        c, s = f["memory_mib"]["cohort"], f["memory_mib"]["single"]
        if device == "cuda":
            lines += ["", f"Peak reserved CUDA memory (torch.cuda.max_memory_reserved): the 6-member cohort "
                          f"{c['peak_mib']:.0f} MiB, its largest member trained alone {s['peak_mib']:.0f} MiB "
                          f"({c['peak_mib'] / s['peak_mib']:.2f}x)."]
        else:
            lines += ["", f"Peak resident set of a child process during training (VmHWM, reset after the imports): "
                          f"the 6-member cohort {c['peak_mib']:.0f} MiB, its largest member trained alone "
                          f"{s['peak_mib']:.0f} MiB; above the resident set before training, {c['growth_mib']:.0f} "
                          f"MiB against {s['growth_mib']:.0f} MiB."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
