"""Attention as people write it, for the fuzzer: every form the attention matcher
(compiler/passes/attention_match.py) accepts, and the near misses it must refuse.

One draw picks, independently:
- a layout: per-head K/V, grouped-query (`kgsd,ktd->kgst`, Qwen's `skgd,tkd->kgst`, or K/V
  broadcast to the query heads), multi-query (one K/V for all heads), one K/V per batch
  (`bhqd,bkd->bhqk`), and batch dims broadcast in the product (k `[B, 1, T, D]`) or
  regrouped between the two products;
- how the products are written: einsum, `@` with a transpose, or `@` of a broadcast (K/V
  also broadcast to the query heads and merged into them, then an einsum);
- a reshape around the softmax that keeps its rows (heads merged) or changes them;
- the scale: on the scores (`* c`, `c *`, `/ c`), on q, or none;
- the mask: none, `where(mask, s, -inf)`, an additive `where(mask, 0.0, -inf)` bias or
  upper-triangle `where(i < j, -inf, 0.0)` bias (the mask spelt `i >= j`, `j <= i`, or the
  strict `i > j` that must be refused), or a
  boolean input; built from `arange` in i32, i8, f32, bf16 or fp8 (fp8 rounds beyond 16,
  i8 wraps beyond 127, so some of these masks are not causal);
- the dtypes: f32, bf16, f16 or fp8 inputs, and the softmax in the inputs' dtype or in f32
  (a cast before the mask and one after the softmax), or q, k and v each cast up to f32
  before the products.

The old generator drew one layout only (`[H, S, D]` per-head K/V, an i32 mask, no reshape,
cast or broadcast), so none of the matcher's row, batch, mask or dtype conditions was ever
tested against a program that breaks it.
"""

from __future__ import annotations

import math
import re

SEQS = (1, 5, 16, 17, 33)
KEYS = (1, 7, 16, 31)
DIMS = (4, 8, 16)


def _causal_mask(builder, seq: int, spelling: str | None = None) -> str:
    """`i >= j` over arange(seq) in a drawn dtype (maybe inexact), spelt `i >= j` or
    `j <= i`, and now and then the strict `i > j`, which is no causal mask (the first
    query sees no key) and must be refused."""
    dtype = builder.chooser.choice(("", "", "i8", "fp8", "bf16", "f32"))
    arg = f"{seq}, dtype={dtype}" if dtype else f"{seq}"
    i, j = f"arange({arg})[:, None]", f"arange({arg})[None, :]"
    spelling = spelling or builder.chooser.choice(("ge", "ge", "le", "gt"))
    return {"ge": f"{i} >= {j}", "le": f"{j} <= {i}", "gt": f"{i} > {j}",
            "lt": f"{i} < {j}"}[spelling]


def draw_attention(builder) -> None:
    """Bind one attention computation in `builder` (a fuzz ProgramBuilder)."""
    choose = builder.chooser.choice
    layout = choose(("heads", "gqa", "gqa_seq_major", "gqa_broadcast", "gqa_merged_broadcast",
                     "mqa", "batch_kv", "broadcast_batch"))
    causal = bool(builder.chooser.integer(0, 1))
    seq_q = choose(SEQS)
    # i8 masks wrap beyond 127: now and then a sequence that long (with a small head dim)
    if causal and builder.chooser.integer(0, 7) == 0:
        seq_q = 130
    seq_k = seq_q if causal else choose(KEYS)
    dim = 4 if seq_q > 64 else choose(DIMS)
    dtype = choose(("f32", "f32", "bf16", "bf16", "f16", "fp8"))
    softmax_dtype = choose((dtype, "f32")) if dtype in ("bf16", "f16") else dtype
    heads = choose((1, 2, 3, 40)) if seq_q <= 64 else 1

    # now and then q, k and v are cast up to f32 first (the products and softmax in f32)
    upcast = dtype in ("bf16", "f16", "fp8") and builder.chooser.integer(0, 3) == 0
    in_dtype = dtype

    def param(shape):
        tensor = builder.new_param(tuple(shape), in_dtype)
        return f"cast({tensor.name}, f32)" if upcast else tensor.name

    scale = 1.0 / math.sqrt(dim)
    scale_at = choose(("scores", "scores_left", "divide", "q", "none"))
    if layout == "heads":
        q, k, v = param((heads, seq_q, dim)), param((heads, seq_k, dim)), param((heads, seq_k, dim))
        batch, out_shape = (heads,), (heads, seq_q, dim)
        qs = f"{q} * {scale!r}" if scale_at == "q" else q
        if builder.chooser.integer(0, 1):
            scores = f'einsum("hqd,hkd->hqk", {qs}, {k})'
            pv = 'einsum("hqk,hkd->hqd", {p}, ' + v + ")"
        else:
            scores = f"{qs} @ transpose({k}, [0, 2, 1])"
            pv = "{p} @ " + v
        finish = "{o}"
    elif layout == "gqa_merged_broadcast":  # K/V broadcast to the heads, merged, einsum
        kv, group = choose((1, 2)), choose((2, 4))
        heads = kv * group
        q, k, v = param((seq_q, heads, dim)), param((seq_k, kv, dim)), param((seq_k, kv, dim))

        def to_heads(x: str) -> str:
            return (f"reshape(broadcast_to(reshape({x}, [{seq_k}, {kv}, 1, {dim}]), "
                    f"[{seq_k}, {kv}, {group}, {dim}]), [{seq_k}, {heads}, {dim}])")

        qs = f"{q} * {scale!r}" if scale_at == "q" else q
        scores = f'einsum("qhd,khd->hqk", {qs}, {to_heads(k)})'
        pv = 'einsum("hqk,khd->qhd", {p}, ' + to_heads(v) + ")"
        batch, out_shape = (heads,), (seq_q, heads, dim)
        finish = "{o}"
    elif layout in ("gqa", "gqa_seq_major", "gqa_broadcast"):
        kv, group = choose((1, 2)), choose((2, 4))
        batch, out_shape = (kv, group), (kv * group, seq_q, dim)
        if layout == "gqa_seq_major":  # Qwen: [S, KVH, G, HD] queries, [T, KVH, HD] keys
            q, k, v = param((seq_q, kv * group, dim)), param((seq_k, kv, dim)), param(
                (seq_k, kv, dim))
            qg = f"reshape({q}, [{seq_q}, {kv}, {group}, {dim}])"
            qg = f"{qg} * {scale!r}" if scale_at == "q" else qg
            scores = f'einsum("skgd,tkd->kgst", {qg}, {k})'
            pv = 'einsum("kgst,tkd->skgd", {p}, ' + v + ")"
            out_shape = (seq_q, kv * group, dim)
            finish = f"reshape({{o}}, [{seq_q}, {kv * group}, {dim}])"
        else:
            q, k, v = param((kv * group, seq_q, dim)), param((kv, seq_k, dim)), param(
                (kv, seq_k, dim))
            qg = f"reshape({q}, [{kv}, {group}, {seq_q}, {dim}])"
            qg = f"{qg} * {scale!r}" if scale_at == "q" else qg
            finish = f"reshape({{o}}, [{kv * group}, {seq_q}, {dim}])"
            if layout == "gqa":
                scores = f'einsum("kgsd,ktd->kgst", {qg}, {k})'
                pv = 'einsum("kgst,ktd->kgsd", {p}, ' + v + ")"
            else:  # K/V broadcast to every query head of their group
                kb = f"broadcast_to(reshape({k}, [{kv}, 1, {seq_k}, {dim}]), " \
                     f"[{kv}, {group}, {seq_k}, {dim}])"
                vb = f"broadcast_to(reshape({v}, [{kv}, 1, {seq_k}, {dim}]), " \
                     f"[{kv}, {group}, {seq_k}, {dim}])"
                scores = f"{qg} @ transpose({kb}, [0, 1, 3, 2])"
                pv = "{p} @ " + vb
    elif layout == "mqa":
        q, k, v = param((heads, seq_q, dim)), param((seq_k, dim)), param((seq_k, dim))
        batch, out_shape = (heads,), (heads, seq_q, dim)
        qs = f"{q} * {scale!r}" if scale_at == "q" else q
        if builder.chooser.integer(0, 1):
            scores = f'einsum("hqd,kd->hqk", {qs}, {k})'
            pv = 'einsum("hqk,kd->hqd", {p}, ' + v + ")"
        else:
            scores = f"{qs} @ transpose({k})"
            pv = "{p} @ " + v
        finish = "{o}"
    elif layout == "batch_kv":
        b = choose((1, 2))
        heads = min(heads, 3)
        q = param((b, heads, seq_q, dim))
        k, v = param((b, seq_k, dim)), param((b, seq_k, dim))
        batch, out_shape = (b, heads), (b, heads, seq_q, dim)
        qs = f"{q} * {scale!r}" if scale_at == "q" else q
        scores = f'einsum("bhqd,bkd->bhqk", {qs}, {k})'
        pv = 'einsum("bhqk,bkd->bhqd", {p}, ' + v + ")"
        finish = "{o}"
    else:  # broadcast_batch: k [B, 1, T, D] against q [B, H, S, D]; maybe regrouped
        b = choose((2, 3))
        heads = min(heads, 3)
        q = param((b, heads, seq_q, dim))
        k = param((b, 1, seq_k, dim))
        qs = f"{q} * {scale!r}" if scale_at == "q" else q
        scores = f"{qs} @ transpose({k}, [0, 1, 3, 2])"
        batch = (b, heads)
        if builder.chooser.integer(0, 1):  # regroup the batch dims between the products
            v = param((heads, b, seq_k, dim))
            pv = f"reshape({{p}}, [{heads}, {b}, {seq_q}, {seq_k}]) @ {v}"
            out_shape = (heads, b, seq_q, dim)
        else:
            v = param((b, 1, seq_k, dim))
            pv = "{p} @ " + v
            out_shape = (b, heads, seq_q, dim)
        finish = "{o}"

    if scale_at == "scores":
        scores = f"{scores} * {scale!r}"
    elif scale_at == "scores_left":
        scores = f"{scale!r} * {scores}"
    elif scale_at == "divide":
        scores = f"{scores} / {1.0 / scale!r}"
    if upcast:
        dtype = softmax_dtype = "f32"
    if softmax_dtype != dtype:
        scores = f"cast({scores}, {softmax_dtype})"
    s = builder.bind(scores, softmax_dtype, batch + (seq_q, seq_k))
    builder.values.remove(s)

    mask_form = choose(("where", "where", "bias", "upper_bias", "input")) if causal else "none"
    if mask_form == "where":
        scores = f"where({_causal_mask(builder, seq_q)}, {s.name}, -inf)"
    elif mask_form == "bias":  # an f32 bias, as a precomputed one would be
        scores = f"{s.name} + where({_causal_mask(builder, seq_q)}, 0.0, -inf)"
        softmax_dtype = "f32"
    elif mask_form == "upper_bias":  # -inf above the diagonal: where(i < j, -inf, 0.0)
        scores = f"{s.name} + where({_causal_mask(builder, seq_q, 'lt')}, -inf, 0.0)"
        softmax_dtype = "f32"
    elif mask_form == "input":
        mask = builder.new_param((seq_q, seq_k), "bool")
        builder.values.remove(mask)
        builder.reserved.append(mask)
        scores = f"where({mask.name}, {s.name}, -inf)"
    else:
        scores = s.name

    # a reshape around the softmax: one that keeps the rows (heads merged), or one that
    # changes them (the softmax then normalises another set: no attention for the matcher)
    around = choose(("none", "none", "merge_heads", "change_rows"))
    full = batch + (seq_q, seq_k)
    if around == "merge_heads":
        flat = [math.prod(full[:-1]), seq_k]
        probs = f"reshape(softmax(reshape({scores}, {flat}), axis=-1), {list(full)})"
    elif around == "change_rows" and seq_q * seq_k > 1:
        changed = [seq_k, seq_q] if seq_q != seq_k else [seq_q * seq_k]
        probs = (f"reshape(softmax(reshape({scores}, {list(batch) + changed}), axis=-1), "
                 f"{list(full)})")
    else:
        probs = f"softmax({scores}, axis=-1)"
    if softmax_dtype != dtype and not upcast and builder.chooser.integer(0, 2) == 0:
        # P stays f32 (an f32 bias promoted the softmax) and V is cast up to meet it: the
        # second product is f32, the first in the inputs' dtype
        pv = re.sub(rf"\b{v}\b", f"cast({v}, f32)", pv)
        finish = finish.replace("{o}", "cast({o}, " + dtype + ")")
    elif softmax_dtype != dtype:
        probs = f"cast({probs}, {dtype})"
    p = builder.bind(probs, "f32" if "cast(" + v in pv else dtype, full)
    builder.values.remove(p)
    o = pv.format(p=p.name)
    builder.bind(finish.format(o=o), dtype, out_shape)
