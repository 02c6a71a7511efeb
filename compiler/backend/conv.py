"""conv2d as an implicit GEMM: one kernel per conv and its epilogue (docs/design.md section 5).

A `conv` group (compiler/passes/fuse.py) computes out[n, o, oh, ow] (NCHW, OIHW weights,
stride, padding, dilation, groups) without writing patches to HBM. The nest's axes are

    (n, g, o, oh, ow | c, tap)        parallel | reduction

and one output tile is `tile_o` output channels x a block of `rows x cols` output pixels:
in ACC it is tile_o rows of rows*cols pixels, so one DMA box [tile_o, rows, cols] stores it
into the NCHW output. A reduction step covers `tile_c` input channels and every kernel tap,
with K ordered (tap, channel):

- the input operand B (K x pixels) gets one DMA per tap: a box [tile_c, rows, cols] of a
  strided view of x chosen for the tap, which fills tile_c consecutive rows of B. With
  ih = oh * s + kh * d - p = (oh + q) * s + r (0 <= r < s), the tap's view starts at row r,
  steps s rows and holds ceil((H - r) / s) of them; the box sits at oh + q, which may be
  negative or past the end, and the DMA fills what lies outside with 0 (the padding costs
  no HBM traffic). Taps of one phase r share a descriptor;
- the weights A are loaded transposed (K x tile_o, MMA `.tA`) as one box of the view
  w[o, c, tap] permuted to [tap, c, o];
- when taps * tile_c is not a multiple of the MX depth (3 input channels of a stem), K is
  padded once, not per tap: the padding rows of both operands are zeroed once per core.

The output channels are the innermost parallel axis: when their tile count divides the
cores, tile t goes to core t % cores and every tile of a core has the same channels, so with
one reduction step (all input channels) the core's weights are loaded once, before its first
tile (`Nest.core_axes`), and only the matrix engine waits for them.

Tile sizes come from `choose_conv_tile`: the candidates that fit L1 and ACC, priced by the
one tile-cost model (compiler/backend/tile_cost.py, `conv_cost`: an implicit-GEMM step's MX
time, load port, share of L2 (re-reads) and HBM bandwidth, and the DMA and store latencies
that the operand (2-4) and accumulator (1-4) copies hide).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import ceil, gcd

from zhenwu.compiler.backend.gemm import NARROW, _candidates
from zhenwu.compiler.backend.kernel_ir import Buffer, Load, Mma, Nest, Store, Strided, Vec, View
from zhenwu.compiler.backend.lower import ALIGN, aligned, elementwise_body, mma_dtypes
from zhenwu.compiler.backend.tile_cost import (
    ConvShape,
    VectorWork,
    conv_cost,
    load_cycles,
    mma_cycles,
    round_trip,
    store_cycles,
    store_latency,
    vector_cycles,
    vector_work,
    waves,
)
from zhenwu.compiler.backend.tiling import round_up
from zhenwu.compiler.graph.dtypes import itemsize
from zhenwu.isa.errors import CompileError
from zhenwu.isa.program import MAX_EVENT_COUNT, NUM_DESCS

EXACT = ("relu", "neg", "abs")   # f(round(x)) == round(f(x))
# the output channels are the innermost parallel axis: when their tile count divides the
# cores, every tile of a core has the same channels, and its weights stay in L1
AX_N, AX_G, AX_OH, AX_OW, AX_O, AX_C, AX_TAP = range(7)
MAX_PIXELS = 512   # pixels per tile considered (MX blocks along N per MMA)
LOAD_COPIES = (2, 3, 4)   # operand buffers in flight: more hide the DMA latency of short steps
ACC_COPIES = (1, 2, 3, 4)  # accumulators in flight: more hide the store latency of short tiles




@dataclass(frozen=True)
class ConvTile:
    """A tiling of an implicit GEMM and the model's estimate of its cycles."""

    tile_o: int
    rows: int
    cols: int
    tile_c: int
    acc_copies: int
    ld_copies: int
    cycles: float
    stationary: bool = False   # the core's weights loaded once, before its first tile
    halo: bool = False         # one load a step of the input rows under the tile, halo in


def _pixel_blocks(oh: int, ow: int, unit: int) -> list[tuple[int, int]]:
    """(rows, cols) pixel blocks with rows * cols a multiple of the MX width: whole output
    rows (cols = OW, or OW rounded up so that fewer rows make a multiple) or parts of one."""
    cols_options = {ow} | {round_up(ow, m) for m in (2, 4, 8, 16)}
    cols_options |= {v for v in (16, 32, 64, 128, 256) if v < ow}
    out = []
    for cols in sorted(cols_options):
        base = unit // gcd(cols, unit)
        rows = base
        while rows * cols <= MAX_PIXELS:
            out.append((rows, cols))
            if rows >= oh:
                break
            rows += base
    return out


def stationary_weights(shape: ConvShape, tile_o: int, tile_c: int, machine) -> bool:
    """Whether every tile of a core uses the same weights: one reduction step (all input
    channels), one group, and output-channel tiles that divide the cores (the innermost
    parallel axis: tile t goes to core t % cores)."""
    blocks = ceil(shape.og / tile_o)
    return (tile_c == shape.cg and shape.groups == 1
            and (blocks == 1 or machine.cores % blocks == 0))


def _output_tiles(tile_o: int, pixels: int, acc_elem: int, epilogue_full_bytes: int,
                  epilogue_row_bytes: int, machine) -> tuple[int, int] | None:
    """(accumulator copies, L1 bytes of the output side) of a tile of `tile_o` output
    channels x `pixels`: as many ACC copies as fit (the epilogue's L1 tiles, one copy per
    accumulator, a stride apart), or None when one accumulator does not fit ACC."""
    acc_tile = tile_o * pixels * acc_elem
    if acc_tile > machine.acc_bytes:
        return None
    l1_out = (aligned(tile_o * pixels * epilogue_full_bytes)
              + aligned(pixels * epilogue_row_bytes) + aligned(tile_o * 4))
    stride = aligned(max(acc_tile, l1_out))
    copies = max(c for c in ACC_COPIES
                 if c == 1 or (c - 1) * stride + acc_tile <= machine.acc_bytes)
    return copies, l1_out + (copies - 1) * stride


def choose_conv_tile(shape: ConvShape, in_dtype: str, acc_dtype: str, out_bytes: int,
                     epilogue_full_bytes: int, epilogue_row_bytes: int, epilogue: VectorWork,
                     machine) -> ConvTile:
    """The cheapest tiling that fits L1 and ACC (every copy of every buffer)."""
    in_bytes = itemsize(in_dtype)
    acc_elem = itemsize(acc_dtype)
    unit_c = machine.mx_k
    cands_c = {shape.cg} | {c for c in _candidates(shape.cg, unit_c, shape.cg)
                            if c <= shape.cg}
    best = None
    for tile_o in _candidates(shape.og, machine.mx_m, 16 * machine.mx_m):
        for rows, cols in _pixel_blocks(shape.oh, shape.ow, machine.mx_n):
            pixels = rows * cols
            out = _output_tiles(tile_o, pixels, acc_elem, epilogue_full_bytes,
                                epilogue_row_bytes, machine)
            if out is None:
                continue
            copies, l1_out_total = out
            for tile_c in sorted(cands_c):
                k_pad = round_up(shape.taps * tile_c, machine.mx_k)
                stationary = stationary_weights(shape, tile_o, tile_c, machine)
                w_one = aligned(k_pad * tile_o * in_bytes)
                x_one = aligned(k_pad * pixels * in_bytes)
                # deepest first: of equal estimates, the most loads in flight (latency the
                # estimate does not see, HBM and L2 contention, stays hidden)
                for ld_copies in sorted(LOAD_COPIES, reverse=True):
                    l1 = (w_one + ld_copies * x_one if stationary
                          else ld_copies * (w_one + x_one))
                    if l1 + l1_out_total + 8 * ALIGN > machine.l1_bytes:
                        continue
                    cycles = conv_cost(shape, tile_o, rows, cols, tile_c, copies, ld_copies,
                                       in_dtype, out_bytes, epilogue, machine, stationary)
                    if best is None or cycles < best.cycles * 0.999:
                        best = ConvTile(tile_o, rows, cols, tile_c, copies, ld_copies, cycles,
                                        stationary)
    halo = _best_halo_tile(shape, in_dtype, acc_elem, out_bytes, epilogue_full_bytes,
                           epilogue_row_bytes, epilogue, machine)
    if halo is not None and (best is None or halo.cycles < best.cycles * 0.999):
        best = halo
    if best is None:
        raise CompileError("no implicit-GEMM tile of this conv2d fits the machine")
    return best


def halo_box_bytes(shape: ConvShape, rows: int, tile_c: int, in_bytes: int) -> int:
    """L1 bytes of one copy of a halo tile's input box: tile_c channels of the input rows
    under `rows` output rows, each row the output row and its halo; one spare row, since the
    last tap of the last channel reads (halo_cols) elements past the box (the tile's
    columns past the output width, which the store drops)."""
    width = shape.ow + shape.halo_cols
    return aligned((tile_c * (rows + shape.halo_rows) + 1) * width * in_bytes)


def _best_halo_tile(shape: ConvShape, in_dtype, acc_elem, out_bytes,
                    epilogue_full_bytes, epilogue_row_bytes, epilogue: VectorWork, machine):
    """The cheapest halo tiling (`ConvTile.halo`), or None: a unit-stride conv whose
    tile spans whole output rows plus the halo columns (cols = ow + halo), so that each
    tap's operand is a contiguous window of one input box per channel (row stride the
    box's channel size), read by one MMA per tap of K = tile_c (a multiple of the MX
    depth); several reduction steps (a one-step conv keeps its weights stationary
    instead), one group."""
    if not shape.halo_cols and not shape.halo_rows:
        return None
    if shape.groups != 1 or shape.taps < 2 or not shape.stride_one:
        return None
    in_bytes = itemsize(in_dtype)
    cols = shape.ow + shape.halo_cols
    unit = machine.mx_n // gcd(cols, machine.mx_n)
    best = None
    for tile_o in _candidates(shape.og, machine.mx_m, 16 * machine.mx_m):
        for rows in range(unit, shape.oh + unit, unit):
            pixels = rows * cols
            if pixels > 2 * MAX_PIXELS:
                break
            out = _output_tiles(tile_o, pixels, acc_elem, epilogue_full_bytes,
                                epilogue_row_bytes, machine)
            if out is None:
                break
            copies, l1_out_total = out
            for tile_c in range(machine.mx_k, shape.cg, machine.mx_k):
                if shape.cg % tile_c or stationary_weights(shape, tile_o, tile_c, machine):
                    continue
                w_one = aligned(shape.taps * tile_c * tile_o * in_bytes)
                x_one = halo_box_bytes(shape, rows, tile_c, in_bytes)
                for ld_copies in sorted(LOAD_COPIES, reverse=True):
                    if ld_copies * (w_one + x_one) + l1_out_total + 8 * ALIGN \
                            > machine.l1_bytes:
                        continue
                    cycles = conv_cost(shape, tile_o, rows, cols, tile_c, copies, ld_copies,
                                       in_dtype, out_bytes, epilogue, machine, halo=True)
                    if best is None or cycles < best.cycles * 0.999:
                        best = ConvTile(tile_o, rows, cols, tile_c, copies, ld_copies, cycles,
                                        False, True)
    return best


def im2col_in_l1(shape: ConvShape, attrs, x_height: int, tile: ConvTile) -> bool:
    """Whether the patches are gathered in L1 from the input rows under the tile instead of
    loaded one tap at a time: a conv strided along the width (each element of a tap's box
    would be a DMA run and a burst of its own, the ResNet stem's 7x7 stride-2 taps), with
    one reduction step (all input channels, the weights stationary), whole output rows per
    tile, and an input height the row stride divides (rows are viewed as (block, phase))."""
    return (attrs["strides"][1] > 1 and shape.groups == 1 and tile.stationary
            and tile.cols >= shape.ow and x_height % attrs["strides"][0] == 0)


def im2col_rows(shape: ConvShape, attrs, in_dtype: str, acc_bytes: int, out_bytes: int,
                epilogue_full_bytes: int, epilogue_row_bytes: int, machine,
                consumed: bool = False) -> ConvTile | None:
    """Whole output rows per tile for an im2col in L1: the rows whose tiles take the fewest
    cycles (waves of MX or VX work), fitting L1 and ACC. The patches sit in the accumulator
    copies' L1 region (their copies share its stride). When a later kernel reads the output
    (`consumed`), a tile whose stores are not whole L2 lines leaves it to HBM (the L2
    keeps only the lines a store covers): that reader's extra time counts too."""
    unit = machine.mx_n
    in_bytes = itemsize(in_dtype)
    k_pad = round_up(shape.taps * shape.cg, machine.mx_k)
    tile_o = min(round_up(shape.og, machine.mx_m), 16 * machine.mx_m)
    trip = round_trip(machine)
    best = None
    for rows in range(1, shape.oh + 1):
        pixels = rows * shape.ow
        if pixels % unit or pixels > 2 * MAX_PIXELS:
            continue
        acc_tile = aligned(tile_o * pixels * acc_bytes)
        if acc_tile > machine.acc_bytes:
            break
        l1_out = (aligned(k_pad * pixels * in_bytes)
                  + aligned(tile_o * pixels * epilogue_full_bytes)
                  + aligned(pixels * epilogue_row_bytes) + aligned(tile_o * 4))
        stride = aligned(max(acc_tile, l1_out))
        box = _im2col_box(rows, shape, attrs)
        in_one = aligned(shape.cg * box[2] * box[3] * box[4] * in_bytes)
        # the most input copies that fit beside the most accumulator copies: a tile's
        # input rows are loaded (a round trip) while the copies before it are gathered
        for ld_copies in sorted(LOAD_COPIES, reverse=True):
            l1_in = ld_copies * in_one + aligned(k_pad * tile_o * in_bytes) + 8 * ALIGN
            fitting = [c for c in ACC_COPIES
                       if (c - 1) * stride + acc_tile <= machine.acc_bytes
                       and l1_in + (c - 1) * stride + l1_out <= machine.l1_bytes]
            if fitting:
                break
        if not fitting:
            continue
        copies = max(fitting)
        grid = waves(shape.n * ceil(shape.og / tile_o) * ceil(shape.oh / rows), machine)
        mx = mma_cycles(machine, in_dtype, tile_o, pixels, k_pad)
        gathers = shape.taps * shape.cg   # a vector copy each, issued by two scalar ones
        vx = gathers * (vector_cycles(machine, pixels * in_bytes) + 2 * machine.scalar_cycles)
        # (more gathers than the vector queue holds: the next tile's load is issued before
        # this tile's gathers, codegen's `prefetch` schedule, so its latency stays hidden)
        # a copy of the patches is free again once its MMA has run, an accumulator copy
        # once its tile's store has landed (codegen's staged nest): gathers and MMA, or
        # MMA, store and its latency, over the copies in flight
        store = store_cycles(machine, tile_o * pixels * out_bytes)
        turn = max(vx + mx, mx + store + store_latency(machine)) / copies
        # an input copy is free again once its tile's MMA has run: load, its round trip,
        # gathers and MMA over the input copies in flight
        feed = (load_cycles(machine, in_one) + trip + vx + mx) / ld_copies
        cycles = grid.waves * max(mx, vx, turn, feed) + trip
        line = machine.l2_line_bytes if machine.l2_bytes else 0
        if consumed and line and (rows * shape.ow * out_bytes) % line:
            out_total = shape.n * shape.og * shape.oh * shape.ow * out_bytes
            cycles += out_total * (1 / (machine.hbm_bytes_per_cycle
                                        * machine.hbm_streaming_efficiency)
                                   - 1 / machine.l2_bytes_per_cycle)
        if best is None or cycles < best.cycles:
            best = ConvTile(tile_o, rows, shape.ow, shape.cg, copies, ld_copies, cycles, True)
    return best


def _kernel_size(shape: ConvShape, attrs) -> tuple[int, int]:
    """(kh, kw) of the dilated window."""
    kh, kw = attrs["kernel_hw"]
    return ((kh - 1) * attrs["dilation"][0] + 1, (kw - 1) * attrs["dilation"][1] + 1)


def _im2col_box(rows: int, shape: ConvShape, attrs) -> tuple[int, ...]:
    """The input box under `rows` output rows: (n, channels, row blocks, stride phases,
    columns), the rows viewed as (block, phase) so that no coordinate is scaled."""
    (ekh, ekw), (sh, sw) = _kernel_size(shape, attrs), attrs["strides"]
    first = -attrs["pads"][0][0] // sh
    last = (ekh - 1 - attrs["pads"][0][0]) // sh
    return (1, shape.cg, rows + last - first, sh, (shape.ow - 1) * sw + ekw)


def _im2col_input_view(x, attrs) -> View:
    """x (N, C, H, W) as (n, c, row block, phase, column) over the nest axes: the block
    follows the output rows, the phase the taps' axis (one step: coordinate 0) and the
    columns the output columns (whole rows: coordinate 0, shifted by the left padding)."""
    n, c, h, w = x.shape
    sn, sc, sr, sw_ = x.strides
    sh = attrs["strides"][0]
    first = -attrs["pads"][0][0] // sh
    return View(x.tensor, x.dtype, x.offset, (AX_N, AX_C, AX_OH, AX_TAP, AX_OW),
                (n, c, h // sh, sh, w), (sn, sc, sh * sr, sr, sw_),
                (0, 0, -first, 0, attrs["pads"][1][0]))


def _im2col_gathers(shape: ConvShape, attrs, box, tile: ConvTile, dtype: str) -> list:
    """One strided vector copy per (tap, channel) from the input box into its row of the
    patches (K ordered (tap, channel), each row `rows x ow` pixels)."""
    kh, kw = attrs["kernel_hw"]
    (dh, dw), (sh, sw) = attrs["dilation"], attrs["strides"]
    first = -attrs["pads"][0][0] // sh
    _, _, blocks, phases, cols = box
    out = []
    for tap in range(kh * kw):
        i, j = divmod(tap, kw)
        row0 = i * dh - attrs["pads"][0][0] - first * sh   # the box row of output row 0
        for c in range(shape.cg):
            offset = (c * blocks * phases + row0) * cols + j * dw
            out.append(Vec("COPY", dtype, f"p{tap * shape.cg + c}",
                           (Strided("xin", offset, sh * cols, sw),)))
    return out


def _tap_view(x, kernel_index, attrs, out_hw, cg) -> View:
    """The view of x (N, C, H, W) that tap (i, j) reads, over the nest axes: see the module
    docstring; a tap that reads no element of x is a view the box never meets."""
    n, c, h, w = x.shape
    sn, sc, sh, sw = x.strides
    offset = x.offset
    dims, strides, shifts = [], [], []
    for axis, (index, size, elem_stride) in enumerate(zip(kernel_index, (h, w), (sh, sw))):
        step = attrs["strides"][axis]
        start = index * attrs["dilation"][axis] - attrs["pads"][axis][0]
        q, r = divmod(start, step)
        count = -(-(size - r) // step) if size > r else 0
        if count <= 0:  # every coordinate is out of bounds: the load fills zeros
            return View(x.tensor, x.dtype, x.offset, (AX_N, AX_G, AX_C, AX_OH, AX_OW),
                        (n, c // cg, cg, 1, 1), (sn, cg * sc, sc, sh, sw),
                        (0, 0, 0, -(out_hw[0] + 1), -(out_hw[1] + 1)))
        offset += r * elem_stride
        dims.append(count)
        strides.append(step * elem_stride)
        shifts.append(-q)
    return View(x.tensor, x.dtype, offset, (AX_N, AX_G, AX_C, AX_OH, AX_OW),
                (n, c // cg, cg) + tuple(dims), (sn, cg * sc, sc) + tuple(strides),
                (0, 0, 0) + tuple(shifts))


def _weight_view(w, groups) -> View:
    """w (O, Cg, KH, KW) as [g, tap, c, o] over the nest axes (K x tile_o in L1, `.tA`)."""
    o, cg, kh, kw = w.shape
    so, sc, skh, skw = w.strides
    if kh > 1 and kw > 1 and skh != kw * skw:
        raise CompileError("conv2d weights whose taps are not one stride apart")
    tap_stride = skw if kw > 1 else skh
    og = o // groups
    return View(w.tensor, w.dtype, w.offset, (AX_G, AX_TAP, AX_C, AX_O),
                (groups, kh * kw, cg, og), (og * so, tap_stride, sc, so), (0, 0, 0, 0))


def _output_view(view, groups) -> View:
    """A (N, O, OH, OW) tensor view over the nest axes (N, G, O, OH, OW)."""
    n, o, oh, ow = view.shape
    sn, so, sh, sw = view.strides
    og = o // groups
    return View(view.tensor, view.dtype, view.offset, (AX_N, AX_G, AX_O, AX_OH, AX_OW),
                (n, groups, og, oh, ow), (sn, og * so, so, sh, sw), (0,) * 5)


def _compact(view: View) -> tuple[View, str]:
    """An epilogue operand without the axes it is broadcast along, and its tile's shape:
    `full` (channels x pixels), `col` (a value per channel), `row` (per pixel), `one`."""
    keep = [d for d in range(view.rank) if view.strides[d] != 0]
    axes = {view.axes[d] for d in keep}
    if axes & {AX_OH, AX_OW}:  # the pixel block is rows x cols: keep both or neither
        keep = sorted(set(keep) | {d for d in range(view.rank)
                                   if view.axes[d] in (AX_OH, AX_OW)})
    if not keep:
        keep = [0]
    view = View(view.tensor, view.dtype, view.offset, tuple(view.axes[d] for d in keep),
                tuple(view.dims[d] for d in keep), tuple(view.strides[d] for d in keep),
                tuple(view.shifts[d] for d in keep))
    has_o, has_px = AX_O in view.axes, AX_OH in view.axes
    kind = "full" if has_o and has_px else "row" if has_px else "col" if has_o else "one"
    return view, kind


def lower_conv_group(low, ops) -> None:
    """Lower a conv group (the conv2d, then its epilogue ops) as one kernel."""
    machine = low.machine
    conv, epilogue = ops[0], ops[1:]
    last = ops[-1]
    attrs = conv.attrs
    x, w = (low.view_of(v) for v in conv.inputs)
    out = low.new_tensor(f"t{last.id}", last.result.type, "temp", last.span)
    low.views[last.id] = out
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    groups = attrs["groups"]
    og = o // groups
    oh, ow = out.shape[2:]
    taps = kh * kw
    shape = ConvShape(n, groups, og, oh, ow, cg, taps, attrs["strides"][1] == 1)
    if tuple(attrs["strides"]) == (1, 1) and groups == 1:
        (dh, dw) = attrs["dilation"]
        shape = replace(shape, halo_rows=(kh - 1) * dh, halo_cols=(kw - 1) * dw)
    in_dtype, acc_dtype = mma_dtypes(conv.inputs[0].type.dtype, machine)

    # epilogue operands from outside the group: immediates or views over the output
    chain = {conv.id} | {op.id for op in epilogue}
    operands: dict[tuple[int, int], object] = {}
    epi_views: list[View] = []
    epi_kinds: list[str] = []
    epi_index: dict[int, int] = {}
    for op in epilogue:
        for index, value in enumerate(op.inputs):
            if value.id in chain:
                continue
            where = low.operand(op, index, chain)
            if isinstance(where, float):
                operands[(op.id, index)] = where
                continue
            if value.id not in epi_index:
                view, kind = _compact(_output_view(where.broadcast(out.shape), groups))
                epi_index[value.id] = len(epi_views)
                epi_views.append(view)
                epi_kinds.append(kind)
            operands[(op.id, index)] = value.id
    rounded = [op for op in ops[:-1] if op.result.type.dtype in NARROW and op.kind != "cast"]
    # rounding commutes with relu, neg and abs: a value rounded before a tail of them (in
    # the same dtype) is rounded by the store all the same
    tail = len(ops)
    while tail > 1 and ops[tail - 1].kind in EXACT and (
            ops[tail - 1].result.type.dtype == ops[tail - 2].result.type.dtype):
        tail -= 1
    rounded = [op for op in rounded if ops.index(op) < tail - 1]
    full_bytes = 4 * epi_kinds.count("full") + (2 if rounded else 0)
    row_bytes = 4 * epi_kinds.count("row")
    work = vector_work([op.kind for op in epilogue], len(rounded))
    tile = choose_conv_tile(shape, in_dtype, acc_dtype, itemsize(out.dtype), full_bytes,
                            row_bytes, work, machine)
    iattrs = dict(attrs, kernel_hw=(kh, kw))
    im2col = None
    if attrs["strides"][1] > 1 and groups == 1 and x.shape[2] % attrs["strides"][0] == 0:
        im2col = im2col_rows(shape, iattrs, in_dtype, itemsize(acc_dtype),
                             itemsize(out.dtype), full_bytes, row_bytes, machine,
                             consumed=last.result.id not in getattr(low, "output_ids", ()))
        if im2col is not None and im2col_in_l1(shape, attrs, x.shape[2], im2col):
            tile = im2col
        else:
            im2col = None
    low.conv_choices = getattr(low, "conv_choices", {})
    low.conv_choices[conv.id] = tile
    tile_o, rows, cols, tile_c = tile.tile_o, tile.rows, tile.cols, tile.tile_c
    pixels = rows * cols
    k = taps * tile_c
    k_pad = round_up(k, machine.mx_k)
    in_bytes = itemsize(in_dtype)

    # L1: the weights (K x tile_o) and the patches (K x pixels), two copies; the tap loads
    # fill tile_c rows of the patches each
    w_bytes = aligned(k_pad * tile_o * in_bytes)
    x_bytes = aligned(k_pad * pixels * in_bytes)
    # stationary weights: one copy, loaded once per core before its first tile
    stationary = tile.stationary
    resident = w_bytes if stationary else 0
    w_bytes -= resident
    ld_stride = w_bytes + x_bytes
    ld_copies = tile.ld_copies
    if tile.halo:
        # the input rows under the tile with their halo, loaded once a step after the
        # weights; tap (i, j) of channel c is the window of rows x cols pixels from row
        # i * dh, column j * dw of that channel's box (`h<tap>`, rows a channel apart), and
        # the weights of the tap are tile_c rows of w (`w<tap>`)
        (dh, dw) = attrs["dilation"]
        box_rows = rows + shape.halo_rows
        x_one = halo_box_bytes(shape, rows, tile_c, in_bytes)
        ld_stride = w_bytes + x_one
        buffers = [Buffer("xh", "L1", in_dtype, tile_c * box_rows + 1, cols, w_bytes,
                          ld_copies, ld_stride)]
        for t in range(taps):
            i, j = divmod(t, kw)
            buffers.append(Buffer(f"h{t}", "L1", in_dtype, tile_c, box_rows * cols,
                                  w_bytes + (i * dh * cols + j * dw) * in_bytes, ld_copies,
                                  ld_stride))
            buffers.append(Buffer(f"w{t}", "L1", in_dtype, tile_c, tile_o,
                                  t * tile_c * tile_o * in_bytes, ld_copies, ld_stride))
    elif im2col is not None:
        # the input rows under the tile, loaded once a step; the patches are gathered from
        # them into the output region (one copy per accumulator)
        box = _im2col_box(rows, shape, iattrs)
        box_rows = box[1] * box[2] * box[3]
        ld_stride = aligned(box_rows * box[4] * in_bytes)
        buffers = [Buffer("xin", "L1", in_dtype, box_rows, box[4], 0, ld_copies, ld_stride)]
    else:
        buffers = [Buffer("x0", "L1", in_dtype, k_pad, pixels, w_bytes, ld_copies, ld_stride)]
    for t in range(1, taps if im2col is None and not tile.halo else 1):
        buffers.append(Buffer(f"x{t}", "L1", in_dtype, tile_c, pixels,
                              w_bytes + t * tile_c * pixels * in_bytes, ld_copies, ld_stride))
    offset = ld_copies * ld_stride
    setup = []
    if stationary:
        buffers.append(Buffer("w", "L1", in_dtype, k_pad, tile_o, offset))
        setup.append(Load("w", _weight_view(w, groups)))
        if k_pad > k:
            buffers.append(Buffer("zw", "L1", in_dtype, k_pad - k, tile_o,
                                  offset + k * tile_o * in_bytes))
            setup.append(Vec("DUP", in_dtype, "zw", (0.0,)))
        offset += resident
    else:
        buffers.insert(0, Buffer("w", "L1", in_dtype, k_pad, tile_o, 0, ld_copies, ld_stride))
    if k_pad > k and im2col is None and not tile.halo:  # zero the padding rows, once per core
        for copy in range(ld_copies):
            base = copy * ld_stride
            pads = [("zx", w_bytes, pixels)] + ([] if stationary else [("zw", 0, tile_o)])
            for name, start, cols_ in pads:
                buffers.append(Buffer(f"{name}{copy}", "L1", in_dtype, k_pad - k, cols_,
                                      base + start + k * cols_ * in_bytes))
                setup.append(Vec("DUP", in_dtype, f"{name}{copy}", (0.0,)))
    l1_base = offset
    dims = {"full": (tile_o, pixels), "row": (1, pixels), "col": (tile_o, 1), "one": (1, 1)}
    l1_out = []
    if im2col is not None:  # the patches, K x pixels, a row of rows x cols per (tap, channel)
        l1_out.append(Buffer("x0", "L1", in_dtype, k_pad, pixels, offset))
        for row in range(k):
            l1_out.append(Buffer(f"p{row}", "L1", in_dtype, rows, cols,
                                 offset + row * pixels * in_bytes))
        offset += aligned(k_pad * pixels * in_bytes)
    for index, kind in enumerate(epi_kinds):
        r, cc = dims[kind]
        l1_out.append(Buffer(f"e{index}", "L1", "f32", r, cc, offset))
        offset += aligned(r * cc * 4)
    if rounded:
        l1_out.append(Buffer("round", "L1", "bf16", tile_o, pixels, offset))
        offset += aligned(tile_o * pixels * 2)
    acc_tile = aligned(tile_o * pixels * itemsize(acc_dtype))
    copies = tile.acc_copies
    stride = aligned(max(acc_tile, offset - l1_base)) if copies > 1 else 0
    buffers.append(Buffer("c", "ACC", acc_dtype, tile_o, pixels, 0, copies, stride))
    buffers += [Buffer(b.name, b.level, b.dtype, b.rows, b.cols, b.offset, copies, stride)
                for b in l1_out]
    if im2col is not None and k_pad > k:  # the patches' padding rows, once per core
        for copy in range(copies):
            buffers.append(Buffer(f"zx{copy}", "L1", in_dtype, k_pad - k, pixels,
                                  l1_base + copy * stride + k * pixels * in_bytes))
            setup.append(Vec("DUP", in_dtype, f"zx{copy}", (0.0,)))

    final: list = [Load(f"e{i}", view) for i, view in enumerate(epi_views)]

    def round_to(dtype: str) -> list:
        return [Vec(f"CVT.{acc_dtype}", dtype, "round", ("c",)),
                Vec(f"CVT.{dtype}", acc_dtype, "c", ("round",))]

    if conv in rounded:
        final += round_to(conv.result.type.dtype)
    for op in epilogue:
        if op.kind == "cast":
            if op.attrs["dtype"] in NARROW and op is not last:
                final += round_to(op.attrs["dtype"])
            continue  # the last narrowing cast happens in the store
        srcs = []
        for index, value in enumerate(op.inputs):
            if value.id in chain:
                srcs.append("c")
            else:
                where = operands[(op.id, index)]
                srcs.append(where if isinstance(where, float) else f"e{epi_index[where]}")
        final += elementwise_body(op.kind, op.attrs, "f32")(srcs, "c", None)
        if op in rounded:
            final += round_to(op.result.type.dtype)
    # a ReLU ending the epilogue is the store's fused activation: the vector engine is then
    # free for the next tile's work (an im2col's gathers) while this tile's MMA runs
    relu = bool(final) and final[-1] == Vec("RELU", "f32", "c", ("c",))
    if relu:
        final.pop()
    final.append(Store(_output_view(out, groups), "c", relu))

    step = [] if stationary else [Load("w", _weight_view(w, groups))]
    if im2col is not None:
        step.append(Load("xin", _im2col_input_view(x, attrs), 0.0, box))
        step += _im2col_gathers(shape, iattrs, box, tile, in_dtype)
    if tile.halo:
        box = (1, 1, tile_c, rows + shape.halo_rows, cols)
        step.append(Load("xh", _tap_view(x, (0, 0), attrs, (oh, ow), cg), 0.0, box))
        # one product per tap, accumulating (the first initialises on the first step)
        step += [Mma(in_dtype, acc_dtype, "c", f"w{t}", f"h{t}", "" if t == 0 else "acc",
                     trans_a=True) for t in range(taps)]
    for t in range(taps if im2col is None and not tile.halo else 0):
        step.append(Load(f"x{t}", _tap_view(x, divmod(t, kw), attrs, (oh, ow), cg)))
    if not tile.halo:
        step.append(Mma(in_dtype, acc_dtype, "c", "w", "x0", trans_a=True))
    extents = (n, groups, oh, ow, og, cg, taps)
    nest_tile = (1, 1, rows, cols, tile_o, tile_c, taps)
    kinds = ("p",) * 5 + ("r", "r")
    # many gathers a tile: the next tile's input rows are loaded before this tile's
    # gathers fill the vector queue (codegen's `prefetch` schedule)
    gathers = sum(isinstance(s, Vec) for s in step)
    schedule = "prefetch" if im2col is not None and gathers > machine.queue_depth else ""
    nest = Nest(extents, nest_tile, kinds, tuple(buffers), (), tuple(step), tuple(final),
                tuple(setup), core_axes=(AX_O,) if stationary else (), schedule=schedule)
    low.kernel("conv" if not epilogue else "conv_fused", [op.id for op in ops], [nest],
               last.span)


# --- legality: which conv2d ops this lowering takes whole (compiler/backend/groups.py) ---
# An implicit-GEMM step waits for all its loads (one per tap and the weights) with one
# event count, and a DMA descriptor register per distinct tap phase: ISA limits, not the
# machine's (docs/internals.md section 3); 8 descriptors are kept for the other views of the
# kernel (weights, output, epilogue operands).
MAX_STEP_LOADS = MAX_EVENT_COUNT
MAX_TAP_PHASES = NUM_DESCS - 8
CONV_DTYPES = ("bf16", "f16", "f32")
VIEW_OPS = ("reshape", "transpose", "slice", "broadcast_to")


def implicit_gemm_refusal(op, producers, machine) -> str | None:
    """Why the implicit GEMM does not take conv2d `op` (None: it does): its dtype, more
    taps than one step's event counts, more tap phases than descriptors, or weights that
    are a view (the taps of a kernel must be one stride apart)."""
    x, w = op.inputs
    attrs = op.attrs
    if x.type.dtype not in CONV_DTYPES:
        return f"{x.type.dtype} has no implicit GEMM"
    _, _, kh, kw = w.type.shape
    if kh * kw + 1 > MAX_STEP_LOADS:
        return f"{kh * kw} taps are more loads per step than one event counts"
    phases = set()
    for i in range(kh):
        for j in range(kw):
            phases.add(((i * attrs["dilation"][0] - attrs["pads"][0][0]) % attrs["strides"][0],
                        (j * attrs["dilation"][1] - attrs["pads"][1][0]) % attrs["strides"][1]))
    if len(phases) > MAX_TAP_PHASES:
        return f"{len(phases)} tap phases need more descriptors than there are"
    source = producers.get(w.id)
    if source is not None and source.kind in VIEW_OPS:
        return "the weights are a view (the taps of a kernel must be one stride apart)"
    return None
