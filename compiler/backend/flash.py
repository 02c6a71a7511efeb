"""Flash attention: `softmax(q @ kᵀ · s [+ causal mask]) @ v` as one kernel (DESIGN.md section 5).

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

from compiler.backend.kernel_ir import Buffer, Iota, Load, Mma, Nest, Reduce, Store, Vec, View
from compiler.backend.lower import aligned, mma_dtypes
from compiler.backend.tiling import round_up
from compiler.graph.dtypes import itemsize

MAX_TILE = 128


class NotFlashable(Exception):
    """The chain's views cannot be seen as [batch, rows, dim]: lower it op by op."""


def _operand(low, value, group: dict):
    """The view of an operand; through a reshape of the group (merged batch dims) the view
    of its source when the last two dims agree, so a strided q, k or v needs no copy."""
    op = group.get(value.id)
    if op is None:
        return low.view_of(value)
    src = low.view_of(op.inputs[0])
    if len(src.shape) >= 2 and tuple(src.shape[-2:]) == tuple(value.type.shape[-2:]):
        return src
    view = src.reshape(tuple(value.type.shape))
    if view is None:
        raise NotFlashable()
    return view


def _batch_split(views, batch: tuple[int, ...]):
    """Views [outer..., inner, rows, cols] of (view, rows, cols) over `batch` with as few
    outer batch dims as possible (each outer index is one nest), or NotFlashable."""
    fulls = []
    for tv, rows, cols in views:
        if len(tv.shape) < 2 or tuple(tv.shape[-2:]) != (rows, cols):
            raise NotFlashable()
        full = tv if prod(tv.shape[:-2]) == prod(batch) else tv.broadcast(batch + (rows, cols))
        fulls.append((full, rows, cols))
        if len(full.shape) - 2 > len(batch) and prod(full.shape[:-2]) == prod(batch):
            batch = tuple(full.shape[:-2])  # the finest split of the batch
    if not batch:
        batch = (1,)
    for j in range(len(batch)):
        outer, inner = batch[:j], prod(batch[j:])
        out = []
        for full, rows, cols in fulls:
            flat = full.reshape(outer + (inner, rows, cols))
            if flat is None:
                break
            out.append(flat)
        else:
            return outer, out
    raise NotFlashable()


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
    from compiler.backend.fusion import ROW_REDUCE
    from compiler.backend.gemm import lower_matmul_group
    from compiler.backend.lower import Lowering

    for op in ops:
        if op.kind == "matmul":
            lower_matmul_group(low, [op])
        elif op.kind in ROW_REDUCE or op.kind in ("reshape", "iota", "constant"):
            Lowering.lower_op(low, op)
        else:
            low.lower_elementwise([op])


def _lower_flash(low, ops) -> None:
    matmuls = [op for op in ops if op.kind == "matmul"]
    m1, m2 = matmuls[0], matmuls[-1]
    by_kind = {op.kind: op for op in ops if op.kind in ("mul", "where")}
    scale = None
    if "mul" in by_kind:
        scale = low.immediate(by_kind["mul"].inputs[1])
        if scale is None:
            raise NotFlashable()
    causal = "where" in by_kind
    group = {op.id: op for op in ops if op.kind == "reshape"}
    q_tv, kt_tv = (_operand(low, v, group) for v in m1.inputs)
    v_tv = _operand(low, m2.inputs[1], group)
    seq_q, seq_k = m1.result.type.shape[-2:]
    dim = m1.inputs[0].type.shape[-1]
    dim_v = m2.inputs[1].type.shape[-1]
    batch1 = tuple(m1.result.type.shape[:-2])
    batch2 = tuple(m2.result.type.shape[:-2])
    if dim != dim_v or prod(batch1) != prod(batch2) or dim > MAX_TILE:
        raise NotFlashable()
    out = _output(low, m2)
    outer, (q4, kt4, v4, o4) = _batch_split(
        [(q_tv, seq_q, dim), (kt_tv, dim, seq_k), (v_tv, seq_k, dim), (out, seq_q, dim)],
        batch2 if len(batch2) >= len(batch1) else batch1)
    nests = [_flash_nest(low, _pick(q4, i), _pick(kt4, i), _pick(v4, i), _pick(o4, i),
                         scale, causal) for i in product(*(range(n) for n in outer))]
    low.views[m2.id] = out
    low.kernel("flash_attention", [op.id for op in ops], nests, m2.span)


def _output(low, m2):
    """The output tensor; when its one user is a transpose (heads merged back), laid out in
    the transposed order so that view is contiguous (no copy before the next reshape)."""
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


def _flash_nest(low, q3, kt3, v3, o3, scale, causal) -> Nest:
    """One flash nest over [batch, rows, cols] views of q, kᵀ, v and the output."""
    machine = low.machine
    batch, seq_q, dim = q3.shape
    seq_k = kt3.shape[-1]

    in_dtype, acc_dtype = mma_dtypes(q3.dtype, machine)
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
    # axes: 0 batch·heads (p), 1 queries (p), 2 head dim (p, one tile), 3 keys (r)
    extents = (batch, seq_q, dim, seq_k)
    tile = (1, tile_q, dim_p, tile_k)
    kinds = ("p", "p", "p", "r")
    q_view = _view(q3, (0, 1, 2))
    kt_view = _view(kt3, (0, 2, 3))
    v_view = _view(v3, (0, 3, 2))
    o_view = _view(o3, (0, 1, 2))

    # P (L1) and S (ACC) alternate between two copies by key step, K and V rotate through
    # three (the next step's are loaded while this step's P @ V still reads the previous
    # ones); Q, O and the per-row values are one copy per tile (flash_codegen.py)
    twin_l1 = [("p", in_dtype, tile_q, tile_k)]
    ring_l1 = [("kt", in_dtype, dim_p, tile_k), ("vt", in_dtype, tile_k, dim_p)]
    single_l1 = [("q", in_dtype, tile_q, dim_p), ("mask", "bool", tile_q, tile_k),
                 ("qi", "i32", tile_q, 1), ("kj", "i32", 1, tile_k)]
    single_l1 += [(name, "f32", tile_q, 1) for name in ("m", "l", "mnew", "rmax", "rsum", "corr")]
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
                  Mma(in_dtype, acc_dtype, "s", "q", "kt", "init")]
    # a positive scale commutes with the mask and the row max: it is applied in the FMA
    # that subtracts the new max (one full-tile pass fewer)
    folded = scale is not None and scale > 0
    if scale is not None and not folded:
        step.append(Vec("MUL", "f32", "s", ("s", scale)))
    if causal or seq_k % tile_k:
        step += [Iota("i32", "qi", 1), Iota("i32", "kj", 3)]
    if causal:
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
    return Nest(extents, tile, kinds, tuple(buffers), init, tuple(step), final,
                causal=(1, 3) if causal and seq_q <= seq_k else (), schedule="flash")
