"""Shared bandwidth servers (HBM, and L2 or links when they are modelled).

A `BandwidthServer` is a chip-wide resource of `bytes_per_cycle`. Every transfer through it
reserves capacity in start-time order (the interpreter processes starts in simulated time
order): the server keeps the time `free_at` at which all capacity reserved so far is used up,
and a transfer of `nbytes` starting at `start` occupies it for `nbytes / bytes_per_cycle`
cycles from `max(start, free_at)`. Its bytes have passed the server at the end of that
interval; the transfer finishes at the later of that and its own port-limited finish.

This is the "reserve bandwidth in start-time order" approximation of fair sharing: one
transfer alone runs at its port's rate (the server is faster than one port), and any number of
transfers together never move more than `bytes_per_cycle` per cycle, so 32 cores streaming at
once share the chip's bandwidth instead of getting 32 times it. Equal streams get equal
throughput over time; the makespan of a batch equals fair sharing's.

Times are floats in cycles; callers round where an instruction boundary needs integers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BandwidthServer:
    """A shared server of `bytes_per_cycle`; `busy_cycles` and `bytes` accumulate usage."""

    name: str
    bytes_per_cycle: float
    free_at: float = 0.0
    busy_cycles: float = 0.0
    bytes: int = 0

    def reserve(self, start: float, nbytes: int) -> float:
        """Reserve `nbytes` of transfer beginning no earlier than `start`; return its end."""
        if nbytes <= 0:
            return start
        duration = nbytes / self.bytes_per_cycle
        begin = max(self.free_at, start)
        self.free_at = begin + duration
        self.busy_cycles += duration
        self.bytes += nbytes
        return self.free_at
