"""Codegen of a flash-attention nest (schedule `flash`): MX and VX overlapped across steps.

The generic protocol (codegen.py) runs a step's compute in statement order, so a step of
flash attention would serialise MX (scores), VX (online softmax) and MX (P @ V). Here the
scores S and the probabilities P alternate between two copies by step parity, and the MX
stream of step t is `S(t) = Q K(t)` then `O += P(t-1) V(t-1)`: the matrix engine computes the
next scores while the vector engine still works on this step's softmax. K and V rotate
through three copies, and step t issues the loads of step t + 1 before its own work: they
wait only for the P @ V of step t - 2, so their HBM/L2 latency hides behind this step's
softmax instead of delaying the next step's scores.

Events (`FlashEvents`, taken from the program's event file for this nest; all back to 0
when the nest ends):

- kv_full: K/V loaded (2 per step) -> S(t);  kv_free: K/V credits (3 copies, taken in turn
  by every step of every tile of the core), returned by O(t-1);
- q_full: Q loaded -> S(0);  q_free / o_free: the output tile is free (store done) -> Q
  load / O init (Q and O have two copies by tile parity where the ACC has room: two
  credits);
- s_ready: S(t) ready -> VX(t);  vx_done: VX(t) done (P(t), O scaled) -> O(t);
- o_acc: O(t-1) accumulated -> VX(t) scales O;  o_done: last O -> VX epilogue -> o_full ->
  store.

Registers: the nest's `NestRegisters` (tile loop, coordinates, steps) and `FlashRegisters`
(the copies of S/P, K/V, Q and O in use), from the program's register file.

Masks (causal, key bounds) run on the last key step of a tile, and the causal one on its
first step where that key tile meets the diagonal (predicated): with square tiles every
other visited key tile lies wholly below it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

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
from zhenwu.compiler.backend.kernel_ir import Iota, Load, Nest, Store, Vec
from zhenwu.isa.program import Event, LabelRef, Predicate, Reg


@dataclass(frozen=True)
class FlashEvents:
    """The events of a flash nest (module docstring)."""

    kv_full: int
    kv_free: int
    o_done: int
    q_free: int
    q_full: int
    s_ready: int
    vx_done: int
    o_acc: int
    o_full: int
    o_free: int


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
    ev = FlashEvents(*(state.events.take(f"flash {f.name}") for f in fields(FlashEvents)))
    regs = NestRegisters.take(registers, state.program, nest, steps=True, protocol=False)
    descs = emit_descriptors(emit, nest)
    parity = {b.name for b in nest.buffers if b.copies in (2, 3)}
    tile_copies = nest.buffer("o").copies  # Q and O: one copy per tile, or two by parity
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
    stride = nest.buffer("p").stride
    ring = nest.buffer("kt").stride
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

    def parity_regs(step_reg: int) -> None:
        """cur = (t & 1) * stride, prev = ((t - 1) & 1) * stride for step t in a register;
        kv_cur/prev/next = (t mod 3, t - 1 mod 3, t + 1 mod 3) * the ring stride."""
        # S and P alternate by the core's step count, not the tile's: the next tile's S(0)
        # runs while the softmax still reads this tile's last S
        # the ring turns per core, not per tile: a tile's first loads go to the slot after
        # the previous tile's last, so a credit (returned in load order) frees that slot
        emit.op("ADD", Reg(fr.kv_t), Reg(step_reg), Reg(fr.kv_base))
        emit.op("AND", Reg(fr.cur), Reg(fr.kv_t), 1)
        emit.op("MUL", Reg(fr.cur), Reg(fr.cur), stride)
        emit.op("SUB", Reg(fr.prev), Reg(fr.stride), Reg(fr.cur))
        for reg, shift in ((fr.kv_cur, 0), (fr.kv_prev, 2), (fr.kv_next, 1)):
            emit.op("ADD", Reg(reg), Reg(fr.kv_t), shift)
            emit.op("REM", Reg(reg), Reg(reg), 3)
            emit.op("MUL", Reg(reg), Reg(reg), ring)

    def loads(slot: int) -> None:
        bind(kt=slot, vt=slot)
        emit.op(f"DMA.LD.{nest.buffer('kt').dtype}", ctx.tile("kt"), ctx.ref(kt_load.view),
                waits=[(ev.kv_free, 1)], sigs=[(ev.kv_full, 1)])
        emit.op(f"DMA.LD.{nest.buffer('vt').dtype}", ctx.tile("vt"), ctx.ref(v_load.view),
                sigs=[(ev.kv_full, 1)])

    def prefetch() -> None:
        """The loads of step t + 1 (t in regs.step); the k coordinate is t's again after."""
        if k_reg is not None:
            emit.op("ADD", Reg(k_reg), Reg(k_reg), nest.tile[k_axis])
        loads(fr.kv_next)
        if k_reg is not None:
            emit.op("SUB", Reg(k_reg), Reg(k_reg), nest.tile[k_axis])

    def mx_scores(first: bool) -> None:
        bind(s=fr.cur, kt=fr.kv_cur)
        waits = [(ev.kv_full, 2)] + ([(ev.q_full, 1)] if first else [])
        emit(ctx.instruction(mma_s, True), waits=waits, sigs=[(ev.s_ready, 1)])

    def mx_accumulate(last: bool, first: bool | None = False) -> None:
        """O(t-1) += P(t-1) V(t-1); the tile's first P @ V initialises O (`first`: True,
        or None when step t in regs.step decides: t == 1, a predicated pair)."""
        bind(p=fr.prev, vt=fr.kv_prev)
        sigs = [(ev.kv_free, 1), (ev.o_done if last else ev.o_acc, 1)]
        init = ctx.instruction(replace(mma_o, mode="init"), False)
        acc = ctx.instruction(mma_o, False)
        if first is None:
            emit.op("SEQ", Reg(fr.first_o), Reg(regs.step), 1)
            emit(replace(init, predicate=Predicate(fr.first_o)), waits=[(ev.vx_done, 1)],
                 sigs=sigs)
            emit(replace(acc, predicate=Predicate(fr.first_o, True)),
                 waits=[(ev.vx_done, 1)], sigs=sigs)
        else:
            emit(init if first else acc, waits=[(ev.vx_done, 1)], sigs=sigs)

    def previous_tile_output(tile_count: int) -> None:
        """The last P @ V of the core's previous tile (`tile_count` - 1): P and V of the
        core's step kv_base - 1, O of that tile's copy. Issued after the next tile's S(0)
        (deferred), so the matrix engine computes those scores while the vector engine
        still runs the previous tile's last softmax, instead of waiting for it."""
        emit.op("SUB", Reg(fr.kv_t), Reg(fr.kv_base), 1)
        emit.op("AND", Reg(fr.prev), Reg(fr.kv_t), 1)
        emit.op("MUL", Reg(fr.prev), Reg(fr.prev), stride)
        emit.op("REM", Reg(fr.kv_prev), Reg(fr.kv_t), 3)
        emit.op("MUL", Reg(fr.kv_prev), Reg(fr.kv_prev), ring)
        if tile_copies == 2:
            emit.op("SUB", Reg(fr.o_last), Reg(tile_count), 1)
            emit.op("AND", Reg(fr.o_last), Reg(fr.o_last), 1)
            emit.op("MUL", Reg(fr.o_last), Reg(fr.o_last), nest.buffer("o").stride)
            bind(o=fr.o_last)
        mx_accumulate(True, first=single)
        if tile_copies == 2:
            bind(o=fr.o)

    def tile_output(o_reg: int | None = None) -> None:
        """The epilogue (O / l) and the stores of a tile whose last P @ V is issued; with
        `o_reg`, the previous tile's (deferred): its O copy, its sum copied to `lprev`."""
        if o_reg is not None:
            bind(o=o_reg)
        for index, stmt in enumerate(epilogue):
            if o_reg is not None:
                stmt = replace(stmt, srcs=tuple("lprev" if src == "l" else src
                                                for src in stmt.srcs))
            emit(ctx.instruction(stmt, False), waits=[(ev.o_done, 1)] if index == 0 else [],
                 sigs=[(ev.o_full, 1)] if index == len(epilogue) - 1 else [])
        for index, store in enumerate(stores):
            last = index == len(stores) - 1
            emit.op(f"DMA.ST.{nest.buffer(store.src).dtype}", ctx.ref(store.view),
                    ctx.tile(store.src), waits=[(ev.o_full, 1)] if index == 0 else [],
                    sigs=[(ev.q_free, 1), (ev.o_free, 1)] if last else [])
        if tile_copies == 2:
            bind(o=fr.o)

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

    def vx_chain(stmts: list, first: bool, predicated: set[int] = frozenset()) -> None:
        """The softmax of one step on VX; statements whose id is in `predicated` run only
        where `fr.diag` is set (they carry no events: a predicated-off one has none)."""
        bind(s=fr.cur, p=fr.cur)
        scale_o = [i for i, s in enumerate(stmts) if isinstance(s, Vec) and s.op == "MUL"
                   and s.dst == "o"]
        ready_waited = bool(stmts) and id(stmts[0]) in predicated
        if ready_waited:
            emit.op("WAIT.VX", Event(ev.s_ready, 1))
        for index, stmt in enumerate(stmts):
            waits, sigs = [], []
            if index == 0 and not ready_waited:
                waits.append((ev.s_ready, 1))
            if not first and scale_o and index == scale_o[0]:
                waits.append((ev.o_acc, 1))
            if index == len(stmts) - 1:
                sigs.append((ev.vx_done, 1))
            instr = ctx.instruction(stmt, False)
            if id(stmt) in predicated:
                assert not waits and not sigs
                instr = replace(instr, predicate=Predicate(fr.diag))
            emit(instr, waits=waits, sigs=sigs)

    # credits: three K/V copies; the output tiles (and Q) free for the first tiles
    emit.op("SIG.S", Event(ev.kv_free, 3))
    emit.op("SIG.S", Event(ev.q_free, tile_copies))
    emit.op("SIG.S", Event(ev.o_free, tile_copies))
    emit_tiles_of_core(emit, regs, nest.parallel_tiles)
    emit.op("LI", Reg(fr.stride), stride)
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
        for reg, name in ((fr.q, "q"), (fr.o, "o")):
            emit.op("AND", Reg(reg), Reg(regs.tile_loop), 1)
            emit.op("MUL", Reg(reg), Reg(reg), nest.buffer(name).stride)
        bind(q=fr.q, o=fr.o)
    # the tile: Q, and the running max, sum and output
    emit.op(f"DMA.LD.{nest.buffer('q').dtype}", ctx.tile("q"), ctx.ref(q_load.view),
            waits=[(ev.q_free, 1)], sigs=[(ev.q_full, 1)])

    def init_running() -> None:
        """m, l and O of the tile, on VX after the previous tile's softmax; issued after
        S(0), which must not wait with the scalar for room in the vector queue."""
        for index, stmt in enumerate(init_vx):
            emit(ctx.instruction(stmt, True), waits=[(ev.o_free, 1)] if index == 0 else [])

    def step_coord(value_reg: int | None, value: int | None = None) -> None:
        if k_reg is None:
            return
        if value is not None:
            emit.op("LI", Reg(k_reg), value * nest.tile[k_axis])
        else:
            emit.op("MUL", Reg(k_reg), Reg(value_reg), nest.tile[k_axis])

    # step 0 (its K/V, and those of step 1)
    step_coord(None, 0)
    emit.op("LI", Reg(regs.step), 0)
    parity_regs(regs.step)
    loads(fr.kv_cur)
    if not single:
        prefetch()
    mx_scores(True)
    label = f"flash_first_tile_{len(emit.lines)}"
    emit.op("BEQZ", Reg(regs.tile_loop), LabelRef(label))
    previous_tile_output(regs.tile_loop)
    emit.label(label)
    init_running()
    if single:
        vx_chain([st for st in masked if not rescales_o(st)], True)
    else:
        if first_predicated:
            if grid[q_axis] > 1:
                emit.op("SLT", Reg(fr.diag), Reg(regs.coord(q_axis)), nest.tile[k_axis])
            else:
                emit.op("LI", Reg(fr.diag), 1)
        vx_chain(first_chain, True, first_predicated)
    if deferred:
        # the previous tile's O / l and store, on VX after this tile's first softmax (which
        # its last P @ V overlaps), with that tile's coordinates swapped in
        label = f"flash_first_epilogue_{len(emit.lines)}"
        emit.op("BEQZ", Reg(regs.tile_loop), LabelRef(label))
        swap_coords()
        tile_output(fr.o_last)
        swap_coords()
        emit.label(label)
    if not single:
        # steps 1 .. n-2 unmasked (S(t), then O(t-1) on MX; the softmax of t on VX)
        emit.op("LOOP", Reg(regs.step_loop), Reg(regs.middle))
        emit.op("ADD", Reg(regs.step), Reg(regs.step_loop), 1)
        step_coord(regs.step)
        parity_regs(regs.step)
        prefetch()
        mx_scores(False)
        mx_accumulate(False, first=None)
        vx_chain(plain, False)
        emit.op("ENDLOOP")
        # step n-1, masked (its K/V are loaded)
        emit.op("SUB", Reg(regs.step), Reg(regs.steps), 1)
        step_coord(regs.step)
        parity_regs(regs.step)
        mx_scores(False)
        mx_accumulate(False, first=None)
        vx_chain(masked, False)
    # the last step's P @ V: in the next tile's iteration (or after the loop), and the
    # epilogue waits for it
    if deferred:
        # this tile's sum and store coordinates, for its epilogue in the next iteration
        emit(ctx.instruction(Vec("COPY", "f32", "lprev", ("l",)), False))
        for reg, save in zip(store_coords, saved):
            emit.op("MOV", Reg(save), Reg(reg))
    else:
        tile_output()
    emit.op("ADD", Reg(fr.kv_base), Reg(fr.kv_base), 1 if single else Reg(regs.steps))
    emit.op("ENDLOOP")
    label = f"flash_no_tile_{len(emit.lines)}"
    emit.op("BEQZ", Reg(regs.mine), LabelRef(label))
    previous_tile_output(regs.mine)
    if deferred:
        for reg, save in zip(store_coords, saved):
            emit.op("MOV", Reg(reg), Reg(save))
        tile_output(fr.o_last)
    emit.label(label)
    emit.op("BAR.CORE")
    emit.op("WAIT.S", Event(ev.kv_free, 3))
    emit.op("WAIT.S", Event(ev.q_free, tile_copies))
    emit.op("WAIT.S", Event(ev.o_free, tile_copies))


__all__ = ["FlashEvents", "FlashRegisters", "emit_flash_nest"]
