"""`split-int-matmul`: i32 matrix products as exact sums of i8 products.

The MX multiplies i8 by i8 into an i32 accumulator exactly (wrapping), and has no i32 input
dtype; multiplying i32 values as f32 would round every product past 2^24. So an i32 matmul
(`a @ b` of i32, or of i8 with `acc=i32` computed as i32) is rewritten here into i8 products,
with the same result as numpy's int32 matmul, wrap-around included:

- each operand is split into signed bytes, x = d0 + 2^8 d1 + 2^16 d2 + 2^24 d3 (mod 2^32),
  each digit in [-128, 127]: d0 = cast(x, i8) (the low byte, wrapped), and the next digits
  are those of (x - d0) / 256 (computed in f32, where it is exact); an operand that is a
  cast of an i8 or bool tensor is one digit, its source;
- digit products whose weight 2^(8(i+j)) is 2^32 or more vanish modulo 2^32; those of one
  weight form one matmul over the digits concatenated along K (`acc=i32`, the MX's i8 rate);
- the result is L0 + 2^8 L1 + 2^16 L2 + 2^24 L3 in wrapping i32 arithmetic.

Two full i32 operands take 10 i8 digit products (four matmuls, K x 1, 2, 3 and 4): 5x the MX
time of a bf16 product of the same shape, exact. The backend refuses an i32 matmul that
reaches it (docs/internals.md section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.graph.ir import Function, Op, Value
from zhenwu.compiler.passes.pass_base import GraphPass, register_pass
from zhenwu.compiler.passes.rewrite import Rewriter, rewrite

DIGITS = 4       # bytes of an i32
DIGIT_BITS = 8


def _constant(rw: Rewriter, value: int, dtype: str) -> Value:
    return rw.emit("constant", [], {"value": value, "dtype": dtype, "shape": ()})


def i8_digits(rw: Rewriter, x: Value) -> list[Value]:
    """The signed bytes of i32 `x`, least significant first (one when x is a cast of i8/bool
    values, which are their own digit)."""
    producer = rw.producer(x)
    if producer is not None and producer.kind == "cast":
        source = producer.inputs[0]
        if source.type.dtype == "i8":
            return [source]
        if source.type.dtype == "bool":
            return [rw.emit("cast", [source], {"dtype": "i8"})]
    digits = []
    scale = rw.emit("constant", [], {"value": 1.0 / (1 << DIGIT_BITS), "dtype": "f32",
                                     "shape": ()})
    rest = x
    for index in range(DIGITS):
        digit = rw.emit("cast", [rest], {"dtype": "i8"})  # the low byte, wrapped to signed
        digits.append(digit)
        if index == DIGITS - 1:
            break
        # (rest - digit) / 256, exactly: the difference is a multiple of 256 below 2^31 in
        # magnitude, so exact in f32 (24 significant bits), and so is its quotient. Where the
        # subtraction wraps, the quotient is off by a multiple of 2^24, which no later digit
        # sees (digit i only matters modulo 2^(32 - 8i)).
        multiple = rw.emit("sub", [rest, rw.emit("cast", [digit], {"dtype": "i32"})])
        quotient = rw.emit("mul", [rw.emit("cast", [multiple], {"dtype": "f32"}), scale])
        rest = rw.emit("cast", [quotient], {"dtype": "i32"})
    return digits


def split_matmul(op: Op, rw: Rewriter) -> Value | None:
    """An i32 matmul as the weighted sum of i8 digit products (see the module docstring)."""
    if op.kind != "matmul" or op.result.type.dtype != "i32":
        return None
    a, b = op.inputs
    if a.type.dtype != "i32":
        return None  # i8 operands with acc=i32: the MX does them as they are
    a_digits, b_digits = i8_digits(rw, a), i8_digits(rw, b)
    total = None
    for weight in range(DIGITS):
        pairs = [(i, weight - i) for i in range(len(a_digits)) if 0 <= weight - i < len(b_digits)]
        if not pairs:
            continue
        lhs = [a_digits[i] for i, _ in pairs]
        rhs = [b_digits[j] for _, j in pairs]
        if len(pairs) > 1:
            lhs = [rw.emit("concat", lhs, {"axis": -1 % a.type.rank})]
            rhs = [rw.emit("concat", rhs, {"axis": b.type.rank - 2})]
        level = rw.emit("matmul", [lhs[0], rhs[0]], {"acc": "i32"})
        if weight:
            level = rw.emit("mul", [level, _constant(rw, 1 << (DIGIT_BITS * weight), "i32")])
        total = level if total is None else rw.emit("add", [total, level])
    return total


@register_pass
@dataclass(frozen=True)
class SplitIntMatmul(GraphPass):
    """i32 matmuls as exact sums of i8 x i8 -> i32 products (see the module docstring)."""

    name = "split-int-matmul"

    def apply(self, fn: Function) -> Function:
        return rewrite(fn, [split_matmul])
