"""Lowering: Graph IR ops to Kernel IR kernels, one kernel per op (`-O0`).

Every graph value lives in GM as a `TensorView`: a strided view of a GM tensor. Shape ops
that only re-index (transpose, slice, broadcast_to, reshape of contiguous data) make a new
view and no kernel; a nest later reads that view through a DMA descriptor. Every other op
becomes a kernel writing a fresh GM tensor:

- elementwise ops (and cast, constant, iota, pad, copies): a *map* nest over the result's
  index space; each operand is loaded through a view broadcast over that space, computed on
  the vector engine in f32 (floats) or i32 (ints, bool), stored with a cast;
- reductions and argmax: a *reduce* nest with the kept axes first (parallel) and the
  reduced axes last (accumulated with VR* `.row .acc`);
- matmul: a *matmul* nest over (batch..., m, n, k), MMA tiles accumulating in ACC;
- concat: one map nest per operand into its slice of the result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise
from math import prod

from zhenwu.compiler.backend.kernel_ir import (
    Buffer,
    Iota,
    Kernel,
    Load,
    Mma,
    Nest,
    Reduce,
    Store,
    Tensor,
    Vec,
    View,
)
from zhenwu.compiler.backend.tiling import MIN_TILE_ELEMS, map_tile, reduce_tile
from zhenwu.compiler.graph.dtypes import (
    is_float,
    is_int,
    itemsize,
    limits,
    round_float,
)
from zhenwu.compiler.graph.ir import TensorType
from zhenwu.compiler.graph.opfacets import OUT
from zhenwu.compiler.graph.ops import COMPARISONS, OPS
from zhenwu.isa.errors import CompileError
from zhenwu.isa.instructions import INSTRUCTIONS

ALIGN = 64  # bytes: alignment of every L1/ACC buffer


def row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a contiguous tensor of `shape`."""
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


@dataclass(frozen=True)
class TensorView:
    """Where a graph value lives: `shape` elements of GM tensor `tensor`, element
    (i0, i1, ...) at `offset + sum(i * stride)`."""

    tensor: str
    dtype: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def contiguous(self) -> bool:
        want = row_major(self.shape)
        return all(s == w for s, w, d in zip(self.strides, want, self.shape) if d != 1)

    def transpose(self, perm) -> TensorView:
        return replace(self, shape=tuple(self.shape[p] for p in perm),
                       strides=tuple(self.strides[p] for p in perm))

    def slice(self, starts, stops, steps) -> TensorView:
        offset = self.offset + sum(a * s for a, s in zip(starts, self.strides))
        shape = tuple((hi - lo + st - 1) // st for lo, hi, st in zip(starts, stops, steps))
        return replace(self, offset=offset, shape=shape,
                       strides=tuple(s * st for s, st in zip(self.strides, steps)))

    def broadcast(self, shape: tuple[int, ...]) -> TensorView:
        """numpy broadcasting to `shape` (stride 0 along new and stretched dims)."""
        pad = len(shape) - len(self.shape)
        old_shape = (1,) * pad + self.shape
        old_strides = (0,) * pad + self.strides
        strides = tuple(0 if o == 1 and n != 1 else s
                        for o, n, s in zip(old_shape, shape, old_strides))
        return replace(self, shape=tuple(shape), strides=strides)

    def reshape(self, shape: tuple[int, ...]) -> TensorView | None:
        """The same data seen with `shape`, or None when that needs a copy (numpy's
        no-copy reshape: each group of old dims that multiplies to a group of new dims
        must be walked contiguously)."""
        shape = tuple(shape)
        if self.contiguous:
            return replace(self, shape=shape, strides=row_major(shape))
        old = [(d, s) for d, s in zip(self.shape, self.strides) if d != 1]
        strides = [0] * len(shape)
        new_index = 0
        old_index = 0
        while old_index < len(old):
            # grow a group of new dims and a group of old dims to the same size
            new_end, new_size = new_index, 1
            old_end, old_size = old_index, 1
            while new_size != old_size or new_end == new_index:
                if new_size <= old_size and new_end < len(shape):
                    new_size *= shape[new_end]
                    new_end += 1
                elif old_end < len(old):
                    old_size *= old[old_end][0]
                    old_end += 1
                else:
                    return None
            for k in range(old_index, old_end - 1):
                if old[k][1] != old[k + 1][0] * old[k + 1][1]:
                    return None
            step = old[old_end - 1][1]
            for k in range(new_end - 1, new_index - 1, -1):
                strides[k] = step
                step *= shape[k]
            new_index, old_index = new_end, old_end
        return replace(self, shape=shape, strides=tuple(strides))

    def nest_view(self, axes: tuple[int, ...] | None = None,
                  shifts: tuple[int, ...] | None = None) -> View:
        """This view as a nest View following nest axes `axes` (default 0..rank-1)."""
        axes = tuple(range(len(self.shape))) if axes is None else axes
        shifts = (0,) * len(self.shape) if shifts is None else shifts
        return View(self.tensor, self.dtype, self.offset, axes, self.shape, self.strides, shifts)


def compute_dtype(dtype: str) -> str:
    """The vector-engine dtype values of `dtype` are computed in."""
    return "f32" if is_float(dtype) else "i32"


def clamp_value(value, dtype: str) -> float:
    """A fill value as the dtype sees it: integers saturate (so ±inf become the limits)."""
    value = float(value)
    if is_int(dtype) or dtype == "bool":
        low, high = limits(dtype)
        value = min(max(value, low), high)
        if value not in (low, high):
            value = float(int(value))
    return value


# ------------------------------------------------------------------ nest simplification


def simplify(extents, kinds, tile_keep: set[int], views: list[View]):
    """Drop size-1 axes and merge neighbouring axes every view walks contiguously.

    Returns (extents, kinds, views, axis_map) with axes renumbered; `axis_map` maps old axes
    that survive to new ones. Axes in `tile_keep` are never dropped or merged.
    """
    extents, kinds = list(extents), list(kinds)
    views = list(views)

    def dim_of(view: View, axis: int) -> int | None:
        return view.axes.index(axis) if axis in view.axes else None

    alive = list(range(len(extents)))
    # Drop extent-1 axes nobody needs (a view keeps at least one dim).
    for axis in list(alive):
        if extents[axis] != 1 or axis in tile_keep:
            continue
        same_kind = [a for a in alive if kinds[a] == kinds[axis]]
        if len(same_kind) <= 1:
            continue
        ok = True
        for view in views:
            d = dim_of(view, axis)
            if d is not None and (view.shifts[d] != 0 or view.rank <= 1):
                ok = False
        if not ok:
            continue
        for i, view in enumerate(views):
            d = dim_of(view, axis)
            if d is not None:
                views[i] = View(view.tensor, view.dtype, view.offset,
                                view.axes[:d] + view.axes[d + 1:], view.dims[:d] + view.dims[d + 1:],
                                view.strides[:d] + view.strides[d + 1:],
                                view.shifts[:d] + view.shifts[d + 1:])
        alive.remove(axis)
    # Merge axis a into its next alive neighbour b (same kind) when every view allows.
    changed = True
    while changed:
        changed = False
        for a, b in pairwise(alive):
            if kinds[a] != kinds[b] or a in tile_keep or b in tile_keep:
                continue
            ok = True
            for view in views:
                da, db = dim_of(view, a), dim_of(view, b)
                if da is None and db is None:
                    continue
                if da is None or db is None or db != da + 1:
                    ok = False
                    break
                if (view.shifts[da] or view.shifts[db] or view.dims[da] != extents[a]
                        or view.dims[db] != extents[b]
                        or view.strides[da] != view.strides[db] * extents[b]):
                    ok = False
                    break
            if not ok:
                continue
            for i, view in enumerate(views):
                da = dim_of(view, a)
                if da is None:
                    continue
                dims = view.dims[:da] + (view.dims[da] * view.dims[da + 1],) + view.dims[da + 2:]
                views[i] = View(view.tensor, view.dtype, view.offset,
                                view.axes[:da] + view.axes[da + 1:], dims,
                                view.strides[:da] + view.strides[da + 1:],
                                view.shifts[:da] + view.shifts[da + 1:])
            extents[b] *= extents[a]
            alive.remove(a)
            changed = True
            break
    axis_map = {old: new for new, old in enumerate(alive)}
    views = [replace(v, axes=tuple(axis_map[a] for a in v.axes)) for v in views]
    return (tuple(extents[a] for a in alive), tuple(kinds[a] for a in alive), views, axis_map)


# ------------------------------------------------------------------ buffer layout


def aligned(nbytes: int) -> int:
    """`nbytes` rounded up to the L1/ACC buffer alignment."""
    return -(-nbytes // ALIGN) * ALIGN


def layout(specs: list[tuple], level_base: dict[str, int] | None = None,
           copies: dict[str, int] | None = None) -> tuple[list[Buffer], dict[str, int]]:
    """Place double-buffered regions: `specs` are (name, level, dtype, rows, cols, region);
    buffers of one region share a copy stride. `copies` overrides the two copies of a
    region (a single-copy accumulator). Returns buffers and bytes used per level."""
    used = dict(level_base or {"L1": 0, "ACC": 0})
    regions: dict[tuple[str, str], list] = {}
    for spec in specs:
        regions.setdefault((spec[1], spec[5]), []).append(spec)
    buffers = []
    for (level, region), members in regions.items():
        count = (copies or {}).get(region, 2)
        base = used[level]
        offset = 0
        placed = []
        for name, _, dtype, rows, cols, _ in members:
            placed.append((name, dtype, rows, cols, offset))
            offset += aligned(rows * cols * itemsize(dtype))
        stride = offset if count > 1 else 0
        for name, dtype, rows, cols, off in placed:
            buffers.append(Buffer(name, level, dtype, rows, cols, base + off, count, stride))
        used[level] = base + max(count, 1) * offset
    return buffers, used


def _tile_shape(nest_tile: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, int]:
    box = [nest_tile[a] for a in axes]
    return prod(box[:-1]), box[-1]


def check_fits(nest: Nest, machine, span) -> None:
    """A nest whose buffers overflow L1/ACC (a tile the tiler could not shrink enough)."""
    for level, capacity in (("L1", machine.l1_bytes), ("ACC", machine.acc_bytes)):
        top = max((b.offset + b.footprint for b in nest.buffers if b.level == level), default=0)
        if top > capacity:
            raise CompileError(f"a tile needs {top} bytes of {level}, the machine has "
                               f"{capacity}", span)


# ------------------------------------------------------------------ the three nest shapes


def map_nest(extents, loads: list[tuple[View, str, float]], compute, out: View, out_dtype: str,
             machine, temps: tuple[tuple[str, str], ...] = ()) -> Nest:
    """An elementwise nest over `extents`. `loads` are (view over all axes, load dtype, pad);
    `compute(in_names, out_name, axis_map)` gives the vector statements writing buffer `out`
    (dtype `out_dtype`) from buffers `in0, in1, ...` and scratch buffers `temps` (name,
    dtype)."""
    if not extents:
        extents = (1,)
        loads = [(_scalar_view(v), dt, pad) for v, dt, pad in loads]
        out = _scalar_view(out)
    views = [v for v, _, _ in loads] + [out]
    extents, kinds, views, axis_map = simplify(extents, ("p",) * len(extents), set(), views)
    bytes_per_elem = 2 * (sum(itemsize(dt) for _, dt, _ in loads) + itemsize(out_dtype)
                          + sum(itemsize(dt) for _, dt in temps))
    tile = map_tile(extents, bytes_per_elem, machine,
                    reserve=2 * ALIGN * (len(loads) + 1 + len(temps)))
    rows, cols = prod(tile[:-1]), tile[-1]
    specs = [(f"in{i}", "L1", dt, rows, cols, "ld") for i, (_, dt, _) in enumerate(loads)]
    specs.append(("out", "L1", out_dtype, rows, cols, "out"))
    specs += [(name, "L1", dt, rows, cols, "out") for name, dt in temps]
    buffers, _ = layout(specs)
    step = tuple(Load(f"in{i}", views[i], pad) for i, (_, _, pad) in enumerate(loads))
    body = tuple(compute([f"in{i}" for i in range(len(loads))], "out", axis_map))
    return Nest(extents, tile, kinds, tuple(buffers), (), step + body,
                (Store(views[-1], "out"),))


def _scalar_view(view: View) -> View:
    return View(view.tensor, view.dtype, view.offset, (0,), (1,), (0,), (0,))


# reduction kind -> the Kernel IR `Reduce` op (its VR* instruction without the `VR`)
REDUCE_OPS = {name: op.reduce_instr[2:] for name, op in OPS.items() if op.reduce_instr}


def reduce_op(kind: str) -> str | None:
    """The Kernel IR `Reduce` op of a reduction kind (its VR* instruction without `VR`)."""
    instr = OPS[kind].reduce_instr
    return instr[2:] if instr else None


def reduce_identity(op: str, dtype: str) -> float:
    if op == "SUM":
        return 0.0
    if op == "PROD":
        return 1.0
    low, high = limits(dtype) if dtype != "f32" else (float("-inf"), float("inf"))
    return float(high) if op == "MIN" else float(low)


def reduce_nests(src: TensorView, axes: tuple[int, ...], out: TensorView, op: str, machine,
                 scratch) -> list[Nest]:
    """A reduction of `src` over `axes` into `out` (kept axes in order, keepdims or not).

    When the kept axes give too few tiles to feed the cores, the last reduced axis is split
    into chunks reduced in parallel into a scratch tensor (`scratch(dtype, shape)` makes one),
    then a second nest reduces the chunks.
    """
    kept = [a for a in range(len(src.shape)) if a not in axes]
    order = kept + list(axes)
    nk = len(kept)
    extents = tuple(src.shape[a] for a in order)
    in_view = View(src.tensor, src.dtype, src.offset, tuple(range(len(order))), extents,
                   tuple(src.strides[a] for a in order), (0,) * len(order))
    # The output's strides along the kept axes (a keepdims output has 1s elsewhere).
    out_strides = list(out.strides)
    if len(out.shape) != nk:
        out_strides = [s for i, s in enumerate(out.strides) if i not in axes]
    if nk == 0:  # a full reduction: one dummy kept axis of extent 1
        extents = (1,) + extents
        in_view = replace(in_view, axes=tuple(a + 1 for a in in_view.axes))
        out_view = View(out.tensor, out.dtype, out.offset, (0,), (1,), (0,), (0,))
        nk = 1
    else:
        out_view = View(out.tensor, out.dtype, out.offset, tuple(range(nk)),
                        extents[:nk], tuple(out_strides), (0,) * nk)
    kinds = ("p",) * nk + ("r",) * (len(extents) - nk)
    keep = {len(extents) - 1} if op == "ARGMAX" else set()
    extents, kinds, (in_view, out_view), _ = simplify(extents, kinds, keep, [in_view, out_view])
    cdt = compute_dtype(src.dtype)
    nest = reduce_tiled(extents, kinds, in_view, out_view, op, cdt, machine)
    split = 1 if op == "ARGMAX" else _split_count(nest, machine)
    if split == 1:
        return [nest]
    # Nest 1: (kept..., split) parallel, (reduced..., chunk) accumulated, into the scratch.
    nk = kinds.count("p")
    chunk = extents[-1] // split
    last = len(extents) - 1
    dims, strides, view_axes = [], [], []
    for axis, dim, stride in zip(in_view.axes, in_view.dims, in_view.strides):
        if axis == last:
            continue
        view_axes.append(axis if axis < nk else axis + 1)
        dims.append(dim)
        strides.append(stride)
    stride = in_view.strides[in_view.axes.index(last)]
    at = sum(1 for a in view_axes if a < nk)
    view_axes[at:at] = [nk]
    dims[at:at] = [split]
    strides[at:at] = [chunk * stride]
    view_axes.append(last + 1)
    dims.append(chunk)
    strides.append(stride)
    split_view = View(in_view.tensor, in_view.dtype, in_view.offset, tuple(view_axes),
                      tuple(dims), tuple(strides), (0,) * len(dims))
    kept_extents = extents[:nk] + (split,)
    partial = scratch(cdt, kept_extents)
    first = reduce_tiled(kept_extents + extents[nk:-1] + (chunk,),
                         ("p",) * (nk + 1) + ("r",) * (len(extents) - nk), split_view,
                         partial.nest_view(), op, cdt, machine)
    # Nest 2: the chunks' partial results.
    second = reduce_tiled(kept_extents, ("p",) * nk + ("r",), partial.nest_view(), out_view, op,
                          cdt, machine)
    return [first, second]


def _split_count(nest: Nest, machine) -> int:
    """How many chunks to cut the last reduced axis into (1: no split): enough to feed the
    cores, each chunk a whole number of elements and worth a DMA of its own."""
    tiles = nest.parallel_tiles
    extent = nest.extents[-1]
    want = machine.cores // tiles
    if want < 2 or extent < 2 * MIN_TILE_ELEMS:
        return 1
    for split in range(min(want, extent // MIN_TILE_ELEMS), 1, -1):
        if extent % split == 0:
            return split
    return 1


def reduce_tiled(extents, kinds, in_view: View, out_view: View, op: str, cdt: str,
                 machine) -> Nest:
    """A reduction nest over simplified axes: kept (parallel) axes first, reduced last."""
    nk = kinds.count("p")
    n_acc = 2 if op == "ARGMAX" else 1
    kept_tile, red_tile = reduce_tile(extents[:nk], extents[nk:], itemsize(cdt), 4 * n_acc,
                                      machine, reserve=2 * ALIGN * (1 + n_acc))
    tile = kept_tile + red_tile
    rows, cols = kept_tile[-1], red_tile[-1]
    specs = [("in", "L1", cdt, rows, cols, "ld"), ("acc", "L1", cdt, rows, 1, "out")]
    if op == "ARGMAX":
        specs.append(("idx", "L1", "i32", rows, 1, "out"))
    buffers, _ = layout(specs)
    identity = reduce_identity(op, cdt)
    init = [Vec("DUP", cdt, "acc", (identity,))]
    if op == "ARGMAX":
        init.append(Vec("DUP", "i32", "idx", (0.0,)))
        stmt = Reduce(op, cdt, "acc", "in", "idx", len(extents) - 1)
        result = "idx"
    else:
        stmt = Reduce(op, cdt, "acc", "in")
        result = "acc"
    return Nest(extents, tile, kinds, tuple(buffers), tuple(init),
                (Load("in", in_view, identity), stmt), (Store(out_view, result),))


def mma_dtypes(dtype: str, machine) -> tuple[str, str]:
    """(MMA input dtype, accumulator dtype) for a matmul with operands of `dtype`.

    Integer products are exact or refused, never computed in f32: i8 runs as MMA.i8.i32; an
    i32 product is split into i8 ones by the `split-int-matmul` graph pass before it gets
    here. CompileError for an integer product the machine cannot do exactly."""
    if dtype == "i8" and machine.supports_mx("i8"):
        return "i8", "i32"
    if dtype in ("bf16", "f16", "fp8", "f32") and machine.supports_mx(dtype):
        return dtype, "f32"
    if dtype == "fp8" and machine.supports_mx("bf16"):
        return "bf16", "f32"   # every e4m3 value is exact in bf16
    if dtype == "i32":
        raise CompileError("an i32 matmul reaches the backend: the MX has no exact i32 "
                           "product; the 'split-int-matmul' graph pass writes it as i8 ones")
    if dtype == "i8":
        raise CompileError(f"machine '{machine.name}' has no i8 matrix unit: an i8 product "
                           "cannot be computed exactly")
    return "f32", "f32"


def matmul_views(a: TensorView, b: TensorView, out: TensorView
                 ) -> tuple[tuple[int, ...], int, int, int, View, View, View]:
    """(batch, m, n, k) of out[..., m, n] = sum_k a[..., m, k] b[..., k, n] (numpy batch
    broadcasting), and the three operands as views over the nest axes (batch..., m, n, k)."""
    batch = out.shape[:-2]
    m, k = a.shape[-2:]
    n = b.shape[-1]
    a = a.broadcast(batch + (m, k))
    b = b.broadcast(batch + (k, n))
    nb = len(batch)
    ax_m, ax_n, ax_k = nb, nb + 1, nb + 2
    bat = tuple(range(nb))
    zeros = (0,) * (nb + 2)
    a_view = View(a.tensor, a.dtype, a.offset, bat + (ax_m, ax_k), a.shape, a.strides, zeros)
    b_view = View(b.tensor, b.dtype, b.offset, bat + (ax_k, ax_n), b.shape, b.strides, zeros)
    c_view = View(out.tensor, out.dtype, out.offset, bat + (ax_m, ax_n), out.shape,
                  out.strides, zeros)
    return batch, m, n, k, a_view, b_view, c_view


def matmul_nest(a: TensorView, b: TensorView, out: TensorView, machine) -> Nest:
    """out[..., m, n] = sum_k a[..., m, k] b[..., k, n] with numpy batch broadcasting: the
    plain product (-O0, no epilogue), tiled as a GEMM kernel of no epilogue is
    (`gemm.choose_gemm_tile`, priced by the one tile-cost model) and walked in its grouped
    tile order."""
    from zhenwu.compiler.backend.gemm import choose_gemm_tile, k_contiguous
    from zhenwu.compiler.backend.tile_cost import VectorWork

    batch, m, n, k, a_view, b_view, c_view = matmul_views(a, b, out)
    nb = len(batch)
    ax_m, ax_n, ax_k = nb, nb + 1, nb + 2
    extents = batch + (m, n, k)
    kinds = ("p",) * (nb + 2) + ("r",)
    extents, kinds, (a_view, b_view, c_view), axis_map = simplify(
        extents, kinds, {ax_m, ax_n, ax_k}, [a_view, b_view, c_view])
    nb = len(extents) - 3
    in_dtype, acc_dtype = mma_dtypes(a.dtype, machine)
    plan = choose_gemm_tile(prod(extents[:nb]), m, n, k, in_dtype, acc_dtype, itemsize(a.dtype),
                            itemsize(b.dtype), itemsize(out.dtype), 0, 0, VectorWork(), machine,
                            b_k_major=k_contiguous(b_view, axis_map[ax_k]))
    tile_m, tile_n, tile_k = plan.tile_m, plan.tile_n, plan.tile_k
    tile = (1,) * nb + (tile_m, tile_n, tile_k)
    buffers, _ = layout([("a", "L1", in_dtype, tile_m, tile_k, "ld"),
                         ("b", "L1", in_dtype, tile_k, tile_n, "ld"),
                         ("c", "ACC", acc_dtype, tile_m, tile_n, "out")],
                        copies={"out": plan.acc_copies})
    step = (Load("a", a_view), Load("b", b_view), Mma(in_dtype, acc_dtype, "c", "a", "b"))
    return Nest(extents, tile, kinds, tuple(buffers), (), step, (Store(c_view, "c"),),
                group=plan.group if plan.group > 1 else 0)


# ------------------------------------------------------------------ elementwise bodies

# The op table answers what the lowering needs (compiler/graph/ops.py): which ops are
# elementwise on the vector engine (`OpDef.vector`) and with which instructions, which are
# reductions (`OpDef.reduce_instr`). These sets are the table's ops at import, for readers.
ELEMENTWISE = frozenset(name for name, op in OPS.items() if op.vector is not None)
COMPARE = COMPARISONS


def integer_steps(cdt: str) -> bool:
    """Whether an op computing in vector dtype `cdt` takes its integer steps."""
    return cdt == "i32"


def elementwise_body(kind: str, attrs: dict, cdt: str):
    """The vector statements of one elementwise op in compute dtype `cdt`: the steps of its
    table entry (`OpDef.vector`) with operand names bound to buffers."""
    vector = OPS[kind].vector
    if vector is None:
        raise KeyError(kind)
    steps = vector.select(attrs, integer_steps(cdt))

    def dtype_of(step) -> str:
        if step.dtype is None:
            return cdt
        return _vx_dtype(attrs["dtype"]) if step.dtype == "target" else step.dtype

    def body(ins, out, _axis_map):
        names = {OUT: out, **{f"in{i}": name for i, name in enumerate(ins)}}

        def bound(operand):
            return names.get(operand, operand) if isinstance(operand, str) else operand

        return [Vec(step.op, dtype_of(step), bound(step.dst),
                    tuple(bound(src) for src in step.srcs)) for step in steps]

    return body


def _vx_dtype(dtype: str) -> str:
    """The vector dtype holding values of `dtype` unchanged (fp8 is not a vector type)."""
    return "f32" if dtype == "fp8" else dtype


def copy_body(dtype: str):
    return lambda ins, out, _axis_map: [Vec("COPY", dtype, out, (ins[0],))]


# ------------------------------------------------------------------ the lowering driver


class Lowering:
    """Walks a Graph IR function and builds GM tensors and one kernel per non-view op."""

    def __init__(self, fn, machine):
        self.fn = fn
        self.machine = machine
        self.tensors: dict[str, Tensor] = {}
        self.spans: dict[str, object] = {}  # tensor name -> source span that creates it
        self.kernels: list[Kernel] = []
        self.views: dict[int, TensorView] = {}
        self.constants: dict[int, object] = {}  # value id -> its (unmaterialised) constant op
        self._names: set[str] = set()

    def _fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self._names:
            name = f"{base}_{n}"
            n += 1
        self._names.add(name)
        return name

    def new_tensor(self, base: str, type_, role: str, span) -> TensorView:
        name = self._fresh(base)
        shape = tuple(type_.shape)
        self.tensors[name] = Tensor(name, type_.dtype, shape, role)
        self.spans[name] = span
        return TensorView(name, type_.dtype, 0, shape, row_major(shape))

    def kernel(self, name: str, op_ids, nests, span) -> None:
        for nest in nests:
            check_fits(nest, self.machine, span)
        self.kernels.append(Kernel(f"{name}_{len(self.kernels)}", tuple(op_ids), tuple(nests)))

    def copy_nest(self, src: TensorView, dst: TensorView) -> Nest:
        dtype = _vx_dtype(src.dtype) if src.dtype == dst.dtype else compute_dtype(dst.dtype)
        return map_nest(dst.shape, [(src.nest_view(), dtype, 0.0)], copy_body(dtype),
                        dst.nest_view(), dtype, self.machine)

    def run(self) -> tuple[list[Tensor], list[Kernel], dict[str, object]]:
        fn = self.fn
        for param in fn.params:
            self.views[param.id] = self.new_tensor(param.name, param.type, "in",
                                                   getattr(param, "span", None))
        for op in fn.ops:
            try:
                self.lower_op(op)
            except CompileError as err:  # one without a place points at the op's source
                if err.span is not None or op.span is None:
                    raise
                raise CompileError(err.message, op.span, notes=err.notes) from None
        outputs = []
        seen: set[str] = set()
        producers = {op.result.id: op for op in fn.ops}
        for index, value in enumerate(fn.outputs):
            view = self.view_of(value)
            tensor = self.tensors[view.tensor]
            whole = (view.offset == 0 and view.shape == tensor.shape and view.contiguous)
            if whole and tensor.role == "temp" and view.tensor not in seen:
                self.tensors[view.tensor] = replace(tensor, role="out")
                outputs.append(view.tensor)
            else:
                op = producers.get(value.id)
                span = op.span if op is not None else None
                dst = self.new_tensor(f"out{index}", value.type, "out", span)
                self.kernel("copy", (op.id,) if op else (), [self.copy_nest(view, dst)], span)
                outputs.append(dst.tensor)
            seen.add(outputs[-1])
        ins = [self.tensors[self.views[p.id].tensor] for p in fn.params]
        outs = [self.tensors[name] for name in outputs]
        rest = [t for t in self.tensors.values() if t.role == "temp"]
        return ins + outs + rest, self.kernels, self.spans

    # -------------------------------------------------------------- one op

    def view_of(self, value) -> TensorView:
        """Where `value` lives in GM; a constant is materialised at its first such use."""
        if value.id not in self.views:
            op = self.constants[value.id]
            out = self.new_tensor(f"t{op.id}", op.result.type, "temp", op.span)
            self.views[op.id] = out
            self.kernel(op.kind, (op.id,), self.compute_op(op, [], out), op.span)
        return self.views[value.id]

    def immediate(self, value) -> float | None:
        """A scalar-splat constant's value as its dtype rounds it, or None."""
        op = self.constants.get(value.id)
        if op is None:
            return None
        dtype = op.attrs["dtype"]
        if is_float(dtype):
            return round_float(float(op.attrs["value"]), dtype)
        return clamp_value(op.attrs["value"], dtype)

    def lower_op(self, op) -> None:
        kind, attrs = op.kind, op.attrs
        rtype = op.result.type
        if kind == "constant":  # an immediate operand where it can be, else made on demand
            self.constants[op.id] = op
            return
        if OPS[kind].vector is not None:
            immediates = [self.immediate(v) if may_be_immediate(op, i) else None
                          for i, v in enumerate(op.inputs)]
        else:
            immediates = [None] * len(op.inputs)
        ins = [imm if imm is not None else self.view_of(v)
               for v, imm in zip(op.inputs, immediates)]
        view_result = self.view_op(kind, attrs, ins, rtype)
        if view_result is not None:
            self.views[op.id] = view_result
            return
        out = self.new_tensor(f"t{op.id}", rtype, "temp", op.span)
        self.views[op.id] = out
        nests = self.compute_op(op, ins, out)
        self.kernel(kind, (op.id,), nests, op.span)

    def view_op(self, kind, attrs, ins, rtype) -> TensorView | None:
        if kind == "transpose":
            return ins[0].transpose(attrs["perm"])
        if kind == "slice":
            return ins[0].slice(attrs["starts"], attrs["stops"], attrs["steps"])
        if kind == "broadcast_to":
            return ins[0].broadcast(tuple(attrs["shape"]))
        if kind == "reshape":
            return ins[0].reshape(tuple(rtype.shape))
        return None

    def compute_op(self, op, ins: list[TensorView | float], out: TensorView) -> list[Nest]:
        """The nests of a non-view op; `ins` are views, or floats for immediate operands."""
        kind, attrs, machine = op.kind, op.attrs, self.machine
        shape = out.shape
        if OPS[kind].vector is not None:
            in_dtypes = [v.type.dtype for v in op.inputs]
            if kind == "cast":
                load_dtypes = [_vx_dtype(attrs["dtype"])]
                out_dtype = load_dtypes[0]
            elif kind == "where":
                cdt = compute_dtype(out.dtype)
                load_dtypes = ["bool", cdt, cdt]
                out_dtype = cdt
            else:
                cdt = compute_dtype(in_dtypes[0])
                fixed = {s.dtype for s in OPS[kind].vector.select(attrs, integer_steps(cdt))}
                if len(fixed) == 1 and None not in fixed:
                    cdt = fixed.pop()  # steps in a fixed dtype (integer pow: f32) load it
                load_dtypes = [cdt] * len(ins)
                out_dtype = "bool" if OPS[kind].vector.result == "bool" else cdt
            # the body computes in the dtype of the last operand (where's branches; the
            # operands otherwise); integer pow loads f32 but keeps its integer body
            cdt = compute_dtype(in_dtypes[-1])
            temps = OPS[kind].vector.temps(integer_steps(cdt))
            loads, operands = [], []
            for v, dt in zip(ins, load_dtypes):
                if isinstance(v, float):
                    operands.append(v)
                else:
                    operands.append(len(loads))
                    loads.append((v.broadcast(shape).nest_view(), dt, 0.0))
            body = elementwise_body(kind, attrs, cdt)

            def compute(names, out_name, axis_map):
                merged = [o if isinstance(o, float) else names[o] for o in operands]
                return body(merged, out_name, axis_map)

            return [map_nest(shape, loads, compute, out.nest_view(), out_dtype, machine, temps)]
        if kind == "constant":
            cdt = compute_dtype(out.dtype)
            value = clamp_value(attrs["value"], out.dtype)
            return [map_nest(shape, [], lambda i, o, m: [Vec("DUP", cdt, o, (value,))],
                             out.nest_view(), cdt, machine)]
        if kind == "iota":
            cdt = compute_dtype(out.dtype)
            return [map_nest(shape, [], lambda i, o, m: [Iota(cdt, o, m[0])], out.nest_view(),
                             cdt, machine)]
        if kind == "pad":
            src = ins[0]
            cdt = compute_dtype(src.dtype)
            value = clamp_value(attrs["value"], src.dtype)
            lows = tuple(lo for lo, _ in attrs["pads"])
            view = View(src.tensor, src.dtype, src.offset, tuple(range(len(shape))), src.shape,
                        src.strides, lows)
            return [map_nest(shape, [(view, cdt, value)], copy_body(cdt), out.nest_view(), cdt,
                             machine)]
        if kind == "concat":
            axis = attrs["axis"]
            nests, start = [], 0
            for src in ins:
                part = replace(out, offset=out.offset + start * out.strides[axis],
                               shape=src.shape)
                nests.append(self.copy_nest(src, part))
                start += src.shape[axis]
            return nests
        if kind == "reshape":  # a non-contiguous source: materialise, then view
            tmp = ins[0]
            return [self.copy_nest(tmp, replace(out, shape=tmp.shape,
                                                strides=row_major(tmp.shape)))]
        if reduce_op(kind) is not None:
            def scratch(dtype, shape):
                return self.new_tensor(f"t{op.id}_part", TensorType(dtype, shape), "temp",
                                       op.span)

            return reduce_nests(ins[0], tuple(attrs["axes"]), out, reduce_op(kind), machine,
                                scratch)
        if kind == "matmul":
            return [matmul_nest(ins[0], ins[1], out, machine)]
        raise CompileError(f"the backend cannot lower op '{kind}' yet", op.span)


def may_be_immediate(op, index: int) -> bool:
    """Whether operand `index` of elementwise `op` can be a float immediate of its vector
    instructions: every step reading it takes an immediate in that position (the operand
    kinds of the step's `InstrDef`), and no step rewrites an operand in place (integer
    div/pow rewrite their divisor/exponent, which must then be a tile). An op of one
    operand takes none (a unary op of a constant is folded before lowering)."""
    vector = OPS[op.kind].vector
    if vector is None or len(op.inputs) < 2:
        return False
    integer = integer_steps(compute_dtype(op.inputs[-1].type.dtype))
    if vector.writes_operand(op.attrs, integer):
        return False
    name = f"in{index}"
    for step in vector.select(op.attrs, integer):
        specs = INSTRUCTIONS[step.instr].operands[1:]  # after the destination
        if any(src == name and "fimm" not in spec.kinds for spec, src in zip(specs, step.srcs)):
            return False
    return True


def lower_function(fn, machine):
    """(tensors in directive order, kernels, tensor name -> span of its creator)."""
    return Lowering(fn, machine).run()
