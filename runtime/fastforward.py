"""Fast-forward of steady-state loop nests in timing-only runs (docs/internals.md section 3.5).

A large tiled kernel repeats the same work tile after tile: once the whole chip has settled
into a rhythm, every further iteration of the loop is the previous one shifted in time. The
simulator then need not play them all. Each time core 0 takes the back edge of a loop, a
snapshot of the chip's *timing state* is taken relative to that moment T:

- per core: the program counter and loop stack, the scalar's time and why it is blocked, each
  engine's free time, its queue (instruction addresses, dispatch times, costs), events and
  waiters, the DMAs in flight, and the registers;
- the pending events of the simulation (their times, kinds, cores, engines, instructions);
- the shared servers' free times (HBM, L2).

Times in the past are clamped to "now" (a past time only ever enters a max with the present).
Two snapshots `p` back-edges apart (p = 1, 2, 4 or 8, so that double buffering and tile
indices that wrap every few iterations are recognised) are *the same pattern* when everything
but the registers and T is equal, and *the same timing deltas* when T moved by the same period
P and every register by the same amount over the two periods before (registers that are
recomputed before they are read in the loop body may do anything). Then the following periods
would repeat too, and the simulator jumps ahead n periods at once: every time moves by n·P,
registers by n times their delta, and every counter (instructions, flops, bytes, busy and
stall cycles, DMA/compute overlap) by n times its growth over the last period. n stops two
periods short of the end of any core's loop, so the end of the nest is simulated in full.

The L2's tags are replayed (`_replay_l2`): the cache after a jump holds what the skipped
iterations would have left in it. The simulator logs every L2 transfer while fast-forward is
on; each instruction's boxes in the last period, moved by its address step per period, are
looked up again for the last periods that can still be in the cache (enough of them to fill
it), oldest first, with their landing times moved too, and the transfers queued before the
jump are moved to the addresses they now read. When every skipped period was looked up, the
L2 and HBM traffic counters take what the lookups found instead of the extrapolation. The
address step of an instruction is read from core 0's transfers over three periods (a jump
waits for them): the issues of it in a period are known exactly (dispatched plus queued),
and its boxes that far apart must all be one step apart. When they are not (a GEMM's
grouped tile order is not affine in the loop counter), the tags stay as they were and the
traffic is extrapolated: the first tiles after the jump may then hit or miss where the
skipped ones would not have. When the periods to replay would take too long
(REPLAY_BUDGET), the earlier ones are aged instead: the least recently used lines their
fills would have evicted are dropped.

What is not replayed: the per-instruction trace (fast-forward is off when a trace is
recorded).
"""

from __future__ import annotations

import math
from copy import copy
from itertools import pairwise

PERIODS = tuple(range(1, 17))  # back-edges per period tried
MARGIN = 2               # periods left to simulate at the end of a loop
MIN_SKIP = 2             # periods worth jumping over at least
_TOLERANCE = 1e-6        # cycles: servers' float free times compare within this
REL_TOLERANCE = 0.002    # two periods this close (relative) count as the same timing
WORK_TOLERANCE = 0.02    # ... when the work and traffic in them are this close
REPLAY_BUDGET = 200_000  # L2 transfers looked up again at most per jump (the rest: aged)
LOG_LIMIT = 1 << 20      # L2 transfers logged before the oldest are dropped
REPLAY_PERIODS = 3       # periods whose transfers show an instruction's address step
INNER_PERIODS = 4        # periods an inner loop's rhythm must keep before a jump
JITTER = 0.01            # periods this close to their mean (over JITTER_PERIODS, with no
JITTER_PERIODS = 4       # trend) count as the same rhythm too


# scalar instructions whose result is affine in the registers they read (a loop counter
# through them steps alike every iteration); any other write (REM, AND, DIV, SLT, ...) may wrap
_AFFINE = frozenset({"ADD", "SUB", "MUL", "SHL", "MOV", "LI", "GETID"})


def _rel(x, now, t0):
    return max(now, x) - t0


class LoopInfo:
    """Static facts about the program's loops: for each ENDLOOP the LOOP it closes, and for
    every address the counter registers of the loops around it (outermost first)."""

    def __init__(self, program):
        instrs = program.instructions
        targets = program.targets
        self.loop_of_end: dict[int, int] = {}
        self.counters_at: list[tuple[int, ...]] = []
        stack: list[int] = []
        for index, instr in enumerate(instrs):
            # (a core about to run an ENDLOOP is still inside its loop)
            self.counters_at.append(tuple(instrs[s].operands[0].index for s in stack))
            if instr.mnemonic == "ENDLOOP":
                stack.pop()
                self.loop_of_end[index] = targets[index]
            if instr.mnemonic == "LOOP":
                stack.append(index)
        self.counters_at.append(())
        self._dead: dict[int, tuple[frozenset[int], frozenset[int]]] = {}
        self._program = program

    def dead_at_head(self, end: int) -> frozenset[int]:
        """Registers the body of the loop closed at `end` writes before it reads them (in a
        straight line from the top, outside inner loops and before any branch): their values
        at the back edge do not matter."""
        return self._scan(end)[0]

    def wrapping_at_head(self, end: int) -> frozenset[int]:
        """The registers of `dead_at_head` whose recomputation is not affine in what it reads
        (REM, AND, DIV, a comparison, ... anywhere in its chain): a buffer index that
        rotates. A jump cannot move such a register by a multiple of its step."""
        return self._scan(end)[1]

    def _scan(self, end: int) -> tuple[frozenset[int], frozenset[int]]:
        if end in self._dead:
            return self._dead[end]
        from zhenwu.isa.instructions import INSTRUCTIONS

        instrs = self._program.instructions
        start = self.loop_of_end[end]
        seen: set[int] = set()
        dead: set[int] = set()
        wrapping: set[int] = set()  # written in the scan, not affine in what they read
        depth = 0
        for index in range(start + 1, end):
            instr = instrs[index]
            name = instr.mnemonic
            if name in ("JMP", "BEQZ", "BNEZ") or depth < 0:
                break
            defn = INSTRUCTIONS.get(name)
            writes = None
            if (defn is not None and defn.engine == "S" and defn.operands
                    and defn.operands[0].name == "rd" and instr.predicate is None
                    and depth == 0):
                writes = instr.operands[0].index
            reads = set(instr.reads_regs())
            if writes is not None:
                reads.discard(writes)
                # rd = f(rd, ...) reads it too
                if any(getattr(op, "index", None) == writes for op in instr.operands[1:]):
                    reads.add(writes)
                if name in _AFFINE and not reads & wrapping:
                    wrapping.discard(writes)
                else:
                    wrapping.add(writes)
            seen.update(reads)
            if writes is not None and writes not in seen:
                dead.add(writes)
            if writes is not None:
                seen.add(writes)
            if name == "LOOP":
                seen.add(instr.operands[0].index)
                depth += 1
            elif name == "ENDLOOP":
                depth -= 1
        self._dead[end] = frozenset(dead), frozenset(dead & wrapping)
        return self._dead[end]


class FastForward:
    """The history of snapshots per loop back-edge of core 0, and the jump (see the module
    docstring). `skipped_periods` and `skipped_cycles` say what it did."""

    def __init__(self, sim, program):
        self.sim = sim
        self.loops = LoopInfo(program)
        self.history: dict[int, list] = {}
        self.skipped_cycles = 0
        self.jumps = 0
        self._misses: dict[int, int] = {}
        self._countdown: dict[int, int] = {}
        # the L2 transfers since `_log_base` (positions in snapshots are absolute)
        self._log_base = 0
        self.replays = self.unreplayed = 0  # jumps whose L2 was replayed / was not
        if sim.l2 is not None:
            sim.l2_log = []

    # -- the hook ---------------------------------------------------------------------------

    def back_edge(self, core, end: int, t: int) -> int:
        """Core 0 took the back edge of the loop closed at `end` at time `t` (its scalar
        clock). Returns the scalar clock to continue from (`t`, or later after a jump)."""
        countdown = self._countdown.get(end, 0)
        if countdown > 0:  # backing off a loop that has not settled
            self._countdown[end] = countdown - 1
            return t
        history = self.history.setdefault(end, [])
        snap = self._snapshot(t, history)
        if snap is None:
            self.history.pop(end, None)
            return t
        history.append(snap)
        limit = max(2, REPLAY_PERIODS) * PERIODS[-1] + 1
        if len(history) > limit:
            del history[0]
        self._trim_log()
        for p in PERIODS:
            if len(history) < 2 * p + 1:
                break
            jumped = self._try(history, p, end, t)
            if jumped is not None:
                self.history[end] = []
                self._misses[end] = 0
                return jumped
        if len(history) >= limit:
            misses = self._misses.get(end, 0) + 1
            self._misses[end] = misses
            if misses > 4:
                # keep watching, but snapshot less often (every other back edge, then more
                # spaced): a loop that never settles costs little
                self._countdown[end] = min(64, 1 << (misses - 4))
                self.history[end] = []
        return t

    # -- snapshots --------------------------------------------------------------------------

    def _snapshot(self, t0: int, history: list):
        sim = self.sim
        now = sim.now
        if sim.chip_barrier:
            return None
        if any(core.halted for core in sim.cores):
            return None
        regs = [tuple(core.regs) for core in sim.cores]
        others = tuple(regs[1:])
        # the whole state only when it can equal another's: the first of a history, or the
        # other cores' registers as in a snapshot before (an exact match compares them
        # absolutely; on a chip whose cores all loop it never happens, and the state is
        # most of a snapshot's cost)
        state = None
        if not history or any(h["others"] == others for h in history):
            state = (self._cores_state(now, t0), self._heap_state(t0), others)
        servers = tuple(_rel(s.free_at, now, t0) for s in sim.servers())
        pattern = (tuple(core.loops for core in sim.cores[:1]),
                   tuple(core.kernel for core in sim.cores))
        # the work the cores have queued and in flight: in a rhythm it stays about level; a
        # scalar racing ahead of its engines takes back edges a few cycles apart while its
        # queues grow by the instructions of an iteration each time
        backlog = 0
        for core in sim.cores:
            for queue in core.queues:
                backlog += len(queue)
            for done, _ in core.in_flight:
                backlog += done > now
        log = sim.l2_log
        return {"t": t0, "now": now, "state": state, "others": others,
                "pattern": pattern, "servers": servers, "regs0": regs[0],
                "counters": sim.counters(), "backlog": backlog,
                "log": None if log is None else self._log_base + len(log),
                "queued": None if log is None else _queued_transfers(sim.cores[0])}

    def _cores_state(self, now: int, t0: int) -> tuple:
        """Every core's timing state relative to t0 (the module docstring)."""
        cores = []
        for core in self.sim.cores:
            queues = tuple([
                tuple([(op.address, max(now, dispatched) - t0,
                        bound.occupancy, bound.latency, bound.hbm_read, bound.hbm_write)
                       for op, bound, dispatched, _ in queue]) if queue else ()
                for queue in core.queues])
            flight = tuple([(done - t0, size) for done, size in core.in_flight if done > now])
            t = core.t
            cores.append((
                core.pc, tuple(core.loops), core.kernel, core.s_blocked, core.s_block_engine,
                max(now, t) - t0, core.resume_pending,
                tuple([max(now, x) - t0 for x in core.engine_free]),
                tuple([max(now, x) - t0 for x in core.last_complete]),
                tuple(core.try_pending), tuple([b >= 0 for b in core.blocked_since]),
                tuple(core.events), tuple([tuple(w) if w else () for w in core.waiters]),
                queues, flight, tuple(core.descs),
            ))
        return tuple(cores)

    def _heap_state(self, t0: int) -> tuple:
        """The pending events relative to t0."""
        return tuple(sorted(
            (time - t0, kind, core_index, engine,
             None if payload is None else (payload[0].address if isinstance(payload, tuple)
                                           else payload.address))
            for time, _, kind, core_index, engine, payload in self.sim.heap))

    def _try(self, history, p: int, end: int, t: int) -> int | None:
        a, b, c = history[-1 - 2 * p], history[-1 - p], history[-1]
        if c["pattern"] != b["pattern"] or b["pattern"] != a["pattern"]:
            return None
        first, second = b["t"] - a["t"], c["t"] - b["t"]
        if first <= 0 or second <= 0:
            return None
        # (the equal periods first: comparing every core's state is the expensive part)
        exact = first == second and c["state"] is not None and all(
            abs(x - y) <= _TOLERANCE for x, y in zip(c["servers"], b["servers"])) and \
            c["state"] == b["state"] == a["state"]
        rhythm = None if exact else self._rhythm(history, p)
        if not exact and rhythm is None:
            return None
        dead = self.loops.dead_at_head(end)
        delta = _register_steps(history, p, self.loops.counters_at[end][-1], dead,
                                self.loops.wrapping_at_head(end))
        if delta is None:
            return None
        # how many periods: every core's loop counters must stay inside their trip counts
        sim = self.sim
        n = None
        for core in sim.cores:
            counters = self.loops.counters_at[core.pc]
            if len(counters) != len(core.loops):
                return None
            for reg, trips in zip(counters, core.loops):
                step = delta[reg]
                if step < 0:
                    return None
                if step == 0:
                    continue
                left = (trips - 1 - core.regs[reg]) // step - MARGIN
                n = left if n is None else min(n, left)
        if n is None or n < MIN_SKIP:
            return None
        if sim.l2 is not None and len(history) < REPLAY_PERIODS * p + 1:
            return None  # one more period, to read the address steps the L2 replay needs
        if exact:
            period, before, window, periods = second, b["counters"], (b["t"], c["t"]), 1
        else:
            # the counters' growth averaged over every period that kept the rhythm (their
            # HBM traffic may vary from period to period with the L2's hits while their
            # time does not)
            periods, period = rhythm
            if len(sim.cores[0].loops) > 1 and (
                    periods < INNER_PERIODS or not _in_step(history, p, periods, delta, dead)):
                return None
            first = history[-1 - periods * p]
            before, window = first["counters"], (first["t"], c["t"])
        shift = round(n * period)
        grown = _traffic(sim)
        self._jump(n, shift, delta, before, c["counters"], window, periods)
        if sim.l2 is not None:
            self._replay_l2([history[-1 - i * p] for i in range(REPLAY_PERIODS, -1, -1)], n,
                            period, grown)
        self.skipped_cycles += shift
        self.jumps += 1
        return t + shift

    def _rhythm(self, history, p: int) -> tuple[int, float] | None:
        """Not the same state to the cycle (many cores sharing HBM jitter by a few cycles),
        but the same rhythm: (how many periods of p back edges kept it, their mean length),
        or None. The cores' backlog (queued instructions, DMAs in flight) grows by less than
        one per core per period, the periods do the same work (`_same_work`), and either
        the last two are within REL_TOLERANCE of each other, or the last JITTER_PERIODS are
        each within JITTER of their mean and the means of their two halves within
        REL_TOLERANCE (periods that take turns at HBM: no trend, only jitter)."""
        a, b, c = history[-1 - 2 * p], history[-1 - p], history[-1]
        cores = len(self.sim.cores)
        if c["backlog"] - b["backlog"] >= cores or b["backlog"] - a["backlog"] >= cores:
            return None
        if not _same_work(a, b, b, c) or \
                c["counters"]["engine_instructions"] <= b["counters"]["engine_instructions"]:
            return None

        def length(i: int) -> int:  # the i-th period back (1 = the last)
            return history[-1 - (i - 1) * p]["t"] - history[-1 - i * p]["t"]

        def kept(i: int) -> bool:  # the i-th period back did the last one's work
            x, y = history[-1 - i * p], history[-1 - (i - 1) * p]
            return x["pattern"] == c["pattern"] and _same_work(x, y, b, c)

        def extend(periods: int, period: float, tolerance: float) -> int:
            while len(history) >= (periods + 1) * p + 1 and kept(periods + 1) and \
                    abs(length(periods + 1) - period) <= tolerance * period:
                periods += 1
            return periods

        first, second = length(2), length(1)
        if abs(second - first) <= REL_TOLERANCE * second:
            period = (first + second) / 2
            return extend(2, period, REL_TOLERANCE), period
        if len(history) < JITTER_PERIODS * p + 1 or \
                not all(kept(i) for i in range(3, JITTER_PERIODS + 1)):
            return None
        lengths = [length(i) for i in range(1, JITTER_PERIODS + 1)]
        period = sum(lengths) / JITTER_PERIODS
        half = JITTER_PERIODS // 2
        recent, older = sum(lengths[:half]) / half, sum(lengths[half:]) / half
        if any(abs(x - period) > JITTER * period for x in lengths) or \
                abs(recent - older) > REL_TOLERANCE * period:
            return None
        periods = extend(JITTER_PERIODS, period, JITTER)
        return periods, (c["t"] - history[-1 - periods * p]["t"]) / periods

    def _jump(self, n: int, shift: int, delta, before, after, window, periods: int) -> None:
        sim = self.sim
        for core in sim.cores:
            core.regs[:] = [r + n * d for r, d in zip(core.regs, delta)]
            core.t += shift
            core.engine_free = [x + shift for x in core.engine_free]
            core.last_complete = [x + shift for x in core.last_complete]
            core.blocked_since = [x + shift if x >= 0 else x for x in core.blocked_since]
            core.s_block_since += shift
            for queue in core.queues:
                for i, (op, bound, dispatched, clock) in enumerate(queue):
                    queue[i] = (op, bound, dispatched + shift, clock)
            core.in_flight = [(done + shift, size) for done, size in core.in_flight]
        sim.heap[:] = [(time + shift, *rest) for time, *rest in sim.heap]
        for server in sim.servers():
            server.free_at += shift
        sim.now += shift
        sim.add_counters(before, after, n, window, periods)

    # -- the L2 across a jump -----------------------------------------------------------------

    def _trim_log(self) -> None:
        """Drop the logged L2 transfers no snapshot kept can still ask for (all of them past
        LOG_LIMIT: a jump over those periods then leaves the L2's tags as they are)."""
        log = self.sim.l2_log
        if log is None:
            return
        oldest = min((h[0]["log"] for h in self.history.values() if h),
                     default=self._log_base + len(log))
        drop = oldest - self._log_base
        if len(log) > LOG_LIMIT:
            drop = len(log)
        if drop >= 4096 and drop * 2 >= len(log):
            del log[:drop]
            self._log_base += drop

    def _replay_l2(self, snaps: list, n: int, period: float, grown: tuple) -> None:
        """Leave in the L2 what the n skipped periods would have (module docstring): look
        the last period's transfers up again, each moved by its instruction's address step,
        for the last periods whose lines can still be resident; age it for the rest. When
        every skipped period was looked up, their L2 and HBM traffic is what the lookups
        found, not the jump's extrapolation (`grown`: the traffic counters before the jump):
        with the same work in the same time, a period's hits vary with the tiles' turns."""
        sim = self.sim
        l2 = sim.l2
        before, after = snaps[-2]["counters"]["l2"], snaps[-1]["counters"]["l2"]
        fills = (after[0] - before[0] - (after[1] - before[1]) + after[2] - before[2])
        fills = max(0, fills) / l2.line_bytes  # lines a period brings in (at most)
        found = self._replayable(snaps)
        if found is None:  # the tags stay as they were (the jump's counters extrapolated)
            self.unreplayed += 1
            return
        replay, steps = found
        # the last periods whose lines can still be resident (one when a period fills none)
        periods = min(n, 1 if fills <= 0 else math.ceil(l2.capacity / fills) + 1)
        periods = min(periods, max(1, REPLAY_BUDGET // max(1, len(replay))))
        l2.age(round((n - periods) * fills))
        saved = (l2.read_bytes, l2.hit_bytes, l2.write_bytes, l2.partial_rows)
        regions = sim.kernel_of
        moved_bytes = [0, 0]  # HBM bytes the lookups read and wrote
        by_region: dict[int, list[int]] = {}
        for k in range(n - periods + 1, n + 1):
            moved = k * period
            for is_read, (address, shape, strides, itemsize), step, time, at in replay:
                lines = l2.lines(address + k * step, shape, strides, itemsize)
                if is_read:
                    missed = l2.read(lines)[0]
                    l2.landed(time + moved)
                else:
                    l2.write(lines, time + moved)
                    missed = lines.total
                moved_bytes[not is_read] += missed
                region = regions[at]
                if region is not None:
                    by_region.setdefault(region, [0, 0])[not is_read] += missed
        if periods == n:  # the skipped periods' traffic, as looked up
            read, hit, written = (x - y for x, y in zip(
                (l2.read_bytes, l2.hit_bytes, l2.write_bytes), saved[:3]))
            hbm_read, hbm_write, l2_read, l2_hit, l2_write, kernels = grown
            l2.read_bytes, l2.hit_bytes, l2.write_bytes = l2_read + read, l2_hit + hit, \
                l2_write + written
            l2.partial_rows = saved[3]
            sim.hbm_read, sim.hbm_write = hbm_read + moved_bytes[0], hbm_write + moved_bytes[1]
            for region, (before, now) in enumerate(zip(kernels, sim.kernel_hbm)):
                extra = by_region.get(region, (0, 0))
                now[0], now[1] = before[0] + extra[0], before[1] + extra[1]
        else:
            l2.read_bytes, l2.hit_bytes, l2.write_bytes, l2.partial_rows = saved
        self.replays += 1
        # the transfers issued before the jump and not yet dispatched were bound to the
        # addresses of the periods the jump skipped: move them to where they now are (else
        # they would hit on the lines the replay just entered for those periods)
        for core in self.sim.cores:
            for queue in core.queues:
                for i, (op, bound, dispatched, clock) in enumerate(queue):
                    lines = bound.gm_lines
                    if lines is None or lines.box is None:
                        continue
                    address, shape, strides, itemsize = lines.box
                    moved = copy(bound)
                    moved.gm_lines = l2.lines(address + n * steps.get(op.address, 0), shape,
                                              strides, itemsize)
                    queue[i] = (op, moved, dispatched, clock)

    def _replayable(self, snaps):
        """The last period's L2 transfers as (is a read, box, address step per period,
        landing time, instruction address), and the steps by instruction address; None when
        a step cannot be read from core 0's transfers over the periods between `snaps`
        (an instruction's boxes one period apart must all be one step apart, so a tile walk
        that is not affine in the loop counter, a GEMM's grouped tile order, is not replayed
        when three periods show it; the last two alone when the first still had other
        issue counts)."""
        log = self.sim.l2_log
        base = self._log_base
        if snaps[0]["log"] is None or snaps[0]["log"] < base:
            return None
        window = log[snaps[0]["log"] - base:snaps[-1]["log"] - base]
        splits = [snap["log"] - snaps[0]["log"] for snap in snaps[1:]]
        # core 0's boxes per instruction over the periods, and its issues in each period
        seen: dict[int, list] = {}
        dispatched: list[dict[int, int]] = [{} for _ in splits]
        period = 0
        for position, (core, address, _, lines, _) in enumerate(window):
            while position >= splits[period]:
                period += 1
            if core == 0:
                seen.setdefault(address, []).append(lines.box)
                counts = dispatched[period]
                counts[address] = counts.get(address, 0) + 1
        issued = [{address: dispatched[i].get(address, 0) + snap["queued"].get(address, 0)
                   - first["queued"].get(address, 0) for address in seen}
                  for i, (first, snap) in enumerate(pairwise(snaps))]
        if any(counts != issued[-1] for counts in issued[:-1]):
            # an earlier period still filling the pipeline: the last two periods only
            if len(snaps) <= 3:
                return None
            return self._replayable(snaps[-3:])
        steps: dict[int, int] = {}
        for address, boxes in seen.items():
            m = issued[-1][address]
            if m <= 0 or len(boxes) <= m:
                return None
            step = None
            for x, y in zip(boxes, boxes[m:]):
                if x is None or y is None or x[1:] != y[1:]:
                    return None
                if step is None:
                    step = y[0] - x[0]
                elif y[0] - x[0] != step:
                    return None
            steps[address] = step
        replay = []
        for _, address, is_read, lines, time in window[splits[-2]:]:
            step = steps.get(address)
            if step is None or lines.box is None:
                return None
            replay.append((is_read, lines.box, step, time, address))
        return replay, steps


def _traffic(sim) -> tuple:
    """The L2 and HBM traffic counters (HBM read and written, L2 read, hit and written, per
    kernel HBM), before a jump adds to them."""
    l2 = sim.l2
    return (sim.hbm_read, sim.hbm_write,
            *((l2.read_bytes, l2.hit_bytes, l2.write_bytes) if l2 is not None else (0, 0, 0)),
            [list(moved) for moved in sim.kernel_hbm])


def _same_work(a, b, c, d) -> bool:
    """Whether the periods a..b and c..d did the same work (instructions and flops within
    WORK_TOLERANCE). Their HBM traffic is not compared: with the same work in the same time
    it varies with the L2's hits (a GEMM's tiles share operand panels in turns), and the
    jump adds its average over the periods that kept the rhythm."""
    for key in ("engine_instructions", "flops"):
        x = b["counters"][key] - a["counters"][key]
        y = d["counters"][key] - c["counters"][key]
        if abs(y - x) > WORK_TOLERANCE * max(x, y):
            return False
    return True


def _register_steps(history, p: int, counter: int, dead, wrapping) -> list[int] | None:
    """Core 0's register steps per period of p back edges, read over every period of this
    run of the loop in the history (its counter stepping alike; at least REPLAY_PERIODS).
    Every core advances by these steps (an SPMD program: the loop-carried registers step
    alike on every core). A live register must step alike in all of them. A register dead
    at the top of the loop (recomputed before it is read) does not matter to core 0, but a
    core caught between computing and reading it needs it right: it moves by its step when
    its recomputation is affine and it stepped alike (a row address), else stays (a buffer
    index rotating over three buffers steps alike twice out of three: a jump moved one by
    113 steps and an MMA read past the end of L1; kept, it still names a valid buffer)."""
    regs = [history[-1]["regs0"]]
    for i in range(len(history) - 1 - p, -1, -p):
        older = history[i]["regs0"]
        if len(regs) >= 2 and \
                regs[-1][counter] - older[counter] != regs[0][counter] - regs[1][counter]:
            break
        regs.append(older)
    if len(regs) <= REPLAY_PERIODS:
        return None
    steps = []
    for r in range(len(regs[0])):
        step = regs[0][r] - regs[1][r]
        if r in wrapping:
            steps.append(0)
        elif all(x[r] - y[r] == step for x, y in pairwise(regs)):
            steps.append(step)
        elif r in dead:
            steps.append(0)
        else:
            return None
    return steps


def _in_step(history, p: int, periods: int, delta, dead) -> bool:
    """Whether every core's registers moved by core 0's `delta` in each of the last
    `periods` periods (dead registers aside): all cores ran the same iterations of the
    loop in them, none left it or crossed into another iteration of an outer loop."""
    for i in range(periods):
        x, y = history[-1 - (i + 1) * p]["others"], history[-1 - i * p]["others"]
        for before, after in zip(x, y):
            for r, (u, v) in enumerate(zip(before, after)):
                if r not in dead and v - u != delta[r]:
                    return False
    return True


def _queued_transfers(core) -> dict[int, int]:
    """How many of each instruction going through the L2 the core has issued and not yet
    dispatched (by address)."""
    counts: dict[int, int] = {}
    for queue in core.queues:
        for op, bound, _, _ in queue:
            if bound.gm_lines is not None:
                counts[op.address] = counts.get(op.address, 0) + 1
    return counts


__all__ = ["FastForward", "LoopInfo"]
