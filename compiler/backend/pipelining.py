"""Software pipelining of a nest's loops: multi-buffering, prefetch and the hand-offs that let
the DMA, the matrix engine (MX) and the vector engine (VX) work on different iterations at
once (docs/internals.md section 5, "Pipelining").

A loop over Kernel IR statements loads tiles, computes on them and stores. Its schedule is
said with three things, and this module places every copy offset, wait and signal from
them, so that no emitter writes an event by hand (`Pipeline` gives and takes back the
rings' credits around the whole nest):

- a `Ring` is a group of buffers that the loop turns through `copies` copies, `stride`
  bytes apart (multi-buffering). `select` computes the byte offset of an iteration's copy
  (copy = (iteration + shift) mod copies), `turn` that of the next one. A ring of loaded
  buffers has a `full` event (each load signals it; a reader waits for all of a step's
  loads) and a `free` event holding one credit per copy (`Pipeline.start` gives them,
  a step's first load takes one, the step's last reader returns it, `Pipeline.drain`
  takes them all back). A ring whose copies only compute writes (flash attention's scores
  and probabilities) needs neither: the hand-offs order it.
- a `Stage` is the instructions of one engine that run as a unit (a step's MMAs, a softmax
  on VX, a tile's epilogue). `Stage.consume(ring, loads)` makes its first instruction wait
  for a step's loads, `Stage.release(ring)` makes its last return the copy's credit,
  `Stage.acquire(ring)` makes its first take a credit (the first writer of an output copy).
- a hand-off is an event from one stage to another: `handoff(event, producer, consumer,
  at=...)` makes the producer's last instruction signal it and the consumer's instruction
  `at` (its first by default) wait for it; producer and consumer may be of different
  iterations (counting events pair the n-th signal with the n-th wait). A stage whose
  instructions change engine gets a hand-off at every switch (`Stage.switches`).

`peeled_loop` emits the loop itself: its first and last iterations peeled off around a
`LOOP` of the middle ones (a count known when compiling, or at run time: a causal tile's key
steps). `issue_loads` emits a step's loads into a ring's copy (the first takes a credit, each
signals `full`); prefetch is issuing iteration i + 1's loads into copy i + 1 before
iteration i's compute (`prefetch`), so their latency hides behind that compute: how far a
loop prefetches and how late its last reader runs decide how many copies the ring needs,
`copies_needed(lead, lag)` (flash attention: loads one step ahead, the last reader, P @ V,
one step behind: three copies of K and V).

The generic nest protocol (compiler/backend/codegen.py: the reduction-step loop, the tile
loop's next-tile prefetch, the output and epilogue credits) and flash attention's key loop
(compiler/backend/flash_codegen.py) are both scheduled with these pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zhenwu.compiler.backend.emitter import Emitter
from zhenwu.isa.program import Event, Instruction, Reg

EventCount = tuple[int, int]   # (event number, count)


def copies_needed(lead: int, lag: int) -> int:
    """The copies a ring needs when its loads are issued `lead` iterations ahead of the
    iteration that first reads them and its last reader runs `lag` iterations behind: every
    iteration from the newest load to the oldest reader holds a copy."""
    return lead + lag + 1


@dataclass(frozen=True)
class Ring:
    """Buffers that a loop turns through `copies` copies `stride` bytes apart (module
    docstring). `credits`: the credits on `free` (default: one per copy)."""

    copies: int
    stride: int
    full: int | None = None      # each load into the ring signals it
    free: int | None = None      # credits for the copies free to fill
    credits: int | None = None

    @classmethod
    def loaded(cls, buffer, events, purpose: str) -> Ring:
        """The ring of a Kernel IR buffer that loads fill (its copies and stride), with its
        `full` and `free` events taken from `events` (an `EventFile`)."""
        full, free = (events.take(f"{purpose} {what}") for what in ("full", "free"))
        return cls(buffer.copies, buffer.stride, full, free)

    @property
    def credit_count(self) -> int:
        return self.copies if self.credits is None else self.credits

    def select(self, emit: Emitter, off: int, index: int, shift: int = 0,
               modulo: bool = False) -> None:
        """Register `off` = ((register `index` + shift) mod copies) * stride: the byte offset
        of that iteration's copy. Two copies take the low bit, unless `modulo`."""
        source = index
        if shift:
            if shift > 0:
                emit.op("ADD", Reg(off), Reg(index), shift)
            else:
                emit.op("SUB", Reg(off), Reg(index), -shift)
            source = off
        if self.copies == 2 and not modulo:
            emit.op("AND", Reg(off), Reg(source), 1)
        else:
            emit.op("REM", Reg(off), Reg(source), self.copies)
        emit.op("MUL", Reg(off), Reg(off), self.stride)

    def turn(self, emit: Emitter, off: int, count: int, modulo: bool = False) -> None:
        """`off` = the copy of iteration `count` (a register), then count += 1."""
        self.select(emit, off, count, modulo=modulo)
        emit.op("ADD", Reg(count), Reg(count), 1)

    def other(self, emit: Emitter, off: int, current: int, stride: int) -> None:
        """Of a two-copy ring: register `off` = the copy that register `current` is not
        (register `stride` holds the stride)."""
        emit.op("SUB", Reg(off), Reg(stride), Reg(current))

    def wait_full(self, emit: Emitter, engine: str, count: int) -> None:
        """Engine `engine` waits for `count` signals of `full` before what follows (values
        filled once, before a loop, for the readers on that engine)."""
        emit.op(f"WAIT.{engine}", Event(self.full, count))

    def acquire(self) -> EventCount:
        """What a copy's first writer waits for: a credit."""
        return (self.free, 1)

    def landed(self) -> EventCount:
        """What each load into the ring signals."""
        return (self.full, 1)

    def ready(self, loads: int) -> EventCount:
        """What a reader of a step's `loads` loads waits for."""
        return (self.full, loads)

    def release(self) -> EventCount:
        """What a copy's last reader returns: its credit."""
        return (self.free, 1)


def issue_loads(ring: Ring, loads: list, emit_load: Callable[..., None],
                credit: bool = True) -> None:
    """A step's loads into the ring's current copy: the first takes a credit (`credit`),
    each signals `full`. `emit_load(load, waits, sigs)` emits one."""
    for index, load in enumerate(loads):
        emit_load(load, [ring.acquire()] if credit and index == 0 else [], [ring.landed()])


def prefetch(emit: Emitter, ring: Ring, off: int, index: int, loads: list,
             emit_load: Callable[..., None], shift: int = 1,
             advance: Callable[[], None] | None = None,
             restore: Callable[[], None] | None = None, modulo: bool = False) -> None:
    """The loads of iteration `index + shift` (register `index`), into that iteration's
    copy, issued before this iteration's compute: `advance` moves the loop's coordinates to
    that iteration (and `restore` back), the copy's offset goes to register `off`."""
    if advance is not None:
        advance()
    ring.select(emit, off, index, shift, modulo=modulo)
    issue_loads(ring, loads, emit_load)
    if restore is not None:
        restore()


def peeled_loop(emit: Emitter, body: Callable[[bool, bool], None], counter: int, index: int,
                steps: int | None = None, registers: tuple[int, int] | None = None) -> None:
    """Iterations 0 .. n-1 of a pipelined loop with the first and the last peeled off (the
    first issues the prologue's loads, the last prefetches nothing and may be masked):
    `body(first, last)` emits one iteration, with register `index` holding its number in
    the middle ones and the last (the first sets its own). `steps`: n, known when compiling;
    or `registers` (n, n - 2) holding a count known at run time, at least 2. `counter`: the
    middle loop's counter register."""
    body(True, steps == 1)
    if registers is not None:
        count, middle = registers
        emit.op("LOOP", Reg(counter), Reg(middle))
        emit.op("ADD", Reg(index), Reg(counter), 1)
        body(False, False)
        emit.op("ENDLOOP")
        emit.op("SUB", Reg(index), Reg(count), 1)
        body(False, True)
        return
    if steps > 2:
        emit.op("LOOP", Reg(counter), steps - 2)
        emit.op("ADD", Reg(index), Reg(counter), 1)
        body(False, False)
        emit.op("ENDLOOP")
    if steps > 1:
        emit.op("LI", Reg(index), steps - 1)
        body(False, True)


@dataclass
class Stage:
    """Instructions of one loop body that run in order (module docstring), with the waits
    and signals placed on them. `engines[i]`: the engine queue of instruction i ("LD", "MX",
    "VX", "ST": a wait past the two an instruction carries becomes a `WAIT.<engine>` before
    it)."""

    engines: list[str]
    waits: list[list[EventCount]] = field(default_factory=list)
    sigs: list[list[EventCount]] = field(default_factory=list)

    def __post_init__(self):
        self.waits = self.waits or [[] for _ in self.engines]
        self.sigs = self.sigs or [[] for _ in self.engines]

    def _index(self, at: int) -> int:
        return at % len(self.engines)

    def wait(self, event: EventCount, at: int = 0) -> Stage:
        """Instruction `at` (the first by default; -1 the last) waits for `event`."""
        self.waits[self._index(at)].append(event)
        return self

    def signal(self, event: EventCount, at: int = -1) -> Stage:
        """Instruction `at` (the last by default) signals `event`."""
        self.sigs[self._index(at)].append(event)
        return self

    def consume(self, ring: Ring, loads: int, at: int = 0) -> Stage:
        """The stage reads the `loads` loads of a step into `ring`: it waits for them."""
        return self.wait(ring.ready(loads), at)

    def acquire(self, ring: Ring, at: int = 0) -> Stage:
        """The stage is the first to write a copy of `ring`: it takes a credit."""
        return self.wait(ring.acquire(), at)

    def release(self, ring: Ring, at: int = -1) -> Stage:
        """The stage is the last to read a copy of `ring`: it returns the credit."""
        return self.signal(ring.release(), at)

    def switches(self, mx_to_vx: int, vx_to_mx: int) -> Stage:
        """A hand-off at every change of engine between consecutive instructions."""
        for index in range(1, len(self.engines)):
            before, after = self.engines[index - 1], self.engines[index]
            if before != after:
                event = mx_to_vx if before == "MX" else vx_to_mx
                self.sigs[index - 1].append((event, 1))
                self.waits[index].append((event, 1))
        return self

    def emit(self, emit: Emitter, instructions: list[Instruction],
             conditional: set[int] = frozenset()) -> None:
        """The stage's instructions with their events; waits past the two an instruction
        carries become WAITs of its engine before it. An instruction whose index is in
        `conditional` (predicated: it may not run) carries no event: its waits become
        WAITs before it, and a signal on it is refused."""
        for index, (engine, instr, waits, sigs) in enumerate(
                zip(self.engines, instructions, self.waits, self.sigs)):
            if index in conditional and sigs:
                raise ValueError(f"a predicated instruction cannot signal: {instr}")
            carried = 0 if index in conditional else min(2, len(waits))
            for event, count in waits[:len(waits) - carried]:
                emit.op(f"WAIT.{engine}", Event(event, count))
            emit(instr, waits=waits[len(waits) - carried:], sigs=sigs)


def handoff(event: int, producer: Stage, consumer: Stage, at: int = 0,
            count: int = 1) -> None:
    """`producer`'s last instruction signals `event`, `consumer`'s instruction `at` waits
    for `count` of them."""
    producer.signal((event, 1))
    consumer.wait((event, count), at)


@dataclass
class Pipeline:
    """The rings of one nest: `start` gives every ring's credits (in order), `drain` lets
    every engine finish (`BAR.CORE`) and takes them back, so every event is 0 again."""

    rings: list[Ring]

    def start(self, emit: Emitter) -> None:
        for ring in self.rings:
            if ring.free is not None:
                emit.op("SIG.S", Event(ring.free, ring.credit_count))

    def drain(self, emit: Emitter) -> None:
        # drain first: a WAIT.S on the credits before the engines are done would take the
        # initial credits the engines still need (a deadlock)
        emit.op("BAR.CORE")
        for ring in self.rings:
            if ring.free is not None:
                emit.op("WAIT.S", Event(ring.free, ring.credit_count))


__all__ = ["Pipeline", "Ring", "Stage", "copies_needed", "handoff", "issue_loads",
           "peeled_loop", "prefetch"]
