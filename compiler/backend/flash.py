"""Flash attention: `softmax(q @ kᵀ · s [+ causal mask]) @ v` as one kernel (docs/design.md section 5).

One nest over (batch·heads, query, head dim, key): per parallel tile (a block of `tile_q`
queries of one head) the Q block is loaded once, and every key step loads a Kᵀ and a V
block, computes the scores in ACC (MX), scales and masks them (the causal mask from VIOTA
coordinates, never from HBM), and updates the online softmax on the vector engine:

    m' = max(m, rowmax(S));  c = exp(m - m');  P = exp(S - m')
    l = l·c + rowsum(P);     O = O·c + P @ V (MX);  m = m'

After the last key step O / l is stored. The score matrix never leaves the core: the kernel
reads q, k and v once per query block and writes the output once.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import product
from math import prod

from zhenwu.compiler.backend.kernel_ir import (
    Buffer,
    Iota,
    Load,
    Mma,
    Nest,
    Reduce,
    Store,
    Vec,
    View,
)
from zhenwu.compiler.backend.lower import aligned, mma_dtypes
from zhenwu.compiler.backend.tiling import round_up
from zhenwu.compiler.graph.dtypes import itemsize
from zhenwu.compiler.graph.ir import TensorType
from zhenwu.isa.program import MAX_RANK as MAX_DESC_RANK

MAX_TILE = 128
# the head dims one kernel takes whole (Q, K, V and O tiles span the head dim): 64, 128, 256
MAX_HEAD_DIM = 256


class NotFlashable(Exception):
    """The chain's views cannot be seen as [batch, rows, dim]: lower it op by op."""


def _operand(low, value, group: dict, batch: tuple[int, ...], seq_q: int | None):
    """A view of a product's operand `value` as [*b, rows, cols] over the product's batch
    dims `batch` (broadcast where the operand is), its rows split into query blocks
    [*b, rows / seq_q, seq_q, cols] when `seq_q` is given. `b` is the batch in row-major
    order, regrouped as the operand's source allows: through a reshape of the group
    (merged batch dims of an einsum) the kernel reads the source, so a strided q, k or v
    needs no copy."""
    op = group.get(value.id)
    src = low.view_of(op.inputs[0] if op is not None else value)
    shape = tuple(value.type.shape)
    rows, cols = shape[-2:]
    tail = (rows // seq_q, seq_q, cols) if seq_q else (rows, cols)
    if prod(shape[:-2]) != prod(batch):  # broadcast along the product's batch dims
        view = src.reshape(shape)
        if view is None:
            raise NotFlashable()
        view = view.broadcast(batch + (rows, cols))
        view = view.reshape(batch + tail)
        if view is None:
            raise NotFlashable()
        return view
    return _regrouped(src, shape, tail)


def _regrouped(src, shape: tuple[int, ...], tail: tuple[int, ...]):
    """`src` (the data of a [*batch, rows, cols] value `shape` in row-major order, maybe
    shaped otherwise) as [*b, *tail]: b the batch regrouped as src's own leading dims
    allow, else as the value's."""
    batch, (rows, cols) = prod(shape[:-2]), shape[-2:]
    tries = [tuple(src.shape[:cut]) + tail for cut in range(len(src.shape) + 1)
             if prod(src.shape[:cut]) == batch and prod(src.shape[cut:]) == rows * cols]
    for target in tries + [tuple(shape[:-2]) + tail]:
        view = src.reshape(target)
        if view is not None:
            return view
    raise NotFlashable()


def _repeat(tv, groups: int):
    """[..., rows, cols] -> [..., groups, rows, cols] through stride 0 (grouped-query K/V
    read by every query block of a group, never copied)."""
    *batch, rows, cols = tv.shape
    return replace(tv, shape=tuple(batch) + (groups, rows, cols),
                   strides=tuple(tv.strides[:-2]) + (0,) + tuple(tv.strides[-2:]))


def _fold_shared_kv(views):
    """Without a mask rows are independent: a batch dim along which K and V do not move
    (stride 0: query heads sharing a KV head) joins the rows of q and the output when they
    merge, so a group's K/V tiles are loaded once for all its heads (decode: a query per
    head) instead of once per head."""
    q, kt, v, o = views
    batch = kt.shape[:-2]
    if v.shape[:-2] != batch:
        return views
    regrouped = [tv.reshape(batch + tv.shape[-2:]) for tv in (q, o)]
    if any(tv is None for tv in regrouped):
        return views
    q, o = regrouped
    while len(q.shape) > 2:
        size = q.shape[-3]
        if size != 1 and (kt.strides[-3] != 0 or v.strides[-3] != 0):
            break
        merged = [tv.reshape(tv.shape[:-3] + (size * tv.shape[-2], tv.shape[-1]))
                  for tv in (q, o)]
        if any(tv is None for tv in merged) or merged[0].shape[-2] > MAX_TILE:
            break
        q, o = merged
        kt, v = (replace(tv, shape=tv.shape[:-3] + tv.shape[-2:],
                         strides=tv.strides[:-3] + tv.strides[-2:]) for tv in (kt, v))
    return [q, kt, v, o]


def _batch_split(views):
    """The views [batch..., rows, cols] (each batch dims a factoring of the same flat batch
    index) as [outer..., inner, rows, cols] with one shared `outer` (each outer index is one
    nest), as few nests as possible; or NotFlashable."""
    total = prod(views[0].shape[:-2])
    candidates = [tuple(d for d in tv.shape[:-2] if d != 1) for tv in views] + [(total,)]
    best = None
    for batch in dict.fromkeys(candidates):
        for j in range(len(batch) + 1):
            outer, inner = batch[:j], prod(batch[j:])
            if best is not None and prod(outer) >= prod(best[0]):
                break
            split = [tv.reshape(outer + (inner,) + tuple(tv.shape[-2:])) for tv in views]
            if all(view is not None for view in split):
                best = (outer, split)
                break
    if best is None:
        raise NotFlashable()
    return best


def _pick(tv, index: tuple[int, ...]):
    """The [inner, rows, cols] view at outer batch `index` of `tv`."""
    offset = tv.offset + sum(i * s for i, s in zip(index, tv.strides))
    n = len(index)
    return replace(tv, offset=offset, shape=tv.shape[n:], strides=tv.strides[n:])


def _view(tv, axes: tuple[int, ...]) -> View:
    return View(tv.tensor, tv.dtype, tv.offset, axes, tv.shape, tv.strides, (0,) * len(axes))


def lower_attention_group(low, ops) -> None:
    """Lower an attention group (compiler/passes/fuse.py `match_attention`) as one kernel."""
    try:
        _lower_flash(low, ops)
    except NotFlashable:
        _lower_each(low, ops)


def _lower_each(low, ops) -> None:
    from zhenwu.compiler.backend.fusion import ROW_REDUCE
    from zhenwu.compiler.backend.gemm import lower_matmul_group
    from zhenwu.compiler.backend.lower import Lowering

    for op in ops:
        if op.kind == "matmul":
            lower_matmul_group(low, [op])
        elif op.kind in ROW_REDUCE or op.kind in ("reshape", "iota", "constant"):
            Lowering.lower_op(low, op)
        else:
            low.lower_elementwise([op])


def _lower_flash(low, ops) -> None:
    from zhenwu.compiler.passes.attention_match import match_chain

    m2 = [op for op in ops if op.kind == "matmul"][-1]
    matched = match_chain(m2, low.fn.producers())
    if matched is None:  # pragma: no cover - the group is the matcher's
        raise NotFlashable()
    named, _, shape = matched
    m1, m2 = named["m1"], named["m2"]
    scale = shape.scale
    group = {op.id: op for op in ops if op.kind == "reshape"}
    dim = m1.inputs[0].type.shape[-1]
    dim_v = m2.inputs[1].type.shape[-1]
    if dim != dim_v or dim > MAX_HEAD_DIM:
        raise NotFlashable()
    seq_q, seq_k = shape.seq_q, shape.seq_k
    batch1 = tuple(m1.result.type.shape[:-2])
    batch2 = tuple(m2.result.type.shape[:-2])
    # each operand against its own product's batch dims, then the query blocks of a
    # product's rows as one more batch dim (K and V repeated through stride 0)
    # a widening cast in the group (fuse.py) is done by the operand's DMA: read its source
    casts = {op.id: op.inputs[0] for op in ops if op.kind == "cast"}
    q, k, v = (casts.get(x.id, x) for x in (m1.inputs[0], m1.inputs[1], m2.inputs[1]))
    # the products' dtypes: P @ V's for P and V, q @ kᵀ's for q and k (they may differ: an
    # f32 bias promotes the softmax and P @ V of bf16 scores)
    dtypes = (m2.inputs[0].type.dtype, m1.inputs[0].type.dtype)
    q_tv = _operand(low, q, group, batch1, seq_q)
    kt_tv = _repeat(_operand(low, k, group, batch1, None), shape.groups1)
    v_tv = _repeat(_operand(low, v, group, batch2, None), shape.groups2)
    # the output, or the reshape of it the group ends with (stored in that layout)
    last = next((op for op in ops if op.kind == "reshape" and op.inputs[0] is m2.result), m2)
    out = _output(low, last)
    m2_shape = tuple(m2.result.type.shape)
    o_tv = _regrouped(out, m2_shape, (m2_shape[-2] // seq_q, seq_q, m2_shape[-1]))
    if not shape.causal:
        q_tv, kt_tv, v_tv, o_tv = _fold_shared_kv([q_tv, kt_tv, v_tv, o_tv])
    outer, (q4, kt4, v4, o4) = _batch_split([q_tv, kt_tv, v_tv, o_tv])
    splits = 1 if shape.causal else _key_splits(low.machine, q4.shape[-3], seq_q, seq_k)
    if splits > 1:
        nests = _split_nests(low, m2, outer, q4, kt4, v4, o4, scale, splits, dtypes)
    elif len(outer) + 1 + 2 <= MAX_DESC_RANK:
        # one nest whose batch axes are the outer dims and the inner one (each view its own
        # strides along them): every core takes tiles of every head, no barrier between
        # heads (a causal nest deals its tiles longest first over all of them)
        nests = [_flash_nest(low, q4, kt4, v4, o4, scale, shape.causal, shape.additive,
                             dtypes=dtypes)]
    else:
        nests = [_flash_nest(low, _pick(q4, i), _pick(kt4, i), _pick(v4, i), _pick(o4, i),
                             scale, shape.causal, shape.additive, dtypes=dtypes)
                 for i in product(*(range(n) for n in outer))]
    low.views[last.id] = out
    low.kernel("flash_attention", [op.id for op in ops], nests, m2.span)


def _key_splits(machine, batch: int, seq_q: int, seq_k: int) -> int:
    """Into how many key ranges to split each query block so that every core streams
    keys (flash-decoding): 1 when the query tiles alone fill the cores or the keys are
    short; else a divisor of seq_k leaving each range at least two key tiles."""
    tiles = batch * -(-seq_q // MAX_TILE)
    if tiles * 2 > machine.cores:
        return 1
    best = 1
    for count in range(2, machine.cores // tiles + 1):
        if seq_k % count == 0 and seq_k // count >= 2 * MAX_TILE:
            best = count
    return best


def _split_nests(low, m2, outer, q4, kt4, v4, o4, scale, splits: int,
                 dtypes: tuple[str, str]) -> list[Nest]:
    """Flash-decoding: each query block's keys in `splits` ranges, one more batch dim of
    the flash nests (all cores stream K and V); each range's output (normalised by its own
    sum) and log-sum-exp go to f32 temporaries, and a combine nest per outer batch index
    weighs the ranges: out = Σ exp(lse_r - max) · O_r / Σ exp(lse_r - max)."""
    inner, seq_q, dim = q4.shape[-3:]
    seq_k = kt4.shape[-1]
    chunk = seq_k // splits
    total = prod(outer) * inner
    part = low.new_tensor(f"t{m2.id}_part", TensorType("f32", (total, splits, seq_q, dim)),
                          "temp", m2.span)
    # per row one value: [.., rows] views whose box is the rows x 1 buffer's bytes
    lse = low.new_tensor(f"t{m2.id}_lse", TensorType("f32", (total, splits, seq_q)),
                         "temp", m2.span)
    batch = tuple(outer) + (inner,)
    part_b = part.reshape(batch + (splits, seq_q, dim))
    lse_b = lse.reshape(batch + (splits, seq_q))
    nests = []
    for i in product(*(range(n) for n in outer)):
        q3, kt3, v3 = _pick(q4, i), _pick(kt4, i), _pick(v4, i)
        # two batch dims [inner, splits] (q repeated through stride 0)
        q_s = _repeat(q3, splits)
        kt_s = kt3.reshape((inner, dim, splits, chunk))
        kt_s = kt_s.transpose((0, 2, 1, 3)) if kt_s is not None else None
        v_s = v3.reshape((inner, splits, chunk, dim))
        part_s, lse_s = _pick(part_b, i), _pick(lse_b, i)
        if any(view is None for view in (q_s, kt_s, v_s, part_s, lse_s)):
            raise NotFlashable()
        nests.append(_flash_nest(low, q_s, kt_s, v_s, part_s, scale, False, lse=lse_s,
                                 dtypes=dtypes))
        nests.append(_combine_nest(low, _pick(part_b, i), _pick(lse_b, i), _pick(o4, i)))
    return nests


def _combine_nest(low, part, lse, out) -> Nest:
    """The flash-decoding combine over views part [batch, splits, rows, dim], lse [batch,
    splits, rows] and out [batch, rows, dim]: the ranges as reduction steps."""
    batch, splits, rows, dim = part.shape
    tile_q = min(MAX_TILE, round_up(rows, low.machine.mx_m))
    loads = [("part", tile_q, dim), ("lse", tile_q, 1)]
    outs = [("o", tile_q, dim)] + [(n, tile_q, 1) for n in ("m", "l", "mnew", "corr", "w")]
    load_stride = sum(aligned(r * c * 4) for _, r, c in loads)
    out_stride = sum(aligned(r * c * 4) for _, r, c in outs)
    buffers, offset = [], 0
    for name, r, c in loads:
        buffers.append(Buffer(name, "L1", "f32", r, c, offset, 2, load_stride))
        offset += aligned(r * c * 4)
    offset = 2 * load_stride
    for name, r, c in outs:
        buffers.append(Buffer(name, "L1", "f32", r, c, offset, 2, out_stride))
        offset += aligned(r * c * 4)
    if 2 * load_stride + 2 * out_stride > low.machine.l1_bytes:
        raise NotFlashable()
    # axes: 0 batch (p), 1 rows (p), 2 head dim (p, one tile), 3 ranges (r)
    init = (Vec("DUP", "f32", "m", (float("-inf"),)), Vec("DUP", "f32", "l", (0.0,)),
            Vec("DUP", "f32", "o", (0.0,)))
    step = (Load("part", _view(part, (0, 3, 1, 2))), Load("lse", _view(lse, (0, 3, 1))),
            Vec("MAX", "f32", "mnew", ("m", "lse")),
            Vec("SUB", "f32", "corr", ("m", "mnew")), Vec("EXP", "f32", "corr", ("corr",)),
            Vec("SUB", "f32", "w", ("lse", "mnew")), Vec("EXP", "f32", "w", ("w",)),
            Vec("MUL", "f32", "l", ("l", "corr")), Vec("ADD", "f32", "l", ("l", "w")),
            Vec("MUL", "f32", "o", ("o", "corr")), Vec("FMA", "f32", "o", ("part", "w", "o")),
            Vec("COPY", "f32", "m", ("mnew",)))
    final = (Vec("DIV", "f32", "o", ("o", "l")), Store(_view(out, (0, 1, 2)), "o"))
    return Nest((batch, rows, dim, splits), (1, tile_q, dim, 1), ("p", "p", "p", "r"),
                tuple(buffers), init, step, final)


def _output(low, m2):
    """The output tensor of `m2` (the product, or the group's reshape of it); when its one
    user is a transpose (heads merged back), laid out in the transposed order so that view
    is contiguous (no copy before the next reshape)."""
    users = getattr(low, "users", {}).get(m2.id, [])
    rtype = m2.result.type
    if (len(users) == 1 and users[0].kind == "transpose" and m2.id not in
            getattr(low, "output_ids", ())):
        perm = tuple(users[0].attrs["perm"])
        shape = tuple(rtype.shape[p] for p in perm)
        tensor = low.new_tensor(f"t{m2.id}", replace(rtype, shape=shape), "temp", m2.span)
        inverse = tuple(perm.index(a) for a in range(len(perm)))
        return tensor.transpose(inverse)
    return low.new_tensor(f"t{m2.id}", rtype, "temp", m2.span)


# float dtypes whose products of two values are exact in f32 (mantissas of 8, 11, 4 bits)
_EXACT_IN_F32 = ("bf16", "f16", "fp8")


def _flash_nest(low, q3, kt3, v3, o3, scale, causal, additive=False, lse=None,
                dtypes: tuple[str, str] | None = None) -> Nest:
    """One flash nest over [batch, rows, cols] views of q, kᵀ, v and the output; an
    `additive` causal mask adds -inf where it drops a score (a NaN score stays NaN); with
    an `lse` view the rows' log-sum-exp (m + log l) is stored there too (flash-decoding)."""
    machine = low.machine
    *batch, seq_q, dim = q3.shape
    seq_k = kt3.shape[-1]
    lead = tuple(range(len(batch)))  # batch axes; then queries, head dim, keys
    qa, da, ka = len(batch), len(batch) + 1, len(batch) + 2

    # the products' dtype (q, k and v may be the sources of casts their DMAs do)
    pv_prog, qk_prog = dtypes or (q3.dtype, q3.dtype)
    in_dtype, acc_dtype = mma_dtypes(pv_prog, machine)
    # q @ kᵀ in f32 of q and k loaded from one narrow float (casts the DMAs do): each
    # product of two bf16, f16 or fp8 values is exact in f32, so the MX multiplies them in
    # their own dtype (accumulating in f32) at its faster rate, with the same sums
    qk_dtype = mma_dtypes(qk_prog, machine)[0]
    if qk_dtype == "f32" and q3.dtype == kt3.dtype and q3.dtype in _EXACT_IN_F32:
        qk_dtype = mma_dtypes(q3.dtype, machine)[0]
    unit = machine.mx_m
    dim_p = round_up(dim, machine.mx_k)
    tile_q = min(MAX_TILE, round_up(seq_q, unit))
    tile_k = min(MAX_TILE, round_up(seq_k, unit))
    def acc_need(tq: int, tk: int) -> int:  # two score tiles (at the L1 twin stride), O
        twin = max(tq * tk * isz, tq * tk * 4)
        return twin + tq * tk * 4 + tq * dim_p * 4

    isz = itemsize(in_dtype)
    while acc_need(tile_q, tile_k) > machine.acc_bytes and tile_k > unit:
        tile_k //= 2
    while acc_need(tile_q, tile_k) > machine.acc_bytes and tile_q > unit:
        tile_q //= 2
    # axes: batch·heads (p, one or more), queries (p), head dim (p, one tile), keys (r)
    extents = tuple(batch) + (seq_q, dim, seq_k)
    tile = (1,) * len(batch) + (tile_q, dim_p, tile_k)
    kinds = ("p",) * len(batch) + ("p", "p", "r")
    q_view = _view(q3, lead + (qa, da))
    kt_view = _view(kt3, lead + (da, ka))
    v_view = _view(v3, lead + (ka, da))
    o_view = _view(o3, lead + (qa, da))

    # P (L1) and S (ACC) alternate between two copies by key step, K and V rotate through
    # three (the next step's are loaded while this step's P @ V still reads the previous
    # ones); Q, O and the per-row values are one copy per tile (flash_codegen.py)
    twin_l1 = [("p", in_dtype, tile_q, tile_k)]
    ring_l1 = [("kt", qk_dtype, dim_p, tile_k), ("vt", in_dtype, tile_k, dim_p)]
    single_l1 = [("q", qk_dtype, tile_q, dim_p), ("mask", "bool", tile_q, tile_k),
                 ("qi", "i32", tile_q, 1), ("kj", "i32", 1, tile_k)]
    # (`lprev`: the last tile's sum, for its epilogue deferred into the next tile)
    single_l1 += [(name, "f32", tile_q, 1)
                  for name in ("m", "l", "mnew", "rmax", "rsum", "corr", "lprev")]
    if causal and additive:
        single_l1.append(("sneg", "f32", tile_q, tile_k))
    if lse is not None:
        single_l1.append(("lse", "f32", tile_q, 1))
    buffers = []
    offset = 0
    for name, dtype, rows, cols in twin_l1:
        buffers.append((name, "L1", dtype, rows, cols, offset))
        offset += aligned(rows * cols * itemsize(dtype))
    s_bytes = aligned(tile_q * tile_k * 4)
    stride = max(offset, s_bytes)
    o_offset = stride + s_bytes
    if o_offset + aligned(tile_q * dim_p * 4) > machine.acc_bytes:
        raise NotFlashable()
    twins = [Buffer(n, lv, dt, r, c, off, 2, stride) for n, lv, dt, r, c, off in buffers]
    twins.append(Buffer("s", "ACC", "f32", tile_q, tile_k, 0, 2, stride))
    # O (and Q) in two copies by tile parity where the ACC has room: the next tile starts
    # while this one's output is still being divided and stored
    o_bytes = aligned(tile_q * dim_p * 4)
    tile_copies = 2 if o_offset + 2 * o_bytes <= machine.acc_bytes else 1
    singles = [Buffer("o", "ACC", "f32", tile_q, dim_p, o_offset, tile_copies,
                      o_bytes if tile_copies == 2 else 0)]
    offset = 2 * stride
    ring_stride = sum(aligned(r * c * itemsize(dt)) for _, dt, r, c in ring_l1)
    for name, dtype, rows, cols in ring_l1:
        twins.append(Buffer(name, "L1", dtype, rows, cols, offset, 3, ring_stride))
        offset += aligned(rows * cols * itemsize(dtype))
    offset += 2 * ring_stride
    for name, dtype, rows, cols in single_l1:
        nbytes = aligned(rows * cols * itemsize(dtype))
        copies = tile_copies if name == "q" else 1
        singles.append(Buffer(name, "L1", dtype, rows, cols, offset, copies,
                              nbytes if copies == 2 else 0))
        offset += copies * nbytes
    if offset > machine.l1_bytes:
        raise NotFlashable()
    buffers = twins + singles

    init = (Load("q", q_view), Vec("DUP", "f32", "m", (float("-inf"),)),
            Vec("DUP", "f32", "l", (0.0,)), Vec("DUP", "f32", "o", (0.0,)))
    step: list = [Load("kt", kt_view), Load("vt", v_view),
                  Mma(qk_dtype, acc_dtype, "s", "q", "kt", "init")]
    # a positive scale commutes with the mask and the row max: it is applied in the FMA
    # that subtracts the new max (one full-tile pass fewer)
    folded = scale is not None and scale > 0
    if scale is not None and not folded:
        step.append(Vec("MUL", "f32", "s", ("s", scale)))
    if causal or seq_k % tile_k:
        step += [Iota("i32", "qi", qa), Iota("i32", "kj", ka)]
    if causal and additive:  # s + where(mask, 0, -inf): -inf, or NaN for a NaN score
        # (the select right after the compare: flash_codegen predicates the pair)
        step += [Vec("ADD", "f32", "sneg", ("s", float("-inf"))),
                 Vec("CMP.ge", "i32", "mask", ("qi", "kj")),
                 Vec("SEL", "f32", "s", ("mask", "s", "sneg"))]
    elif causal:
        step += [Vec("CMP.ge", "i32", "mask", ("qi", "kj")),
                 Vec("SEL", "f32", "s", ("mask", "s", float("-inf")))]
    if seq_k % tile_k:
        step += [Vec("CMP.lt", "i32", "mask", ("kj", float(seq_k))),
                 Vec("SEL", "f32", "s", ("mask", "s", float("-inf")))]
    step += [Vec("DUP", "f32", "rmax", (float("-inf"),)), Reduce("MAX", "f32", "rmax", "s")]
    if folded:
        step.append(Vec("MUL", "f32", "rmax", ("rmax", scale)))
    step += [Vec("MAX", "f32", "mnew", ("m", "rmax")),
             Vec("SUB", "f32", "corr", ("m", "mnew")), Vec("EXP", "f32", "corr", ("corr",))]
    if folded:  # s * scale - m'
        step += [Vec("MUL", "f32", "rsum", ("mnew", -1.0)),
                 Vec("FMA", "f32", "s", ("s", scale, "rsum"))]
    else:
        step.append(Vec("SUB", "f32", "s", ("s", "mnew")))
    step += [Vec("EXP", "f32", "s", ("s",)),
             Vec("DUP", "f32", "rsum", (0.0,)), Reduce("SUM", "f32", "rsum", "s"),
             Vec("MUL", "f32", "l", ("l", "corr")), Vec("ADD", "f32", "l", ("l", "rsum")),
             Vec("COPY", "f32", "m", ("mnew",)),
             (Vec("CVT.f32", in_dtype, "p", ("s",)) if in_dtype != "f32"
              else Vec("COPY", "f32", "p", ("s",))),
             # last: the only statement that waits for the previous step's P @ V, so the
             # softmax above overlaps it on the matrix engine
             Vec("MUL", "f32", "o", ("o", "corr")),
             Mma(in_dtype, acc_dtype, "o", "p", "vt", "acc")]
    final = (Vec("DIV", "f32", "o", ("o", "l")), Store(o_view, "o"))
    if lse is not None:
        final = (Vec("LOG", "f32", "lse", ("l",)), Vec("ADD", "f32", "lse", ("lse", "m")),
                 final[0], Store(_view(lse, lead + (qa,)), "lse"), final[1])
    return Nest(extents, tile, kinds, tuple(buffers), init, tuple(step), final,
                causal=(qa, ka) if causal and seq_q <= seq_k else (), schedule="flash")
