"""Matrix products with a fused epilogue, tiled by an analytic cost model (docs/design.md section 5).

A matmul group (compiler/passes/fuse.py) is one nest over (batch..., m, n, k): per output
tile the k steps load an A and a B tile (double-buffered in L1) and accumulate with MMA into
an ACC tile; after the last step the epilogue (bias, activation, residual add, scale) runs on
the vector engine on the accumulator in place, with its operands loaded while the product
runs, and the tile is stored once, cast to the output dtype on the way out.

`choose_gemm_tile` picks (tile_m, tile_n, tile_k) from the machine description: every
candidate that fits ACC (two accumulators when they fit, else one) and L1 (two copies of the
operand tiles plus the epilogue's buffers) is priced by the one tile-cost model
(compiler/backend/tile_cost.py: `product_cost`, per k step from the ISA's MMA and DMA costs),
and tilings whose `product_floor` is out of reach of the best found are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zhenwu.compiler.backend.gemm_prologue import (
    g_view,
    is_map,
    map_bytes,
    map_prologue,
    map_setup_bytes,
    map_statements,
    prologue_bytes,
    row_norm,
    setup_bytes,
    setup_statements,
    step_statements,
)
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
from zhenwu.compiler.backend.split_k import choose_split, split_nests
from zhenwu.compiler.backend.tile_cost import (
    VectorWork,
    choose_group,
    product_cost,
    product_floor,
    vector_work,
)
from zhenwu.compiler.backend.tiling import round_up
from zhenwu.compiler.graph.dtypes import itemsize, value_preserving
from zhenwu.compiler.graph.ir import TensorType
from zhenwu.isa.errors import CompileError

NARROW = ("bf16", "f16", "fp8")
MAX_TILE_K = 512
TIE = 1e-3   # relative: costs this close are a tie
FLOOR_SLACK = 1e-9   # rounding: `product_floor` sums its terms in another order than product_cost
# operand copies of a kernel with a prologue (RMSNorm or map): stepped, its steps hand A
# through the vector engine before the MMA, a longer chain per step that more copies keep
# off the loads' path; resident, B's loads run further ahead while the setup computes A
# (a power of two: the copy index is then an AND, which timing-only fast-forward
# extrapolates; with 3 copies it trapped out of bounds there, not in a full simulation)
LD_COPIES_PROLOGUE = 4




@dataclass(frozen=True)
class GemmTile:
    """A tiling choice and the model's estimate of its cycles."""

    tile_m: int
    tile_n: int
    tile_k: int
    acc_copies: int
    cycles: float
    group: int = 1   # m tiles per group of the grouped tile order (1: row-major)


def _candidates(extent: int, unit: int, cap: int, cores: int = 0) -> list[int]:
    """Tile sizes to try: powers of two times the MX unit, and the sizes that cut the
    extent into 1..8 nearly equal tiles (less padding than a power of two), or into one or
    two waves of `cores` tiles (a matrix-vector product has one row of tiles: without
    these, 5120 columns in 256-wide tiles keep 12 of 32 cores idle)."""
    top = min(round_up(extent, unit), cap)
    out = {top}
    size = unit
    while size < top:
        out.add(size)
        size *= 2
    for parts in list(range(1, 9)) + ([cores, 2 * cores] if cores else []):
        size = round_up(-(-extent // parts), unit)
        if unit <= size <= cap:
            out.add(size)
    return sorted(out)


def choose_gemm_tile(batch, m, n, k, in_dtype, acc_dtype, a_bytes, b_bytes, out_bytes,
                     epilogue_full_bytes, epilogue_row_bytes, epilogue: VectorWork, machine,
                     fixed: tuple[int, int, int] | None = None,
                     ranked: list | None = None, b_k_major: bool = False,
                     prologue_bytes: int = 0, setup_bytes: int = 0,
                     _prologue_whole_rows: bool = True, whole_rows: bool = False) -> GemmTile:
    """The cheapest tiling that fits (see the module docstring); `fixed` forces one;
    `ranked`, when given, receives every candidate that fits (for `--tune`); `b_k_major`:
    B is read along k; `prologue_bytes`: L1 bytes per A element an RMSNorm prologue adds
    (its operands then have LD_COPIES_PROLOGUE copies), whose A rows must be one m tile and
    whose whole rows take `setup_bytes` more; `whole_rows` also tries B tiles as wide as a
    DRAM row (a split-K product's few, wide tiles)."""
    in_bytes = itemsize(in_dtype)
    acc_elem = itemsize(acc_dtype)
    best = None
    cands_m = _candidates(m, machine.mx_m, 16 * machine.mx_m)
    cap_n = 16 * machine.mx_n
    if whole_rows:
        cap_n = max(cap_n, machine.hbm_row_bytes // b_bytes // machine.mx_n * machine.mx_n)
    cands_n = _candidates(n, machine.mx_n, cap_n, machine.cores)
    for tile_m in cands_m:
        if prologue_bytes and not m <= tile_m <= round_up(m, machine.mx_m):
            continue   # a prologue's rows are one m tile, no wider (gemm_prologue.py)
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
            budget = machine.l1_bytes - l1_out_total - 8 * ALIGN - setup_bytes
            # per k: two copies of the operand tiles (and of a prologue's row tiles)
            copies_ld = LD_COPIES_PROLOGUE if prologue_bytes else 2
            per_k = copies_ld * (tile_m + tile_n) * in_bytes + (
                tile_m * prologue_bytes + 4 * copies_ld if prologue_bytes else 0)
            tk_cap = budget // per_k // machine.mx_k * machine.mx_k
            if tk_cap < machine.mx_k:
                continue
            if fixed is not None and (tile_m, tile_n) != fixed[:2]:
                continue
            # k tiles that split K evenly waste no MX work on padding
            k_padded = round_up(k, machine.mx_k)
            tk_cap = min(tk_cap, MAX_TILE_K, k_padded)
            least = -(-k_padded // tk_cap)
            tiles_k = {round_up(-(-k_padded // s), machine.mx_k) for s in range(least, least + 4)}
            unit = machine.hbm_row_bytes // math.gcd(machine.hbm_row_bytes, b_bytes)
            if (prologue_bytes and _prologue_whole_rows and b_k_major and k >= unit
                    and min(tk_cap, MAX_TILE_K) < unit):
                # the model does not see a prologue's extra loads and copies: keep its
                # weight rows whole (on the 810E a 368-wide k tile chosen otherwise made
                # Qwen3-32B's gate/up product 14% slower than the plain one)
                continue
            if b_k_major and k > tk_cap:
                # B read along k: k tiles of whole DRAM rows, when one fits, keep every run
                # of B whole rows (a 480-wide one ends each weight row's piece in a partly
                # read DRAM row: 12% slower at 1 x 5120 x 51200 on the M890)
                whole = tk_cap // unit * unit
                if whole >= machine.mx_k and whole % machine.mx_k == 0:
                    tiles_k = {whole}
            if fixed is not None:
                tiles_k = {min(fixed[2], tk_cap)}
            if ranked is None and best is not None and product_floor(
                    batch, m, n, k, tile_m, tile_n, least, a_bytes, b_bytes, out_bytes,
                    in_dtype, epilogue, machine) > best.cycles * (1 + TIE) * (1 + FLOOR_SLACK):
                continue   # no k tile of this tiling could beat (or tie) the best
            group, traffic = choose_group(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes,
                                          out_bytes, machine)
            for tile_k in sorted(tiles_k, reverse=True):
                cycles = product_cost(batch, m, n, k, tile_m, tile_n, tile_k, copies, a_bytes,
                                      b_bytes, out_bytes, in_dtype, epilogue, machine, traffic,
                                      b_k_major)
                cand = GemmTile(tile_m, tile_n, tile_k, copies, cycles, group)
                if ranked is not None:
                    ranked.append(cand)
                # of nearly equal costs, the bigger tile (fewer tiles, less operand traffic)
                if best is None or cycles < best.cycles * (1 - TIE) or (
                        cycles <= best.cycles * (1 + TIE)
                        and tile_m * tile_n > best.tile_m * best.tile_n):
                    best = cand
    if best is None and prologue_bytes and _prologue_whole_rows:
        return choose_gemm_tile(batch, m, n, k, in_dtype, acc_dtype, a_bytes, b_bytes,
                                out_bytes, epilogue_full_bytes, epilogue_row_bytes,
                                epilogue, machine, fixed, ranked, b_k_major,
                                prologue_bytes, setup_bytes, _prologue_whole_rows=False,
                                whole_rows=whole_rows)
    if best is None:  # the smallest MX tile always fits a real machine
        best = GemmTile(machine.mx_m, machine.mx_n, machine.mx_k, 1, float("inf"))
    return best


def lower_matmul_group(low, ops) -> None:
    """Lower a matmul group (the product, then its epilogue ops) as one kernel."""
    machine = low.machine
    at = next(i for i, op in enumerate(ops) if op.kind == "matmul")
    mm, prologue, epilogue = ops[at], ops[:at], ops[at + 1:]
    last = ops[-1]
    norm = row_norm(low, prologue)   # an RMSNorm prologue (gemm_prologue.py), or None
    if norm is not None and not _prologue_fits(norm, mm, machine):
        # the row kernel, then the plain product of its stored result
        low.lower_elementwise(prologue)
        lower_matmul_group(low, [mm] + epilogue)
        return
    # a map of few-row operands computed at every k step (gemm_prologue.py), or None
    mapped = map_prologue(low, prologue) if norm is None and is_map(prologue) else None
    if mapped is None and norm is None and is_map(prologue):
        low.lower_elementwise(prologue)    # the map kernel, then the plain product
        lower_matmul_group(low, [mm] + epilogue)
        return
    # its whole rows may stay in L1 (the resident form, below) when they leave half of it
    resident_fits = mapped is not None and _map_fits(mapped, mm, machine)
    from zhenwu.compiler.backend.fusion import home_dtype
    # operands produced by a cast in the group are loaded from the cast's source
    casts = {} if norm or mapped else {op.result.id: op.inputs[0] for op in prologue}
    a_value = norm.x if norm else mapped.inputs[0] if mapped else casts.get(mm.inputs[0].id,
                                                                               mm.inputs[0])
    a = low.view_of(a_value)
    b = low.view_of(casts.get(mm.inputs[1].id, mm.inputs[1]))
    out = low.new_tensor(f"t{last.id}", last.result.type, "temp", last.span)
    low.views[last.id] = out
    batch, m, n, k, a_view, b_view, c_view = matmul_views(a, b, out)
    map_views = [matmul_views(low.view_of(v), b, out)[4] for v in mapped.inputs] if mapped else []
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
    pro_views = [g_view(low, norm, ax_k, k)] if norm and norm.g is not None else map_views
    extents, kinds, views, axis_map = simplify(extents, kinds, {ax_m, ax_n, ax_k},
                                               [a_view, b_view, c_view] + epi_views + pro_views)
    a_view, b_view, c_view = views[:3]
    epi_views = views[3:len(views) - len(pro_views)]
    pro_views = views[len(views) - len(pro_views):]
    ax_m, ax_n = axis_map[ax_m], axis_map[ax_n]
    nb = len(extents) - 3
    in_dtype, acc_dtype = mma_dtypes(mm.inputs[0].type.dtype, machine)
    for cast in ([] if norm or mapped else prologue):  # fuse folds only exact casts
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
    work = vector_work([op.kind for op in epilogue], len(rounded))
    batch_count = 1
    for e in extents[:nb]:
        batch_count *= e
    choice = getattr(low, "gemm_tiles", {}).get(mm.id)
    ranked: list = []
    b_k_major = k_contiguous(b_view, axis_map[ax_k])
    # an RMSNorm's normalised rows may stay in L1 too (`norm_resident`, below)
    rows_pro = _prologue_rows(m, machine)
    norm_bytes = setup_bytes(rows_pro, k) if norm else 0
    norm_extra = rows_pro * k * itemsize(in_dtype) + (4 * k if norm and norm.g is not None else 0)
    norm_resident_fits = bool(norm) and norm_bytes + norm_extra <= machine.l1_bytes // 2
    tile = choose_gemm_tile(batch_count, m, n, k, in_dtype, acc_dtype, itemsize(a.dtype),
                            itemsize(b.dtype), itemsize(out.dtype), full_bytes, row_bytes,
                            work, machine, fixed=choice, ranked=ranked, b_k_major=b_k_major,
                            prologue_bytes=(prologue_bytes(LD_COPIES_PROLOGUE) if norm else
                                            map_bytes(mapped, LD_COPIES_PROLOGUE) if mapped
                                            else 0),
                            setup_bytes=(norm_bytes + (norm_extra if norm_resident_fits else 0)
                                         if norm else
                                         map_setup_bytes(mapped, rows_pro, k, in_dtype)
                                         if resident_fits else 0))
    # too few output tiles: split K across the cores, the partial sums added in a second
    # nest of the kernel (compiler/backend/split_k.py); not under an RMSNorm prologue
    split = None if choice is not None or norm or mapped else choose_split(
        batch_count, m, n, k, in_dtype, acc_dtype, itemsize(a.dtype), itemsize(b.dtype),
        itemsize(out.dtype), full_bytes, row_bytes, work, machine, tile, b_k_major)
    if split is not None:
        splits, tile = split
    low.gemm_ranked = getattr(low, "gemm_ranked", {})
    low.gemm_ranked[mm.id] = sorted(ranked, key=lambda t: t.cycles)
    tile_m, tile_n, tile_k = tile.tile_m, tile.tile_n, tile.tile_k
    low.gemm_choices = getattr(low, "gemm_choices", {})
    low.gemm_choices[mm.id] = tile

    # buffers: operands double-buffered in L1; accumulator (and the epilogue's L1 tiles)
    # with `acc_copies` copies sharing one stride
    # a prologue's vector work on one row when A has one (decode at batch 1), not on the MX
    # tile's padding; else on whole tiles (a rows x 1 operand of a tile_m-row instruction
    # must have tile_m rows)
    pro_rows = 1 if m == 1 else tile_m
    # a map whose k tiles cut K evenly is computed once per core on whole rows, and each
    # step's MMA reads its A tile from them (`resident`); else on each step's operand tiles
    resident = resident_fits and k % tile_k == 0
    stepped = mapped is not None and not resident
    # (likewise an RMSNorm's rows, scaled once per core)
    norm_resident = norm_resident_fits and k % tile_k == 0
    norm_stepped = norm is not None and not norm_resident
    buffers, used = layout(([] if resident or norm_resident
                            else [("a", "L1", in_dtype, tile_m, tile_k, "ld")])
                           + [("b", "L1", in_dtype, tile_k, tile_n, "ld")]
                           + ([("px", "L1", "f32", pro_rows, tile_k, "ld"),
                               ("pg", "L1", "f32", 1, tile_k, "ld")] if norm_stepped else [])
                           + [(f"p{i}", "L1", home_dtype(mapped.dtype), pro_rows, tile_k, "ld")
                              for i in range(len(mapped.inputs) if stepped else 0)],
                           copies={"ld": LD_COPIES_PROLOGUE} if norm or mapped else None)
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
    if norm_stepped:   # the prologue's scratch tile
        l1_out.append(Buffer("pt", "L1", "f32", pro_rows, tile_k, offset))
        offset += aligned(pro_rows * tile_k * 4)
    for index in range(len(mapped.ops) if stepped else 0):   # the map's values
        dtype = home_dtype(mapped.dtype)
        l1_out.append(Buffer(f"q{index}", "L1", dtype, pro_rows, tile_k, offset))
        offset += aligned(pro_rows * tile_k * itemsize(dtype))
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
    name = "matmul" if not epilogue else "matmul_fused"
    if split is not None:
        part = low.new_tensor(f"t{mm.id}_part",
                              TensorType("f32", (splits,) + tuple(extents[:-1])), "temp",
                              mm.span)
        low.kernel(name, group_ids, split_nests(extents, nest_tile, splits, a_view, b_view,
                                                part, buffers, step, tuple(final), machine.cores,
                                                machine.mx_n), last.span)
        return
    if norm_stepped:
        box = (() if pro_rows == tile_m else
               tuple(pro_rows if axis == ax_m else nest_tile[axis] for axis in a_view.axes))
        loads = [Load("a", a_view), Load("b", b_view), Load("px", a_view, 0.0, box)]
        loads += [Load("pg", view) for view in pro_views]
        step = (*loads, *step_statements(norm, in_dtype),
                Mma(in_dtype, acc_dtype, "c", "a", "b"))
        # once per core (the rows are one m tile: both dims at coordinate 0): X, the whole
        # rows, their squares and the rows' scale
        for buf_name, cols in (("X", k), ("sq", k), ("ss", 1)):
            buffers.append(Buffer(buf_name, "L1", "f32", pro_rows, cols, _l1_end(buffers), 1, 0))
        rows_view = View(a_view.tensor, a_view.dtype, a_view.offset, (ax_m, ax_m),
                         a_view.dims, a_view.strides, (0, 0))
        setup = (Load("X", rows_view, 0.0, (pro_rows, k)), *setup_statements(norm))
    if norm_resident:
        # once per core: X, the whole rows, their squares and scale as above, then the MX
        # operand A = cast(X * ss * g) (the graph's order); each step's MMA reads its k
        # columns (codegen's `_resident_rows_axis`), each step loads only its B tile
        for buf_name, cols in (("X", k), ("sq", k), ("ss", 1)):
            buffers.append(Buffer(buf_name, "L1", "f32", pro_rows, cols, _l1_end(buffers), 1, 0))
        rows_view = View(a_view.tensor, a_view.dtype, a_view.offset, (ax_m, ax_m),
                         a_view.dims, a_view.strides, (0, 0))
        loads = [Load("X", rows_view, 0.0, (pro_rows, k))]
        scaled = [Vec("MUL", "f32", "X", ("X", "ss"))]
        if norm.g is not None:
            buffers.append(Buffer("G", "L1", "f32", 1, k, _l1_end(buffers), 1, 0))
            g = pro_views[0]
            loads.append(Load("G", View(g.tensor, g.dtype, g.offset, (ax_m,), g.dims, g.strides,
                                        (0,)), 0.0, (k,)))
            scaled.append(Vec("MUL", "f32", "X", ("X", "G")))
        buffers.append(Buffer("A", "L1", in_dtype, pro_rows, k, _l1_end(buffers), 1, 0))
        scaled.append(Vec("CVT.f32", in_dtype, "A", ("X",)))
        setup = (*loads, *setup_statements(norm), *scaled)
        step = (Load("b", b_view), Mma(in_dtype, acc_dtype, "c", "A", "b"))
    if stepped:
        box = (() if pro_rows == tile_m else
               tuple(pro_rows if axis == ax_m else nest_tile[axis] for axis in a_view.axes))
        loads = [Load("a", a_view), Load("b", b_view)]
        loads += [Load(f"p{i}", view, 0.0, box) for i, view in enumerate(pro_views)]
        step = (*loads, *map_statements(mapped, low, in_dtype),
                Mma(in_dtype, acc_dtype, "c", "a", "b"))
    if resident:
        # once per core: the operands' whole rows, the map on them, the MX operand `A`
        # (its rows are one m tile: both view dims at coordinate 0)
        dtype = home_dtype(mapped.dtype)
        names = ([(f"P{i}", dtype) for i in range(len(mapped.inputs))]
                 + [(f"Q{j}", dtype) for j in range(len(mapped.ops))] + [("A", in_dtype)])
        for buf_name, buf_dtype in names:
            buffers.append(Buffer(buf_name, "L1", buf_dtype, pro_rows, k, _l1_end(buffers),
                                  1, 0))
        setup = tuple(Load(f"P{i}", View(v.tensor, v.dtype, v.offset, (ax_m, ax_m), v.dims,
                                         v.strides, (0, 0)), 0.0, (pro_rows, k))
                      for i, v in enumerate(pro_views))
        setup += tuple(map_statements(mapped, low, in_dtype, "P", "Q", "A"))
        step = (Load("b", b_view), Mma(in_dtype, acc_dtype, "c", "A", "b"))
    nest = Nest(extents, nest_tile, kinds, tuple(buffers), (), step, tuple(final),
                setup=setup if norm or resident else (),
                group=tile.group if tile.group > 1 else 0)
    low.kernel(name, group_ids, [nest], last.span)


def _prologue_fits(norm, mm, machine) -> bool:
    """Whether an RMSNorm prologue's form and whole rows suit the fused kernel: A and B of
    rank 2 (one m tile of A rows, read whole once per core) whose rows leave half of L1."""
    (rows, k), b_rank = mm.inputs[0].type.shape, len(mm.inputs[1].type.shape)
    return b_rank == 2 and setup_bytes(_prologue_rows(rows, machine), k) <= machine.l1_bytes // 2


def _map_fits(mapped, mm, machine) -> bool:
    """Whether a map prologue's whole rows (the resident form) leave half of L1."""
    (rows, k) = mm.inputs[0].type.shape
    in_dtype, _ = mma_dtypes(mm.inputs[0].type.dtype, machine)
    return map_setup_bytes(mapped, _prologue_rows(rows, machine), k, in_dtype) <= (
        machine.l1_bytes // 2)


def _prologue_rows(m: int, machine) -> int:
    """Rows of a prologue's vector work: one when A has one (decode at batch 1), not the MX
    tile's padding; else whole tiles (a rows x 1 operand of a tile_m-row instruction must
    have tile_m rows), at most m rounded up to the MX rows (the tile covers all of m)."""
    return 1 if m == 1 else round_up(m, machine.mx_m)


def _l1_end(buffers) -> int:
    """The first aligned L1 byte after every copy of `buffers`."""
    end = 0
    for bf in buffers:
        if bf.level == "L1":
            last = bf.offset + (bf.copies - 1) * bf.stride if bf.copies > 1 else bf.offset
            end = max(end, last + bf.rows * bf.cols * itemsize(bf.dtype))
    return aligned(end)


def k_contiguous(view: View, ax_k: int) -> bool:
    """Whether a B operand's view runs contiguously along k (a weight stored [n, k] and read
    through a transpose): its DMA rows are then k tiles, not n tiles."""
    return ax_k in view.axes and view.strides[view.axes.index(ax_k)] == 1


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
