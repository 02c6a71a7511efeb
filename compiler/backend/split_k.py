"""Split-K for matrix products with too few output tiles (docs/internals.md, "Split-K").

A decode-style product (a few rows, a long K: `x[16, 4096] @ w[4096, 4096]`) has few output
tiles: with tiles narrow enough to give every core one, each row of a B tile is a short run
that uses a DRAM row only partly (an activation per run), and the cores still idle on the
tile's latency. Splitting K into `splits` ranges makes the ranges one more parallel axis:

- nest 1, a batched product over (split, batch..., m, n | k range): each range's partial
  sum (f32) is stored to a temporary `part[split, batch..., m, n]`;
- nest 2 (after the chip barrier between the nests of a kernel), over (batch..., m, n |
  split): the partial tiles are loaded and added in the accumulator, then the product's
  epilogue (bias, activation, residual, cast) runs and the tile is stored, exactly as the
  single-nest product would after its last k step.

Both nests are one kernel (one launch). `choose_split` takes the split only when the GEMM
cost model (compiler/backend/tile_cost.py) says the split product plus the combine is cheaper
than the product alone; each range is a multiple of the MX depth, and nest 2's partial tiles
fit where nest 1's operand tiles were.
"""

from __future__ import annotations

from dataclasses import replace
from math import ceil, prod

from zhenwu.compiler.backend.kernel_ir import Buffer, Load, Nest, Store, Vec, View
from zhenwu.compiler.backend.lower import aligned
from zhenwu.compiler.graph.dtypes import itemsize

MIN_GAIN = 0.03   # relative: a split must beat the single product by this much


def combine_cycles(batch: int, m: int, n: int, splits: int, tile_m: int, tile_n: int,
                   machine) -> float:
    """Estimated cycles the split adds: the partial sums' stores landing in HBM before the
    barrier between the nests, the barrier, the partial sums written through to HBM and
    read back by nest 2's tiles (from the L2 when their rows are whole lines: a store
    fills only the lines it covers), nest 2's first load round trip, and the round trip
    of nest 1's first loads that nest 2's loads cannot hide (a tile per core, or few)."""
    from zhenwu.compiler.backend.tile_cost import load_cycles, round_trip, waves

    part_bytes = splits * batch * m * n * 4
    active = waves(batch * ceil(m / tile_m) * ceil(n / tile_n), machine).active
    read = load_cycles(machine, part_bytes / active)
    written = part_bytes / (machine.hbm_bytes_per_cycle * machine.hbm_streaming_efficiency)
    whole_lines = machine.l2_bytes and (tile_n * 4) % machine.l2_line_bytes == 0
    trip = round_trip(machine)
    latency = machine.l2_latency if whole_lines else trip
    return 2 * trip + machine.barrier_cycles + latency + read + written


def partials_fit(tile_m: int, tile_n: int, tile_k: int, in_dtype: str) -> bool:
    """Whether nest 2's two partial tiles (f32) fit in the L1 bytes of nest 1's two copies of
    the operand tiles (they take that place; the epilogue's tiles keep theirs)."""
    operands = 2 * (aligned(tile_m * tile_k * itemsize(in_dtype))
                    + aligned(tile_k * tile_n * itemsize(in_dtype)))
    return 2 * aligned(tile_m * tile_n * 4) <= operands


def choose_split(batch, m, n, k, in_dtype, acc_dtype, a_bytes, b_bytes, out_bytes,
                 full_bytes, row_bytes, epilogue, machine, base, b_k_major=False):
    """(splits, tile of nest 1) when splitting K is cheaper than `base` (the single product's
    `GemmTile`) by `MIN_GAIN`, else None. Splits are powers of two up to the cores, each
    range a multiple of the MX depth and at least two of them; `b_k_major`: B is read along
    k (priced as `base` was)."""
    from zhenwu.compiler.backend.gemm import choose_gemm_tile
    from zhenwu.compiler.backend.tile_cost import VectorWork

    if acc_dtype != "f32" or batch * ceil(m / base.tile_m) * ceil(n / base.tile_n) \
            > machine.cores:
        return None
    best = None
    splits = 2
    while splits <= machine.cores and k % (splits * machine.mx_k) == 0 \
            and k // splits >= 2 * machine.mx_k:
        chunk = k // splits
        tile = choose_gemm_tile(batch * splits, m, n, chunk, in_dtype, acc_dtype, a_bytes,
                                b_bytes, 4, full_bytes, row_bytes, VectorWork(), machine,
                                b_k_major=b_k_major, whole_rows=True)
        if partials_fit(tile.tile_m, tile.tile_n, tile.tile_k, in_dtype):
            cycles = (tile.cycles + epilogue.cycles(machine, tile.tile_m * tile.tile_n)
                      + combine_cycles(batch, m, n, splits, tile.tile_m, tile.tile_n, machine))
            if best is None or cycles < best[0]:
                best = (cycles, splits, tile)
        splits *= 2
    if best is None or best[0] > base.cycles * (1 - MIN_GAIN):
        return None
    return best[1], replace(best[2], cycles=best[0])


def _split_view(view: View, k_axis: int, chunk: int, splits: int) -> View:
    """`view` over nest 1's axes (split first, the rest shifted by one): its k dim holds one
    range (`chunk`: what lies past it reads as padding) and the split axis steps by it."""
    d = view.axes.index(k_axis)
    dims = list(view.dims)
    dims[d] = min(dims[d], chunk)
    return View(view.tensor, view.dtype, view.offset,
                (0,) + tuple(a + 1 for a in view.axes), (splits,) + tuple(dims),
                (view.strides[d] * chunk,) + view.strides, (0,) + view.shifts)


def split_nests(extents, tile, splits: int, a_view: View, b_view: View, part,
                buffers: list[Buffer], step: tuple, final: tuple, cores: int,
                unit: int) -> list[Nest]:
    """Nest 1 (the ranges' partial products into `part`) and nest 2 (their sum, the
    epilogue `final` and its store) of a product over (batch..., m, n, k) cut into `tile`;
    `buffers` are the single product's (a, b, c and the epilogue's tiles), `step` its
    loads and MMA, `part` the TensorView of the f32 temporary [splits, batch..., m, n];
    nest 2's tiles are narrowed (in steps of the MX width `unit`) to give all `cores` one."""
    nb = len(extents) - 3
    k = extents[-1]
    chunk = k // splits
    k_axis = nb + 2
    # nest 1: (split, batch..., m, n | k range)
    views = {"a": _split_view(a_view, k_axis, chunk, splits),
             "b": _split_view(b_view, k_axis, chunk, splits)}
    step1 = tuple(replace(s, view=views[s.dst]) if isinstance(s, Load) else s for s in step)
    part_axes = tuple(range(nb + 3))
    part1 = View(part.tensor, part.dtype, part.offset, part_axes, part.shape, part.strides,
                 (0,) * len(part_axes))
    nest1 = Nest((splits,) + tuple(extents[:-1]) + (chunk,), (1,) + tuple(tile),
                 ("p",) * (nb + 3) + ("r",), tuple(buffers), (), step1,
                 (Store(part1, "c"),))
    # nest 2: (batch..., m, n | split); the partial tiles where the operand tiles were.
    # Its tiles are nest 1's, narrowed along n until every core has one (the buffers
    # keep their places: a narrower tile fits where the wider one did)
    tile_m, tile_n = tile[nb], tile[nb + 1]
    narrow = tile_n
    count = prod(extents[:nb]) * ceil(extents[nb] / tile_m)
    while count * ceil(extents[nb + 1] / narrow) < cores and narrow % (2 * unit) == 0:
        narrow //= 2
    kept = [replace(b, cols=narrow if b.cols == tile_n else b.cols)
            for b in buffers if b.name not in ("a", "b")]
    # a copy per range where they fit (all of a tile's partial loads in flight at once)
    pt_bytes = aligned(tile_m * narrow * 4)
    operands = [b for b in buffers if b.name in ("a", "b")]
    base = min(b.offset for b in operands)
    region = max(b.offset + b.footprint for b in operands) - base
    copies = max(c for c in (2, 3, 4) if c == 2 or (c <= splits and c * pt_bytes <= region))
    kept.append(Buffer("pt", "L1", "f32", tile_m, narrow, base, copies, pt_bytes))
    tile = tuple(tile[:nb]) + (tile_m, narrow, tile[-1])
    part2 = View(part.tensor, part.dtype, part.offset, (nb + 2,) + tuple(range(nb + 2)),
                 part.shape, part.strides, (0,) * len(part_axes))
    nest2 = Nest(tuple(extents[:-1]) + (splits,), tuple(tile[:-1]) + (1,),
                 ("p",) * (nb + 2) + ("r",), tuple(kept),
                 (Vec("DUP", "f32", "c", (0.0,)),),
                 (Load("pt", part2), Vec("ADD", "f32", "c", ("c", "pt"))), tuple(final))
    return [nest1, nest2]


__all__ = ["choose_split", "combine_cycles", "partials_fit", "split_nests"]
