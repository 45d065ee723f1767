"""Where the time of a run goes: seconds per named phase."""
import contextlib
import os
import time

import torch


class Stopwatch:
    """Adds up the seconds spent in each named phase (``with watch("forward"): ...``). On a GPU
    the work queued in a phase is waited for at its end, so each phase gets its own time."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def add(self, phase: str, seconds: float):
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def summary(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {s:.2f} s ({s / total:.0%})" for name, s in self.seconds.items())
        return f"{total:.2f} s: {parts}"


def process_age() -> float:
    """Seconds since this process started (its start-up and imports, when called first thing);
    0 where /proc is not there."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))


def no_stopwatch(phase: str):
    """A stand-in for a :class:`Stopwatch` when nothing is timed."""
    return contextlib.nullcontext()
