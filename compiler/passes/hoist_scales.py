"""`hoist-scales`: move a scalar scale of a product's operand onto its result.

`(q * c) @ kᵀ`, `q @ transpose(k * c)` and `einsum(..., reshape(q) * c, k)` all become
`(q @ kᵀ) * c`: the scale then runs on the accumulator (a matmul epilogue, or the attention
kernel's scores) instead of as a pass over the operand, and every spelling of a scaled
attention reaches the attention matcher (compiler/passes/attention_match.py) in one form.

Rules (data for the generic driver, compiler/passes/rewrite.py), each checking its own
preconditions: the scale is a rank-0 constant, the operand is f32, bf16 or f16 (a product
of fp8 saturates, of integers wraps: moving the scale could change them), and the scaled
value has no other user (else the multiply would run twice).

- `view(x * c) -> view(x) * c` for reshape, transpose and broadcast_to;
- `(a * c) @ b -> (a @ b) * c` and `a @ (b * c) -> (a @ b) * c`, and the same for either
  operand of a `conv2d` that `decompose` kept whole (its im2col product would be hoisted
  so; the scale then runs in the conv kernel's epilogue).

The result differs from the program's only by rounding: the product of scaled operands
rounds c·a, the hoisted one rounds a·b·c.
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.graph.ir import Op, Value
from zhenwu.compiler.passes.pass_base import GraphPass, register_pass
from zhenwu.compiler.passes.rewrite import Rewriter, rewrite

SCALED_DTYPES = ("f32", "bf16", "f16")
VIEWS = ("reshape", "transpose", "broadcast_to")


def _scaled(value: Value, rw: Rewriter, single_use: set[int]) -> tuple[Value, Value] | None:
    """(x, c) when `value` is `x * c` (or `c * x`) with a rank-0 float constant `c` of
    x's dtype, x of the value's shape, and nothing else reads `value`."""
    op = rw.producer(value)
    if op is None or op.kind != "mul" or value.type.dtype not in SCALED_DTYPES:
        return None
    if op.id not in single_use:
        return None
    for x, c in (op.inputs, op.inputs[::-1]):
        if (rw.constant_value(c) is not None and not c.type.shape
                and x.type == value.type):
            return x, c
    return None


def scale_through_view(op: Op, rw: Rewriter, single_use: set[int]) -> Value | None:
    """view(x * c) -> view(x) * c."""
    if op.kind not in VIEWS:
        return None
    scaled = _scaled(op.inputs[0], rw, single_use)
    if scaled is None:
        return None
    x, c = scaled
    viewed = rw.emit(op.kind, [x], dict(op.attrs))
    single_use.add(rw.producer(viewed).id)
    result = rw.emit("mul", [viewed, c])
    single_use.add(rw.producer(result).id)
    return result


def scale_out_of_product(op: Op, rw: Rewriter, single_use: set[int]) -> Value | None:
    """(a * c) @ b -> (a @ b) * c, and a @ (b * c) likewise; conv2d(x * c, w) ->
    conv2d(x, w) * c (a conv a backend lowering kept whole is linear in each operand too,
    its zero padding included)."""
    if op.kind not in ("matmul", "conv2d") or op.result.type.dtype not in SCALED_DTYPES:
        return None
    if op.kind == "matmul" and op.attrs:
        return None  # an accumulation dtype of its own
    a, b = op.inputs
    if a.type.dtype != op.result.type.dtype or b.type.dtype != op.result.type.dtype:
        return None
    for index in (0, 1):
        scaled = _scaled(op.inputs[index], rw, single_use)
        if scaled is None:
            continue
        x, c = scaled
        operands = [a, b]
        operands[index] = x
        product = rw.emit(op.kind, operands, dict(op.attrs) or None)
        result = rw.emit("mul", [product, c])
        single_use.add(rw.producer(result).id)
        return result
    return None


RULES = (scale_through_view, scale_out_of_product)


@register_pass
@dataclass(frozen=True)
class HoistScales(GraphPass):
    """Scalar scales of product operands onto the product (see the module docstring)."""

    name = "hoist-scales"

    def apply(self, fn):
        outputs = {v.id for v in fn.outputs}
        # users among the live ops (an earlier pass may leave dead ones for dce)
        producers = fn.producers()
        live, todo = set(), list(outputs)
        while todo:
            op = producers.get(todo.pop())
            if op is not None and op.id not in live:
                live.add(op.id)
                todo += [v.id for v in op.inputs]
        uses: dict[int, int] = {}
        for op in fn.ops:
            if op.id in live:
                for v in op.inputs:
                    uses[v.id] = uses.get(v.id, 0) + 1
        single_use = {i for i, n in uses.items() if n == 1 and i not in outputs}

        def bind(rule):
            def bound(op, rw):
                return rule(op, rw, single_use)
            bound.__name__ = rule.__name__
            return bound

        return rewrite(fn, [bind(rule) for rule in RULES])
