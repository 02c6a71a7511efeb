"""Codegen of a flash-attention nest (schedule `flash`): MX and VX overlapped across steps.

The generic protocol (codegen.py) runs a step's compute in statement order, so a step of
flash attention would serialise MX (scores), VX (online softmax) and MX (P @ V). Here the
scores S and the probabilities P alternate between two copies by step parity, and the MX
stream of step t is `S(t) = Q K(t)` then `O += P(t-1) V(t-1)`: the matrix engine computes the
next scores while the vector engine still works on this step's softmax. K and V rotate
through three copies, and step t issues the loads of step t + 1 before its own work: they
wait only for the P @ V of step t - 2, so their HBM/L2 latency hides behind this step's
softmax instead of delaying the next step's scores.

This module says what runs where; the pipelining step (compiler/backend/pipelining.py)
places the copies, credits and events. Its schedule (`FlashSchedule`):

- rings: K/V (`kv`: loaded one step ahead, last read by P @ V one step behind, so
  `copies_needed(1, 1)` = 3 copies, taken in turn by every step of every tile of the core),
  S/P (`sp`: two copies by step parity, ordered by the hand-offs), Q and O (`q`, `o`: one
  or two copies by tile parity where the ACC has room; the tile's store returns both);
- stages: the scores S(t) on MX consume the step's two K/V loads (and, on a tile's first
  step, Q); the softmax on VX; P @ V on MX releases the K/V copy; the epilogue on VX and
  the stores;
- hand-offs: scores -> softmax (`s_ready`), softmax -> P @ V
  (`vx_done`), P @ V -> the next softmax's O rescale (`o_acc`), the tile's last P @ V ->
  the epilogue (`o_done`).

Every event is back at 0 when the nest ends (`Pipeline.drain`).

Registers: the nest's `NestRegisters` (tile loop, coordinates, steps) and `FlashRegisters`
(the copies of S/P, K/V, Q and O in use), from the program's register file.

Masks (causal, key bounds) run on the last key step of a tile, and the causal one on its
first step where that key tile meets the diagonal (predicated): with square tiles every
other visited key tile lies wholly below it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from zhenwu.compiler.backend.codegen import (
    CodegenState,
    NestContext,
    NestRegisters,
    causal_axes,
    emit_causal_tile,
    emit_descriptors,
    emit_tile_coordinates,
    emit_tiles_of_core,
)
from zhenwu.compiler.backend.emitter import instruction
from zhenwu.compiler.backend.kernel_ir import Iota, Load, Nest, Store, Vec
from zhenwu.compiler.backend.pipelining import (
    Pipeline,
    Ring,
    Stage,
    copies_needed,
    handoff,
    issue_loads,
    peeled_loop,
    prefetch,
)
from zhenwu.isa.program import LabelRef, Predicate, Reg

# K and V are loaded one key step ahead of the scores that read them first, and P @ V, their
# last reader, runs one step behind
KV_LEAD, KV_LAG = 1, 1


@dataclass(frozen=True)
class FlashSchedule:
    """The rings and hand-offs of a flash nest (module docstring)."""

    kv: Ring          # K and V (three copies)
    sp: Ring          # S and P (two copies by step parity)
    q: Ring           # Q and O (one or two copies by tile parity)
    o: Ring
    s_ready: int      # S(t) -> the softmax of t
    vx_done: int      # the softmax of t (P(t), O rescaled) -> P(t) @ V(t)
    o_acc: int        # P(t-1) @ V(t-1) -> the O rescale of step t
    o_done: int       # the tile's last P @ V -> its epilogue

    @classmethod
    def of(cls, nest: Nest, events) -> FlashSchedule:
        """The schedule of `nest`, its events taken from `events`."""
        kv_copies = copies_needed(KV_LEAD, KV_LAG)
        if nest.buffer("kt").copies != kv_copies or nest.buffer("vt").copies != kv_copies:
            raise ValueError(f"a flash nest's K and V need {kv_copies} copies")
        kv, q, o = (Ring.loaded(nest.buffer(name), events, f"flash {name}")
                    for name in ("kt", "q", "o"))
        handoffs = (events.take(f"flash {name}")
                    for name in ("s_ready", "vx_done", "o_acc", "o_done"))
        return cls(kv, Ring(2, nest.buffer("p").stride), q, o, *handoffs)

    @property
    def pipeline(self) -> Pipeline:
        return Pipeline([self.kv, self.q, self.o])


@dataclass(frozen=True)
class FlashRegisters:
    """The registers a flash nest keeps besides the nest's loop registers."""

    cur: int          # S and P copy of step t: (t & 1) * stride
    prev: int         # that of step t - 1
    stride: int       # holds the S/P copy stride (prev = stride - cur)
    kv_cur: int       # the K/V copy of steps t, t - 1, t + 1 (three copies, a ring)
    kv_prev: int
    kv_next: int
    kv_base: int      # K/V steps of this core's earlier tiles
    kv_t: int         # kv_base + t
    first_o: int | None  # this step's P @ V is the tile's first (it initialises O)
    q: int | None     # this tile's copies of Q and O (two copies by tile parity)
    o: int | None
    o_last: int | None  # the previous tile's copy of O (its deferred last P @ V)
    diag: int | None  # this tile's first key tile meets the causal diagonal


def emit_flash_nest(state: CodegenState, nest: Nest) -> None:
    """The code of a flash nest (see the module docstring); inside the nest's register and
    event scope (`codegen.emit_nest`)."""
    emit, registers = state.emit, state.registers
    rings = hand = FlashSchedule.of(nest, state.events)
    regs = NestRegisters.take(registers, state.program, nest, steps=True, protocol=False)
    descs = emit_descriptors(emit, nest)
    parity = {b.name for b in nest.buffers if b.copies in (2, 3)}
    tile_copies = rings.o.copies  # Q and O: one copy per tile, or two by parity
    ctx = NestContext(nest, descs, regs)

    def bind(**names: int | None) -> None:
        """Buffers (of several copies) addressed from these registers from now on."""
        ctx.bases.update({name: reg for name, reg in names.items() if name in parity})

    q_load = next(s for s in nest.init if isinstance(s, Load))
    # a tile's first P @ V initialises O (mx_accumulate): no zeroing, and its first
    # softmax does not rescale O
    def rescales_o(st) -> bool:
        return isinstance(st, Vec) and st.dst == "o" and st.op in ("MUL", "DUP")

    init_vx = [s for s in nest.init if not isinstance(s, Load) and not rescales_o(s)]
    kt_load, v_load = [s for s in nest.step if isinstance(s, Load)]
    compute = [s for s in nest.step if not isinstance(s, Load)]
    mma_s, mma_o = compute[0], compute[-1]
    chain = compute[1:-1]
    mask_end = next(i for i, s in enumerate(chain)
                    if isinstance(s, Vec) and s.op == "DUP" and s.dst == "rmax")
    masked, plain = chain, chain[mask_end:]
    scale_first = [s for s in chain[:mask_end] if isinstance(s, Vec) and s.op == "MUL"
                   and s.dst == "s"]
    plain = scale_first + plain   # an unfolded scale applies on every step
    # the first of several steps needs no key-bound mask (only a last key tile is partial),
    # and the causal mask only on a tile whose first key tile meets the diagonal (its
    # queries start before tile_k): those statements are predicated on `fr.diag`
    causal_mask, key_mask = [], []
    for index, stmt in enumerate(chain[:mask_end]):
        if isinstance(stmt, Vec) and stmt.op in ("CMP.ge", "CMP.lt"):
            (causal_mask if stmt.op == "CMP.ge" else key_mask).extend(
                (stmt, chain[index + 1]))
    iotas = [st for st in chain[:mask_end] if isinstance(st, Iota)]
    dropped = {id(st) for st in key_mask + ([] if causal_mask else iotas)}
    first_chain = [st for st in masked if id(st) not in dropped and not rescales_o(st)]
    first_predicated = {id(st) for st in iotas + causal_mask} if causal_mask else set()
    epilogue = [s for s in nest.final if not isinstance(s, Store)]
    stores = [s for s in nest.final if isinstance(s, Store)]  # O last (a split's lse first)
    grid = nest.grid
    causal = causal_axes(nest)
    k_axis = len(nest.extents) - 1       # [batch..., queries, head dim, keys]
    q_axis = k_axis - 2
    single = grid[k_axis] == 1
    k_reg = regs.coord(k_axis) if grid[k_axis] > 1 else None
    take = registers.take
    fr = FlashRegisters(
        take("S/P copy of step t"), take("S/P copy of step t - 1"), take("S/P copy stride"),
        take("K/V copy of step t"), take("K/V copy of step t - 1"),
        take("K/V copy of step t + 1"), take("K/V steps of earlier tiles"),
        take("K/V step of this core"),
        None if single else take("first P @ V of the tile"),
        take("Q copy of this tile") if tile_copies == 2 else None,
        take("O copy of this tile") if tile_copies == 2 else None,
        take("O copy of the previous tile") if tile_copies == 2 else None,
        take("first key tile meets the diagonal") if first_predicated and not single
        else None)

    kv_loads = [kt_load, v_load]

    def parity_regs(step_reg: int) -> None:
        """The copies of step t (in a register): S/P by parity (cur, and prev the other
        one), K/V of steps t and t - 1 in their ring (kv_cur, kv_prev)."""
        # S and P alternate by the core's step count, not the tile's: the next tile's S(0)
        # runs while the softmax still reads this tile's last S
        # the ring turns per core, not per tile: a tile's first loads go to the slot after
        # the previous tile's last, so a credit (returned in load order) frees that slot
        emit.op("ADD", Reg(fr.kv_t), Reg(step_reg), Reg(fr.kv_base))
        rings.sp.select(emit, fr.cur, fr.kv_t)
        rings.sp.other(emit, fr.prev, fr.cur, fr.stride)
        rings.kv.select(emit, fr.kv_cur, fr.kv_t, modulo=True)
        rings.kv.select(emit, fr.kv_prev, fr.kv_t, -1)

    def emit_load(load: Load, waits, sigs) -> None:
        emit.op(f"DMA.LD.{nest.buffer(load.dst).dtype}", ctx.tile(load.dst),
                ctx.ref(load.view), waits=waits, sigs=sigs)

    def step_ahead(sign: int) -> None:
        if k_reg is not None:
            emit.op("ADD" if sign > 0 else "SUB", Reg(k_reg), Reg(k_reg), nest.tile[k_axis])

    def prefetch_next() -> None:
        """The loads of step t + 1 (t in regs.step); the k coordinate is t's again after."""
        bind(kt=fr.kv_next, vt=fr.kv_next)
        prefetch(emit, rings.kv, fr.kv_next, fr.kv_t, kv_loads, emit_load, shift=KV_LEAD,
                 advance=partial(step_ahead, 1), restore=partial(step_ahead, -1))

    def key_step(chain: list, first: bool) -> tuple[Stage, Stage, Stage]:
        """The stages of key step t and their hand-offs: S(t) on MX (it reads the step's K;
        on a tile's first step also Q), the softmax of t on VX (`chain`), and P(t-1) @ V(t-1)
        on MX, which releases that step's K/V copy and hands O to the next rescale."""
        scores = Stage(["MX"]).consume(rings.kv, len(kv_loads))
        if first:
            scores.consume(rings.q, 1)
        accumulate = Stage(["MX"]).release(rings.kv)
        softmax = Stage(["VX"] * len(chain))
        handoff(hand.s_ready, scores, softmax)
        handoff(hand.vx_done, softmax, accumulate)
        rescale = [i for i, s in enumerate(chain) if isinstance(s, Vec) and s.op == "MUL"
                   and s.dst == "o"]
        if not first and rescale:
            handoff(hand.o_acc, accumulate, softmax, at=rescale[0])
        return scores, accumulate, softmax

    def tile_end() -> tuple[Stage, Stage, Stage]:
        """The stages that end a tile: its last P @ V (MX), the epilogue O / l (VX) and
        the stores, which return the tile's Q and O copies."""
        accumulate = Stage(["MX"]).wait((hand.vx_done, 1)).release(rings.kv)
        finish = Stage(["VX"] * len(epilogue)).signal(rings.o.landed())
        handoff(hand.o_done, accumulate, finish)
        store = Stage(["ST"] * len(stores)).consume(rings.o, 1)
        store.release(rings.q).release(rings.o)
        return accumulate, finish, store

    def mx_accumulate(stage: Stage, first: bool | None = False) -> None:
        """O(t-1) += P(t-1) V(t-1); the tile's first P @ V initialises O (`first`: True,
        or None when step t in regs.step decides: t == 1, a predicated pair, which carry
        the same events)."""
        bind(p=fr.prev, vt=fr.kv_prev)
        init = ctx.instruction(replace(mma_o, mode="init"), False)
        acc = ctx.instruction(mma_o, False)
        if first is None:
            emit.op("SEQ", Reg(fr.first_o), Reg(regs.step), 1)
            stage.emit(emit, [replace(init, predicate=Predicate(fr.first_o))])
            stage.emit(emit, [replace(acc, predicate=Predicate(fr.first_o, True))])
        else:
            stage.emit(emit, [init if first else acc])

    def previous_tile_output(tile_count: int) -> None:
        """The last P @ V of the core's previous tile (`tile_count` - 1): P and V of the
        core's step kv_base - 1, O of that tile's copy. Issued after the next tile's S(0)
        (deferred), so the matrix engine computes those scores while the vector engine
        still runs the previous tile's last softmax, instead of waiting for it."""
        emit.op("SUB", Reg(fr.kv_t), Reg(fr.kv_base), 1)
        rings.sp.select(emit, fr.prev, fr.kv_t)
        rings.kv.select(emit, fr.kv_prev, fr.kv_t, modulo=True)
        if tile_copies == 2:
            rings.o.select(emit, fr.o_last, tile_count, -1)
            bind(o=fr.o_last)
        mx_accumulate(tile_end()[0], first=single)
        if tile_copies == 2:
            bind(o=fr.o)

    def tile_output(o_reg: int | None = None) -> None:
        """The epilogue (O / l) and the stores of a tile whose last P @ V is issued; with
        `o_reg`, the previous tile's (deferred): its O copy, its sum copied to `lprev`."""
        if o_reg is not None:
            bind(o=o_reg)
        stmts = epilogue
        if o_reg is not None:
            stmts = [replace(stmt, srcs=tuple("lprev" if src == "l" else src
                                               for src in stmt.srcs)) for stmt in epilogue]
        _, finish, store = tile_end()
        finish.emit(emit, [ctx.instruction(stmt, False) for stmt in stmts])
        store.emit(emit, [instruction(f"DMA.ST.{nest.buffer(st.src).dtype}", ctx.ref(st.view),
                                      ctx.tile(st.src)) for st in stores])
        if tile_copies == 2:
            bind(o=fr.o)

    # A tile's last P @ V runs after the next tile's first scores (across the tile boundary)
    # only when Q and O have a copy per tile parity: with one copy, the next tile's Q load
    # waits for this tile's store, which waits for that P @ V (a deadlock on MX)
    across_tiles = tile_copies == 2
    # The epilogue of a tile is deferred into the next tile's iteration (after its first
    # softmax) when O has a copy per tile parity, the only store is O's and registers are
    # left to save its coordinates: the vector engine then never waits for a tile's last
    # P @ V
    store_coords = sorted({regs.coord(a) for st in stores for a in st.view.axes
                           if grid[a] > 1})
    deferred = (tile_copies == 2 and len(stores) == 1
                and any(b.name == "lprev" for b in nest.buffers)
                and all(isinstance(st, Vec) for st in epilogue))
    saved: list[int] = []
    if deferred:   # the previous tile's store coordinates, if registers are left for them
        saved = [registers.take_optional(f"previous tile's coordinate {index}")
                 for index in range(len(store_coords))]
        if None in saved:
            registers.free(*saved)
            deferred, saved = False, []

    def swap_coords() -> None:
        """Exchange the store coordinates with the saved ones."""
        with registers.scope("coordinate swap"):
            scratch = registers.take("swap scratch")
            for reg, save in zip(store_coords, saved):
                emit.op("MOV", Reg(scratch), Reg(reg))
                emit.op("MOV", Reg(reg), Reg(save))
                emit.op("MOV", Reg(save), Reg(scratch))

    def vx_chain(stage: Stage, stmts: list, predicated: set[int] = frozenset()) -> None:
        """The softmax of one step on VX; statements whose id is in `predicated` run only
        where `fr.diag` is set (their waits go before them: a predicated-off one has none)."""
        bind(s=fr.cur, p=fr.cur)
        instrs = [ctx.instruction(stmt, False) for stmt in stmts]
        instrs = [replace(instr, predicate=Predicate(fr.diag)) if id(stmt) in predicated
                  else instr for stmt, instr in zip(stmts, instrs)]
        stage.emit(emit, instrs, conditional={index for index, stmt in enumerate(stmts)
                                              if id(stmt) in predicated})

    # credits: the K/V copies; the output tiles (and Q) free for the first tiles
    rings.pipeline.start(emit)
    emit_tiles_of_core(emit, regs, nest.parallel_tiles)
    emit.op("LI", Reg(fr.stride), rings.sp.stride)
    emit.op("LI", Reg(fr.kv_base), 0)
    emit.op("LOOP", Reg(regs.tile_loop), Reg(regs.mine))
    if causal:
        emit_causal_tile(emit, registers, regs, nest, causal)
    else:
        emit.op("MUL", Reg(regs.tile), Reg(regs.tile_loop), Reg(regs.cores))
        emit.op("ADD", Reg(regs.tile), Reg(regs.tile), Reg(regs.core))
        par_axes = [a for a, k in enumerate(nest.kinds) if k == "p" and grid[a] > 1]
        emit_tile_coordinates(emit, regs, regs.tile, par_axes, nest)
        emit.op("LI", Reg(regs.steps), grid[k_axis])
        emit.op("LI", Reg(regs.middle), max(grid[k_axis] - 2, 0))
    if tile_copies == 2:
        rings.q.select(emit, fr.q, regs.tile_loop)
        rings.o.select(emit, fr.o, regs.tile_loop)
        bind(q=fr.q, o=fr.o)
    # the tile: Q, and the running max, sum and output
    issue_loads(rings.q, [q_load], emit_load)

    first_chain = [st for st in masked if not rescales_o(st)] if single else first_chain
    first_predicated = first_predicated if not single else set()

    def key_iteration(first: bool, last: bool) -> None:
        """Key step t of the tile: the first loads its own K/V, every one but the last
        prefetches step t + 1's; S(t) on MX, then P(t-1) @ V(t-1) (on the first step: the
        previous tile's last), and the softmax of t on VX: the first's skips the key-bound
        mask, the middle ones' every mask, the last's none."""
        if k_reg is not None:   # the key coordinate of step t
            if first:
                emit.op("LI", Reg(k_reg), 0)
            else:
                emit.op("MUL", Reg(k_reg), Reg(regs.step), nest.tile[k_axis])
        if first:
            emit.op("LI", Reg(regs.step), 0)
        parity_regs(regs.step)
        if first:   # the pipeline's prologue: step 0's own K and V
            bind(kt=fr.kv_cur, vt=fr.kv_cur)
            issue_loads(rings.kv, kv_loads, emit_load)
        if not last:
            prefetch_next()
        chain = first_chain if first else masked if last else plain
        scores, accumulate, softmax = key_step(chain, first)
        bind(s=fr.cur, kt=fr.kv_cur)
        scores.emit(emit, [ctx.instruction(mma_s, True)])
        if not first:
            mx_accumulate(accumulate, first=None)
            vx_chain(softmax, chain)
            return
        if across_tiles:
            label = f"flash_first_tile_{len(emit.lines)}"
            emit.op("BEQZ", Reg(regs.tile_loop), LabelRef(label))
            previous_tile_output(regs.tile_loop)
            emit.label(label)
        # m, l and O of the tile, on VX after the previous tile's softmax; issued after S(0),
        # which must not wait with the scalar for room in the vector queue; the first takes
        # the credit of the tile's O copy
        Stage(["VX"] * len(init_vx)).acquire(rings.o).emit(
            emit, [ctx.instruction(stmt, True) for stmt in init_vx])
        if first_predicated:
            if grid[q_axis] > 1:
                emit.op("SLT", Reg(fr.diag), Reg(regs.coord(q_axis)), nest.tile[k_axis])
            else:
                emit.op("LI", Reg(fr.diag), 1)
        vx_chain(softmax, chain, first_predicated)
        if deferred:
            # the previous tile's O / l and store, on VX after this tile's first softmax
            # (which its last P @ V overlaps), with that tile's coordinates swapped in
            label = f"flash_first_epilogue_{len(emit.lines)}"
            emit.op("BEQZ", Reg(regs.tile_loop), LabelRef(label))
            swap_coords()
            tile_output(fr.o_last)
            swap_coords()
            emit.label(label)

    # the key steps of a tile (a causal tile's count is known at run time)
    peeled_loop(emit, key_iteration, regs.step_loop, regs.step, steps=1 if single else None,
                registers=None if single else (regs.steps, regs.middle))
    # the last step's P @ V: in the next tile's iteration (or after the loop) or at the
    # tile's end, and the epilogue waits for it
    emit.op("ADD", Reg(fr.kv_base), Reg(fr.kv_base), 1 if single else Reg(regs.steps))
    if not across_tiles:
        previous_tile_output(regs.tile_loop)
    if deferred:
        # this tile's sum and store coordinates, for its epilogue in the next iteration
        emit(ctx.instruction(Vec("COPY", "f32", "lprev", ("l",)), False))
        for reg, save in zip(store_coords, saved):
            emit.op("MOV", Reg(save), Reg(reg))
    else:
        tile_output()
    emit.op("ENDLOOP")
    if across_tiles:
        label = f"flash_no_tile_{len(emit.lines)}"
        emit.op("BEQZ", Reg(regs.mine), LabelRef(label))
        previous_tile_output(regs.mine)
        if deferred:
            for reg, save in zip(store_coords, saved):
                emit.op("MOV", Reg(reg), Reg(save))
            tile_output(fr.o_last)
        emit.label(label)
    rings.pipeline.drain(emit)


__all__ = ["FlashRegisters", "FlashSchedule", "emit_flash_nest"]
