"""DMA instructions: boxes between GM and L1/ACC (engines LD and ST), copies within a core.

A box is read or written at element coordinates `coords` of a descriptor. Only the part of
the box inside the tensor's dims touches GM: a load fills the rest with the pad value, a
store drops it (clips). In L1/ACC a box is contiguous row-major (a 2-D tile of
prod(box[:-1]) rows and box[-1] columns; a tile operand's row/column strides apply to it).
"""

from __future__ import annotations

import math

from zhenwu.isa.context import ExecContext
from zhenwu.isa.dtypes import DTYPES, compute_dtype, convert, itemsize
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.instructions.base import (
    Cost,
    GMBox,
    InstrDef,
    OperandSpec,
    OptionSpec,
    SuffixSlot,
    ceil_div,
    check_elements,
    positive_value,
    scalar_value,
    tile_view,
)
from zhenwu.isa.instructions.costs import (
    dma_copy_cost,
    dma_load_cost,
    dma_store_cost,
)
from zhenwu.isa.lazy import numpy as np
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import DescRef, Descriptor, Instruction, Tile

GROUP = "descriptors and DMA"


def box_coords(ref: DescRef, desc: Descriptor, ctx: ExecContext) -> tuple[int, ...]:
    """The element coordinates of a descriptor reference; ChipTrap on a rank mismatch or a
    box larger than a per-core memory."""
    if len(ref.coords) != len(desc.dims):
        raise ChipTrap(
            f"d{ref.index} has rank {len(desc.dims)} but {len(ref.coords)} coordinates were given"
        )
    check_elements(ctx.machine, math.prod(desc.box), f"the box of d{ref.index}")
    return tuple(scalar_value(c, ctx) for c in ref.coords)


def in_bounds(desc: Descriptor, coords: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Per dim, the [lo, hi) element range of the box at `coords` inside the tensor."""
    return tuple(
        (min(max(c, 0), d), min(max(c + b, 0), d))
        for c, b, d in zip(coords, desc.box, desc.dims)
    )


def in_bounds_elements(desc: Descriptor, coords: tuple[int, ...]) -> int:
    return math.prod(max(hi - lo, 0) for lo, hi in in_bounds(desc, coords))


def _address(desc: Descriptor, lows: tuple[int, ...]) -> int:
    return desc.address + sum(lo * s for lo, s in zip(lows, desc.strides)) * itemsize(desc.dtype)


def _flat2d(shape: tuple[int, ...]) -> tuple[int, int]:
    return math.prod(shape[:-1]), shape[-1]


def _box_shape(desc: Descriptor, transpose: bool) -> tuple[int, ...]:
    shape = tuple(desc.box)
    if transpose:
        if len(shape) < 2:
            raise ChipTrap("DMA .T needs a descriptor of rank 2 or more")
        shape = (*shape[:-2], shape[-1], shape[-2])
    return shape


# ---- DMA.LD -------------------------------------------------------------------------


def _ld_dtype(instr: Instruction, desc: Descriptor) -> str:
    return instr.suffixes[0] if instr.suffixes else desc.dtype


def _dma_ld(instr: Instruction, ctx: ExecContext) -> None:
    dst, ref = instr.operands
    desc = ctx.read_desc(ref.index)
    coords = box_coords(ref, desc, ctx)
    dtype = _ld_dtype(instr, desc)
    pad = instr.option("pad")
    pad_value = 0.0 if pad is None else pad.value.value
    box = np.full(desc.box, convert(np.array(pad_value, dtype=np.float64), dtype))
    ranges = in_bounds(desc, coords)
    if all(hi > lo for lo, hi in ranges):
        lows = tuple(lo for lo, _ in ranges)
        part = ctx.gm_read(_address(desc, lows), desc.dtype,
                           tuple(hi - lo for lo, hi in ranges), desc.strides)
        inside = tuple(slice(lo - c, hi - c) for (lo, hi), c in zip(ranges, coords))
        box[inside] = convert(part, dtype)
    if instr.has("T"):
        _box_shape(desc, True)
        box = np.swapaxes(box, -1, -2)
    rows, cols = _flat2d(box.shape)
    tile_view(ctx, dst, rows, cols, dtype)[...] = box.reshape(rows, cols)


def _dma_ld_bounds(instr: Instruction, ctx: ExecContext) -> None:
    """What `_dma_ld` checks, from the addresses alone (a timing-only run; the GM box is
    checked with the cost)."""
    dst, ref = instr.operands
    desc = ctx.read_desc(ref.index)
    box_coords(ref, desc, ctx)
    rows, cols = _flat2d(_box_shape(desc, instr.has("T")))
    tile_view(ctx, dst, rows, cols, _ld_dtype(instr, desc))


def _moved_box(ref: DescRef, tile: Tile, ctx: ExecContext) -> tuple | None:
    """`InstrDef.moves` of DMA.LD and DMA.ST: a box inside the tensor costs the same at
    every GM address with the same offset in a burst (`burst_bytes`), given the descriptor
    and the tile (which the bounds check reads)."""
    desc = ctx.read_desc(ref.index)
    if len(ref.coords) != len(desc.dims):
        return None
    coords = tuple(scalar_value(c, ctx) for c in ref.coords)
    for c, b, d in zip(coords, desc.box, desc.dims):
        if c < 0 or c + b > d:
            return None
    address = _address(desc, coords)
    burst = max(1, ctx.machine.dma_burst_bytes)
    return (desc, scalar_value(tile.base, ctx), address % burst), address


def gm_box(desc: Descriptor, coords: tuple[int, ...]) -> GMBox | None:
    """The in-bounds GM part of the box at `coords` (None when it is empty)."""
    ranges = in_bounds(desc, coords)
    if not all(hi > lo for lo, hi in ranges):
        return None
    size = itemsize(desc.dtype)
    return GMBox(_address(desc, tuple(lo for lo, _ in ranges)),
                 tuple(hi - lo for lo, hi in ranges), tuple(s * size for s in desc.strides), size)


_EXACT_RUNS = 1 << 14  # runs whose alignment is worked out one by one, at most


def burst_bytes(box: GMBox | None, burst: int) -> int:
    """The bytes a DMA port moves for `box`: every contiguous run of the box (its innermost
    contiguous dims merged) pays for each aligned burst of `burst` bytes it touches, so a
    narrow row costs a whole burst (docs/internals.md section 3.4)."""
    if box is None:
        return 0
    dims = sorted(((n, s) for n, s in zip(box.shape, box.strides) if n != 1),
                  key=lambda d: -abs(d[1]))
    run, outer = box.itemsize, []
    for n, s in reversed(dims):
        if not outer and s == run:
            run *= n  # still contiguous with what is inside it
        else:
            outer.append((n, s))
    runs = math.prod(n for n, _ in outer)
    if burst <= 1:
        return runs * run
    if all(s % burst == 0 for _, s in outer):  # every run starts at the same offset
        return runs * _bursts(box.address, run, burst) * burst
    reach = abs(box.address) + run + sum((n - 1) * abs(s) for n, s in outer)
    if runs <= _EXACT_RUNS and reach < 1 << 62:  # (a box past 2**62 bytes traps out of GM)
        starts = np.array([box.address], dtype=np.int64)
        for n, s in outer:
            starts = (starts[:, None] + np.arange(n, dtype=np.int64)[None, :] * s).reshape(-1)
        counts = (starts + run - 1) // burst - starts // burst + 1
        return int(counts.sum()) * burst
    # very many runs at mixed offsets: at most one burst more than a run's length each
    return runs * (ceil_div(run, burst) + 1) * burst


def _bursts(address: int, run: int, burst: int) -> int:
    return (address + run - 1) // burst - address // burst + 1


def _dma_ld_cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
    _, ref = instr.operands
    desc = ctx.read_desc(ref.index)
    coords = box_coords(ref, desc, ctx)
    nbytes = in_bounds_elements(desc, coords) * itemsize(desc.dtype)
    box = gm_box(desc, coords)
    return dma_load_cost(machine, max(nbytes, burst_bytes(box, machine.dma_burst_bytes)),
                         nbytes, box)


# ---- DMA.ST -------------------------------------------------------------------------


def _st_dtype(instr: Instruction, src: Tile, desc: Descriptor) -> str:
    if instr.suffixes:
        return instr.suffixes[0]
    return "f32" if src.space == "ACC" else desc.dtype


def _dma_st(instr: Instruction, ctx: ExecContext) -> None:
    ref, src = instr.operands
    desc = ctx.read_desc(ref.index)
    coords = box_coords(ref, desc, ctx)
    dtype = _st_dtype(instr, src, desc)
    rows, cols = _flat2d(desc.box)
    values = np.array(tile_view(ctx, src, rows, cols, dtype)).reshape(desc.box)
    if instr.has("relu"):
        values = np.maximum(values.astype(compute_dtype(dtype)), 0)
    ranges = in_bounds(desc, coords)
    if not all(hi > lo for lo, hi in ranges):
        return
    inside = tuple(slice(lo - c, hi - c) for (lo, hi), c in zip(ranges, coords))
    lows = tuple(lo for lo, _ in ranges)
    part = convert(values[inside], desc.dtype)
    ctx.gm_write(_address(desc, lows), desc.dtype, part.shape, desc.strides, part)


def _dma_st_bounds(instr: Instruction, ctx: ExecContext) -> None:
    """What `_dma_st` checks, from the addresses alone (as `_dma_ld_bounds`)."""
    ref, src = instr.operands
    desc = ctx.read_desc(ref.index)
    box_coords(ref, desc, ctx)
    rows, cols = _flat2d(desc.box)
    tile_view(ctx, src, rows, cols, _st_dtype(instr, src, desc))


def _dma_st_cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
    ref, _ = instr.operands
    desc = ctx.read_desc(ref.index)
    coords = box_coords(ref, desc, ctx)
    nbytes = in_bounds_elements(desc, coords) * itemsize(desc.dtype)
    box = gm_box(desc, coords)
    return dma_store_cost(machine, max(nbytes, burst_bytes(box, machine.dma_burst_bytes)),
                          nbytes, box)


# ---- DMA.MOV ------------------------------------------------------------------------


def _mov_check(instr: Instruction) -> str | None:
    for tile in instr.operands[:2]:
        if tile.row_stride is not None:
            return "DMA.MOV copies contiguous bytes: write L1[a] or ACC[a] without strides"
    return None


def _dma_mov(instr: Instruction, ctx: ExecContext) -> None:
    dst, src, size = instr.operands
    nbytes = positive_value(size, ctx, "DMA.MOV size")
    ctx.copy_local(dst.space, scalar_value(dst.base, ctx), src.space,
                   scalar_value(src.base, ctx), nbytes)


def _dma_mov_cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
    nbytes = positive_value(instr.operands[2], ctx, "DMA.MOV size")
    return dma_copy_cost(machine, nbytes)


DEFS: list[InstrDef] = [
    InstrDef(
        mnemonic="DMA.LD", opcode=0x21, engine="LD", group=GROUP,
        summary="load the box of dK at coords into the tile, contiguous row-major over the box "
        "dims (`.T` swaps the last two box dims), converted to `.dt` (default: the "
        "descriptor's dtype). Elements outside the tensor's dims are not read and are filled "
        "with the pad value (default 0)",
        operands=(OperandSpec("dst", ("tile",), "destination tile"),
                  OperandSpec("src", ("descref",), "descriptor and box coordinates")),
        suffixes=(SuffixSlot("dt", DTYPES, optional=True),),
        options=(OptionSpec("T", doc="transpose the last two box dims"),
                 OptionSpec("pad", takes_value=True, doc="the value of out-of-bounds elements")),
        sync=True, cost=_dma_ld_cost, execute=_dma_ld, bounds=_dma_ld_bounds,
        moves=lambda instr, ctx: _moved_box(instr.operands[1], instr.operands[0], ctx),
        cost_doc="occupancy ceil(burst bytes / `ld_bytes_per_cycle`) (at least 1), where the "
        "burst bytes are the in-bounds bytes rounded up to the aligned `dma_burst_bytes` bursts "
        "each contiguous GM row touches; latency "
        "`hbm_latency` (`l2_latency` when the L2 holds every byte); the in-bounds bytes "
        "(descriptor dtype) are GM reads, from the L2 where it holds them, else from HBM",
    ),
    InstrDef(
        mnemonic="DMA.ST", opcode=0x22, engine="ST", group=GROUP,
        summary="store a contiguous box-shaped tile of dtype `.dt` (default: the descriptor's "
        "dtype from L1, f32 from ACC) to the box of dK at coords, converted to the "
        "descriptor's dtype (`.relu` applies max(x, 0) first); elements outside the "
        "tensor's dims are dropped (clipped)",
        operands=(OperandSpec("dst", ("descref",), "descriptor and box coordinates"),
                  OperandSpec("src", ("tile",), "source tile")),
        suffixes=(SuffixSlot("dt", DTYPES, optional=True),),
        options=(OptionSpec("relu", doc="fused ReLU"),),
        sync=True, cost=_dma_st_cost, execute=_dma_st, bounds=_dma_st_bounds,
        moves=lambda instr, ctx: _moved_box(instr.operands[0], instr.operands[1], ctx),
        cost_doc="occupancy ceil(burst bytes / `st_bytes_per_cycle`) (at least 1; burst bytes as "
        "for DMA.LD), latency "
        "`hbm_latency`; the in-bounds bytes (descriptor dtype) are GM writes, through the L2 to "
        "HBM",
    ),
    InstrDef(
        mnemonic="DMA.MOV", opcode=0x23, engine="LD", group=GROUP,
        summary="copy nbytes bytes within this core (L1 or ACC to L1 or ACC), as memmove",
        operands=(OperandSpec("dst", ("tile",), "destination address, no strides"),
                  OperandSpec("src", ("tile",), "source address, no strides"),
                  OperandSpec("nbytes", ("imm", "reg"), "bytes", positive=True)),
        sync=True, cost=_dma_mov_cost, execute=_dma_mov, check=_mov_check,
        cost_doc="occupancy ceil(nbytes / `ld_bytes_per_cycle`) (at least 1), latency "
        "`sram_latency`",
    ),
]
