"""Codegen of a flash-attention nest (schedule `flash`): MX and VX overlapped across steps.

The generic protocol (codegen.py) runs a step's compute in statement order, so a step of
flash attention would serialise MX (scores), VX (online softmax) and MX (P @ V). Here the
scores S and the probabilities P alternate between two copies by step parity, and the MX
stream of step t is `S(t) = Q K(t)` then `O += P(t-1) V(t-1)`: the matrix engine computes the
next scores while the vector engine still works on this step's softmax. K and V rotate
through three copies, and step t issues the loads of step t + 1 before its own work: they
wait only for the P @ V of step t - 2, so their HBM/L2 latency hides behind this step's
softmax instead of delaying the next step's scores. Events (this kernel only; all back to 0
when the nest ends):

- E0 K/V loaded (2 per step) -> S(t);  E1 K/V credits (3 copies, taken in turn by every
  step of every tile of the core), returned by O(t-1);
- E4 Q loaded -> S(0);  E3 / E12 the output tile is free (store done) -> Q load / O init
  (Q and O have two copies by tile parity where the ACC has room: two credits);
- E8 S(t) ready -> VX(t);  E9 VX(t) done (P(t), O scaled) -> O(t);
- E10 O(t-1) accumulated -> VX(t) scales O;  E2 last O -> VX epilogue -> E11 -> store.

Masks (causal, key bounds) run on the last key step of a tile, and the causal one on its
first step where that key tile meets the diagonal (predicated): with square tiles every
other visited key tile lies wholly below it.
"""

from __future__ import annotations

from dataclasses import replace

from zhenwu.compiler.backend.kernel_ir import Iota, Load, Nest, Store, Vec

E_KV_FULL, E_KV_FREE, E_O_DONE, E_Q_FREE, E_Q_FULL = 0, 1, 2, 3, 4
E_S_READY, E_VX_DONE, E_O_ACC, E_O_FULL, E_O_FREE = 8, 9, 10, 11, 12


def emit_flash_nest(emit, nest: Nest) -> None:
    """The code of a flash nest (see the module docstring)."""
    from zhenwu.compiler.backend import codegen as cg

    descs = cg.emit_descriptors(emit, nest)
    parity = {b.name for b in nest.buffers if b.copies in (2, 3)}
    tile_copies = nest.buffer("o").copies  # Q and O: one copy per tile, or two by parity
    regs: dict[str, int | None] = {}

    class Ctx(cg._NestContext):
        def tile(self, name: str) -> str:
            buf = self.nest.buffer(name)
            reg = regs.get(name) if name in parity else None
            return f"{buf.level}[{cg._addr(reg, buf.offset)}]"

    ctx = Ctx(nest, descs, set())
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
    # queries start before tile_k): those statements are predicated on R_DIAG
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
    causal = cg._causal(nest)
    k_axis = len(nest.extents) - 1       # [batch..., queries, head dim, keys]
    q_axis = k_axis - 2
    R_CUR, R_PREV = cg.R_LD_OFF, cg.R_OUT_OFF
    R_KV_CUR, R_KV_PREV, R_KV_NEXT = 20, 21, 22  # K/V copy of steps t, t - 1, t + 1
    R_Q, R_O = 23, 24  # this tile's copies of Q and O
    R_DIAG = 25        # this tile's first key tile meets the causal diagonal
    R_KV_BASE, R_KV_T = 26, 27  # K/V steps of this core's earlier tiles; base + t
    R_O_LAST = 28      # the previous tile's copy of O (its deferred last P @ V)
    R_FIRST_O = 31     # this step's P @ V is the tile's first (it initialises O)
    # the previous tile's store coordinates (r12, the step loop's counter, is free from a
    # tile's last step to the next tile's step loop)
    R_SAVED = (29, 30, cg.R_STEP_LOOP)

    def parity_regs(step_reg: int) -> None:
        """R_CUR = (t & 1) * stride, R_PREV = ((t - 1) & 1) * stride for step t in a reg;
        R_KV_CUR/PREV/NEXT = (t mod 3, t - 1 mod 3, t + 1 mod 3) * the ring stride."""
        # S and P alternate by the core's step count, not the tile's: the next tile's S(0)
        # runs while the softmax still reads this tile's last S
        # the ring turns per core, not per tile: a tile's first loads go to the slot after
        # the previous tile's last, so a credit (returned in load order) frees that slot
        emit(f"ADD r{R_KV_T}, r{step_reg}, r{R_KV_BASE}")
        emit(f"AND r{R_CUR}, r{R_KV_T}, 1")
        emit(f"MUL r{R_CUR}, r{R_CUR}, {stride}")
        emit(f"SUB r{R_PREV}, r{cg.R_LD_COUNT}, r{R_CUR}")   # R_LD_COUNT holds `stride`
        for reg, shift in ((R_KV_CUR, 0), (R_KV_PREV, 2), (R_KV_NEXT, 1)):
            emit(f"ADD r{reg}, r{R_KV_T}, {shift}")
            emit(f"REM r{reg}, r{reg}, 3")
            emit(f"MUL r{reg}, r{reg}, {ring}")

    def loads(slot: int) -> None:
        regs.update(kt=slot, vt=slot)
        emit(f"DMA.LD.{nest.buffer('kt').dtype} {ctx.tile('kt')}, {ctx.ref(kt_load.view)}",
             waits=[(E_KV_FREE, 1)], sigs=[(E_KV_FULL, 1)])
        emit(f"DMA.LD.{nest.buffer('vt').dtype} {ctx.tile('vt')}, {ctx.ref(v_load.view)}",
             sigs=[(E_KV_FULL, 1)])

    def prefetch() -> None:
        """The loads of step t + 1 (t in R_STEP); the k coordinate is t's again after."""
        if k_reg is not None:
            emit(f"ADD r{k_reg}, r{k_reg}, {nest.tile[k_axis]}")
        loads(R_KV_NEXT)
        if k_reg is not None:
            emit(f"SUB r{k_reg}, r{k_reg}, {nest.tile[k_axis]}")

    def mx_scores(first: bool) -> None:
        regs.update(s=R_CUR, kt=R_KV_CUR)
        waits = [(E_KV_FULL, 2)] + ([(E_Q_FULL, 1)] if first else [])
        emit(cg._compute(ctx, mma_s, True), waits=waits, sigs=[(E_S_READY, 1)])

    def mx_accumulate(last: bool, first: bool | None = False) -> None:
        """O(t-1) += P(t-1) V(t-1); the tile's first P @ V initialises O (`first`: True,
        or None when step t in R_STEP decides: t == 1, a predicated pair)."""
        regs.update(p=R_PREV, vt=R_KV_PREV)
        sigs = [(E_KV_FREE, 1), (E_O_DONE if last else E_O_ACC, 1)]
        init = cg._compute(ctx, replace(mma_o, mode="init"), False)
        acc = cg._compute(ctx, mma_o, False)
        if first is None:
            emit(f"SEQ r{R_FIRST_O}, r{cg.R_STEP}, 1")
            emit(f"@r{R_FIRST_O} {init}", waits=[(E_VX_DONE, 1)], sigs=sigs)
            emit(f"@!r{R_FIRST_O} {acc}", waits=[(E_VX_DONE, 1)], sigs=sigs)
        else:
            emit(init if first else acc, waits=[(E_VX_DONE, 1)], sigs=sigs)

    def previous_tile_output(tile_count: int) -> None:
        """The last P @ V of the core's previous tile (`tile_count` - 1): P and V of the
        core's step R_KV_BASE - 1, O of that tile's copy. Issued after the next tile's S(0)
        (deferred), so the matrix engine computes those scores while the vector engine
        still runs the previous tile's last softmax, instead of waiting for it."""
        emit(f"SUB r{R_KV_T}, r{R_KV_BASE}, 1")
        emit(f"AND r{R_PREV}, r{R_KV_T}, 1")
        emit(f"MUL r{R_PREV}, r{R_PREV}, {stride}")
        emit(f"REM r{R_KV_PREV}, r{R_KV_T}, 3")
        emit(f"MUL r{R_KV_PREV}, r{R_KV_PREV}, {ring}")
        if tile_copies == 2:
            emit(f"SUB r{R_O_LAST}, r{tile_count}, 1")
            emit(f"AND r{R_O_LAST}, r{R_O_LAST}, 1")
            emit(f"MUL r{R_O_LAST}, r{R_O_LAST}, {nest.buffer('o').stride}")
            regs["o"] = R_O_LAST
        mx_accumulate(True, first=single)
        if tile_copies == 2:
            regs["o"] = R_O

    def tile_output(o_reg: int | None = None) -> None:
        """The epilogue (O / l) and the stores of a tile whose last P @ V is issued; with
        `o_reg`, the previous tile's (deferred): its O copy, its sum copied to `lprev`."""
        if o_reg is not None:
            regs["o"] = o_reg
        for index, stmt in enumerate(epilogue):
            if o_reg is not None:
                stmt = replace(stmt, srcs=tuple("lprev" if src == "l" else src
                                                for src in stmt.srcs))
            emit(cg._compute(ctx, stmt, False), waits=[(E_O_DONE, 1)] if index == 0 else [],
                 sigs=[(E_O_FULL, 1)] if index == len(epilogue) - 1 else [])
        for index, store in enumerate(stores):
            last = index == len(stores) - 1
            emit(f"DMA.ST.{nest.buffer(store.src).dtype} {ctx.ref(store.view)}, "
                 f"{ctx.tile(store.src)}", waits=[(E_O_FULL, 1)] if index == 0 else [],
                 sigs=[(E_Q_FREE, 1), (E_O_FREE, 1)] if last else [])
        if tile_copies == 2:
            regs["o"] = R_O

    def swap_coords() -> None:
        """Exchange the store coordinates with the saved ones (R_STEP as scratch: step 0
        is done and the step loop sets it again)."""
        for reg, save in zip(store_coords, R_SAVED):
            emit(f"MOV r{cg.R_STEP}, r{reg}")
            emit(f"MOV r{reg}, r{save}")
            emit(f"MOV r{save}, r{cg.R_STEP}")

    # The epilogue of a tile is deferred into the next tile's iteration (after its first
    # softmax) when O has a copy per tile parity, the only store is O's and its
    # coordinates fit the spare registers: the vector engine then never waits for a
    # tile's last P @ V
    store_coords = sorted({cg.R_COORD + a for st in stores for a in st.view.axes
                           if grid[a] > 1})
    deferred = (tile_copies == 2 and len(stores) == 1 and len(store_coords) <= len(R_SAVED)
                and any(b.name == "lprev" for b in nest.buffers)
                and all(isinstance(st, Vec) for st in epilogue))

    def vx_chain(stmts: list, first: bool, predicated: set[int] = frozenset()) -> None:
        """The softmax of one step on VX; statements whose id is in `predicated` run only
        where R_DIAG is set (they carry no events: a predicated-off one has none)."""
        regs.update(s=R_CUR, p=R_CUR)
        scale_o = [i for i, s in enumerate(stmts) if isinstance(s, Vec) and s.op == "MUL"
                   and s.dst == "o"]
        ready_waited = bool(stmts) and id(stmts[0]) in predicated
        if ready_waited:
            emit(f"WAIT.VX {cg._event(E_S_READY, 1)}")
        for index, stmt in enumerate(stmts):
            waits, sigs = [], []
            if index == 0 and not ready_waited:
                waits.append((E_S_READY, 1))
            if not first and scale_o and index == scale_o[0]:
                waits.append((E_O_ACC, 1))
            if index == len(stmts) - 1:
                sigs.append((E_VX_DONE, 1))
            text = cg._compute(ctx, stmt, False)
            if id(stmt) in predicated:
                assert not waits and not sigs
                text = f"@r{R_DIAG} {text}"
            emit(text, waits=waits, sigs=sigs)

    # credits: three K/V copies; the output tiles (and Q) free for the first tiles
    emit(f"SIG.S {cg._event(E_KV_FREE, 3)}")
    emit(f"SIG.S {cg._event(E_Q_FREE, tile_copies)}")
    emit(f"SIG.S {cg._event(E_O_FREE, tile_copies)}")
    emit(f"LI r{cg.R_MINE}, {nest.parallel_tiles}")
    emit(f"SUB r{cg.R_MINE}, r{cg.R_MINE}, r{cg.R_CORE}")
    emit(f"ADD r{cg.R_MINE}, r{cg.R_MINE}, r{cg.R_CORES}")
    emit(f"SUB r{cg.R_MINE}, r{cg.R_MINE}, 1")
    emit(f"DIV r{cg.R_MINE}, r{cg.R_MINE}, r{cg.R_CORES}")
    emit(f"LI r{cg.R_LD_COUNT}, {stride}")
    emit(f"LI r{R_KV_BASE}, 0")
    emit(f"LOOP r{cg.R_TILE_LOOP}, r{cg.R_MINE}")
    if causal:
        cg._causal_tile(emit, nest, causal)
    else:
        emit(f"MUL r{cg.R_TILE}, r{cg.R_TILE_LOOP}, r{cg.R_CORES}")
        emit(f"ADD r{cg.R_TILE}, r{cg.R_TILE}, r{cg.R_CORE}")
        par_axes = [a for a, k in enumerate(nest.kinds) if k == "p" and grid[a] > 1]
        cg._decompose(emit, cg.R_TILE, par_axes, nest)
        emit(f"LI r{cg.R_STEPS}, {grid[k_axis]}")
        emit(f"LI r{cg.R_MIDDLE}, {max(grid[k_axis] - 2, 0)}")
    if tile_copies == 2:
        for reg, name in ((R_Q, "q"), (R_O, "o")):
            emit(f"AND r{reg}, r{cg.R_TILE_LOOP}, 1")
            emit(f"MUL r{reg}, r{reg}, {nest.buffer(name).stride}")
        regs.update(q=R_Q, o=R_O)
    # the tile: Q, and the running max, sum and output
    emit(f"DMA.LD.{nest.buffer('q').dtype} {ctx.tile('q')}, {ctx.ref(q_load.view)}",
         waits=[(E_Q_FREE, 1)], sigs=[(E_Q_FULL, 1)])

    def init_running() -> None:
        """m, l and O of the tile, on VX after the previous tile's softmax; issued after
        S(0), which must not wait with the scalar for room in the vector queue."""
        for index, stmt in enumerate(init_vx):
            emit(cg._compute(ctx, stmt, True), waits=[(E_O_FREE, 1)] if index == 0 else [])
    k_reg = cg.R_COORD + k_axis if grid[k_axis] > 1 else None
    single = grid[k_axis] == 1

    def step_coord(value_reg: int | None, value: int | None = None) -> None:
        if k_reg is None:
            return
        if value is not None:
            emit(f"LI r{k_reg}, {value * nest.tile[k_axis]}")
        else:
            emit(f"MUL r{k_reg}, r{value_reg}, {nest.tile[k_axis]}")

    # step 0 (its K/V, and those of step 1)
    step_coord(None, 0)
    emit(f"LI r{cg.R_STEP}, 0")
    parity_regs(cg.R_STEP)
    loads(R_KV_CUR)
    if not single:
        prefetch()
    mx_scores(True)
    label = f"flash_first_tile_{len(emit.lines)}"
    emit(f"BEQZ r{cg.R_TILE_LOOP}, {label}")
    previous_tile_output(cg.R_TILE_LOOP)
    emit.raw(f"{label}:")
    init_running()
    if single:
        vx_chain([st for st in masked if not rescales_o(st)], True)
    else:
        if first_predicated:
            q_reg = cg.R_COORD + q_axis
            if grid[q_axis] > 1:
                emit(f"SLT r{R_DIAG}, r{q_reg}, {nest.tile[k_axis]}")
            else:
                emit(f"LI r{R_DIAG}, 1")
        vx_chain(first_chain, True, first_predicated)
    if deferred:
        # the previous tile's O / l and store, on VX after this tile's first softmax (which
        # its last P @ V overlaps), with that tile's coordinates swapped in
        label = f"flash_first_epilogue_{len(emit.lines)}"
        emit(f"BEQZ r{cg.R_TILE_LOOP}, {label}")
        swap_coords()
        tile_output(R_O_LAST)
        swap_coords()
        emit.raw(f"{label}:")
    if not single:
        # steps 1 .. n-2 unmasked (S(t), then O(t-1) on MX; the softmax of t on VX)
        emit(f"LOOP r{cg.R_STEP_LOOP}, r{cg.R_MIDDLE}")
        emit(f"ADD r{cg.R_STEP}, r{cg.R_STEP_LOOP}, 1")
        step_coord(cg.R_STEP)
        parity_regs(cg.R_STEP)
        prefetch()
        mx_scores(False)
        mx_accumulate(False, first=None)
        vx_chain(plain, False)
        emit("ENDLOOP")
        # step n-1, masked (its K/V are loaded)
        emit(f"SUB r{cg.R_STEP}, r{cg.R_STEPS}, 1")
        step_coord(cg.R_STEP)
        parity_regs(cg.R_STEP)
        mx_scores(False)
        mx_accumulate(False, first=None)
        vx_chain(masked, False)
    # the last step's P @ V: in the next tile's iteration (or after the loop), and the
    # epilogue waits for it
    if deferred:
        # this tile's sum and store coordinates, for its epilogue in the next iteration
        emit(cg._compute(ctx, Vec("COPY", "f32", "lprev", ("l",)), False))
        for reg, save in zip(store_coords, R_SAVED):
            emit(f"MOV r{save}, r{reg}")
    else:
        tile_output()
    emit(f"ADD r{R_KV_BASE}, r{R_KV_BASE}, " + ("1" if single else f"r{cg.R_STEPS}"))
    emit("ENDLOOP")
    label = f"flash_no_tile_{len(emit.lines)}"
    emit(f"BEQZ r{cg.R_MINE}, {label}")
    previous_tile_output(cg.R_MINE)
    if deferred:
        for reg, save in zip(store_coords, R_SAVED):
            emit(f"MOV r{reg}, r{save}")
        tile_output(R_O_LAST)
    emit.raw(f"{label}:")
    emit("BAR.CORE")
    emit(f"WAIT.S {cg._event(E_KV_FREE, 3)}")
    emit(f"WAIT.S {cg._event(E_Q_FREE, tile_copies)}")
    emit(f"WAIT.S {cg._event(E_O_FREE, tile_copies)}")


__all__ = ["emit_flash_nest"]
