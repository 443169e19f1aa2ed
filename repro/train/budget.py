"""Wall-clock budgets and clean stops: a run ends at a step boundary, saved, before the session is killed."""
from __future__ import annotations

import re
import signal
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


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag checked at step boundaries (a second SIGINT interrupts at once)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
