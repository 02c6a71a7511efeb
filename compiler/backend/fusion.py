"""Fused lowering (`-O1`/`-O2`): one kernel per fusion group (compiler/passes/fuse.py).

`FusedLowering` extends the one-op-per-kernel `Lowering`: it walks the groups of a
`FusionPlan` in order, lowers view/single groups exactly as `-O0` does, and builds

- one *map* nest per elementwise group: every operand from outside the group is loaded once
  per tile (a broadcast operand as a compact 1 x cols row, rows x 1 column or 1 x 1 tile that
  the vector engine repeats with a zero stride; one that is the same for every tile is loaded
  once per core in the nest's `setup`), splat constants are immediates, the ops run on the
  vector engine tile by tile with buffers reused by liveness, and only values used outside
  the group are stored;
- one *matmul* nest per matmul group (`compiler/backend/gemm.py`): the tiled product
  accumulates in ACC and the epilogue runs on the accumulator tile before the store;
- one implicit-GEMM nest per conv group (`compiler/backend/conv.py`), epilogue likewise;
- one nest per max pool (`compiler/backend/pool.py`): its input rows once, taps as strided
  vector operands.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import lcm, prod

from zhenwu.compiler.backend.groups import group_lowering
from zhenwu.compiler.backend.kernel_ir import (
    Buffer,
    ColumnCopy,
    Iota,
    Load,
    Nest,
    Reduce,
    Store,
    Vec,
    View,
)
from zhenwu.compiler.backend.lower import (
    ALIGN,
    Lowering,
    _scalar_view,
    clamp_value,
    compute_dtype,
    elementwise_body,
    integer_steps,
    layout,
    may_be_immediate,
    reduce_identity,
    row_major,
    simplify,
)
from zhenwu.compiler.backend.tiling import map_tile
from zhenwu.compiler.graph.dtypes import is_float, itemsize, value_preserving
from zhenwu.compiler.graph.ir import Function
from zhenwu.compiler.graph.ops import OPS
from zhenwu.isa.errors import CompileError

NARROW_FLOATS = ("bf16", "f16", "fp8")
VECTOR_FLOATS = ("bf16", "f16")   # vector dtypes: an instruction rounds its result once
ROUNDED = ("fp8", "i8")           # kept widened; rounded explicitly where used
# the reductions a row kernel computes -> their Kernel IR `Reduce` op
ROW_REDUCE = {name: op.reduce_instr[2:] for name, op in OPS.items() if op.row_kernel}


def home_dtype(dtype: str) -> str:
    """The vector dtype a value of `dtype` is kept in inside a fused kernel: bf16 and f16
    as themselves (an instruction of that dtype computes in f32 and rounds once, as the
    reference does), bool as bool, other floats as f32 and integers as i32."""
    if dtype in VECTOR_FLOATS or dtype == "bool":
        return dtype
    return compute_dtype(dtype)


class _Tiles:
    """Buffers of one fused map nest, allocated by liveness.

    A buffer is `full` (the tile), `row` (1 x cols), `col` (rows x 1) or `one` (1 x 1);
    compute buffers (role `out`) are reused once every value they hold is dead.
    """

    def __init__(self):
        self.specs: dict[str, tuple[str, str, str]] = {}   # name -> (dtype, shape kind, role)
        self.free: list[str] = []
        self.count = 0
        self.pinned: set[str] = set()   # never reused (a chunked reduction's accumulator)

    def new(self, dtype: str, kind: str = "full", role: str = "out") -> str:
        if role == "out":
            for name in self.free:
                if self.specs[name][:2] == (dtype, kind):
                    self.free.remove(name)
                    return name
        name = f"b{self.count}"
        self.count += 1
        self.specs[name] = (dtype, kind, role)
        return name

    def release(self, name: str) -> None:
        if self.specs[name][2] == "out" and name not in self.free \
                and name not in self.pinned:
            self.free.append(name)


def fused_tile(extents: tuple[int, ...], bytes_per_elem: int, machine,
               reserve: int = 0) -> tuple[int, ...]:
    """A tile that may span several trailing axes (a DMA box is n-D; in L1 it is rows x
    the last axis): whole trailing axes while they fit, then part of the next one. It aims at
    one tile per core but not below `MIN_TILE_ELEMS`, and never over L1."""
    from zhenwu.compiler.backend.tiling import MIN_TILE_ELEMS

    capacity = max((machine.l1_bytes - reserve) // max(bytes_per_elem, 1), 1)
    total = prod(extents)
    want = min(capacity, max(-(-total // machine.cores), MIN_TILE_ELEMS))
    tile = [1] * len(extents)
    left = want
    for axis in reversed(range(len(extents))):
        tile[axis] = max(min(extents[axis], left), 1)
        if tile[axis] < extents[axis]:
            break
        left //= extents[axis]
        if left <= 1:
            break
    return tuple(tile)


@dataclass(frozen=True)
class ConcatPiece:
    """One input of a concat built in a map kernel: columns `col` .. `col + cols` of the
    concat's tile, copied (negated when `negate`) from the tile of value `value` (computed
    or loaded by the kernel) from its column `value_col`, else loaded from GM through
    `view` (a TensorView) into a tile of its own."""

    col: int
    cols: int
    negate: bool
    value: int | None = None
    value_col: int = 0
    view: object = None


# Tiles per core a row kernel aims for: with one, a core's load, compute and store run one
# after the other; from a few on, the double buffers overlap them.
ROW_TILES_PER_CORE = 4


class RowTooLong(Exception):
    """A row kernel whose rows do not fit L1: its ops are lowered one by one instead."""


class FusedLowering(Lowering):
    """Lowering by fusion groups (see the module docstring)."""

    multipass_rows = False  # every row group as `lower_wide_rows` (see `lower_fused`)

    def __init__(self, fn, machine, plan):
        super().__init__(fn, machine)
        self.plan = plan
        self.group_of = {i: g for g in plan.groups for i in g.op_ids}
        self.users = fn.users()
        self.output_ids = {v.id for v in fn.outputs}
        self.op_by_id = {op.id: op for op in fn.ops}

    def run(self):
        fn = self.fn
        order = [self.op_by_id[i] for g in self.plan.groups for i in g.op_ids]
        self.fn = Function(fn.name, fn.params, order, fn.outputs, fn.attrs)
        try:
            tensors, kernels, spans = super().run()
        finally:
            self.fn = fn
        return _drop_reshape_copies(tensors, kernels, spans)

    def lower_op(self, op) -> None:
        group = self.group_of[op.id]
        if group.kind == "view" and op.kind == "reshape" and self.view_of(
                op.inputs[0]).reshape(tuple(op.result.type.shape)) is None:
            self.reshape_copy(op)
            return
        if op.kind == "pad" and group.kind == "single":
            self.pad_copy(op)
            return
        lowering = group_lowering(group.kind)  # attention, pool, conv, matmul, ...
        if group.kind != "elementwise" and lowering is None:
            super().lower_op(op)
            return
        if op.id != group.op_ids[0]:
            return  # lowered with its group
        ops = [self.op_by_id[i] for i in group.op_ids]
        if lowering is not None:
            lowering(self, ops)
            return
        if self.multipass_rows and any(op.kind in ROW_REDUCE for op in ops) \
                and self.lower_wide_rows(ops):
            return
        made = set(self.tensors)
        try:
            self.lower_elementwise(ops)
        except RowTooLong:
            for name in set(self.tensors) - made:  # the attempt's outputs, never written
                del self.tensors[name]
            if self.lower_wide_rows(ops):
                return
            for member in ops:
                if OPS[member.kind].row_kernel or member.kind in ("concat", "slice"):
                    super().lower_op(member)
                else:
                    self.lower_elementwise([member])

    def lower_wide_rows(self, ops) -> bool:
        """A row group whose rows do not fit L1, as one kernel of several nests: per
        reduction, a nest that streams each row in chunks through the ops the reduction
        needs and accumulates it across the chunks (stored per row to GM), then one map
        nest that recomputes the row's values from its inputs and the stored per-row
        results. Each pass re-reads the rows (from L2 while they are still there). False
        (nothing lowered) when the group has a form this does not handle: a per-row value
        used outside the group that is not a reduction, or a row length with no divisor
        that fits L1 (a padded chunk would feed the pad value into the reduction)."""
        by_id = {op.id: op for op in ops}
        reduces = [op for op in ops if op.kind in ROW_REDUCE]
        if not reduces:  # a concat's whole rows, no reduction to chunk
            return False
        shape = tuple(reduces[0].inputs[0].type.shape)
        if any(tuple(r.inputs[0].type.shape) != shape for r in reduces):
            return False
        stored = self.stored(ops)
        if any(tuple(op.result.type.shape) != shape and op.kind not in ROW_REDUCE
               for op in stored):
            return False

        def ancestors(roots) -> list:
            seen: set[int] = set()
            todo = [r.id for r in roots]
            while todo:
                oid = todo.pop()
                if oid in seen:
                    continue
                seen.add(oid)
                if by_id[oid].kind in ROW_REDUCE and oid not in {r.id for r in roots}:
                    continue  # an earlier reduction: loaded, not recomputed
                todo += [v.id for v in by_id[oid].inputs if v.id in by_id]
            return [op for op in ops if op.id in seen and (
                op.kind not in ROW_REDUCE or op in roots)]

        final_roots = [op for op in stored if op.kind not in ROW_REDUCE]
        final_ops = ancestors(final_roots) if final_roots else []
        final_ops = [op for op in final_ops if op.kind not in ROW_REDUCE]
        if final_ops and tuple(final_ops[-1].result.type.shape) != shape:
            return False
        first, made = len(self.kernels), set(self.tensors)
        try:
            for red in reduces:
                self.lower_elementwise(ancestors([red]), chunked=True, only_store={red.id})
            if final_ops:
                self.lower_elementwise(final_ops, only_store={op.id for op in final_roots})
        except RowTooLong:
            del self.kernels[first:]
            for name in set(self.tensors) - made:
                del self.tensors[name]
            return False
        made = self.kernels[first:]
        del self.kernels[first:]
        passes = _row_groups([n for k in made for n in k.nests], self.machine)
        self.kernel("row_wide", [op.id for op in ops], passes, ops[-1].span)
        return True

    # -------------------------------------------------------------- helpers

    def pad_copy(self, op) -> None:
        """`pad`: a copy whose loads read the pad value outside the source, with tiles
        spanning several axes (small images in many channels make short rows)."""
        src = self.view_of(op.inputs[0])
        out = self.new_tensor(f"t{op.id}", op.result.type, "temp", op.span)
        self.views[op.id] = out
        dtype = home_dtype(src.dtype)
        value = clamp_value(op.attrs["value"], src.dtype)
        lows = tuple(lo for lo, _ in op.attrs["pads"])
        shape = tuple(op.result.type.shape)
        view = View(src.tensor, src.dtype, src.offset, tuple(range(len(shape))), src.shape,
                    src.strides, lows)
        self._copy_nest(op, shape, view, out.nest_view(), dtype, value, "pad")

    def _copy_nest(self, op, extents, src_view, dst_view, dtype, pad, name) -> None:
        views = [src_view, dst_view]
        if not extents:
            extents = (1,)
            views = [_scalar_view(v) for v in views]
        extents, kinds, views, _ = simplify(extents, ("p",) * len(extents), set(), views)
        tile = fused_tile(extents, 4 * itemsize(dtype), self.machine, reserve=4 * ALIGN)
        rows, cols = prod(tile[:-1]), tile[-1]
        buffers, _ = layout([("in", "L1", dtype, rows, cols, "ld"),
                             ("out", "L1", dtype, rows, cols, "out")])
        nest = Nest(extents, tile, kinds, tuple(buffers), (),
                    (Load("in", views[0], pad), Vec("COPY", dtype, "out", ("in",))),
                    (Store(views[1], "out"),))
        self.kernel(name, [op.id], [nest], op.span)

    def reshape_copy(self, op) -> None:
        """A reshape of a strided view (a transposed or broadcast tensor): copy it to a
        contiguous tensor in the source's shape, with tiles spanning several axes."""
        src = self.view_of(op.inputs[0])
        out = self.new_tensor(f"t{op.id}", op.result.type, "temp", op.span)
        self.views[op.id] = out
        dst = replace(out, shape=src.shape, strides=row_major(src.shape))
        self._copy_nest(op, src.shape, src.nest_view(), dst.nest_view(),
                        home_dtype(src.dtype), 0.0, "reshape")

    def stored(self, ops) -> list:
        """The ops of a group whose results are needed outside it."""
        ids = {op.id for op in ops}
        return [op for op in ops if op.id in self.output_ids
                or any(u.id not in ids for u in self.users[op.id])]

    def operand(self, op, index: int, ids):
        """An operand from outside the group: a float immediate or a GM view."""
        value = op.inputs[index]
        if may_be_immediate(op, index):
            imm = self.immediate(value)
            tiles = [v for i, v in enumerate(op.inputs)
                     if i != index and (v.id in ids or self.immediate(v) is None)]
            if imm is not None and tiles:
                return imm
        return self.view_of(value)

    # -------------------------------------------------------------- elementwise groups

    def concat_pieces(self, ops, ids) -> tuple[dict[int, list[ConcatPiece]], dict[int, int]]:
        """The pieces of each concat of a map group (fuse.py lets a concat along the last
        axis absorb a `neg` and a column slice per piece), and for each absorbed op the
        concat that computes it."""
        pieces: dict[int, list[ConcatPiece]] = {}
        absorbed: dict[int, int] = {}
        for op in ops:
            if op.kind != "concat":
                continue
            col, found = 0, []
            for value in op.inputs:
                width = value.type.shape[-1]
                negate = False
                inner = self.op_by_id.get(value.id) if value.id in ids else None
                if inner is not None and inner.kind == "neg":
                    negate, absorbed[inner.id] = True, op.id
                    value = inner.inputs[0]
                    inner = self.op_by_id.get(value.id) if value.id in ids else None
                if inner is not None and inner.kind == "slice":
                    absorbed[inner.id] = op.id
                    source = inner.inputs[0]
                    if source.id in ids:
                        found.append(ConcatPiece(col, width, negate, source.id,
                                                 inner.attrs["starts"][-1]))
                    else:
                        # copied from the source's tile when the kernel loads it anyway
                        view = self.view_of(source).slice(inner.attrs["starts"],
                                                          inner.attrs["stops"],
                                                          inner.attrs["steps"])
                        found.append(ConcatPiece(col, width, negate, source.id,
                                                 inner.attrs["starts"][-1], view))
                elif inner is None:
                    found.append(ConcatPiece(col, width, negate, view=self.view_of(value)))
                else:
                    raise CompileError(f"internal: a concat piece computed by {inner.kind} "
                                       "in a map kernel", op.span)
                col += width
            pieces[op.id] = found
        return pieces, absorbed

    def lower_elementwise(self, ops, chunked: bool = False,
                          only_store: set[int] | None = None) -> None:
        """One map nest for an elementwise group, or a row kernel when the group holds
        reductions of the last axis (whole rows per tile). `chunked`: the row kernel of one
        pass of `lower_wide_rows`, the last axis a reduction walked in chunks (its
        reductions accumulate across them); `only_store`: the ops whose results are stored
        (default: those used outside `ops`)."""
        reduces = [op for op in ops if op.kind in ROW_REDUCE]
        row_mode = bool(reduces)
        widen = row_mode and not any(_discontinuous_on_narrow(op) for op in ops)

        def home(dtype: str) -> str:
            """A value's vector dtype in this kernel: a row kernel keeps bf16/f16 values in
            f32 (its reductions accumulate in f32: converting whole tiles between the narrow
            dtype and f32 around each of them would cost more vector time than the f32
            arithmetic saves), loading them widened by the DMA and narrowing them at the
            stores; only an explicit cast to a narrow dtype rounds on the way. Not when an
            op would turn the rounding it skips into a different answer (`widen`)."""
            if widen and dtype in VECTOR_FLOATS:
                return "f32"
            return home_dtype(dtype)

        def rounds(target: str) -> bool:
            """Whether a cast to `target` must round a value held in `home(target)`."""
            return target in ROUNDED or home(target) != home_dtype(target)
        shape = tuple(reduces[0].inputs[0].type.shape if row_mode else ops[-1].result.type.shape)
        ids = {op.id for op in ops}
        stored = self.stored(ops) if only_store is None else [
            op for op in ops if op.id in only_store]
        if not stored:
            return  # dead code (when `dce` is disabled): nothing to compute
        pieces, absorbed = self.concat_pieces(ops, ids)
        if chunked and pieces:  # a concat's columns are placed in whole rows
            raise RowTooLong()
        # a concat is built in a tile of whole rows, as a row kernel's rows are
        whole_rows = row_mode or bool(pieces)
        # a widening cast of an operand from outside that nothing else in the kernel reads is
        # a load of it in the wider dtype (the DMA converts as VCVT does), not a conversion
        # on the vector engine (a second load of an operand also read narrow costs more)
        readers: dict[int, int] = {}
        for op in ops:
            for value in set(op.inputs):
                readers[value.id] = readers.get(value.id, 0) + 1
        loaded_casts = {op.id for op in ops if op.kind == "cast" and op.inputs[0].id not in ids
                        and readers[op.inputs[0].id] == 1
                        and tuple(op.result.type.shape) == shape
                        and is_float(op.attrs["dtype"])
                        and home(op.attrs["dtype"]) != home(op.inputs[0].type.dtype)
                        and value_preserving(op.inputs[0].type.dtype, op.attrs["dtype"])}
        # operands from outside: immediates, or views loaded once per tile
        ext: dict[tuple[int, int, int], object] = {}
        ext_values = {}
        for op in ops:
            if op.id in pieces or op.id in absorbed:
                continue  # their operands are the concat's pieces
            if op.id in loaded_casts:
                ext[(op.id, 0, op.id)] = self.view_of(op.inputs[0])
                ext_values[op.id] = op.result
                continue
            for index, value in enumerate(op.inputs):
                if value.id in ids or (value.id, index, op.id) in ext:
                    continue
                if OPS[op.kind].row_kernel:
                    ext[(value.id, index, op.id)] = self.view_of(value)
                else:
                    ext[(value.id, index, op.id)] = self.operand(op, index, ids)
                ext_values[value.id] = value
        outs = {}
        for op in stored:
            out = self.new_tensor(f"t{op.id}", op.result.type, "temp", op.span)
            outs[op.id] = out
        loads = {}
        for key, where in ext.items():
            if not isinstance(where, float) and key[0] not in loads:
                loads[key[0]] = where.broadcast(shape).nest_view()
        load_ids = list(loads)

        def is_col(op) -> bool:
            return row_mode and tuple(op.result.type.shape) != shape

        store_views0 = []
        for op in stored:
            view = outs[op.id]
            if is_col(op):  # a per-row value: its shape is the space's with a last dim of 1
                view = view.broadcast(shape)
            store_views0.append(view.nest_view())
        piece_list = [(cat, index, piece) for cat, found in pieces.items()
                      for index, piece in enumerate(found)
                      if piece.value not in ids and piece.value not in loads]
        piece_views0 = [piece.view.broadcast(shape[:-1] + (piece.cols,)).nest_view()
                        for _, _, piece in piece_list]
        views = [loads[i] for i in load_ids] + store_views0 + piece_views0
        extents = shape
        if not extents:
            extents = (1,)
            views = [_scalar_view(v) for v in views]
        keep = {len(extents) - 1} if whole_rows else set()
        extents, kinds, views, _ = simplify(extents, ("p",) * len(extents), keep, views)
        extents, kinds, views = broadcast_axes_outermost(extents, kinds, views)
        n = len(extents)
        load_views = dict(zip(load_ids, views[:len(load_ids)]))
        piece_views = views[len(load_ids) + len(stored):]
        views = views[:len(load_ids) + len(stored)]
        store_views = {}
        for op, view in zip(stored, views[len(load_ids):]):
            if is_col(op):
                view = _drop_axis(view, n - 1)
            store_views[op.id] = view

        # compact views of broadcast operands: drop the axes they do not move along
        tiles = _Tiles()
        value_buf: dict[int, str] = {}
        compact: dict[int, View] = {}
        dropped = False  # a view lost axes: only the last two axes may be tiled
        for vid, view in load_views.items():
            keep_dims = [d for d in range(view.rank) if view.strides[d] != 0]
            if keep_dims and len(keep_dims) < view.rank:
                dropped = True
                view = View(view.tensor, view.dtype, view.offset,
                            tuple(view.axes[d] for d in keep_dims),
                            tuple(view.dims[d] for d in keep_dims),
                            tuple(view.strides[d] for d in keep_dims),
                            tuple(view.shifts[d] for d in keep_dims))
            compact[vid] = view
            axes = set(view.axes)
            if n - 1 in axes:
                kind = "full" if (n < 2 or n - 2 in axes) else "row"
            else:
                kind = "col" if n >= 2 and n - 2 in axes else "one"
            if n == 1 and kind == "row":
                kind = "full"
            value_buf[vid] = tiles.new(home(ext_values[vid].type.dtype), kind, "ld")
        # the buffer each load fills (a loaded cast's value may move to an output buffer)
        load_buf = {vid: value_buf[vid] for vid in load_views}
        # a piece loaded from GM: a tile of its own columns, copied into the concat's
        piece_buf: dict[tuple[int, int], str] = {}
        for cat, index, piece in piece_list:
            dtype = home(self.op_by_id[cat].result.type.dtype)
            piece_buf[(cat, index)] = tiles.new(dtype, f"cols{piece.cols}", "ld")

        def inputs_of(op) -> list[int]:
            """The ids of the values `op` reads in the kernel: a concat reads its pieces'
            sources."""
            if op.id in pieces:
                return [p.value for p in pieces[op.id] if p.value in ids or p.value in loads]
            return [v.id for v in op.inputs]

        # last use of every value inside the group (stored values live to the end)
        last_use: dict[int, int] = {}
        for position, op in enumerate(ops):
            for value_id in inputs_of(op):
                last_use[value_id] = position
        for op in stored:
            last_use[op.id] = len(ops)

        body: list = []
        init: list = []
        holders: dict[str, set[int]] = {}
        accumulators: dict[int, str] = {}
        if chunked:  # live across every chunk of the row: allocated first, never reused
            for op in reduces:
                accumulators[op.id] = tiles.new(home(op.result.type.dtype), "col")
                tiles.pinned.add(accumulators[op.id])
        pending = None  # a mul waiting to become an FMA with the add after it

        def get(op, index: int, dtype: str, scratch: list):
            value = op.inputs[index]
            key = (value.id, index, op.id)
            if key in ext and isinstance(ext[key], float):
                return ext[key]
            name = value_buf[value.id]
            have, kind, _ = tiles.specs[name]
            if have == dtype:
                return name
            tmp = tiles.new(dtype, kind, "out" if kind in ("full", "col") else "small")
            scratch.append(tmp)
            body.append(Vec(f"CVT.{have}", dtype, tmp, (name,)))
            return tmp

        def round_trip(out: str, work: str, dtype: str, scratch: list) -> None:
            narrow = tiles.new(dtype, tiles.specs[out][1])
            scratch.append(narrow)
            body.append(Vec(f"CVT.{work}", dtype, narrow, (out,)))
            body.append(Vec(f"CVT.{dtype}", work, out, (narrow,)))

        # values that end up in a store's tile: the stored ones and, through chains of casts
        # that may keep their operand's tile (a narrowing the store does), their sources
        stored_ids = {op.id for op in stored}
        for op in reversed(ops):
            if op.kind == "cast" and op.id in stored_ids and op.inputs[0].id in ids:
                stored_ids.add(op.inputs[0].id)

        def in_place(op, position: int, srcs: list, dtype: str, shape_kind: str,
                     compute: str, scratch: list, result_id: int):
            """A compute buffer among `srcs` that `op` may overwrite with its result: it
            holds only values dead after `op`, has the result's dtype and shape, and the op's
            steps read every operand before they write the result (one vector instruction
            reads all its sources first). Reusing it keeps a tile's L1 footprint at the
            buffers really live at once, so tiles (and their DMAs) can be larger."""
            vector = OPS[op.kind].vector
            integer = integer_steps(compute)
            if vector.reads_operand_after_result(op.attrs, integer) \
                    or vector.writes_operand(op.attrs, integer) or vector.temps(integer):
                return None
            stored_result = result_id in stored_ids
            for name in srcs:
                if not isinstance(name, str):
                    continue
                have, kind_, role = tiles.specs[name]
                # a step's load tile is the vector engine's until the step ends: it may hold
                # values computed from it, but not a stored one (the store reads out tiles)
                if role not in ("out", "ld") or (have, kind_) != (dtype, shape_kind) \
                        or (role == "ld" and (kind_ != "full" or stored_result)) \
                        or name in tiles.pinned or name in tiles.free:
                    continue
                if all(last_use.get(v, 0) <= position
                       for v, held in value_buf.items() if held == name):
                    if name in scratch:  # a conversion's scratch tile: now the result's
                        scratch.remove(name)
                    return name
            return None

        for position, op in enumerate(ops):
            if op.id in absorbed or op.id in loaded_casts:
                continue  # computed by its concat's column copies, or by its load
            scratch: list[str] = []
            kind, attrs = op.kind, op.attrs
            result_dtype = op.result.type.dtype
            shape_kind = "col" if is_col(op) else "full"
            only_stored = all(u.id not in ids for u in self.users[op.id])
            if kind == "concat":
                cdt = home(result_dtype)
                out = tiles.new(cdt, shape_kind)
                for index, piece in enumerate(pieces[op.id]):
                    if (op.id, index) in piece_buf:
                        src, src_col = piece_buf[(op.id, index)], 0
                    else:
                        src, src_col = value_buf[piece.value], piece.value_col
                    have, src_kind, _ = tiles.specs[src]
                    if have != cdt:
                        tmp = tiles.new(cdt, src_kind, "out" if src_kind in ("full", "col")
                                        else "small")
                        scratch.append(tmp)
                        body.append(Vec(f"CVT.{have}", cdt, tmp, (src,)))
                        src = tmp
                    body.append(ColumnCopy(cdt, out, piece.col, src, src_col, piece.cols,
                                           piece.negate))
            elif OPS[kind].row_kernel:
                cdt = home(result_dtype)
                src = get(op, 0, cdt, scratch)
                out = accumulators.get(op.id) or tiles.new(cdt, "col")
                # chunked: the accumulator starts once per row and lives across the chunks
                (init if chunked else body).append(
                    Vec("DUP", cdt, out, (reduce_identity(ROW_REDUCE[kind], cdt),)))
                body.append(Reduce(ROW_REDUCE[kind], cdt, out, src))
                if result_dtype in ROUNDED and not only_stored:
                    round_trip(out, cdt, result_dtype, scratch)  # as the reference rounds it
            elif kind == "cast":
                target = attrs["dtype"]
                source = value_buf[op.inputs[0].id]
                src_dtype = tiles.specs[source][0]
                # i8 and fp8 live widened (i32, f32): a cast to them from a wider source
                # must still wrap or round, even though the buffer dtype stays the same
                if src_dtype == home(target) and (
                        not rounds(target) or value_preserving(op.inputs[0].type.dtype, target)):
                    out = source
                elif only_stored and target in NARROW_FLOATS + ("i8",) and src_dtype in (
                        "f32", "i32") and is_float(target) == (src_dtype == "f32"):
                    out = source  # the store converts
                elif rounds(target):
                    out = tiles.new(home(target), shape_kind)
                    narrow = tiles.new(target, shape_kind)
                    scratch.append(narrow)
                    body.append(Vec(f"CVT.{src_dtype}", target, narrow, (source,)))
                    body.append(Vec(f"CVT.{target}", home(target), out, (narrow,)))
                else:
                    out = tiles.new(home(target), shape_kind)
                    body.append(Vec(f"CVT.{src_dtype}", home(target), out, (source,)))
            else:
                if kind == "where":
                    cdt = home(result_dtype)
                    cdt = "i32" if cdt == "bool" else cdt
                    wants = ["bool", cdt, cdt]
                    out_dtype = cdt
                elif OPS[kind].vector.result == "bool":  # a comparison
                    cdt = home(op.inputs[0].type.dtype)
                    cdt = "i32" if cdt == "bool" else cdt
                    wants = [cdt] * len(op.inputs)
                    out_dtype = "bool"
                else:
                    cdt = home(result_dtype)
                    cdt = "i32" if cdt == "bool" else cdt
                    wants = [cdt] * len(op.inputs)
                    out_dtype = cdt
                if pending is not None and kind == "add":
                    # mul then add: one VFMA (a * b + c) instead of two passes
                    mul, product = pending
                    other = 1 if op.inputs[0] is mul.result else 0
                    addend = get(op, other, wants[other], scratch)
                    out = in_place(mul, position, [*product, addend], out_dtype, shape_kind,
                                   cdt, scratch, op.id) or tiles.new(out_dtype, shape_kind)
                    body.append(Vec("FMA", cdt, out, (*product, addend)))
                    pending = None
                    for value in mul.inputs:  # released only now: the FMA reads them
                        if last_use.get(value.id) == position - 1 and value.id in value_buf:
                            name = value_buf[value.id]
                            if name != out and all(last_use.get(v, 0) <= position
                                                   for v in holders.get(name, set())):
                                tiles.release(name)
                elif (kind == "mul" and position + 1 < len(ops) and _fma_pair(
                        op, ops[position + 1], self.users, ids, stored)):
                    srcs = [get(op, i, w, scratch) for i, w in enumerate(wants)]
                    if not scratch:
                        pending = (op, tuple(srcs))
                        continue
                    out = tiles.new(out_dtype, shape_kind)
                    body.extend(elementwise_body(kind, attrs, cdt)(srcs, out, None))
                else:
                    srcs = [get(op, i, w, scratch) for i, w in enumerate(wants)]
                    out = in_place(op, position, srcs, out_dtype, shape_kind, cdt, scratch,
                                   op.id) or tiles.new(out_dtype, shape_kind)
                    body.extend(elementwise_body(kind, attrs, cdt)(srcs, out, None))
                if result_dtype in ROUNDED and not only_stored:
                    round_trip(out, out_dtype, result_dtype, scratch)
            value_buf[op.id] = out
            holders.setdefault(out, set()).add(op.id)
            for name in scratch:
                tiles.release(name)
            # free buffers whose values are all dead
            for value_id in inputs_of(op):
                if last_use.get(value_id) == position and value_id in value_buf:
                    name = value_buf[value_id]
                    held = holders.get(name, set())
                    if all(last_use.get(v, 0) <= position for v in held):
                        tiles.release(name)

        # stores read whole output tiles: copy values that live in a load or compact buffer
        for op in stored:
            name = value_buf[op.id]
            dtype, kind, role = tiles.specs[name]
            want = "col" if is_col(op) else "full"
            if role != "out" or kind != want:
                value_buf[op.id] = tiles.new(dtype, want)
                body.append(Vec("COPY", dtype, value_buf[op.id], (name,)))

        def place(tile) -> tuple[list[Buffer], set[str], int]:
            """The buffers of a nest with `tile`, the setup ones (loaded once per core),
            and the L1 bytes they take."""
            rows, cols = prod(tile[:-1]), tile[-1]
            grid = tuple(-(-e // t) for e, t in zip(extents, tile))
            shapes = {"full": (rows, cols), "row": (1, cols), "col": (rows, 1), "one": (1, 1)}
            shapes.update({kind: (rows, int(kind[4:])) for _, kind, _ in tiles.specs.values()
                           if kind.startswith("cols")})
            setup_names = {load_buf[vid] for vid, view in compact.items()
                           if all(grid[a] == 1 for a in view.axes)
                           and tiles.specs[load_buf[vid]][1] != "full"}
            specs = []
            for name, (dtype, kind, role) in tiles.specs.items():
                if name in setup_names:
                    continue
                r, c = shapes[kind]
                specs.append((name, "L1", dtype, r, c, "ld" if role == "ld" else "out"))
            buffers, used = layout(specs)
            base = used["L1"]
            for name in (n for n in tiles.specs if n in setup_names):  # in allocation order
                dtype, kind, _ = tiles.specs[name]
                r, c = shapes[kind]
                buffers.append(Buffer(name, "L1", dtype, r, c, base, 1, 0))
                base += -(-r * c * itemsize(dtype) // ALIGN) * ALIGN
            return buffers, setup_names, base

        def fits(tile) -> bool:
            return place(tile)[2] <= self.machine.l1_bytes

        if row_mode:
            tile = _row_tile(extents, tiles.specs, self.machine, chunked)
            if chunked:
                kinds = kinds[:-1] + ("r",)
        else:
            tile_fn = map_tile if (whole_rows or dropped) else fused_tile
            # the largest tile of three budgets that fits: broadcast rows of the whole width
            # once per core (their `setup`, when a tile spans whole rows) or in two copies,
            # or every buffer as a full one (always an upper bound: a tile of part of a very
            # long row has broadcast rows of its own width only)
            budgets = [_map_budget(tiles.specs, extents[-1], copies) for copies in (1, 2)]
            budgets.append((2 * sum(itemsize(dt) for dt, _, _ in tiles.specs.values()),
                            2 * ALIGN * (len(tiles.specs) + 1)))
            candidates = [tile_fn(extents, per_elem, self.machine, reserve=reserve)
                          for per_elem, reserve in budgets]
            tile = max((t for t in candidates if fits(t)), key=prod, default=candidates[-1])
            bytes_per_elem, reserve = budgets[-1]
            if whole_rows and tile[-1] != extents[-1]:
                # a concat's tiles span whole rows: the per-core share may be under a row,
                # but a whole row must still fit L1
                capacity = (self.machine.l1_bytes - reserve) // max(bytes_per_elem, 1)
                if extents[-1] > capacity:
                    raise RowTooLong()
                tile = (1,) * (len(extents) - 1) + (extents[-1],)
        for op in stored:
            self.views[op.id] = outs[op.id]
        buffers, setup_names, _ = place(tile)
        setup = tuple(Load(load_buf[vid], compact[vid]) for vid in load_ids
                      if load_buf[vid] in setup_names)
        step = tuple(Load(load_buf[vid], compact[vid]) for vid in load_ids
                     if load_buf[vid] not in setup_names)
        for (cat, index, piece), view in zip(piece_list, piece_views):
            if view.axes[-1] != n - 1:
                raise CompileError("internal: a concat piece's view lost its last axis")
            box = tuple(tile[a] for a in view.axes[:-1]) + (piece.cols,)
            step += (Load(piece_buf[(cat, index)], view, 0.0, box),)
        final = tuple(Store(store_views[op.id], value_buf[op.id]) for op in stored)
        nest = Nest(extents, tile, kinds, tuple(buffers), tuple(init), step + tuple(body),
                    final, setup)
        name = ("row" if row_mode else "fused") if len(ops) > 1 else ops[0].kind
        self.kernel(name, [op.id for op in ops], [nest], ops[-1].span)


def _discontinuous_on_narrow(op) -> bool:
    """Whether `op` is a step function of a bf16/f16 operand (a comparison, floor, ceil,
    sign, a cast to an integer): on a value a row kernel keeps unrounded in f32 it could
    answer differently from the reference, which rounds that value first."""
    if not any(v.type.dtype in VECTOR_FLOATS for v in op.inputs):
        return False
    entry = OPS[op.kind]
    if op.kind == "cast":
        return not is_float(op.attrs["dtype"])
    if entry.fuzz is not None and entry.fuzz.inputs_only:
        return True
    return entry.vector is not None and entry.vector.result == "bool"


def _map_budget(specs: dict, width: int, row_copies: int = 2) -> tuple[int, int]:
    """(L1 bytes per tile element, fixed L1 bytes) of a map nest's buffers, both copies:
    a tile-shaped buffer costs its elements; a broadcast row (1 x cols) at most one row of
    `width` in `row_copies` copies and a 1 x 1 buffer one element, whatever the tile (a
    rows x 1 buffer is counted as a full one: an upper bound); plus the alignment of every
    buffer. Buffers reused in place are one buffer, so only the values live at once take
    L1."""
    per_elem = 0
    fixed = 2 * ALIGN * (len(specs) + 1)
    for dtype, kind, _ in specs.values():
        if kind == "row":
            fixed += row_copies * width * itemsize(dtype)
        elif kind == "one":
            fixed += 2 * itemsize(dtype)
        else:
            per_elem += 2 * itemsize(dtype)
    return per_elem, fixed


def _row_footprint(specs: dict, rows: int, cols: int) -> int:
    """L1 bytes of a row kernel's buffers for a rows x cols tile, as `layout` places them
    (every buffer double-buffered, a row or one buffer once per copy, not per row)."""
    shapes = {"full": (rows, cols), "row": (1, cols), "col": (rows, 1), "one": (1, 1)}
    shapes.update({kind: (rows, int(kind[4:])) for _, kind, _ in specs.values()
                   if kind.startswith("cols")})   # a concat piece's own columns
    _, used = layout([(name, "L1", dtype, *shapes[kind], "ld" if role == "ld" else "out")
                      for name, (dtype, kind, role) in specs.items()])
    return used["L1"]


def _row_tile(extents: tuple[int, ...], specs: dict, machine, chunked: bool
              ) -> tuple[int, ...]:
    """The tile of a row kernel: whole rows (`chunked`: a chunk of the row that divides
    it, as wide as fits with one row), as many rows as give each core ROW_TILES_PER_CORE
    tiles (not under
    `MIN_TILE_ELEMS` elements) and fit L1 by the buffers' real sizes. RowTooLong when not
    even one whole row (or, chunked, one chunk of at least 64 elements) fits."""
    from zhenwu.compiler.backend.tiling import MIN_TILE_ELEMS

    budget = machine.l1_bytes
    width = extents[-1]
    tile = [1] * len(extents)
    if chunked:
        cols = 0
        for parts in range(1, width + 1):
            if width % parts == 0 and _row_footprint(specs, 1, width // parts) <= budget:
                cols = width // parts
                break
            if width // parts < 64:
                break
        if cols == 0:
            raise RowTooLong()
        tile[-1] = cols
        return tuple(tile)
    if _row_footprint(specs, 1, width) > budget:
        raise RowTooLong()
    tile[-1] = width
    if len(extents) >= 2:
        total_rows = prod(extents[:-1])
        # a few tiles per core, so that loads, compute and stores of consecutive tiles
        # overlap through the double buffers
        want = max(-(-total_rows // (ROW_TILES_PER_CORE * machine.cores)),
                   -(-MIN_TILE_ELEMS // width), 1)
        rows = min(extents[-2], want)
        while rows > 1 and _row_footprint(specs, rows, width) > budget:
            rows = max(rows * budget // _row_footprint(specs, rows, width), rows // 2)
            rows = min(rows, extents[-2]) if rows > 1 else 1
        tile[-2] = rows
    return tuple(tile)


def _row_groups(passes: list[Nest], machine) -> list[Nest]:
    """The passes of a wide-row kernel (`lower_wide_rows`) run group of rows by group of
    rows: all passes over the first rows, then all over the next, each group as many rows
    as keep the bytes the passes re-read within half the L2, so that the second and later
    passes read the group from the L2 instead of HBM, and the same whole number of every
    pass's tiles for every core. One group (the passes as they are) when the whole tensor
    fits, when there is no L2, when half the L2 holds too few rows for that, or when the
    nests cannot be cut along their first axis (a view shifted along it). Consecutive
    groups of one size become one loop (`codegen._repetition`)."""
    extents = passes[0].extents
    if machine.l2_bytes <= 0 or len(extents) < 2 or any(
            n.extents[0] != extents[0] or n.kinds[0] != "p" for n in passes):
        return passes
    unit = lcm(*(n.tile[0] for n in passes))  # whole tiles of every pass
    # the bytes of one index of the first axis that the passes read (each tensor once)
    per_index: dict[str, int] = {}
    for nest in passes:
        for stmt in nest.step:
            if isinstance(stmt, Load) and 0 in stmt.view.axes:
                view = stmt.view
                size = itemsize(view.dtype) * prod(
                    d for a, d in zip(view.axes, view.dims) if a != 0)
                per_index[view.tensor] = max(per_index.get(view.tensor, 0), size)
    row_bytes = sum(per_index.values())
    if row_bytes <= 0:
        return passes
    # a whole number of tiles for every core in every pass: when half the L2 holds fewer
    # rows, a group would leave cores idle (the passes as they are)
    spread = unit * machine.cores
    rows = machine.l2_bytes // 2 // row_bytes // spread * spread
    if rows == 0 or rows >= extents[0]:
        return passes
    groups = []
    for start in range(0, extents[0], rows):
        count = min(rows, extents[0] - start)
        sliced = [_first_rows(nest, start, count) for nest in passes]
        if any(n is None for n in sliced):
            return passes
        groups += sliced
    return groups


def _first_rows(nest: Nest, start: int, count: int) -> Nest | None:
    """`nest` over `count` indices of its first axis from `start` (every view along it
    moved to start there), or None when a view along that axis is shifted or broadcast, or
    an iota counts along it."""
    def moved(view: View) -> View | None:
        if 0 not in view.axes:
            return view
        i = view.axes.index(0)
        if view.shifts[i] != 0 or view.strides[i] == 0 or view.dims[i] != nest.extents[0]:
            return None
        dims = view.dims[:i] + (count,) + view.dims[i + 1:]
        return replace(view, offset=view.offset + start * view.strides[i], dims=dims)

    def statement(stmt):
        if isinstance(stmt, (Load, Store)):
            view = moved(stmt.view)
            return None if view is None else replace(stmt, view=view)
        if isinstance(stmt, Iota) and stmt.axis == 0:
            return None  # its values are coordinates along the cut axis
        return stmt

    parts = []
    for part in (nest.init, nest.step, nest.final, nest.setup):
        stmts = tuple(statement(s) for s in part)
        if any(s is None for s in stmts):
            return None
        parts.append(stmts)
    init, step, final, setup = parts
    return replace(nest, extents=(count,) + nest.extents[1:], init=init, step=step,
                   final=final, setup=setup)


def _whole(view: View, tensor) -> bool:
    """Whether `view` walks all of `tensor` in row-major order (one contiguous run)."""
    numel = prod(tensor.shape)
    if view.offset != 0 or any(view.shifts) or prod(view.dims) != numel:
        return False
    expect = 1
    for dim, stride in reversed(list(zip(view.dims, view.strides))):
        if dim != 1 and stride != expect:
            return False
        expect *= dim
    return True


def _drop_reshape_copies(tensors, kernels, spans):
    """An output that is a reshape of a temporary is that temporary (the caller reshapes
    outputs to the graph's shapes): drop the copy kernel and make the temporary the output."""
    by_name = {t.name: t for t in tensors}
    replaced: dict[str, str] = {}   # output tensor -> the temporary standing in for it
    kept = []
    for kernel in kernels:
        nest = kernel.nests[0] if len(kernel.nests) == 1 else None
        stmts = nest.statements() if nest is not None else ()
        loads = [s for s in stmts if isinstance(s, Load)]
        stores = [s for s in stmts if isinstance(s, Store)]
        if (kernel.name.startswith("copy") and len(loads) == 1 and len(stores) == 1):
            src, dst = by_name[loads[0].view.tensor], by_name[stores[0].view.tensor]
            if (src.role == "temp" and dst.role == "out" and src.dtype == dst.dtype
                    and src.name not in replaced.values() and _whole(loads[0].view, src)
                    and _whole(stores[0].view, dst)):
                replaced[dst.name] = src.name
                continue
        kept.append(kernel)
    if not replaced:
        return tensors, kernels, spans
    out = []
    for tensor in tensors:
        if tensor.name in replaced:
            out.append(replace(by_name[replaced[tensor.name]], role="out"))
        elif tensor.name not in replaced.values():
            out.append(tensor)
    return out, kept, spans


def _fma_pair(mul, add, users, ids, stored) -> bool:
    """`add(mul(a, b), c)` can be one VFMA: the product feeds only the add (the next op),
    all f32 (a narrow product is rounded before the add in the reference), and c is not
    the product."""
    dtype = mul.result.type.dtype
    return (add.kind == "add" and [u.id for u in users[mul.id]] == [add.id] and mul not in stored
            and dtype == add.result.type.dtype and dtype == "f32"
            and sum(v is mul.result for v in add.inputs) == 1
            and all(v.type.dtype == dtype for v in mul.inputs + add.inputs))


def broadcast_axes_outermost(extents, kinds, views):
    """Reorder a map nest's axes (all but the last) so that those some operand broadcasts
    along come first: the tile spans only the last two axes, and a broadcast axis there would
    keep it small (rope's cos[s, d] over x[s, h, d]: tiles of [1, h, d] become [1, s, d]).
    Every view's dims follow the new order, so each box stays row-major in nest order."""
    n = len(extents)
    if n < 3:
        return extents, kinds, views
    def broadcast(axis: int) -> bool:
        return any(axis not in v.axes or v.strides[v.axes.index(axis)] == 0 for v in views)
    inner = [a for a in range(n - 1) if not broadcast(a)]
    order = [a for a in range(n - 1) if broadcast(a)] + inner + [n - 1]
    if order == list(range(n)) or not inner:
        return extents, kinds, views
    new_of = {old: new for new, old in enumerate(order)}
    moved = []
    for v in views:
        dims = sorted(range(v.rank), key=lambda d: new_of[v.axes[d]])
        moved.append(View(v.tensor, v.dtype, v.offset, tuple(new_of[v.axes[d]] for d in dims),
                          tuple(v.dims[d] for d in dims), tuple(v.strides[d] for d in dims),
                          tuple(v.shifts[d] for d in dims)))
    return (tuple(extents[a] for a in order), tuple(kinds[a] for a in order), moved)


def _drop_axis(view: View, axis: int) -> View:
    if axis not in view.axes:
        return view
    if view.rank == 1:  # a one-element result: the tile's first element is stored
        return View(view.tensor, view.dtype, view.offset, view.axes, (1,), (1,), view.shifts)
    d = view.axes.index(axis)
    return View(view.tensor, view.dtype, view.offset, view.axes[:d] + view.axes[d + 1:],
                view.dims[:d] + view.dims[d + 1:], view.strides[:d] + view.strides[d + 1:],
                view.shifts[:d] + view.shifts[d + 1:])


def lower_fused(fn, machine, plan, gemm_tiles: dict | None = None,
                multipass_rows: bool = False):
    """(tensors, kernels, spans) of `fn` lowered by the groups of `plan`; `gemm_tiles`
    overrides the cost model's tiling of some matmuls (from `--tune`); `multipass_rows`
    lowers every row group with reductions as `lower_wide_rows` does (a pass per reduction,
    then one for the output, each reading the rows again), also when its rows fit L1."""
    low = FusedLowering(fn, machine, plan)
    low.gemm_tiles = dict(gemm_tiles or {})
    low.multipass_rows = multipass_rows
    return low.run()
