"""Codegen: Kernel IR to an M890 program (docs/internals.md section 3).

Each nest becomes one scalar loop over the parallel tiles this core owns (core c takes tiles
c, c + cores, c + 2 cores, ...), with the reduction steps of a tile as an inner loop. The
generated code is compact: tile coordinates are computed with register arithmetic, never
unrolled.

Engines are ordered by four counting events per nest, reused by the next nest once this
one has drained:

- `E_LD_FULL`: each load signals it; the first compute instruction of the step waits for
  all the step's loads;
- `E_LD_FREE`: credits for the copies of the load buffers (two, or more in an implicit
  GEMM; one `SIG.S` of that count at the start);
  the first load of a step takes one, the last compute instruction of the step returns it;
- `E_OUT_FULL`: the last compute instruction of the tile's last step signals the stores;
- `E_OUT_FREE`: credits for the two copies of the output buffers; the first instruction
  writing them in a tile takes one, the last store of the tile returns it.

At the end of a nest the scalar drains the core's queues (`BAR.CORE`), then takes both
credits back (`WAIT.S`), so every event is 0 again and every engine's work is ordered before
what follows. A `BAR.CHIP` ends each kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.backend.emitter import Emitter, fimm, instruction
from zhenwu.compiler.backend.kernel_ir import (
    ColumnCopy,
    Iota,
    Kernel,
    KernelProgram,
    Load,
    Mma,
    Nest,
    Reduce,
    Store,
    Strided,
    Vec,
    View,
)
from zhenwu.compiler.graph.dtypes import itemsize
from zhenwu.isa.program import (
    NUM_DESCS,
    Addr,
    DescRef,
    DReg,
    Event,
    Instruction,
    IntList,
    Keyword,
    Option,
    Program,
    Reg,
    Symbol,
    TensorDecl,
    Tile,
    format_float,
)

E_LD_FULL, E_LD_FREE, E_OUT_FULL, E_OUT_FREE = 0, 1, 2, 3
# Fused nests (compiler/backend/fusion.py) also use: setup loads (once per core, before the
# tile loop; the scalar waits for them), epilogue loads in `final` (their own two credits),
# and the hand-off from the last step to the epilogue's compute.
E_SETUP, E_EPI_FULL, E_EPI_FREE, E_MID = 4, 5, 6, 7
# A step whose compute moves between the matrix and vector engines (flash attention) hands
# each result over with an event per switch.
E_MX_TO_VX, E_VX_TO_MX = 8, 9
# A staged nest (`_staged`: vector work writes the matrix operands the step's MMA reads) frees
# a copy of those operands when the MMA has run, apart from the accumulator's copy, which
# its store frees.
E_STAGE_FREE = 10


def _engine(stmt) -> str:
    return "MX" if isinstance(stmt, Mma) else "VX"


def _with_switches(compute: list, waits: list[list], sigs: list[list]) -> None:
    """Add an event at every change of engine between consecutive compute statements."""
    for index in range(1, len(compute)):
        before, after = _engine(compute[index - 1]), _engine(compute[index])
        if before != after:
            event = E_MX_TO_VX if before == "MX" else E_VX_TO_MX
            sigs[index - 1].append((event, 1))
            waits[index].append((event, 1))


def _reads(stmt) -> list[str]:
    """The buffers a Vec or Reduce statement reads."""
    if isinstance(stmt, Reduce):
        return [stmt.src]
    return [src.buffer if isinstance(src, Strided) else src for src in stmt.srcs
            if isinstance(src, (str, Strided))]


def _emit_engine(emit: Emitter, engine: str, text, waits: list, sigs: list) -> None:
    """An engine instruction; waits past the two an instruction carries become WAITs."""
    for event, count in waits[:-2]:
        emit.op(f"WAIT.{engine}", Event(event, count))
    emit(text, waits=waits[-2:], sigs=sigs)

# scalar registers
R_CORE, R_CORES, R_MINE, R_TILE_LOOP, R_TILE = 0, 1, 2, 3, 4
R_COORD = 5            # r5.. : one coordinate register per nest axis (at most 7 axes)
R_STEP_LOOP, R_STEP = 12, 13
R_LD_COUNT, R_LD_OFF, R_OUT_COUNT, R_OUT_OFF = 14, 15, 16, 17
MAX_AXES = R_STEP_LOOP - R_COORD
R_STEPS, R_MIDDLE = 18, 19   # causal nests: this tile's key steps, and that minus two


# Text forms of operands, for emitters that still write instructions as text (the Emitter
# reads them, emitter.read_instruction); the ones here build typed operands.
def _event(index: int, count: int) -> str:
    return f"E{index}" if count == 1 else f"E{index}:{count}"


def _imm(value: float) -> str:
    return "#" + format_float(float(value))


def _addr(reg: int | None, offset: int) -> str:
    if reg is None:
        return str(offset)
    if offset == 0:
        return f"r{reg}"
    return f"r{reg}{'+' if offset > 0 else '-'}{abs(offset)}"


@dataclass
class _NestContext:
    nest: Nest
    descs: dict[View, int]
    ld_buffers: set[str]
    setup_buffers: frozenset[str] = frozenset()

    def coord(self, axis: int) -> int | None:
        """The register holding nest axis `axis`'s tile coordinate, None when it is 0."""
        return None if self.nest.grid[axis] == 1 else R_COORD + axis

    def tile(self, name: str) -> Tile:
        buf = self.nest.buffer(name)
        if name in self.setup_buffers:
            return Tile(buf.level, Addr(None, buf.offset))
        reg = R_LD_OFF if name in self.ld_buffers else R_OUT_OFF
        return Tile(buf.level, Addr(reg, buf.offset))

    def operand(self, name: str | Strided, dst) -> Tile:
        """Tile operand `name` of an instruction writing buffer `dst`: a 1 x cols buffer
        repeats its row (rs = 0), a rows x 1 buffer its column (cs = 0); a `Strided` one
        reads from its element offset with its strides."""
        if isinstance(name, Strided):
            rs, cs = name.row_stride, name.col_stride
            buf = self.nest.buffer(name.buffer)
            start = buf.offset + name.offset * itemsize(buf.dtype)
            name = name.buffer
            if name in self.setup_buffers:
                return Tile(buf.level, Addr(None, start), rs, cs)
            reg = R_LD_OFF if name in self.ld_buffers else R_OUT_OFF
            return Tile(buf.level, Addr(reg, start), rs, cs)
        tile = _as_tile(self.tile(name))
        src = self.nest.buffer(name)
        if (src.rows, src.cols) == (dst.rows, dst.cols) or src.rows * src.cols == dst.rows * dst.cols:
            return tile
        row_stride = 0 if src.rows == 1 else src.cols
        col_stride = 0 if src.cols == 1 else 1
        return Tile(tile.space, tile.base, row_stride, col_stride)

    def columns(self, name: str, col: int) -> Tile:
        """Buffer `name` from column `col`, each row a whole row of the buffer apart; a
        buffer of one row or one column (a broadcast value) repeats it (zero stride)."""
        buf = self.nest.buffer(name)
        col = 0 if buf.cols == 1 else col
        start = buf.offset + col * itemsize(buf.dtype)
        row_stride = 0 if buf.rows == 1 else buf.cols
        col_stride = 0 if buf.cols == 1 else 1
        if name in self.setup_buffers:
            return Tile(buf.level, Addr(None, start), row_stride, col_stride)
        reg = R_LD_OFF if name in self.ld_buffers else R_OUT_OFF
        return Tile(buf.level, Addr(reg, start), row_stride, col_stride)

    def ref(self, view: View, box: tuple[int, ...] = ()) -> DescRef:
        coords = []
        for axis, shift in zip(view.axes, view.shifts):
            coords.append(Addr(self.coord(axis), -shift))
        return DescRef(self.descs[(view, box)], tuple(coords))


def _as_tile(tile) -> Tile:
    """A tile operand (a context that still writes its tiles as text gives a str)."""
    if isinstance(tile, Tile):
        return tile
    from zhenwu.compiler.backend.emitter import read_operand

    return read_operand(tile, ("tile",))


def desc_key(view: View, box: tuple[int, ...] = ()) -> tuple:
    """Views that differ only in their shifts share a descriptor (the shift is in the
    coordinates): an implicit GEMM's taps of one phase."""
    return (View(view.tensor, view.dtype, view.offset, view.axes, view.dims, view.strides,
                 (0,) * view.rank), tuple(box))


class _Descs(dict):
    """Descriptor numbers by view, or by (view, box) (looked up by `desc_key`)."""

    def __getitem__(self, view) -> int:
        view, box = view if isinstance(view, tuple) else (view, ())
        return dict.__getitem__(self, desc_key(view, box))


def emit_descriptors(emit: Emitter, nest: Nest) -> dict[View, int]:
    """One DESC per distinct GM view (up to shifts) and box the nest loads or stores,
    numbered d0, d1, ...; the box is the load's, else the nest's tile along the view's
    axes."""
    descs: dict[View, int] = _Descs()
    for stmt in nest.statements():
        box = stmt.box if isinstance(stmt, Load) else ()
        if isinstance(stmt, (Load, Store)) and desc_key(stmt.view, box) not in descs:
            dict.__setitem__(descs, desc_key(stmt.view, box), len(descs))
    if len(descs) > NUM_DESCS:
        raise ValueError(f"a nest with {len(descs)} descriptors (at most {NUM_DESCS})")
    for (view, given), index in descs.items():
        box = list(given) or [nest.tile[a] for a in view.axes]
        byte_offset = view.offset * itemsize(view.dtype)
        base = Symbol(view.tensor, byte_offset)
        emit.op("DESC", DReg(index), base, Keyword(view.dtype), IntList(tuple(view.dims)),
                IntList(tuple(view.strides)), IntList(tuple(box)))
    return descs


def _decompose(emit: Emitter, source: int, axes: list[int], nest: Nest) -> None:
    """Coordinates of the tile with flat index in register `source` along `axes` (the
    axes with more than one tile, outermost first): coord = (index / inner) % grid * tile."""
    grid, tile = nest.grid, nest.tile
    inner = 1
    plan = []
    for axis in reversed(axes):
        plan.append((axis, inner))
        inner *= grid[axis]
    for position, (axis, below) in enumerate(reversed(plan)):
        reg = R_COORD + axis
        if below > 1:
            emit.op("DIV", Reg(reg), Reg(source), below)
        else:
            emit.op("MOV", Reg(reg), Reg(source))
        if position > 0:
            emit.op("REM", Reg(reg), Reg(reg), grid[axis])
        if tile[axis] > 1:
            emit.op("MUL", Reg(reg), Reg(reg), tile[axis])


def _grouped(nest: Nest, axes: list[int]) -> bool:
    """The nest's grouped order applies: its last two parallel axes have several tiles
    each and the group divides the first one's tiles."""
    parallel = [a for a, k in enumerate(nest.kinds) if k == "p"]
    if nest.group <= 1 or len(parallel) < 2 or axes[-2:] != parallel[-2:]:
        return False
    return nest.grid[parallel[-2]] % nest.group == 0 and not nest.causal


def _decompose_grouped(emit: Emitter, source: int, axes: list[int], nest: Nest) -> None:
    """`_decompose` with the last two axes (m, n) in grouped order: of the flat index t,
    the outer axes take t / (gm * gn) row-major; r = t % (gm * gn) is tile
    (r / (G * gn) * G + r % G, r % (G * gn) / G) of m and n."""
    grid, tile = nest.grid, nest.tile
    m_axis, n_axis = axes[-2], axes[-1]
    gm, gn, group = grid[m_axis], grid[n_axis], nest.group
    below = gm * gn
    plan = []
    for axis in reversed(axes[:-2]):
        plan.append((axis, below))
        below *= grid[axis]
    for position, (axis, below) in enumerate(reversed(plan)):
        reg = R_COORD + axis
        emit.op("DIV", Reg(reg), Reg(source), below)
        if position > 0:
            emit.op("REM", Reg(reg), Reg(reg), grid[axis])
        if tile[axis] > 1:
            emit.op("MUL", Reg(reg), Reg(reg), tile[axis])
    rm, rn, scratch = R_COORD + m_axis, R_COORD + n_axis, R_STEPS  # R_STEPS: causal only
    emit.op("REM", Reg(rn), Reg(source), gm * gn)
    emit.op("DIV", Reg(rm), Reg(rn), group * gn)
    emit.op("MUL", Reg(rm), Reg(rm), group)
    emit.op("REM", Reg(scratch), Reg(rn), group)
    emit.op("ADD", Reg(rm), Reg(rm), Reg(scratch))
    emit.op("REM", Reg(rn), Reg(rn), group * gn)
    emit.op("DIV", Reg(rn), Reg(rn), group)
    for reg, axis in ((rm, m_axis), (rn, n_axis)):
        if tile[axis] > 1:
            emit.op("MUL", Reg(reg), Reg(reg), tile[axis])


def _compute(ctx: _NestContext, stmt, first_step: bool) -> Instruction:
    def t(name: str) -> Tile:
        return _as_tile(ctx.tile(name))

    if isinstance(stmt, Vec):
        buf = ctx.nest.buffer(stmt.dst)
        srcs = [fimm(s) if isinstance(s, (int, float)) else ctx.operand(s, buf)
                for s in stmt.srcs]
        suffixes = (stmt.cond, stmt.dtype) if stmt.cond else (stmt.dtype,)
        name = ".".join((stmt.instr.mnemonic, *suffixes))
        return instruction(name, t(stmt.dst), *srcs, buf.rows, buf.cols)
    if isinstance(stmt, ColumnCopy):
        rows = ctx.nest.buffer(stmt.dst).rows
        name = "VNEG" if stmt.negate else "VCOPY"
        return instruction(f"{name}.{stmt.dtype}", ctx.columns(stmt.dst, stmt.dst_col),
                           ctx.columns(stmt.src, stmt.src_col), rows, stmt.cols)
    if isinstance(stmt, Iota):
        buf = ctx.nest.buffer(stmt.dst)
        base = ctx.coord(stmt.axis)
        base = 0 if base is None else Reg(base)
        return instruction(f"VIOTA.{stmt.dtype}", t(stmt.dst), buf.rows, buf.cols, base)
    if isinstance(stmt, Reduce):
        src, dst = ctx.nest.buffer(stmt.src), ctx.nest.buffer(stmt.dst)
        # The rows are dst's; a row is the nest's last tile. A source hoisted as one row
        # (1 x cols) or one column (rows x 1) is read through a broadcast operand, so that a
        # sum over a repeated value counts every repeat.
        rows = dst.rows
        cols = src.cols if src.cols > 1 else ctx.nest.tile[-1]
        src_tile = t(stmt.src)
        if (src.rows, src.cols) != (rows, cols):
            row_stride = 0 if src.rows == 1 else src.cols
            col_stride = 0 if src.cols == 1 else 1
            src_tile = Tile(src_tile.space, src_tile.base, row_stride, col_stride)
        if stmt.op == "ARGMAX":
            base = ctx.coord(stmt.axis)
            base = 0 if base is None else Reg(base)
            return instruction(f"VRARGMAX.{stmt.dtype}", t(stmt.dst), t(stmt.index), src_tile,
                               rows, cols, base, options=("row", "acc"))
        return instruction(f"VR{stmt.op}.{stmt.dtype}", t(stmt.dst), src_tile, rows, cols,
                           options=("row", "acc"))
    if isinstance(stmt, Mma):
        a, b, c = (ctx.nest.buffer(n) for n in (stmt.a, stmt.b, stmt.dst))
        mode = [stmt.mode if stmt.mode else ("init" if first_step else "acc")]
        k = a.rows if stmt.trans_a else a.cols
        mode += ["tA"] if stmt.trans_a else []
        b_tile = t(stmt.b)
        if b.cols != c.cols:  # B's rows are further apart than the product's width
            b_tile = Tile(b_tile.space, b_tile.base, b.cols)
        return instruction(f"MMA.{stmt.in_dtype}.{stmt.acc_dtype}", t(stmt.dst), t(stmt.a),
                           b_tile, c.rows, c.cols, k, options=mode)
    raise TypeError(stmt)


def _staged(nest: Nest) -> bool:
    """Whether the nest's one step is vector work staging the operands of a last MMA into
    the accumulator, which the tile's stores then read directly (an im2col's gathers: the
    patches in L1, the product in ACC). The staged operands are free again as soon as the
    MMA has run, so the next tile's vector work needs only the MMA of the tile two copies
    back, not its store and the store's round trip: the staging buffers get their own
    credit (E_STAGE_FREE, returned by the MMA), and the accumulator's credit (E_OUT_FREE)
    is taken by the MMA itself. The load buffers' credit is then returned by the last
    vector statement (the MMA reads no load buffer). Refused: anything else in the tile
    (init or epilogue compute, several steps, a store of another buffer), an MMA reading
    a load buffer or writing what the vector work reads or writes."""
    if nest.reduction_steps != 1 or nest.init or nest.causal or nest.schedule == "flash":
        return False
    compute = [s for s in nest.step if not isinstance(s, Load)]
    if len(compute) < 2 or not isinstance(compute[-1], Mma):
        return False
    mma, staging = compute[-1], compute[:-1]
    if any(isinstance(s, Mma) for s in staging):
        return False
    if nest.buffer(mma.dst).level != "ACC":
        return False
    ld_buffers = _load_buffers(nest)
    if {mma.a, mma.b} & ld_buffers:
        return False
    touched = set()
    for stmt in staging:
        if not isinstance(stmt, (Vec, ColumnCopy)):
            return False
        touched |= {stmt.dst} | set(_reads(stmt) if isinstance(stmt, Vec) else [stmt.src])
    if mma.dst in touched:
        return False
    return all(isinstance(s, Store) and s.src == mma.dst for s in nest.final)


def _emit_step(emit: Emitter, ctx: _NestContext, first: bool, last: bool,
               out_written_in_step: bool, epilogue: bool = False, tile_loads: int = 0,
               preloaded: bool = False, staged: bool = False) -> None:
    """One reduction step: its loads, then its compute. `preloaded`: the loads were issued
    a tile ahead (`_prefetch_next`); the compute reads the copy of this tile's index.
    `staged` (`_staged`): the vector work waits for its staging copy (E_STAGE_FREE) and
    returns the loads' credit, the MMA waits for the accumulator's copy and frees the
    staging one."""
    loads = [s for s in ctx.nest.step if isinstance(s, Load)]
    compute = [s for s in ctx.nest.step if not isinstance(s, Load)]
    if loads and preloaded:
        buffer = ctx.nest.buffer(loads[0].dst)
        emit(f"REM r{R_LD_OFF}, r{R_TILE_LOOP}, {buffer.copies}")
        emit(f"MUL r{R_LD_OFF}, r{R_LD_OFF}, {buffer.stride}")
    if loads and not preloaded:
        buffer = ctx.nest.buffer(loads[0].dst)
        stride = buffer.stride
        if buffer.copies == 2:
            emit.op("AND", Reg(R_LD_OFF), Reg(R_LD_COUNT), 1)
        else:  # deeper buffering (an implicit GEMM's short steps hide the DMA latency)
            emit.op("REM", Reg(R_LD_OFF), Reg(R_LD_COUNT), buffer.copies)
        emit.op("MUL", Reg(R_LD_OFF), Reg(R_LD_OFF), stride)
        emit.op("ADD", Reg(R_LD_COUNT), Reg(R_LD_COUNT), 1)
    for index, load in enumerate([] if preloaded else loads):
        buf = ctx.nest.buffer(load.dst)
        pad = [Option("pad", fimm(load.pad))] if load.pad != 0 else []
        emit.op(f"DMA.LD.{buf.dtype}", ctx.tile(load.dst), ctx.ref(load.view, load.box),
                options=pad, waits=[(E_LD_FREE, 1)] if index == 0 else [],
                sigs=[(E_LD_FULL, 1)])
    all_waits: list[list] = [[] for _ in compute]
    all_sigs: list[list] = [[] for _ in compute]
    for index, stmt in enumerate(compute):
        waits, sigs = all_waits[index], all_sigs[index]
        if index == 0:
            if loads:
                waits.append((E_LD_FULL, len(loads)))
            if first and out_written_in_step:
                waits.append((E_STAGE_FREE if staged else E_OUT_FREE, 1))
            if first and tile_loads:
                waits.append((E_EPI_FULL, tile_loads))
        if staged and index == len(compute) - 2 and loads:
            sigs.append((E_LD_FREE, 1))
        if index == len(compute) - 1:
            if loads and not staged:
                sigs.append((E_LD_FREE, 1))
            if staged:
                waits.append((E_OUT_FREE, 1))
                sigs.append((E_STAGE_FREE, 1))
            if last:
                sigs.append((E_MID if epilogue else E_OUT_FULL, 1))
    _with_switches(compute, all_waits, all_sigs)
    for stmt, waits, sigs in zip(compute, all_waits, all_sigs):
        _emit_engine(emit, _engine(stmt), _compute(ctx, stmt, first), waits, sigs)


def _prefetch_loads(emit: Emitter, ctx: _NestContext, red_axes: list[int]) -> None:
    """The step loads of the tile whose coordinates are in the registers, into the next
    copy (R_LD_COUNT counts the tiles loaded)."""
    loads = [s for s in ctx.nest.step if isinstance(s, Load)]
    buffer = ctx.nest.buffer(loads[0].dst)
    for axis in red_axes:
        emit(f"LI r{R_COORD + axis}, 0")
    emit(f"REM r{R_LD_OFF}, r{R_LD_COUNT}, {buffer.copies}")
    emit(f"MUL r{R_LD_OFF}, r{R_LD_OFF}, {buffer.stride}")
    emit(f"ADD r{R_LD_COUNT}, r{R_LD_COUNT}, 1")
    for index, load in enumerate(loads):
        _emit_load(emit, ctx, load, [(E_LD_FREE, 1)] if index == 0 else [],
                   [(E_LD_FULL, 1)])


def _prefetch_first(emit: Emitter, ctx: _NestContext, par_axes: list[int],
                    red_axes: list[int]) -> None:
    """Schedule `prefetch` (a nest of one reduction step whose compute is many vector
    instructions, an im2col's gathers: the scalar waits for room in the vector queue and
    would issue the next tile's loads only once this tile's gathers run): the first tile's
    loads before the tile loop (when the core has a tile)."""
    label = f"prefetched_{len(emit.lines)}"
    emit(f"BEQZ r{R_MINE}, {label}")
    emit(f"MOV r{R_TILE}, r{R_CORE}")
    _decompose(emit, R_TILE, par_axes, ctx.nest)
    _prefetch_loads(emit, ctx, red_axes)
    emit.raw(f"{label}:")


def _prefetch_next(emit: Emitter, ctx: _NestContext, par_axes: list[int],
                   red_axes: list[int]) -> None:
    """At the top of tile i's iteration: the loads of tile i + 1 (when the core has one),
    before tile i's compute fills the vector queue. R_STEP is free: one reduction step."""
    label = f"prefetched_{len(emit.lines)}"
    emit(f"ADD r{R_TILE}, r{R_TILE_LOOP}, 1")
    emit(f"SLT r{R_STEP}, r{R_TILE}, r{R_MINE}")
    emit(f"BEQZ r{R_STEP}, {label}")
    emit(f"MUL r{R_TILE}, r{R_TILE}, r{R_CORES}")
    emit(f"ADD r{R_TILE}, r{R_TILE}, r{R_CORE}")
    _decompose(emit, R_TILE, par_axes, ctx.nest)
    _prefetch_loads(emit, ctx, red_axes)
    emit.raw(f"{label}:")


def _emit_load(emit: Emitter, ctx: _NestContext, load: Load, waits, sigs) -> None:
    buf = ctx.nest.buffer(load.dst)
    pad = [Option("pad", fimm(load.pad))] if load.pad != 0 else []
    emit.op(f"DMA.LD.{buf.dtype}", ctx.tile(load.dst), ctx.ref(load.view, load.box),
            options=pad, waits=waits, sigs=sigs)


def _emit_epilogue(emit: Emitter, ctx: _NestContext, compute: list, n_loads: int,
                   release: bool = False) -> None:
    """The `final` compute of a tile: after the last step (E_MID) and the tile's epilogue
    loads (E_EPI_FULL); it hands the output to the stores (E_OUT_FULL) and returns the
    tile loads' credit (E_EPI_FREE)."""
    for index, stmt in enumerate(compute):
        waits, sigs = [], []
        if index == 0:
            waits.append((E_MID, 1))
            if n_loads:
                waits.append((E_EPI_FULL, n_loads))
        if index == len(compute) - 1:
            sigs.append((E_OUT_FULL, 1))
            if n_loads or release:
                sigs.append((E_EPI_FREE, 1))
        emit(_compute(ctx, stmt, False), waits=waits, sigs=sigs)


def _causal(nest: Nest) -> tuple[int, int] | None:
    """(query axis, key axis) when the nest skips key tiles past the diagonal: the key
    axis is the only reduction axis with more than one tile, and only the query axis and
    axes before it (heads: batch, KV heads, the query heads of a group) have several
    parallel tiles."""
    if not nest.causal:
        return None
    q_axis, k_axis = nest.causal
    grid = nest.grid
    red = [a for a, k in enumerate(nest.kinds) if k == "r" and grid[a] > 1]
    par = [a for a, k in enumerate(nest.kinds) if k == "p" and grid[a] > 1 and a != q_axis]
    if red != [k_axis] or any(a > q_axis for a in par):
        return None
    return q_axis, k_axis


def _causal_tile(emit: Emitter, nest: Nest, causal: tuple[int, int]) -> None:
    """Tile coordinates of a causal nest. Tiles are ranked longest first (last query
    block first) and dealt to the cores in a snake (0..n-1, n-1..0, ...), so every core gets
    about the same number of key steps; then this tile's step count n (at least 2; a step
    past the diagonal is fully masked and harmless)."""
    q_axis, k_axis = causal
    grid, tile = nest.grid, nest.tile
    heads = [a for a, k in enumerate(nest.kinds) if k == "p" and grid[a] > 1 and a != q_axis]
    n_heads = 1
    for axis in heads:
        n_heads *= grid[axis]
    # rank = loop * cores + (core if loop is even else cores - 1 - core)
    emit.op("AND", Reg(R_TILE), Reg(R_TILE_LOOP), 1)
    emit.op("SUB", Reg(R_STEP), Reg(R_CORES), 1)
    emit.op("SUB", Reg(R_STEP), Reg(R_STEP), Reg(R_CORE))
    emit.op("SUB", Reg(R_STEP), Reg(R_STEP), Reg(R_CORE))
    emit.op("MUL", Reg(R_STEP), Reg(R_STEP), Reg(R_TILE))
    # only whole rounds snake: a last partial round deals plainly (its ranks stay valid)
    emit.op("LI", Reg(R_MIDDLE), nest.parallel_tiles)
    emit.op("DIV", Reg(R_MIDDLE), Reg(R_MIDDLE), Reg(R_CORES))
    emit.op("SLT", Reg(R_MIDDLE), Reg(R_TILE_LOOP), Reg(R_MIDDLE))
    emit.op("MUL", Reg(R_STEP), Reg(R_STEP), Reg(R_MIDDLE))
    emit.op("ADD", Reg(R_STEP), Reg(R_STEP), Reg(R_CORE))
    emit.op("MUL", Reg(R_TILE), Reg(R_TILE_LOOP), Reg(R_CORES))
    emit.op("ADD", Reg(R_TILE), Reg(R_TILE), Reg(R_STEP))
    reg = R_COORD + q_axis
    if len(heads) == 1:
        emit.op("REM", Reg(R_COORD + heads[0]), Reg(R_TILE), n_heads)
        if tile[heads[0]] > 1:
            emit.op("MUL", Reg(R_COORD + heads[0]), Reg(R_COORD + heads[0]), tile[heads[0]])
    elif heads:  # the flat head index (in the query axis's register until it is computed)
        emit.op("REM", Reg(reg), Reg(R_TILE), n_heads)
        _decompose(emit, reg, heads, nest)
    emit.op("DIV", Reg(reg), Reg(R_TILE), n_heads)
    emit.op("SUB", Reg(reg), Reg(reg), grid[q_axis] - 1)
    emit.op("MUL", Reg(reg), Reg(reg), -1)
    if tile[q_axis] > 1:
        emit.op("MUL", Reg(reg), Reg(reg), tile[q_axis])
    # n = clamp(ceil((q0 + tile_q) / tile_k), 2, key tiles)
    emit.op("ADD", Reg(R_STEPS), Reg(reg), tile[q_axis] + tile[k_axis] - 1)
    emit.op("DIV", Reg(R_STEPS), Reg(R_STEPS), tile[k_axis])
    emit.op("MAX", Reg(R_STEPS), Reg(R_STEPS), 2)
    emit.op("MIN", Reg(R_STEPS), Reg(R_STEPS), grid[k_axis])
    emit.op("SUB", Reg(R_MIDDLE), Reg(R_STEPS), 2)


def _read_only_by_mma(nest: Nest, names: frozenset[str]) -> bool:
    """Whether the buffers `names` are read by MMAs only (never by the vector engine or
    a store)."""
    for stmt in nest.init + nest.step + nest.final:
        if isinstance(stmt, Mma):
            continue
        if isinstance(stmt, Vec):
            used = stmt.buffers_read()
        elif isinstance(stmt, Store):
            used = {stmt.src}
        elif isinstance(stmt, Reduce):
            used = {stmt.src, stmt.dst}
        elif isinstance(stmt, ColumnCopy):
            used = {stmt.src}
        else:
            used = set()
        if used & names:
            return False
    return True


def _load_buffers(nest: Nest) -> set[str]:
    """The buffers a step loads, and the read-only windows into one of them (a halo
    conv's taps: no statement writes them; same level, copies and stride, starting inside
    its first copy): all of them take the load copy's register."""
    loaded = {s.dst for s in nest.step if isinstance(s, Load)}
    written = {name for s in nest.statements() if not isinstance(s, Store)
               for name in (getattr(s, "dst", None), getattr(s, "index", None)) if name}
    spans = [(b.level, b.copies, b.stride, b.offset, b.offset + b.nbytes)
             for b in nest.buffers if b.name in loaded]
    views = {b.name for b in nest.buffers
             if b.name not in written
             and any((b.level, b.copies, b.stride) == (level, copies, stride)
                    and start <= b.offset < end
                    for level, copies, stride, start, end in spans)}
    return loaded | views


def emit_nest(emit: Emitter, nest: Nest, tensors) -> None:
    """The code of one nest (see the module docstring for the protocol)."""
    if nest.schedule == "flash":
        from zhenwu.compiler.backend.flash_codegen import emit_flash_nest

        emit_flash_nest(emit, nest)
        return
    if len(nest.extents) > MAX_AXES:
        raise ValueError(f"a nest with {len(nest.extents)} axes (at most {MAX_AXES})")
    descs = emit_descriptors(emit, nest)
    ld_buffers = _load_buffers(nest)
    setup_loads = [s for s in nest.setup if isinstance(s, Load)]
    # once per core: zeroing, or values of the setup loads (a GEMM prologue's row scale)
    setup_compute = [s for s in nest.setup if isinstance(s, (Vec, Reduce))]
    ctx = _NestContext(nest, descs, ld_buffers,
                       frozenset(s.dst for s in setup_loads + setup_compute))
    final_loads = [s for s in nest.final if isinstance(s, Load)]
    init_loads = [s for s in nest.init if isinstance(s, Load)]   # once per tile
    init_compute = [s for s in nest.init if not isinstance(s, Load)]
    epilogue = [s for s in nest.final if not isinstance(s, (Load, Store))]
    if init_loads and not epilogue:
        raise ValueError("a nest with tile loads in init needs an epilogue to release them")
    tile_loads = init_loads + final_loads
    grid = nest.grid
    par_axes = [a for a, k in enumerate(nest.kinds) if k == "p" and grid[a] > 1]
    red_axes = [a for a, k in enumerate(nest.kinds) if k == "r" and grid[a] > 1]
    out_buffers = [b for b in nest.buffers
                   if b.name not in ld_buffers and b.name not in ctx.setup_buffers]
    out_stride = out_buffers[0].stride if out_buffers else 0
    # one credit per copy of the output buffers (a single-copy ACC tile takes one)
    out_credits = out_buffers[0].copies if out_buffers else 2
    for axis in nest.core_axes:  # this core's coordinate, the same for all its tiles
        if nest.grid[axis] > 1:
            emit.op("REM", Reg(R_COORD + axis), Reg(R_CORE), nest.grid[axis])
            if nest.tile[axis] > 1:
                emit.op("MUL", Reg(R_COORD + axis), Reg(R_COORD + axis), nest.tile[axis])
    for index, load in enumerate(setup_loads):
        _emit_load(emit, ctx, load, [], [(E_SETUP, 1)])
    # compute reading a setup load waits for the loads first (one engine: the first waits)
    loaded = {s.dst for s in setup_loads}
    after_loads = any(name in loaded for stmt in setup_compute for name in _reads(stmt))
    for index, stmt in enumerate(setup_compute):
        waits = [(E_SETUP, len(setup_loads))] if index == 0 and after_loads else []
        emit(_compute(ctx, stmt, True), waits=waits, sigs=[(E_SETUP, 1)])
    if setup_loads or setup_compute:
        # only MMAs read them (resident weights): the matrix engine waits, and the scalar
        # goes on issuing the first tile's loads meanwhile
        engine = "MX" if _read_only_by_mma(nest, ctx.setup_buffers) else "S"
        pending = len(setup_compute) + (0 if after_loads else len(setup_loads))
        emit.op(f"WAIT.{engine}", Event(E_SETUP, pending))
    # one credit per copy of the step's load buffers
    ld_credits = max((b.copies for b in nest.buffers if b.name in ld_buffers), default=2)
    if ld_buffers:
        emit.op("SIG.S", Event(E_LD_FREE, ld_credits))
    emit.op("SIG.S", Event(E_OUT_FREE, out_credits))
    if tile_loads:
        emit.op("SIG.S", Event(E_EPI_FREE, out_credits))
    staged = _staged(nest)
    if staged:
        emit.op("SIG.S", Event(E_STAGE_FREE, out_credits))
    emit.op("LI", Reg(R_MINE), nest.parallel_tiles)
    emit.op("SUB", Reg(R_MINE), Reg(R_MINE), Reg(R_CORE))
    emit.op("ADD", Reg(R_MINE), Reg(R_MINE), Reg(R_CORES))
    emit.op("SUB", Reg(R_MINE), Reg(R_MINE), 1)
    emit.op("DIV", Reg(R_MINE), Reg(R_MINE), Reg(R_CORES))
    emit.op("LI", Reg(R_LD_COUNT), 0)
    emit.op("LI", Reg(R_OUT_COUNT), 0)
    prefetch = (nest.schedule == "prefetch" and nest.reduction_steps == 1 and ld_buffers
                and not nest.causal)
    if prefetch:
        _prefetch_first(emit, ctx, par_axes, red_axes)
    emit.op("LOOP", Reg(R_TILE_LOOP), Reg(R_MINE))
    if prefetch:
        _prefetch_next(emit, ctx, par_axes, red_axes)
    causal = _causal(nest)
    if causal:
        _causal_tile(emit, nest, causal)
    else:
        emit.op("MUL", Reg(R_TILE), Reg(R_TILE_LOOP), Reg(R_CORES))
        emit.op("ADD", Reg(R_TILE), Reg(R_TILE), Reg(R_CORE))
        if _grouped(nest, par_axes):
            _decompose_grouped(emit, R_TILE, par_axes, nest)
        else:
            _decompose(emit, R_TILE, par_axes, nest)
    if out_credits <= 2:
        emit.op("AND", Reg(R_OUT_OFF), Reg(R_OUT_COUNT), 1)
    else:  # deeper buffering: a short tile's store latency is hidden by later tiles
        emit.op("REM", Reg(R_OUT_OFF), Reg(R_OUT_COUNT), out_credits)
    emit.op("MUL", Reg(R_OUT_OFF), Reg(R_OUT_OFF), out_stride)
    emit.op("ADD", Reg(R_OUT_COUNT), Reg(R_OUT_COUNT), 1)
    for index, load in enumerate(tile_loads):
        _emit_load(emit, ctx, load, [(E_EPI_FREE, 1)] if index == 0 else [], [(E_EPI_FULL, 1)])
    for index, stmt in enumerate(init_compute):
        emit(_compute(ctx, stmt, True), waits=[(E_OUT_FREE, 1)] if index == 0 else [])
    out_in_step = not init_compute
    steps = nest.reduction_steps
    for axis in red_axes:
        emit.op("LI", Reg(R_COORD + axis), 0)
    has_epi = bool(epilogue)
    _emit_step(emit, ctx, True, steps == 1, out_in_step, has_epi, len(init_loads),
               preloaded=bool(prefetch), staged=staged)
    if causal:  # steps 1 .. n-2 in a loop of this tile's length, then step n-1 (n >= 2)
        emit.op("LOOP", Reg(R_STEP_LOOP), Reg(R_MIDDLE))
        emit.op("ADD", Reg(R_STEP), Reg(R_STEP_LOOP), 1)
        _decompose(emit, R_STEP, red_axes, nest)
        _emit_step(emit, ctx, False, False, out_in_step)
        emit.op("ENDLOOP")
        emit.op("SUB", Reg(R_STEP), Reg(R_STEPS), 1)
        _decompose(emit, R_STEP, red_axes, nest)
        _emit_step(emit, ctx, False, True, out_in_step, has_epi)
        steps = 0
    if steps > 2:
        emit.op("LOOP", Reg(R_STEP_LOOP), steps - 2)
        emit.op("ADD", Reg(R_STEP), Reg(R_STEP_LOOP), 1)
        _decompose(emit, R_STEP, red_axes, nest)
        _emit_step(emit, ctx, False, False, out_in_step)
        emit.op("ENDLOOP")
    if steps > 1:
        emit.op("LI", Reg(R_STEP), steps - 1)
        _decompose(emit, R_STEP, red_axes, nest)
        _emit_step(emit, ctx, False, True, out_in_step, has_epi)
    if epilogue:
        _emit_epilogue(emit, ctx, epilogue, len(final_loads), bool(init_loads))
    stores = [s for s in nest.final if isinstance(s, Store)]
    for index, store in enumerate(stores):
        buf = nest.buffer(store.src)
        relu = ["relu"] if store.relu else []
        emit.op(f"DMA.ST.{buf.dtype}", ctx.ref(store.view), ctx.tile(store.src), options=relu,
                waits=[(E_OUT_FULL, 1)] if index == 0 else [],
                sigs=[(E_OUT_FREE, 1)] if index == len(stores) - 1 else [])
    emit.op("ENDLOOP")
    # Drain first: a WAIT.S on the credits before the engines are done would take the
    # initial credits the engines still need (a deadlock).
    emit.op("BAR.CORE")
    if ld_buffers:
        emit.op("WAIT.S", Event(E_LD_FREE, ld_credits))
    emit.op("WAIT.S", Event(E_OUT_FREE, out_credits))
    if tile_loads:
        emit.op("WAIT.S", Event(E_EPI_FREE, out_credits))
    if staged:
        emit.op("WAIT.S", Event(E_STAGE_FREE, out_credits))


def emit_kernel(emit: Emitter, kernel: Kernel, tensors) -> None:
    emit.kernel(kernel.name)
    for index, nest in enumerate(kernel.nests):
        if index:  # a nest may read what every core's previous nest wrote
            emit.op("BAR.CHIP")
        emit_nest(emit, nest, tensors)
    emit.op("BAR.CHIP")


def generate_program(program: KernelProgram, machine_name: str | None = None) -> Program:
    """The isa Program of a planned kernel program (every tensor has an address), built
    directly (no assembly text; a scalar tensor is declared with shape ())."""
    emit = Emitter(machine_name or None)
    for t in program.tensors:
        emit.tensor(TensorDecl(t.name, t.dtype, tuple(t.shape), int(t.address), t.role))
    emit.op("GETID", Reg(R_CORE), Keyword("core"))
    emit.op("GETID", Reg(R_CORES), Keyword("cores"))
    for kernel in program.kernels:
        emit_kernel(emit, kernel, program.tensors)
    emit.op("HALT")
    return emit.program()


def generate(program: KernelProgram, machine_name: str | None = None) -> str:
    """The assembly text of a planned kernel program (`generate_program`, printed)."""
    from zhenwu.isa.asm_print import print_program

    return print_program(generate_program(program, machine_name))
