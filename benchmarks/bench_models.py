"""Speed of exact kernel cropping and of the deploy forms, and what a training step executes, on whatever
device is at hand.

    python benchmarks/bench_models.py --model slak_tiny --img 32 --batch 16 --steps 5
    python benchmarks/bench_models.py --model slak_tiny --img 32 --ops        # operators per training step

Prints milliseconds per training step (forward + backward) with and without cropping, milliseconds per
inference forward for the training form, the strip deploy form and the dense M x M deploy form, and the
multiply-accumulates of each (nominal and as executed).

The operator counters below are what `run_all.py --ops-only` reports. A GPU launches one kernel (at least) per
aten operator that computes, whatever its size, so at 32x32 the launch count, not the FLOPs, sets a step's time:
  * `count_dispatched`: aten operators as dispatched below autograd and autocast (a TorchDispatchMode), split
    into compute (a kernel each on a GPU), views/metadata (no kernel) and allocations (no kernel);
  * `compiled_launches`: under torch.compile, the kernel calls in the code inductor generated for the step's
    graphs (captured with torch._inductor.utils.run_and_get_code): generated kernels, extern kernels (convs,
    matrix products) and aten fallbacks, one call each per execution (the wrapper code has no loops);
  * `profiled_kernels`: on CUDA, the kernels the GPU actually ran in one step (torch.profiler's trace).
"""
import argparse
import collections
import copy
import json
import re
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from repro.models import count_flops, create_model, reparameterize
from repro.models.slak import LargeKernelConv2d, ReparamLargeKernelConv


def set_cropping(model: torch.nn.Module, crop: bool) -> torch.nn.Module:
    """Turn kernel cropping on or off in every large-kernel conv."""
    for m in model.modules():
        if isinstance(m, LargeKernelConv2d):
            m.crop = crop
    return model


def timed(fn, steps: int, device: torch.device) -> float:
    """Milliseconds per call of fn, after one warm-up call."""
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / steps


# ------------------------------------------------------------------------------------- operators per step
# Operators that allocate or bookkeep without running a kernel (views are told by their schema: OpOverload.is_view).
ALLOCATIONS = {'empty', 'empty_strided', 'new_empty', 'new_empty_strided', 'empty_like'}
BOOKKEEPING = {'_record_function_enter_new', '_record_function_exit', 'lift_fresh', 'set_', 'resize_',
               '_has_compatible_shallow_copy_type', 'is_same_size', 'sym_size', 'sym_stride', 'sym_numel'}


def op_kind(func) -> str:
    """'view' (aliases its input: no kernel), 'allocation', 'bookkeeping' or 'compute' (a kernel on a GPU)."""
    name = func.overloadpacket.__name__
    if getattr(func, 'is_view', False) or name in ('view', 'detach', '_unsafe_view', '_reshape_alias'):
        return 'view'
    if name in ALLOCATIONS:
        return 'allocation'
    if name in BOOKKEEPING:
        return 'bookkeeping'
    return 'compute'


class DispatchCounter(TorchDispatchMode):
    """Counts the aten operators dispatched below autograd and autocast (the casts autocast adds included)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] += 1
        return func(*args, **(kwargs or {}))

    def summary(self, top: int = 8) -> dict:
        """Totals by kind and the most frequent compute operators."""
        kinds = collections.Counter()
        compute = collections.Counter()
        for func, n in self.counts.items():
            kind = op_kind(func)
            kinds[kind] += n
            if kind == 'compute':
                compute[func.overloadpacket.__name__] += n
        return dict(total=sum(self.counts.values()), compute=kinds['compute'], view=kinds['view'],
                    allocation=kinds['allocation'], bookkeeping=kinds['bookkeeping'],
                    top_compute=compute.most_common(top))


def count_dispatched(fn) -> dict:
    """Run fn() once under a DispatchCounter; its summary. Under torch.compile this counts nothing useful:
    dynamo runs a function eagerly while a dispatch mode is active, so use compiled_launches there."""
    counter = DispatchCounter()
    with counter:
        fn()
    return counter.summary()


_KERNEL_DEF = re.compile(r'^(\w+) = async_compile\.\w+\(', re.M)
_EXTERN = re.compile(r'\bextern_kernels\.(\w+)\(')
_ATEN = re.compile(r'\b(?:torch\.ops\.)?aten\.(\w+)\.\w+\(')
_NOT_KERNELS = {'as_strided', 'view', 'reshape', 'permute', 'expand', 'alias', 'detach', 't', 'empty',
                'empty_strided'}


def _call_body(code: str) -> list[str]:
    """The lines of the generated wrapper's `call` function (a method of Runner in recent torch, a module-level
    function before), where every kernel of the graph is launched once per execution."""
    lines = code.splitlines()
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith('def call(') and 'args' in stripped:
            indent = len(line) - len(stripped)
            body = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt)
            return body
    return []


def launches_in_code(code: str) -> dict:
    """Kernel calls in one graph's generated code: generated kernels (C++ on CPU, Triton on CUDA), extern
    kernels (convolutions, matrix products) and aten fallbacks; views, allocations and asserts excluded."""
    kernels = set(_KERNEL_DEF.findall(code))
    generated = extern = fallback = 0
    for line in _call_body(code):
        stmt = line.split('#', 1)[0].strip()
        if not stmt:
            continue
        head = re.match(r'(?:\w+(?:, \w+)* = )?(\w+)(?:\.run)?\(', stmt)
        if head and head.group(1) in kernels:
            generated += 1
            continue
        match = _EXTERN.search(stmt)
        if match:
            extern += 1
            continue
        match = _ATEN.search(stmt)
        if match and match.group(1) not in _NOT_KERNELS:
            fallback += 1
    return dict(generated=generated, extern=extern, fallback=fallback, defined=len(kernels))


def compiled_launches(fn) -> dict:
    """Kernel calls per execution of the graphs torch.compile builds when fn() runs for the first time
    (forward and backward graphs, summed), and inductor's own `generated_kernel_count`.

    On CPU inductor fuses a whole stretch of operators between two extern calls into one C++ function holding
    several loop nests (one call); `torch._inductor.metrics.generated_kernel_count` counts every kernel object
    the code generator built, which on CPU includes the scalar, vectorised and tail variants of each loop nest,
    so there it is no launch count. On CUDA one Triton kernel is one loop nest and one launch, and both numbers
    count launches."""
    from torch._dynamo.utils import counters
    from torch._inductor import metrics
    from torch._inductor.utils import run_and_get_code

    metrics.reset()
    hits = counters['inductor']['fxgraph_cache_hit']
    _, codes = run_and_get_code(fn)
    parts = [launches_in_code(c) for c in codes]
    total = {k: sum(p[k] for p in parts) for k in ('generated', 'extern', 'fallback', 'defined')}
    # A graph found in inductor's on-disk cache loads in seconds; a cold compile of SLaK-T takes minutes on a CPU.
    total.update(graphs=len(codes), kernel_objects=metrics.generated_kernel_count,
                 cache_hits=counters['inductor']['fxgraph_cache_hit'] - hits,
                 launches=total['generated'] + total['extern'] + total['fallback'])
    return total


def profiled_kernels(fn, device: torch.device) -> dict:
    """What one fn() ran, from torch.profiler's trace: on CUDA the kernels the GPU executed, the launch calls
    (cudaLaunchKernel and friends) and copies/memsets; on CPU (a dry run of the same code) the aten ops recorded."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with tempfile.TemporaryDirectory() as tmp:
        with profile(activities=activities) as prof:
            fn()
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
        path = Path(tmp) / 'trace.json'
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get('traceEvents', [])
    cats = collections.Counter(e.get('cat') for e in events if isinstance(e, dict))
    # cudaLaunchKernel (runtime API, eager kernels) and cuLaunchKernel (driver API, Triton's launcher)
    launch_calls = sum(1 for e in events if isinstance(e, dict) and e.get('cat') in ('cuda_runtime', 'cuda_driver')
                       and 'Launch' in str(e.get('name', '')))
    return dict(kernels=cats.get('kernel', 0), launch_calls=launch_calls,
                copies=cats.get('gpu_memcpy', 0) + cats.get('gpu_memset', 0), cpu_ops=cats.get('cpu_op', 0))


def _ops_report(model_name: str, img: int, batch: int, device: torch.device) -> None:
    """Print the operators of one training step (forward, backward, fused AdamW) of one model."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=100, img_size=img).to(device).train()
    for m in model.modules():  # the CUDA path: PyTorch's own depthwise backward
        if isinstance(m, LargeKernelConv2d):
            m.fast_backward = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, 3, img, img, device=device)
    y = torch.randint(0, 100, (batch,), device=device)

    def step():
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()
    s = count_dispatched(step)
    print(f'{model_name} img {img} batch {batch}: {s["total"]} aten ops per training step ({s["compute"]} compute, '
          f'{s["view"]} views, {s["allocation"]} allocations, {s["bookkeeping"]} bookkeeping)')
    print('  most frequent compute ops: ' + ', '.join(f'{k} {v}' for k, v in s['top_compute']))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='slak_tiny', help='a SLaK-skeleton model (slak_*, l2s_convnext_*)')
    parser.add_argument('--img', type=int, default=32, help='input size in pixels (default 32)')
    parser.add_argument('--batch', type=int, default=16, help='images per step (default 16)')
    parser.add_argument('--steps', type=int, default=5, help='timed calls after one warm-up (default 5)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--ops', action='store_true', help='only count the aten operators of one training step')
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.ops:
        _ops_report(args.model, args.img, args.batch, device)
        return
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=100, img_size=args.img).to(device)
    if not any(isinstance(m, ReparamLargeKernelConv) for m in model.modules()):
        parser.error(f'{args.model} has no large-kernel convs to crop or re-parameterize; pass a slak_* or '
                     'l2s_convnext_* model')
    decomposed = any(getattr(m, 'decom', False) for m in model.modules() if isinstance(m, ReparamLargeKernelConv))
    x = torch.randn(args.batch, 3, args.img, args.img, device=device)
    print(f'{args.model} img {args.img} batch {args.batch} on {device} ({torch.get_num_threads()} CPU threads)')

    def train_step(net):
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()

    for crop in (False, True):
        net = set_cropping(model, crop).train()
        ms = timed(lambda: train_step(net), args.steps, device)
        print(f'train step, cropping {"on " if crop else "off"}: {ms:8.1f} ms')
    print(f'MACs nominal {count_flops(model, args.img)["dense"] / 1e9:.3f} G, '
          f'as executed {count_flops(model, args.img, as_executed=True)["dense"] / 1e9:.3f} G')

    forms = {'training form': model.eval()}
    if decomposed:  # M x N + N x M strips, or everything merged into one M x M kernel
        forms.update({'deploy strips': reparameterize(copy.deepcopy(model).eval()),
                      'deploy dense': reparameterize(copy.deepcopy(model).eval(), dense=True)})
    else:  # one square kernel (plus BatchNorm) per block: a single deploy form
        forms['deploy'] = reparameterize(copy.deepcopy(model).eval())
    with torch.no_grad():
        for label, net in forms.items():
            ms = timed(lambda: net(x), args.steps, device)
            gmacs = count_flops(net, args.img, as_executed=True)['dense'] / 1e9
            print(f'inference, {label:13s}: {ms:8.1f} ms   {gmacs:.3f} GMACs as executed')


if __name__ == '__main__':
    main()
