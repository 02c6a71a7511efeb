"""Codegen: Kernel IR to an M890 program (docs/internals.md section 3).

Each nest becomes one scalar loop over the parallel tiles this core owns (core c takes tiles
c, c + cores, c + 2 cores, ...), with the reduction steps of a tile as an inner loop. The
generated code is compact: tile coordinates are computed with register arithmetic, never
unrolled.

Registers and events are never written as numbers: a nest takes what it needs from the
program's `RegisterFile` and `EventFile` (compiler/backend/allocators.py) for its lifetime
and gives them back at its end (`emit_nest`). Its registers are a `NestRegisters` (the tile
loop's counters, one coordinate register per axis with more than one tile, the copy
counters and offsets), its events a `NestEvents`. Engines are ordered by four counting
events per nest (and, in fused nests, the others `NestEvents` lists):

- `ld_full`: each load signals it; the first compute instruction of the step waits for
  all the step's loads;
- `ld_free`: credits for the copies of the load buffers (two, or more in an implicit
  GEMM; one `SIG.S` of that count at the start);
  the first load of a step takes one, the last compute instruction of the step returns it;
- `out_full`: the last compute instruction of the tile's last step signals the stores;
- `out_free`: credits for the two copies of the output buffers; the first instruction
  writing them in a tile takes one, the last store of the tile returns it.

At the end of a nest the scalar drains the core's queues (`BAR.CORE`), then takes both
credits back (`WAIT.S`), so every event is 0 again (and may go to the next nest) and every
engine's work is ordered before what follows. A `BAR.CHIP` ends each kernel.

These copies, credits and hand-offs are placed by the pipelining step
(compiler/backend/pipelining.py), not by hand: the load, output, epilogue and staging
buffers are the nest's `NestRings`, a step's compute is a `Stage` that consumes the load
ring's copy and releases it, and the next-tile prefetch issues loads into the ring's next
copy.

A nest with a schedule of its own (flash attention, compiler/backend/flash_codegen.py)
builds on the public pieces here: `CodegenState` (the emitter and both files),
`NestRegisters.take`, `NestContext` (tiles, operands, descriptor references and compute
instructions of a nest, with `bases` saying which register addresses each buffer's current
copy), `emit_descriptors`, `emit_tiles_of_core`, `emit_tile_coordinates`, `causal_axes`
and `emit_causal_tile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from itertools import pairwise

from zhenwu.compiler.backend.allocators import EventFile, RegisterFile, ResourceError
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
from zhenwu.compiler.backend.pipelining import (
    Pipeline,
    Ring,
    Stage,
    issue_loads,
    peeled_loop,
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
    LabelRef,
    Option,
    Predicate,
    Program,
    Reg,
    Symbol,
    TensorDecl,
    Tile,
)


@dataclass(frozen=True)
class NestEvents:
    """The events of one nest of the generic protocol (module docstring), taken from the
    program's `EventFile` for the nest's lifetime: every one is 0 again when the nest
    ends."""

    ld_full: int      # the step's loads landed (the first compute waits for all of them)
    ld_free: int      # credits for the copies of the step's load buffers
    out_full: int     # the tile's output is computed (the first store waits)
    out_free: int     # credits for the copies of the output buffers
    # fused nests (compiler/backend/fusion.py): setup loads and compute (once per core,
    # before the tile loop), epilogue loads in `final` (their own credits), and the hand-off
    # from the last step to the epilogue's compute
    setup: int
    epi_full: int
    epi_free: int
    mid: int
    # a step whose compute moves between the matrix and vector engines hands each result
    # over with an event per switch
    mx_to_vx: int
    vx_to_mx: int
    # a staged nest (`_staged`: vector work writes the matrix operands the step's MMA
    # reads) frees a copy of those operands when the MMA has run, apart from the
    # accumulator's copy, which its store frees
    stage_free: int

    @classmethod
    def take(cls, events: EventFile) -> NestEvents:
        """All of them, from `events` (inside the nest's scope)."""
        return cls(*(events.take(f"{field.name} of the nest") for field in fields(cls)))


@dataclass
class NestRegisters:
    """The scalar registers of one nest's loops, taken from the program's `RegisterFile`
    for the nest's lifetime (`take`). `core` and `cores` are the program's (set once by
    GETID at its start); the rest hold this core's walk over its tiles and their steps."""

    core: int                 # this core's index
    cores: int                # the number of cores
    mine: int                 # the number of tiles this core runs
    tile_loop: int            # the tile loop's counter (0 .. mine - 1)
    tile: int                 # the flat index of the current tile
    coords: dict[int, int]    # nest axis -> its tile coordinate (axes of one tile: none)
    step_loop: int            # the step loop's counter
    step: int                 # the flat index of the current reduction step
    steps: int | None = None  # causal nests: this tile's key steps
    middle: int | None = None  # causal nests: that minus two (the step loop's trip count)
    # the generic protocol's load and output copies: how many were used, and the byte
    # offset of the current copy (None in a nest that addresses its copies itself)
    ld_count: int | None = None
    ld_off: int | None = None
    out_count: int | None = None
    out_off: int | None = None

    @classmethod
    def take(cls, regs: RegisterFile, program: ProgramRegisters, nest: Nest, *,
             steps: bool, protocol: bool) -> NestRegisters:
        """The registers of `nest`: a coordinate register for each axis with more than one
        tile (and a causal nest's query axis); with `steps`, a causal tile's step counts;
        with `protocol`, the generic protocol's copy counters and offsets."""
        mine = regs.take("tiles of this core")
        tile_loop = regs.take("tile loop counter")
        tile = regs.take("tile index")
        axes = [a for a, n in enumerate(nest.grid) if n > 1]
        if nest.causal and nest.causal[0] not in axes:
            axes = sorted(axes + [nest.causal[0]])
        coords = {axis: regs.take(f"coordinate of axis {axis}") for axis in axes}
        step_loop = regs.take("step loop counter")
        step = regs.take("step index")
        found = cls(program.core, program.cores, mine, tile_loop, tile, coords, step_loop, step)
        if protocol:
            found.ld_count = regs.take("load copies used")
            found.ld_off = regs.take("offset of the load copy")
            found.out_count = regs.take("output copies used")
            found.out_off = regs.take("offset of the output copy")
        if steps:
            found.steps = regs.take("key steps of this tile")
            found.middle = regs.take("key steps of this tile less two")
        return found

    def coord(self, axis: int) -> int:
        return self.coords[axis]


@dataclass(frozen=True)
class ProgramRegisters:
    """The registers every kernel of a program reads: set once at its start."""

    core: int
    cores: int


def _engine(stmt) -> str:
    return "MX" if isinstance(stmt, Mma) else "VX"


def _reads(stmt) -> list[str]:
    """The buffers a Vec or Reduce statement reads."""
    if isinstance(stmt, Reduce):
        return [stmt.src]
    return [src.buffer if isinstance(src, Strided) else src for src in stmt.srcs
            if isinstance(src, (str, Strided))]


@dataclass(frozen=True)
class NestRings:
    """The rings (compiler/backend/pipelining.py) of a nest of the generic protocol: the
    step's load buffers (`ld`, None without step loads), the output buffers (`out`), the
    tile's epilogue loads (`epi`) and a staged nest's staging buffers (`stage`)."""

    ld: Ring | None
    out: Ring
    epi: Ring | None = None
    stage: Ring | None = None

    @property
    def pipeline(self) -> Pipeline:
        """Their credits, given at the nest's start and taken back at its end."""
        return Pipeline([r for r in (self.ld, self.out, self.epi, self.stage) if r])


@dataclass
class NestContext:
    """What building one nest's instructions needs: the nest, its descriptors, its
    registers and events, and where each buffer's current copy is. `bases[name]` is the
    register holding the byte offset of buffer `name`'s current copy (added to the
    buffer's own offset), None for a buffer at its offset; a name not in `bases` is at
    `default_base`. A nest that moves its copies itself (flash attention) rebinds
    `bases` as it goes. `instruction(stmt, first_step)` builds a compute statement."""

    nest: Nest
    descs: dict[View, int]
    regs: NestRegisters
    events: NestEvents | None = None
    bases: dict[str, int | None] = field(default_factory=dict)
    default_base: int | None = None
    # buffers the nest's setup fills once per core, and the register holding a step's byte
    # offset into an MMA operand resident there as whole rows (`_resident_rows_axis`)
    setup_buffers: frozenset[str] = frozenset()
    a_off: int | None = None
    rings: NestRings | None = None   # the generic protocol's (None in a nest of its own)

    def coord(self, axis: int) -> int | None:
        """The register holding nest axis `axis`'s tile coordinate, None when it is 0."""
        return None if self.nest.grid[axis] == 1 else self.regs.coord(axis)

    def base(self, name: str) -> int | None:
        return self.bases.get(name, self.default_base)

    def tile(self, name: str) -> Tile:
        buf = self.nest.buffer(name)
        return Tile(buf.level, Addr(self.base(name), buf.offset))

    def operand(self, name: str | Strided, dst) -> Tile:
        """Tile operand `name` of an instruction writing buffer `dst`: a 1 x cols buffer
        repeats its row (rs = 0), a rows x 1 buffer its column (cs = 0); a `Strided` one
        reads from its element offset with its strides."""
        if isinstance(name, Strided):
            rs, cs = name.row_stride, name.col_stride
            buf = self.nest.buffer(name.buffer)
            start = buf.offset + name.offset * itemsize(buf.dtype)
            return Tile(buf.level, Addr(self.base(name.buffer), start), rs, cs)
        tile = self.tile(name)
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
        return Tile(buf.level, Addr(self.base(name), start), row_stride, col_stride)

    def ref(self, view: View, box: tuple[int, ...] = ()) -> DescRef:
        coords = []
        for axis, shift in zip(view.axes, view.shifts):
            coords.append(Addr(self.coord(axis), -shift))
        return DescRef(self.descs[(view, box)], tuple(coords))

    def instruction(self, stmt, first_step: bool) -> Instruction:
        """The instruction of compute statement `stmt` (`first_step`: an MMA of no fixed
        mode initialises its accumulator)."""
        return _compute(self, stmt, first_step)


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


def emit_descriptors(emit: Emitter, nest: Nest, bases: dict | None = None) -> dict[View, int]:
    """One DESC per distinct GM view (up to shifts) and box the nest loads or stores,
    numbered d0, d1, ...; the box is the load's, else the nest's tile along the view's
    axes. `bases` (by GM tensor name): a register holding a byte offset every view of that
    tensor moves by (a nest repeated in a loop, `emit_kernel`)."""
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
        moved = None if bases is None else bases.get(view.tensor)
        base = Symbol(view.tensor, byte_offset) if moved is None else \
            Addr(moved[0], moved[1] + byte_offset)
        emit.op("DESC", DReg(index), base, Keyword(view.dtype), IntList(tuple(view.dims)),
                IntList(tuple(view.strides)), IntList(tuple(box)))
    return descs


def emit_tile_coordinates(emit: Emitter, regs: NestRegisters, source: int, axes: list[int],
                          nest: Nest) -> None:
    """Coordinates of the tile with flat index in register `source` along `axes` (the
    axes with more than one tile, outermost first): coord = (index / inner) % grid * tile."""
    grid, tile = nest.grid, nest.tile
    inner = 1
    plan = []
    for axis in reversed(axes):
        plan.append((axis, inner))
        inner *= grid[axis]
    for position, (axis, below) in enumerate(reversed(plan)):
        reg = regs.coord(axis)
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


def _decompose_grouped(emit: Emitter, regs: RegisterFile, nest_regs: NestRegisters,
                       source: int, axes: list[int], nest: Nest) -> None:
    """`emit_tile_coordinates` with the last two axes (m, n) in grouped order: of the flat
    index t, the outer axes take t / (gm * gn) row-major; r = t % (gm * gn) is tile
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
        reg = nest_regs.coord(axis)
        emit.op("DIV", Reg(reg), Reg(source), below)
        if position > 0:
            emit.op("REM", Reg(reg), Reg(reg), grid[axis])
        if tile[axis] > 1:
            emit.op("MUL", Reg(reg), Reg(reg), tile[axis])
    rm, rn = nest_regs.coord(m_axis), nest_regs.coord(n_axis)
    with regs.scope("grouped tile order"):
        scratch = regs.take("m within the group")
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


def _compute(ctx: NestContext, stmt, first_step: bool) -> Instruction:
    t = ctx.tile
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
        a_tile = t(stmt.a)
        axis = _resident_rows_axis(ctx, stmt)
        if axis is not None:   # this step's k tile of the whole rows (one row: repeated)
            k = ctx.nest.tile[axis]
            a_tile = Tile(a.level, Addr(ctx.a_off, a.offset), 0 if a.rows == 1 else a.cols, 1)
        b_tile = t(stmt.b)
        if b.cols != c.cols:  # B's rows are further apart than the product's width
            b_tile = Tile(b_tile.space, b_tile.base, b.cols)
        return instruction(f"MMA.{stmt.in_dtype}.{stmt.acc_dtype}", t(stmt.dst), a_tile,
                           b_tile, c.rows, c.cols, k, options=mode)
    raise TypeError(stmt)


def _staged(nest: Nest) -> bool:
    """Whether the nest's one step is vector work staging the operands of a last MMA into
    the accumulator, which the tile's stores then read directly (an im2col's gathers: the
    patches in L1, the product in ACC). The staged operands are free again as soon as the
    MMA has run, so the next tile's vector work needs only the MMA of the tile two copies
    back, not its store and the store's round trip: the staging buffers get their own
    credit (`stage_free`, returned by the MMA), and the accumulator's credit (`out_free`)
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


def _emit_step(emit: Emitter, ctx: NestContext, first: bool, last: bool,
               out_written_in_step: bool, epilogue: bool = False, tile_loads: int = 0,
               preloaded: bool = False, staged: bool = False) -> None:
    """One reduction step, pipelined on the nest's rings (compiler/backend/pipelining.py):
    its loads into the next copy of the load ring, then its compute, which waits for them
    and returns the copy. `preloaded`: the loads were issued a tile ahead (`_prefetch_next`);
    the compute reads the copy of this tile's index. `staged` (`_staged`): the vector work
    waits for its staging copy (`stage_free`) and returns the loads' copy, the MMA waits for
    the accumulator's copy and frees the staging one."""
    regs, ev, rings = ctx.regs, ctx.events, ctx.rings
    loads = [s for s in ctx.nest.step if isinstance(s, Load)]
    compute = [s for s in ctx.nest.step if not isinstance(s, Load)]
    if loads and preloaded:
        rings.ld.select(emit, regs.ld_off, regs.tile_loop, modulo=True)
    if loads and not preloaded:
        # two copies alternate; deeper buffering (an implicit GEMM's short steps hide the
        # DMA latency) turns through them
        rings.ld.turn(emit, regs.ld_off, regs.ld_count)
        issue_loads(rings.ld, loads, lambda load, waits, sigs:
                    _emit_load(emit, ctx, load, waits, sigs))
    for stmt in compute:
        axis = _resident_rows_axis(ctx, stmt) if isinstance(stmt, Mma) else None
        if axis is not None:
            size = itemsize(ctx.nest.buffer(stmt.a).dtype)
            emit.op("MUL", Reg(ctx.a_off), Reg(regs.coord(axis)), size)
    stage = Stage([_engine(s) for s in compute])
    if loads:
        stage.consume(rings.ld, len(loads))
    if first and out_written_in_step:
        stage.acquire(rings.stage if staged else rings.out)
    if first and tile_loads:
        stage.consume(rings.epi, tile_loads)
    if staged:   # the MMA reads no load buffer: the last vector statement frees them
        if loads:
            stage.release(rings.ld, at=-2)
        stage.acquire(rings.out, at=-1).release(rings.stage)
    elif loads:
        stage.release(rings.ld)
    if last:
        stage.signal((ev.mid, 1) if epilogue else rings.out.landed())
    stage.switches(ev.mx_to_vx, ev.vx_to_mx)
    stage.emit(emit, [_compute(ctx, stmt, first) for stmt in compute])


def _emit_prefetch(emit: Emitter, ctx: NestContext, red_axes: list[int]) -> None:
    """The step loads of the tile whose coordinates are in the registers, into the next
    copy of the load ring (`ld_count` counts the tiles loaded)."""
    regs = ctx.regs
    for axis in red_axes:
        emit.op("LI", Reg(regs.coord(axis)), 0)
    ctx.rings.ld.turn(emit, regs.ld_off, regs.ld_count, modulo=True)
    issue_loads(ctx.rings.ld, [s for s in ctx.nest.step if isinstance(s, Load)],
                lambda load, waits, sigs: _emit_load(emit, ctx, load, waits, sigs))


def _prefetch_first(emit: Emitter, ctx: NestContext, par_axes: list[int],
                    red_axes: list[int]) -> None:
    """Schedule `prefetch` (a nest of one reduction step whose compute is many vector
    instructions, an im2col's gathers: the scalar waits for room in the vector queue and
    would issue the next tile's loads only once this tile's gathers run): the first tile's
    loads before the tile loop (when the core has a tile)."""
    regs = ctx.regs
    label = f"prefetched_{len(emit.lines)}"
    emit.op("BEQZ", Reg(regs.mine), LabelRef(label))
    emit.op("MOV", Reg(regs.tile), Reg(regs.core))
    emit_tile_coordinates(emit, regs, regs.tile, par_axes, ctx.nest)
    _emit_prefetch(emit, ctx, red_axes)
    emit.label(label)


def _prefetch_next(emit: Emitter, registers: RegisterFile, ctx: NestContext,
                   par_axes: list[int], red_axes: list[int]) -> None:
    """At the top of tile i's iteration: the loads of tile i + 1 (when the core has one),
    before tile i's compute fills the vector queue."""
    regs = ctx.regs
    label = f"prefetched_{len(emit.lines)}"
    emit.op("ADD", Reg(regs.tile), Reg(regs.tile_loop), 1)
    with registers.scope("next tile's prefetch"):
        more = registers.take("the core has a next tile")
        emit.op("SLT", Reg(more), Reg(regs.tile), Reg(regs.mine))
        emit.op("BEQZ", Reg(more), LabelRef(label))
    emit.op("MUL", Reg(regs.tile), Reg(regs.tile), Reg(regs.cores))
    emit.op("ADD", Reg(regs.tile), Reg(regs.tile), Reg(regs.core))
    emit_tile_coordinates(emit, regs, regs.tile, par_axes, ctx.nest)
    _emit_prefetch(emit, ctx, red_axes)
    emit.label(label)


def _emit_load(emit: Emitter, ctx: NestContext, load: Load, waits, sigs,
               predicate: Predicate | None = None) -> None:
    buf = ctx.nest.buffer(load.dst)
    pad = [Option("pad", fimm(load.pad))] if load.pad != 0 else []
    emit.op(f"DMA.LD.{buf.dtype}", ctx.tile(load.dst), ctx.ref(load.view, load.box),
            options=pad, waits=waits, sigs=sigs, predicate=predicate)


def _emit_epilogue(emit: Emitter, ctx: NestContext, compute: list, n_loads: int,
                   release: bool = False) -> None:
    """The `final` compute of a tile: after the last step (`mid`) and the tile's epilogue
    loads (`epi_full`); it hands the output to the stores (`out_full`) and returns the
    tile loads' credit (`epi_free`)."""
    ev, rings = ctx.events, ctx.rings
    stage = Stage([_engine(s) for s in compute]).wait((ev.mid, 1))
    if n_loads:
        stage.consume(rings.epi, n_loads)
    stage.signal(rings.out.landed())
    if n_loads or release:
        stage.release(rings.epi)
    stage.emit(emit, [_compute(ctx, stmt, False) for stmt in compute])


def causal_axes(nest: Nest) -> tuple[int, int] | None:
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


def emit_causal_tile(emit: Emitter, registers: RegisterFile, regs: NestRegisters, nest: Nest,
                     causal: tuple[int, int]) -> None:
    """Tile coordinates of a causal nest (`regs.tile` and the coordinates). Tiles are
    ranked longest first (last query block first) and dealt to the cores in a snake
    (0..n-1, n-1..0, ...), so every core gets about the same number of key steps; then this
    tile's step count n (`regs.steps`, at least 2; a step past the diagonal is fully masked
    and harmless) and n - 2 (`regs.middle`)."""
    q_axis, k_axis = causal
    grid, tile = nest.grid, nest.tile
    heads = [a for a, k in enumerate(nest.kinds) if k == "p" and grid[a] > 1 and a != q_axis]
    n_heads = 1
    for axis in heads:
        n_heads *= grid[axis]
    with registers.scope("causal tile order"):
        odd, rank = registers.take("odd round"), registers.take("rank within the round")
        # rank = loop * cores + (core if loop is even else cores - 1 - core)
        emit.op("AND", Reg(odd), Reg(regs.tile_loop), 1)
        emit.op("SUB", Reg(rank), Reg(regs.cores), 1)
        emit.op("SUB", Reg(rank), Reg(rank), Reg(regs.core))
        emit.op("SUB", Reg(rank), Reg(rank), Reg(regs.core))
        emit.op("MUL", Reg(rank), Reg(rank), Reg(odd))
        # only whole rounds snake: a last partial round deals plainly (its ranks stay valid)
        emit.op("LI", Reg(regs.middle), nest.parallel_tiles)
        emit.op("DIV", Reg(regs.middle), Reg(regs.middle), Reg(regs.cores))
        emit.op("SLT", Reg(regs.middle), Reg(regs.tile_loop), Reg(regs.middle))
        emit.op("MUL", Reg(rank), Reg(rank), Reg(regs.middle))
        emit.op("ADD", Reg(rank), Reg(rank), Reg(regs.core))
        emit.op("MUL", Reg(regs.tile), Reg(regs.tile_loop), Reg(regs.cores))
        emit.op("ADD", Reg(regs.tile), Reg(regs.tile), Reg(rank))
    reg = regs.coord(q_axis)
    if len(heads) == 1:
        head = regs.coord(heads[0])
        emit.op("REM", Reg(head), Reg(regs.tile), n_heads)
        if tile[heads[0]] > 1:
            emit.op("MUL", Reg(head), Reg(head), tile[heads[0]])
    elif heads:  # the flat head index (in the query axis's register until it is computed)
        emit.op("REM", Reg(reg), Reg(regs.tile), n_heads)
        emit_tile_coordinates(emit, regs, reg, heads, nest)
    emit.op("DIV", Reg(reg), Reg(regs.tile), n_heads)
    emit.op("SUB", Reg(reg), Reg(reg), grid[q_axis] - 1)
    emit.op("MUL", Reg(reg), Reg(reg), -1)
    if tile[q_axis] > 1:
        emit.op("MUL", Reg(reg), Reg(reg), tile[q_axis])
    # n = clamp(ceil((q0 + tile_q) / tile_k), 2, key tiles)
    emit.op("ADD", Reg(regs.steps), Reg(reg), tile[q_axis] + tile[k_axis] - 1)
    emit.op("DIV", Reg(regs.steps), Reg(regs.steps), tile[k_axis])
    emit.op("MAX", Reg(regs.steps), Reg(regs.steps), 2)
    emit.op("MIN", Reg(regs.steps), Reg(regs.steps), grid[k_axis])
    emit.op("SUB", Reg(regs.middle), Reg(regs.steps), 2)


def emit_tiles_of_core(emit: Emitter, regs: NestRegisters, parallel_tiles: int) -> None:
    """`regs.mine` = the number of tiles this core runs: core c takes tiles c, c + cores,
    ... of `parallel_tiles`, so ceil((parallel_tiles - core) / cores)."""
    emit.op("LI", Reg(regs.mine), parallel_tiles)
    emit.op("SUB", Reg(regs.mine), Reg(regs.mine), Reg(regs.core))
    emit.op("ADD", Reg(regs.mine), Reg(regs.mine), Reg(regs.cores))
    emit.op("SUB", Reg(regs.mine), Reg(regs.mine), 1)
    emit.op("DIV", Reg(regs.mine), Reg(regs.mine), Reg(regs.cores))


def _resident_rows_axis(ctx: NestContext, stmt: Mma) -> int | None:
    """The reduction axis along which an MMA's A operand is read from whole rows resident
    in a setup buffer (a map prologue's, compiler/backend/gemm.py), or None: A is a setup
    buffer (not transposed) wider than the nest's k tile."""
    if stmt.trans_a or stmt.a not in ctx.setup_buffers:
        return None
    red = [axis for axis, kind in enumerate(ctx.nest.kinds) if kind == "r"]
    if len(red) != 1 or ctx.nest.buffer(stmt.a).cols == ctx.nest.tile[red[0]]:
        return None
    return red[0]


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


def _read_only_by_vector(nest: Nest, names: frozenset[str]) -> bool:
    """Whether the buffers `names` are used by the vector engine only after the setup
    (vector, reduction and column-copy statements; never an MMA, a store or a load)."""
    for stmt in nest.init + nest.step + nest.final:
        if isinstance(stmt, (Vec, Reduce, ColumnCopy, Iota)):
            continue
        used = ({stmt.src} if isinstance(stmt, Store) else {stmt.dst} if isinstance(stmt, Load)
                else {stmt.a, stmt.b, stmt.dst} if isinstance(stmt, Mma) else set(names))
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


@dataclass
class CodegenState:
    """One program's code generation: the Emitter, the register and event files its
    nests take from, and the registers every kernel reads (`program`)."""

    emit: Emitter
    registers: RegisterFile
    events: EventFile
    program: ProgramRegisters
    # the machine's cores when the caller knows them (a nest of at most one tile per core
    # overlaps its setup with its tile's loads: `_emit_protocol_nest`); None: not known
    cores: int | None = None
    # GM tensors' byte addresses (`generate_program`): a repeated nest's descriptors move
    addresses: dict[str, int] = field(default_factory=dict)
    # while emitting a loop of repeated nests: (register, tensor address) by tensor name
    moved_bases: dict | None = None

    @classmethod
    def new(cls, machine_name: str | None = None, cores: int | None = None) -> CodegenState:
        registers = RegisterFile(advice="each axis of a loop nest with more than one tile "
                                 "keeps its coordinate in a register: a nest with fewer "
                                 "tiled axes needs fewer")
        program = ProgramRegisters(registers.take("core id"), registers.take("core count"))
        # compute kernels leave the asynchronous collectives' events alone
        events = EventFile(reserve_async=True)
        return cls(Emitter(machine_name or None), registers, events, program, cores)


def emit_nest(state: CodegenState, nest: Nest, core_offset: int = 0) -> None:
    """The code of one nest (see the module docstring for the protocol); its registers
    and events are the nest's own, given back at its end. `core_offset`: deal the tiles
    from core `core_offset` (mod the cores) on (`emit_kernel`; generic protocol only)."""
    with state.registers.scope(f"a {len(nest.extents)}-axis nest"), \
            state.events.scope("a nest"):
        if nest.schedule == "flash":
            from zhenwu.compiler.backend.flash_codegen import emit_flash_nest

            emit_flash_nest(state, nest)
        else:
            _emit_protocol_nest(state, nest, core_offset)


def _emit_protocol_nest(state: CodegenState, nest: Nest, core_offset: int = 0) -> None:
    """A nest of the generic protocol (module docstring)."""
    emit = state.emit
    causal = causal_axes(nest)
    regs = NestRegisters.take(state.registers, state.program, nest, steps=bool(causal),
                              protocol=True)
    if core_offset:   # this nest's core number: (core - offset) mod cores
        rotated = state.registers.take("this nest's core number (rotated)")
        with state.registers.scope("the rotation"):
            shift = state.registers.take("the rotation mod the cores")
            emit.op("LI", Reg(shift), core_offset)
            emit.op("REM", Reg(shift), Reg(shift), Reg(regs.cores))
            emit.op("SUB", Reg(rotated), Reg(regs.core), Reg(shift))
        emit.op("ADD", Reg(rotated), Reg(rotated), Reg(regs.cores))
        emit.op("REM", Reg(rotated), Reg(rotated), Reg(regs.cores))
        regs.core = rotated
    ev = NestEvents.take(state.events)
    descs = emit_descriptors(emit, nest, state.moved_bases)
    ld_buffers = _load_buffers(nest)
    setup_loads = [s for s in nest.setup if isinstance(s, Load)]
    # once per core: zeroing, or values of the setup loads (a GEMM prologue's row scale)
    setup_compute = [s for s in nest.setup if isinstance(s, (Vec, Reduce))]
    setup_buffers = frozenset(s.dst for s in setup_loads + setup_compute)
    bases: dict[str, int | None] = {name: regs.ld_off for name in ld_buffers}
    bases.update({name: None for name in setup_buffers})
    ctx = NestContext(nest, descs, regs, ev, bases, default_base=regs.out_off,
                      setup_buffers=setup_buffers)
    if any(isinstance(s, Mma) and _resident_rows_axis(ctx, s) is not None for s in nest.step):
        ctx.a_off = state.registers.take("a step's offset into resident A rows")
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
                   if b.name not in ld_buffers and b.name not in setup_buffers]
    out_stride = out_buffers[0].stride if out_buffers else 0
    # one credit per copy of the output buffers (a single-copy ACC tile takes one)
    out_credits = out_buffers[0].copies if out_buffers else 2
    for axis in nest.core_axes:  # this core's coordinate, the same for all its tiles
        if nest.grid[axis] > 1:
            emit.op("REM", Reg(regs.coord(axis)), Reg(regs.core), nest.grid[axis])
            if nest.tile[axis] > 1:
                emit.op("MUL", Reg(regs.coord(axis)), Reg(regs.coord(axis)), nest.tile[axis])
    # only MMAs read the setup's buffers (resident weights or rows): the matrix engine
    # waits for them, and the scalar goes on issuing the first tile's loads meanwhile.
    # A nest of at most one tile per core (small nests side by side in a kernel: decode's
    # q/k norms and rotations) would otherwise pay a round trip for its setup and one for
    # its tile: when only the vector engine reads the setup (a weight row, rotary tables)
    # it waits instead, and a core without a tile skips the setup (its loads feed nothing).
    # With more tiles per core the round trip is paid once and the order of the cores' HBM
    # requests at the start decides more than it (softmax and norms over many rows)
    one_wave = state.cores is not None and nest.parallel_tiles <= state.cores
    wait_on = ("MX" if _read_only_by_mma(nest, setup_buffers)
               else "VX" if one_wave and _read_only_by_vector(nest, setup_buffers) else "S")
    skip = bool(setup_loads or setup_compute) and wait_on == "VX"
    # (predicated on this core's tile count: the setup and its wait run only when it is
    # not 0; a predicated-off instruction neither waits nor signals)
    only_with_tiles = Predicate(regs.mine) if skip else None
    if skip:
        emit_tiles_of_core(emit, regs, nest.parallel_tiles)
    # the setup's values stay resident (one copy, no credit); every load and compute
    # signals `setup`, and compute reading a setup load waits for the loads first
    resident = Ring(1, 0, full=ev.setup)
    issue_loads(resident, setup_loads, lambda load, waits, sigs:
                _emit_load(emit, ctx, load, waits, sigs, only_with_tiles), credit=False)
    loaded = {s.dst for s in setup_loads}
    after_loads = any(name in loaded for stmt in setup_compute for name in _reads(stmt))
    if setup_compute:
        stage = Stage([_engine(s) for s in setup_compute])
        if after_loads:
            stage.consume(resident, len(setup_loads))
        for index in range(len(setup_compute)):
            stage.signal(resident.landed(), at=index)
        stage.emit(emit, [replace(_compute(ctx, stmt, True), predicate=only_with_tiles)
                          for stmt in setup_compute])
    if setup_loads or setup_compute:
        pending = len(setup_compute) + (0 if after_loads else len(setup_loads))
        if only_with_tiles is None:
            resident.wait_full(emit, wait_on, pending)
        else:
            emit.op(f"WAIT.{wait_on}", Event(ev.setup, pending), predicate=only_with_tiles)
    staged = _staged(nest)
    ctx.rings = rings = _nest_rings(nest, ev, ld_buffers, out_stride, out_credits,
                                    bool(tile_loads), staged)
    rings.pipeline.start(emit)
    if not skip:
        emit_tiles_of_core(emit, regs, nest.parallel_tiles)
    emit.op("LI", Reg(regs.ld_count), 0)
    emit.op("LI", Reg(regs.out_count), 0)
    prefetch = (nest.schedule == "prefetch" and nest.reduction_steps == 1 and ld_buffers
                and not nest.causal)
    if prefetch:
        _prefetch_first(emit, ctx, par_axes, red_axes)
    emit.op("LOOP", Reg(regs.tile_loop), Reg(regs.mine))
    if prefetch:
        _prefetch_next(emit, state.registers, ctx, par_axes, red_axes)
    if causal:
        emit_causal_tile(emit, state.registers, regs, nest, causal)
    else:
        emit.op("MUL", Reg(regs.tile), Reg(regs.tile_loop), Reg(regs.cores))
        emit.op("ADD", Reg(regs.tile), Reg(regs.tile), Reg(regs.core))
        if _grouped(nest, par_axes):
            _decompose_grouped(emit, state.registers, regs, regs.tile, par_axes, nest)
        else:
            emit_tile_coordinates(emit, regs, regs.tile, par_axes, nest)
    # deeper buffering: a short tile's store latency is hidden by later tiles
    rings.out.turn(emit, regs.out_off, regs.out_count)
    if tile_loads:
        issue_loads(rings.epi, tile_loads, lambda load, waits, sigs:
                    _emit_load(emit, ctx, load, waits, sigs))
    if init_compute:
        Stage([_engine(s) for s in init_compute]).acquire(rings.out).emit(
            emit, [_compute(ctx, stmt, True) for stmt in init_compute])
    out_in_step = not init_compute
    has_epi = bool(epilogue)

    def reduction_step(first: bool, last: bool) -> None:
        if first:
            for axis in red_axes:
                emit.op("LI", Reg(regs.coord(axis)), 0)
            _emit_step(emit, ctx, True, last, out_in_step, has_epi, len(init_loads),
                       preloaded=bool(prefetch), staged=staged)
            return
        emit_tile_coordinates(emit, regs, regs.step, red_axes, nest)
        _emit_step(emit, ctx, False, last, out_in_step, has_epi and last)

    # a causal tile's steps are known at run time (n >= 2)
    peeled_loop(emit, reduction_step, regs.step_loop, regs.step,
                steps=None if causal else nest.reduction_steps,
                registers=(regs.steps, regs.middle) if causal else None)
    if epilogue:
        _emit_epilogue(emit, ctx, epilogue, len(final_loads), bool(init_loads))
    stores = [s for s in nest.final if isinstance(s, Store)]
    if stores:  # the first waits for the tile's output, the last returns its copy
        Stage(["ST"] * len(stores)).consume(rings.out, 1).release(rings.out).emit(
            emit, [_store(ctx, store) for store in stores])
    emit.op("ENDLOOP")
    rings.pipeline.drain(emit)


def _store(ctx: NestContext, store: Store) -> Instruction:
    buf = ctx.nest.buffer(store.src)
    return instruction(f"DMA.ST.{buf.dtype}", ctx.ref(store.view), ctx.tile(store.src),
                       options=["relu"] if store.relu else [])


def _nest_rings(nest: Nest, ev: NestEvents, ld_buffers: set[str], out_stride: int,
                out_credits: int, tile_loads: bool, staged: bool) -> NestRings:
    """The rings of a nest of the generic protocol: the step's loads turn through their
    buffers' copies (one credit per copy of the deepest), the outputs through at least two
    (one credit per copy: a single-copy ACC tile takes one); the tile's epilogue loads and
    a staged nest's staging buffers have a credit per output copy."""
    ld = None
    step_loads = [s for s in nest.step if isinstance(s, Load)]
    if ld_buffers and step_loads:
        first = nest.buffer(step_loads[0].dst)
        credits = max(b.copies for b in nest.buffers if b.name in ld_buffers)
        ld = Ring(first.copies, first.stride, ev.ld_full, ev.ld_free, credits)
    out = Ring(max(2, out_credits), out_stride, ev.out_full, ev.out_free, out_credits)
    epi = Ring(out_credits, 0, ev.epi_full, ev.epi_free) if tile_loads else None
    stage = Ring(out_credits, 0, None, ev.stage_free) if staged else None
    return NestRings(ld, out, epi, stage)


def _gm_accesses(nest: Nest) -> tuple[set[str], set[str]]:
    """(GM tensors the nest loads, GM tensors it stores)."""
    reads = {s.view.tensor for s in nest.setup + nest.init + nest.step + nest.final
             if isinstance(s, Load)}
    writes = {s.view.tensor for s in nest.final + nest.step if isinstance(s, Store)}
    return reads, writes


def _rotatable(nest: Nest) -> bool:
    """A nest whose tiles may be dealt from any core on (its core number only numbers its
    tiles)."""
    return nest.schedule in ("", "prefetch") and not nest.causal


def emit_kernel(state: CodegenState, kernel: Kernel) -> None:
    """The kernel's nests in order, a chip barrier after each that a later one may depend
    on. Consecutive nests that neither read nor write a GM tensor another of them writes
    (a horizontal fusion's, compiler/backend/merge.py) need none between them: each core
    drains its engines at a nest's end (`BAR.CORE`), which orders the nests' use of its L1
    and events; their tiles are dealt from the core after the previous nest's last tile on,
    so that small nests run side by side on different cores instead of one after another."""
    emit = state.emit
    emit.kernel(kernel.name)
    reads: set[str] = set()
    writes: set[str] = set()
    offset = 0
    previous = None
    nests = list(kernel.nests)
    repeat = _repetition(nests, state.addresses)
    if repeat is not None:
        period, count, steps = repeat
        _emit_repeated(state, kernel, nests[:period], count, steps)
        nests = nests[period * count:]  # (the loop ends each repeat with a barrier)
    for nest in nests:
        r, w = _gm_accesses(nest)
        if previous is not None:
            if (_rotatable(nest) and _rotatable(previous)
                    and not (r & writes or w & writes or w & reads)):
                offset += previous.parallel_tiles
            else:  # a nest may read what every core's previous nest wrote
                emit.op("BAR.CHIP")
                reads, writes, offset = set(), set(), 0
        try:
            emit_nest(state, nest, offset)
        except ResourceError as err:
            err.message = f"kernel '{kernel.name}': {err.message}"
            err.op_ids = kernel.op_ids
            raise
        reads |= r
        writes |= w
        previous = nest
    emit.op("BAR.CHIP")


def _views(nest: Nest) -> list[View]:
    return [s.view for s in nest.statements() if isinstance(s, (Load, Store))]


def _at_zero(nest: Nest) -> Nest:
    """`nest` with every GM view's offset 0 (what repeats of one nest have in common)."""
    def zero(stmt):
        if isinstance(stmt, (Load, Store)):
            return replace(stmt, view=replace(stmt.view, offset=0))
        return stmt
    return replace(nest, setup=tuple(map(zero, nest.setup)), init=tuple(map(zero, nest.init)),
                   step=tuple(map(zero, nest.step)), final=tuple(map(zero, nest.final)))


def _repetition(nests: list[Nest], addresses: dict[str, int]
                ) -> tuple[int, int, dict[str, int]] | None:
    """(period, count, byte step by GM tensor) when the kernel's first `period * count`
    nests are `count` (at least 2) repeats of its first `period`, each repeat the same
    nests with every view of a tensor moved by the same bytes, a chip barrier before every
    nest (each depends on the one before), and every tensor's address known: a row-group
    kernel (`fusion._row_groups`). Emitted as a loop, its code does not grow with the
    repeats, and the simulator's fast-forward can skip whole repeats."""
    if len(nests) < 4 or any(not _rotatable(n) or n.schedule for n in nests):
        return None
    zeros = None
    for period in range(1, len(nests) // 2 + 1):
        if nests[period].extents != nests[0].extents:
            continue
        zeros = zeros or [_at_zero(n) for n in nests]
        steps: dict[str, int] = {}
        count = 1
        while (count + 1) * period <= len(nests):
            ok = True
            for j in range(period):
                first, this = nests[j], nests[count * period + j]
                if zeros[count * period + j] != zeros[j]:
                    ok = False
                    break
                for a, b in zip(_views(first), _views(this)):
                    moved = b.offset - a.offset
                    if moved % count:
                        ok = False
                        break
                    step = moved // count * itemsize(a.dtype)
                    if steps.setdefault(a.tensor, step) != step:
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                break
            count += 1
        if count < 2 or any(t not in addresses for t in steps):
            continue
        # a barrier before every nest of the run: each reads or writes what the one before
        # wrote (the repeats' own order between them, too)
        for before, after in pairwise(nests[:period * count]):
            r, w = _gm_accesses(after)
            rb, wb = _gm_accesses(before)
            if not (r & wb or w & wb or w & rb):
                return None
        return period, count, steps
    return None


def _emit_repeated(state: CodegenState, kernel: Kernel, nests: list[Nest], count: int,
                   steps: dict[str, int]) -> None:
    """LOOP `count` times over `nests` with a chip barrier after each, every descriptor of
    a tensor based at (repeat index x its step) bytes from where the first repeat's is."""
    emit = state.emit
    with state.registers.scope("a loop of repeated nests"):
        counter = state.registers.take("the repeat")
        moved = {}
        for tensor, step in steps.items():
            if step == 0:
                continue  # (a broadcast row the repeats share)
            reg = state.registers.take(f"{tensor}'s offset in the repeat")
            moved[tensor] = (reg, state.addresses[tensor], step)
        emit.op("LOOP", Reg(counter), count)
        for reg, _, step in moved.values():
            emit.op("MUL", Reg(reg), Reg(counter), step)
        state.moved_bases = {t: (reg, address) for t, (reg, address, _) in moved.items()}
        try:
            for index, nest in enumerate(nests):
                if index:
                    emit.op("BAR.CHIP")
                try:
                    emit_nest(state, nest)
                except ResourceError as err:
                    err.message = f"kernel '{kernel.name}': {err.message}"
                    err.op_ids = kernel.op_ids
                    raise
            emit.op("BAR.CHIP")
        finally:
            state.moved_bases = None
        emit.op("ENDLOOP")


def generate_program(program: KernelProgram, machine_name: str | None = None,
                     cores: int | None = None) -> Program:
    """The isa Program of a planned kernel program (every tensor has an address), built
    directly (no assembly text; a scalar tensor is declared with shape ()). ResourceError
    (a CompileError) when a nest needs more registers or events than a core has."""
    state = CodegenState.new(machine_name, cores)
    state.addresses = {t.name: int(t.address) for t in program.tensors}
    emit = state.emit
    for t in program.tensors:
        emit.tensor(TensorDecl(t.name, t.dtype, tuple(t.shape), int(t.address), t.role))
    emit.op("GETID", Reg(state.program.core), Keyword("core"))
    emit.op("GETID", Reg(state.program.cores), Keyword("cores"))
    for kernel in program.kernels:
        emit_kernel(state, kernel)
    emit.op("HALT")
    return emit.program()


def generate(program: KernelProgram, machine_name: str | None = None) -> str:
    """The assembly text of a planned kernel program (`generate_program`, printed)."""
    from zhenwu.isa.asm_print import print_program

    return print_program(generate_program(program, machine_name))
