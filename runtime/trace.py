"""Chrome / Perfetto trace output (the JSON trace event format).

One process per (chip, core), named `core N` (`chip C core N` with several chips), and one
thread per engine, named by the engine. Each engine instruction is an "X" (complete) event
named by its mnemonic, with `ts`/`dur` in microseconds (boundaries at whole nanoseconds);
scalar instructions (an engine instruction's issue as `issue MNEMONIC`) and scalar stalls
(`stall CAUSE`) are slices on the `S` track. "M" metadata events name and order the processes and threads.
The file loads in ui.perfetto.dev and chrome://tracing.
"""

from __future__ import annotations


class TraceRecorder:
    """Collects slices during a run; `to_dict()` gives the trace event JSON object."""

    def __init__(self, clock_hz: float, engines: list[str], cores: int, chip: int = 0,
                 chips: int = 1):
        self.us_per_cycle = 1e6 / clock_hz
        self.engines = engines
        self.cores = cores
        self.chip = chip
        self.chips = chips
        # (core, engine index, name, start cycle, duration cycles, args or None)
        self.slices: list[tuple[int, int, str, float, float, dict | None]] = []

    def slice(self, core: int, engine: int, name: str, start: float, duration: float,
              args: dict | None = None) -> None:
        self.slices.append((core, engine, name, start, duration, args))

    def _pid(self, core: int) -> int:
        # pids are positive ints; a chip index is kept in the numbering for multi-chip runs
        return self.chip * 1000 + core + 1

    def to_dict(self) -> dict:
        """The trace as a JSON-ready dict: {"traceEvents": [...], "displayTimeUnit": "ns"}."""
        events: list[dict] = []
        for core in range(self.cores):
            pid = self._pid(core)
            name = f"core {core}" if self.chips == 1 else f"chip {self.chip} core {core}"
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                           "args": {"name": name}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                           "args": {"sort_index": pid}})
            for index, engine in enumerate(self.engines):
                tid = index + 1
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                               "args": {"name": engine}})
                events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                               "args": {"sort_index": tid}})
        ns_per_cycle = self.us_per_cycle * 1000
        for core, engine, name, start, duration, args in sorted(
            self.slices, key=lambda s: (s[0], s[1], s[3])
        ):
            # Each boundary is rounded to a whole nanosecond, the resolution trace viewers
            # keep: a slice ending at cycle c and the next starting at c then share the same
            # nanosecond and never overlap after the viewer's rounding.
            begin_ns = round(start * ns_per_cycle)
            end_ns = round((start + duration) * ns_per_cycle)
            event = {
                "ph": "X",
                "name": name,
                "cat": self.engines[engine],
                "pid": self._pid(core),
                "tid": engine + 1,
                "ts": begin_ns / 1000,
                "dur": (end_ns - begin_ns) / 1000,
            }
            if args:
                event["args"] = args
            events.append(event)
        return {"traceEvents": events, "displayTimeUnit": "ns"}
