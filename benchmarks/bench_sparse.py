"""Cost of dynamic sparsity on SLaK-T: masking per step and prune-and-regrow per update, against a plain train step.

Each size runs the same model twice in one process, alternating an unmasked train step (forward, backward,
fused AdamW step, zero_grad) with a masked one (the same plus DynamicSparsity.step()), and times the sparsity call
itself. The steps run in the engine's precision: its autocast (repro.train.evaluate.autocast_context) and, for
fp16, its GradScaler; by default the precision `train.precision: auto` picks on the device (fp16 on a T4, bf16
from Ampere on, fp32 on CPU), since a 16-bit step is shorter and the masking share larger. Prints a table; never
asserts. Targets: masking <= 2% of the step at 224 px and <= 5% at 32 px.

    python benchmarks/bench_sparse.py                      # short default run on whatever device is there
    python benchmarks/bench_sparse.py --sizes 32 --batch 64 --steps 20 --device cuda --precision fp16
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repro.device import resolve_precision  # noqa: E402
from repro.sparse import DynamicSparsity, official_recipe  # noqa: E402
from repro.train.evaluate import autocast_context  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def bench_size(model_name: str, size: int, batch: int, steps: int, updates: int, device: torch.device,
               num_classes: int, precision: str = "auto") -> dict:
    """Time unmasked and masked train steps and the sparsity calls for one input size, in `precision` (fp32,
    fp16, bf16, or auto: what the engine resolves on `device`)."""
    from repro.models import create_model

    precision = resolve_precision(precision, device)

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=num_classes, img_size=size).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as repro train
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    recipe = official_recipe(model_name)
    u = recipe["update_frequency"]
    # Updates are timed on their own object, triggered every step, so a short run sees several of them.
    init_s, sparsity = _timed(lambda: DynamicSparsity(
        model, opt, **{**recipe, "update_frequency": 1}, total_steps=1000, seed=0, init_batch=(x, y)), device)

    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # as the engine builds it

    def forward_backward():
        with autocast_context(device, precision):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def train_step(masked: bool):
        forward_backward()
        t = _timed(sparsity.step, device)[0] if masked else 0.0
        opt.zero_grad(set_to_none=True)
        return t

    dense_steps, masked_steps, update_s = [], [], []
    # Warm-up (allocator, cuDNN autotuning, optimizer state); its first sparsity call is also an update.
    train_step(True)
    fixed = sparsity.update_frequency
    sparsity.update_frequency = None  # masking only, for the per-step figure
    for _ in range(steps):
        dense_steps.append(_timed(lambda: train_step(False), device)[0])
        total, mask_time = _timed(lambda: train_step(True), device)
        masked_steps.append((total, mask_time))
    sparsity.update_frequency = fixed
    for _ in range(updates):
        forward_backward()
        update_s.append(_timed(sparsity.step, device)[0])
        opt.zero_grad(set_to_none=True)
    step = statistics.median(dense_steps)
    mask = statistics.median(m for _, m in masked_steps)
    masked_total = statistics.median(t for t, _ in masked_steps)
    update = statistics.median(update_s) if update_s else math.nan
    masked_numel = sum(m.numel() for m in sparsity.masks.values())
    return dict(size=size, batch=batch, step_ms=1e3 * step, masked_step_ms=1e3 * masked_total, mask_ms=1e3 * mask,
                mask_pct=100 * mask / step, update_ms=1e3 * update, update_every=u,
                update_pct_amortised=100 * update / (u * step), init_s=init_s, masked_numel=masked_numel,
                density=sparsity.density(), precision=precision)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="slak_tiny", help="a SLaK model name with a published recipe")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="input resolutions")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch per size (one value for all); default 8 at 32 px, 2 at larger sizes on CPU, "
                             "128 / 32 on GPU")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind per size")
    parser.add_argument("--updates", type=int, default=2, help="timed prune-and-regrow updates per size")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="the steps' precision, as train.precision (default auto: what the engine picks here)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.batch is None:
        small, large = (128, 32) if device.type == "cuda" else (8, 2)
        batches = [small if s <= 64 else large for s in args.sizes]
    else:
        batches = args.batch * len(args.sizes) if len(args.batch) == 1 else args.batch
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    precision = resolve_precision(args.precision, device)
    print(f"model {args.model}, device {name}, torch {torch.__version__}, precision {precision}, {args.steps} steps, "
          f"{args.updates} updates per size")
    header = (f"{'size':>5} {'batch':>5} {'step ms':>9} {'masked ms':>10} {'mask ms':>8} {'mask %':>7} "
              f"{'update ms':>10} {'every':>6} {'update %':>9} {'init s':>7}")
    print(header)
    for size, batch in zip(args.sizes, batches):
        r = bench_size(args.model, size, batch, args.steps, args.updates, device, args.num_classes, precision)
        print(f"{r['size']:>5} {r['batch']:>5} {r['step_ms']:>9.1f} {r['masked_step_ms']:>10.1f} "
              f"{r['mask_ms']:>8.2f} {r['mask_pct']:>6.2f}% {r['update_ms']:>10.1f} {r['update_every']:>6} "
              f"{r['update_pct_amortised']:>8.3f}% {r['init_s']:>7.1f}", flush=True)
    print("mask %: DynamicSparsity.step() without an update / unmasked train step (targets: <= 5% at 32 px, "
          "<= 2% at 224 px);\nupdate %: one prune-and-regrow update spread over the recipe's update interval.")


if __name__ == "__main__":
    main()
