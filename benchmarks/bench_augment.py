"""Training-set augmentation throughput: the PIL loader (build_loader) against the device path (build_device_loader).

    python benchmarks/bench_augment.py                  # CPU: PIL loader with 0/1/2 workers vs the device path
    python benchmarks/bench_augment.py --device cuda    # also the device path on a GPU
    taskset -c 0-3 python benchmarks/bench_augment.py --device cuda   # as on a Kaggle GPU session (4 vCPUs)
    python benchmarks/bench_augment.py --readme         # and write the results into benchmarks/README.md

Both paths run the CIFAR recipe (RandomCrop(32, padding=4), flip, RandAugment rand-m9-mstd0.5-inc1, random
erasing 0.25 in 'pixel' mode, normalisation) over 32x32 patches cut from scikit-learn's two sample photographs,
with the same ResumableSampler and the recipe's batch of 64, in one process, in interleaved rounds (so load from
other processes hits every loader alike). Each round is one timed pass over the images, start-up included: an
epoch as `repro train` runs it (on CPU, DataLoader workers start anew each epoch).

Reported per loader: images/s (wall clock), CPU seconds used (this process and its worker processes, from
getrusage) and images per CPU-second ("per core"), each as a ratio to the PIL loader with 0 workers. Medians
over the timed rounds. Nothing is asserted.
"""
import argparse
import datetime
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from repro.data.datasets import ArrayImageDataset, TransformedSubset  # noqa: E402
from repro.data.device_augment import build_device_loader  # noqa: E402
from repro.data.loader import ResumableSampler, build_loader  # noqa: E402
from repro.data.transforms import CIFAR100_MEAN, CIFAR100_STD, train_transform  # noqa: E402

README = ROOT / "benchmarks" / "README.md"
RECIPE = dict(randaugment="rand-m9-mstd0.5-inc1", reprob=0.25, hflip=0.5)


def sample_patches(n: int, seed: int = 0) -> np.ndarray:
    """n 32x32 RGB patches of scikit-learn's sample photographs (china.jpg, flower.jpg) at a few scales."""
    import sklearn
    from PIL import Image

    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    rng = np.random.default_rng(seed)
    photos = []
    for name in ("china.jpg", "flower.jpg"):
        im = Image.open(folder / name).convert("RGB")
        photos += [np.asarray(im.resize((im.width // s, im.height // s), Image.BICUBIC)) for s in (2, 4, 8)]
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        a = photos[i % len(photos)]
        y, x = rng.integers(0, a.shape[0] - 32), rng.integers(0, a.shape[1] - 32)
        out[i] = a[y:y + 32, x:x + 32]
    return out


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def one_pass(loader, sampler, epoch: int, device: torch.device) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of one whole pass, worker start-up included."""
    sampler.set_epoch(epoch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu, count = time.perf_counter(), cpu_seconds(), 0
    it = iter(loader)
    for images, targets in it:
        count += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del it  # joins the workers, so their CPU time is counted
    return count, time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add the device path on the GPU")
    parser.add_argument("--images", type=int, default=4096, help="images per pass")
    parser.add_argument("--batch", type=int, default=64, help="batch size (the CIFAR recipe's: 64)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one pass per loader each)")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2], help="PIL loader worker counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process (default 1)")
    parser.add_argument("--readme", action="store_true", help="write the results into benchmarks/README.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    images = sample_patches(args.images)
    base = ArrayImageDataset(images, [i % 100 for i in range(len(images))], [str(i) for i in range(100)])
    tf = train_transform(32, mean=CIFAR100_MEAN, std=CIFAR100_STD, native_size=32, **RECIPE)
    train = TransformedSubset(base, range(len(base)), tf)
    sampler = ResumableSampler(len(train), seed=0)
    loaders = {f"PIL loader, {w} worker{'s' if w != 1 else ''}":
               (build_loader(train, batch_size=args.batch, sampler=sampler, num_workers=w, seed=0), torch.device("cpu"))
               for w in args.workers}
    targets = [torch.device("cpu")] + ([device] if device.type != "cpu" else [])
    for dev in targets:
        loaders[f"device path on {dev.type}"] = (build_device_loader(
            train, batch_size=args.batch, sampler=sampler, device=dev, seed=0, img_size=32, mean=CIFAR100_MEAN,
            std=CIFAR100_STD, **RECIPE), dev)

    load_before = os.getloadavg()[0]
    results = {name: [] for name in loaders}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, (loader, dev) in loaders.items():
            n, wall, cpu = one_pass(loader, sampler, r, dev)
            if r:
                results[name].append((n / wall, n / max(cpu, 1e-9), cpu / n))

    baseline = next(iter(results))
    base_ips = statistics.median(v[0] for v in results[baseline])
    base_core = statistics.median(v[1] for v in results[baseline])
    rows = ["| loader | images/s | vs PIL 0 workers | CPU ms / image | images per CPU-second "
            "| per-core vs PIL 0 workers |", "|---|---|---|---|---|---|"]
    for name, values in results.items():
        ips = statistics.median(v[0] for v in values)
        core = statistics.median(v[1] for v in values)
        ms = statistics.median(v[2] for v in values) * 1e3
        rows.append(f"| {name} | {ips:.0f} | {ips / base_ips:.2f}x | {ms:.3f} | {core:.0f} | {core / base_core:.2f}x |")
    cpu_name = "device path on cpu"
    headline = (f"Device path on CPU: **{statistics.median(v[1] for v in results[cpu_name]) / base_core:.1f}x** the "
                f"PIL loader's images per CPU-second (target >= 5x).")
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/bench_augment.py " + " ".join(sys.argv[1:])
    header = (f"Written by `{command.strip()}` on {when}; {os.cpu_count()} CPU cores, {args.threads} torch "
              f"thread(s), torch {torch.__version__}"
              + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
              + f"; {args.images} images per pass, batch {args.batch}, 1 warm-up + {args.rounds} timed rounds, "
              f"median. Load average before the run: {load_before:.2f}.")
    text = "\n".join([header, "", headline, "", *rows])
    print(text)
    if args.readme:
        write_section(text, device)


def write_section(text: str, device: torch.device) -> None:
    """Replace this benchmark's block (CPU or CUDA) in benchmarks/README.md, leaving every other section alone."""
    from run_all import replace_section  # benchmarks/run_all.py: the one writer of marked result blocks

    key = "augment-cuda" if device.type == "cuda" else "augment-cpu"
    title = "### CUDA" if device.type == "cuda" else "### CPU"
    README.write_text(replace_section(README.read_text(), key, f"{title}\n\n{text}"))
    print(f"results written to {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
