"""One command that proves on a GPU what the CPU test suite cannot, and records every figure.

    make device-check                                   # = python benchmarks/device_check.py (at most 8 minutes)
    python benchmarks/device_check.py --only resume teacher-graph
    python benchmarks/device_check.py --device cpu --quick   # dry run of every stage on CPU (tiny models)

Stages, in order (each in its own process group with its own time limit; a stage that fails or runs out of
time is recorded as such and the next one starts; the whole check stops starting stages at --budget seconds):
  doctor         `repro doctor`: GPU, compute capability, cuDNN, total and free memory, precision picked
  gpu-tests      pytest: the tests that skip without CUDA, and tests/test_gpu_ready.py (run on the GPU here)
  run-all        benchmarks/run_all.py --device cuda: fp16 + GradScaler, cudnn.benchmark, NCHW and
                 channels_last, every section, the peak reserved memory of SLaK-T at batch 64 and 224
  resume         a 2-epoch SLaK-T run on a generated CIFAR-100-format dataset: straight, killed with SIGKILL
                 mid-epoch (REPRO_CRASH_AT) and resumed, with train.deterministic=true (final weight digests
                 compared) and with cudnn.benchmark (the resumed run must complete)
  teacher-graph  the frozen teacher's forward replayed from a CUDA graph (repro.train.graphs.GraphedForward)
                 against the eager Teacher: max abs difference of logits and feature map, and ms per forward
  pipeline       the process limited to 4 CPU cores, as on Kaggle: benchmarks/bench_augment.py (PIL loader vs
                 device path), and the student's training images/s with data.augment_on=cpu and =device
  compile        run_all.py training with channels_last, eager against torch.compile (train.compile=student)
  ops            run_all.py --ops-only: aten ops per step eager, kernel calls compiled, GPU kernels profiled
  slow-tests     pytest -m slow (the rest), in parallel when pytest-xdist is installed, with what time is left

Everything is written, after every stage, into a marked section of benchmarks/README.md headed with the GPU's
name and the date (--readme PATH elsewhere; a --quick run writes runs/device-check/README.md unless told).
Work files (logs, generated data, run folders) go to runs/device-check/ (--work DIR).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

README = ROOT / 'benchmarks' / 'README.md'
WORK = ROOT / 'runs' / 'device-check'
ANCHOR = '<!-- device-checks -->'  # new device sections go right after this line of the README
# (name, time limit on a GPU, time limit of a --quick dry run), in the order they run.
STAGES = [('doctor', 30, 60), ('gpu-tests', 75, 120), ('run-all', 120, 240), ('resume', 100, 240),
          ('teacher-graph', 40, 60), ('pipeline', 90, 180), ('compile', 150, 600), ('ops', 90, 600),
          ('slow-tests', 480, 60)]  # the slow tests get whatever the budget has left
ENV_SELECT = 'REPRO_DEVICE_CHECK_TESTS'  # 'gpu' or 'slow': which tests the pytest plugin below keeps


# ------------------------------------------------------------------------------------- pytest selection
def _needs_cuda(item) -> bool:
    """Whether a test is one that skips without CUDA (a skipif whose condition or reason names CUDA/GPU)."""
    for mark in item.iter_markers('skipif'):
        text = ' '.join(str(a) for a in mark.args) + ' ' + str(mark.kwargs.get('reason', ''))
        if re.search(r'cuda|gpu', text, re.I):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    """pytest plugin hook (`-p device_check`): keep the tests this stage runs, deselect the rest."""
    which = os.environ.get(ENV_SELECT)
    if not which:
        return
    keep, drop = [], []
    for item in items:
        gpu = _needs_cuda(item) or (which != 'gpu-quick' and item.nodeid.startswith('tests/test_gpu_ready.py'))
        slow = item.get_closest_marker('slow') is not None
        (keep if (slow and not gpu if which == 'slow' else gpu) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


# ------------------------------------------------------------------------------------------ processes
class Context:
    """What a stage child knows: device, quick mode, work folder, its wall-clock deadline, its result file."""

    def __init__(self, args, stage: str):
        self.device = args.device
        self.quick = args.quick
        self.work = Path(args.work)
        self.deadline = float(os.environ.get('REPRO_STAGE_DEADLINE') or time.time() + 600)
        self.stage = stage
        self.result = {'status': 'ok', 'lines': [], 'figures': {}, 'notes': []}
        self.path = self.work / f'{stage}.json'

    def left(self) -> float:
        """Seconds before this stage's deadline."""
        return max(1.0, self.deadline - time.time())

    def save(self) -> None:
        """Write the result so far (a stage killed at its limit still leaves what it measured)."""
        self.path.write_text(json.dumps(self.result, indent=1, default=str))

    def fail(self, why: str) -> None:
        self.result['status'] = 'failed'
        self.result['notes'].append(why)
        self.save()


def child_env(extra: dict | None = None) -> dict:
    """The environment of every child: this source tree first on the path, output unbuffered."""
    path = os.pathsep.join([str(ROOT), str(ROOT / 'benchmarks'), os.environ.get('PYTHONPATH', '')])
    return {**os.environ, 'PYTHONPATH': path, 'PYTHONUNBUFFERED': '1', **(extra or {})}


def run_cmd(cmd: list, log: Path, timeout: float, env: dict | None = None, cpus: set | None = None,
            own_group: bool = False) -> dict:
    """Run cmd with its output in `log`, killed at `timeout`.

    `own_group` (a stage): it gets a process group of its own, and everything left in that group (DataLoader
    workers, torchrun's ranks, pytest's children) is killed when it ends or times out. Commands a stage runs
    stay in the stage's group, so they never outlive it. Returns {'rc': exit status (None on timeout; negative:
    killed by that signal), 'seconds', 'tail', 'text'}."""
    start = time.monotonic()
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(log, 'w') as out:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env or child_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=own_group, preexec_fn=preexec)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        if own_group:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    text = log.read_text(errors='replace')
    return {'rc': rc, 'seconds': time.monotonic() - start, 'tail': text[-3000:], 'text': text}


def kaggle_cpus() -> set:
    """Four CPU cores, as a Kaggle GPU session has (fewer where the machine has fewer)."""
    have = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else list(range(os.cpu_count() or 1))
    return set(have[:4])


# --------------------------------------------------------------------------------------------- stages
def stage_doctor(ctx: Context) -> None:
    """The machine: GPU, capability, memory, cuDNN, versions, the precision auto picks."""
    from repro.doctor import cudnn_text, doctor
    d = doctor()
    ctx.result['figures'] = d
    if d['gpus']:
        g = d['gpus'][0]
        free = g.get('free_memory_mib')
        ctx.result['lines'].append(
            f'{g["name"]}, compute capability {g["capability"][0]}.{g["capability"][1]}, '
            f'{g["total_memory_mib"]} MiB total, {free if free is not None else "?"} MiB free; {d["gpu_count"]} '
            f'GPU(s); torch {d["torch"]} (CUDA {d["torch_cuda"]}), cuDNN {cudnn_text(d["cudnn"])}, timm '
            f'{d["timm"]}; `train.precision: auto` picks {d["precision"]}.')
    else:
        ctx.result['lines'].append(f'No CUDA device (torch {d["torch"]}, cuDNN none); precision {d["precision"]}.')
    if d['error']:
        ctx.fail(d['error'])


def _pytest(ctx: Context, which: str) -> None:
    """pytest over the tests the plugin above keeps for `which` (gpu or slow), counted from its -v output."""
    cmd = [sys.executable, '-m', 'pytest', '-v', '-rfE', '-p', 'no:cacheprovider', '-p', 'device_check', 'tests']
    if which == 'slow':
        cmd[4:4] = ['-m', 'slow']
        if importlib.util.find_spec('xdist') and (os.cpu_count() or 1) >= 4:
            cmd[4:4] = ['-n', str(min(8, (os.cpu_count() or 4) // 2))]
    select = 'gpu-quick' if which == 'gpu' and ctx.quick else which  # a dry run: the CUDA-only tests alone
    env = child_env({ENV_SELECT: select, 'OMP_NUM_THREADS': '2' if which == 'slow' else os.environ.get(
        'OMP_NUM_THREADS', '4')})
    r = run_cmd(cmd, ctx.work / f'{ctx.stage}.log', ctx.left() - 2, env)
    text = r['text']
    progress = '\n'.join(ln for ln in text.splitlines() if not ln.startswith(('FAILED ', 'ERROR ')))
    counts = {k: len(re.findall(rf'\b{k.upper()}\b', progress)) for k in ('passed', 'failed', 'skipped', 'error')}
    summary = re.findall(r'=+ (.*(?:passed|failed|error|skipped|deselected|no tests ran).*) =+', text)
    failures = re.findall(r'^(?:FAILED|ERROR) (\S+)', text, re.M)
    ctx.result['figures'] = dict(rc=r['rc'], seconds=r['seconds'], counts=counts, failures=failures,
                                 summary=summary[-1] if summary else None)
    if r['rc'] is None:
        ctx.result['lines'].append(f'Stopped at the time limit after {r["seconds"]:.0f} s: {counts["passed"]} '
                                   f'passed, {counts["failed"]} failed, {counts["skipped"]} skipped so far.')
        ctx.result['status'] = 'timeout'
    else:
        ctx.result['lines'].append(f'`{" ".join(cmd[2:])}` ({ENV_SELECT}={select}): '
                                   f'{summary[-1] if summary else "no summary"}, {r["seconds"]:.0f} s.')
        if r['rc'] not in (0, 5):  # 5: no test selected (a machine without such tests)
            ctx.result['status'] = 'failed'
    ctx.result['lines'] += [f'- failed: `{f}`' for f in failures[:20]]
    ctx.save()


def stage_gpu_tests(ctx: Context) -> None:
    """The tests that skip without CUDA and tests/test_gpu_ready.py, on the GPU."""
    _pytest(ctx, 'gpu')


def stage_slow_tests(ctx: Context) -> None:
    """The other slow tests, with the time the budget has left."""
    _pytest(ctx, 'slow')


def _rel(path: Path) -> str:
    """`path` relative to the source tree when it lies inside it (shorter commands in the README)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def read_block(path: Path, key: str) -> str | None:
    """The body of the marked block `key` of a results file, or None."""
    if not path.is_file():
        return None
    text = path.read_text()
    begin, end = f'<!-- results:{key} -->', f'<!-- /results:{key} -->'
    if begin not in text or end not in text:
        return None
    return text[text.index(begin) + len(begin):text.index(end)].strip()


def _demote(block: str) -> list[str]:
    """A run_all block inside this section: its '### ' heading becomes '##### ' (under the stage's '#### ')."""
    return [('##' + line) if line.startswith('### ') else line for line in block.splitlines()]


def _run_all(ctx: Context, args: list, keys: list[str]) -> dict:
    """benchmarks/run_all.py with `args`, its README blocks embedded; returns its JSON record (partial on a stop)."""
    readme, record = ctx.work / f'{ctx.stage}.md', ctx.work / f'{ctx.stage}-record.json'
    for p in (readme, record):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, 'benchmarks/run_all.py', *args, '--readme', _rel(readme), '--json', _rel(record)]
    r = run_cmd(cmd, ctx.work / f'{ctx.stage}.log', ctx.left() - 2)
    try:
        data = json.loads(record.read_text()) if record.is_file() else {}
    except ValueError:  # cut off while being written
        data = {}
    ctx.result['figures'] = dict(rc=r['rc'], seconds=r['seconds'], record=data)
    blocks = [read_block(readme, k) for k in keys]
    for b in blocks:
        if b:
            ctx.result['lines'] += _demote(b) + ['']
    if r['rc'] != 0:
        ctx.result['status'] = 'timeout' if r['rc'] is None else 'failed'
        ctx.result['notes'].append(f'run_all.py {"stopped at the time limit" if r["rc"] is None else "failed"} '
                                   f'after {r["seconds"]:.0f} s; last output: ' + r['tail'][-600:].replace('\n', ' | '))
        if not any(blocks):  # the figures measured before the stop
            ctx.result['lines'] += ['Figures measured before the stop (raw):', '', '```json',
                                    json.dumps(data.get('variants') or data.get('ops') or {}, indent=1,
                                               default=str)[:4000], '```']
    ctx.save()
    return data


def stage_run_all(ctx: Context) -> None:
    """run_all.py: every section, NCHW and channels_last, the memory check."""
    if ctx.device == 'cuda':
        args = ['--device', 'cuda', '--variants', 'channels_last']
    else:
        args = ['--device', 'cpu', '--quick', '--tiny-models', '--sizes', '32', '--batch-32', '4', '--steps', '1',
                '--warmup', '0', '--no-memory', '--variants', 'channels_last']
    _run_all(ctx, args, ['cuda' if ctx.device == 'cuda' else 'cpu'])


def stage_compile(ctx: Context) -> None:
    """run_all.py training with channels_last, eager and compiled, in one process."""
    if ctx.device == 'cuda':
        args = ['--device', 'cuda', '--channels-last', '--sizes', '32', '--variants', 'channels_last+compile',
                '--only-training']
    else:
        args = ['--device', 'cpu', '--quick', '--tiny-models', '--sizes', '32', '--batch-32', '4', '--steps', '1',
                '--warmup', '0', '--no-memory', '--variants', 'nchw+compile', '--only-training']
    _run_all(ctx, args, ['cuda' if ctx.device == 'cuda' else 'cpu'])


def stage_ops(ctx: Context) -> None:
    """run_all.py --ops-only: operators and kernels per train step, eager and compiled."""
    if ctx.device == 'cuda':  # the compile stage's shapes and settings: inductor's cache makes this compile quick
        args = ['--ops-only', '--device', 'cuda', '--channels-last', '--ops-batch', '64', '--ops-compile-sizes', '32']
    else:
        args = ['--ops-only', '--device', 'cpu', '--tiny-models', '--sizes', '32', '--ops-compile-sizes', '32']
    _run_all(ctx, args, ['ops-cuda' if ctx.device == 'cuda' else 'ops'])


def _train_cmd(ctx: Context, out: Path, preset: str, overrides: list, *extra) -> list:
    """The `repro train` command line of one run."""
    cmd = [sys.executable, '-m', 'repro', 'train', '--preset', preset, '--out', out, '--no-progress',
           '--device', ctx.device, *extra]
    for o in overrides:
        cmd += ['--set', o]
    return cmd


def _summary(out: Path) -> dict:
    try:
        return json.loads((out / 'summary.json').read_text())
    except (OSError, ValueError):
        return {}


def fake_cifar(ctx: Context, per_class: int, name: str) -> Path:
    """A generated CIFAR-100-format folder (python pickles, 100 classes) under the work folder."""
    from repro.data.synthetic import write_fake_cifar
    root = ctx.work / name
    if not (root / 'cifar-100-python' / 'train').is_file():
        write_fake_cifar(root, num_classes=100, train_per_class=per_class, test_per_class=2, seed=0)
    return root


def stage_resume(ctx: Context) -> None:
    """Straight, killed-and-resumed deterministic, killed-and-resumed cudnn.benchmark: digests compared."""
    quick = ctx.quick or ctx.device != 'cuda'
    root = fake_cifar(ctx, 3 if quick else 10, 'cifar-resume')
    over = [f'data.root={root}', 'train.epochs=2', f'train.batch_size={16 if quick else 64}', 'data.num_workers=2',
            'train.log_every=5'] + (['model.name=slak_micro'] if quick else [])
    preset = 'seed-slak-tiny-cifar100'
    runs, lines = {}, []

    def launch(label, out, extra_over, *flags, crash=None):
        env = child_env()
        env.pop('REPRO_CRASH_AT', None)
        if crash:  # the engine SIGKILLs itself at this optimizer step and micro-batch
            env['REPRO_CRASH_AT'] = crash
        log = ctx.work / ('resume-' + re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-') + '.log')
        r = run_cmd(_train_cmd(ctx, out, preset, over + extra_over, *flags), log, ctx.left() - 2, env)
        runs[label] = dict(rc=r['rc'], seconds=round(r['seconds'], 1), summary=_summary(out))
        ctx.result['figures'] = runs
        ctx.save()
        return r

    base = ctx.work / 'resume'
    shutil.rmtree(base, ignore_errors=True)
    det = ['train.deterministic=true']
    r = launch('deterministic, straight', base / 'det-straight', det)
    straight = _summary(base / 'det-straight')
    if r['rc'] != 0 or straight.get('status') != 'complete':
        return ctx.fail('the straight deterministic run did not complete: ' + r['tail'][-500:].replace('\n', ' | '))
    total = int(straight['steps_total'])
    kill_step = max(2, total * 3 // 4)  # inside the second epoch
    every = str(max(1, total // 8))
    for label, extra in (('deterministic', det), ('cudnn.benchmark', [])):
        out = base / ('det' if extra else 'bench')
        r = launch(f'{label}, killed at step {kill_step}', out, extra, '--checkpoint-every', every,
                   crash=f'{kill_step}:0')
        killed = r['rc'] == -signal.SIGKILL
        r2 = launch(f'{label}, resumed', out, extra)
        if r2['rc'] != 0 and 'is in use by pid' in r2['tail']:
            # The killed run's DataLoader workers inherited its flock on <run>/.lock and hold it until they notice
            # their parent is gone (a few seconds): recorded, then the same command again once they have exited.
            ctx.result['notes'].append(f'{label}: right after the kill the run folder was still locked (the killed '
                                       'process\'s DataLoader workers hold its flock); resumed again 10 s later')
            time.sleep(10)
            r2 = launch(f'{label}, resumed', out, extra)
        s = _summary(out)
        runs[f'{label}, resumed'].update(killed_by_sigkill=killed)
        killed_text = 'yes' if killed else f'**no** (exit {r["rc"]})'
        lines.append(f'| {label} | {killed_text} | {s.get("status")} | '
                     f'{s.get("steps_done")}/{s.get("steps_total")} | {s.get("resumes")} | '
                     f'`{str(s.get("state_digest"))[:16]}` | '
                     f'{"**yes**" if s.get("state_digest") == straight.get("state_digest") else "no"} |')
        if not killed or r2['rc'] != 0 or s.get('status') != 'complete':
            ctx.result['status'] = 'failed'
            ctx.result['notes'].append(f'{label}: the killed-and-resumed run did not complete as expected')
    det_match = runs.get('deterministic, resumed', {}).get('summary', {}).get('state_digest') == \
        straight.get('state_digest')
    model = 'slak_micro' if quick else 'slak_tiny'
    env = straight.get('env') or {}
    where = env.get('gpu') or env.get('device')
    ctx.result['lines'] = [
        f'`{preset}` ({model}, {over[2].split("=")[1]} per batch, 2 epochs = {total} steps, precision '
        f'{straight.get("precision")}, on {where})'
        f' on a generated CIFAR-100-format set ({root.name}: python pickles, 100 classes). Each run is killed with '
        f'SIGKILL at step {kill_step} (REPRO_CRASH_AT, inside the second epoch; checkpoints every {every} steps) '
        f'and run again with the same command. Straight deterministic run: digest '
        f'`{str(straight.get("state_digest"))[:16]}`.', '',
        '| run | killed | status after resume | steps | resumes | final weights digest | equals the straight '
        'deterministic run |', '|---|---|---|---|---|---|---|', *lines, '',
        ('With train.deterministic=true the resumed run ends **bit-identical** to the straight one.' if det_match
         else 'With train.deterministic=true the resumed run does **not** end bit-identical to the straight one '
              '(see the digests).') + ' With cudnn.benchmark (the default) bit-exactness is not promised.']
    ctx.save()


def stage_teacher_graph(ctx: Context) -> None:
    """GraphedForward against the eager Teacher: max abs differences and ms per forward."""
    import torch
    from repro.distill import Teacher
    from repro.models import create_model
    from repro.train.graphs import GraphedForward

    cuda = ctx.device == 'cuda'
    device = torch.device(ctx.device)
    name, batch = ('slak_tiny', 64) if cuda else ('slak_micro', 8)
    precision = 'fp16' if cuda else None
    torch.manual_seed(0)
    teacher = Teacher(create_model(name, num_classes=100, img_size=32), amp_dtype=precision).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    x2 = torch.randn(batch, 3, 32, 32, device=device)  # new values in the same buffers: the replay must follow
    graphed = GraphedForward(teacher, device) if cuda else teacher  # CPU: the comparison code against itself
    diffs = {}
    for label, inp in (('first input', x), ('second input', x2)):
        eager, replay = teacher(inp), graphed(inp)
        diffs[label] = [float((a.float() - b.float()).abs().max()) for a, b in zip(eager, replay)]

    def ms(fn, n=20):
        for _ in range(3):
            fn(x)
        if cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn(x)
            if cuda:
                torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times)
    eager_ms, graph_ms = ms(teacher), ms(graphed)
    worst = max(max(v) for v in diffs.values())
    ctx.result['figures'] = dict(model=name, batch=batch, precision=precision, max_abs_diff=diffs,
                                 eager_ms=eager_ms, graph_ms=graph_ms)
    ctx.result['lines'] = [
        f'Teacher `{name}` (deploy form, inference mode, {precision + " autocast" if precision else "fp32"}), '
        f'batch {batch} at 32x32'
        + ('' if cuda else ' (CPU dry run: no CUDA graph, the eager Teacher compared with itself)') + ':', '',
        '| input | max abs diff, logits | max abs diff, feature map |', '|---|---|---|',
        *[f'| {k} | {v[0]:.3g} | {v[1]:.3g} |' for k, v in diffs.items()], '',
        f'Forward: eager {eager_ms:.2f} ms, {"graph replay" if cuda else "again"} {graph_ms:.2f} ms '
        f'({eager_ms / graph_ms:.2f}x).']
    if worst > (1e-2 if precision else 1e-5):
        ctx.fail(f'graph replay differs from the eager teacher by {worst:.3g}')
    ctx.save()


def stage_pipeline(ctx: Context) -> None:
    """bench_augment.py and the student's training images/s with augment_on cpu/device, on 4 cores."""
    cpus = kaggle_cpus()
    cuda = ctx.device == 'cuda'
    quick = ctx.quick or not cuda
    lines = [f'The process and its children limited to CPU cores {sorted(cpus)} (`os.sched_setaffinity`, as '
             f'`taskset -c 0-3`); a Kaggle GPU session has 4.', '']
    figures = {'cpus': sorted(cpus)}
    bench = ROOT / 'benchmarks' / 'bench_augment.py'
    if bench.is_file():
        cmd = [sys.executable, bench, '--device', 'cuda' if cuda else 'cpu', '--workers', '0', '2', '4']
        cmd += ['--images', '256', '--rounds', '1'] if quick else ['--images', '2048', '--rounds', '3']
        r = run_cmd(cmd, ctx.work / 'pipeline-augment.log', min(ctx.left() / 2, 120), cpus=cpus)
        table = [ln for ln in r['text'].splitlines() if ln.startswith('|')]
        said = [ln for ln in r['text'].splitlines() if ln.startswith('Device path')]
        figures['bench_augment'] = dict(rc=r['rc'], seconds=r['seconds'], table=table, headline=said)
        lines += ['**`benchmarks/bench_augment.py`** (' + ' '.join(str(c) for c in cmd[2:]) + '):', '',
                  *[x for ln in said for x in (ln, '')], *table, '']
        if r['rc'] != 0:
            ctx.result['status'] = 'failed'
            ctx.result['notes'].append('bench_augment.py: ' + r['tail'][-400:].replace('\n', ' | '))
    else:
        lines += ['`benchmarks/bench_augment.py` is not there: augmentation throughput skipped.', '']
    ctx.result.update(lines=lines, figures=figures)
    ctx.save()
    root = fake_cifar(ctx, 4 if quick else 50, 'cifar-pipeline')
    rows = []
    for where in ('cpu', 'device'):
        out = ctx.work / f'pipeline-{where}'
        shutil.rmtree(out, ignore_errors=True)
        over = [f'data.root={root}', 'train.epochs=1', f'train.batch_size={16 if quick else 128}',
                f'data.num_workers={len(cpus)}', 'train.log_every=5', f'data.augment_on={where}']
        if quick:
            over.append('model.name=l2s_convnext_micro')
        r = run_cmd(_train_cmd(ctx, out, 'cifar100-student', over), ctx.work / f'pipeline-{where}.log',
                    min(ctx.left() - 2, 120), cpus=cpus)
        s = _summary(out)
        waits = []
        try:
            for line in (out / 'metrics.jsonl').read_text().splitlines():
                rec = json.loads(line)
                if rec.get('kind') == 'train' and rec.get('data_wait') is not None:
                    waits.append(rec['data_wait'])
        except (OSError, ValueError):
            pass
        figures[f'train_{where}'] = dict(rc=r['rc'], images_per_s=s.get('images_per_s'), data_wait=waits,
                                         steps=s.get('steps_done'))
        wait = f'{100 * statistics.mean(waits):.0f}%' if waits else '—'
        ran = 'ok' if r['rc'] == 0 else ('time limit' if r['rc'] is None else f'exit {r["rc"]}')
        rows.append(f'| {where} | {s.get("model")} | {s.get("steps_done")} | {s.get("images_per_s")} | {wait} | '
                    f'{ran} |')
        if r['rc'] != 0:
            ctx.result['status'] = 'failed'
            ctx.result['notes'].append(f'training with data.augment_on={where}: '
                                       + r['tail'][-400:].replace('\n', ' | '))
        ctx.save()
    lines += [f'**Training** (`cifar100-student`, 1 epoch on a generated CIFAR-100-format set, data.num_workers='
              f'{len(cpus)}; images/s from summary.json, first step excluded; data wait: share of the time the loop '
              'waited for batches):', '', '| data.augment_on | model | steps | images/s | data wait | run |',
              '|---|---|---|---|---|---|', *rows]
    ctx.save()


STAGE_FUNCTIONS = {'doctor': stage_doctor, 'gpu-tests': stage_gpu_tests, 'run-all': stage_run_all,
                   'resume': stage_resume, 'teacher-graph': stage_teacher_graph, 'pipeline': stage_pipeline,
                   'compile': stage_compile, 'ops': stage_ops, 'slow-tests': stage_slow_tests}


# ------------------------------------------------------------------------------------------- the check
def headline(stage: str, result: dict) -> str:
    """One line of figures for the summary table."""
    f = result.get('figures') or {}
    try:
        if stage == 'doctor':
            return (result.get('lines') or [''])[0][:160]
        if stage in ('gpu-tests', 'slow-tests'):
            return f.get('summary') or ', '.join(f'{v} {k}' for k, v in (f.get('counts') or {}).items())
        if stage in ('run-all', 'compile'):
            parts = []
            for variant, sizes in (f.get('record', {}).get('variants') or {}).items():
                for size, v in sizes.items():
                    if v.get('slak_over_convnext') is not None:
                        parts.append(f'{variant} {size}px SLaK-T/ConvNeXt-T {v["slak_over_convnext"]:.2f}x')
            mem = f.get('record', {}).get('cuda_memory_224')
            if mem:
                r = mem['runs']['uncapped']
                parts.append(f'batch-{mem["batch"]} 224 peak reserved {r["reserved"] / 2 ** 30:.2f} GiB')
            return '; '.join(parts)
        if stage == 'ops':
            ops = f.get('record', {}).get('ops') or {}
            s = ops.get('slak_tiny_32') or {}
            if s.get('compiled'):
                gpu = (f'; GPU kernels {s["eager_profiled"]["kernels"]} -> '
                       f'{s.get("compiled_profiled", {}).get("kernels")}') if 'eager_profiled' in s else ''
                return (f'SLaK-T 32px: {s["eager"]["total"]} aten ops eager, {s["compiled"]["step"]} kernel calls '
                        f'compiled{gpu}')
            return ''
        if stage == 'resume':
            return next((ln for ln in result.get('lines', []) if ln.startswith('With train.deterministic')), '')
        if stage == 'teacher-graph':
            d = f.get('max_abs_diff') or {}
            worst = max((max(v) for v in d.values()), default=float('nan'))
            return f'max abs diff {worst:.3g}; {f.get("eager_ms", 0):.2f} -> {f.get("graph_ms", 0):.2f} ms/forward'
        if stage == 'pipeline':
            parts = [f'augment_on={w}: {f[f"train_{w}"]["images_per_s"]} img/s' for w in ('cpu', 'device')
                     if f.get(f'train_{w}')]
            return f'{len(f.get("cpus", []))} cores; ' + ', '.join(parts)
    except (KeyError, TypeError, ValueError) as exc:
        return f'(no headline: {type(exc).__name__})'
    return ''


def section_key(gpu: str) -> str:
    """The README block of this GPU (one per GPU model, so a T4 check never replaces an L4's)."""
    return 'device-check-' + (re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-') or 'cpu')


def write_section(path: Path, key: str, body: str) -> None:
    """Replace the block `key` of `path`; a new block goes after the anchor line when there is one."""
    from run_all import replace_section
    text = path.read_text() if path.is_file() else '# Benchmarks\n'
    begin = f'<!-- results:{key} -->'
    if begin not in text and ANCHOR in text:
        at = text.index(ANCHOR) + len(ANCHOR)
        text = text[:at] + f'\n\n{begin}\n<!-- /results:{key} -->' + text[at:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, key, body))


def render(gpu: str, started: str, command: str, results: dict, total_s: float, quick: bool) -> str:
    """The Markdown section: a summary table of the stages, then each stage's figures."""
    rows, details = [], []
    for stage, _, _ in STAGES:
        r = results.get(stage)
        if r is None:
            continue
        rows.append(f'| {stage} | {r["status"]} | {r.get("seconds", 0):.0f} | '
                    f'{headline(stage, r).replace("|", "/")} |')
        details += [f'#### {stage}', '']
        details += (r.get('lines') or ['(no figures)']) + ['']
        details += [f'- note: {n}' for n in r.get('notes', [])] + ([''] if r.get('notes') else [])
    title = f'### Device check: {gpu}, {started}' + (' (DRY RUN on CPU, tiny models)' if quick else '')
    stages_min = sum(r.get('seconds', 0) for r in results.values()) / 60
    return '\n'.join([title, '', f'Written by `{command}` in {total_s / 60:.1f} min (the stages shown: '
                      f'{stages_min:.1f} min); every stage in its own process group with its own time limit (a '
                      'failing stage is recorded and the next one runs).', '',
                      '| stage | status | s | figures |', '|---|---|---|---|', *rows, '', *details])


def main(argv=None) -> int:
    """Run the stages (or, with --_stage, one stage in this process); 0 when every stage that ran is ok."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--device', choices=['cuda', 'cpu'], default=None, help='default: cuda when available')
    parser.add_argument('--quick', action='store_true', help='dry run: tiny models and sizes, short limits')
    parser.add_argument('--readme', default=None, help='results file (default benchmarks/README.md; '
                                                       '--quick: runs/device-check/README.md)')
    parser.add_argument('--work', default=str(WORK), help='logs, generated data and runs (default runs/device-check)')
    parser.add_argument('--budget', type=float, default=None,
                        help='seconds for the whole check: a stage gets at most what is left (default 480; '
                             '--quick 1800, since a cold compiler cache on a small CPU takes minutes)')
    parser.add_argument('--only', nargs='+', choices=[s for s, _, _ in STAGES], help='run only these stages')
    parser.add_argument('--skip', nargs='+', default=[], choices=[s for s, _, _ in STAGES], help='skip these stages')
    parser.add_argument('--_stage', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.budget is None:
        args.budget = 1800.0 if args.quick else 480.0
    if args._stage:  # a stage's own process
        ctx = Context(args, args._stage)
        try:
            STAGE_FUNCTIONS[args._stage](ctx)
        except Exception as exc:  # noqa: BLE001 - recorded in the section; the parent goes on
            import traceback
            ctx.fail(f'{type(exc).__name__}: {exc}')
            traceback.print_exc()
        ctx.save()
        return 0

    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda asked for, but torch sees no CUDA device; pass --device cpu --quick for '
                         'the dry run')
        gpu = torch.cuda.get_device_name(0)
    else:
        gpu = 'CPU'
    readme = Path(args.readme) if args.readme else (work / 'README.md' if args.quick else README)
    command = 'python benchmarks/device_check.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    key = section_key(gpu) + ('-dry-run' if args.quick else '')
    t0 = time.monotonic()
    results, saved = {}, work / 'device-check.json'
    if args.only and saved.is_file():  # a partial rerun updates the stages it runs, keeps the others
        try:
            previous = json.loads(saved.read_text())
        except ValueError:
            previous = {}
        if previous.get('key') == key:
            results = previous.get('results', {})
    for stage, cap, quick_cap in STAGES:
        if (args.only and stage not in args.only) or stage in args.skip:
            continue
        left = args.budget - (time.monotonic() - t0)
        limit = min(quick_cap if args.quick else cap, left)
        if limit < 20:
            results[stage] = dict(status='not run', seconds=0, lines=[
                f'Not run: {left:.0f} s of the {args.budget:.0f} s budget left. Run it with '
                f'`python benchmarks/device_check.py --only {stage}`.'], notes=[], figures={})
            continue
        print(f'== {stage} (limit {limit:.0f} s)', flush=True)
        result_file = work / f'{stage}.json'
        result_file.unlink(missing_ok=True)
        cmd = [sys.executable, Path(__file__).resolve(), '--_stage', stage, '--device', args.device, '--work', work]
        if args.quick:
            cmd.append('--quick')
        env = child_env({'REPRO_STAGE_DEADLINE': str(time.time() + limit - 3)})
        r = run_cmd(cmd, work / f'{stage}.stage.log', limit, env, own_group=True)
        try:
            res = json.loads(result_file.read_text())
        except (OSError, ValueError):
            res = dict(status='failed', lines=[], figures={}, notes=['the stage left no result: '
                                                                     + r['tail'][-600:].replace('\n', ' | ')])
        if r['rc'] is None:
            res['status'] = 'timeout'
            res.setdefault('notes', []).append(f'stopped at its {limit:.0f} s limit; figures above are those '
                                               'measured before')
        res['seconds'] = r['seconds']
        results[stage] = res
        print(f'   {res["status"]} in {r["seconds"]:.0f} s: {headline(stage, res)}', flush=True)
        write_section(readme, key, render(gpu, started, command.strip(), results, time.monotonic() - t0,
                                          args.quick))
        saved.write_text(json.dumps(dict(key=key, gpu=gpu, results=results), indent=1, default=str))
    print(f'device check written to {readme} (section {key}); work files in {work}')
    return 0 if all(r['status'] in ('ok', 'not run') for r in results.values()) else 1  # 1: see the section


if __name__ == '__main__':
    sys.exit(main())
