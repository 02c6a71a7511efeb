"""Backward sharding hints: what each value's uses would like it split as (GSPMD propagates
both ways; this is the way back, from results and pins to the ops that feed them).

    hints = backward_hints(fn, mesh, result_dims, pins)   # value id -> tuple of axes
    operand_dims = operand_hints(op, result_hint, mesh)    # per operand, or None

A hint is per dim a mesh axis or None. It starts at the annotated results and at the
values pinned with `shard(x, ...)`, and goes back through each op by the rule below; a
value's hint on a dim is an axis only when every use of the value asks for that axis there
(a use that asks for nothing, e.g. an op that runs replicated, keeps it replicated). The
forward pass (propagate.py) then treats a replicated operand as already split where its op's
result is hinted: slicing a replicated value is local, so the op computes only its share,
and partial sums meet a split consumer as a reduce-scatter instead of an all-reduce.

Rules, result hint -> operand hints (dims of the operand that no result dim maps to, and
dims broadcast from 1, get None):
- elementwise, `where`, `cast`, `broadcast_to`: aligned from the right (numpy broadcasting);
- `transpose`: through the permutation; `reshape`: the outermost non-1 dim of a group;
- `matmul`: batch dims, then the left operand's rows and the right operand's columns;
  `einsum`: the result's letters (contracted letters get None);
- `reduce_sum` and the other reductions (not pools): the kept dims;
- `slice`, `pad`: the dims they leave whole; `concat`: every dim but the joined one.
"""

from __future__ import annotations

from zhenwu.compiler.graph.ir import Function, Op, TensorType
from zhenwu.compiler.graph.ops import OPS, reshape_groups
from zhenwu.compiler.shard.mesh import Mesh

Hint = tuple[str | None, ...]


def _aligned(hint: Hint, operand: TensorType, out: TensorType) -> Hint:
    shift = out.rank - operand.rank
    return tuple(None if operand.shape[d] == 1 and out.shape[d + shift] != 1
                 else hint[d + shift] for d in range(operand.rank))


def _reshape(hint: Hint, src: TensorType, dst: TensorType) -> Hint:
    dims: list[str | None] = [None] * src.rank
    for gi, gj in reshape_groups(src.shape, dst.shape):
        lead_in = next((d for d in gi if src.shape[d] > 1), None)
        lead_out = next((d for d in gj if dst.shape[d] > 1), None)
        if lead_in is not None and lead_out is not None:
            dims[lead_in] = hint[lead_out]
    return tuple(dims)


def _einsum(spec: str, hint: Hint) -> list[Hint]:
    inputs, output = spec.replace(" ", "").split("->")
    axis_of = dict(zip(output, hint))
    return [tuple(axis_of.get(letter) for letter in sub) for sub in inputs.split(",")]


def operand_hints(op: Op, hint: Hint) -> list[Hint] | None:
    """The hints `op`'s operands get from its result's `hint` (None: the op passes none)."""
    out = op.result.type
    types = [v.type for v in op.inputs]
    kind = op.kind
    fusion = OPS[kind].fusion if kind in OPS else "opaque"
    if fusion == "elementwise" or kind == "broadcast_to":
        return [_aligned(hint, t, out) for t in types]
    if kind == "transpose":
        dims: list[str | None] = [None] * out.rank
        for i, p in enumerate(op.attrs["perm"]):
            dims[p] = hint[i]
        return [tuple(dims)]
    if kind == "reshape":
        return [_reshape(hint, types[0], out)]
    if kind == "matmul":
        batch = out.rank - 2
        a, b = types
        batch_a = _aligned(hint[:batch], TensorType(a.dtype, a.shape[:-2]),
                           TensorType(out.dtype, out.shape[:-2]))
        batch_b = _aligned(hint[:batch], TensorType(b.dtype, b.shape[:-2]),
                           TensorType(out.dtype, out.shape[:-2]))
        return [batch_a + (hint[-2], None), batch_b + (None, hint[-1])]
    if kind == "einsum":
        return _einsum(op.attrs["spec"], hint)
    if fusion == "reduce" and kind not in ("maxpool2d", "avgpool2d"):
        axes = set(op.attrs["axes"])
        rank = types[0].rank
        if op.attrs["keepdims"]:
            return [tuple(None if d in axes else hint[d] for d in range(rank))]
        kept = iter(hint)
        return [tuple(None if d in axes else next(kept) for d in range(rank))]
    if kind in ("slice", "pad"):
        shape = types[0].shape
        dims = []
        for d in range(types[0].rank):
            if kind == "slice":
                whole = (op.attrs["starts"][d] == 0 and op.attrs["stops"][d] >= shape[d]
                         and op.attrs["steps"][d] == 1)
            else:
                whole = tuple(op.attrs["pads"][d]) == (0, 0)
            dims.append(hint[d] if whole else None)
        return [tuple(dims)]
    if kind == "concat":
        axis = op.attrs["axis"]
        return [tuple(None if d == axis else hint[d] for d in range(t.rank)) for t in types]
    return None


def backward_hints(fn: Function, mesh: Mesh, result_dims: list[Hint],
                   pins: dict[int, Hint]) -> dict[int, Hint]:
    """Per value id, the hint its uses agree on (only values with a split somewhere).
    `result_dims`: the annotated results' axes; `pins`: the axes of each `shard` op, by
    its id."""
    asks: dict[int, list[Hint]] = {}
    for out, dims in zip(fn.outputs, result_dims):
        asks.setdefault(out.id, []).append(dims)
    for op in fn.ops:  # every use asks, at least for nothing
        for value in op.inputs:
            asks.setdefault(value.id, [])
    hints: dict[int, Hint] = {}
    uses: dict[int, int] = {}
    for op in fn.ops:
        for value in op.inputs:
            uses[value.id] = uses.get(value.id, 0) + 1
    for out in fn.outputs:
        uses[out.id] = uses.get(out.id, 0) + 1
    for op in reversed(fn.ops):
        if op.kind == "shard":  # the pinned value is asked for the pin
            below: list[Hint] | None = [pins[op.id]]
        else:
            hint = _agreed(asks.get(op.id, []), uses.get(op.id, 0), op.result.type.rank)
            if any(hint):
                hints[op.id] = hint
            below = operand_hints(op, hint) if any(hint) else None
        for index, value in enumerate(op.inputs):
            given = below[index] if below is not None else (None,) * value.type.rank
            asks.setdefault(value.id, []).append(_divisible(given, value.type, mesh))
    for param in fn.params:
        hint = _agreed(asks.get(param.id, []), uses.get(param.id, 0), param.type.rank)
        if any(hint):
            hints[param.id] = hint
    return hints


def _agreed(asks: list[Hint], uses: int, rank: int) -> Hint:
    """Per dim the axis every use asks for (a use that did not ask: replicated)."""
    if not asks or len(asks) < uses:
        return (None,) * rank
    first = asks[0]
    return tuple(axis if all(ask[d] == axis for ask in asks) else None
                 for d, axis in enumerate(first))


def _divisible(hint: Hint, type_: TensorType, mesh: Mesh) -> Hint:
    seen: set[str] = set()
    dims = []
    for n, axis in zip(type_.shape, hint):
        if axis is None or mesh.size(axis) <= 1 or n % mesh.size(axis) or axis in seen:
            dims.append(None)
            continue
        seen.add(axis)
        dims.append(axis)
    return tuple(dims)
