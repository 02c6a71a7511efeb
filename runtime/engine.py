"""The discrete-event timing model of one chip (docs/design.md section 8, internals.md section 3).

Per core, the scalar engine `S` runs the instruction stream (`scalar_cycles` per instruction) and
dispatches engine instructions into in-order queues (LD, MX, VX, ST), each of bounded depth:
the scalar stalls while the target queue is full. An engine instruction starts at the latest
of its engine being free, its dispatch, and its `.wait`s being satisfied; it occupies the engine
for its occupancy and completes `latency` cycles later (pipelined), when its `.sig`s fire. A
wait that had to block for a signal adds `event_wake_latency`. DMA bytes to or from GM also
pass the chip-wide HBM `BandwidthServer`: a DMA's transfer ends at the later of its port-limited
and its HBM-limited finish.

Everything happens in simulated time order: a global heap holds the next moments at which a
scalar resumes, an engine tries to start, or an instruction completes and signals. The scalar
runs ahead through pure scalar instructions without touching the heap and yields only when it
must interact (dispatch, signal, wait, barrier) at a time later than the earliest pending
event. Engine instructions execute their semantics when they start, with operands bound at
dispatch; for race-free programs that equals program-order results. Races are detected with
vector clocks (runtime/races.py), not inferred from timing.

Checks that stop the run with a `ChipTrap`: out-of-bounds accesses, races, deadlock (nothing in
flight, some core not halted), a non-zero event or a non-empty queue at HALT, and the
instruction budget.
"""

from __future__ import annotations

import heapq
import math
from bisect import insort
from collections import deque

from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.program import NUM_DESCS, NUM_REGS
from zhenwu.runtime.bandwidth import BandwidthServer
from zhenwu.runtime.memory import OutOfBounds
from zhenwu.runtime.ops import BAR_CHIP, BAR_CORE, ENGINE, HALT, SCALAR, SIG_S, WAIT_S, Bound, Op
from zhenwu.runtime.races import CoreRaceDetector
from zhenwu.runtime.trace import TraceRecorder

# heap entry kinds
_RESUME, _TRY, _COMPLETE = 0, 1, 2

S_ENGINE = 0  # the scalar engine's index in every per-engine table


class Timing:
    """The machine numbers the scheduler itself needs (all from the machine description;
    each instruction's own cost comes from its definition in isa)."""

    def __init__(self, *, cores: int, clock_hz: float, queue_depth: int, event_wake_latency: int,
                 hbm_bytes_per_cycle: float, l2=None, l2_bytes_per_cycle: float = 0.0,
                 l2_latency: int = 0, hbm=None, dma_window_bytes: int = 0,
                 barrier_cycles: int = 0, kernel_launch_cycles: int = 0):
        self.cores = cores
        self.clock_hz = clock_hz
        self.queue_depth = queue_depth
        self.event_wake_latency = event_wake_latency
        self.hbm_bytes_per_cycle = hbm_bytes_per_cycle
        self.l2 = l2  # a runtime.l2.L2Cache, or None: every GM byte is an HBM byte
        self.l2_bytes_per_cycle = l2_bytes_per_cycle
        self.l2_latency = l2_latency
        # the physical effects (docs/internals.md section 3.4); 0 / None: not modelled
        self.hbm = hbm  # a runtime.bandwidth.HbmServer, or None: an ideal server
        self.dma_window_bytes = dma_window_bytes
        self.barrier_cycles = barrier_cycles
        self.kernel_launch_cycles = kernel_launch_cycles

    @classmethod
    def for_machine(cls, machine, l2=None) -> Timing:
        """Every timing number of `machine`; each chip of a cluster is timed the same way."""
        from zhenwu.runtime.bandwidth import HbmServer
        return cls(cores=machine.cores, clock_hz=machine.clock_hz,
                   queue_depth=machine.queue_depth,
                   event_wake_latency=machine.event_wake_latency,
                   hbm_bytes_per_cycle=machine.hbm_bytes_per_cycle, l2=l2,
                   l2_bytes_per_cycle=machine.l2_bytes_per_cycle, l2_latency=machine.l2_latency,
                   hbm=HbmServer.for_machine(machine),
                   dma_window_bytes=machine.dma_window_bytes,
                   barrier_cycles=machine.barrier_cycles,
                   kernel_launch_cycles=machine.kernel_launch_cycles)


class CoreState:
    """One core: scalar state, engine queues, events, timing and statistics.

    `regs`, `descs`, `pc` and `loops` are read and written by the scalar instructions' `step`;
    `memories` maps a per-core space name (L1, ACC) to its LocalMemory. `chip` is kept for
    multi-chip runs (not supported yet: always 0).
    """

    def __init__(self, index: int, chip: int, n_engines: int, n_events: int, memories: dict,
                 spaces: tuple[str, ...], race_check: bool):
        self.index = index
        self.chip = chip
        self.regs = [0] * NUM_REGS
        self.descs: list = [None] * NUM_DESCS
        self.pc = 0
        self.loops: list = []  # scalar loop stack, managed by LOOP/ENDLOOP semantics
        self.memories = memories
        self.t = 0  # the scalar's local time (cycle of its next issue)
        self.queues = [deque() for _ in range(n_engines)]
        self.engine_free = [0] * n_engines
        self.try_pending = [False] * n_engines
        self.blocked_since = [-1] * n_engines  # engine blocked on an event since (or -1)
        self.last_complete = [0] * n_engines
        self.detached_complete = 0  # the last completion of a `.async` (detached) instruction
        self.events = [0] * n_events
        self.waiters: list[list[int]] = [[] for _ in range(n_events)]  # engine ids (0 = S)
        self.busy = [0] * n_engines
        self.intervals: list[list[tuple[int, int]]] = [[] for _ in range(n_engines)]
        self.stalls: dict[str, int] = {}
        self.halted = False
        self.halt_time = 0
        self.resume_pending = False
        self.s_blocked: str | None = None  # why the scalar is blocked, or None
        self.s_block_engine = 0
        self.s_block_since = 0
        self.races = CoreRaceDetector(n_engines, spaces) if race_check else None
        self.kernel: int | None = None  # index of the kernel region the scalar is in
        self.launched = False  # the core has entered a kernel (was launched) already
        self.in_flight: list[tuple[int, int]] = []  # GM DMAs: (completion, bytes), sorted
        self.skipped_overlap = 0  # DMA/compute overlap of fast-forwarded periods
        self.scalar_ctx = None  # the ScalarContext the scalar instructions run against

    def stall(self, cause: str, cycles: int) -> None:
        if cycles > 0:
            self.stalls[cause] = self.stalls.get(cause, 0) + cycles


def _union(*spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of interval lists, as sorted disjoint intervals."""
    merged: list[list[int]] = []
    for start, end in sorted(span for spans_ in spans for span in spans_):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def overlap_cycles(first: list[tuple[int, int]], second: list[tuple[int, int]]) -> int:
    """Cycles covered by both of two sorted disjoint interval lists."""
    total = i = j = 0
    while i < len(first) and j < len(second):
        low = max(first[i][0], second[j][0])
        high = min(first[i][1], second[j][1])
        if high > low:
            total += high - low
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return total


def dma_compute_overlap(core: CoreState, engines: list[str]) -> int:
    """Cycles in which a DMA (LD, ST) was in flight while a compute engine (MX, VX) was busy:
    how much of the memory traffic, latency included, the program hides behind compute."""
    def busy(names):
        return _union(*(core.intervals[engines.index(n)] for n in names if n in engines))
    return overlap_cycles(busy(("LD", "ST")), busy(("MX", "VX"))) + core.skipped_overlap


def _clip(spans: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi]


# events between calls of a run's progress callback (cheap next to the events themselves)
PROGRESS_EVERY = 1 << 10


class Simulator:
    """Runs decoded ops on every core of one chip; see the module docstring."""

    def __init__(self, ops: list[Op], timing: Timing, engines: list[str], cores: list[CoreState],
                 *, max_instructions: int, trace: TraceRecorder | None, kernels: list[str],
                 on_access=None, max_idle_instructions: int | None = None, progress=None):
        self.ops = ops
        # progress(cycle, instructions): called every `PROGRESS_EVERY` events of a long run
        self.progress = progress
        self.timing = timing
        self.engine_names = engines
        self.cores = cores
        self.max_instructions = max_instructions
        # instructions issued on the chip since the last engine dispatch (a spin detector)
        self.max_idle_instructions = max_idle_instructions or max_instructions
        self.idle_instructions = 0
        self.trace = trace
        self.hbm = timing.hbm or BandwidthServer("HBM", timing.hbm_bytes_per_cycle)
        self._hbm_transfer = getattr(self.hbm, "transfer", None)
        self.l2 = timing.l2
        self.l2_server = BandwidthServer("L2", timing.l2_bytes_per_cycle) if self.l2 else None
        self.dma_engines = {i for i, name in enumerate(engines) if name in ("LD", "ST")}
        self._wait_cause = [f"wait_event:{name}" for name in engines]
        self._hbm_cause = [f"hbm_bandwidth:{name}" for name in engines]
        self._l2_cause = [f"l2_bandwidth:{name}" for name in engines]
        self.heap: list = []
        self._seq = 0
        self.now = 0
        self.instructions = 0
        self.executed = 0  # instructions actually run (the budget; fast-forward skips some)
        self.fast_forward = None  # a runtime.fastforward.FastForward when enabled
        # when a list (fast-forward sets it): every L2 transfer as (core, instruction
        # address, is a read, Lines, landing time), for the jump to replay the L2's tags
        self.l2_log = None
        self.engine_instructions = 0
        self.flops = 0
        # flops by the MX input dtype that did them (None: the other engines)
        self.flops_by_dtype: dict[str | None, int] = {}
        self.hbm_read = 0
        self.hbm_write = 0
        self.chip_barrier: list[CoreState] = []
        self.chip_barrier_time = 0
        # kernel regions: name per kernel index; per kernel [first entry, last exit]
        self.kernel_names = kernels
        self.kernel_spans: list[list[int]] = [[-1, 0] for _ in kernels]
        self.kernel_entered: dict[tuple[int, int], int] = {}
        # HBM bytes [read, write] per kernel region, by the region of the DMA's address
        self.kernel_hbm: list[list[int]] = [[0, 0] for _ in kernels]
        self.kernel_of: list[int | None] = []
        region = None
        for op in ops:
            region = op.kernel if op.kernel is not None else region
            self.kernel_of.append(region)
        # regions with work for the matrix, vector or DMA engines; the others (scalar
        # instructions, waits and NET transfers only: an asynchronous collective's start or
        # wait) are launched grids only as a program's first region
        self.engine_kernels = {self.kernel_of[index] for index, op in enumerate(ops)
                               if op.kind == ENGINE
                               and engines[op.engine] in ("MX", "VX", "LD", "ST")}

    # -- heap ------------------------------------------------------------------------------

    def _push(self, time: int, kind: int, core: CoreState, engine: int, payload=None) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (time, self._seq, kind, core.index, engine, payload))

    def _resume(self, core: CoreState, time: int) -> None:
        if not core.resume_pending:
            core.resume_pending = True
            self._push(time, _RESUME, core, S_ENGINE)

    def _try_later(self, core: CoreState, engine: int, time: int) -> None:
        if not core.try_pending[engine]:
            core.try_pending[engine] = True
            self._push(time, _TRY, core, engine)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run to completion; return the cycle count. Raises ChipTrap on a check failure."""
        for core in self.cores:
            self._resume(core, 0)
        heap = self.heap
        heappop = heapq.heappop
        cores = self.cores
        progress = self.progress
        countdown = PROGRESS_EVERY
        while heap:
            time, _, kind, core_index, engine, payload = heappop(heap)
            if progress is not None:
                countdown -= 1
                if not countdown:
                    countdown = PROGRESS_EVERY
                    progress(time, self.instructions)
            self.now = time
            core = cores[core_index]
            if kind == _TRY:
                core.try_pending[engine] = False
                self._try_start(core, engine, time)
            elif kind == _COMPLETE:
                self._signal(core, payload, time, engine)
            else:
                core.resume_pending = False
                self._run_scalar(core, time)
        unfinished = [c for c in self.cores if not c.halted]
        if unfinished:
            self._deadlock(unfinished)
        end = max(c.halt_time for c in self.cores)
        self._close_kernels()
        return end

    # -- the scalar engine -----------------------------------------------------------------

    def _run_scalar(self, core: CoreState, now: int) -> None:
        ops = self.ops
        heap = self.heap
        t = max(now, core.t)
        regs = core.regs
        while True:
            op = ops[core.pc]
            if op.kernel is not None and core.kernel != op.kernel:
                t = self._enter_kernel(core, op, t)
            if op.pred is not None:
                value = regs[op.pred[0]]
                if (value == 0) != op.pred[1]:  # predicated off: it still takes its issue
                    self._count(core, op, t)
                    core.pc += 1
                    t += op.cycles
                    continue
            kind = op.kind
            if kind == SCALAR:
                # self._count(core, op, t), inlined: the trace and the budget checks only
                # when they can apply
                self.instructions += 1
                self.idle_instructions += 1
                self.executed += 1
                core.busy[S_ENGINE] += op.cycles
                if self.trace is not None or self.executed > self.max_instructions or \
                        self.idle_instructions > self.max_idle_instructions:
                    self._counted(core, op, t)
                try:
                    core.pc = op.step(core)
                except ChipTrap as err:
                    self._trap_from(core, op, err)
                t += op.cycles
                if core.pc <= op.address and core.index == 0 and \
                        self.fast_forward is not None and op.mnemonic == "ENDLOOP":
                    core.t = t
                    t = self.fast_forward.back_edge(core, op.address, t)
                continue
            # Everything below interacts with other engines: act only when no earlier event
            # is pending, so that the world is in time order.
            if heap and heap[0][0] < t:
                core.t = t
                self._resume(core, t)
                return
            self.now = t
            if kind == ENGINE:
                engine = op.engine
                queue = core.queues[engine]
                if len(queue) >= self.timing.queue_depth:
                    self._block_scalar(core, "queue_full", engine, t)
                    core.t = t
                    return
                self._unblock_scalar(core, t)
                self._count(core, op, t)
                self.idle_instructions = 0
                bound = self._bind(core, op)
                # the instruction inherits what the scalar has observed (its clock)
                t += op.cycles
                queue.append((op, bound, t, list(core.races.clocks[S_ENGINE])
                              if core.races is not None else None))
                core.pc += 1
                if len(queue) == 1:
                    start = max(t, core.engine_free[engine])
                    if start == t and not core.try_pending[engine] and (
                            not heap or heap[0][0] > t):
                        # nothing else happens before or at t: start it now instead of
                        # through the heap (the same order, one push and pop fewer)
                        self.now = t
                        self._try_start(core, engine, t)
                    else:
                        self._try_later(core, engine, start)
                continue
            if kind == WAIT_S:
                if not self._waits_ready(core, op.waits):
                    self._block_scalar(core, "wait_event", S_ENGINE, t)
                    for event, _ in op.waits:
                        core.waiters[event].append(S_ENGINE)
                    core.t = t
                    return
                self._unblock_scalar(core, t)
                self._take_waits(core, S_ENGINE, op.waits)
                self._count(core, op, t)
                core.pc += 1
                t += op.cycles
                continue
            if kind == SIG_S:
                self._count(core, op, t)
                if core.races is not None:
                    core.races.tick(S_ENGINE)
                self._signal(core, op, t, S_ENGINE)
                core.pc += 1
                t += op.cycles
                continue
            # BAR_CORE, BAR_CHIP, HALT: wait until this core's queues drain
            drain = self._drain_time(core, kind == HALT)
            if drain is None or drain > t:
                self._block_scalar(core, "drain" if kind == HALT else
                                   ("bar_core" if kind == BAR_CORE else "bar_chip"), S_ENGINE, t)
                core.t = t
                if drain is not None:
                    self._resume(core, drain)
                return
            arrival = core.s_block_since if core.s_blocked is not None else t
            self._unblock_scalar(core, t)
            if core.races is not None:
                core.races.join_all_into(S_ENGINE)
            if kind == BAR_CORE:
                self._count(core, op, t)
                core.pc += 1
                t += op.cycles
                continue
            if kind == BAR_CHIP:
                self._count(core, op, t)
                core.t = t
                self._arrive_chip_barrier(core, t)
                return
            self._halt(core, op, t, max(arrival + op.cycles, drain))
            return

    def _count(self, core: CoreState, op: Op, t: int) -> None:
        """One more instruction issued by the scalar at cycle `t` (the budget check)."""
        self.instructions += 1
        self.idle_instructions += 1
        self.executed += 1
        core.busy[S_ENGINE] += op.cycles
        self._counted(core, op, t)

    def _counted(self, core: CoreState, op: Op, t: int) -> None:
        """The trace slice and budget checks of an instruction just counted."""
        if self.trace is not None:
            name = op.mnemonic if op.kind != ENGINE else "issue " + op.mnemonic
            self.trace.slice(core.index, S_ENGINE, name, t, op.cycles, {"address": op.address})
        if self.executed > self.max_instructions:
            raise ChipTrap(
                f"runaway program: more than {self.max_instructions} instructions executed "
                "(raise the budget with --max-instructions)",
                address=op.address, instruction=op.text, core=core.index, chip=None,
                engines=("S",),
            )
        if self.idle_instructions > self.max_idle_instructions:
            raise ChipTrap(
                f"runaway program: {self.max_idle_instructions} instructions in a row with no "
                "engine instruction dispatched on the chip (a spinning loop; raise the budget "
                "with --max-instructions)",
                address=op.address, instruction=op.text, core=core.index, chip=None,
                engines=("S",),
            )

    def _block_scalar(self, core: CoreState, cause: str, engine: int, t: int) -> None:
        if core.s_blocked is None:
            core.s_blocked = cause
            core.s_block_engine = engine
            core.s_block_since = t

    def _unblock_scalar(self, core: CoreState, t: int) -> None:
        if core.s_blocked is None:
            return
        cause = core.s_blocked
        if cause == "queue_full":
            cause = f"queue_full:{self.engine_names[core.s_block_engine]}"
        elif cause == "wait_event":
            cause = "wait_event:S"
        cycles = t - core.s_block_since
        core.stall(cause, cycles)
        if self.trace is not None and cycles > 0:
            self.trace.slice(core.index, S_ENGINE, f"stall {cause}", core.s_block_since, cycles)
        core.s_blocked = None

    def _drain_time(self, core: CoreState, halting: bool = False) -> int | None:
        """When every instruction dispatched so far has completed, or None if some is queued.
        A barrier (not `halting`) waits for no `.async` instruction: a queue holding only
        those counts as empty, and their completions do not count."""
        for queue in core.queues:
            if queue and (halting or not all(entry[0].detached for entry in queue)):
                return None
        if halting:
            return max(max(core.last_complete), core.detached_complete)
        return max(core.last_complete)

    def _arrive_chip_barrier(self, core: CoreState, t: int) -> None:
        self.chip_barrier.append(core)
        self.chip_barrier_time = max(self.chip_barrier_time, t)
        if len(self.chip_barrier) < len(self.cores):
            return
        cycles = self.ops[core.pc].cycles
        release = self.chip_barrier_time + cycles + self.timing.barrier_cycles
        for waiting in self.chip_barrier:
            # each core issued its BAR.CHIP at waiting.t; it waits from then to the release
            waited = release - (waiting.t + cycles)
            waiting.stall("bar_chip", waited)
            if self.trace is not None and waited > 0:
                self.trace.slice(waiting.index, S_ENGINE, "stall bar_chip", waiting.t + cycles,
                                 waited)
            # the kernel the cores are in runs at least to the release
            self._leave_kernel(waiting, release)
            waiting.pc += 1
            after = self.ops[waiting.pc] if waiting.pc < len(self.ops) else None
            if after is None or after.kernel is not None or after.kind == HALT:
                waiting.kernel = None   # the region ends here; else a later nest follows
            waiting.t = release
            self._resume(waiting, release)
        self.chip_barrier = []
        self.chip_barrier_time = 0

    def _halt(self, core: CoreState, op: Op, t: int, end: int) -> None:
        self._count(core, op, t)
        leftover = [(k, v) for k, v in enumerate(core.events) if v != 0]
        if leftover:
            events = ", ".join(f"E{k} = {v}" for k, v in leftover)
            raise ChipTrap(
                f"event not zero at HALT: {events} (a signal nobody waited for)",
                address=op.address, instruction=op.text, core=core.index,
                engines=tuple(self._signallers(leftover)),
            )
        core.halted = True
        core.halt_time = end

    def _signallers(self, leftover) -> list[str]:
        names = []
        events = {k for k, _ in leftover}
        for op in self.ops:
            if any(k in events for k, _ in op.sigs):
                name = "S" if op.kind == SIG_S else self.engine_names[op.engine]
                if name not in names:
                    names.append(name)
        return names

    # -- engines ---------------------------------------------------------------------------

    def _bind(self, core: CoreState, op: Op):
        try:
            return op.bind(core)
        except OutOfBounds as err:
            self._trap_bounds(core, op, err)
        except ChipTrap as err:
            self._trap_from(core, op, err)

    def _waits_ready(self, core: CoreState, waits) -> bool:
        events = core.events
        for event, count in waits:
            if events[event] < count:
                return False
        return True

    def _take_waits(self, core: CoreState, engine: int, waits) -> None:
        events = core.events
        for event, count in waits:
            events[event] -= count
            if core.races is not None:
                core.races.wait(engine, event, count)

    def _try_start(self, core: CoreState, engine: int, now: int) -> None:
        """Start the head of `engine`'s queue at `now` if it can; else arrange a later try.

        The hot path of the interpreter: attribute lookups are hoisted into locals.
        """
        queue = core.queues[engine]
        if not queue:
            return
        op, bound, dispatched, s_clock = queue[0]
        free = core.engine_free[engine]
        ready = max(free, dispatched)
        if ready > now:
            self._try_later(core, engine, ready)
            return
        waits = op.waits
        events = core.events
        if waits:
            for event, count in waits:
                if events[event] < count:
                    if core.blocked_since[engine] < 0:
                        core.blocked_since[engine] = now
                    for blocked_on, _ in waits:
                        core.waiters[blocked_on].append(engine)
                    return
        blocked_since = core.blocked_since[engine]
        if blocked_since >= 0:
            core.stall(self._wait_cause[engine], now - blocked_since)
            core.blocked_since[engine] = -1
        queue.popleft()
        # the scalar waiting for room in this queue continues now (below, once this engine's
        # state is up to date)
        resume_scalar = core.s_blocked == "queue_full" and core.s_block_engine == engine
        races = core.races
        if races is not None:
            races.join(engine, s_clock)
        for event, count in waits:
            events[event] -= count
            if races is not None:
                races.wait(engine, event, count)
        if bound.execute is not None:
            try:
                bound.execute()
            except OutOfBounds as err:
                self._trap_bounds(core, op, err)
            except ChipTrap as err:
                self._trap_from(core, op, err)
        if races is not None:
            races.tick(engine)
            for space, lo, hi, is_write in bound.accesses:
                race = races.access(engine, space, lo, hi, is_write, op.address)
                if race is not None:
                    self._trap_race(core, op, engine, race)
        occupancy = bound.occupancy
        latency = bound.latency
        if bound.hbm_read or bound.hbm_write:
            read, written = self.hbm_read, self.hbm_write
            if bound.gm_lines is not None:
                occupancy, latency = self._gm_through_l2(core, engine, bound, now, op.address)
            else:
                occupancy = self._gm_from_hbm(core, engine, bound.hbm_read, bound.hbm_write,
                                              now, occupancy)
            if self.timing.dma_window_bytes and bound.net is None:
                occupancy = self._in_flight(core, engine, bound.hbm_read + bound.hbm_write,
                                            now, occupancy, latency)
            region = self.kernel_of[op.address]
            if region is not None:
                self.kernel_hbm[region][0] += self.hbm_read - read
                self.kernel_hbm[region][1] += self.hbm_write - written
        if bound.net is not None:
            occupancy, latency = self.network(core, engine, bound.net, now, occupancy, latency)
        if bound.flops:
            self.flops += bound.flops
            key = op.flop_dtype
            self.flops_by_dtype[key] = self.flops_by_dtype.get(key, 0) + bound.flops
        self.engine_instructions += 1
        free = now + occupancy
        core.engine_free[engine] = free
        core.busy[engine] += occupancy
        complete = free + latency
        if occupancy > 0:
            # DMAs count while in flight (transfer and latency), compute while busy
            core.intervals[engine].append((now, complete if engine in self.dma_engines else free))
        if op.detached:
            core.detached_complete = max(core.detached_complete, complete)
        else:
            core.last_complete[engine] = max(core.last_complete[engine], complete)
        if op.sigs:
            self._push(complete, _COMPLETE, core, engine,
                       (op, list(races.clocks[engine]) if races is not None else None))
        if self.trace is not None:
            self.trace.slice(core.index, engine, op.mnemonic, now, occupancy,
                             {"address": op.address, "text": op.text,
                              "latency": latency})
        if queue:
            self._try_later(core, engine, max(now, free))
        elif core.s_blocked is not None and core.s_blocked != "queue_full" \
                and core.s_blocked != "wait_event":
            drain = self._drain_time(core, core.s_blocked == "drain")
            if drain is not None:
                self._resume(core, max(now, drain))
        if resume_scalar:
            heap = self.heap
            if not core.resume_pending and (not heap or heap[0][0] > now):
                self._run_scalar(core, now)  # nothing else is due first: no heap round trip
            else:
                self._resume(core, now)

    def _in_flight(self, core: CoreState, engine: int, nbytes: int, now: int, occupancy: int,
                   latency: int) -> int:
        """Little's law: a core keeps at most `dma_window_bytes` of GM requests in flight.
        A DMA's bytes beyond the free part of the window issue only as earlier requests
        complete (and, beyond a whole window, one window per latency); returns its new
        occupancy and records it in flight until it completes."""
        window = self.timing.dma_window_bytes
        flight = core.in_flight
        while flight and flight[0][0] <= now:
            flight.pop(0)
        used = 0
        for _, size in flight:
            used += size
        need = used + nbytes - window  # bytes that must wait for a completion
        if need > 0:
            last = now  # when the DMA's last request can issue
            freed = 0
            for done, size in flight:
                freed += size
                last = done
                if freed >= need:
                    break
            if need > used:  # more than the window alone: one window per round trip
                last += latency * math.ceil((need - used) / window)
            waited = last - now + 1
            if waited > occupancy:
                core.stall(f"dma_in_flight:{self.engine_names[engine]}", waited - occupancy)
                occupancy = waited
        insort(flight, (now + occupancy + latency, min(nbytes, window)))
        return occupancy

    def _gm_from_hbm(self, core: CoreState, engine: int, read: int, write: int, now: int,
                     occupancy: int, partial_rows: int = 0) -> int:
        """Pass `read + write` bytes through the HBM server; the DMA's new occupancy."""
        self.hbm_read += read
        self.hbm_write += write
        transfer = self._hbm_transfer
        end = transfer(now, read, write, partial_rows) if transfer is not None else \
            self.hbm.reserve(now, read + write)
        hbm_end = math.ceil(end - 1e-9)
        if hbm_end - now > occupancy:
            core.stall(self._hbm_cause[engine], hbm_end - now - occupancy)
            occupancy = hbm_end - now
        return occupancy

    def _gm_through_l2(self, core: CoreState, engine: int, bound: Bound,
                       now: int, address: int) -> tuple[int, int]:
        """A DMA's GM bytes through the L2 (runtime/l2.py): every byte passes the L2 server,
        the bytes it misses (reads) or writes through also the HBM server. Returns the DMA's
        occupancy and latency: `l2_latency` for a read the L2 serves whole, and never before
        the lines it hit on have landed."""
        lines = bound.gm_lines
        occupancy = bound.occupancy
        latency = bound.latency
        # the L2 moves whole lines: charged by the lines touched, not the bytes asked for
        l2_end = math.ceil(self.l2_server.reserve(now, lines.lines * self.l2.line_bytes)
                           - 1e-9)
        if l2_end - now > occupancy:
            core.stall(self._l2_cause[engine], l2_end - now - occupancy)
            occupancy = l2_end - now
        if bound.hbm_read:
            missed, hit_ready = self.l2.read(lines)
            if missed:
                occupancy = self._gm_from_hbm(core, engine, missed, 0, now, occupancy,
                                              self.l2.partial_rows)
            else:
                latency = self.timing.l2_latency
            self.l2.landed(now + occupancy + latency)
            if self.l2_log is not None:
                self.l2_log.append((core.index, address, True, lines, now + occupancy + latency))
            if hit_ready > now + occupancy + latency:  # a line it hit on is still filling
                latency = math.ceil(hit_ready) - now - occupancy
        else:
            occupancy = self._gm_from_hbm(core, engine, 0, bound.hbm_write, now, occupancy,
                                          self.l2.partly_written_rows(lines))
            self.l2.write(lines, now + occupancy + latency)
            if self.l2_log is not None:
                self.l2_log.append((core.index, address, False, lines, now + occupancy + latency))
        return occupancy, latency

    def network(self, core: CoreState, engine: int, net, now: int, occupancy: int,
                latency: int) -> tuple[int, int]:
        """Time a cluster instruction's transfer to another chip (runtime/cluster.py's
        `ChipSimulator` does; a one-chip run has no NET engine to dispatch it to)."""
        raise ChipTrap("a chip-to-chip transfer needs a many-chip run (--chips N)")

    def _signal(self, core: CoreState, payload, time: int, engine: int) -> None:
        """Fire the `.sig`s of a completed instruction (or a SIG.S) at `time`."""
        if engine == S_ENGINE:
            op, clock = payload, (list(core.races.clocks[S_ENGINE])
                                  if core.races is not None else None)
        else:
            op, clock = payload
        wake = time + self.timing.event_wake_latency
        events = core.events
        for event, count in op.sigs:
            events[event] += count
            if clock is not None:
                core.races.signal(event, count, clock)
            waiters = core.waiters[event]
            if waiters:
                core.waiters[event] = []
                for waiter in waiters:
                    if waiter == S_ENGINE:
                        self._resume(core, wake)
                    else:
                        self._try_later(core, waiter, wake)

    # -- fast-forward (runtime/fastforward.py) ----------------------------------------------

    def servers(self) -> list[BandwidthServer]:
        return [self.hbm] + ([self.l2_server] if self.l2_server is not None else [])

    def counters(self) -> dict:
        """Everything that accumulates over a run (fast-forward adds n periods' growth)."""
        l2 = self.l2
        return {
            "instructions": self.instructions, "engine_instructions": self.engine_instructions,
            "flops": self.flops, "hbm_read": self.hbm_read, "hbm_write": self.hbm_write,
            "kernel_hbm": [list(moved) for moved in self.kernel_hbm],
            "flops_by_dtype": dict(self.flops_by_dtype),
            "l2": (l2.read_bytes, l2.hit_bytes, l2.write_bytes) if l2 is not None else None,
            "servers": [(s.busy_cycles, s.bytes) for s in self.servers()],
            "busy": [list(c.busy) for c in self.cores],
            "stalls": [dict(c.stalls) for c in self.cores],
        }

    def add_counters(self, before: dict, after: dict, n: int, window: tuple[int, int],
                     periods: int = 1) -> None:
        """Add `n` periods' growth of every counter: from `before` to `after` is `periods`
        periods (the cycles `window`)."""
        def scaled(x):
            return round(n * x / periods)

        def grow(key):
            return scaled(after[key] - before[key])
        self.instructions += grow("instructions")
        self.engine_instructions += grow("engine_instructions")
        self.flops += grow("flops")
        for key, value in after["flops_by_dtype"].items():
            growth = scaled(value - before["flops_by_dtype"].get(key, 0))
            self.flops_by_dtype[key] = self.flops_by_dtype.get(key, 0) + growth
        self.hbm_read += grow("hbm_read")
        self.hbm_write += grow("hbm_write")
        for moved, old, new in zip(self.kernel_hbm, before["kernel_hbm"], after["kernel_hbm"]):
            moved[0] += scaled(new[0] - old[0])
            moved[1] += scaled(new[1] - old[1])
        if self.l2 is not None:
            (r0, h0, w0), (r1, h1, w1) = before["l2"], after["l2"]
            self.l2.read_bytes += scaled(r1 - r0)
            self.l2.hit_bytes += scaled(h1 - h0)
            self.l2.write_bytes += scaled(w1 - w0)
        for server, (b0, y0), (b1, y1) in zip(self.servers(), before["servers"],
                                             after["servers"]):
            server.busy_cycles += n * (b1 - b0) / periods
            server.bytes += scaled(y1 - y0)
        for core, busy0, busy1, st0, st1 in zip(self.cores, before["busy"], after["busy"],
                                                before["stalls"], after["stalls"]):
            core.busy = [b + scaled(y - x) for b, x, y in zip(core.busy, busy0, busy1)]
            for cause, value in st1.items():
                core.stalls[cause] = core.stalls.get(cause, 0) + scaled(value - st0.get(cause, 0))
            lo, hi = window
            names = self.engine_names
            dma = _union(*(_clip(core.intervals[names.index(e)], lo, hi)
                           for e in ("LD", "ST") if e in names))
            compute = _union(*(_clip(core.intervals[names.index(e)], lo, hi)
                               for e in ("MX", "VX") if e in names))
            core.skipped_overlap += scaled(overlap_cycles(dma, compute))

    # -- kernels ---------------------------------------------------------------------------

    def _enter_kernel(self, core: CoreState, op: Op, t: int) -> int:
        """The core enters kernel `op.kernel` at `t`; its first instruction issues after the
        launch cost (returned: the new scalar time)."""
        index = op.kernel
        self._leave_kernel(core, t)
        core.kernel = index
        span = self.kernel_spans[index]
        if span[0] < 0 or t < span[0]:
            span[0] = t
        launch = self.timing.kernel_launch_cycles
        if core.launched and index not in self.engine_kernels:
            launch = 0  # a control-only region continues the running program
        core.launched = True
        if launch:
            core.stall("kernel_launch", launch)
        return t + launch

    def _leave_kernel(self, core: CoreState, t: int) -> None:
        if core.kernel is not None:
            span = self.kernel_spans[core.kernel]
            span[1] = max(span[1], t)

    def _close_kernels(self) -> None:
        for core in self.cores:
            self._leave_kernel(core, core.halt_time)
            core.kernel = None

    # -- traps -----------------------------------------------------------------------------

    def _trap_from(self, core: CoreState, op: Op, err: ChipTrap):
        """Re-raise a trap from an instruction's semantics with where it happened."""
        if err.address is not None:
            raise err
        engine = "S" if op.kind != ENGINE else self.engine_names[op.engine]
        raise ChipTrap(err.message, address=op.address, instruction=op.text, core=core.index,
                       engines=(engine,), notes=err.notes) from None

    def _trap_bounds(self, core: CoreState, op: Op, err: OutOfBounds):
        engine = "S" if op.kind != ENGINE else self.engine_names[op.engine]
        raise ChipTrap(f"out-of-bounds access: {err}", address=op.address, instruction=op.text,
                       core=core.index, engines=(engine,)) from None

    def _trap_race(self, core: CoreState, op: Op, engine: int, race) -> None:
        other = self.ops[race.other_address]
        mine = "writes" if race.is_write else "reads"
        theirs = "written" if race.other_is_write else "read"
        raise ChipTrap(
            f"race on {race.space}[{race.lo:#x}, {race.hi:#x}): "
            f"{self.engine_names[engine]} {mine} it, {theirs} by "
            f"{self.engine_names[race.other_engine]} with no event ordering them",
            address=op.address, instruction=op.text, core=core.index,
            engines=(self.engine_names[race.other_engine], self.engine_names[engine]),
            notes=(f"the other access: @{other.address}: {other.text}",),
        )

    def _deadlock(self, unfinished: list[CoreState]) -> None:
        # report a core that is stuck by itself, not one waiting at BAR.CHIP for it
        stuck = [c for c in unfinished if c not in self.chip_barrier]
        core = (stuck or unfinished)[0]
        op = self.ops[core.pc]
        blocked = []
        for engine, queue in enumerate(core.queues):
            if queue:
                blocked.append(engine)
        names = tuple(["S"] + [self.engine_names[e] for e in blocked])
        notes = []
        for engine in blocked:
            head = core.queues[engine][0][0]
            waits = " ".join(f"E{k}:{n}" for k, n in head.waits)
            notes.append(f"{self.engine_names[engine]} waits ({waits}) at "
                         f"@{head.address}: {head.text}")
        waiting_events = ", ".join(
            f"E{k} = {v}" for k, v in enumerate(core.events) if v)
        if waiting_events:
            notes.append(f"events: {waiting_events}")
        if len(unfinished) > 1:
            notes.append(f"{len(unfinished)} cores did not halt")
        if op.kind == HALT and blocked:
            head = core.queues[blocked[0]][0][0]
            raise ChipTrap(
                "queue not empty at HALT: engine instructions can never start",
                address=head.address, instruction=head.text, core=core.index, engines=names,
                notes=notes,
            )
        if op.kind == BAR_CHIP and not blocked:
            message = "deadlock: cores wait at BAR.CHIP for cores that halted"
        elif op.kind == WAIT_S:
            message = "deadlock: the scalar waits for an event that is never signalled"
        else:
            message = "deadlock: every engine is blocked and nothing is in flight"
        raise ChipTrap(message, address=op.address, instruction=op.text, core=core.index,
                       engines=names, notes=notes)
