"""What a run reports while it trains: per-step statistics kept on the device, metrics.jsonl records,
TensorBoard scalars and a progress display that suits where the output goes.

A GPU step must not wait for the host. The loss, its parts and the non-finite count are summed on the device
(`StepStats`) and reach the host in one transfer every `train.log_every` steps and at epoch ends. `RunLog`
(rank 0 only) turns each such window into one `kind: "train"` record in metrics.jsonl and the same scalars in
TensorBoard (`<run>/tb/`), next to the evaluation records (`kind: "eval"`) that reports read. On a terminal it
draws a tqdm bar; where output is a file or a notebook log (papermill, Kaggle batch runs) it prints one concise
line every `log_every` steps or 60 s instead of carriage-return redraws.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("repro.train")


class StepStats:
    """Device-side sums over a window of steps (loss, its parts, non-finite losses and the first of them)
    and over the epoch (the mean step loss that evaluation rows report), read in one transfer by `fetch`.

    The epoch sum adds each step's mean micro-batch loss in float64 in step order, the same arithmetic as
    summing `loss.item()` on the host, so the number is what it was when every step synced.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._names: list[str] = []
        self._sums: torch.Tensor | None = None
        # [non-finite count, first bad step (-1: none), its value, epoch loss sum, epoch steps]
        self._flags = torch.tensor([0.0, -1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)
        self._step_loss: torch.Tensor | None = None
        self.micro = 0

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], step: int) -> None:
        """Add one micro-batch's loss (a 0-d tensor) and parts at optimizer step `step`; no host transfer."""
        if self._sums is None:
            self._names = ["loss"] + sorted(parts)
            self._sums = torch.zeros(len(self._names), dtype=torch.float64, device=self.device)
        elif any(k not in self._names for k in parts):  # a new part appears (rare): widen, never mix columns
            new = [k for k in sorted(parts) if k not in self._names]
            self._names += new
            self._sums = torch.cat([self._sums, self._sums.new_zeros(len(new))])
        loss = loss.detach().reshape(()).double()
        zero = loss.new_zeros(())
        values = torch.stack([loss] + [parts[k].detach().reshape(()).double() if k in parts else zero
                                       for k in self._names[1:]])
        bad = ~torch.isfinite(loss)
        # A non-finite loss is counted, not summed, so one bad step does not hide the window's mean.
        self._sums += torch.where(bad, torch.zeros_like(values), values)
        first = bad & (self._flags[1] < 0)
        self._flags[0] += bad.double()
        self._flags[1] = torch.where(first, loss.new_full((), float(step)), self._flags[1])
        self._flags[2] = torch.where(first, loss, self._flags[2])
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss
        self.micro += 1

    def end_step(self, accum_steps: int) -> None:
        """Close one optimizer step: its mean micro-batch loss joins the epoch sum."""
        if self._step_loss is not None:
            self._flags[3] += self._step_loss / accum_steps
            self._flags[4] += 1
        self._step_loss = None

    def fetch(self) -> dict[str, Any]:
        """The window's means, `nonfinite` (count), `first_bad` (step, value) and the epoch's running mean
        step loss, in one host transfer; the window (not the epoch) starts again."""
        sums = self._sums if self._sums is not None else self._flags.new_zeros(0)
        values = torch.cat([sums, self._flags]).tolist()
        n_names = len(self._names)
        nonfinite, first_step, first_value, epoch_sum, epoch_steps = values[n_names:]
        n = max(1, self.micro - int(nonfinite))
        out: dict[str, Any] = {name: v / n for name, v in zip(self._names, values[:n_names])}
        out.update(nonfinite=int(nonfinite), first_bad=(int(first_step), first_value) if first_step >= 0 else None,
                   epoch_loss=[epoch_sum, int(epoch_steps)], micro=self.micro)
        if self._sums is not None:
            self._sums.zero_()
        self._flags[0] = 0.0
        self._flags[1] = -1.0
        self._flags[2] = 0.0
        self.micro = 0
        return out

    def reset_epoch(self) -> None:
        """Start the epoch's loss sum again (after an evaluation row used it)."""
        self._flags[3] = 0.0
        self._flags[4] = 0.0

    def set_epoch_loss(self, epoch_loss: list) -> None:
        """Restore the epoch's [loss sum, steps] from a checkpoint."""
        self._flags[3] = float(epoch_loss[0])
        self._flags[4] = float(epoch_loss[1])


def _tensorboard_writer(folder: Path, purge_step: int):
    """A SummaryWriter appending to `folder` (events after `purge_step` from an abandoned attempt are hidden),
    or None with a warning when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("train.tensorboard is on but the tensorboard package is not installed; "
                    "pip install 'repro-lkt[tensorboard]' (or set train.tensorboard=false); continuing without it")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SummaryWriter(str(folder), purge_step=purge_step or None)


class RunLog:
    """metrics.jsonl records, TensorBoard scalars and progress for the main process; a no-op elsewhere.

    Args:
        out: the run folder.
        enabled: False on ranks other than 0.
        total_steps, first_step: the schedule's length and where this session starts.
        name: the run's name (progress label).
        log_every: steps per progress line and train record.
        tensorboard: write event files to <out>/tb/.
        progress: show progress at all ('bar' on a terminal, 'lines' elsewhere; True picks).
    """

    line_interval_s = 60.0

    def __init__(self, out: Path, *, enabled: bool, total_steps: int, first_step: int, name: str,
                 log_every: int, tensorboard: bool, progress: bool | str = True, stream=None):
        self.out = Path(out)
        self.enabled = enabled
        self.total = total_steps
        self.log_every = log_every
        self.mode = None
        if enabled and progress:
            if progress is True:
                progress = "bar" if _is_terminal(stream or sys.stderr) else "lines"
            self.mode = progress
        # A bar redraws on stderr (the terminal convention); lines are ordinary output, so notebook logs
        # (papermill) keep them at INFO level rather than as warnings.
        self.stream = stream or (sys.stderr if self.mode == "bar" else sys.stdout)
        self.bar = None
        self._redirect = contextlib.nullcontext()
        if self.mode == "bar":
            with warnings.catch_warnings():  # without ipywidgets a notebook gets the text bar, which is fine
                warnings.simplefilter("ignore")
                from tqdm import tqdm
                from tqdm.contrib.logging import logging_redirect_tqdm
            self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True, desc=name,
                            mininterval=1.0, file=self.stream)
            # Log lines (evaluations) go above the bar, never glued onto it.
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("repro")])
            self._redirect.__enter__()
        self.tb = _tensorboard_writer(self.out / "tb", first_step) if enabled and tensorboard else None
        self._last_line = time.monotonic()
        self._start = time.monotonic()
        self._start_step = first_step

    # ---------------------------------------------------------------------------------------- records
    def _append(self, record: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _scalars(self, prefix: str, record: dict, step: int, skip=("step", "epoch", "kind", "split")) -> None:
        if self.tb is None:
            return
        for key, value in record.items():
            if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def train(self, record: dict) -> None:
        """A window's statistics: kind 'train' (step, epoch, lr, loss and parts, images/s, data wait, memory)."""
        if not self.enabled:
            return
        record = {"kind": "train", **record}
        self._append(record)
        self._scalars("train", record, record["step"])

    def sparse(self, update: dict) -> None:
        """A prune-and-regrow update: density, pruned/regrown counts and the fraction ever active."""
        if not self.enabled:
            return
        record = {"kind": "sparse", **{k: v for k, v in update.items() if k != "layers"}}
        self._append(record)
        self._scalars("sparse", record, record["step"], skip=("step", "kind", "update"))

    def eval(self, record: dict) -> None:
        """An evaluation row (the records `repro report` reads)."""
        if not self.enabled:
            return
        record = {"kind": "eval", **record}
        self._append(record)
        self._scalars(f"eval_{record.get('split', 'val')}", record, record["step"],
                      skip=("step", "epoch", "kind", "split", "lr", "time_s"))

    # --------------------------------------------------------------------------------------- progress
    def step(self, step: int, *, epoch: int, loss: float | None, lr: float, images_per_s: float | None,
             force_line: bool = False) -> None:
        """Advance the display to `step`; `loss` is the latest fetched window mean (None until one exists)."""
        if self.mode == "bar":
            self.bar.update(step - self.bar.n)
            post = {"lr": f"{lr:.2e}"}
            if loss is not None:
                post["loss"] = f"{loss:.3f}"
            if images_per_s is not None:
                post["img/s"] = f"{images_per_s:.0f}"
            self.bar.set_postfix(post, refresh=False)
        elif self.mode == "lines":
            now = time.monotonic()
            due = step % self.log_every == 0 or now - self._last_line >= self.line_interval_s
            if due or force_line or step == self.total:
                self._last_line = now
                self.write(self._line(step, epoch, loss, lr, images_per_s, now))

    def _line(self, step, epoch, loss, lr, images_per_s, now) -> str:
        done = step - self._start_step
        eta = (now - self._start) / done * (self.total - step) if done > 0 else None
        parts = [f"step {step}/{self.total}", f"epoch {epoch}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts.append(f"lr {lr:.2e}")
        if images_per_s is not None:
            parts.append(f"{images_per_s:.0f} img/s")
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        return " | ".join(parts)

    def write(self, text: str) -> None:
        """A line of its own (above the bar when there is one)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar and flush TensorBoard (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self._redirect.__exit__(None, None, None)
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def peak_memory(device: torch.device) -> float | None:
    """Peak reserved device memory in MiB since the last call (None on CPU)."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_reserved(device) / 2 ** 20
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 1)


def host_record(values: dict[str, Any]) -> dict[str, Any]:
    """Round floats for a compact JSON line."""
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}
