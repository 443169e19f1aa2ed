"""Pre-flight on a Kaggle (or any) machine: can this torch drive the GPU, which precision, how to launch.

The notebook kernel must not initialise CUDA before a multi-GPU launch (a forked or spawned DDP worker then
breaks), so by default the facts are gathered by `repro.doctor.doctor()` in a child Python process and the
training command is returned for the notebook to run in a subprocess: `python -m repro train ...` on one GPU
or the CPU, `torchrun --nproc_per_node=N -m repro train ...` on N GPUs (two on NvidiaTeslaT4, GPU T4 x2).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from typing import Sequence

from ..errors import ReproError

_PROBE = "import json; from repro.doctor import doctor; print(json.dumps(doctor()))"


def probe_in_subprocess(timeout: float = 300) -> dict:
    """`repro.doctor.doctor()` run in a child interpreter, so this process never touches CUDA."""
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ReproError(f"the device probe ({sys.executable} -c '{_PROBE}') failed with status "
                         f"{proc.returncode}: {proc.stderr.strip()[-2000:] or 'no output'}; "
                         "run `repro doctor` in a terminal cell to see the full error")
    return json.loads(lines[-1])


def launch_command(gpu_count: int, train_args: Sequence[str] = ()) -> list[str]:
    """The training command: torchrun over all GPUs when there are several, else a plain `-m repro train`."""
    if gpu_count > 1:
        # `python -m torch.distributed.run` is torchrun, without relying on the script being on PATH.
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpu_count}",
                "-m", "repro", "train", *train_args]
    return [sys.executable, "-m", "repro", "train", *train_args]


def preflight(train_args: Sequence[str] | None = None, *, isolated: bool = True, facts: dict | None = None) -> dict:
    """Check the accelerator before a long run and return the launch plan.

    Raises ReproError when a visible GPU has no kernels in the installed torch (e.g. a P100 on a current
    Kaggle image). The result holds `device`, `gpu_count`, `gpu`, `capability`, `precision` (what
    `train.precision: auto` picks: fp16 AMP on T4, bf16 from compute capability 8.0, fp32 on Pascal and CPU),
    `command` (argument list) and `command_line`, plus `notes` for the user. `isolated=False` probes in this
    process (tests, plain scripts); `facts` takes a ready `repro.doctor.doctor()` dict. `train_args` None
    (a notebook that launches training itself) prints no launch advice; an empty sequence (the command line
    without arguments after --) gets a note saying which `repro train` arguments the launch command needs.
    """
    if facts is None:
        if isolated:
            facts = probe_in_subprocess()
        else:
            from ..doctor import doctor
            facts = doctor()
    if facts["error"]:
        raise ReproError(facts["error"] + " In the Kaggle editor: Settings > Accelerator > GPU T4 x2 (or L4); "
                         "for a pushed kernel: machine_shape NvidiaTeslaT4 (GPU T4 x2) or NvidiaL4X1 "
                         "in kernel-metadata.json (or the plan's kaggle section).")
    gpu_count = facts["gpu_count"]
    gpu = facts["gpus"][0] if facts["gpus"] else None
    notes = []
    if gpu_count == 0 and facts["in_kaggle"]:
        notes.append("no GPU in this session: training runs on the CPU and will be very slow; enable an "
                     "accelerator (enable_gpu true and machine_shape NvidiaTeslaT4 in kernel-metadata.json)")
    if gpu_count > 1:
        names = {g["name"] for g in facts["gpus"]}
        if len(names) > 1:
            notes.append(f"mixed GPUs ({', '.join(sorted(names))}): DDP runs at the pace of the slowest")
        notes.append(f"{gpu_count} GPUs: launch with torchrun in a subprocess; do not initialise CUDA in the "
                     "notebook kernel before it")
    if train_args is not None and not train_args:
        notes.append("the launch command above lacks the `repro train` arguments: give them after --, e.g. "
                     "`repro kaggle preflight -- --preset seed-slak-tiny-cifar100 --out runs/slak-t` (--preset NAME "
                     "or --config FILE, and --out DIR), to check them and print the complete command")
    command = launch_command(gpu_count, train_args or ())
    return {
        "device": facts["device"],
        "gpu_count": gpu_count,
        "gpu": gpu["name"] if gpu else None,
        "capability": gpu["capability"] if gpu else None,
        "precision": facts["precision"],
        "world_size": max(gpu_count, 1),
        "in_kaggle": facts["in_kaggle"],
        "kaggle_run_type": facts["kaggle_run_type"],
        "torch": facts["torch"],
        "command": command,
        "command_line": shlex.join(command),
        "notes": notes,
    }


def format_preflight(result: dict) -> str:
    """The pre-flight decisions as text lines."""
    where = "Kaggle " + (result["kaggle_run_type"] or "") if result["in_kaggle"] else "not Kaggle"
    gpu = f"{result['gpu_count']} x {result['gpu']} (compute capability " \
          f"{'.'.join(map(str, result['capability']))})" if result["gpu"] else "none"
    lines = [f"where      {where.strip()}", f"torch      {result['torch']}", f"GPUs       {gpu}",
             f"precision  {result['precision']} (train.precision=auto picks the same)",
             f"launch     {result['command_line']}"]
    lines += [f"note       {n}" for n in result["notes"]]
    return "\n".join(lines)
