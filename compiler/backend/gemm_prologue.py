"""The RMSNorm prologue of a matmul kernel (matched by compiler/passes/norm_gemm_match.py).

The kernel's A rows are few and fit one m tile, so they are the same for every tile of the
nest: each core loads them whole once (`setup`: `X`, rows x K in f32, the load converting)
and computes the rows' scale from X with the graph's own ops in the graph's order
(`ss = rsqrt(sum(X * X) / K + eps)`, also in `setup`); each k step then loads its A tile of x
(`px`, f32) and the matching columns of g (`pg`) and writes the MX operand
`a = cast(px * ss * pg)`: the values the reference rounds, rounded once. `a` is also loaded
(from x, converted to the MX dtype) before the vector work overwrites it: that makes it a
step-load buffer, whose copies alternate by step and are handed back by the step's MMA, so
the next steps' vector work never writes the copy an MMA still reads.

When X and the scratch of its squares would not leave L1 room for the product, the group is
lowered as the row kernel and the plain product instead (`fits`).
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.backend.kernel_ir import Reduce, Vec, View
from zhenwu.compiler.backend.lower import elementwise_body


def prologue_bytes(ld_copies: int) -> int:
    """L1 bytes per element of an A tile beyond the copies of the MX operand: the f32 tile
    of x (one per operand copy) and an f32 scratch tile (two copies)."""
    return 4 * ld_copies + 4 * 2


@dataclass(frozen=True)
class RowNorm:
    """What the prologue computes: x [M, K] (f32 or loaded converting), the weight row g
    (a value, or None), and the ops from the sum of squares to the row scale in order
    (div or mul by a constant, add of eps, rsqrt), with their immediates."""

    x: object
    g: object
    scale_ops: tuple        # ((kind, attrs, immediate), ...) applied to ss in order
    op_ids: tuple[int, ...]


def row_norm(low, prologue) -> RowNorm | None:
    """The RowNorm of a matmul group's prologue ops, or None when they are only operand
    casts (the plain matmul kernel)."""
    if not any(op.kind == "reduce_sum" for op in prologue):
        return None
    by_kind: dict[str, list] = {}
    for op in prologue:
        by_kind.setdefault(op.kind, []).append(op)
    square = next(op for op in prologue if op.kind == "mul"
                  and op.inputs[0].id == op.inputs[1].id)
    x = square.inputs[0]
    inner = {op.id for op in prologue}
    if x.id in inner:          # the cast taken in: load its source, converting
        x = next(op for op in prologue if op.id == x.id).inputs[0]
    rsqrt = by_kind["rsqrt"][0]
    add = next(op for op in prologue if op.kind == "add" and op.result.id == rsqrt.inputs[0].id)
    mean = next(op for op in prologue
                if op.kind in ("div", "mul") and any(v.id == op.result.id for v in add.inputs))
    scale_ops = []
    for op in (mean, add):   # each with one scalar constant (the matcher proved it)
        index = next(i for i, v in enumerate(op.inputs) if v.id not in inner
                     and low.immediate(v) is not None)
        scale_ops.append((op.kind, dict(op.attrs), float(low.immediate(op.inputs[index])),
                          index))
    scale_ops.append(("rsqrt", dict(rsqrt.attrs), None, None))
    norm = next(op for op in prologue if op.kind == "mul"
                and any(v.id == rsqrt.result.id for v in op.inputs))
    weighted = [op for op in prologue if op.kind == "mul"
                and any(v.id == norm.result.id for v in op.inputs)]
    g = None
    if weighted:
        g = next(v for v in weighted[0].inputs if v.id != norm.result.id)
    return RowNorm(x, g, tuple(scale_ops), tuple(op.id for op in prologue))


def g_view(low, norm: RowNorm, ax_k: int, k: int) -> View:
    """The weight row g as a view along the k axis."""
    view = low.view_of(norm.g)
    stride = view.strides[-1]
    return View(view.tensor, view.dtype, view.offset, (ax_k,), (k,), (stride,), (0,))


def setup_bytes(rows: int, k: int) -> int:
    """L1 bytes of X and of its squares (one copy each, with the rows' scale)."""
    return 2 * rows * k * 4 + rows * 4


def setup_statements(norm: RowNorm) -> list:
    """Once per core, from X: ss = the rows' scale, by the graph's ops in order."""
    out = [Vec("MUL", "f32", "sq", ("X", "X")),
           Vec("DUP", "f32", "ss", (0.0,)),
           Reduce("SUM", "f32", "ss", "sq")]
    for kind, attrs, imm, index in norm.scale_ops:
        srcs = ["ss"] if imm is None else (["ss", imm] if index == 1 else [imm, "ss"])
        out += elementwise_body(kind, attrs, "f32")(srcs, "ss", None)
    return out


def step_statements(norm: RowNorm, in_dtype: str) -> list:
    """The step's vector work before the MMA: a = cast(x * ss * g), as the graph computes."""
    out = [Vec("MUL", "f32", "pt", ("px", "ss"))]
    if norm.g is not None:
        out.append(Vec("MUL", "f32", "pt", ("pt", "pg")))
    out.append(Vec("CVT.f32", in_dtype, "a", ("pt",)))
    return out
