"""`shard`: GSPMD-style sharding propagation, from a global Graph IR function to the SPMD
function every chip runs (local shapes, with the collectives it needs).

A value's sharding (`Spec`) names, per dim, the mesh axis it is split over (None:
replicated), and `partial`: the axis over which chips hold partial sums still to be added.
Parameters and results take their shardings from the annotations (`F@tp`), and a value
pinned with `shard(x, "_, tp")` takes the pinned one; everything else is propagated
forward, op by op, by the rules below. Backward hints (compiler/shard/hints.py) carry the
results' and pins' shardings back to the ops that feed them: where an op's result is
hinted, its replicated operands count as split (a local slice), so the op computes only its
share; of the two passes (plain forward, forward with hints) the one that moves fewer bytes
between chips wins. An op whose inputs disagree gets them resharded first, inserting
collectives:

- elementwise ops, `where`, `cast`, `broadcast_to`: a dim keeps the axis of the operands
  that are split along it (replicated operands are sliced to match: a local view, no
  traffic); operands split over two different axes there are gathered;
- `matmul`/`einsum`: free and batch dims keep their axes; a contracted dim split over an
  axis (in one operand or both; a replicated one is sliced) gives partial sums (a local
  product, then an all-reduce, or a reduce-scatter where the consumer wants the result
  split: the Megatron pattern, column- then row-parallel, is one all-reduce);
- `reduce_sum` over a split dim: partial sums; other reductions gather the dim first;
- `transpose` permutes the axes; `reshape` keeps an axis when the split dim is the outermost
  of its group and the new outermost dim divides (heads `[T, H*HD]` -> `[T, H, HD]`);
- `slice`, `concat`, `pad` keep axes on dims they leave whole; `conv2d` and pools keep the
  batch dim's axis; anything else runs replicated (its split inputs are gathered).

Collectives appear in the SPMD function as ops on chip-major buffers (`[p, *piece]`, piece
r for the chip of rank r along the axis), with ordinary reshape/transpose ops around them:
`all_reduce` (x -> x), `all_gather` (piece -> [p, piece]), `reduce_scatter` ([p, piece] ->
piece), `all_to_all` ([p, block] -> [p, block], block j to chip j) and `shard_slice`
([p, piece] -> piece, local). compiler/shard/spmd.py lowers them to DMA.PUT programs.
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.graph.ir import Function, Op, TensorType, Value
from zhenwu.compiler.graph.ops import OPS, reshape_groups
from zhenwu.compiler.shard.annotations import DimAxis
from zhenwu.compiler.shard.mesh import Mesh
from zhenwu.isa.errors import Diagnostic, SourceSpan

COLLECTIVE_KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "shard_slice")
# the reductions a partial sum survives (a local reduce_sum of partial sums is partial)
_LINEAR_REDUCE = ("reduce_sum",)


@dataclass(frozen=True)
class Spec:
    """A value's sharding: per dim a mesh axis or None, and the axis of pending sums."""

    dims: tuple[str | None, ...]
    partial: str | None = None

    def without_partial(self) -> Spec:
        return Spec(self.dims, None)

    def __str__(self) -> str:
        dims = ", ".join(a or "_" for a in self.dims)
        return f"[{dims}]" + (f" partial({self.partial})" if self.partial else "")


def replicated(rank: int) -> Spec:
    return Spec((None,) * rank)


def local_shape(shape: tuple[int, ...], spec: Spec, mesh: Mesh) -> tuple[int, ...]:
    return tuple(n if a is None else n // mesh.size(a) for n, a in zip(shape, spec.dims))


class _Builder:
    """Emits the SPMD function: local values, each with its global type and Spec."""

    def __init__(self, fn: Function, mesh: Mesh):
        self.fn = fn
        self.mesh = mesh
        self.params: list[Value] = []
        self.ops: list[Op] = []
        self.next_id = fn.next_id()
        # global value id -> (local value, spec, global type)
        self.env: dict[int, tuple[Value, Spec, TensorType]] = {}
        # (local value id, target spec) -> resharded local value (one collective per need)
        self.cache: dict[tuple[int, Spec], Value] = {}
        # partial value id -> (its sums, their spec)
        self.resolved: dict[int, tuple[Value, Spec]] = {}
        self.collectives = 0

    def fresh(self, type_: TensorType, name: str | None = None) -> Value:
        value = Value(self.next_id, type_, name)
        self.next_id += 1
        return value

    def emit(self, kind: str, inputs: list[Value], attrs: dict, type_: TensorType | None,
             span: SourceSpan | None, origin: str | None = None) -> Value:
        if type_ is None:
            try:
                type_ = OPS[kind].infer(tuple(v.type for v in inputs), attrs)
            except Diagnostic as err:  # a rule broken by a local shape: a bug, say where
                raise Diagnostic(f"sharding produced an invalid {kind}: {err.message}",
                                 span) from None
        result = self.fresh(type_)
        self.ops.append(Op(result.id, kind, tuple(inputs), dict(attrs), result, span, origin))
        if kind in COLLECTIVE_KINDS:
            self.collectives += 1
        return result

    # ---- resharding ---------------------------------------------------------------------

    def reshard(self, value: Value, spec: Spec, target: Spec, span) -> Value:
        """`value` (local, sharded `spec`) as sharded `target` (no partial), through
        collectives and local layout ops."""
        key = (value.id, target)
        if key in self.cache:
            return self.cache[key]
        current = spec
        if current.partial is not None and value.id in self.resolved:
            # partial sums are added up once (an all-reduce works in place)
            value, current = self.resolved[value.id]
        elif current.partial is not None:
            partial_id = value.id
            axis = current.partial
            dims = current.dims
            scatter = next((d for d, a in enumerate(target.dims) if a == axis
                            and dims[d] is None
                            and value.type.shape[d] % self.mesh.size(axis) == 0), None)
            if scatter is not None:
                value = self.reduce_scatter(value, axis, scatter, span)
                current = Spec(tuple(axis if d == scatter else a for d, a in enumerate(dims)))
            else:
                value = self.emit("all_reduce", [value], {"axis": axis}, value.type, span)
                current = Spec(dims)
            self.resolved[partial_id] = (value, current)
        dims = list(current.dims)
        for d, axis in enumerate(current.dims):
            if axis is None or target.dims[d] == axis:
                continue
            move = next((e for e, a in enumerate(target.dims) if a == axis and dims[e] is None
                         and value.type.shape[e] % self.mesh.size(axis) == 0), None)
            if move is not None:
                value = self.all_to_all(value, axis, d, move, span)
                dims[d], dims[move] = None, axis
            else:
                value = self.all_gather(value, axis, d, span)
                dims[d] = None
        for d, axis in enumerate(target.dims):
            if axis is not None and dims[d] is None:
                value = self.shard_slice(value, axis, d, span)
                dims[d] = axis
        self.cache[key] = value
        return value

    def chip_major(self, value: Value, axis: str, dim: int, span) -> Value:
        """[.., n, ..] -> [p, .., n/p, ..]: piece r of dim `dim` first."""
        p = self.mesh.size(axis)
        shape = value.type.shape
        split = shape[:dim] + (p, shape[dim] // p) + shape[dim + 1:]
        value = self.emit("reshape", [value], {"shape": split}, None, span)
        perm = (dim,) + tuple(i for i in range(len(split)) if i != dim)
        return self.emit("transpose", [value], {"perm": perm}, None, span) if dim else value

    def unchip_major(self, value: Value, dim: int, span) -> Value:
        """[p, .., m, ..] -> [.., p*m, ..] (the inverse of chip_major)."""
        shape = value.type.shape
        rank = len(shape) - 1
        if dim:
            perm = tuple(range(1, dim + 1)) + (0,) + tuple(range(dim + 1, rank + 1))
            value = self.emit("transpose", [value], {"perm": perm}, None, span)
        inner = shape[1:]
        merged = inner[:dim] + (shape[0] * inner[dim],) + inner[dim + 1:]
        return self.emit("reshape", [value], {"shape": merged}, None, span)

    def all_gather(self, value: Value, axis: str, dim: int, span) -> Value:
        p = self.mesh.size(axis)
        stacked = TensorType(value.type.dtype, (p,) + value.type.shape)
        gathered = self.emit("all_gather", [value], {"axis": axis}, stacked, span)
        return self.unchip_major(gathered, dim, span)

    def reduce_scatter(self, value: Value, axis: str, dim: int, span) -> Value:
        major = self.chip_major(value, axis, dim, span)
        piece = TensorType(value.type.dtype, major.type.shape[1:])
        return self.emit("reduce_scatter", [major], {"axis": axis}, piece, span)

    def shard_slice(self, value: Value, axis: str, dim: int, span) -> Value:
        major = self.chip_major(value, axis, dim, span)
        piece = TensorType(value.type.dtype, major.type.shape[1:])
        return self.emit("shard_slice", [major], {"axis": axis}, piece, span)

    def all_to_all(self, value: Value, axis: str, src: int, dst: int, span) -> Value:
        """Split over `axis` along dim `src` -> along dim `dst`."""
        major = self.chip_major(value, axis, dst, span)
        swapped = self.emit("all_to_all", [major], {"axis": axis}, major.type, span)
        # block j came from chip j: its part of dim src (dim src + 1 of the stacked value)
        return self.unchip_major(swapped, src, span)


# ---- rules ------------------------------------------------------------------------------


def _combine(specs: list[Spec], types: list[TensorType], out: TensorType,
             skip: set[int] | None = None) -> tuple[list[Spec], Spec]:
    """Broadcasting agreement (numpy alignment): per output dim, the axis every operand
    that is not broadcast there has; returns the wanted operand specs and the result's."""
    rank = out.rank
    out_dims: list[str | None] = []
    for j in range(rank):
        axes = set()
        for spec, t in zip(specs, types):
            d = j - (rank - t.rank)
            if d < 0 or (t.shape[d] == 1 and out.shape[j] != 1):
                continue
            axes.add(spec.dims[d])
        split = axes - {None}
        # one axis among the operands: replicated ones are sliced to it (a local view, no
        # traffic); two different axes: gathered
        axis = split.pop() if len(split) == 1 else None
        if skip and j in skip:
            axis = None
        out_dims.append(axis)
    out_dims = _unique(out_dims)
    wanted = []
    for t in types:
        dims = []
        for d in range(t.rank):
            j = d + rank - t.rank
            broadcast = t.shape[d] == 1 and out.shape[j] != 1
            dims.append(None if broadcast else out_dims[j])
        wanted.append(Spec(tuple(dims)))
    return wanted, Spec(tuple(out_dims))


def _unique(dims: list[str | None], taken: set[str] | None = None) -> list[str | None]:
    """Each axis on one dim only (the first keeps it)."""
    seen = set(taken or ())
    out = []
    for axis in dims:
        if axis is not None and axis in seen:
            axis = None
        if axis is not None:
            seen.add(axis)
        out.append(axis)
    return out


def _divisible(spec: Spec, type_: TensorType, mesh: Mesh) -> Spec:
    """`spec` where it can hold: dims split only where the axis divides them, and an axis
    of one chip splits nothing (and leaves no partial sums)."""
    def splits(axis: str | None, n: int) -> bool:
        return axis is not None and mesh.size(axis) > 1 and n % mesh.size(axis) == 0

    partial = spec.partial if spec.partial and mesh.size(spec.partial) > 1 else None
    return Spec(tuple(a if splits(a, n) else None for n, a in zip(type_.shape, spec.dims)),
                partial)


def _reshape_rule(spec: Spec, src: TensorType, dst: TensorType, mesh: Mesh):
    in_dims = list(spec.dims)
    out_dims: list[str | None] = [None] * dst.rank
    for gi, gj in reshape_groups(src.shape, dst.shape):
        lead_in = next((d for d in gi if src.shape[d] > 1), None)
        lead_out = next((d for d in gj if dst.shape[d] > 1), None)
        for d in gi:
            axis = in_dims[d]
            if axis is None:
                continue
            if d == lead_in and lead_out is not None and \
                    dst.shape[lead_out] % mesh.size(axis) == 0:
                out_dims[lead_out] = axis
            else:
                in_dims[d] = None
    return [Spec(tuple(in_dims))], Spec(tuple(out_dims))


def _einsum_rule(spec_text: str, specs: list[Spec], types: list[TensorType]):
    inputs, output = spec_text.replace(" ", "").split("->")
    subs = inputs.split(",")
    letter_axis: dict[str, str | None] = {}
    for sub, spec in zip(subs, specs):
        for letter, axis in zip(sub, spec.dims):
            known = letter_axis.get(letter)
            if letter not in letter_axis or known is None:
                letter_axis[letter] = axis
            elif axis is not None and axis != known:
                letter_axis[letter] = None  # two axes: gathered
    contracted = [c for c in letter_axis if c not in output]
    partial = None
    for letter in contracted:
        axis = letter_axis[letter]
        if axis is not None and partial is None and axis not in \
                {letter_axis[c] for c in output}:
            partial = axis
        elif axis is not None and axis != partial:
            letter_axis[letter] = None
    out_dims = _unique([letter_axis[c] for c in output], {partial} if partial else None)
    for c, axis in zip(output, out_dims):
        letter_axis[c] = axis
    wanted = [Spec(tuple(letter_axis[c] for c in sub)) for sub in subs]
    return wanted, Spec(tuple(out_dims), partial)


def _matmul_rule(specs: list[Spec], types: list[TensorType], out: TensorType):
    a, b = specs
    ta, tb = types
    # the contracted dim split in one operand: the other is sliced to match (partial sums)
    k_axes = {a.dims[-1], b.dims[-2]} - {None}
    k_axis = k_axes.pop() if len(k_axes) == 1 else None
    batch_specs = [Spec(a.dims[:-2]), Spec(b.dims[:-2])]
    batch_types = [TensorType(ta.dtype, ta.shape[:-2]), TensorType(tb.dtype, tb.shape[:-2])]
    batch_out = TensorType(out.dtype, out.shape[:-2])
    wanted_batch, batch = _combine(batch_specs, batch_types, batch_out)
    dims = _unique(list(batch.dims) + [a.dims[-2], b.dims[-1]], {k_axis} if k_axis else None)
    m_axis, n_axis = dims[-2], dims[-1]
    want_a = Spec(wanted_batch[0].dims + (m_axis, k_axis))
    want_b = Spec(wanted_batch[1].dims + (k_axis, n_axis))
    return [want_a, want_b], Spec(tuple(dims), k_axis)


def _rule(op: Op, specs: list[Spec], types: list[TensorType], mesh: Mesh):
    """The shardings `op` wants for its operands and the one its result gets."""
    out = op.result.type
    kind = op.kind
    fusion = OPS[kind].fusion if kind in OPS else "opaque"
    if kind in ("constant", "iota"):
        return [], replicated(out.rank)
    if fusion == "elementwise" or kind == "broadcast_to":
        return _combine(specs, types, out)
    if kind == "transpose":
        perm = op.attrs["perm"]
        dims = specs[0].dims
        return [Spec(dims)], Spec(tuple(dims[p] for p in perm))
    if kind == "reshape":
        return _reshape_rule(specs[0], types[0], out, mesh)
    if kind == "matmul":
        return _matmul_rule(specs, types, out)
    if kind == "einsum":
        return _einsum_rule(op.attrs["spec"], specs, types)
    if fusion == "reduce" and kind not in ("maxpool2d", "avgpool2d"):
        axes = set(op.attrs["axes"])
        dims = list(specs[0].dims)
        partial = None
        if kind in _LINEAR_REDUCE:
            split = [dims[d] for d in axes if dims[d] is not None]
            partial = split[0] if split else None
        dims = [None if d in axes and a != partial else a for d, a in enumerate(dims)]
        kept = [a for d, a in enumerate(dims) if d not in axes]
        if op.attrs["keepdims"]:
            kept = [None if d in axes else a for d, a in enumerate(dims)]
        return [Spec(tuple(dims))], Spec(tuple(kept), partial)
    if kind in ("slice", "pad"):
        dims = list(specs[0].dims)
        shape = types[0].shape
        for d in range(len(dims)):
            if kind == "slice":
                whole = (op.attrs["starts"][d] == 0 and op.attrs["stops"][d] >= shape[d]
                         and op.attrs["steps"][d] == 1)
            else:
                whole = tuple(op.attrs["pads"][d]) == (0, 0)
            if not whole:
                dims[d] = None
        return [Spec(tuple(dims))], Spec(tuple(dims))
    if kind == "concat":
        axis = op.attrs["axis"]
        wanted, result = _combine(specs, types, out, skip={axis})
        return wanted, result
    if kind in ("conv2d", "maxpool2d", "avgpool2d"):
        batch = specs[0].dims[0]
        wanted = [Spec((batch,) + (None,) * (types[0].rank - 1))]
        wanted += [replicated(t.rank) for t in types[1:]]
        return wanted, Spec((batch,) + (None,) * (out.rank - 1))
    return [replicated(t.rank) for t in types], replicated(out.rank)


def _local_attrs(op: Op, local_out: tuple[int, ...], local_in: list[tuple[int, ...]]) -> dict:
    attrs = dict(op.attrs)
    if op.kind in ("reshape", "broadcast_to"):
        attrs["shape"] = local_out
    elif op.kind == "slice":
        attrs["stops"] = tuple(min(stop, n) if start == 0 and step == 1 else stop
                               for start, stop, step, n in zip(
                                   attrs["starts"], attrs["stops"], attrs["steps"],
                                   local_in[0]))
    return attrs


# ---- the pass ---------------------------------------------------------------------------


@dataclass
class SpmdFunction:
    """The result: the function every chip runs (local shapes, collectives as ops), and the
    sharding of every parameter and result (global types kept for splitting and joining)."""

    fn: Function
    mesh: Mesh
    param_specs: list[Spec]
    result_specs: list[Spec]
    global_fn: Function

    @property
    def collectives(self) -> list[Op]:
        return [op for op in self.fn.ops if op.kind in COLLECTIVE_KINDS]


def _annotation_spec(items, type_: TensorType, mesh: Mesh, what: str) -> Spec:
    dims: list[str | None] = [None] * type_.rank
    for item in items:
        if item.axis not in mesh.names:
            known = ", ".join(mesh.names)
            raise Diagnostic(f"'{item.axis}' is not an axis of the mesh ({mesh}); mesh axes: "
                             f"{known}", item.span)
        size = mesh.size(item.axis)
        if item.dim >= type_.rank:
            raise Diagnostic(f"{what} has no dim {item.dim}", item.span)
        if type_.shape[item.dim] % size:
            raise Diagnostic(f"dim {item.dim} of {what} ({type_.shape[item.dim]}) is not "
                             f"divisible by mesh axis '{item.axis}' ({size} chips)", item.span)
        dims[item.dim] = item.axis if size > 1 else None
    return Spec(tuple(dims))


def _local_op_fits(kind: str, inputs: list[Value], attrs: dict, shape: tuple[int, ...]) -> bool:
    """Whether `kind` of these local inputs gives a result of the local `shape`."""
    try:
        return OPS[kind].infer(tuple(v.type for v in inputs), attrs).shape == tuple(shape)
    except Diagnostic:
        return False


def shard_function(fn: Function, mesh: Mesh) -> SpmdFunction:
    """Propagate the annotated shardings of `fn` over `mesh` (see the module docstring):
    forward, and forward with the backward hints (compiler/shard/hints.py); the hinted
    one unless it moves more bytes between chips."""
    forward = _propagate(fn, mesh, {})
    hints = _hints(fn, mesh)
    if not hints:
        return forward
    hinted = _propagate(fn, mesh, hints)
    return hinted if traffic(hinted) <= traffic(forward) else forward


def traffic(spmd: SpmdFunction) -> tuple[float, int]:
    """Bytes each chip sends in the collectives of `spmd` (ring-optimal counts: all-reduce
    2(p-1)/p of its buffer, the others (p-1)/p of the whole), and how many there are."""
    sent = 0.0
    count = 0
    for op in spmd.collectives:
        if op.kind == "shard_slice":
            continue
        p = spmd.mesh.size(op.attrs["axis"])
        whole = max(op.inputs[0].type.nbytes, op.result.type.nbytes)
        sent += (2 if op.kind == "all_reduce" else 1) * (p - 1) / p * whole
        count += 1
    return sent, count


def _hints(fn: Function, mesh: Mesh) -> dict:
    """The backward hints of `fn`: from its annotated results and its pins."""
    from zhenwu.compiler.shard.hints import backward_hints

    annotations = fn.attrs.get("shardings")
    result_dims = []
    for index, out in enumerate(fn.outputs):
        items = annotations.results[index] if annotations and index < len(
            annotations.results) else ()
        spec = _annotation_spec(items, out.type, mesh, f"result {index} {out.type}")
        result_dims.append(spec.dims)
    pins = {}
    for op in fn.ops:
        if op.kind == "shard":
            type_ = op.inputs[0].type
            items = [DimAxis(d, a, op.span) for d, a in enumerate(op.attrs["axes"]) if a != "_"]
            pins[op.id] = _annotation_spec(items, type_, mesh,
                                           f"the pinned value {type_}").dims
    return backward_hints(fn, mesh, result_dims, pins)


def _with_hint(spec: Spec, hint, type_: TensorType, mesh: Mesh) -> Spec:
    """`spec` (no partial) with its replicated dims split as `hint` asks, where the axis
    divides the dim and is not used on another dim (a local slice)."""
    dims = list(spec.dims)
    for d, axis in enumerate(hint):
        if axis is not None and dims[d] is None and axis not in dims and \
                mesh.size(axis) > 1 and type_.shape[d] % mesh.size(axis) == 0:
            dims[d] = axis
    return Spec(tuple(dims))


def _propagate(fn: Function, mesh: Mesh, hints: dict) -> SpmdFunction:
    """One forward pass; `hints` (value id -> axes) split replicated operands of an op whose
    result is hinted."""
    from zhenwu.compiler.shard.hints import operand_hints

    annotations = fn.attrs.get("shardings")
    builder = _Builder(fn, mesh)
    param_specs = []
    for param in fn.params:
        items = annotations.params.get(param.name, ()) if annotations else ()
        spec = _annotation_spec(items, param.type, mesh, f"parameter '{param.name}' "
                                f"{param.type}")
        local = builder.fresh(TensorType(param.type.dtype, local_shape(param.type.shape, spec,
                                                                       mesh)), param.name)
        local.span = param.span
        builder.params.append(local)
        builder.env[param.id] = (local, spec, param.type)
        param_specs.append(spec)
    for op in fn.ops:
        if op.kind == "shard":  # a pin: reshard to it (partial sums: a reduce-scatter)
            local, spec, type_ = builder.env[op.inputs[0].id]
            items = [DimAxis(d, a, op.span) for d, a in enumerate(op.attrs["axes"]) if a != "_"]
            want = _annotation_spec(items, type_, mesh, f"the pinned value {type_}")
            if spec != want:
                local = builder.reshard(local, spec, want, op.span)
            builder.env[op.id] = (local, want, type_)
            continue
        entries = [builder.env[v.id] for v in op.inputs]
        specs = [e[1] for e in entries]
        types = [e[2] for e in entries]
        # partial sums are added up before any use (the rules see them resolved)
        rule_specs = [s.without_partial() for s in specs]
        below = operand_hints(op, hints[op.id]) if op.id in hints else None
        if below is not None:
            rule_specs = [_with_hint(s, h, t, mesh) for s, h, t in zip(rule_specs, below, types)]
        wanted, result = _rule(op, rule_specs, types, mesh)
        inputs = []
        for (local, spec, type_), want in zip(entries, wanted):
            want = _divisible(want, type_, mesh)
            if spec != want:
                local = builder.reshard(local, spec, want, op.span)
            inputs.append(local)
        result = _divisible(result, op.result.type, mesh)
        if result.partial is not None and any(a == result.partial for a in result.dims):
            result = Spec(result.dims, None)  # cannot happen by the rules; stay safe
        local_out = local_shape(op.result.type.shape, result, mesh)
        attrs = _local_attrs(op, local_out, [v.type.shape for v in inputs])
        if not _local_op_fits(op.kind, inputs, attrs, local_out):
            # the rule's split does not hold at these shapes (a batch dim broadcast from 1
            # against a split one): the op runs replicated, on gathered inputs
            result = replicated(op.result.type.rank)
            inputs = [builder.reshard(local, spec, replicated(type_.rank), op.span)
                      for local, spec, type_ in entries]
            local_out = op.result.type.shape
            attrs = _local_attrs(op, local_out, [v.type.shape for v in inputs])
        value = builder.emit(op.kind, inputs, attrs, None, op.span, op.origin)
        if value.type.shape != local_out:
            raise Diagnostic(f"sharding {op.kind} gave {value.type}, expected shape "
                             f"{list(local_out)}", op.span)
        builder.env[op.id] = (value, result, op.result.type)
    outputs, result_specs = [], []
    for index, out in enumerate(fn.outputs):
        local, spec, type_ = builder.env[out.id]
        items = annotations.results[index] if annotations and index < len(
            annotations.results) else ()
        want = _annotation_spec(items, type_, mesh, f"result {index} {type_}")
        if spec != want:
            local = builder.reshard(local, spec, want, None)
        outputs.append(local)
        result_specs.append(want)
    spmd = Function(fn.name, builder.params, builder.ops, outputs,
                    {"mesh": str(mesh)})
    return SpmdFunction(spmd, mesh, param_specs, result_specs, fn)


def split_input(value, spec: Spec, mesh: Mesh, chip: int):
    """Chip `chip`'s part of a global array sharded `spec`."""
    coords = mesh.coords(chip)
    index = []
    for n, axis in zip(value.shape, spec.dims):
        if axis is None:
            index.append(slice(None))
        else:
            step = n // mesh.size(axis)
            r = coords[axis]
            index.append(slice(r * step, (r + 1) * step))
    return value[tuple(index)]


def join_output(parts: list, spec: Spec, mesh: Mesh):
    """The global array from every chip's part (sharded `spec`)."""
    import numpy as np

    # rebuild dim by dim: for each split dim, concatenate along it in axis order
    def gather(chip_parts: dict[int, object], dims: list[tuple[int, str]]):
        if not dims:
            return next(iter(chip_parts.values()))
        d, axis = dims[0]
        pieces = []
        for i in range(mesh.size(axis)):
            sub = {c: v for c, v in chip_parts.items() if mesh.coords(c)[axis] == i}
            pieces.append(gather(sub, dims[1:]))
        return np.concatenate(pieces, axis=d)

    split = [(d, a) for d, a in enumerate(spec.dims) if a is not None]
    if not split:
        return parts[0]
    return gather(dict(enumerate(parts)), split)


def bytes_per_chip(spmd: SpmdFunction) -> int:
    """The parameters' and results' bytes on one chip (a lower bound of what it holds)."""
    return sum(v.type.nbytes for v in spmd.fn.params) + sum(
        v.type.nbytes for v in spmd.fn.outputs)


__all__ = ["COLLECTIVE_KINDS", "Spec", "SpmdFunction", "bytes_per_chip", "join_output",
           "shard_function", "split_input", "traffic"]
