"""The map-prologue GEMM matcher: an elementwise map of few-row operands feeding a product.

`(silu(g) * u) @ w` at a decode step's B rows (SwiGLU's gate times up feeding the down
projection) is one kernel with the product: each core loads the map's operands, computes
the map with the graph's own ops in the graph's order (each rounding where the reference
rounds) and hands the result to the matrix engine, so that the [B, ffn] intermediate is
never written and no map kernel (and its launch) runs (compiler/backend/gemm_prologue.py,
`MapPrologue`). Every spelling the canonical graph gives one form is matched: `silu(g) * u`,
`u * silu(g)`, `g * sigmoid(g) * u`, on two products' results or two column slices of one
(a fused gate/up weight).

What the matcher proves (and refuses otherwise, leaving the ops to the greedy grouping):

- the product's A is rank 2, [M, K] with M <= MAX_ROWS (4; more rows: every n tile would
  redo the map's vector work, where a map kernel does it once, see MAX_ROWS), and B is
  rank 2;
- A is computed by an elementwise op the fused lowering handles (`fusable_elementwise`),
  not a cast, in a float dtype the vector engine computes in (bf16, f16, f32); the ops
  taken are those whose results are read only by taken ops (A only by the product) and are
  not program outputs, each of A's shape and dtype and not a cast, at most MAX_OPS;
- every other operand of a taken op is either a scalar constant or a value of exactly A's
  shape and dtype (loaded per k step; a broadcast row or column is refused), at most
  MAX_INPUTS distinct ones;
- the map has two operands or more, or its one operand is not a product's or convolution's
  result (that product's epilogue takes a one-operand map, at no extra cost).
"""

from __future__ import annotations

# Each core redoes the map for every n tile it computes, in its k loop, where the matrix
# engine waits for it; a map kernel does the work once but costs a launch and a write and a
# read of [M, K]. Measured on Qwen3-32B's down projection (K = 25600, N = 5120, timing-only,
# a decode layer's cycles with the prologue vs a map kernel and the plain product): M890
# 4 rows 432k vs 456k, 8 rows 510k vs 467k, 64 rows 655k vs 565k; 810E 8 rows 730k vs 743k,
# 16 rows 864k vs 771k. Four rows is where it wins on both.
MAX_ROWS = 4
MAX_OPS = 8
MAX_INPUTS = 4
FLOATS = ("bf16", "f16", "f32")


def match_map_gemm(fn, users, producers, outputs):
    """(op ids, description) of each elementwise-prologue GEMM (see the module docstring)."""
    from zhenwu.compiler.passes.fuse import fusable_elementwise

    order = {op.id: i for i, op in enumerate(fn.ops)}
    for mm in fn.ops:
        if mm.kind != "matmul":
            continue
        taken, _ = analyse(mm, users, producers, outputs, fusable_elementwise)
        if taken is not None:
            ids = sorted(taken, key=order.__getitem__)
            kinds = "/".join(dict.fromkeys(producers[i].kind for i in ids))
            yield ids + [mm.id], (f"a map ({kinds}) of {mm.inputs[0].type.shape[0]} rows as "
                                  "its prologue")


def analyse(mm, users, producers, outputs, fusable) -> tuple[set[int] | None, str | None]:
    """(the ids of the map's ops, None) when the matmul `mm` takes its A's map as a
    prologue, else (None, why not)."""
    taken, why = _analyse(mm, users, producers, outputs, fusable)
    return (None, why) if why is not None else (taken, None)


def _analyse(mm, users, producers, outputs, fusable):
    a, b = mm.inputs
    shape = tuple(a.type.shape)
    if len(shape) != 2 or len(b.type.shape) != 2:
        return None, "A or B is not rank 2"
    if shape[0] > MAX_ROWS:
        return None, f"A has {shape[0]} rows (more than {MAX_ROWS})"
    dtype = a.type.dtype
    if dtype not in FLOATS:
        return None, f"A is {dtype}"
    root = producers.get(a.id)
    if root is None or root.kind == "cast" or not fusable(root):
        return None, "A is not computed by a fusable elementwise op"
    if a.id in outputs or any(u.id != mm.id for u in users[a.id]) or b.id == a.id:
        return None, "A is also read elsewhere"
    taken = {root.id}
    frontier = [root]
    while frontier:
        op = frontier.pop()
        for v in op.inputs:
            p = producers.get(v.id)
            if (p is None or p.id in taken or p.kind == "cast" or not fusable(p)
                    or tuple(v.type.shape) != shape or v.type.dtype != dtype
                    or v.id in outputs or any(u.id not in taken for u in users[v.id])):
                continue
            taken.add(p.id)
            frontier.append(p)
    if len(taken) > MAX_OPS:
        return None, f"the map has {len(taken)} ops (more than {MAX_OPS})"
    inputs = {}
    for op_id in taken:
        for v in producers[op_id].inputs:
            p = producers.get(v.id)
            if p is not None and p.id in taken:
                continue
            if p is not None and p.kind == "constant" and tuple(v.type.shape) == ():
                continue
            if tuple(v.type.shape) != shape or v.type.dtype != dtype:
                return None, (f"an operand of the map is {v.type.dtype}{list(v.type.shape)}, "
                        f"not A's {dtype}{list(shape)}")
            inputs[v.id] = p
    if not inputs:
        return None, "the map has no tensor operand"
    if len(inputs) > MAX_INPUTS:
        return None, f"the map has {len(inputs)} operands (more than {MAX_INPUTS})"
    if len(inputs) == 1:
        (source,) = inputs.values()
        if source is not None and source.kind in ("matmul", "conv2d"):
            return None, "its one operand is a product's result: that product's epilogue takes it"
    return taken, None
