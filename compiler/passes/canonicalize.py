"""`canonicalize`: local algebraic simplifications, as rewrite rules.

Each rule removes an op that does nothing (reshape/transpose/broadcast/cast/slice/pad to the
same thing, x + 0, x * 1, x - 0, x / 1, --x, a cast to a wider type and back) or merges a
pair (reshape of reshape, transpose of transpose), `x ** 2` becomes `x * x`, and a
transpose of the last two dims moves before a reshape of the batch dims. Comparisons take one
direction (`a <= b` is `b >= a`, `a < b` is `b > a`), and a select on `a > b` of integers
swaps its branches to select on `b >= a`, so that however a causal mask is written
(`j <= i`, or an upper-triangle bias `where(i < j, -inf, 0)`), the attention matcher reads
`i >= j`. A zero pad feeding a conv2d (a lowest-value pad feeding a maxpool2d) becomes the
op's own padding. A widening cast moves below the view ops that follow it (`transpose(cast(k, f32))`
is `cast(transpose(k), f32)`), so that it meets the product it feeds, whose operand DMA does
it; a cast that rounds moves above the views before it (`cast(reshape(broadcast_to(k)),
bf16)` is `reshape(broadcast_to(cast(k, bf16)))`), so that it works on the smaller tensor,
joins the kernel that makes it, and leaves the views to be read through. A rule only fires
when the result type is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.graph.dtypes import is_float, value_preserving
from zhenwu.compiler.graph.ir import Op, Value
from zhenwu.compiler.graph.ops import reshape_groups, window_fill
from zhenwu.compiler.passes.pass_base import GraphPass, register_pass
from zhenwu.compiler.passes.rewrite import Rewriter, rewrite


def _same_type(op: Op, value: Value) -> Value | None:
    return value if value.type == op.result.type else None


def noop_shape(op: Op, rw: Rewriter) -> Value | None:
    """reshape/broadcast_to/transpose/slice/pad/concat/cast that leave the value as it is."""
    kinds = ("reshape", "broadcast_to", "cast", "slice", "pad", "concat", "transpose")
    if op.kind not in kinds or len(op.inputs) != 1 or op.inputs[0].type != op.result.type:
        return None
    if op.kind == "transpose" and op.attrs["perm"] != tuple(range(op.result.type.rank)):
        return None
    if op.kind == "slice" and (any(op.attrs["starts"]) or any(s != 1 for s in op.attrs["steps"])):
        return None
    if op.kind == "pad" and any(p != (0, 0) for p in op.attrs["pads"]):
        return None
    return op.inputs[0]


def reshape_of_reshape(op: Op, rw: Rewriter) -> Value | None:
    """reshape(reshape(x)) -> reshape(x)."""
    if op.kind != "reshape":
        return None
    inner = rw.producer(op.inputs[0])
    if inner is None or inner.kind != "reshape":
        return None
    return rw.emit("reshape", [inner.inputs[0]], {"shape": op.attrs["shape"]})


def transpose_of_transpose(op: Op, rw: Rewriter) -> Value | None:
    """transpose(transpose(x)) -> one transpose (or x)."""
    if op.kind != "transpose":
        return None
    inner = rw.producer(op.inputs[0])
    if inner is None or inner.kind != "transpose":
        return None
    perm = tuple(inner.attrs["perm"][p] for p in op.attrs["perm"])
    if perm == tuple(range(len(perm))):
        return inner.inputs[0]
    return rw.emit("transpose", [inner.inputs[0]], {"perm": perm})


def batch_reshape_before_transpose(op: Op, rw: Rewriter) -> Value | None:
    """transpose(reshape(x), swap of the last two) -> reshape(transpose(x)) when the reshape
    only regroups the batch dims (x and the reshape share their last two dims): the reshape
    then feeds the product that reads the transpose (K broadcast to the query heads and
    merged into [heads, S, HD] stays a view of K instead of a copy)."""
    if op.kind != "transpose":
        return None
    inner = rw.producer(op.inputs[0])
    if inner is None or inner.kind != "reshape":
        return None
    x = inner.inputs[0]
    rank, x_rank = op.result.type.rank, x.type.rank
    perm = tuple(op.attrs["perm"])
    if (rank < 2 or x_rank < 2 or perm != tuple(range(rank - 2)) + (rank - 1, rank - 2)
            or tuple(x.type.shape[-2:]) != tuple(inner.result.type.shape[-2:])):
        return None
    swapped = rw.emit("transpose", [x], {"perm": tuple(range(x_rank - 2))
                                         + (x_rank - 1, x_rank - 2)})
    return rw.emit("reshape", [swapped], {"shape": tuple(op.result.type.shape)})


def _merge_groups(source: tuple[int, ...], target: tuple[int, ...]) -> list[list[int]] | None:
    """The runs of `source` dims each `target` dim merges (a reshape that only merges
    adjacent dims), or None when the reshape splits a dim or size-1 dims make the runs
    ambiguous."""
    pairs = reshape_groups(source, target)
    if 1 in source or 1 in target or any(len(gj) != 1 or not gi for gi, gj in pairs):
        return None
    return [gi for gi, _ in pairs]


def transpose_above_broadcast_merge(op: Op, rw: Rewriter) -> Value | None:
    """transpose(reshape(broadcast_to(x))) -> reshape(transpose(broadcast_to(x))) when the
    reshape merges adjacent dims and the transpose moves whole merged groups. Merging a
    broadcast dim with another is no strided view (a copy either way), but below the
    transpose the merging reshape meets the product that reads it, and the flash kernel
    reads the broadcast through stride 0 (K/V broadcast to the query heads, then
    `einsum("qhd,khd->hqk", ...)`, whose transpose moves the heads first)."""
    if op.kind != "transpose":
        return None
    inner = rw.producer(op.inputs[0])
    if inner is None or inner.kind != "reshape":
        return None
    source = rw.producer(inner.inputs[0])
    if source is None or source.kind != "broadcast_to":
        return None
    x = inner.inputs[0]
    groups = _merge_groups(tuple(x.type.shape), tuple(inner.result.type.shape))
    if groups is None or all(len(group) == 1 for group in groups):
        return None
    perm = tuple(axis for index in op.attrs["perm"] for axis in groups[index])
    moved = rw.emit("transpose", [x], {"perm": perm})
    return _same_type(op, rw.emit("reshape", [moved],
                                  {"shape": tuple(op.result.type.shape)}))


_IDENTITY = {"add": (0, 1), "sub": (0, None), "mul": (1, 1), "div": (1, None)}


def identity_operand(op: Op, rw: Rewriter) -> Value | None:
    """x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1 (when the result type is x's)."""
    if op.kind not in _IDENTITY:
        return None
    unit, _ = _IDENTITY[op.kind]
    a, b = op.inputs
    # `is not True`: a bool constant equals 1 but is no numeric unit
    if rw.constant_value(b) == unit and rw.constant_value(b) is not True:
        return _same_type(op, a)
    commutes = op.kind in ("add", "mul")
    if commutes and rw.constant_value(a) == unit and rw.constant_value(a) is not True:
        return _same_type(op, b)
    return None


# dtype -> the dtypes that hold each of its values exactly
_EXACT_IN = {"bool": ("i8", "i32", "f32", "bf16", "f16", "fp8"),
             "i8": ("i32", "f32", "f16", "bf16"), "fp8": ("bf16", "f16", "f32"),
             "bf16": ("f32",), "f16": ("f32",), "i32": (), "f32": ()}


def cast_round_trip(op: Op, rw: Rewriter) -> Value | None:
    """cast(cast(x, wide), dtype of x) -> x when `wide` holds every value of x exactly."""
    if op.kind != "cast":
        return None
    inner = rw.producer(op.inputs[0])
    if inner is None or inner.kind != "cast":
        return None
    source = inner.inputs[0]
    if source.type.dtype == op.attrs["dtype"] and inner.attrs["dtype"] in _EXACT_IN[
            source.type.dtype]:
        return source
    return None


def double_negation(op: Op, rw: Rewriter) -> Value | None:
    """--x -> x."""
    if op.kind != "neg":
        return None
    inner = rw.producer(op.inputs[0])
    if inner is not None and inner.kind == "neg":
        return inner.inputs[0]
    return None


def square(op: Op, rw: Rewriter) -> Value | None:
    """x ** 2 -> x * x (when the exponent broadcasts to nothing new)."""
    if op.kind != "pow" or rw.constant_value(op.inputs[1]) != 2:
        return None
    x = op.inputs[0]
    if x.type != op.result.type:
        return None
    return rw.emit("mul", [x, x])


_FLIPPED = {"le": "ge", "lt": "gt"}


def comparison_direction(op: Op, rw: Rewriter) -> Value | None:
    """a <= b -> b >= a, a < b -> b > a: exact for every value, NaN included."""
    if op.kind not in _FLIPPED:
        return None
    a, b = op.inputs
    return rw.emit(_FLIPPED[op.kind], [b, a])


def negated_select(op: Op, rw: Rewriter) -> Value | None:
    """where(a > b, x, y) -> where(b >= a, y, x) when a and b are integers or bools: with no
    NaN, `not (a > b)` is `b >= a`."""
    if op.kind != "where":
        return None
    cond = rw.producer(op.inputs[0])
    if cond is None or cond.kind != "gt" or any(is_float(v.type.dtype) for v in cond.inputs):
        return None
    a, b = cond.inputs
    return _same_type(op, rw.emit("where", [rw.emit("ge", [b, a]), op.inputs[2],
                                            op.inputs[1]]))


_VIEWS = ("reshape", "transpose", "broadcast_to", "slice")


def cast_below_view(op: Op, rw: Rewriter) -> Value | None:
    """view(cast(x)) -> cast(view(x)) for a widening cast used only by the view: a cast that
    keeps every value commutes with re-indexing, and below the views it feeds a product
    directly (its operand DMA converts) or joins the elementwise kernel that reads it."""
    if op.kind not in _VIEWS:
        return None
    cast = rw.producer(op.inputs[0])
    if cast is None or cast.kind != "cast" or not rw.single_use(cast.result):
        return None
    source = cast.inputs[0]
    if not value_preserving(source.type.dtype, cast.attrs["dtype"]):
        return None
    viewed = rw.emit(op.kind, [source], dict(op.attrs))
    return _same_type(op, rw.emit("cast", [viewed], {"dtype": cast.attrs["dtype"]},
                                  origin=cast.origin))


def cast_above_views(op: Op, rw: Rewriter) -> Value | None:
    """cast(view(...view(x))) -> view(...view(cast(x))) for a cast that changes values (a
    narrowing), through views each used only by the next: an elementwise cast commutes with
    re-indexing, and on the views' source it is done once per source element."""
    if (op.kind != "cast" or value_preserving(op.inputs[0].type.dtype, op.attrs["dtype"])
            or op.id in rw.output_ids):
        return None  # an output is written in its own layout: the cast's kernel stores it
    views = []
    value = op.inputs[0]
    while True:
        view = rw.producer(value)
        if view is None or view.kind not in _VIEWS or not rw.single_use(value):
            break
        views.append(view)
        value = view.inputs[0]
    if not views:
        return None
    result = rw.emit("cast", [value], dict(op.attrs))
    for view in reversed(views):
        result = rw.emit(view.kind, [result], dict(view.attrs))
    return _same_type(op, result)


def pad_into_window(op: Op, rw: Rewriter) -> Value | None:
    """conv2d(pad(x, 0), w) -> conv2d(x, w) with the pad added to its padding, and
    maxpool2d(pad(x, -inf)) likewise: the op's own padding fills with what the pad did (an
    explicit zero Pad before a Conv is how many ONNX exports spell padding). Only spatial,
    non-negative pads; a pool keeps its padding under its kernel or the rule does not fire."""
    fill = window_fill(op.kind, op.result.type.dtype)
    if fill is None:
        return None
    pad = rw.producer(op.inputs[0])
    if pad is None or pad.kind != "pad" or float(pad.attrs["value"]) != fill:
        return None
    pads = tuple(tuple(p) for p in pad.attrs["pads"])
    if pads[:2] != ((0, 0), (0, 0)) or any(p < 0 for pair in pads for p in pair):
        return None
    merged = tuple((lo + a, hi + b) for (lo, hi), (a, b) in zip(op.attrs["pads"], pads[2:]))
    if op.kind == "maxpool2d" and any(max(merged[a]) >= op.attrs["kernel"][a]
                                      for a in range(2)):
        return None
    attrs = {**op.attrs, "pads": merged}
    return _same_type(op, rw.emit(op.kind, [pad.inputs[0], *op.inputs[1:]], attrs))


RULES = [comparison_direction, negated_select, cast_below_view, cast_above_views, noop_shape,
         reshape_of_reshape, transpose_of_transpose, identity_operand, cast_round_trip,
         double_negation, square, batch_reshape_before_transpose,
         transpose_above_broadcast_merge, pad_into_window]


@register_pass
@dataclass(frozen=True)
class Canonicalize(GraphPass):
    """Local simplifications (see the module docstring); run before and after others."""

    name = "canonicalize"

    def apply(self, fn):
        return rewrite(fn, RULES)
