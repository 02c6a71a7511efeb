"""Happens-before race detection on the per-core memories (L1, ACC).

Each engine of a core keeps a vector clock with one component per engine of that core. An
instruction's clock is its engine's clock when it starts; the engine's own component counts
its instructions (engines are in order, so an engine is ordered with itself). Edges between
engines come only from events:

- a signal (`.sig Ek:n` at completion, or `SIG.S`) deposits n tokens carrying the signaller's
  clock into Ek's FIFO;
- a wait (`.wait Ek:n`, `WAIT.<eng>`) takes n tokens and joins their clocks;
- the scalar engine joins every engine's clock at `BAR.CORE`/`BAR.CHIP`/`HALT` drains, and an
  instruction joins the scalar's clock at dispatch (so `WAIT.S` then dispatch orders).

The scalar's dispatch order alone orders nothing: dispatching to LD then MX gives the MX
instruction the scalar's clock, which carries LD's component only if the scalar waited on LD.

An access by engine F with clock C to [lo, hi) of a space conflicts with an earlier access by
another engine E at epoch e (E's own component when it ran) if the ranges overlap, at least one
writes, and e > C[E] (no event path from it to F). Accesses are kept per (space, engine) in
epoch order, so a check scans only the accesses F has not yet synchronised with.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Race:
    """A conflicting pair: the earlier access (by `other_engine`) and the current one."""

    space: str
    lo: int
    hi: int
    other_engine: int
    other_address: int
    other_is_write: bool
    is_write: bool


class CoreRaceDetector:
    """Vector clocks and access history of one core's engines (indices 0..n_engines-1)."""

    # Compact the history once a list grows past this many entries.
    _COMPACT_AT = 2048

    def __init__(self, n_engines: int, spaces: tuple[str, ...]):
        self.n = n_engines
        self.clocks = [[0] * n_engines for _ in range(n_engines)]
        # (space, engine) -> parallel lists: epochs, (lo, hi, is_write, address)
        self._epochs: dict[tuple[str, int], list[int]] = {
            (s, e): [] for s in spaces for e in range(n_engines)
        }
        self._accesses: dict[tuple[str, int], list[tuple[int, int, bool, int]]] = {
            (s, e): [] for s in spaces for e in range(n_engines)
        }
        self._active = [False] * n_engines  # engines that have accessed memory
        # event index -> FIFO of [count, clock]
        self._tokens: dict[int, deque] = {}
        self._limit: dict[tuple[str, int], int] = {}

    # -- clocks ---------------------------------------------------------------------------

    def tick(self, engine: int) -> list[int]:
        """Start a new instruction on `engine`: advance its own component, return its clock."""
        clock = self.clocks[engine]
        clock[engine] += 1
        return clock

    def join(self, engine: int, other: list[int]) -> None:
        clock = self.clocks[engine]
        for i in range(self.n):
            clock[i] = max(clock[i], other[i])

    def join_all_into(self, engine: int) -> None:
        """`engine` (the scalar) has observed every engine drain."""
        for other in range(self.n):
            if other != engine:
                self.join(engine, self.clocks[other])

    def signal(self, event: int, count: int, clock: list[int]) -> None:
        self._tokens.setdefault(event, deque()).append([count, list(clock)])

    def wait(self, engine: int, event: int, count: int) -> None:
        """`engine` consumed `count` tokens of `event`: join the clocks that carried them."""
        fifo = self._tokens.get(event)
        while count > 0 and fifo:
            head = fifo[0]
            self.join(engine, head[1])
            take = min(count, head[0])
            head[0] -= take
            count -= take
            if head[0] == 0:
                fifo.popleft()

    # -- accesses -------------------------------------------------------------------------

    def access(
        self, engine: int, space: str, lo: int, hi: int, is_write: bool, address: int
    ) -> Race | None:
        """Record an access by `engine` (at its current clock); return a race if there is one."""
        if hi <= lo:
            return None
        clock = self.clocks[engine]
        for other in range(self.n):
            if other == engine:
                continue
            key = (space, other)
            epochs = self._epochs[key]
            if not epochs:
                continue
            first = bisect_right(epochs, clock[other])
            if first == len(epochs):
                continue
            accesses = self._accesses[key]
            for i in range(first, len(epochs)):
                a_lo, a_hi, a_write, a_address = accesses[i]
                if a_lo < hi and lo < a_hi and (is_write or a_write):
                    return Race(space, max(lo, a_lo), min(hi, a_hi), other, a_address,
                                a_write, is_write)
        key = (space, engine)
        epochs = self._epochs[key]
        epochs.append(clock[engine])
        self._accesses[key].append((lo, hi, is_write, address))
        self._active[engine] = True
        if len(epochs) > self._limit.get(key, self._COMPACT_AT):
            self._compact(space, engine)
            # Amortise: an engine nobody synchronises with keeps its history; do not rescan
            # it on every access.
            self._limit[key] = max(self._COMPACT_AT, 2 * len(epochs))
        return None

    def _compact(self, space: str, engine: int) -> None:
        """Drop accesses every other active engine is already ordered after."""
        horizon = min(
            (self.clocks[f][engine] for f in range(self.n) if f != engine and self._active[f]),
            default=None,
        )
        key = (space, engine)
        epochs = self._epochs[key]
        if horizon is None:  # nobody else touches memory (yet): keep the recent half
            cut = len(epochs) // 2
        else:
            cut = bisect_right(epochs, horizon)
        if cut:
            del epochs[:cut]
            del self._accesses[key][:cut]
