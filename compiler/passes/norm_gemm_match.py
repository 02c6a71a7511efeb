"""The RMSNorm-prologue GEMM matcher: `cast(x * rsqrt(sum(x*x)/K + eps) [* g], dt) @ w`.

A root-mean-square normalisation of A's rows feeding a matrix product is one kernel with
the product when A has few rows (a decode step's B rows of the model width): each core
loads the rows once, computes their scale `rsqrt(sum(x*x) / K + eps)` with the graph's own
ops in the graph's order, and writes each k step's MX operand as `cast(x * scale * g)`:
the values the reference rounds, rounded once (compiler/backend/gemm_prologue.py).

What the matcher proves (and refuses otherwise, leaving the ops to the greedy grouping):

- the product's A is rank 2, [M, K] with M <= MAX_ROWS (many rows: the separate row kernel
  is cheap against the product, and every n tile would redo the prologue's vector work);
- A is `cast(v, dt)` to a dtype the operand load may produce (`operand_cast_refusal`), or v
  itself; v = `mul(n, g)` with g a [K] (or [1, K]) row, or v = n; n = `mul(x, s)` (either
  order); s = `rsqrt(add(div(r, K), eps))` or `rsqrt(add(mul(r, 1/K), eps))` with scalar
  constants (the add either way round); r = `reduce_sum(mul(x, x), last axis, keepdims)`;
- every value is f32, and each op's result is read only inside the pattern and is not a
  program output (x may be read elsewhere: it is only loaded); x may be `cast(x0, f32)` of
  a narrower float, taken in when nothing else reads it (the load converts).
"""

from __future__ import annotations

from zhenwu.compiler.graph.dtypes import value_preserving

MAX_ROWS = 64


def _constant(value, producers) -> float | None:
    op = producers.get(value.id)
    if op is None or op.kind != "constant" or tuple(op.result.type.shape) not in ((), (1,)):
        return None
    try:
        return float(op.attrs["value"])
    except (TypeError, ValueError, KeyError):
        return None


def match_norm_gemm(fn, users, producers, outputs):
    """(op ids, description) of each RMSNorm-prologue GEMM (see the module docstring)."""
    from zhenwu.compiler.passes.fuse import operand_cast_refusal

    for mm in fn.ops:
        if mm.kind != "matmul":
            continue
        found = _match(mm, users, producers, outputs, operand_cast_refusal)
        if found is not None:
            ids = sorted(found, key=lambda i: [op.id for op in fn.ops].index(i))
            yield ids + [mm.id], f"RMSNorm of {mm.inputs[0].type.shape[0]} rows as its prologue"


def _match(mm, users, producers, outputs, cast_refusal):
    a = mm.inputs[0]
    shape = tuple(a.type.shape)
    if len(shape) != 2 or shape[0] > MAX_ROWS:
        return None
    rows, k = shape
    taken: list[int] = []

    def only_for(value, readers: set[int]) -> bool:
        """`value` is computed by an op, read only by `readers`, and not an output."""
        return (value.id in producers and value.id not in outputs
                and all(u.id in readers for u in users[value.id]))

    def f32(value) -> bool:
        return value.type.dtype == "f32"

    v = a
    cast = producers.get(v.id)
    if cast is not None and cast.kind == "cast":
        if not only_for(v, {mm.id}) or cast_refusal(cast) is not None:
            return None
        taken.append(cast.id)
        v = cast.inputs[0]
    op = producers.get(v.id)
    if op is None or op.kind != "mul" or not f32(v) or not only_for(v, {taken[-1] if taken
                                                                         else mm.id}):
        return None
    scaled = op
    norm = None
    for first, second in ((0, 1), (1, 0)):   # mul(n, g): n a row-scale product
        n, g = scaled.inputs[first], scaled.inputs[second]
        if (tuple(g.type.shape) in ((k,), (1, k)) and f32(g) and tuple(n.type.shape) == shape
                and producers.get(n.id) is not None and producers[n.id].kind == "mul"
                and only_for(n, {scaled.id})):
            norm = producers[n.id]
            taken.append(scaled.id)
            break
    if norm is None:
        norm = scaled      # no weight: v = mul(x, s)
    taken.append(norm.id)
    for first, second in ((0, 1), (1, 0)):
        x, s = norm.inputs[first], norm.inputs[second]
        if tuple(x.type.shape) != shape or tuple(s.type.shape) != (rows, 1):
            continue
        if not (f32(x) and f32(s)) or not only_for(s, {norm.id}):
            continue
        chain = _row_scale(s, x, k, users, producers, only_for)
        if chain is None:
            continue
        taken += chain
        source = producers.get(x.id)
        if (source is not None and source.kind == "cast"
                and value_preserving(source.inputs[0].type.dtype, "f32")
                and only_for(x, {norm.id, chain[-1]})):
            taken.append(source.id)   # loaded converting, nothing else reads it
        return taken
    return None


def _row_scale(s, x, k, users, producers, only_for) -> list[int] | None:
    """The ops of s = rsqrt(add(div(sum(x*x), K), eps)) (or mul by 1/K), last the square."""
    rsqrt = producers.get(s.id)
    if rsqrt is None or rsqrt.kind != "rsqrt":
        return None
    add_v = rsqrt.inputs[0]
    add = producers.get(add_v.id)
    if add is None or add.kind != "add" or not only_for(add_v, {rsqrt.id}):
        return None
    mean_v = None
    for first, second in ((0, 1), (1, 0)):
        if _constant(add.inputs[second], producers) is not None:
            mean_v = add.inputs[first]
            break
    if mean_v is None or not only_for(mean_v, {add.id}):
        return None
    mean = producers[mean_v.id]
    if mean.kind == "div":
        total_v, count = mean.inputs[0], _constant(mean.inputs[1], producers)
        if count != float(k):
            return None
    elif mean.kind == "mul":
        total_v = None
        for first, second in ((0, 1), (1, 0)):
            factor = _constant(mean.inputs[second], producers)
            if factor is not None and factor == float(1.0 / k):
                total_v = mean.inputs[first]
        if total_v is None:
            return None
    else:
        return None
    total = producers.get(total_v.id)
    if (total is None or total.kind != "reduce_sum" or not only_for(total_v, {mean.id})
            or not total.attrs.get("keepdims")
            or [a % 2 for a in total.attrs["axes"]] != [1]):
        return None
    square_v = total.inputs[0]
    square = producers.get(square_v.id)
    if (square is None or square.kind != "mul" or not only_for(square_v, {total.id})
            or square.inputs[0].id != x.id or square.inputs[1].id != x.id):
        return None
    return [rsqrt.id, add.id, mean.id, total.id, square.id]
