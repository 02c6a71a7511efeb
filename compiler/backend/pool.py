"""maxpool2d and unpadded avgpool2d as one kernel (`pool` fusion groups, docs/design.md
section 5).

`decompose` writes a max pool as a pad with the lowest value, one strided slice per window
tap and a chain of `maximum`s (an average pool: a sum of the taps, in f32, divided by the
window's size); at -O0 the pad is a copy in HBM and every tap reads its input again. At
-O1/-O2 a pool these lowerings claim (`pool_refusal`, `avgpool_refusal`: lowering by
legality, compiler/backend/groups.py) stays whole, and its `pool` group is one map nest over
the output (n, c, oh, ow) whose tile is `rows x cols` output pixels of one channel:

- one DMA loads the input rows under the tile's windows with their halo. A tile spans whole
  output rows; the input's rows are viewed split into (row / stride, row % stride), so that
  the box over output rows [oh0, oh0 + rows) starts at view coordinate oh0 + floor(-pad /
  stride): no coordinate scaling, and what lies above, below, left and right of the image
  (the padding) is filled with the lowest value by the DMA;
- each tap is a vector operand over that tile with row stride `stride x input width` and
  column stride `stride`, and VMAX folds the taps into the output tile (an average pool:
  the DMA converts the input to f32, VADD folds the taps, one VDIV by the window's size,
  and the store rounds to the output dtype: the operations `decompose` writes, in its
  order, so the result is theirs bit for bit).
"""

from __future__ import annotations

from math import ceil

from zhenwu.compiler.backend.kernel_ir import Buffer, Load, Nest, Store, Strided, Vec, View
from zhenwu.compiler.backend.lower import ALIGN, aligned
from zhenwu.compiler.graph.dtypes import itemsize, limits
from zhenwu.isa.errors import CompileError

AX_NC, AX_OH, AX_OW, AX_ONE = range(4)
# input boxes and output tiles in flight per core: a tile's vector work is short next to
# the DMA latency, so two copies would leave the core waiting for every load and store
LOAD_COPIES = 6



def _halo(kernel: int, stride: int, pad: int) -> tuple[int, int]:
    """(first block, extra blocks): output index o reads input blocks o + first ..
    o + first + extra (a block is `stride` input rows)."""
    first = (-pad) // stride
    last = (kernel - 1 - pad) // stride
    return first, last - first


def pool_tile(shape, attrs, elem_bytes: int, machine) -> int:
    """Output rows per tile (tiles span whole output rows): as many as L1 holds (every
    copy of the input box, two of the output tile) but enough tiles for every core."""
    n, c, oh, ow = shape
    (kh, kw), (sh, sw), pads = attrs["kernel"], attrs["strides"], attrs["pads"]
    _, extra_h = _halo(kh, sh, pads[0][0])
    box_cols = (ow - 1) * sw + kw
    budget = machine.l1_bytes - 8 * ALIGN

    def fits(rows: int) -> bool:
        box = (rows + extra_h) * sh * box_cols * elem_bytes
        return LOAD_COPIES * (aligned(box) + aligned(rows * ow * elem_bytes)) <= budget

    if not fits(1):
        raise CompileError(f"a max pool's input rows ({box_cols} elements) do not fit L1")
    rows = oh
    while rows > 1 and (not fits(rows) or n * c * ceil(oh / rows) < machine.cores):
        rows = ceil(rows / 2)
    return rows


def lower_pool_group(low, ops) -> None:
    """Lower a pool group (one maxpool2d, or one unpadded avgpool2d) as one kernel."""
    (op,) = ops
    average = op.kind == "avgpool2d"
    machine = low.machine
    attrs = op.attrs
    x = low.view_of(op.inputs[0])
    out = low.new_tensor(f"t{op.id}", op.result.type, "temp", op.span)
    low.views[op.id] = out
    n, c, h, w = x.shape
    oh, ow = out.shape[2:]
    (kh, kw), (sh, sw), pads = attrs["kernel"], attrs["strides"], attrs["pads"]
    xn, xc, xh, xw = x.strides
    if n > 1 and xn != c * xc:
        raise CompileError("a max pool over a strided view of its input", op.span)
    dtype = x.dtype
    if average:  # summed in f32 and rounded once by the store, as `decompose` writes it
        dtype = "f32"
    rows = pool_tile(out.shape, attrs, itemsize(dtype), machine)
    first_h, extra_h = _halo(kh, sh, pads[0][0])
    box_rows, box_cols = (rows + extra_h) * sh, (ow - 1) * sw + kw
    # rows split into (block, phase); the tile spans whole rows, so its column coordinate
    # is the same for every tile (-left padding)
    view = View(x.tensor, x.dtype, x.offset, (AX_NC, AX_OH, AX_ONE, AX_OW),
                (n * c, h // sh, sh, w), (xc, sh * xh, xh, xw),
                (0, -first_h, 0, pads[1][0]))
    box = (1, rows + extra_h, sh, box_cols)
    buffers = [Buffer("in", "L1", dtype, box_rows, box_cols, 0, LOAD_COPIES,
                      aligned(box_rows * box_cols * itemsize(dtype)))]
    base = LOAD_COPIES * buffers[0].stride
    out_bytes = aligned(rows * ow * itemsize(dtype))
    buffers.append(Buffer("out", "L1", dtype, rows, ow, base, LOAD_COPIES, out_bytes))
    taps = []
    for i in range(kh):
        for j in range(kw):
            offset = (i - pads[0][0] - sh * first_h) * box_cols + j
            taps.append(Strided("in", offset, sh * box_cols, sw))
    fold = "ADD" if average else "MAX"
    body = [Vec("COPY", dtype, "out", (taps[0],))] if len(taps) == 1 else [
        Vec(fold, dtype, "out", (taps[0], taps[1]))]
    body += [Vec(fold, dtype, "out", ("out", tap)) for tap in taps[2:]]
    if average:  # the sum over the window, then one division by its size (no padding)
        body.append(Vec("DIV", dtype, "out", ("out", float(kh * kw))))
    _, oc, ohs, ows = out.strides
    store = View(out.tensor, out.dtype, out.offset, (AX_NC, AX_OH, AX_OW), (n * c, oh, ow),
                 (oc, ohs, ows), (0, 0, 0))
    step = (Load("in", view, 0.0 if average else limits(dtype)[0], box),) + tuple(body)
    nest = Nest((n * c, oh, ow, 1), (1, rows, ow, 1), ("p",) * 4, tuple(buffers), (),
                step, (Store(store, "out"),))
    low.kernel("avgpool" if average else "maxpool", [op.id], [nest], op.span)


# the dtypes of the one-kernel max pool (VMAX and the DMA's fill with the lowest value)
POOL_DTYPES = ("bf16", "f16", "f32")
VIEW_OPS = ("reshape", "transpose", "slice", "broadcast_to")


def avgpool_refusal(op, producers, machine) -> str | None:
    """Why the one-kernel pool does not take avgpool2d `op` (None: it does): the max
    pool's conditions, and no padding (a padded window divides by its count of non-padding
    elements, which differs at the edges)."""
    if any(p != (0, 0) for p in op.attrs["pads"]):
        return "it is padded (its windows at the edges count fewer elements)"
    return pool_refusal(op, producers, machine)


def pool_refusal(op, producers, machine) -> str | None:
    """Why the one-kernel max pool does not take maxpool2d `op` (None: it does): its dtype,
    an input height that the stride does not divide (its rows are split into the stride's
    phases), an input that is a view, or input rows that do not fit L1."""
    (x,) = op.inputs
    if x.type.dtype not in POOL_DTYPES:
        what = "average" if op.kind == "avgpool2d" else "max"
        return f"{x.type.dtype} has no one-kernel {what} pool"
    size, stride = x.type.shape[2], op.attrs["strides"][0]
    if size % stride:
        return (f"the input height ({size}) is not a multiple of the stride ({stride}): its "
                "rows cannot be split into the stride's phases")
    source = producers.get(x.id)
    if source is not None and source.kind in VIEW_OPS:
        return "the input is a view"
    try:
        elem = 4 if op.kind == "avgpool2d" else itemsize(x.type.dtype)   # f32 sums
        pool_tile(op.result.type.shape, op.attrs, elem, machine)
    except CompileError:
        return "one output row's input rows do not fit L1"
    return None
