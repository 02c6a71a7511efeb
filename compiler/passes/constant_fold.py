"""`constant-fold`: evaluate ops whose operands are all splat constants.

The Graph IR's `constant` is a splat (one value, any shape), so folding stays within splats:
an elementwise op, a shape op, or a max/min/sum/prod reduction of splats is a splat, computed
with the op's own numpy reference (so the folded value is rounded exactly as at run time).
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.graph.dtypes import compute_dtype, np_dtype
from zhenwu.compiler.graph.ir import Op, Value
from zhenwu.compiler.graph.ops import OPS
from zhenwu.compiler.passes.pass_base import GraphPass, register_pass
from zhenwu.compiler.passes.rewrite import Rewriter, rewrite
from zhenwu.isa.lazy import numpy as np

_SHAPE_KINDS = ("reshape", "broadcast_to", "transpose", "slice", "concat")
# A reduction of a splat is evaluated on this many elements at most (folding must not
# allocate the tensor it folds away); beyond it only the exact cases fold.
FOLD_ELEMENTS = 1 << 16


def _python_value(array: np.ndarray, dtype: str):
    item = array.reshape(-1)[0]
    if dtype == "bool":
        return bool(item)
    if np.issubdtype(np_dtype(dtype), np.integer):
        return int(item)
    return float(item)


def fold(op: Op, rw: Rewriter) -> Value | None:
    """Replace an op on splat constants by the splat constant it computes."""
    if op.kind in ("constant", "iota") or not op.inputs:
        return None
    values = [rw.constant_value(v) for v in op.inputs]
    if any(v is None for v in values):
        return None
    kind, result = op.kind, op.result.type
    if kind in _SHAPE_KINDS or kind == "pad":
        if kind == "concat" and len(set(values)) != 1:
            return None
        if kind == "pad" and values[0] != op.attrs["value"]:
            return None
        value = values[0]
    elif OPS[kind].fusion == "elementwise" or kind in ("reduce_max", "reduce_min",
                                                       "reduce_sum", "reduce_prod"):
        # evaluate on one element of each operand (same numpy rule as the evaluator)
        scalars = [np.asarray(v, dtype=np_dtype(t.type.dtype)).astype(compute_dtype(
            t.type.dtype)) for v, t in zip(values, op.inputs)]
        attrs = op.attrs
        if kind.startswith("reduce_"):
            n = op.inputs[0].type.numel // max(result.numel, 1)
            if n > FOLD_ELEMENTS:
                # max/min of copies of v is v; a sum of zeros is 0; a product of 0s or 1s
                # is itself: exact whatever the order of evaluation; anything else stays
                exact = (kind in ("reduce_max", "reduce_min")
                         or (kind == "reduce_sum" and values[0] == 0)
                         or (kind == "reduce_prod" and values[0] in (0, 1)))
                if not exact:
                    return None
                n = 1
            scalars = [np.full((n,), scalars[0])]
            attrs = {"axes": (0,), "keepdims": False}
        with np.errstate(all="ignore"):
            out = np.asarray(OPS[kind].reference(scalars, attrs)).astype(np_dtype(result.dtype))
        value = _python_value(out, result.dtype)
    else:
        return None
    return rw.emit("constant", [], {"value": value, "dtype": result.dtype,
                                    "shape": result.shape})


@register_pass
@dataclass(frozen=True)
class ConstantFold(GraphPass):
    """Fold ops on splat constants into splat constants."""

    name = "constant-fold"

    def apply(self, fn):
        return rewrite(fn, [fold])
