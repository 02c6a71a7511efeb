"""Collectives lowered to chip-to-chip DMAs (DMA.PUT, RSIG) and cross-chip events.

    emit_collective(emit, spec, chip)        # append one chip's kernel to an Emitter
    program = collective_program(spec, chip, tensors)   # or as a program of its own
    programs, cost = collective_programs("allreduce", 64 << 20, 8, machine)   # a benchmark

The kernels are built as `isa.program` instructions (the Emitter and `instruction` builder
of compiler/backend/emitter.py, as compute codegen builds them); text is only printed from
the built program (`isa.asm.print_program`).

A `CollectiveSpec` says what to do: the kind, the algorithm (compiler/collectives.py chooses
it by its alpha-beta cost), the group of chips, and the GM regions (a tensor name, a byte
offset and size, a dtype). The code is the same on every chip but for the peers it names
and the pieces it sends (one program per chip). Every algorithm here is race-free by its
events, whatever the timing (the functional simulator executes a transfer when it starts):

- readiness: before a chip writes into a peer's buffer, the peer says the buffer holds its
  data (`RSIG`, event `ready`); a chip's own contribution is never overwritten before it
  has been read (the arguments are in the comments of each emitter);
- `direct` (core k of every chip is "lane" k, 1 <= k < p): lane k sends to rank r+k and
  receives from rank r-k; phases are separated by `BAR.CHIP`;
- `ring` (core 0): p-1 steps to the right neighbour per phase, each waiting for the left
  neighbour's previous piece (pipelined: each piece in chunks, chunk j waiting only for the
  left neighbour's chunk j); before the all-gather half of an all-reduce the right
  neighbour says that its reduce-scatter has read all its pieces (`rsdone`);
- `oneshot` (all-reduce, lanes 1..p-1): copy the buffer to a scratch buffer, then add the
  whole scratch into every peer at once (small messages: one alpha fewer than direct);
- `rhd` (core 0, a power-of-two group): recursive halving (reduce-scatter) then doubling
  (all-gather), one event per step;
- `hierarchical(ring)` / `hierarchical(rhd)` across nodes (all-reduce only): direct
  reduce-scatter in each node, a ring (or rhd, a power-of-two number of nodes) all-reduce of
  each chip's share among the chips of the same local rank in every node, a direct
  all-gather in each node.

Events: each phase of a collective takes its own events from the collective's `EventFile`
(compiler/backend/allocators.py; 4 per phase, or a block of more for rhd's steps), so a
fast peer's signals for a later phase never meet a slower chip's earlier phase; every event
is back to 0 when the collective ends (the interpreter checks it at HALT). Registers, too,
come from a `RegisterFile`: no number is written here.

A lane's body is a list of `Instruction`s (`_put`, `_rsig`, `_wait`); `_Collective.add_phase`
places each behind a branch on this core's index (`GETID`, `SUB`, `BNEZ` to a label after
the body) and ends the phase with `BAR.CHIP`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from zhenwu.compiler.backend.allocators import ASYNC_EVENTS, EventFile, RegisterFile
from zhenwu.compiler.backend.emitter import Emitter, instruction
from zhenwu.compiler.collectives import (
    EVENTS_PER_PHASE,
    CollectiveCost,
    collective_cost,
    rhd_distances,
)
from zhenwu.isa.dtypes import itemsize
from zhenwu.isa.errors import UsageError
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import (
    Event,
    Instruction,
    Keyword,
    LabelRef,
    Program,
    Reg,
    Symbol,
    TensorDecl,
)


@dataclass(frozen=True)
class Region:
    """Bytes [offset, offset + nbytes) of GM tensor `tensor`, holding `dtype` elements."""

    tensor: str
    offset: int
    nbytes: int
    dtype: str

    def piece(self, index: int, parts: int) -> Region:
        """The `index`-th of `parts` near-equal pieces (whole elements; maybe empty)."""
        size = itemsize(self.dtype)
        elements = self.nbytes // size
        lo = index * elements // parts
        hi = (index + 1) * elements // parts
        return Region(self.tensor, self.offset + lo * size, (hi - lo) * size, self.dtype)

    def pieces(self, lo: int, hi: int, parts: int) -> Region:
        """Pieces `lo` .. `hi - 1` of `parts` as one region."""
        first, last = self.piece(lo, parts), self.piece(hi - 1, parts)
        return Region(self.tensor, first.offset, last.offset + last.nbytes - first.offset,
                      self.dtype)

    def symbol(self) -> Symbol:
        """The region's start as a DMA.PUT address operand (`buf`, `buf+64`)."""
        return Symbol(self.tensor, self.offset)


@dataclass(frozen=True)
class CollectiveSpec:
    """One collective on one group: `src` is the buffer (in place: `dst` is None) or, for
    all-to-all, the send buffer and `dst` the receive buffer; for an all-gather out of place
    (direct only), `src` is this chip's piece and `dst` the gathered buffer. `scratch` is a
    buffer of `src`'s size for `oneshot` (this chip's contribution, copied away)."""

    kind: str
    algorithm: str
    group: tuple[int, ...]
    src: Region
    dst: Region | None = None
    chips_per_node: int = 1
    label: str = "coll"
    scratch: Region | None = None
    chunks: int = 1  # ring: each piece in this many pipelined chunks
    pipeline: int = 1  # hierarchical all-reduce: chunks in flight through node and NICs


def _region_registers() -> tuple[int, int]:
    """The registers of a collective region: this core's index and a lane test. A
    collective region sets every register it reads (its own GETID) and leaves none for what
    follows: a compute segment's program sets its own at its start."""
    registers = RegisterFile()
    return registers.take("core id"), registers.take("lane test")


def _events(items) -> tuple[Event, ...]:
    """Events from `Event`s or bare indices (count 1)."""
    return tuple(item if isinstance(item, Event) else Event(item) for item in items)


def _on_core(emit: Emitter, here: int, lane: int, core: int, skip: str) -> None:
    """Branch to label `skip` unless this core (register `here`) is `core` (`lane`: a
    scratch register for the test)."""
    emit.op("SUB", Reg(lane), Reg(here), core)
    emit.op("BNEZ", Reg(lane), LabelRef(skip))


class _Collective:
    """Builds one chip's kernel into an Emitter: per phase, a block per lane (core), then
    BAR.CHIP. Each phase takes its events from the collective's `EventFile` (all of them:
    a synchronous collective runs after every asynchronous one ended), and keeps them to the
    end of the collective, so a fast peer's signals for a later phase never meet a slower
    chip's earlier phase. Every chip takes them in the same order, so an event a chip
    signals on its peer has the number the peer waits on."""

    def __init__(self, spec: CollectiveSpec, chip: int, emit: Emitter):
        self.spec = spec
        self.chip = chip
        self.emit = emit
        self.core, self.lane = _region_registers()
        self.event_file = EventFile(advice="a collective in fewer phases (fewer pipeline "
                                    "chunks, or another algorithm) needs fewer")
        self._phase_events: tuple[int, ...] | None = None
        # the collective is one kernel (one launch, like a collective library's kernel); its
        # phases are separated by chip barriers
        emit.kernel(spec.label)
        emit.op("GETID", Reg(self.core), Keyword("core"))
        self.phase = 0

    def events(self) -> tuple[int, int, int, int]:
        """This phase's EVENTS_PER_PHASE events (ready, arrive, gathered, rsdone)."""
        if self._phase_events is None:
            self._phase_events = tuple(self.event_file.take_many(
                EVENTS_PER_PHASE, f"event of {self.spec.label} phase {self.phase}"))
        return self._phase_events

    def event_block(self, count: int) -> list[int]:
        """`count` events for one phase that needs more than EVENTS_PER_PHASE."""
        if self._phase_events is not None:
            raise ValueError("event_block: this phase already took its events")
        self._phase_events = tuple(self.event_file.take_many(
            count, f"event of {self.spec.label} phase {self.phase}"))
        return list(self._phase_events)

    def add_phase(self, lanes: dict[int, list[Instruction]]) -> None:
        label = f"{self.spec.label}_p{self.phase}"
        for core, body in sorted(lanes.items()):
            if not body:
                continue
            skip = f"{label}_c{core}"
            _on_core(self.emit, self.core, self.lane, core, skip)
            for instr in body:
                self.emit.append(instr)
            self.emit.label(skip)
        self.emit.op("BAR.CHIP")
        self.phase += 1
        self._phase_events = None


def _put(peer: int, dst: Region, src: Region, event: int, *, add: bool = False,
         waits: tuple[int | Event, ...] = (), sig: int | None = None,
         detached: bool = False) -> Instruction:
    """A DMA.PUT of a piece (a bare RSIG when the piece is empty: the event still counts).
    A wait is an event index or an `Event` with its count; `detached`: `.async`."""
    options = ("async",) if detached else ()
    if src.nbytes == 0:
        instr = instruction("RSIG", peer, Event(event), options=options)
    else:
        name = f"DMA.PUT.{src.dtype}" if add else "DMA.PUT"
        instr = instruction(name, peer, dst.symbol(), src.symbol(), src.nbytes, Event(event),
                            options=(("add",) if add else ()) + options)
    return replace(instr, waits=_events(waits), sigs=_events(() if sig is None else (sig,)))


def _rsig(peer: int, event: int, *, detached: bool = False) -> Instruction:
    """Signal `event` on chip `peer` (no data)."""
    return instruction("RSIG", peer, Event(event), options=("async",) if detached else ())


def _wait(engine: str, event: int, count: int = 1) -> Instruction:
    """`WAIT.engine Eevent:count`."""
    return instruction(f"WAIT.{engine}", Event(event, count))


# ---- direct -----------------------------------------------------------------------------


def _direct_ready(em: _Collective, group: tuple[int, ...], rank: int
                  ) -> dict[int, list[Instruction]]:
    """Lane k tells rank r-k (whose lane k writes into this chip) that this buffer is ready."""
    ready = em.events()[0]
    p = len(group)
    return {k: [_rsig(group[(rank - k) % p], ready)] for k in range(1, p)}


def _direct(em: _Collective, kind: str, group: tuple[int, ...], rank: int, src: Region,
            dst: Region | None, ready: bool) -> None:
    """One direct phase (or two for all-reduce), lanes 1..p-1.

    Reduce-scatter: lane k adds piece r+k into rank r+k (after its readiness); piece r here is
    complete when the p-1 adds have landed. All-gather: lane k writes piece r into rank r+k;
    a piece there is overwritten only after it was read: in an all-reduce, rank r+k's add of
    piece r into this chip has landed (this chip's lanes waited for every add before the
    BAR.CHIP that ends the reduce-scatter). All-to-all: block r+k of src to block r of dst at
    rank r+k.
    """
    p = len(group)
    ready_event, arrive, gathered, _ = em.events()
    waits = (ready_event,) if ready else ()
    lanes: dict[int, list[Instruction]] = {k: [] for k in range(1, p)}
    if ready:
        for k, body in _direct_ready(em, group, rank).items():
            lanes[k] += body
    if kind in ("allreduce", "reducescatter"):
        for k in range(1, p):
            piece = src.piece((rank + k) % p, p)
            lanes[k] += [_put(group[(rank + k) % p], piece, piece, arrive, add=True,
                              waits=waits),
                         _wait("S", arrive)]
        if kind == "allreduce":
            em.add_phase(lanes)
            lanes = {k: [] for k in range(1, p)}
            waits = ()
            ready_event, arrive, gathered, _ = em.events()
    if kind in ("allreduce", "allgather"):
        mine = src.piece(rank, p)
        target = mine
        if kind == "allgather" and dst is not None:  # out of place: src is this chip's piece
            mine, target = src, dst.piece(rank, p)
            lanes[0] = [_put(group[rank], target, mine, gathered), _wait("S", gathered)]
        for k in range(1, p):
            lanes[k] += [_put(group[(rank + k) % p], target, mine, gathered, waits=waits),
                         _wait("S", gathered)]
    if kind == "alltoall":
        assert dst is not None
        for k in range(1, p):
            peer = (rank + k) % p
            lanes[k] += [_put(group[peer], dst.piece(rank, p), src.piece(peer, p), gathered,
                              waits=waits), _wait("S", gathered)]
        own = src.piece(rank, p)
        lanes[0] = [_put(group[rank], dst.piece(rank, p), own, gathered), _wait("S", gathered)]
    em.add_phase(lanes)


# ---- ring -------------------------------------------------------------------------------


def _ring(em: _Collective, kind: str, group: tuple[int, ...], rank: int, src: Region,
          core: int = 0, chunks: int = 1) -> None:
    """One ring phase on one core. Reduce-scatter step s adds piece r-1-s into the right
    neighbour (rank r ends with piece r); all-gather step s writes piece r-s there. Each
    piece goes in `chunks` chunks back to back; chunk j of step s+1 waits for chunk j of
    the left neighbour's step s (its arrivals land in order: one NET queue, one route, so
    the n-th wait takes chunk n). In an all-reduce the first all-gather write waits also
    for the right neighbour's `rsdone`, sent after its last reduce-scatter put has read its
    piece: every piece the all-gather overwrites there has been read."""
    em.add_phase({core: _ring_body(em.events(), kind, group, rank, src, chunks)})


def _ring_body(events: tuple[int, int, int, int], kind: str, group: tuple[int, ...],
               rank: int, src: Region, chunks: int = 1) -> list[Instruction]:
    """The instructions of `_ring` on its core, with these 4 events."""
    p = len(group)
    ready, arrive, gathered, rsdone = events
    left, right = group[(rank - 1) % p], group[(rank + 1) % p]
    body = [_rsig(left, ready)]
    if kind in ("allreduce", "reducescatter"):
        for step in range(p - 1):
            piece = src.piece((rank - 1 - step) % p, p)
            for chunk in range(chunks):
                part = piece.piece(chunk, chunks)
                if step:
                    waits: tuple[int | Event, ...] = (arrive,)
                else:
                    waits = (ready,) if chunk == 0 else ()
                body.append(_put(right, part, part, arrive, add=True, waits=waits))
        if kind == "reducescatter":  # in the NET queue: its puts consume E(arrive) too
            body.append(_wait("NET", arrive, chunks))
        else:
            body.append(_rsig(left, rsdone))
    if kind in ("allreduce", "allgather"):
        for step in range(p - 1):
            piece = src.piece((rank - step) % p, p)
            for chunk in range(chunks):
                part = piece.piece(chunk, chunks)
                if step:
                    waits = (gathered,)
                elif kind == "allreduce":
                    waits = (arrive, rsdone) if chunk == 0 else (arrive,)
                else:
                    waits = (ready,) if chunk == 0 else ()
                body.append(_put(right, part, part, gathered, waits=waits))
        body.append(_wait("NET", gathered, chunks))
    return body


# ---- one shot ---------------------------------------------------------------------------


def _oneshot(em: _Collective, group: tuple[int, ...], rank: int, buf: Region,
             scratch: Region) -> None:
    """All-reduce in one shot. Core 0 copies this chip's buffer to its scratch; after the
    barrier lane k says to rank r-k that this buffer may receive adds (its own data is
    safe in scratch) and adds the whole scratch into rank r+k's buffer. Nothing reads the
    buffer while the adds land; the result is there when the p-1 adds have landed."""
    p = len(group)
    copied = em.events()[2]
    em.add_phase({0: [_put(group[rank], scratch, buf, copied), _wait("S", copied)]})
    ready, arrive, _, _ = em.events()
    lanes = {}
    for k in range(1, p):
        lanes[k] = [_rsig(group[(rank - k) % p], ready),
                    _put(group[(rank + k) % p], buf, scratch, arrive, add=True,
                         waits=(ready,)),
                    _wait("S", arrive)]
    em.add_phase(lanes)


# ---- recursive halving-doubling -------------------------------------------------------


def _rhd(em: _Collective, kind: str, group: tuple[int, ...], rank: int, buf: Region,
         core: int = 0) -> None:
    """Recursive halving-doubling on one core (a power-of-two group of p chips, pieces in
    rank order). Readiness: this chip tells each of its log2(p) partners that its buffer
    may be written, and waits for all of theirs before its first put. Halving step at
    distance d (p/2 .. 1) adds the d pieces of the current block that partner r^d keeps
    into it, after the previous step's add into this chip has landed (what it sends holds
    that contribution); rank r ends with piece r. Doubling step at distance d (1 .. p/2)
    writes this chip's d pieces into partner r^d, after the previous step's block has
    landed here. A piece is overwritten only after the partner's halving put that read it
    has landed: this chip waited for that add before its doubling steps began, and the
    partner's doubling puts follow its own wait for this chip's halving add. Each step has
    its own event, so a fast partner's later step is never counted as an earlier one."""
    p = len(group)
    distances = rhd_distances(p)
    steps = len(distances)
    events = em.event_block(1 + 2 * steps)
    ready, halving, doubling = events[0], events[1:1 + steps], events[1 + steps:]
    all_ready = Event(ready, steps)
    body = [_rsig(group[rank ^ d], ready) for d in distances]
    if kind in ("allreduce", "reducescatter"):
        for step, d in enumerate(distances):
            partner = rank ^ d
            lo = partner // d * d
            region = buf.pieces(lo, lo + d, p)
            waits = (all_ready,) if step == 0 else (halving[step - 1],)
            body.append(_put(group[partner], region, region, halving[step], add=True,
                             waits=waits))
        if kind == "reducescatter":
            body.append(_wait("NET", halving[-1]))
    if kind in ("allreduce", "allgather"):
        for step, d in enumerate(distances[::-1]):
            partner = rank ^ d
            lo = rank // d * d
            region = buf.pieces(lo, lo + d, p)
            if step:
                waits: tuple[int | Event, ...] = (doubling[step - 1],)
            else:
                waits = (halving[-1],) if kind == "allreduce" else (all_ready,)
            body.append(_put(group[partner], region, region, doubling[step], waits=waits))
        body.append(_wait("NET", doubling[-1]))
    em.add_phase({core: body})


# ---- the driver -------------------------------------------------------------------------


def emit_collective(emit: Emitter, spec: CollectiveSpec, chip: int) -> None:
    """Append `spec`'s kernel on `chip` to `emit` (a kernel ending with BAR.CHIP)."""
    group = spec.group
    if chip not in group:
        raise UsageError(f"chip {chip} is not in the collective's group {list(group)}")
    rank = group.index(chip)
    if spec.kind == "alltoall" and (spec.src.nbytes // itemsize(spec.src.dtype)) % len(group):
        raise UsageError(f"all-to-all of {spec.src.nbytes // itemsize(spec.src.dtype)} "
                         f"elements: not a whole number of blocks for {len(group)} chips")
    em = _Collective(spec, chip, emit)
    if len(group) == 1:
        if spec.kind == "alltoall":
            assert spec.dst is not None
            copied = em.events()[2]
            em.add_phase({0: [_put(chip, spec.dst, spec.src, copied), _wait("S", copied)]})
        return
    if spec.algorithm == "direct":
        _direct(em, spec.kind, group, rank, spec.src, spec.dst, ready=True)
    elif spec.algorithm == "oneshot":
        if spec.kind != "allreduce" or spec.scratch is None:
            raise UsageError("oneshot is an all-reduce with a scratch buffer")
        _oneshot(em, group, rank, spec.src, spec.scratch)
    elif spec.algorithm in ("ring", "rhd"):
        if spec.kind == "alltoall":
            raise UsageError(f"all-to-all has no {spec.algorithm} schedule: use direct")
        if spec.algorithm == "rhd" and len(group) & (len(group) - 1):
            raise UsageError(f"recursive halving-doubling over {len(group)} chips: needs a "
                             "power of two")
        buffer = spec.src
        if spec.kind == "allgather" and spec.dst is not None:  # this chip's piece in first
            buffer = spec.dst
            copied = em.events()[2]
            em.add_phase({0: [_put(chip, buffer.piece(rank, len(group)), spec.src, copied),
                              _wait("S", copied)]})
        if spec.algorithm == "ring":
            _ring(em, spec.kind, group, rank, buffer, chunks=spec.chunks)
        else:
            _rhd(em, spec.kind, group, rank, buffer)
    elif spec.algorithm in ("hierarchical(ring)", "hierarchical(rhd)"):
        _hierarchical(em, spec, rank)
    else:
        raise UsageError(f"no schedule for algorithm '{spec.algorithm}'")


def collective_program(spec: CollectiveSpec, chip: int, tensors: list[TensorDecl],
                       machine: str | None = None) -> Program:
    """A program of its own: the `tensors`, `spec`'s kernel on `chip`, HALT."""
    emit = Emitter(machine)
    for tensor in tensors:
        emit.tensor(tensor)
    emit_collective(emit, spec, chip)
    emit.op("HALT")
    return emit.program()


def _hierarchical(em: _Collective, spec: CollectiveSpec, rank: int) -> None:
    """Direct inside the node, ring across nodes (whole nodes of consecutive chips)."""
    per_node = spec.chips_per_node
    group = spec.group
    node, local = divmod(rank, per_node)
    node_group = group[node * per_node:(node + 1) * per_node]
    cross = tuple(group[n * per_node + local] for n in range(len(group) // per_node))
    share = spec.src.piece(local, per_node)
    if spec.kind == "allreduce" and spec.pipeline > 1:
        if spec.algorithm != "hierarchical(ring)":
            raise UsageError("only hierarchical(ring) is pipelined")
        _pipelined(em, spec, node_group, local, cross, node)
    elif spec.kind == "allreduce":
        _direct(em, "reducescatter", node_group, local, spec.src, None, ready=True)
        if spec.algorithm == "hierarchical(rhd)":
            if len(cross) & (len(cross) - 1):
                raise UsageError(f"recursive halving-doubling across {len(cross)} nodes: "
                                 "needs a power of two")
            _rhd(em, "allreduce", cross, node, share)
        else:
            _ring(em, "allreduce", cross, node, share, chunks=spec.chunks)
        _direct(em, "allgather", node_group, local, spec.src, None, ready=False)
    else:
        # the pieces a chip ends with would not be in rank order (node-major): not lowered
        raise UsageError(f"{spec.kind} across nodes has no schedule yet (all-reduce has)")


def _pipelined(em: _Collective, spec: CollectiveSpec, node_group: tuple[int, ...],
               local: int, cross: tuple[int, ...], node: int) -> None:
    """A hierarchical(ring) all-reduce in `spec.pipeline` chunks, in c + 2 stages (phases):
    stage t reduce-scatters chunk t in the node (lanes k = 1 .. c-1, as `_direct`: readiness
    to rank r-k, an add into rank r+k), all-reduces chunk t-1's share over the NICs (core 0,
    `_ring`) and all-gathers chunk t-2 in the node (lanes c-1+k write this chip's piece into
    rank r+k). The parts of a stage touch different chunks; a stage's barrier orders one
    chunk's parts. An all-gather write lands where the peer's reduce-scatter add read this
    chip's piece two stages earlier, after that add had landed here (this chip's lanes
    waited for it)."""
    c = len(node_group)
    chunks = [spec.src.piece(j, spec.pipeline) for j in range(spec.pipeline)]
    for stage in range(spec.pipeline + 2):
        ready, arrive, gathered, _ = events = em.events()
        lanes: dict[int, list[Instruction]] = {}
        if stage < spec.pipeline:
            for k in range(1, c):
                piece = chunks[stage].piece((local + k) % c, c)
                lanes[k] = [_rsig(node_group[(local - k) % c], ready),
                            _put(node_group[(local + k) % c], piece, piece, arrive, add=True,
                                 waits=(ready,)),
                            _wait("S", arrive)]
        if 1 <= stage <= spec.pipeline:
            share = chunks[stage - 1].piece(local, c)
            lanes[0] = _ring_body(events, "allreduce", cross, node, share)
        if stage >= 2:
            mine = chunks[stage - 2].piece(local, c)
            for k in range(1, c):
                lanes[c - 1 + k] = [_put(node_group[(local + k) % c], mine, mine, gathered),
                                    _wait("S", gathered)]
        em.add_phase(lanes)


def collective_programs(kind: str, nbytes: int, chips: int, machine: Machine,
                        dtype: str = "f32", algorithm: str | None = None
                        ) -> tuple[list[Program], CollectiveCost]:
    """One program per chip running collective `kind` on a buffer of `nbytes` (`buf`, and
    `out` for all-to-all), with the algorithm the alpha-beta model picks (or the one named);
    and that model's estimate."""
    cost = collective_cost(kind, nbytes, chips, machine, algorithm=algorithm,
                           lowered_only=True)
    size = itemsize(dtype)
    elements = max(1, nbytes // size)
    tensors = [TensorDecl("buf", dtype, (elements,), 0, "inout")]
    dst = None
    if kind == "alltoall":
        out_at = -(-elements * size // 4096) * 4096
        tensors.append(TensorDecl("out", dtype, (elements,), out_at, "out"))
        dst = Region("out", 0, elements * size, dtype)
    scratch = None
    if cost.algorithm == "oneshot":
        at = -(-elements * size // 4096) * 4096
        tensors.append(TensorDecl("scratch", dtype, (elements,), at, "temp"))
        scratch = Region("scratch", 0, elements * size, dtype)
    spec = CollectiveSpec(kind, cost.algorithm, tuple(range(chips)),
                          Region("buf", 0, elements * size, dtype), dst,
                          machine.chips_per_node, label=kind, scratch=scratch,
                          chunks=cost.chunks, pipeline=cost.pipeline)
    programs = [collective_program(spec, chip, tensors) for chip in range(chips)]
    return programs, cost


# ---- asynchronous all-reduce (overlapped with compute) ----------------------------------

# ASYNC_EVENTS (compiler/backend/allocators.py), the top events of every core: an
# asynchronous all-reduce runs on one core's NET queue while that core's engines run later
# kernels, whose event files never hand them out: ready, arrive, gathered, sent


def emit_async_allreduce_start(emit: Emitter, group: tuple[int, ...], chip: int,
                               buf: Region, core: int, label: str) -> None:
    """Append the start of an all-reduce of `buf` over `group` that runs on core `core`'s
    NET queue while the chip goes on (a direct reduce-scatter then all-gather, every
    transfer `.async`, ordered only by events, so no barrier waits for it):

    - `RSIG .async` "ready" to every peer: this chip's buffer holds its contribution (the
      kernels that wrote it ended with the BAR.CHIP before this region);
    - after all p-1 readies (`.wait ready:p-1`), `.add` piece r+k into rank r+k for
      k = 1..p-1 (they land on core `core` there: event "arrive");
    - after all p-1 adds into this chip's piece r have landed (`.wait arrive:p-1`), write
      piece r into every peer ("gathered" there); the last write also signals "sent" here.

    A piece is overwritten only after it was read: rank q's write of its piece q lands here
    after q's arrivals, which include this chip's add that read its piece q. Every chip
    runs the same code, so all of a collective's transfers use the same core index and
    its events (`ASYNC_EVENTS`); a core hosts one collective at a time (the caller ends the
    previous one first), so a later collective's signals never meet an earlier one's waits.
    `emit_async_allreduce_done` waits for it."""
    if chip not in group:
        raise UsageError(f"chip {chip} is not in the collective's group {list(group)}")
    p = len(group)
    rank = group.index(chip)
    ready, arrive, gathered, sent = ASYNC_EVENTS
    here, lane = _region_registers()
    # a control-only region: no launch unless it is the program's first (runtime/engine.py)
    emit.kernel(label)
    emit.op("GETID", Reg(here), Keyword("core"))
    skip = f"{label}_c{core}"
    _on_core(emit, here, lane, core, skip)
    for k in range(1, p):
        emit.append(_rsig(group[(rank - k) % p], ready, detached=True))
    for k in range(1, p):
        piece = buf.piece((rank + k) % p, p)
        emit.append(_put(group[(rank + k) % p], piece, piece, arrive, add=True,
                         waits=(Event(ready, p - 1),) if k == 1 else (), detached=True))
    mine = buf.piece(rank, p)
    for k in range(1, p):
        emit.append(_put(group[(rank + k) % p], mine, mine, gathered,
                         waits=(Event(arrive, p - 1),) if k == 1 else (),
                         sig=sent if k == p - 1 else None, detached=True))
    emit.label(skip)


def emit_async_allreduce_done(emit: Emitter, started: list[tuple[int, int]],
                              label: str) -> None:
    """Append the wait for the asynchronous all-reduces `started` ((core, group size)
    each): on its core, every peer's piece has landed and this chip's last write has landed
    (so its NET queue is past every wait on the collective's events); then `BAR.CHIP`,
    after which every core may read the results."""
    _, _, gathered, sent = ASYNC_EVENTS
    # a control-only region: no launch of its own after the kernels before it
    here, lane = _region_registers()
    emit.kernel(label)
    emit.op("GETID", Reg(here), Keyword("core"))
    for core, p in started:
        skip = f"{label}_c{core}"
        _on_core(emit, here, lane, core, skip)
        emit.append(_wait("S", gathered, p - 1))
        emit.append(_wait("S", sent))
        emit.label(skip)
    emit.op("BAR.CHIP")
