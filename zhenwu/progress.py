"""Progress of a long simulation on stderr: simulated time, instructions, an ETA.

`TerminalProgress` is given to `runtime.run_program(progress=...)`, which calls it every few
thousand events. Nothing is shown for the first `delay` seconds (most runs finish sooner), and
nothing at all unless the stream is a terminal: logs and CI get no `\\r` lines. The line is
rewritten in place and erased when the run ends.

The ETA needs the run's length, which is not known before it ends; when the caller gives the
roofline bound of the program in cycles (a lower bound on the run), the share of it simulated
so far gives a lower bound on the time left, shown as `ETA >= ...`, until the run passes the
bound. `.s` programs have no bound: their line shows no ETA.
"""

from __future__ import annotations

import sys
import time


def _fmt_sim(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


class TerminalProgress:
    """A callable `progress(cycle, instructions)` that draws one status line on a terminal."""

    def __init__(self, clock_hz: float, expected_cycles: float | None = None, *,
                 stream=None, delay: float = 2.0, interval: float = 0.5,
                 force: bool = False, clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = force or bool(isatty and isatty())
        self.clock_hz = clock_hz
        self.expected = expected_cycles
        self.delay = delay
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self.last = None
        self.width = 0

    def line(self, cycle: int, instructions: int, elapsed: float) -> str:
        """The status text at `cycle` after `elapsed` host seconds."""
        text = (f"zhenwu: simulated {_fmt_sim(cycle / self.clock_hz)}, "
                f"{instructions:,} instructions, {elapsed:.0f} s")
        if self.expected and 0 < cycle < self.expected:
            left = elapsed * (self.expected - cycle) / cycle
            text += f", ETA >= {left:.0f} s"
        return text

    def __call__(self, cycle: int, instructions: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        elapsed = now - self.start
        if elapsed < self.delay or (self.last is not None and now - self.last < self.interval):
            return
        self.last = now
        text = self.line(cycle, instructions, elapsed)
        pad = " " * max(self.width - len(text), 0)
        self.width = len(text + pad)  # what the terminal shows
        self.stream.write("\r" + text + pad)
        self.stream.flush()

    def close(self) -> None:
        """Erase the status line (if one was drawn)."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


class StatusLine:
    """Progress of a command that reports it itself (fuzz, bench): on a terminal one line
    rewritten in place; elsewhere (logs, CI) a whole line at most every `log_interval`
    seconds, never a `\r`."""

    def __init__(self, stream=None, *, log_interval: float = 30.0, clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self.log_interval = log_interval
        self.clock = clock
        self.last = None
        self.width = 0

    def update(self, text: str, *, force: bool = False) -> None:
        """Show `text`; off a terminal only when `force` or the interval has passed."""
        if self.terminal:
            pad = " " * max(self.width - len(text), 0)
            self.width = len(text + pad)  # what the terminal shows
            self.stream.write("\r" + text + pad)
        else:
            now = self.clock()
            if not force and self.last is not None and now - self.last < self.log_interval:
                return
            self.last = now
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Erase the terminal line (off a terminal there is nothing to erase)."""
        if self.terminal and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
