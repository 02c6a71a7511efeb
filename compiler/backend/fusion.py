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
  accumulates in ACC and the epilogue runs on the accumulator tile before the store.
"""

from __future__ import annotations

from math import prod

from compiler.backend.kernel_ir import Buffer, Load, Nest, Store, Vec, View
from compiler.backend.lower import (
    ALIGN,
    COMPARE,
    Lowering,
    _scalar_view,
    compute_dtype,
    elementwise_body,
    layout,
    simplify,
)
from compiler.backend.tiling import map_tile
from compiler.graph.dtypes import itemsize
from compiler.graph.ir import Function
from compiler.passes.fuse import BINARY

NARROW_FLOATS = ("bf16", "f16", "fp8")


def home_dtype(dtype: str) -> str:
    """The vector dtype a value of `dtype` is kept in inside a fused kernel."""
    return "bool" if dtype == "bool" else compute_dtype(dtype)


def may_be_immediate(op, index: int) -> bool:
    """Operand `index` of `op` can be a float immediate of its instruction."""
    if op.kind in BINARY or op.kind in COMPARE:
        return True
    return op.kind == "where" and index > 0


class _Tiles:
    """Buffers of one fused map nest, allocated by liveness.

    A buffer is `full` (the tile), `row` (1 x cols), `col` (rows x 1) or `one` (1 x 1);
    compute buffers are reused once every value they hold is dead.
    """

    def __init__(self):
        self.specs: dict[str, tuple[str, str, str]] = {}   # name -> (dtype, shape kind, role)
        self.free: list[str] = []
        self.count = 0

    def new(self, dtype: str, kind: str = "full", role: str = "out") -> str:
        if role == "out" and kind == "full":
            for name in self.free:
                if self.specs[name][0] == dtype:
                    self.free.remove(name)
                    return name
        name = f"b{self.count}"
        self.count += 1
        self.specs[name] = (dtype, kind, role)
        return name

    def release(self, name: str) -> None:
        _dtype, kind, role = self.specs[name]
        if role == "out" and kind == "full" and name not in self.free:
            self.free.append(name)


class FusedLowering(Lowering):
    """Lowering by fusion groups (see the module docstring)."""

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
            return super().run()
        finally:
            self.fn = fn

    def lower_op(self, op) -> None:
        group = self.group_of[op.id]
        if group.kind not in ("elementwise", "matmul"):
            super().lower_op(op)
            return
        if op.id != group.op_ids[0]:
            return  # lowered with its group
        ops = [self.op_by_id[i] for i in group.op_ids]
        if group.kind == "matmul":
            from compiler.backend.gemm import lower_matmul_group

            lower_matmul_group(self, ops)
        else:
            self.lower_elementwise(ops)

    # -------------------------------------------------------------- helpers

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

    def lower_elementwise(self, ops) -> None:
        shape = tuple(ops[-1].result.type.shape)
        ids = {op.id for op in ops}
        stored = self.stored(ops)
        outs = {}
        for op in stored:
            out = self.new_tensor(f"t{op.id}", op.result.type, "temp", op.span)
            self.views[op.id] = out
            outs[op.id] = out
        # operands from outside: immediates, or views loaded once per tile
        ext: dict[int, object] = {}
        ext_values = {}
        for op in ops:
            for index, value in enumerate(op.inputs):
                if value.id in ids or (value.id, index, op.id) in ext:
                    continue
                ext[(value.id, index, op.id)] = self.operand(op, index, ids)
                ext_values[value.id] = value
        loads = {}
        for key, where in ext.items():
            if not isinstance(where, float) and key[0] not in loads:
                loads[key[0]] = where.broadcast(shape).nest_view()
        load_ids = list(loads)
        views = [loads[i] for i in load_ids] + [outs[op.id].nest_view() for op in stored]
        extents = shape
        if not extents:
            extents = (1,)
            views = [_scalar_view(v) for v in views]
        extents, kinds, views, _ = simplify(extents, ("p",) * len(extents), set(), views)
        load_views = dict(zip(load_ids, views[:len(load_ids)]))
        store_views = dict(zip([op.id for op in stored], views[len(load_ids):]))
        n = len(extents)

        # compact views of broadcast operands: drop the axes they do not move along
        tiles = _Tiles()
        value_buf: dict[int, str] = {}
        compact: dict[int, View] = {}
        for vid, view in load_views.items():
            keep = [d for d in range(view.rank) if view.strides[d] != 0]
            if keep and len(keep) < view.rank:
                view = View(view.tensor, view.dtype, view.offset,
                            tuple(view.axes[d] for d in keep), tuple(view.dims[d] for d in keep),
                            tuple(view.strides[d] for d in keep),
                            tuple(view.shifts[d] for d in keep))
            compact[vid] = view
            axes = set(view.axes)
            if n - 1 in axes:
                kind = "full" if (n < 2 or n - 2 in axes) else "row"
            else:
                kind = "col" if n >= 2 and n - 2 in axes else "one"
            if n == 1 and kind == "row":
                kind = "full"
            value_buf[vid] = tiles.new(home_dtype(ext_values[vid].type.dtype), kind, "ld")

        # last use of every value inside the group (stored values live to the end)
        last_use: dict[int, int] = {}
        for position, op in enumerate(ops):
            for value in op.inputs:
                last_use[value.id] = position
        for op in stored:
            last_use[op.id] = len(ops)

        body: list = []
        holders: dict[str, set[int]] = {}

        def get(op, index: int, dtype: str, scratch: list):
            value = op.inputs[index]
            key = (value.id, index, op.id)
            if key in ext and isinstance(ext[key], float):
                return ext[key]
            name = value_buf[value.id]
            have, kind, _ = tiles.specs[name]
            if have == dtype:
                return name
            tmp = tiles.new(dtype, kind, "out" if kind == "full" else "small")
            scratch.append(tmp)
            body.append(Vec(f"CVT.{have}", dtype, tmp, (name,)))
            return tmp

        for position, op in enumerate(ops):
            scratch: list[str] = []
            kind, attrs = op.kind, op.attrs
            result_dtype = op.result.type.dtype
            only_stored = all(u.id not in ids for u in self.users[op.id])
            if kind == "cast":
                target = attrs["dtype"]
                source = value_buf.get(op.inputs[0].id)
                src_dtype = tiles.specs[source][0] if source else None
                if target in NARROW_FLOATS + ("i8",):
                    if only_stored and src_dtype == home_dtype(target):
                        out = source  # the store converts
                    else:
                        src = get(op, 0, src_dtype, scratch)
                        narrow = tiles.new(target)
                        scratch.append(narrow)
                        out = tiles.new(home_dtype(target))
                        body.append(Vec(f"CVT.{src_dtype}", target, narrow, (src,)))
                        body.append(Vec(f"CVT.{target}", home_dtype(target), out, (narrow,)))
                elif src_dtype == home_dtype(target):
                    out = source
                else:
                    out = tiles.new(home_dtype(target))
                    body.append(Vec(f"CVT.{src_dtype}", home_dtype(target), out, (source,)))
            else:
                if kind == "where":
                    cdt = compute_dtype(result_dtype)
                    wants = ["bool", cdt, cdt]
                    out_dtype = cdt
                else:
                    cdt = compute_dtype(op.inputs[0].type.dtype)
                    wants = [cdt] * len(op.inputs)
                    out_dtype = "bool" if kind in COMPARE else cdt
                srcs = [get(op, i, w, scratch) for i, w in enumerate(wants)]
                out = tiles.new(out_dtype)
                body.extend(elementwise_body(kind, attrs, cdt)(srcs, out, None))
                if result_dtype in NARROW_FLOATS and not only_stored:
                    # the reference rounds every bf16/f16/fp8 result (a store would too)
                    narrow = tiles.new(result_dtype)
                    scratch.append(narrow)
                    body.append(Vec(f"CVT.{out_dtype}", result_dtype, narrow, (out,)))
                    body.append(Vec(f"CVT.{result_dtype}", out_dtype, out, (narrow,)))
            value_buf[op.id] = out
            holders.setdefault(out, set()).add(op.id)
            for name in scratch:
                tiles.release(name)
            # free buffers whose values are all dead
            for value in op.inputs:
                if last_use.get(value.id) == position and value.id in value_buf:
                    name = value_buf[value.id]
                    held = holders.get(name, set())
                    if all(last_use.get(v, 0) <= position for v in held):
                        tiles.release(name)

        # stores read whole output tiles: copy values that live in a load or compact buffer
        for op in stored:
            name = value_buf[op.id]
            dtype, kind, role = tiles.specs[name]
            if role != "out" or kind != "full":
                value_buf[op.id] = tiles.new(dtype)
                body.append(Vec("COPY", dtype, value_buf[op.id], (name,)))

        # tile: every full buffer costs an element per copy; small ones are budgeted as full
        bytes_per_elem = 2 * sum(itemsize(dt) for dt, _, _ in tiles.specs.values())
        tile = map_tile(extents, bytes_per_elem, self.machine,
                        reserve=2 * ALIGN * (len(tiles.specs) + 1))
        rows, cols = prod(tile[:-1]), tile[-1]
        grid = tuple(-(-e // t) for e, t in zip(extents, tile))
        shapes = {"full": (rows, cols), "row": (1, cols), "col": (rows, 1), "one": (1, 1)}
        setup_names = {value_buf[vid] for vid, view in compact.items()
                       if all(grid[a] == 1 for a in view.axes)
                       and tiles.specs[value_buf[vid]][1] != "full"}
        specs = []
        for name, (dtype, kind, role) in tiles.specs.items():
            if name in setup_names:
                continue
            r, c = shapes[kind]
            specs.append((name, "L1", dtype, r, c, "ld" if role == "ld" else "out"))
        buffers, used = layout(specs)
        base = used["L1"]
        for name in setup_names:
            dtype, kind, _ = tiles.specs[name]
            r, c = shapes[kind]
            buffers.append(Buffer(name, "L1", dtype, r, c, base, 1, 0))
            base += -(-r * c * itemsize(dtype) // ALIGN) * ALIGN
        setup = tuple(Load(value_buf[vid], compact[vid]) for vid in load_ids
                      if value_buf[vid] in setup_names)
        step = tuple(Load(value_buf[vid], compact[vid]) for vid in load_ids
                     if value_buf[vid] not in setup_names)
        final = tuple(Store(store_views[op.id], value_buf[op.id]) for op in stored)
        nest = Nest(extents, tile, kinds, tuple(buffers), (), step + tuple(body), final,
                    setup)
        self.kernel("fused" if len(ops) > 1 else ops[0].kind, [op.id for op in ops], [nest],
                    ops[-1].span)


def lower_fused(fn, machine, plan):
    """(tensors, kernels, spans) of `fn` lowered by the groups of `plan`."""
    return FusedLowering(fn, machine, plan).run()
