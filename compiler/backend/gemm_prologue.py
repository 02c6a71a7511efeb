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
from zhenwu.compiler.graph.dtypes import itemsize


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


# ------------------------------------------------------------------ the map prologue


@dataclass(frozen=True)
class MapPrologue:
    """A map of few-row operands as a product's A (compiler/passes/prologue_gemm_match.py):
    its tensor operands (each [M, K] in `dtype`), its ops in program order, all computing in
    `dtype`'s vector dtype. Two forms (compiler/backend/gemm.py):

    - *resident* (when the k tiles cut K evenly and the whole rows leave half of L1): once
      per core, `setup` loads the operands' whole rows (`P0`, `P1`, ...), computes each op
      on them (`Q0`, ...) and the MX operand `A` (rows x K); each step loads only its B
      tile, and its MMA reads the step's k columns of `A` (one row: repeated over the MX
      tile's rows; codegen's `_resident_rows_axis`). The A rows are read from HBM once per
      core, not once per k step and n tile (at a decode step's batch 1 they are read by all
      cores at once, and the MMA would wait for them at every step);
    - *stepped*: each k step loads its operand tiles (`p0`, ...), computes the ops (`q0`,
      ...) and writes the MX operand `a` (also loaded first, as a step-load buffer, like the
      RMSNorm prologue's)."""

    inputs: tuple
    ops: tuple
    dtype: str


def is_map(prologue) -> bool:
    """Whether a matmul group's prologue ops are a map (the map-prologue matcher's), not an
    RMSNorm (`row_norm`) or only operand casts."""
    return bool(prologue) and not any(op.kind in ("reduce_sum", "cast") for op in prologue)


def map_prologue(low, prologue) -> MapPrologue | None:
    """The MapPrologue of a map's ops, or None when one of its scalar operands cannot be an
    immediate of the op's vector instructions (the group is then lowered as the map kernel
    and the plain product)."""
    from zhenwu.compiler.backend.lower import may_be_immediate

    inner = {op.id for op in prologue}
    inputs: dict[int, object] = {}
    for op in prologue:
        for index, value in enumerate(op.inputs):
            if value.id in inner:
                continue
            if tuple(value.type.shape):
                inputs.setdefault(value.id, value)
            elif low.immediate(value) is None or not may_be_immediate(op, index):
                return None
    return MapPrologue(tuple(inputs.values()), tuple(prologue), prologue[-1].result.type.dtype)


def map_bytes(prologue: MapPrologue, ld_copies: int) -> int:
    """L1 bytes per A element the map adds: its operand tiles (`ld_copies` each) and one
    scratch tile per op (two copies), counted as f32."""
    return 4 * ld_copies * len(prologue.inputs) + 4 * 2 * len(prologue.ops)


def map_statements(prologue: MapPrologue, low, in_dtype: str, operand: str = "p",
                   scratch: str = "q", result: str = "a") -> list:
    """The map's ops in order on the operand tiles (`operand`0, `operand`1, ...), each into
    its scratch tile (`scratch`0, ...), in the map's dtype (each instruction rounds as the
    reference's op does), then its result into the MX operand `result`."""
    from zhenwu.compiler.backend.fusion import home_dtype

    compute = home_dtype(prologue.dtype)
    names = {v.id: f"{operand}{i}" for i, v in enumerate(prologue.inputs)}
    out: list = []
    for index, op in enumerate(prologue.ops):
        srcs = [names[v.id] if v.id in names else float(low.immediate(v)) for v in op.inputs]
        out += elementwise_body(op.kind, op.attrs, compute)(srcs, f"{scratch}{index}", None)
        names[op.result.id] = f"{scratch}{index}"
    last = names[prologue.ops[-1].result.id]
    out.append(Vec("COPY", in_dtype, result, (last,)) if compute == in_dtype
               else Vec(f"CVT.{compute}", in_dtype, result, (last,)))
    return out


def map_setup_bytes(prologue: MapPrologue, rows: int, k: int, in_dtype: str) -> int:
    """L1 bytes of the resident form: the operands' whole rows, each op's value (in the
    map's vector dtype) and the MX operand, one copy each."""
    from zhenwu.compiler.backend.fusion import home_dtype

    per = itemsize(home_dtype(prologue.dtype)) * (len(prologue.inputs) + len(prologue.ops))
    return rows * k * (per + itemsize(in_dtype))
