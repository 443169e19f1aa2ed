"""All speed and memory benchmarks in one command; writes its results into benchmarks/README.md.

    python benchmarks/run_all.py                    # what `make bench` runs (a few minutes on 2 CPU cores)
    python benchmarks/run_all.py --quick            # smaller batches, fewer steps
    python benchmarks/run_all.py --device cuda      # fp16 + GradScaler, cudnn.benchmark, the four training
                                                    # variants (NCHW / channels_last x eager / torch.compile)
    python benchmarks/run_all.py --include-suite    # also times `repro quickstart` and the test suite
    python benchmarks/run_all.py --ops-only         # aten operators per train step, eager and compiled

Measures, on one device and in one process (so that ratios are not skewed by other load on the machine):
  * training: images/s of a full step as repro train runs it (the engine's TrainModule forward under its
    autocast, the device-side loss statistics, GradScaler when fp16, backward, fused AdamW step; plus the
    masking step of DynamicSparsity at 40% sparsity for SLaK-T) for SLaK-T, the paper's ConvNeXt-T student
    (l2s_convnext_tiny) and timm's ConvNeXt-T at 32x32 and 224x224, the three models' steps interleaved
    round-robin (each timed step right after an untimed one of the same model); the
    SLaK-T/ConvNeXt-T ratio; achieved GFLOP/s (6 FLOPs per multiply-accumulate of the forward, as executed);
    peak memory (CPU: the maxrss growth of a child process doing the same steps; CUDA: the allocator's peak);
    with --variants (default on CUDA: all four), the same for NCHW / channels_last, eager / torch.compile of the
    train step's module (as train.compile=student does), with the ratios in each and against the first;
  * the exact CPU depthwise backward of repro.models.slak (on vs off) for SLaK-T;
  * one AdamW step in PyTorch's per-tensor loop, foreach and fused implementations (SLaK-T, ConvNeXt-T);
  * inference: images/s of SLaK-T's training form against its deploy forms (repro.models.reparameterize),
    and against the same network with its large-kernel paths skipped (the bound for any deploy form);
  * distillation: the cost of the teacher's forward (repro.distill.Teacher: deploy form under inference mode,
    against the training form and against a plain forward with autograd on) next to a student step;
  * masking: DynamicSparsity.step() against a train step (benchmarks/bench_sparse.py);
  * memory at 224 for batch 64 under fp16 AMP: on CUDA the allocator's peak *reserved* memory (what the
    driver must grant, against torch.cuda.mem_get_info and total_memory), free and capped at 15 GB as a T4
    leaves a process about 15.1 GB; on CPU, the saved activations counted;
  * with --include-ops / --ops-only: aten operators dispatched per train step (a TorchDispatchMode) of SLaK-T and
    the student at 32 and 224, and the kernel calls of the same step under torch.compile (bench_models.py);
  * with --include-suite: wall time of `python -m repro quickstart` and of `pytest -m "not slow" tests`.
Timing: warm-up rounds excluded, median over the timed rounds. Nothing is asserted.
"""
import argparse
import copy
import datetime
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

from repro.models import count_flops, create_model, reparameterize  # noqa: E402
from repro.models.slak import LargeKernelConv2d, ReparamLargeKernelConv  # noqa: E402
from repro.train import hardware  # noqa: E402
from repro.train.engine import SupervisedLoss, TrainModule  # noqa: E402
from repro.train.evaluate import autocast_context  # noqa: E402
from repro.train.metrics import StepStats  # noqa: E402

README = ROOT / 'benchmarks' / 'README.md'
VARIANTS = ('nchw', 'channels_last', 'nchw+compile', 'channels_last+compile')
# --tiny-models (dry runs): the same code paths on small stand-ins of the same families, in seconds.
STAND_INS = {'slak_tiny': 'slak_micro', 'l2s_convnext_tiny': 'l2s_convnext_micro', 'convnext_tiny': 'convnext_atto'}
_substitutes: dict = {}
# A T4 shows 15,360 MiB but leaves a process about 15.1 GB: SLaK-T batch 64 at 224 must fit in 15 GB reserved.
T4_BUDGET_BYTES = 15 * 10 ** 9
MODELS = {'SLaK-T': 'slak_tiny', 'student ConvNeXt-T': 'l2s_convnext_tiny', 'timm ConvNeXt-T': 'convnext_tiny'}
NUM_CLASSES = 100
SPARSITY = 0.4
MIB = 2 ** 20


# ------------------------------------------------------------------------------------------------ helpers
def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _amp_dtype(precision: str):
    return {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}[precision]


def _autocast(device: torch.device, precision: str):
    """The engine's autocast (repro.train.evaluate.autocast_context): fp16/bf16, or nothing for fp32."""
    return autocast_context(device, precision)


def model_name(name: str) -> str:
    """The model this run builds for `name` (its tiny stand-in under --tiny-models)."""
    return _substitutes.get(name, name)


def build_model(name: str, **kwargs) -> torch.nn.Module:
    """repro.models.create_model of `name`, or of its stand-in under --tiny-models."""
    return create_model(model_name(name), **kwargs)


def parse_variant(variant: str) -> tuple[bool, bool]:
    """(channels_last, compile) of a variant name such as 'channels_last+compile'."""
    parts = set(variant.split('+'))
    if not parts <= {'nchw', 'channels_last', 'compile'} or len(parts & {'nchw', 'channels_last'}) != 1:
        raise ValueError(f'unknown variant {variant!r}; expected one of {", ".join(VARIANTS)}')
    return 'channels_last' in parts, 'compile' in parts


def allow_many_compilations() -> None:
    """Every Trainer compiles the same TrainModule.forward for another model or size; past dynamo's default of 8
    recompilations it would silently run the rest eagerly and the compiled figures would be eager ones."""
    import torch._dynamo.config as dynamo_config
    for key in ('recompile_limit', 'cache_size_limit'):
        if hasattr(dynamo_config, key):
            setattr(dynamo_config, key, 256)


def set_fast_backward(model: torch.nn.Module, on: bool) -> torch.nn.Module:
    """Turn the exact CPU depthwise backward of every large-kernel conv on or off."""
    for m in model.modules():
        if isinstance(m, LargeKernelConv2d):
            m.fast_backward = on and m.groups == m.in_channels == m.out_channels
    return model


def interleaved(fns: dict, warmup: int, steps: int, device: torch.device, rewarm: int = 1) -> dict:
    """{name: [seconds per call]} of the timed rounds; each round calls every fn in turn, `rewarm` untimed
    times and then once timed.

    Alternating spreads other processes' load over all fns alike; the untimed calls before each timed one put
    the timed call where it sits in a real loop, right after a call of the same fn. Without them the memory
    allocator is left in the state the previous fn needed, and a model with larger tensors pays for it (on
    CPU, SLaK-T's step after a ConvNeXt-T step page-faults in fresh memory: up to 1.5x slower than in its own
    training loop).
    """
    times = {k: [] for k in fns}
    for r in range(warmup + steps):
        for name, fn in fns.items():
            for _ in range(rewarm if r >= warmup else 0):
                fn()
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _median(values):
    return statistics.median(values) if values else float('nan')


OPTIMIZER_IMPLS = {'loop': dict(foreach=False), 'foreach': dict(foreach=True), 'fused': dict(fused=True)}


def make_adamw(model: torch.nn.Module, impl: str) -> torch.optim.Optimizer:
    """AdamW over all parameters in one of PyTorch's implementations (the engine uses 'fused' by default)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, **OPTIMIZER_IMPLS[impl])


class Trainer:
    """One model's training step on a fixed batch as the engine runs it: TrainModule forward (cross-entropy)
    under autocast, device-side loss statistics, GradScaler-scaled backward, AdamW, masking, zero_grad.

    `compile` wraps the TrainModule in torch.compile exactly as train.compile=student does; the first step (the
    compilation) runs at construction unless `warm` is False, and its seconds are kept in `compile_s`.
    """

    def __init__(self, name: str, size: int, batch: int, device: torch.device, precision: str,
                 channels_last: bool, sparse: bool, fast_backward: bool = True, seed: int = 0,
                 optimizer: str = 'fused', compile: bool = False, warm: bool = True):
        torch.manual_seed(seed)
        self.name, self.size, self.batch, self.device = model_name(name), size, batch, device
        self.precision = precision
        model = build_model(name, num_classes=NUM_CLASSES, img_size=size)
        set_fast_backward(model, fast_backward)
        self.macs = count_flops(model, size, as_executed=True)['dense']
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt).train()
        self.opt = make_adamw(self.model, optimizer)
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, 3, size, size, generator=gen).to(device, memory_format=fmt)
        self.y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == 'fp16')  # as the engine builds it
        self.sparsity = None
        if sparse:
            from repro.sparse import DynamicSparsity
            # 'uniform' skips SNIP's scoring pass; masking cost per step does not depend on the init.
            self.sparsity = DynamicSparsity(self.model, self.opt, sparsity=SPARSITY, init='uniform',
                                            update_frequency=None, prune_rate=0.5, total_steps=1000, seed=seed)
        self.module = TrainModule(self.model, SupervisedLoss())
        self.forward = hardware.compiled(self.module, 'student') if compile else self.module
        self.stats = StepStats(device)
        self.steps = 0
        self.compile_s = None
        if compile and warm:
            start = time.perf_counter()
            self.step()
            _sync(device)
            self.compile_s = time.perf_counter() - start

    def forward_backward(self) -> None:
        """The part torch.compile replaces: the TrainModule's forward and its backward (eager here)."""
        loss, _ = self.module(self.x, self.y)
        loss.backward()

    def step(self) -> None:
        with _autocast(self.device, self.precision):
            loss, parts = self.forward(self.x, self.y)
        self.stats.add(loss, parts, self.steps)
        self.scaler.scale(loss / 1).backward()  # the engine divides by train.accum_steps (1 here)
        self.stats.end_step(1)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.sparsity is not None:
            self.sparsity.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1

    def persistent_bytes(self) -> int:
        """Bytes of parameters and optimizer state (what lives between steps)."""
        total = sum(p.numel() * p.element_size() for p in self.model.parameters())
        for state in self.opt.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
        return total


# ------------------------------------------------------------------------------------------------ memory
def cpu_peak_memory(name: str, size: int, batch: int, args) -> float:
    """MiB by which a fresh process's maxrss grows over 2 training steps (model, optimizer, activations)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), '--_memory-probe', name, str(size), str(batch),
           '--precision', args.precision, '--device', 'cpu']
    if args.channels_last:
        cmd.append('--channels-last')
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    match = re.search(r'PEAK_MIB ([\d.]+)', out.stdout)
    if not match:
        print(f'  memory probe of {name} at {size} failed: {out.stderr.strip()[-300:]}', flush=True)
        return float('nan')
    return float(match.group(1))


def _peak_rss_kib() -> int:
    """This process's peak resident set in KiB.

    VmHWM of /proc/self/status where it exists: Linux carries ru_maxrss over an exec, so a child started by a
    large parent would report the parent's peak.
    """
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_probe(name: str, size: int, batch: int, args) -> None:
    """Child side of cpu_peak_memory: prints PEAK_MIB for the parent."""
    device = torch.device('cpu')
    torch.zeros(1) + 1  # load the kernels that every step needs before the baseline
    base = _peak_rss_kib()
    sparse = name in ('slak_tiny', STAND_INS['slak_tiny'])
    trainer = Trainer(name, size, batch, device, args.precision, args.channels_last, sparse)
    for _ in range(2):
        trainer.step()
    print(f'PEAK_MIB {(_peak_rss_kib() - base) / 1024:.1f}')


def cuda_step_memory(trainer: Trainer) -> float:
    """MiB: the model's persistent state plus the allocator's peak growth during one step."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    trainer.step()
    torch.cuda.synchronize()
    return (trainer.persistent_bytes() + torch.cuda.max_memory_allocated() - before) / MIB


# ------------------------------------------------------------------------------------------------ sections
def bench_training(size: int, batch: int, args, device: torch.device, lines: list, record: dict) -> None:
    """Train-step images/s, GFLOP/s and memory of the three models at one size, interleaved."""
    trainers = {label: Trainer(name, size, batch, device, args.precision, args.channels_last,
                               sparse=(name == 'slak_tiny'))
                for label, name in MODELS.items()}
    times = interleaved({k: t.step for k, t in trainers.items()}, args.warmup, args.steps, device, args.rewarm)
    rows, out = [], {}
    for label, t in trainers.items():
        sec = _median(times[label])
        ips = batch / sec
        gflops = ips * 6 * t.macs / 1e9
        if device.type == 'cuda':
            mem = cuda_step_memory(t)
        elif args.no_memory:
            mem = float('nan')
        else:
            mem = cpu_peak_memory(t.name, size, batch, args)
        out[label] = dict(model=t.name, images_per_s=ips, step_ms=1e3 * sec, gmacs_per_image=t.macs / 1e9,
                          gflop_per_s=gflops, peak_mib=mem)
        mem_text = '—' if mem != mem else f'{mem:.0f}'  # NaN: not measured (--no-memory)
        rows.append(f'| {label} (`{t.name}`) | {size} | {batch} | {1e3 * sec:.0f} | {ips:.1f} | {t.macs / 1e9:.2f} '
                    f'| {gflops:.1f} | {mem_text} |')
    ratio = out['SLaK-T']['images_per_s'] / out['timm ConvNeXt-T']['images_per_s']
    ratio_student = out['SLaK-T']['images_per_s'] / out['student ConvNeXt-T']['images_per_s']
    record[f'train_{size}'] = dict(batch=batch, models=out, slak_over_convnext=ratio,
                                   slak_over_student=ratio_student)
    lines += rows
    print('\n'.join(rows), flush=True)
    print(f'  SLaK-T / timm ConvNeXt-T images/s at {size}: {ratio:.2f}x (target {train_target(device, size)}); '
          f'SLaK-T / student: {ratio_student:.2f}x', flush=True)
    del trainers


def train_target(device: torch.device, size: int) -> str:
    """The SLaK-T / ConvNeXt-T training-speed target: >= 0.45x on a GPU in fp16; on CPU >= 0.6x at 32, 0.5x at 224."""
    if device.type == 'cuda':
        return '>= 0.45x'
    return '>= 0.6x' if size <= 32 else '>= 0.5x'


def bench_variant(variant: str, size: int, batch: int, args, device: torch.device, lines: list,
                  record: dict) -> None:
    """Training images/s of the three models in one variant (memory format x torch.compile), interleaved.

    A compiled model is compiled (its first step) before the timed rounds; a failure to compile is recorded as
    such for that model and the others go on."""
    channels_last, comp = parse_variant(variant)
    trainers, compile_s, failed = {}, {}, {}
    for label, name in MODELS.items():
        try:
            t = Trainer(name, size, batch, device, args.precision, channels_last, sparse=(name == 'slak_tiny'),
                        compile=comp)
        except Exception as exc:  # noqa: BLE001 - one model's compile error must not end the benchmark
            failed[label] = f'{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ""}'
            print(f'  {label} in {variant} at {size} failed: {failed[label]}', flush=True)
            continue
        trainers[label] = t
        compile_s[label] = t.compile_s
    times = interleaved({k: t.step for k, t in trainers.items()}, args.warmup, args.steps, device, args.rewarm)
    ips = {k: batch / _median(v) for k, v in times.items()}
    base = ((record.get('variants') or {}).get(args.primary_variant) or {}).get(str(size), {}).get('images_per_s', {})
    ratio = (ips['SLaK-T'] / ips['timm ConvNeXt-T']) if {'SLaK-T', 'timm ConvNeXt-T'} <= ips.keys() else None
    record.setdefault('variants', {}).setdefault(variant, {})[str(size)] = dict(
        batch=batch, images_per_s=ips, compile_s=compile_s, failed=failed, slak_over_convnext=ratio)

    def cell(label):
        if label in failed:
            return 'failed'
        vs = f' ({ips[label] / base[label]:.2f}x)' if base.get(label) and variant != args.primary_variant else ''
        return f'{ips[label]:.1f}{vs}'
    comp_text = ' / '.join('—' if compile_s.get(k) is None else f'{compile_s[k]:.0f}' for k in MODELS) if comp else ''
    row = (f'| {variant} | {size} | {batch} | ' + ' | '.join(cell(k) for k in MODELS)
           + f' | {"—" if ratio is None else f"**{ratio:.2f}x**"} | {comp_text} |')
    lines.append(row)
    print(row, flush=True)
    del trainers
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def bench_fast_backward(size: int, batch: int, args, device: torch.device, lines: list, record: dict) -> None:
    """SLaK-T train step with the exact CPU depthwise backward on and off (identical results)."""
    if device.type != 'cpu':
        return
    runs = {on: Trainer('slak_tiny', size, batch, device, args.precision, args.channels_last, sparse=True,
                        fast_backward=on) for on in (False, True)}
    times = interleaved({on: t.step for on, t in runs.items()}, args.warmup, args.steps, device, args.rewarm)
    off, on = _median(times[False]), _median(times[True])
    record[f'fast_backward_{size}'] = dict(batch=batch, off_ms=1e3 * off, on_ms=1e3 * on, speedup=off / on)
    row = f'| {size} | {batch} | {1e3 * off:.0f} | {1e3 * on:.0f} | {off / on:.2f}x |'
    lines.append(row)
    print(row, flush=True)


def bench_optimizer(args, device: torch.device, lines: list, record: dict) -> None:
    """One AdamW step over SLaK-T's and ConvNeXt-T's parameters in each PyTorch implementation."""
    out = {}
    for label in ('SLaK-T', 'timm ConvNeXt-T'):
        torch.manual_seed(0)
        model = build_model(MODELS[label], num_classes=NUM_CLASSES).to(device)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opts = {impl: make_adamw(model, impl) for impl in OPTIMIZER_IMPLS}
        times = interleaved({impl: o.step for impl, o in opts.items()}, args.warmup, args.steps, device,
                            args.rewarm)
        ms = {impl: 1e3 * _median(v) for impl, v in times.items()}
        out[label] = ms
        row = (f'| {label} | {sum(p.numel() for p in model.parameters()) / 1e6:.2f} | {ms["loop"]:.1f} | '
               f'{ms["foreach"]:.1f} | {ms["fused"]:.1f} | {ms["loop"] / ms["fused"]:.2f}x |')
        lines.append(row)
        print(row, flush=True)
        del opts, model
    record['optimizer_step_ms'] = out


CEILING = 'SLaK-T, large-kernel path skipped (bound)'


def without_large_kernels(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a SLaK model whose depthwise large-kernel paths are identities: not a usable network, but the
    speed any deploy form could reach if its large-kernel convs cost nothing (everything else is shared)."""
    net = copy.deepcopy(model)
    for block in net.modules():
        if isinstance(getattr(block, 'large_kernel', None), ReparamLargeKernelConv):
            block.large_kernel = torch.nn.Identity()
    return net


def bench_eval(size: int, batch: int, args, device: torch.device, lines: list, record: dict) -> None:
    """Inference images/s of SLaK-T's training form (eval mode) and its deploy forms, ConvNeXt-T for scale."""
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    slak = build_model('slak_tiny', num_classes=NUM_CLASSES, img_size=size).to(device, memory_format=fmt).eval()
    nets = {'SLaK-T training form': slak,
            'SLaK-T deploy (strips)': reparameterize(copy.deepcopy(slak)),
            'SLaK-T deploy (dense M x M)': reparameterize(copy.deepcopy(slak), dense=True),
            CEILING: without_large_kernels(slak),
            'timm ConvNeXt-T': build_model('convnext_tiny', num_classes=NUM_CLASSES).to(
                device, memory_format=fmt).eval()}
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    with torch.inference_mode():
        def forward(net):
            with _autocast(device, args.precision):
                net(x)
        times = interleaved({k: (lambda n=n: forward(n)) for k, n in nets.items()}, args.warmup, args.steps,
                            device, args.rewarm)
    ips = {k: batch / _median(v) for k, v in times.items()}
    base = ips['SLaK-T training form']
    record[f'eval_{size}'] = dict(batch=batch, images_per_s=ips,
                                  deploy_over_training=ips['SLaK-T deploy (strips)'] / base,
                                  ceiling_over_training=ips[CEILING] / base)
    for k, v in ips.items():
        row = f'| {k} | {size} | {batch} | {v:.1f} | {v / base:.2f}x |'
        lines.append(row)
        print(row, flush=True)


def bench_teacher(size: int, batch: int, args, device: torch.device, lines: list, record: dict) -> None:
    """Teacher forward cost in distillation (SLaK-T teacher, paper's ConvNeXt-T student) per batch."""
    from repro.distill import Teacher
    torch.manual_seed(0)
    amp = _amp_dtype(args.precision)
    base = build_model('slak_tiny', num_classes=NUM_CLASSES, img_size=size).to(device).eval()
    released = base  # the released KD loop: eval mode, autograd on, training form
    teachers = {'plain forward, autograd on (released KD loop)': None,
                'Teacher, training form, inference mode': Teacher(copy.deepcopy(base), deploy=False,
                                                                  channels_last=args.channels_last, amp_dtype=amp),
                'Teacher, deploy form, inference mode': Teacher(copy.deepcopy(base), deploy=True,
                                                                channels_last=args.channels_last, amp_dtype=amp)}
    student = Trainer('l2s_convnext_tiny', size, batch, device, args.precision, args.channels_last, sparse=False)
    x = student.x

    def plain():
        with _autocast(device, args.precision):
            out = released(x)
        out.sum()  # keeps the graph alive until here, as a loss would
    fns = {'student train step': student.step}
    for k, t in teachers.items():
        fns[k] = plain if t is None else (lambda t=t: t(x))
    times = interleaved(fns, args.warmup, args.steps, device, args.rewarm)
    step = _median(times['student train step'])
    out = {}
    for k, v in times.items():
        ms = 1e3 * _median(v)
        out[k] = ms
        share = '' if k == 'student train step' else f'{ms / (1e3 * step):.2f}x'
        row = f'| {k} | {size} | {batch} | {ms:.0f} | {share} |'
        lines.append(row)
        print(row, flush=True)
    record[f'teacher_{size}'] = dict(batch=batch, ms=out)


def bench_masking(size: int, batch: int, args, device: torch.device, lines: list, record: dict) -> None:
    """DynamicSparsity.step() against the train step (in this run's precision), via benchmarks/bench_sparse.py."""
    from bench_sparse import bench_size
    r = bench_size(model_name('slak_tiny'), size, batch, max(2, args.steps), 1, device, NUM_CLASSES,
                   precision=args.precision)
    record[f'masking_{size}'] = r
    row = (f'| {size} | {batch} | {r["step_ms"]:.0f} | {r["mask_ms"]:.2f} | {r["mask_pct"]:.2f}% | '
           f'{r["update_ms"]:.0f} | {r["update_pct_amortised"]:.3f}% |')
    lines.append(row)
    print(row, flush=True)


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward under 16-bit autocast (parameters and
    storages shared between saved tensors counted once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=dtype):
            model(x).float().sum()
    return sum(saved.values())


def bench_activation_memory(args, device: torch.device, lines: list, record: dict) -> None:
    """CPU stand-in for the GPU memory target: saved activations per 224x224 image under 16-bit autocast
    (bf16 here; fp16 saves the same sizes), scaled to batch 64, plus parameters, gradients and AdamW state."""
    out = {}
    for label, name in MODELS.items():
        torch.manual_seed(0)
        model = build_model(name, num_classes=1000, img_size=224).to(device).train()
        x = torch.randn(2, 3, 224, 224, device=device)
        per_image = saved_activation_bytes(model, x, torch.bfloat16) / 2
        state = 4 * sum(p.numel() * 4 for p in model.parameters())  # weights, gradients, two AdamW moments
        total = 64 * per_image + state
        out[label] = dict(activations_mib_per_image=per_image / MIB, batch64_gib=total / 2 ** 30)
        row = (f'| {label} (`{model_name(name)}`) | {per_image / MIB:.0f} | {64 * per_image / 2 ** 30:.2f} | '
               f'{state / 2 ** 30:.2f} | {total / 2 ** 30:.2f} |')
        lines.append(row)
        print(row, flush=True)
        del model
    record['activation_memory_224'] = out


def reserved_peak(device: torch.device, batch: int, channels_last: bool, cap_bytes: float | None) -> dict:
    """Peak reserved and allocated bytes over two fp16 training steps of SLaK-T at 224 (sparse, as the recipe),
    alone on the device; `cap_bytes` limits the caching allocator (torch.cuda.set_per_process_memory_fraction)
    as a smaller card would, so cuDNN's autotuner only picks algorithms whose workspace fits."""
    total = torch.cuda.get_device_properties(device).total_memory
    gc.collect()
    torch.cuda.empty_cache()
    if cap_bytes is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
    torch.cuda.reset_peak_memory_stats(device)
    out = dict(cap_bytes=cap_bytes, ok=True, error=None)
    t = None
    try:
        t = Trainer('slak_tiny', 224, batch, device, 'fp16', channels_last, sparse=True)
        for _ in range(2):  # the first step autotunes (cudnn.benchmark) and creates the AdamW state
            t.step()
        torch.cuda.synchronize(device)
    except torch.cuda.OutOfMemoryError as exc:
        out.update(ok=False, error=str(exc).splitlines()[0][:200])
    finally:
        out.update(reserved=torch.cuda.max_memory_reserved(device), allocated=torch.cuda.max_memory_allocated(device))
        del t
        gc.collect()
        torch.cuda.empty_cache()
        if cap_bytes is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    return out


def cuda_memory_check(args, device: torch.device, lines: list, record: dict) -> None:
    """SLaK-T training at 224 with batch 64 in fp16: peak reserved memory, against 15 GB (a T4) and this device."""
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    batch = args.memory_batch
    runs = {'uncapped': reserved_peak(device, batch, args.channels_last, None),
            'capped at 15 GB': reserved_peak(device, batch, args.channels_last, T4_BUDGET_BYTES)}
    record['cuda_memory_224'] = dict(batch=batch, free_bytes=free, total_bytes=total, budget_bytes=T4_BUDGET_BYTES,
                                     runs=runs)
    gib = 2 ** 30
    fmt = 'channels_last' if args.channels_last else 'NCHW'
    lines += [f'SLaK-T at 224, batch {batch}, fp16 AMP + GradScaler, {fmt}'
              f', cudnn.benchmark {"on" if torch.backends.cudnn.benchmark else "off"}: this device has '
              f'{total / gib:.1f} GiB (`total_memory`), {free / gib:.1f} GiB free before the run (`mem_get_info`); '
              f'target: peak reserved within 15 GB ({T4_BUDGET_BYTES / gib:.2f} GiB), what a T4 leaves a process.', '',
              '| run | peak reserved GiB | peak allocated GiB | within 15 GB | fits this device |',
              '|---|---|---|---|---|']
    for label, r in runs.items():
        within = r['ok'] and r['reserved'] <= T4_BUDGET_BYTES
        status = 'yes' if within else ('**no**' if r['ok'] else f'**no** (out of memory: {r["error"]})')
        lines.append(f'| {label} | {r["reserved"] / gib:.2f} | {r["allocated"] / gib:.2f} | {status} | '
                     f'{"yes" if r["ok"] and r["reserved"] <= free else "no"} |')
    lines.append('')
    print('\n'.join(lines[-6:]), flush=True)


OPS_MODELS = {'SLaK-T': 'slak_tiny', 'student ConvNeXt-T': 'l2s_convnext_tiny'}


def bench_ops(args, device: torch.device, lines: list, record: dict) -> None:
    """Operators per train step (forward, backward, fused AdamW, masks, loss statistics) of SLaK-T and the
    student, eager (dispatched aten ops) and under torch.compile (kernel calls in the generated code)."""
    from bench_models import compiled_launches, count_dispatched, profiled_kernels
    allow_many_compilations()
    batch = args.ops_batch
    low = 'fp16' if device.type == 'cuda' else 'bf16'  # the 16-bit autocast a GPU run uses; bf16 on CPU
    out = {}
    for label, name in OPS_MODELS.items():
        for size in args.sizes:
            key = f'{name}_{size}'
            # fast_backward off: the CPU-only depthwise backward is not what a GPU runs.
            common = dict(size=size, batch=batch, device=device, channels_last=args.channels_last,
                          sparse=(name == 'slak_tiny'), fast_backward=False)
            eager = Trainer(name, precision=args.precision, **common)
            eager.step()  # optimizer state exists from here on, as in every later step
            step = count_dispatched(eager.step)
            graph = count_dispatched(eager.forward_backward)  # the region torch.compile replaces
            eager.opt.zero_grad(set_to_none=True)
            r = dict(model=model_name(name), size=size, batch=batch, eager=step, eager_graph=graph,
                     outside_graph=step['compute'] - graph['compute'])
            if args.precision != low:
                amp = Trainer(name, precision=low, **common)
                amp.step()
                r['eager_16bit'] = dict(count_dispatched(amp.step), precision=low)
                del amp
            if device.type == 'cuda':
                r['eager_profiled'] = profiled_kernels(eager.step, device)
            del eager
            if size in args.ops_compile_sizes:
                try:
                    comp = Trainer(name, precision=args.precision, compile=True, warm=False, **common)
                    start = time.perf_counter()
                    launches = compiled_launches(comp.step)  # the first step compiles the forward and backward
                    r['compile_s'] = time.perf_counter() - start
                    launches['step'] = launches['launches'] + r['outside_graph']
                    r['compiled'] = launches
                    if device.type == 'cuda':
                        comp.step()
                        r['compiled_profiled'] = profiled_kernels(comp.step, device)
                    del comp
                except Exception as exc:  # noqa: BLE001 - recorded, the eager figures stand
                    r['compiled_error'] = f'{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ""}'
            out[key] = r
            gc.collect()
            compiled = r.get('compiled')
            amp_text = (f'{r["eager_16bit"]["total"]} / {r["eager_16bit"]["compute"]}' if 'eager_16bit' in r else '—')
            if compiled:
                comp_text = (f'{compiled["step"]} ({compiled["generated"]} generated + {compiled["extern"]} extern + '
                             f'{compiled["fallback"]} aten in {compiled["graphs"]} graphs, + {r["outside_graph"]} '
                             f'outside)')
                loops = str(compiled['kernel_objects'])
                cut = f'{step["total"] / compiled["step"]:.1f}x / {step["compute"] / compiled["step"]:.1f}x'
                hits = compiled.get('cache_hits', 0)
                cached = f' ({hits} of {compiled["graphs"]} graphs from cache)' if hits else ''
                secs = f'{r["compile_s"]:.0f}{cached}'
            else:
                comp_text = 'failed: ' + r['compiled_error'] if 'compiled_error' in r else 'not compiled'
                loops = cut = secs = '—'
            row = (f'| {label} (`{model_name(name)}`) | {size} | {batch} | {step["total"]} | {step["compute"]} | '
                   f'{step["view"]} | {step["allocation"] + step["bookkeeping"]} | {amp_text} | {comp_text} | '
                   f'{loops} | {cut} | {secs} |')
            if device.type == 'cuda':
                prof_e = r['eager_profiled']['kernels']
                prof_c = r.get('compiled_profiled', {}).get('kernels')
                row += f' {prof_e} | {"—" if prof_c is None else prof_c} |'
            lines.append(row)
            print(row, flush=True)
            record['ops'] = out
            _dump_json(args, record)
    slak32 = out.get('slak_tiny_32') or next(iter(out.values()))
    record['ops_top'] = slak32['eager']['top_compute']


def ops_section(args, device: torch.device, rows: list, record: dict) -> list:
    """The Markdown of the operators-per-step section."""
    low = 'fp16' if device.type == 'cuda' else 'bf16'
    cuda_cols = ' GPU kernels, eager (profiler) | GPU kernels, compiled (profiler) |' if device.type == 'cuda' else ''
    top = ', '.join(f'{k} {v}' for k, v in record.get('ops_top', []))
    slak = (record.get('ops') or {}).get('slak_tiny_32', {})
    headline = ''
    if slak.get('compiled'):
        headline = (f'SLaK-T at 32x32 (target: compiled count at most half of eager\'s ~1700): eager '
                    f'**{slak["eager"]["total"]}** aten ops per step ({slak["eager"]["compute"]} of them compute), '
                    f'compiled **{slak["compiled"]["step"]}** kernel calls: '
                    f'**{slak["eager"]["total"] / slak["compiled"]["step"]:.1f}x** fewer '
                    f'({slak["eager"]["compute"] / slak["compiled"]["step"]:.1f}x against the compute ops alone).')
    return [
        '### Operators per train step' + (' (CUDA)' if device.type == 'cuda' else ''), '',
        f'Written by `{args.command.strip()}` on {args.when}; {machine_line(device)}; precision {args.precision}; '
        f'{"channels_last" if args.channels_last else "NCHW"}.'
        + (' DRY RUN on tiny stand-in models: the counts mean nothing.' if args.tiny_models else ''), '',
        *( [headline, ''] if headline else []),
        'One step as `repro train` runs it (forward, cross-entropy, loss statistics on the device, backward, fused '
        'AdamW; SLaK-T also re-applies its 40% masks), batch as shown, the CUDA code path (the CPU-only depthwise '
        'backward off). **Eager**: aten operators dispatched below autograd and autocast, counted with a '
        'TorchDispatchMode (`bench_models.count_dispatched`); on a GPU every *compute* operator launches at least one '
        'kernel, views/metadata (`detach`, `view`, `t`, `permute`, `slice`, ...) and allocations launch none. At '
        '32x32 a SLaK-T kernel does microseconds of work, so the launches (each costs the host microseconds), not '
        'the FLOPs, bound the step. '
        f'**16-bit**: the same step under {low} autocast (its casts are kernels too). '
        '**Compiled**: `train.compile=student` (torch.compile of the TrainModule, `dynamic=False`); the kernel calls '
        'in the code inductor generates for the forward and backward graphs (`torch._inductor.utils.'
        'run_and_get_code` captures it; `bench_models.launches_in_code` counts the calls of generated kernels, '
        'extern kernels such as convolutions and matrix products, and aten fallbacks in the wrapper\'s `call`, '
        'which runs each line once per step), plus the compute operators outside the graphs (loss statistics, '
        'GradScaler, optimizer, masks, the same as eager). On CPU one generated C++ function runs a whole stretch '
        'of fused operators between two extern calls (several loop nests, one call); on CUDA a Triton kernel is one '
        'loop nest, so the same graphs launch more kernels there than the CPU call count. '
        '**Kernel objects**: `torch._inductor.metrics.generated_kernel_count`, every kernel the code generator '
        'built: on CPU the scalar, vectorised and tail variants of each loop nest (no launch count), on CUDA the '
        'Triton kernels. **Compile s**: the first compiled step; graphs found in inductor\'s on-disk cache load '
        'in seconds, a cold compile takes minutes on a small CPU.' +
        (' **GPU kernels**: the kernels the GPU ran in one step, from torch.profiler\'s trace (memcpy/memset '
         'excluded).' if device.type == 'cuda' else ''), '',
        '| model | size | batch | eager aten ops | compute | views | allocations | '
        f'{low} autocast: ops / compute | compiled: kernel calls per step | kernel objects | eager / compiled (all / '
        f'compute) | compile s |{cuda_cols}',
        '|---|---|---|---|---|---|---|---|---|---|---|---|' + ('---|---|' if device.type == 'cuda' else ''),
        *rows, '',
        f'Most frequent compute operators of SLaK-T\'s eager step at 32: {top}.', '']


def bench_suite(lines: list, record: dict) -> None:
    """Wall time of `python -m repro quickstart` (fresh folders) and of the fast test suite."""
    import importlib.util
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    if importlib.util.find_spec('repro.quickstart') is None:
        lines.append('- `python -m repro quickstart`: not measured (the command does not exist yet).')
    else:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            rc = subprocess.run([sys.executable, '-m', 'repro', 'quickstart', '--out', f'{tmp}/runs',
                                 '--results', f'{tmp}/results'], cwd=ROOT, env=env, capture_output=True).returncode
            wall = time.perf_counter() - start
        record['quickstart'] = dict(wall_s=wall, returncode=rc)
        lines.append(f'- `python -m repro quickstart` (fresh output folders): {wall:.0f} s, exit status {rc}.')
    print(lines[-1], flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-m', 'not slow', 'tests', '--durations=10', '-p',
                           'no:cacheprovider'], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    summary = [ln for ln in proc.stdout.splitlines() if re.search(r'\d+ (passed|failed|error)', ln)]
    slowest = [ln.strip() for ln in proc.stdout.splitlines() if re.match(r'\s*[\d.]+s (call|setup|teardown)', ln)]
    record['test_suite'] = dict(wall_s=wall, returncode=proc.returncode, summary=summary[-1:] if summary else [],
                                slowest=slowest)
    lines.append(f'- `pytest -q -m "not slow" tests`: {wall:.0f} s, exit status {proc.returncode} '
                 f'({summary[-1].strip("= ") if summary else "no summary line"}). Slowest:')
    lines += [f'  - `{s}`' for s in slowest]
    print('\n'.join(lines[-1 - len(slowest):]), flush=True)


# ------------------------------------------------------------------------------------------------ README
def machine_line(device: torch.device) -> str:
    """Device, torch version and CPU threads, for the results header."""
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}'
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return (f'CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, '
            f'oneDNN {"on" if torch.backends.mkldnn.is_available() else "off"}')


def replace_section(text: str, key: str, body: str) -> str:
    """Replace (or append) the block between <!-- results:key --> and <!-- /results:key -->."""
    begin, end = f'<!-- results:{key} -->', f'<!-- /results:{key} -->'
    block = f'{begin}\n{body.rstrip()}\n{end}'
    if begin in text and end in text:
        return text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    return text.rstrip() + '\n\n' + block + '\n'


def write_readme(key: str, body: str, path: Path = README) -> None:
    """Rewrite the block `key` of the results file `path` (benchmarks/README.md unless --readme says otherwise)."""
    path = Path(path)
    text = path.read_text() if path.exists() else '# Benchmarks\n'
    text = replace_section(text, key, body)
    if key == 'cpu' and '<!-- results:cuda -->' not in text:
        text = replace_section(text, 'cuda', '### CUDA\n\nNot measured here: the machine that ran the benchmarks '
                                              'had no CUDA device. Run `python benchmarks/run_all.py --device cuda '
                                              '--precision fp16` on a GPU to fill this section.')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _dump_json(args, record: dict) -> None:
    """Write the raw numbers so far (after every section, so a run stopped by a time limit leaves its figures)."""
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))


# ------------------------------------------------------------------------------------------------ main
def write_suite_section(command: str, device: torch.device, lines: list, path: Path = README) -> None:
    """Rewrite the quickstart and test-suite section of benchmarks/README.md."""
    when = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    write_readme('suite', '\n'.join(['### Quickstart and test suite', '',
                                     f'Written by `{command.strip()}` on {when}; {machine_line(device)}.', '',
                                     *lines]), path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='small batches (16 at 32 px, 2 at 224 px), 2 steps')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--batch-32', type=int, default=None, help='batch at 32x32 (default 64; --quick 16)')
    parser.add_argument('--batch-224', type=int, default=None, help='batch at 224x224 (default 4 on CPU, 64 on '
                                                                    'CUDA; --quick 2)')
    parser.add_argument('--steps', type=int, default=None, help='timed rounds (default 3; --quick 2)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first (default 1)')
    parser.add_argument('--rewarm', type=int, default=1, help='untimed calls of the same step before each timed '
                                                              'one (default 1; 0: strict alternation)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s own)')
    parser.add_argument('--channels-last', action='store_true', help='models and inputs in NHWC memory format')
    parser.add_argument('--precision', choices=['fp32', 'fp16', 'bf16'], default=None,
                        help='autocast precision (default: fp16 on CUDA, fp32 on CPU; fp16 needs CUDA)')
    parser.add_argument('--sizes', type=int, nargs='+', default=[32, 224], choices=[32, 224])
    parser.add_argument('--variants', nargs='*', default=None, choices=VARIANTS,
                        help='training variants timed after the main table (memory format x torch.compile); '
                             'default on CUDA: all four, on CPU: none')
    parser.add_argument('--cudnn-benchmark', choices=['on', 'off'], default='on',
                        help='CUDA: let cuDNN autotune its algorithms, as the engine does unless '
                             'train.deterministic (default on)')
    parser.add_argument('--memory-batch', type=int, default=64, help='CUDA: batch of the 224 memory check (64)')
    parser.add_argument('--no-memory', action='store_true', help='skip the CPU memory probes (child processes)')
    parser.add_argument('--only-training', action='store_true',
                        help='only the training tables (main and variants): no optimizer, inference, teacher, '
                             'masking or memory sections')
    parser.add_argument('--tiny-models', action='store_true',
                        help='dry run: every section on small stand-ins (slak_micro, l2s_convnext_micro, '
                             'convnext_atto) instead of the T-sized models; figures mean nothing')
    parser.add_argument('--include-ops', action='store_true',
                        help='also count the operators per train step, eager and compiled (minutes on CPU)')
    parser.add_argument('--ops-only', action='store_true',
                        help='only count the operators per train step (rewrites that README section alone)')
    parser.add_argument('--ops-batch', type=int, default=2, help='batch of the operator counts (default 2)')
    parser.add_argument('--ops-compile-sizes', type=int, nargs='*', default=[32],
                        help='sizes at which the operator counts also compile the step (default 32; compiling '
                             'SLaK-T takes minutes on a CPU)')
    parser.add_argument('--include-suite', action='store_true',
                        help='also time `python -m repro quickstart` and `pytest -m "not slow" tests` (minutes)')
    parser.add_argument('--suite-only', action='store_true',
                        help='only time the quickstart and the test suite (rewrites that README section alone)')
    parser.add_argument('--no-readme', action='store_true', help='print only; leave benchmarks/README.md alone')
    parser.add_argument('--readme', default=str(README),
                        help='the results file whose marked sections are rewritten (default benchmarks/README.md)')
    parser.add_argument('--json', default=None, help='also write the raw numbers to this JSON file')
    parser.add_argument('--_memory-probe', nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny_models:
        _substitutes.update(STAND_INS)
    if args._memory_probe:
        args.precision = args.precision or 'fp32'
        name, size, batch = args._memory_probe
        memory_probe(name, int(size), int(batch), args)
        return 0

    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda asked for, but torch sees no CUDA device; use --device cpu.')
    args.precision = args.precision or ('fp16' if device.type == 'cuda' else 'fp32')
    if args.precision == 'fp16' and device.type != 'cuda':
        parser.error('--precision fp16 needs a CUDA device; use fp32 or bf16 on CPU.')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = args.cudnn_benchmark == 'on'
    readme = Path(args.readme)
    args.command = 'python benchmarks/run_all.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    command = args.command
    args.when = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    if args.suite_only:
        suite, record = [], {}
        print('-- quickstart and test suite', flush=True)
        bench_suite(suite, record)
        if not args.no_readme:
            write_suite_section(command, device, suite, readme)
        _dump_json(args, record)
        return 0
    if args.ops_only:
        rows, record = [], dict(device=str(device), machine=machine_line(device), torch=torch.__version__,
                                precision=args.precision)
        print('-- operators per train step', flush=True)
        bench_ops(args, device, rows, record)
        if not args.no_readme:
            write_readme('ops-cuda' if device.type == 'cuda' else 'ops', '\n'.join(ops_section(args, device, rows,
                                                                                              record)), readme)
            print(f'results written to {readme}')
        _dump_json(args, record)
        return 0
    quick = args.quick
    batch = {32: args.batch_32 or (16 if quick else 64),
             224: args.batch_224 or (2 if quick else (64 if device.type == 'cuda' else 4))}
    args.steps = args.steps or (2 if quick else 3)
    args.primary_variant = 'channels_last' if args.channels_last else 'nchw'
    variants = list(VARIANTS) if args.variants is None and device.type == 'cuda' else list(args.variants or [])
    if any(parse_variant(v)[1] for v in variants):
        allow_many_compilations()
    started = time.perf_counter()
    header = (('DRY RUN on tiny stand-in models (' + ', '.join(STAND_INS.values()) + '): the figures mean nothing. '
               if args.tiny_models else '')
              + f'{machine_line(device)}; precision {args.precision}'
              + (' (autocast + GradScaler)' if args.precision == 'fp16' else '')
              + (f'; cudnn.benchmark {args.cudnn_benchmark}' if device.type == 'cuda' else '')
              + f'; memory format {"channels_last" if args.channels_last else "contiguous (NCHW)"}; {args.warmup} '
              f'warm-up + {args.steps} timed rounds, each timed call after {args.rewarm} untimed call(s) of the same '
              f'step; median.')
    load = os.getloadavg() if hasattr(os, 'getloadavg') else None
    print(header, flush=True)
    record = dict(device=str(device), machine=machine_line(device), torch=torch.__version__,
                  precision=args.precision, channels_last=args.channels_last, batch=batch, steps=args.steps,
                  warmup=args.warmup, load_before=load, cudnn_benchmark=args.cudnn_benchmark)

    train, fast, optim, evals, teach, mask, extra, suite, ops = [], [], [], [], [], [], [], [], []
    variant_rows = []
    for size in args.sizes:
        print(f'-- training at {size}x{size}, batch {batch[size]}', flush=True)
        bench_training(size, batch[size], args, device, train, record)
        primary = record.setdefault('variants', {}).setdefault(args.primary_variant, {})
        trained = record[f'train_{size}']
        primary[str(size)] = dict(batch=batch[size], compile_s={}, failed={},
                                  images_per_s={k: v['images_per_s'] for k, v in trained['models'].items()},
                                  slak_over_convnext=trained['slak_over_convnext'])
        _dump_json(args, record)
    if variants:
        for variant in [v for v in variants if v != args.primary_variant]:
            for size in args.sizes:
                print(f'-- training variant {variant} at {size}x{size}, batch {batch[size]}', flush=True)
                bench_variant(variant, size, batch[size], args, device, variant_rows, record)
                _dump_json(args, record)
    full = not args.only_training
    if device.type == 'cpu' and full:
        for size in args.sizes:
            print(f'-- SLaK-T CPU depthwise backward off/on at {size}', flush=True)
            bench_fast_backward(size, batch[size], args, device, fast, record)
    if full:
        print('-- AdamW step: per-tensor loop, foreach, fused', flush=True)
        bench_optimizer(args, device, optim, record)
        _dump_json(args, record)
        for size in args.sizes:
            print(f'-- inference at {size}', flush=True)
            bench_eval(size, batch[size], args, device, evals, record)
        _dump_json(args, record)
        for size in args.sizes:
            print(f'-- teacher cost at {size}', flush=True)
            bench_teacher(size, batch[size], args, device, teach, record)
        _dump_json(args, record)
        for size in args.sizes:
            print(f'-- masking at {size}', flush=True)
            bench_masking(size, batch[size], args, device, mask, record)
        _dump_json(args, record)
    if full and device.type == 'cuda':
        print(f'-- peak reserved memory, SLaK-T at 224, batch {args.memory_batch}, fp16', flush=True)
        extra += ['**Memory at 224** (peak reserved by the caching allocator over two training steps, the first '
                  'autotuning; uncapped, and with the allocator capped at 15 GB by '
                  '`torch.cuda.set_per_process_memory_fraction`, so cuDNN only picks algorithms whose workspace fits, '
                  'as on a T4):', '']
        cuda_memory_check(args, device, extra, record)
        _dump_json(args, record)
    elif full and 224 in args.sizes:
        print('-- saved activations at 224 under 16-bit autocast', flush=True)
        actmem = []
        bench_activation_memory(args, device, actmem, record)
        extra += ['**Activation memory at 224** (the GPU target is SLaK-T batch 64 at 224 within 15 GB reserved '
                  'with fp16 AMP; measured on CUDA by `--device cuda`; here the tensors autograd saves for backward '
                  'are counted under bf16 autocast on CPU, which keeps the same sizes as fp16; allocator overhead, '
                  'cuDNN workspaces and backward temporaries come on top):', '',
                  '| model | saved MiB / image | batch 64 GiB | weights + grads + AdamW GiB | sum GiB |',
                  '|---|---|---|---|---|', *actmem, '']
    if args.include_ops:
        print('-- operators per train step', flush=True)
        bench_ops(args, device, ops, record)
    if args.include_suite:
        print('-- quickstart and test suite', flush=True)
        bench_suite(suite, record)
    wall = time.perf_counter() - started
    record['wall_s'] = wall

    when = args.when
    ratios = ', '.join(f'{s}x{s}: **{record[f"train_{s}"]["slak_over_convnext"]:.2f}x** (target '
                       f'{train_target(device, s)})' for s in args.sizes)
    deploy = ', '.join(f'{s}x{s}: **{record[f"eval_{s}"]["deploy_over_training"]:.2f}x**' for s in args.sizes
                       if f'eval_{s}' in record)
    ceiling = ', '.join(f'{s}x{s}: {record[f"eval_{s}"]["ceiling_over_training"]:.2f}x' for s in args.sizes
                        if f'eval_{s}' in record)
    title = 'CUDA' if device.type == 'cuda' else 'CPU'
    body = [f'### {title}', '',
            f'Written by `{command.strip()}` on {when} in {wall / 60:.1f} min. {header}'
            + (f' Load average before the run: {load[0]:.2f} (other processes share the machine; the ratios '
               f'come from interleaved steps in one process).' if load else ''), '',
            f'SLaK-T / timm ConvNeXt-T training images/s: {ratios}.'
            + (f' Deploy (strips) / training form at inference (target >= 1.3x): {deploy}; the bound for any deploy '
               f'form (large-kernel path skipped, the rest shared): {ceiling}.' if deploy else ''), '',
            '**Training step** (as `repro train` runs it: forward, cross-entropy, device-side loss statistics, '
            'backward' + (' scaled by GradScaler' if args.precision == 'fp16' else '') + ', fused AdamW; SLaK-T also '
            're-applies its 40% sparse masks). '
            'GFLOP/s = images/s x 6 x forward MACs as executed; memory: ' +
            ('allocator peak growth during a step plus parameters and optimizer state.' if device.type == 'cuda'
             else 'peak resident-set (VmHWM) growth of a child process over 2 steps.'), '',
            '| model | size | batch | ms/step | images/s | GMACs/image | GFLOP/s | peak MiB |',
            '|---|---|---|---|---|---|---|---|', *train, '']
    if variant_rows:
        primary_rows = []
        for size in args.sizes:
            v = record['variants'][args.primary_variant][str(size)]
            primary_rows.append(f'| {args.primary_variant} | {size} | {v["batch"]} | '
                                + ' | '.join(f'{v["images_per_s"][k]:.1f}' for k in MODELS)
                                + f' | **{v["slak_over_convnext"]:.2f}x** |  |')
        body += ['**Training variants** (images/s; in brackets against the first row\'s at the same size; '
                 '`+compile`: torch.compile of the train step\'s module, as `train.compile=student`, compile seconds '
                 'of the first step per model; all in this process, interleaved within each variant):', '',
                 '| variant | size | batch | ' + ' | '.join(MODELS) + ' | SLaK-T / ConvNeXt-T | compile s |',
                 '|---|---|---|---|---|---|---|---|', *primary_rows, *variant_rows, '']
    if fast:
        body += ['**Exact CPU depthwise backward** (`LargeKernelConv2d.fast_backward`; weight gradient as a depthwise '
                 'forward conv, input gradient as a flipped-kernel conv), SLaK-T train step:', '',
                 '| size | batch | off ms | on ms | speed-up |', '|---|---|---|---|---|', *fast, '']
    if optim:
        body += ['**Optimizer step** (AdamW over all parameters, gradients present; `train.fused_optimizer`, on by '
                 'default, picks the fused kernel):', '',
                 '| model | params M | loop ms | foreach ms | fused ms | fused speed-up |', '|---|---|---|---|---|---|',
                 *optim, '']
    if evals:
        body += ['**Inference** (eval mode, inference mode; the deploy forms fold BatchNorm and merge '
                 'branches; the "bound" row skips every large-kernel path, which no exact deploy form can beat):', '',
                 '| form | size | batch | images/s | vs training form |', '|---|---|---|---|---|', *evals, '',
                 '**Teacher cost in distillation** (SLaK-T teacher, per batch, next to a step of the paper\'s '
                 'ConvNeXt-T student):', '',
                 '| what | size | batch | ms | vs student step |', '|---|---|---|---|---|', *teach, '',
                 '**Dynamic-sparsity masking** (`benchmarks/bench_sparse.py`, SLaK-T, official recipe, steps in '
                 f'{args.precision}): mask = `DynamicSparsity.step()` without an update; update = one '
                 'prune-and-regrow, spread over its interval.', '',
                 '| size | batch | step ms | mask ms | mask / step | update ms | update amortised |',
                 '|---|---|---|---|---|---|---|', *mask, '']
    body += extra
    if not args.no_readme:
        write_readme(device.type, '\n'.join(body), readme)
        if ops:
            write_readme('ops-cuda' if device.type == 'cuda' else 'ops', '\n'.join(ops_section(args, device, ops,
                                                                                              record)), readme)
        if suite:
            write_suite_section(command, device, suite, readme)
        print(f'results written to {readme}')
    _dump_json(args, record)
    return 0


if __name__ == '__main__':
    sys.exit(main())
