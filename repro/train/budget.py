"""Wall-clock budgets and clean stops: a run ends at a step boundary, saved, before the session is killed."""
from __future__ import annotations

import re
import signal
import sys
import threading
import time

from ..errors import ReproError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


def parse_duration(value: str | float | int | None, flag: str = "--time-budget") -> float | None:
    """Seconds from `11h30m`, `45m`, `90s`, `1h 5m 3s` or a plain number of seconds; None stays None.
    `flag` names the option in error messages."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or _PART.sub("", text).strip():
                raise ReproError(f"{flag} expects a duration like 11h30m, 45m, 90s or seconds, "
                                 f"found '{value}'") from None
            seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ReproError(f"{flag} must be positive, found '{value}'")
    return seconds


class TimeBudget:
    """Decides, before each optimizer step, whether another step and the final save still fit.

    The margin covers the final checkpoint and evaluation; it defaults to 5% of the budget, at least a few
    seconds and at most 10 minutes, and grows to twice the slowest save seen.
    """

    clock = staticmethod(time.monotonic)  # replaceable, so tests can run a budget on simulated time

    def __init__(self, seconds: float | None, margin: float | None = None):
        self.seconds = seconds
        self.start = self.clock()
        if margin is None and seconds is not None:
            margin = min(600.0, max(0.05 * seconds, min(5.0, 0.2 * seconds)))
        self.margin = margin or 0.0
        self._slowest_save = 0.0

    def elapsed(self) -> float:
        """Seconds since this session's budget started."""
        return self.clock() - self.start

    def record_save(self, seconds: float) -> None:
        """Remember how long a checkpoint took, so the final one fits."""
        self._slowest_save = max(self._slowest_save, seconds)

    def exhausted(self, step_seconds: float) -> bool:
        """True when one more step of `step_seconds` plus the final save would overrun the budget."""
        if self.seconds is None:
            return False
        margin = max(self.margin, 2 * self._slowest_save)
        return self.elapsed() + step_seconds + margin > self.seconds


class RunAborted(KeyboardInterrupt):
    """A second stop signal: leave now without saving (the checkpoints already written stay)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the run checks at step boundaries; a second one aborts at once.

    The first signal is answered immediately on stderr, so a user knows the stop is under way; the run then
    stops at its next boundary and saves. A second SIGINT or SIGTERM raises RunAborted (a KeyboardInterrupt),
    which the command line reports in one line. Nested uses share one handler: the command line installs it
    before start-up, the training loop keeps it, so a signal during start-up, data loading, the final
    evaluation or the final save is a clean stop too. `phase` names what the run is doing, for the message.
    """

    _active: "StopSignal | None" = None

    def __init__(self, stream=None):
        self.received: int | None = None
        self.phase = "training"
        self._previous = {}
        self._depth = 0
        self._stream = stream

    def __enter__(self) -> "StopSignal":
        active = StopSignal._active
        if active is not None and active is not self:
            self._nested = True  # the outer handler stays in charge and is restored by its own exit
            return active
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
            StopSignal._active = self
        return self

    def _say(self, text: str) -> None:
        stream = self._stream or sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def _handle(self, signum, frame):
        name = _SIGNAL_NAMES.get(signum, f"signal {signum}")
        if self.received is not None:
            self._say(f"{name} again: aborting without saving; the checkpoints already written are kept")
            raise RunAborted(signum)
        self.received = signum
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send it again"
        when = {"start-up": "as soon as start-up is done, before the first step",
                "final evaluation": "after the final evaluation"}.get(self.phase, "after this step")
        self._say(f"{name}: the run will stop {when} and save ({again} to abort without saving)")

    def __exit__(self, *exc) -> None:
        if getattr(self, "_nested", False) or StopSignal._active is not self:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        StopSignal._active = None

    @classmethod
    def current(cls) -> "StopSignal | None":
        """The installed handler, if any."""
        return cls._active
