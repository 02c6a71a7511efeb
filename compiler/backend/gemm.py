"""Matrix products with a fused epilogue, tiled by an analytic cost model (docs/design.md section 5).

A matmul group (compiler/passes/fuse.py) is one nest over (batch..., m, n, k): per output
tile the k steps load an A and a B tile (double-buffered in L1) and accumulate with MMA into
an ACC tile; after the last step the epilogue (bias, activation, residual add, scale) runs on
the vector engine on the accumulator in place, with its operands loaded while the product
runs, and the tile is stored once, cast to the output dtype on the way out.

`choose_gemm_tile` picks (tile_m, tile_n, tile_k) from the machine description: every
candidate that fits ACC (two accumulators when they fit, else one) and L1 (two copies of the
operand tiles plus the epilogue's buffers) is costed as the slowest of MX time, the core's
load port and its share of HBM bandwidth per k step, times the waves of tiles over the
cores, plus what a single accumulator cannot overlap (the epilogue and the store).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from zhenwu.compiler.backend.kernel_ir import Buffer, Load, Mma, Nest, Store, Vec, View
from zhenwu.compiler.backend.lower import (
    ALIGN,
    aligned,
    elementwise_body,
    layout,
    matmul_views,
    mma_dtypes,
    simplify,
)
from zhenwu.compiler.backend.tiling import round_up
from zhenwu.compiler.graph.dtypes import itemsize, value_preserving
from zhenwu.compiler.graph.ops import OPS
from zhenwu.isa.errors import CompileError
from zhenwu.isa.instructions import INSTRUCTIONS

NARROW = ("bf16", "f16", "fp8")
MAX_TILE_K = 512
TIE = 1e-3   # relative: costs this close are a tie




@dataclass(frozen=True)
class GemmTile:
    """A tiling choice and the model's estimate of its cycles."""

    tile_m: int
    tile_n: int
    tile_k: int
    acc_copies: int
    cycles: float
    group: int = 1   # m tiles per group of the grouped tile order (1: row-major)


def _candidates(extent: int, unit: int, cap: int) -> list[int]:
    """Tile sizes to try: powers of two times the MX unit, and the sizes that cut the
    extent into 1..8 nearly equal tiles (less padding than a power of two)."""
    top = min(round_up(extent, unit), cap)
    out = {top}
    size = unit
    while size < top:
        out.add(size)
        size *= 2
    for parts in range(1, 9):
        size = round_up(-(-extent // parts), unit)
        if unit <= size <= cap:
            out.add(size)
    return sorted(out)


def hbm_traffic(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes, out_bytes, group,
                machine) -> float:
    """HBM bytes of the product in grouped tile order (`group` m tiles share each B panel
    while they are loaded together; 1 is row-major). With an L2 (half of it counted: the
    rest holds what streams through), an operand is read once when it fits, else B once per
    group of m tiles, and A once when a group's A panels stay in L2 while the group walks
    the n tiles, else once per wave of the cores over them. Without an L2 every tile reads
    its panels from HBM."""
    num_m, num_n = ceil(m / tile_m), ceil(n / tile_n)
    a_total, b_total = batch * m * k * a_bytes, batch * k * n * b_bytes
    c_total = batch * m * n * out_bytes
    if not machine.l2_bytes:
        return a_total * num_n + b_total * num_m + c_total
    cap = machine.l2_bytes / 2
    if (a_total + b_total) / batch <= cap:
        return a_total + b_total + c_total
    b_reads = b_total if b_total / batch <= cap else b_total * ceil(num_m / group)
    columns = max(1, machine.cores // group)   # n tiles loaded at once
    live = group * tile_m * k * a_bytes + min(columns, num_n) * k * tile_n * b_bytes
    a_reads = a_total if live <= cap else a_total * ceil(num_n / columns)
    return a_reads + b_reads + c_total


def hbm_cycles(traffic: float, runs: float, machine) -> float:
    """Cycles of `traffic` HBM bytes in `runs` contiguous runs that each end in a DRAM
    row they cover only partly: the sustained (streaming) rate plus a row activation per
    such run, as the simulator's HBM charges them (runtime/bandwidth.py)."""
    peak = machine.hbm_bytes_per_cycle
    streaming = machine.hbm_streaming_efficiency
    penalty = max(0.0, machine.dma_burst_bytes / peak
                  * (1 / machine.hbm_scattered_efficiency - 1 / streaming))
    return traffic / (peak * streaming) + runs * penalty


def choose_group(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes, out_bytes, machine
                 ) -> tuple[int, float]:
    """(group, HBM bytes): the grouped order with the least HBM traffic, among groups that
    divide the m tiles; of equal ones, the wave closest to square."""
    num_m = ceil(m / tile_m)
    best = None
    for group in range(1, num_m + 1):
        if num_m % group:
            continue
        traffic = hbm_traffic(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes, out_bytes,
                              group, machine)
        columns = max(1, machine.cores // group)
        shape = abs((group * tile_m) / (columns * tile_n) - 1)
        key = (traffic, shape)
        if best is None or key < best[0]:
            best = (key, group)
    return best[1], best[0][0]


def gemm_cost(batch, m, n, k, tile_m, tile_n, tile_k, acc_copies, a_bytes, b_bytes, out_bytes,
              rate, epilogue_ops, machine, traffic: float | None = None) -> float:
    """Estimated cycles of the tiled product (see the module docstring)."""
    mx = machine
    tiles = batch * ceil(m / tile_m) * ceil(n / tile_n)
    active = min(tiles, mx.cores)
    waves = ceil(tiles / mx.cores)
    steps = ceil(round_up(k, mx.mx_k) / tile_k)
    mx_cycles = (tile_m / mx.mx_m) * (tile_n / mx.mx_n) * (tile_k / mx.mx_k) / rate
    # in-bounds bytes only: a tile hanging over the edge loads what is inside
    in_m, in_n, in_k = min(tile_m, m), min(tile_n, n), min(tile_k, k)
    step_bytes = in_m * in_k * a_bytes + in_k * in_n * b_bytes
    port = step_bytes / mx.ld_bytes_per_cycle
    # operand panels are re-read by every tile of their row or column: with an L2, the
    # re-reads come from it and HBM moves each operand about once (the floor below)
    shared = mx.l2_bytes_per_cycle if mx.l2_bytes else mx.hbm_bytes_per_cycle
    gm = active * step_bytes / shared
    # two operand buffers in flight: a step's loads cannot arrive faster than one HBM
    # round trip per two steps (Little's law on the double buffer)
    latency = (mx.hbm_latency + port) / 2
    # and a core keeps at most its DMA window in flight: when two steps' loads do not fit
    # in it, a step's loads wait for the last step's to land (a round trip per step)
    window = mx.dma_window_bytes
    if traffic is None:
        traffic = hbm_traffic(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes, out_bytes, 1,
                              machine)
    # the share of a step's bytes that come from HBM, at the active cores' share of it
    requested = tiles * steps * step_bytes
    from_hbm = min(1.0, traffic / requested) if requested else 1.0
    hbm_share = active * step_bytes * from_hbm / (mx.hbm_bytes_per_cycle
                                                  * mx.hbm_streaming_efficiency)
    # (and stream at most a window per round trip)
    serial = (max(mx.hbm_latency + max(port, gm, hbm_share),
                  step_bytes * mx.hbm_latency / window)
              if window and 2 * step_bytes > window else 0.0)
    step = max(mx_cycles, port, gm, latency, serial) + 12  # scalar issue per step
    store = in_m * in_n * out_bytes
    drain = max(store / mx.st_bytes_per_cycle, active * store / mx.hbm_bytes_per_cycle)
    epilogue = epilogue_ops * tile_m * tile_n * 4 / mx.vx_bytes_per_cycle
    exposed = drain + epilogue + mx.hbm_latency if acc_copies == 1 else 0.0
    total = waves * (steps * step + exposed) + 2 * mx.hbm_latency + drain + epilogue
    # the runs HBM serves: A's rows of a k tile, B's rows of an n tile, C's rows of an n tile;
    # one that is not whole DRAM rows ends in a partly used row
    row = machine.hbm_row_bytes
    runs = 0.0
    for run_bytes, count in ((in_k * a_bytes, batch * m * k * a_bytes / max(in_k * a_bytes, 1)),
                             (in_n * b_bytes, batch * k * n * b_bytes / max(in_n * b_bytes, 1)),
                             (in_n * out_bytes, batch * m * n * out_bytes / max(in_n * out_bytes, 1))):
        if run_bytes % row:
            runs += count
    total = max(total, hbm_cycles(traffic, runs, machine))
    return total


def choose_gemm_tile(batch, m, n, k, in_dtype, acc_dtype, a_bytes, b_bytes, out_bytes,
                     epilogue_full_bytes, epilogue_row_bytes, epilogue_ops, machine,
                     fixed: tuple[int, int, int] | None = None,
                     ranked: list | None = None) -> GemmTile:
    """The cheapest tiling that fits (see the module docstring); `fixed` forces one;
    `ranked`, when given, receives every candidate that fits (for `--tune`)."""
    in_bytes = itemsize(in_dtype)
    acc_elem = itemsize(acc_dtype)
    rate = machine.mx_rate(in_dtype) or 1.0
    best = None
    cands_m = _candidates(m, machine.mx_m, 16 * machine.mx_m)
    cands_n = _candidates(n, machine.mx_n, 16 * machine.mx_n)
    for tile_m in cands_m:
        for tile_n in cands_n:
            acc_tile = tile_m * tile_n * acc_elem
            if acc_tile > machine.acc_bytes:
                continue
            l1_out = (aligned(tile_m * tile_n * epilogue_full_bytes)
                      + aligned(tile_n * epilogue_row_bytes))
            stride = aligned(max(acc_tile, l1_out))
            copies = 2 if stride + acc_tile <= machine.acc_bytes else 1
            # the second copy of the epilogue's L1 tiles sits one stride after the first;
            # with no L1 tiles (a plain product) the ACC copies take no L1 at all
            l1_out_total = l1_out + (stride if copies == 2 and l1_out else 0)
            budget = machine.l1_bytes - l1_out_total - 8 * ALIGN
            tk_cap = budget // (2 * (tile_m + tile_n) * in_bytes) // machine.mx_k * machine.mx_k
            if tk_cap < machine.mx_k:
                continue
            if fixed is not None and (tile_m, tile_n) != fixed[:2]:
                continue
            # k tiles that split K evenly waste no MX work on padding
            k_padded = round_up(k, machine.mx_k)
            tk_cap = min(tk_cap, MAX_TILE_K, k_padded)
            least = -(-k_padded // tk_cap)
            tiles_k = {round_up(-(-k_padded // s), machine.mx_k) for s in range(least, least + 4)}
            if fixed is not None:
                tiles_k = {min(fixed[2], tk_cap)}
            group, traffic = choose_group(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes,
                                          out_bytes, machine)
            for tile_k in sorted(tiles_k, reverse=True):
                cycles = gemm_cost(batch, m, n, k, tile_m, tile_n, tile_k, copies, a_bytes,
                                   b_bytes, out_bytes, rate, epilogue_ops, machine, traffic)
                cand = GemmTile(tile_m, tile_n, tile_k, copies, cycles, group)
                if ranked is not None:
                    ranked.append(cand)
                # of nearly equal costs, the bigger tile (fewer tiles, less operand traffic)
                if best is None or cycles < best.cycles * (1 - TIE) or (
                        cycles <= best.cycles * (1 + TIE)
                        and tile_m * tile_n > best.tile_m * best.tile_n):
                    best = cand
    if best is None:  # the smallest MX tile always fits a real machine
        best = GemmTile(machine.mx_m, machine.mx_n, machine.mx_k, 1, float("inf"))
    return best


def lower_matmul_group(low, ops) -> None:
    """Lower a matmul group (the product, then its epilogue ops) as one kernel."""
    machine = low.machine
    at = next(i for i, op in enumerate(ops) if op.kind == "matmul")
    mm, prologue, epilogue = ops[at], ops[:at], ops[at + 1:]
    last = ops[-1]
    # operands produced by a cast in the group are loaded from the cast's source
    casts = {op.result.id: op.inputs[0] for op in prologue}
    a, b = (low.view_of(casts.get(v.id, v)) for v in mm.inputs)
    out = low.new_tensor(f"t{last.id}", last.result.type, "temp", last.span)
    low.views[last.id] = out
    batch, m, n, k, a_view, b_view, c_view = matmul_views(a, b, out)
    nb = len(batch)
    ax_m, ax_n, ax_k = nb, nb + 1, nb + 2
    bat, zeros = tuple(range(nb)), (0,) * (nb + 2)

    # the epilogue: the accumulator chain (ops reading the product, in place on `c`) and
    # side ops (values only the chain reads, computed from outside operands in L1 tiles)
    chain = {mm.id}
    for op in epilogue:
        if any(v.id in chain for v in op.inputs):
            chain.add(op.id)
    side = [op for op in epilogue if op.id not in chain]
    in_group = chain | {op.id for op in side}
    group_ids = [op.id for op in ops]
    ops = [mm] + epilogue
    operands: dict[tuple[int, int], object] = {}
    epi_views: list[View] = []
    epi_index: dict[int, int] = {}
    for op in epilogue:
        for index, value in enumerate(op.inputs):
            if value.id in in_group:
                continue
            where = low.operand(op, index, in_group)
            if isinstance(where, float):
                operands[(op.id, index)] = where
                continue
            if value.id not in epi_index:
                view = where.broadcast(out.shape)
                epi_index[value.id] = len(epi_views)
                epi_views.append(View(view.tensor, view.dtype, view.offset, bat + (ax_m, ax_n),
                                      view.shape, view.strides, zeros))
            operands[(op.id, index)] = value.id

    extents = batch + (m, n, k)
    kinds = ("p",) * (nb + 2) + ("r",)
    extents, kinds, views, axis_map = simplify(extents, kinds, {ax_m, ax_n, ax_k},
                                               [a_view, b_view, c_view] + epi_views)
    a_view, b_view, c_view = views[:3]
    epi_views = views[3:]
    ax_m, ax_n = axis_map[ax_m], axis_map[ax_n]
    nb = len(extents) - 3
    in_dtype, acc_dtype = mma_dtypes(mm.inputs[0].type.dtype, machine)
    for cast in prologue:  # fuse folds only casts that are exact on every shipped machine
        source, target = cast.inputs[0].type.dtype, cast.attrs["dtype"]
        if not value_preserving(source, target) and target != in_dtype:
            raise CompileError(f"machine '{machine.name}' multiplies {target} as {in_dtype}: "
                               f"the operand load cannot do this cast from {source}", cast.span)

    # compact epilogue operands: a bias row is 1 x tile_n, a scalar 1 x 1
    compact, shapes = [], []
    for view in epi_views:
        keep = [d for d in range(view.rank) if view.strides[d] != 0] or [view.rank - 1]
        view = View(view.tensor, view.dtype, view.offset, tuple(view.axes[d] for d in keep),
                    tuple(view.dims[d] for d in keep), tuple(view.strides[d] for d in keep),
                    tuple(view.shifts[d] for d in keep))
        compact.append(view)
        has_m, has_n = ax_m in view.axes, ax_n in view.axes
        shapes.append("full" if has_m and has_n else "row" if has_n
                      else "col" if has_m else "one")
    # the reference rounds every bf16/f16/fp8 result; the store rounds the last one
    rounded = [op for op in ops[:-1] if op.result.type.dtype in NARROW and op.kind != "cast"]
    # the `round` tile: a narrow result of an epilogue op, or a narrowing cast the store
    # does not do (a side value cast to f16 and then added, say)
    narrow_result = bool(rounded) or any(
        op.kind == "cast" and op.attrs["dtype"] in NARROW and op is not ops[-1]
        for op in epilogue)
    side_buffers = _side_buffers(side, epilogue, shapes, epi_index)
    n_side = len(set(side_buffers.values()) - {f"e{i}" for i in range(len(shapes))})
    full_bytes = (4 * (shapes.count("full") + shapes.count("col") + n_side)
                  + (2 if narrow_result else 0))
    row_bytes = 4 * (shapes.count("row") + shapes.count("one"))
    n_vec = sum(_vx_passes(op.kind, machine) for op in epilogue) + 2 * len(rounded)
    batch_count = 1
    for e in extents[:nb]:
        batch_count *= e
    choice = getattr(low, "gemm_tiles", {}).get(mm.id)
    ranked: list = []
    tile = choose_gemm_tile(batch_count, m, n, k, in_dtype, acc_dtype, itemsize(a.dtype),
                            itemsize(b.dtype), itemsize(out.dtype), full_bytes, row_bytes,
                            n_vec, machine, fixed=choice, ranked=ranked)
    low.gemm_ranked = getattr(low, "gemm_ranked", {})
    low.gemm_ranked[mm.id] = sorted(ranked, key=lambda t: t.cycles)
    tile_m, tile_n, tile_k = tile.tile_m, tile.tile_n, tile.tile_k
    low.gemm_choices = getattr(low, "gemm_choices", {})
    low.gemm_choices[mm.id] = tile

    # buffers: operands double-buffered in L1; accumulator (and the epilogue's L1 tiles)
    # with `acc_copies` copies sharing one stride
    buffers, used = layout([("a", "L1", in_dtype, tile_m, tile_k, "ld"),
                            ("b", "L1", in_dtype, tile_k, tile_n, "ld")])
    dims = {"full": (tile_m, tile_n), "row": (1, tile_n), "col": (tile_m, 1), "one": (1, 1)}
    l1_out = []
    offset = used["L1"]
    for index, kind in enumerate(shapes):
        rows, cols = dims[kind]
        l1_out.append(Buffer(f"e{index}", "L1", "f32", rows, cols, offset))
        offset += aligned(rows * cols * 4)
    for name in sorted(set(side_buffers.values()) - {f"e{i}" for i in range(len(shapes))}):
        l1_out.append(Buffer(name, "L1", "f32", tile_m, tile_n, offset))
        offset += aligned(tile_m * tile_n * 4)
    if narrow_result:
        l1_out.append(Buffer("round", "L1", "bf16", tile_m, tile_n, offset))
        offset += aligned(tile_m * tile_n * 2)
    acc_tile = aligned(tile_m * tile_n * itemsize(acc_dtype))
    stride = aligned(max(acc_tile, offset - used["L1"])) if tile.acc_copies == 2 else 0
    copies = tile.acc_copies
    buffers.append(Buffer("c", "ACC", acc_dtype, tile_m, tile_n, 0, copies, stride))
    buffers += [Buffer(bf.name, bf.level, bf.dtype, bf.rows, bf.cols, bf.offset, copies, stride)
                for bf in l1_out]

    final: list = [Load(f"e{i}", view) for i, view in enumerate(compact)]

    def round_to(dtype: str, buf: str = "c") -> list:
        # `round` is sized for 2-byte elements; fp8 needs fewer
        return [Vec(f"CVT.{acc_dtype if buf == 'c' else 'f32'}", dtype, "round", (buf,)),
                Vec(f"CVT.{dtype}", acc_dtype if buf == "c" else "f32", buf, ("round",))]

    if mm in rounded:
        final += round_to(mm.result.type.dtype)
    for op in epilogue:
        dst = "c" if op.id in chain else side_buffers[op.id]
        if op.kind == "cast":
            src = "c" if op.id in chain else _source(op, 0, chain, side_buffers, operands,
                                                      epi_index)
            if src != dst:
                final.append(Vec("COPY", "f32", dst, (src,)))
            if op.attrs["dtype"] in NARROW and op is not last:
                final += round_to(op.attrs["dtype"], dst)
            continue  # f32 stays f32; the last narrowing cast happens in the store
        srcs = [_source(op, index, chain, side_buffers, operands, epi_index)
                for index in range(len(op.inputs))]
        final += elementwise_body(op.kind, op.attrs, "f32")(srcs, dst, None)
        if op in rounded:
            final += round_to(op.result.type.dtype, dst)
    final.append(Store(c_view, "c"))
    nest_tile = (1,) * nb + (tile_m, tile_n, tile_k)
    step = (Load("a", a_view), Load("b", b_view), Mma(in_dtype, acc_dtype, "c", "a", "b"))
    nest = Nest(extents, nest_tile, kinds, tuple(buffers), (), step, tuple(final),
                group=tile.group if tile.group > 1 else 0)
    name = "matmul" if not epilogue else "matmul_fused"
    low.kernel(name, group_ids, [nest], last.span)


def _source(op, index: int, chain: set[int], side_buffers: dict[int, str], operands: dict,
            epi_index: dict[int, int]):
    """The epilogue operand `index` of `op`: the accumulator, a side value's tile, an
    outside operand's tile or an immediate."""
    value = op.inputs[index]
    if value.id in chain:
        return "c"
    if value.id in side_buffers:
        return side_buffers[value.id]
    where = operands[(op.id, index)]
    return where if isinstance(where, float) else f"e{epi_index[where]}"


def _side_buffers(side: list, epilogue: list, shapes: list[str],
                  epi_index: dict[int, int]) -> dict[int, str]:
    """An L1 tile for each side value of a matmul epilogue: the tile of an operand whose last
    reader it is when that is a full tile (an outside operand loaded for the epilogue, or an
    earlier side value), else a new one (`t0`, `t1`, ...), reused once its value is dead."""
    last_use: dict[int, int] = {}
    for position, op in enumerate(epilogue):
        for value in op.inputs:
            last_use[value.id] = position
    side_ids = {op.id for op in side}
    where: dict[int, str] = {}
    free: list[str] = []
    count = 0
    for position, op in enumerate(epilogue):
        if op.id not in side_ids:
            for value in op.inputs:  # the chain reads side values; their tiles free up
                if value.id in where and last_use[value.id] == position:
                    free.append(where[value.id])
            continue
        dying = []
        for value in dict.fromkeys(op.inputs):
            if last_use.get(value.id) != position:
                continue
            if value.id in where:
                dying.append(where[value.id])
            elif value.id in epi_index and shapes[epi_index[value.id]] == "full":
                dying.append(f"e{epi_index[value.id]}")
        if dying:
            where[op.id] = dying[0]
            free.extend(dying[1:])
        elif free:
            where[op.id] = free.pop()
        else:
            where[op.id] = f"t{count}"
            count += 1
    return where


def _vx_passes(kind: str, machine) -> float:
    """An epilogue op's cost in full-tile f32 vector passes: an op its vector instruction
    runs on the special-function unit (isa's `unit`) at the SFU's element rate, the rest at
    the vector engine's bytes per cycle."""
    vector = OPS[kind].vector
    defn = INSTRUCTIONS[vector.steps[0].instr] if vector is not None else None
    if defn is not None and defn.unit == "SFU":
        return machine.vx_bytes_per_cycle / (4 * machine.sfu_elems_per_cycle)
    return 1.0
