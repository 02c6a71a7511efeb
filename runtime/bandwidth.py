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

import numpy as np


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


class HbmServer(BandwidthServer):
    """The chip's HBM: a `BandwidthServer` whose transfers cost more than their bytes at peak
    (docs/internals.md section 3.4).

    - Sustained rate: `bytes_per_cycle` is the peak times `streaming` efficiency (what long
      streams of whole DRAM rows reach).
    - Row hits: a transfer that covers a DRAM row whole streams it; every row it touches only
      partly is an activation the bus idles for, `row_penalty` cycles (derived from the
      scattered efficiency: one burst per row then sustains exactly that fraction of peak),
      unless the row is still open: each of `banks` banks keeps the row it last opened
      (row r is in bank r mod `banks`), so cores touching parts of the same row one after
      the other pay its activation once (`banks` 0: every partly touched row pays).
    - Read/write turnaround: the controllers gather writes and drain them in batches of
      `write_batch` bytes; each drain while reads are also flowing idles the bus for two
      turnarounds (read to write and back), `turnaround` cycles each.
    """

    row_penalty: float = 0.0
    turnaround: float = 0.0
    write_batch: int = 0
    _pending_writes: int = 0
    _reads_since_drain: bool = False
    turnarounds: int = 0
    partial_rows: int = 0  # activations paid for partly touched rows
    open_rows: np.ndarray | None = None  # per bank, the row it holds open (-1: none)

    @classmethod
    def for_machine(cls, machine) -> HbmServer:
        peak = machine.hbm_bytes_per_cycle
        streaming = machine.hbm_streaming_efficiency
        burst = machine.dma_burst_bytes
        server = cls("HBM", peak * streaming)
        server.row_penalty = max(0.0, burst / peak * (1 / machine.hbm_scattered_efficiency
                                                      - 1 / streaming))
        server.turnaround = machine.hbm_turnaround_cycles
        server.write_batch = machine.hbm_write_batch_bytes
        if machine.hbm_banks:
            server.open_rows = np.full(machine.hbm_banks, -1, dtype=np.int64)
        return server

    def activations(self, rows) -> int:
        """The activations a transfer touching parts of DRAM `rows` pays (an int: that many
        rows, none of them open; an array of row numbers: those not open in their banks,
        which then hold them open)."""
        if isinstance(rows, int) or self.open_rows is None:
            return rows if isinstance(rows, int) else int(rows.size)
        if not rows.size:
            return 0
        banks = rows % self.open_rows.size
        misses = int(np.count_nonzero(self.open_rows[banks] != rows))
        self.open_rows[banks] = rows
        return misses

    def transfer(self, start: float, read: int, write: int, partial_rows=0) -> float:
        """Reserve a transfer of `read` + `write` bytes touching DRAM rows partly (their
        count, or an array of their row numbers: see `activations`), no earlier than `start`;
        return its end."""
        nbytes = read + write
        if nbytes <= 0:
            return start
        activations = self.activations(partial_rows)
        extra = activations * self.row_penalty
        self.partial_rows += activations
        if read:
            self._reads_since_drain = True
        if write and self.write_batch:
            self._pending_writes += write
            while self._pending_writes >= self.write_batch:
                self._pending_writes -= self.write_batch
                if self._reads_since_drain:
                    extra += 2 * self.turnaround
                    self.turnarounds += 1
                self._reads_since_drain = bool(read)
        end = self.reserve(start, nbytes)
        if extra:
            self.free_at += extra
            self.busy_cycles += extra
            end = self.free_at
        return end
