"""The attention matcher of `fuse`: `softmax(q @ kᵀ · s [masked]) @ v` chains.

A match is what the flash-attention kernel (compiler/backend/flash.py) computes, and the
matcher owns the proof that the program computes the same thing. It checks every condition
the kernel relies on and refuses the rest (the ops are then fused by the other rules):

- the softmax normalises the scores' rows: every reshape between the first product and the
  softmax, and between the softmax and the second product, keeps the last dim (the keys),
  so a row of the product is a row of the softmax and a row of the second product's
  left operand, in the same row-major order;
- the rows of both products split into whole query blocks of the softmax's second-to-last
  dim (a grouped-query einsum merges [group, query] into the product's rows: the kernel
  sees the group as a batch dim, and the causal mask compares the query index within the
  block, never the merged row index);
- the mask, when there is one, is exactly `i >= j` over the softmax's last two dims and
  broadcasts over its leading dims only: `arange(n)` in a dtype that holds 0..n-1 exactly
  (fp8 rounds, i8 wraps), row index first, filled with a scalar `-inf` constant;
- the scores are f32, bf16 or f16 and each product keeps its inputs' dtype (the two may
  differ: bf16 scores, an f32 bias, then an f32 P @ V): fp8 has no
  infinity (a `-inf` fill is NaN there, docs/language.md) and saturates at 448, which the
  kernel's f32 scores would not reproduce;
- between the first product and the softmax only these, in any order: reshapes that keep
  the rows, casts that keep the range (bf16/f16 -> f32, f32 -> bf16: the kernel's f32
  scores), scalar scales (`s * c`, `c * s`, `s / c`; the kernel scales before it masks, so a
  scale after the mask must be positive) and one mask: `where(mask, s, -inf)` or an additive
  `s + where(mask, 0, -inf)` (the kernel adds -inf, so a NaN score stays NaN); between the
  softmax and the second product, reshapes that keep the rows and casts between f32, bf16
  and f16 (the kernel rounds P to the product's dtype);
- every intermediate value is used only inside the chain;
- q, k and v may each be a widening cast (bf16 -> f32: every value kept) read only by the
  products: the kernel's DMAs load the cast's source and convert, and multiply in the
  products' dtype.

Batch dims may broadcast in either product (numpy rules); the kernel broadcasts each
operand against its own product's batch shape and sees all of them through one flat batch
index (the softmax's rows in row-major order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import gcd

from zhenwu.compiler.graph.dtypes import round_float, value_preserving

# The scores' dtypes the kernel reproduces: those with an infinity, whose products it
# computes in f32 without overflowing where the program would not
SCORE_DTYPES = ("f32", "bf16", "f16")
# the largest n such that every integer 0..n-1 is exact in the dtype (arange's values)
_EXACT_COUNT = {"i32": 2 ** 31, "f32": 2 ** 24 + 1, "f16": 2049, "bf16": 257, "i8": 128,
                "fp8": 17}


@dataclass(frozen=True)
class AttentionShape:
    """How the kernel sees a matched chain: `batch` query blocks of `seq_q` queries (a
    flat index over the softmax's rows in row-major order) against `seq_k` keys; `groups1`
    and `groups2` are the query blocks in one batch of the first and second product's
    rows (grouped-query attention). The scores are scaled by `scale` (None: 1), then
    masked (`causal`), by a select or, when `additive`, by adding a 0/-inf bias (a NaN
    score then stays NaN where the mask drops it)."""

    seq_q: int
    seq_k: int
    groups1: int
    groups2: int
    causal: bool
    scale: float | None = None
    additive: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why `match_chain` refused a product (`zhenwu explain` prints it): `reason` in words,
    and `softmax`: whether a softmax feeds the product (a chain that looks like attention)."""

    reason: str
    softmax: bool = True


def _refuse(why: list | None, reason: str, softmax: bool = True) -> None:
    """Record why a match failed in `why` (when the caller asks) and return None."""
    if why is not None:
        why.append(Refusal(reason, softmax))


def mask_refusal(value, producers, seq_q: int, seq_k: int) -> str:
    """Why `value` is not the causal mask `is_causal_mask` accepts, in words."""
    op = producers.get(value.id)
    if op is None:
        return f"the mask is the boolean input '{value.name}', not i >= j"
    if op.kind != "ge":
        symbol = {"gt": ">", "le": "<=", "lt": "<", "eq": "==", "ne": "!="}.get(op.kind)
        what = f"a '{symbol}' comparison" if symbol else f"computed by {op.kind}"
        return f"the mask is {what}, not i >= j (query index >= key index)"
    shape = tuple(value.type.shape)
    if len(shape) < 2 or any(d != 1 for d in shape[:-2]):
        return "the mask is not one [queries, keys] matrix broadcast over the heads"
    if seq_q != seq_k or shape[-2:] != (seq_q, seq_k):
        return (f"the mask is [{shape[-2]}, {shape[-1]}] against {seq_q} queries and {seq_k} "
                "keys: the kernel's causal mask is i >= j over equal lengths")
    rows, cols = (tuple(v.type.shape)[-2:] for v in op.inputs)
    if rows == (1, seq_k) and cols == (seq_q, 1):
        return "the mask is j >= i (the upper triangle), not i >= j"
    for side, want in ((op.inputs[0], (seq_q, 1)), (op.inputs[1], (1, seq_k))):
        source = producers.get(side.id)
        while source is not None and source.kind == "reshape":
            source = producers.get(source.inputs[0].id)
        if source is not None and source.kind == "iota" and tuple(side.type.shape) == want:
            n, dtype = source.attrs["n"], source.attrs["dtype"]
            if n > _EXACT_COUNT.get(dtype, 0):
                return f"the mask's arange({n}) is {dtype}, which does not hold 0..{n - 1} exactly"
            continue
        return "the mask compares other values than arange(queries)[:, None] and arange(keys)"
    return "the mask is not i >= j"


def row_reduction(op) -> bool:
    """A reduction of the last axis with keepdims."""
    if op.kind not in ("reduce_sum", "reduce_max") or not op.attrs.get("keepdims"):
        return False
    shape = op.inputs[0].type.shape
    return (len(shape) >= 1 and shape[-1] > 1 and tuple(op.attrs["axes"]) == (len(shape) - 1,)
            and op.inputs[0].type.dtype != "bool")


def _row_reshapes(value, producers, chain: list):
    """The op behind `value` past reshapes that keep the last dim (appended to `chain`);
    None when a reshape changes it (the softmax would normalise another set)."""
    op = producers.get(value.id)
    while op is not None and op.kind == "reshape":
        before, after = op.inputs[0].type.shape, op.result.type.shape
        if not before or not after or before[-1] != after[-1]:
            return None
        chain.append(op)
        op = producers.get(op.inputs[0].id)
    return op


def scalar_constant(value, producers) -> float | None:
    """The value of a rank-0 constant as its dtype rounds it, else None."""
    op = producers.get(value.id)
    if op is not None and op.kind == "constant" and not op.result.type.shape:
        dtype = op.result.type.dtype
        if dtype not in SCORE_DTYPES:
            return None
        return round_float(float(op.attrs["value"]), dtype)
    return None


def _scale_of(op, producers) -> tuple[object, float] | None:
    """(scores, factor) when `op` is `scores * c`, `c * scores` or `scores / c` with a
    scalar constant c and the scores' shape, else None."""
    if op.kind not in ("mul", "div"):
        return None
    a, b = op.inputs
    for scores, const in ((a, b), (b, a)) if op.kind == "mul" else ((a, b),):
        c = scalar_constant(const, producers)
        if c is None or scores.type.shape != op.result.type.shape:
            continue
        if op.kind == "div":
            if c == 0 or not math.isfinite(c):
                return None
            c = 1.0 / c
        return scores, c
    return None


def _bias_mask(op, producers) -> tuple[object, object] | None:
    """(scores, mask) when `op` is `scores + where(mask, 0, -inf)` (either order) with the
    scores' shape, else None."""
    if op.kind != "add":
        return None
    for scores, bias in (op.inputs, op.inputs[::-1]):
        where = producers.get(bias.id)
        if (where is None or where.kind != "where" or scores.type.shape != op.result.type.shape
                or scalar_constant(where.inputs[1], producers) != 0.0
                or scalar_constant(where.inputs[2], producers) != float("-inf")):
            continue
        return scores, where
    return None


# casts the kernel's f32 scores reproduce: none narrows the range (to f16 it would overflow)
_RANGE = {"f16": 0, "bf16": 1, "f32": 1}


def _range_keeping_cast(op) -> bool:
    if op.kind != "cast":
        return False
    src, dst = op.inputs[0].type.dtype, op.result.type.dtype
    return src in _RANGE and dst in _RANGE and _RANGE[dst] >= _RANGE[src]


def _iota_through_reshapes(value, producers, shape: tuple[int, ...]):
    """The exact `arange(n)` behind `value` (a reshape of it to `shape`), else None."""
    if tuple(value.type.shape) != shape:
        return None
    op = producers.get(value.id)
    while op is not None and op.kind == "reshape":
        op = producers.get(op.inputs[0].id)
    if op is None or op.kind != "iota":
        return None
    if op.attrs["n"] > _EXACT_COUNT.get(op.attrs["dtype"], 0):
        return None  # arange's values round or wrap: the mask is not i >= j
    return op


def is_causal_mask(value, producers, seq_q: int, seq_k: int) -> bool:
    """Whether `value` is exactly `arange(seq_q)[:, None] >= arange(seq_k)[None, :]`
    (query i sees keys j <= i), possibly with leading dims of 1."""
    op = producers.get(value.id)
    if op is None or op.kind != "ge" or value.type.dtype != "bool":
        return False
    shape = tuple(value.type.shape)
    if len(shape) < 2 or shape[-2:] != (seq_q, seq_k) or any(d != 1 for d in shape[:-2]):
        return False
    rows, cols = op.inputs
    row_iota = _iota_through_reshapes(rows, producers, (seq_q, 1))
    col_iota = _iota_through_reshapes(cols, producers, (1, seq_k))
    if row_iota is None or col_iota is None:
        return False
    return row_iota.attrs["n"] == seq_q and col_iota.attrs["n"] == seq_k and seq_q == seq_k


def _softmax(value, producers) -> dict | None:
    """The ops of `softmax(x)` over the last axis ending at `value` (a div), or None."""
    div = producers.get(value.id)
    if div is None or div.kind != "div":
        return None
    exp, total = (producers.get(v.id) for v in div.inputs)
    if exp is None or total is None or exp.kind != "exp" or total.kind != "reduce_sum":
        return None
    if total.inputs[0] is not exp.result or not row_reduction(total):
        return None
    sub = producers.get(exp.inputs[0].id)
    if sub is None or sub.kind != "sub":
        return None
    peak = producers.get(sub.inputs[1].id)
    if peak is None or peak.kind != "reduce_max" or not row_reduction(peak):
        return None
    x = sub.inputs[0]
    if peak.inputs[0] is not x:
        return None
    shape = tuple(x.type.shape)
    if any(tuple(v.type.shape) != shape for v in (sub.result, exp.result, div.result)):
        return None
    return {"div": div, "exp": exp, "sum": total, "sub": sub, "max": peak}


def _plain_matmul(op) -> bool:
    """A product whose operands and result share one dtype (no accumulation type: a product
    with its own `acc=` dtype is not the kernel's)."""
    if op is None or op.kind != "matmul" or len(op.inputs) != 2 or "acc" in op.attrs:
        return False
    dtype = op.result.type.dtype
    return all(v.type.dtype == dtype and v.type.rank >= 2 for v in op.inputs)


def _scores_chain(x, producers, chain: list, ops: dict, why: list | None = None):
    """Walk back from the softmax's input `x` to the first product: reshapes that keep the
    rows, range-keeping casts, scalar scales and one mask (a select or an additive bias).
    Returns (m1, scale, mask, where-op, additive) or None; the ops walked go to `chain`
    (reshapes and casts) and `ops`."""
    scale, mask, masker, additive, after_mask = 1.0, None, None, False, []
    while True:
        op = producers.get(x.id)
        if op is None:
            return _refuse(why, f"the scores come from the input '{x.name}', not a product")
        if op.kind == "matmul":
            break
        if op.kind == "reshape":
            before, now = op.inputs[0].type.shape, op.result.type.shape
            if not before or not now or before[-1] != now[-1]:
                return _refuse(why, f"the reshape %{op.id} before the softmax changes the keys' "
                               "dim")
            chain.append(op)
            x = op.inputs[0]
        elif _range_keeping_cast(op):
            chain.append(op)
            x = op.inputs[0]
        elif (scaled := _scale_of(op, producers)) is not None:
            ops.setdefault("scales", []).append(op)
            x, factor = scaled
            scale *= factor
            if mask is None:
                after_mask.append(factor)
        elif op.kind == "where" and mask is None:
            mask, kept, fill = op.inputs
            if scalar_constant(fill, producers) != float("-inf"):
                if scalar_constant(kept, producers) == float("-inf"):
                    # canonicalize turns where(i > j, s, -inf) into where(j >= i, -inf, s)
                    return _refuse(why, "the mask drops the diagonal (i > j: the first query "
                                   "sees no key), not i >= j (query index >= key index)")
                value = scalar_constant(fill, producers)
                if value is not None:
                    return _refuse(why, f"the mask fills {value:g}, not -inf: the kernel skips "
                                   "the masked keys, which is exact only when they weigh 0")
                return _refuse(why, "the mask fills the scores with something other than a "
                               "scalar -inf")
            if kept.type.shape != op.result.type.shape:
                return _refuse(why, "the masked scores are broadcast by the mask")
            masker = op
            x = kept
        elif mask is None and (biased := _bias_mask(op, producers)) is not None:
            x, bias = biased
            masker, mask, additive = op, bias.inputs[0], True
            ops["bias"] = bias
        else:
            return _refuse(why, _step_refusal(op, mask is not None))
    # the kernel scales, then masks: a scale after the mask must keep -inf as -inf
    if mask is not None and any(f <= 0 for f in after_mask):
        return _refuse(why, "a scale after the mask is not positive (the kernel scales "
                       "before it masks)")
    return op, (None if scale == 1.0 else scale), mask, masker, additive


def _softmax_like(value, producers) -> bool:
    """Whether `value` (past reshapes and casts) is `e / sum(e)` of an `e = exp(...)`: a
    softmax along some axes, the last or not (read from the ops, not from their origin)."""
    op = producers.get(value.id)
    while op is not None and op.kind in ("reshape", "cast"):
        op = producers.get(op.inputs[0].id)
    if op is None or op.kind != "div":
        return False
    exp, total = (producers.get(v.id) for v in op.inputs)
    return (exp is not None and total is not None and exp.kind == "exp"
            and total.kind == "reduce_sum" and total.inputs[0] is exp.result)


def _step_refusal(op, masked: bool) -> str:
    """Why `op`, between the first product and the softmax, stops the chain."""
    if op.kind == "cast":
        return (f"the scores are cast {op.inputs[0].type.dtype} -> {op.result.type.dtype} "
                "before the softmax, which narrows their range")
    if masked and op.kind in ("where", "add"):
        return "the scores are masked twice"
    if op.kind in ("mul", "div"):
        return (f"the scores are scaled ({op.kind}) by something other than a finite scalar "
                "constant")
    if op.kind == "add":
        return "the scores get an additive bias that is not where(mask, 0, -inf)"
    return (f"a {op.kind} (%{op.id}) between the first product and the softmax is not a "
            "reshape, cast, scalar scale or mask")


def match_chain(m2, producers, why: list | None = None
                ) -> tuple[dict, list, AttentionShape] | None:
    """(named ops, reshapes and casts, shape) when matmul `m2` ends an attention chain the
    kernel computes exactly, else None. See the module docstring for the conditions; `why`,
    when given, gets a `Refusal` saying which one failed."""
    plain = _plain_matmul(m2)
    if not plain and why is None:
        return None
    chain: list = []
    after = producers.get(m2.inputs[0].id)
    while after is not None and (after.kind == "reshape" or _range_keeping_cast(after)
                                 or (after.kind == "cast" and after.result.type.dtype
                                     in SCORE_DTYPES)):
        if after.kind == "reshape":
            before, now = after.inputs[0].type.shape, after.result.type.shape
            if not before or not now or before[-1] != now[-1]:
                return _refuse(why, "a reshape between the softmax and the second product "
                               "changes the keys' dim",
                               softmax=_softmax_like(after.inputs[0], producers))
        chain.append(after)
        after = producers.get(after.inputs[0].id)
    if after is None:
        return _refuse(why, "no softmax feeds the product", softmax=False)
    ops = _softmax(after.result, producers)
    if ops is None:
        if _softmax_like(after.result, producers):
            return _refuse(why, "the softmax does not normalise the last axis (the keys)")
        return _refuse(why, "no softmax feeds the product", softmax=False)
    if not plain:
        return _refuse(why, "the second product has its own accumulation dtype or mixes "
                       "dtypes")
    shape = tuple(ops["sub"].result.type.shape)
    dtype = m2.result.type.dtype
    if dtype not in SCORE_DTYPES or ops["sub"].result.type.dtype not in SCORE_DTYPES:
        bad = dtype if dtype not in SCORE_DTYPES else ops["sub"].result.type.dtype
        return _refuse(why, f"the softmax or the product is {bad}: only f32, bf16 and f16 "
                       "have the -inf and range the kernel's f32 scores reproduce")
    seq_k = shape[-1]
    walked = _scores_chain(ops["sub"].inputs[0], producers, chain, ops, why)
    if walked is None:
        return None
    m1, scale, mask, masker, additive = walked
    causal = mask is not None
    seq_q = masker.result.type.shape[-2] if causal and masker.result.type.rank >= 2 else 1
    if causal and not is_causal_mask(mask, producers, seq_q, seq_k):
        return _refuse(why, mask_refusal(mask, producers, seq_q, seq_k))
    if not _plain_matmul(m1):
        return _refuse(why, "the first product has its own accumulation dtype or mixes dtypes")
    if m1.result.type.dtype not in SCORE_DTYPES:
        return _refuse(why, f"the first product is {m1.result.type.dtype}: the kernel's "
                       "scores are f32, bf16 or f16")
    rows1 = m1.result.type.shape[-2]
    rows2 = m2.inputs[0].type.shape[-2]
    if m1.result.type.shape[-1] != seq_k or m2.inputs[0].type.shape[-1] != seq_k:
        return _refuse(why, "the products' key dims do not match the softmax's rows")
    if not causal:
        seq_q = gcd(rows1, rows2)  # rows are independent: any common block will do
    if rows1 % seq_q or rows2 % seq_q:
        # a query block would straddle two batches of a product
        return _refuse(why, "a block of queries would straddle two batches of a product")
    if causal:
        ops["where" if not additive else "masked"] = masker
    ops["m1"] = m1
    ops["m2"] = m2
    return ops, chain, AttentionShape(seq_q, seq_k, rows1 // seq_q, rows2 // seq_q, causal,
                                      scale, additive)


def match_attention(fn, users, producers, outputs) -> list[tuple[list[int], str]]:
    """Every attention chain of `fn`: (op ids in program order, description) for each."""
    found = []
    taken: set[int] = set()
    for m2 in fn.ops:
        if m2.kind != "matmul" or m2.id in taken:
            continue
        matched = match_chain(m2, producers)
        if matched is None:
            continue
        ops, chain, shape = matched
        m1 = ops["m1"]
        if m1.id in taken:
            continue
        members = [m1] + chain + [op for name, op in ops.items()
                                  if name not in ("m1", "m2", "scales", "bias")]
        members += ops.get("scales", []) + ([ops["bias"]] if "bias" in ops else [])
        members.append(m2)
        # reshapes merging the operands' batch dims (an einsum's batched matmul of q, k and
        # v with [batch, heads] leading axes): the kernel reads their sources through views
        # A widening cast of q, k or v (bf16 -> f32) goes too: the kernel's DMAs load its
        # source and convert, and a reshape behind the cast is read through as above
        for value in dict.fromkeys(list(m1.inputs) + [m2.inputs[1]]):
            op = producers.get(value.id)
            readers = (m1, m2)
            if (op is not None and op.kind == "cast" and op.id not in taken
                    and value.id not in outputs and op not in members
                    and all(any(u is r for r in readers) for u in users[op.id])
                    and value_preserving(op.inputs[0].type.dtype, op.attrs["dtype"])):
                members.append(op)
                readers = (op,)
                value = op.inputs[0]
                op = producers.get(value.id)
            if (op is not None and op.kind == "reshape" and op.id not in taken
                    and value.id not in outputs and op not in members
                    and all(any(u is r for r in readers) for u in users[op.id])):
                members.append(op)
        # a reshape of the result (heads merged back): the kernel stores in its layout
        last = m2
        after = users[m2.id]
        if (len(after) == 1 and after[0].kind == "reshape" and m2.id not in outputs
                and after[0].id not in taken):
            last = after[0]
            members.append(last)
        ids = {op.id for op in members}
        # every value but the group's result stays inside
        if any(op.id in outputs or any(u.id not in ids for u in users[op.id])
               for op in members if op is not last):
            continue
        # the causal mask is made in the kernel: its ops go too when nothing else reads them
        if "where" in ops or "bias" in ops:
            masker = ops["where"] if "where" in ops else ops["bias"]
            todo = [producers.get(masker.inputs[0].id)]
            while todo:
                op = todo.pop()
                if op is None or op.id in ids or op.id in outputs:
                    continue
                if all(u.id in ids for u in users[op.id]):
                    ids.add(op.id)
                    todo += [producers.get(v.id) for v in op.inputs]
        order = [op.id for op in fn.ops if op.id in ids]
        taken |= ids
        masked = "causal" if shape.causal else "unmasked"
        found.append((order, f"{masked} attention, scores {list(m1.result.type.shape)}"))
    return found
