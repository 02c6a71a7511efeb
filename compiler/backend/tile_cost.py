"""The one cost model of tiled matrix products (docs/internals.md, "Tiling").

Every tile candidate of a product, a GEMM kernel (`product_cost`, searched by
`gemm.choose_gemm_tile`; the plain -O0 matmul nest takes the same choice) or a conv's
implicit GEMM (`conv_cost`, searched by `conv.choose_conv_tile`), is priced per reduction
step from the chip's own cost rules (isa/instructions/costs.py, the functions the
simulator's `InstrDef`s charge): the step's MMA on the matrix engine (`mma_cycles`), its
operand loads on the core's load port and their round trip (`load_cycles`, `round_trip`),
and at the end of a tile the store through the store port (`drain_cycles`) and the
epilogue's vector and special-function passes (`VectorWork`). What the ISA does not know is
modelled here: the waves of tiles over the cores (`Waves`), the active cores' share of the
L2 and HBM bandwidth, the HBM traffic of the tile order (`hbm_traffic`, `choose_group`)
and the DRAM rows a run uses partly (`hbm_cycles`, as the simulator's HBM charges them), and
how the operand and accumulator copies of each kernel form hide the latencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from zhenwu.compiler.backend.tiling import round_up
from zhenwu.isa.dtypes import itemsize
from zhenwu.isa.instructions.costs import (
    dma_load_cost,
    dma_store_cost,
    mma_cost,
    sfu_cost,
    vx_cost,
)

# scalar instructions that issue one reduction step of a product (loop control, events,
# the MMA); a conv step issues two more per load (one per tap and the weights')
STEP_SCALAR_INSTRUCTIONS = 12
LOAD_SCALAR_INSTRUCTIONS = 2


# ---- the ISA's per-step costs ----------------------------------------------------------


def mma_cycles(machine, in_dtype: str, m: int, n: int, k: int) -> int:
    """MX cycles of one MMA of m x n x k (multiples of the MX shape) at `in_dtype`."""
    return mma_cost(machine, in_dtype, m, n, k).occupancy


def load_cycles(machine, *loads: float) -> int:
    """Load-port cycles of DMA loads of these many bytes each (a step's operand tiles)."""
    return sum(dma_load_cost(machine, nbytes).occupancy for nbytes in loads if nbytes)


def round_trip(machine) -> int:
    """The latency of a DMA load: the HBM round trip a buffer copy must hide."""
    return dma_load_cost(machine, 0).latency


def store_latency(machine) -> int:
    """The latency of a DMA store (a single accumulator waits for it before reuse)."""
    return dma_store_cost(machine, 0).latency


def store_cycles(machine, nbytes: float) -> int:
    """Store-port cycles of a DMA store of `nbytes` (none for nothing stored)."""
    return dma_store_cost(machine, nbytes).occupancy if nbytes else 0


def drain_cycles(machine, store_bytes: float, active: int) -> float:
    """A tile's store: its store-port cycles, or the active cores' share of the HBM write
    bandwidth when every core stores at once."""
    return max(store_cycles(machine, store_bytes),
               active * store_bytes / machine.hbm_bytes_per_cycle)


def vector_cycles(machine, nbytes: float) -> int:
    """Cycles of one vector instruction over `nbytes` (elements x their size)."""
    return vx_cost(machine, nbytes).occupancy


@dataclass(frozen=True)
class VectorWork:
    """An epilogue's work per output element: `vx` f32 vector passes and `sfu` passes of
    the special-function unit (exp, tanh, ...), each one instruction over the whole tile."""

    vx: float = 0.0
    sfu: float = 0.0

    def cycles(self, machine, elems: int) -> float:
        """Cycles of the passes over a tile of `elems` f32 elements."""
        total = 0.0
        if self.vx:
            total += self.vx * vector_cycles(machine, 4 * elems)
        if self.sfu:
            total += self.sfu * sfu_cost(machine, elems).occupancy
        return total


def vector_work(kinds, rounded: int = 0) -> VectorWork:
    """The passes of an epilogue of ops `kinds` (graph op names), plus two vector passes
    (a conversion there and back) per rounded intermediate result: an op whose vector
    instruction runs on the special-function unit (the `InstrDef`'s `unit`) is an SFU
    pass, every other a VX pass."""
    from zhenwu.compiler.graph.ops import OPS
    from zhenwu.isa.instructions import INSTRUCTIONS

    vx = sfu = 0
    for kind in kinds:
        vector = OPS[kind].vector
        defn = INSTRUCTIONS[vector.steps[0].instr] if vector is not None else None
        if defn is not None and defn.unit == "SFU":
            sfu += 1
        else:
            vx += 1
    return VectorWork(vx + 2 * rounded, sfu)


@dataclass(frozen=True)
class Waves:
    """Tiles spread over the cores: `active` cores work at once for `waves` rounds."""

    tiles: int
    active: int
    waves: int


def waves(tiles: int, machine) -> Waves:
    """`tiles` output tiles dealt round-robin to the machine's cores."""
    return Waves(tiles, min(tiles, machine.cores), ceil(tiles / machine.cores))


def buffered(mma: float, transfer: float, trip: float, copies: int) -> float:
    """The shortest period of a stream of steps whose operand loads have `copies` buffer
    copies: the load of step i + copies may start only once step i's MMA has read its copy
    (codegen's `ld_free` credit), so `copies` periods cover one MMA, one transfer and one
    round trip (Little's law on the load buffers)."""
    return (mma + transfer + trip) / copies


def step_issue(machine, loads: int = 0) -> int:
    """Scalar cycles that issue a step (and `loads` extra per-tap loads of a conv)."""
    return machine.scalar_cycles * (STEP_SCALAR_INSTRUCTIONS + LOAD_SCALAR_INSTRUCTIONS * loads)


# ---- HBM: traffic of the tile order, DRAM rows ------------------------------------------


def hbm_traffic(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes, out_bytes, group,
                machine) -> float:
    """HBM bytes of the product in grouped tile order (`group` m tiles share each B panel
    while they are loaded together; 1 is row-major). With an L2 (half of it counted: the
    rest holds what streams through), an operand is read once when it fits, else B once per
    group of m tiles, and A once when a group's A panels stay in L2 while the group walks
    the n tiles, else once per wave of the cores over them. Without an L2 every tile reads
    its panels from HBM."""
    num_m, num_n = ceil(m / tile_m), ceil(n / tile_n)
    a_total, b_total = batch * m * k * a_bytes, batch * k * n * b_bytes
    c_total = batch * m * n * out_bytes
    if not machine.l2_bytes:
        return a_total * num_n + b_total * num_m + c_total
    cap = machine.l2_bytes / 2
    if (a_total + b_total) / batch <= cap:
        return a_total + b_total + c_total
    b_reads = b_total if b_total / batch <= cap else b_total * ceil(num_m / group)
    columns = max(1, machine.cores // group)   # n tiles loaded at once
    live = group * tile_m * k * a_bytes + min(columns, num_n) * k * tile_n * b_bytes
    a_reads = a_total if live <= cap else a_total * ceil(num_n / columns)
    return a_reads + b_reads + c_total


def _row_penalty(machine) -> float:
    """Cycles the HBM idles per DRAM row a transfer uses only partly (runtime/bandwidth.py)."""
    return max(0.0, machine.dma_burst_bytes / machine.hbm_bytes_per_cycle
               * (1 / machine.hbm_scattered_efficiency - 1 / machine.hbm_streaming_efficiency))


def _partial_runs(rows_a, cols_b, depth, a_bytes, b_bytes, machine) -> int:
    """DRAM rows one k step's operand tiles use partly: one per row of a tile whose rows
    are not whole DRAM rows (A's rows are `depth` long, B's `cols_b`: B n-contiguous)."""
    row = machine.hbm_row_bytes
    return ((rows_a if (depth * a_bytes) % row else 0)
            + (depth if (cols_b * b_bytes) % row else 0))


def hbm_cycles(traffic: float, runs: float, machine) -> float:
    """Cycles of `traffic` HBM bytes in `runs` contiguous runs that each end in a DRAM
    row they cover only partly: the sustained (streaming) rate plus a row activation per
    such run, as the simulator's HBM charges them (runtime/bandwidth.py)."""
    streaming = machine.hbm_bytes_per_cycle * machine.hbm_streaming_efficiency
    return traffic / streaming + runs * _row_penalty(machine)


def choose_group(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes, out_bytes, machine
                 ) -> tuple[int, float]:
    """(group, HBM bytes): the grouped order with the least HBM traffic, among groups that
    divide the m tiles; of equal ones, the wave closest to square."""
    num_m = ceil(m / tile_m)
    best = None
    for group in range(1, num_m + 1):
        if num_m % group:
            continue
        traffic = hbm_traffic(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes, out_bytes,
                              group, machine)
        columns = max(1, machine.cores // group)
        shape = abs((group * tile_m) / (columns * tile_n) - 1)
        key = (traffic, shape)
        if best is None or key < best[0]:
            best = (key, group)
    return best[1], best[0][0]


# ---- a GEMM kernel's tile ---------------------------------------------------------------


def product_cost(batch, m, n, k, tile_m, tile_n, tile_k, acc_copies, a_bytes, b_bytes,
                 out_bytes, in_dtype, epilogue: VectorWork, machine,
                 traffic: float | None = None, b_k_major: bool = False) -> float:
    """Estimated cycles of a GEMM kernel's tiling: per k step, the slowest of the step's
    MMA, its operand loads on the core's port, the active cores' share of L2 (or HBM)
    bandwidth, the round trip the double buffer hides and, when two steps' loads do not
    fit the DMA window, the window's wait; times the steps and the waves of tiles, plus
    what a single accumulator cannot overlap (the epilogue and the store); at least the
    HBM time of the tile order's traffic."""
    mx = machine
    grid = waves(batch * ceil(m / tile_m) * ceil(n / tile_n), machine)
    active = grid.active
    steps = ceil(round_up(k, mx.mx_k) / tile_k)
    mx_cycles = mma_cycles(machine, in_dtype, tile_m, tile_n, tile_k)
    # in-bounds bytes only: a tile hanging over the edge loads what is inside
    in_m, in_n, in_k = min(tile_m, m), min(tile_n, n), min(tile_k, k)
    a_step, b_step = in_m * in_k * a_bytes, in_k * in_n * b_bytes
    step_bytes = a_step + b_step
    port = load_cycles(machine, a_step, b_step)
    trip = round_trip(machine)
    # operand panels are re-read by every tile of their row or column: with an L2, the
    # re-reads come from it and HBM moves each operand about once (the floor below)
    shared = mx.l2_bytes_per_cycle if mx.l2_bytes else mx.hbm_bytes_per_cycle
    gm = active * step_bytes / shared
    # two operand buffers in flight: a step's loads are issued once the product two steps
    # back has run, so two steps cover a product, a transfer and a round trip
    latency = buffered(mx_cycles, port, trip, 2)
    # and a core keeps at most its DMA window in flight: when two steps' loads do not fit
    # in it, a step's loads wait for the last step's to land (a round trip per step)
    window = mx.dma_window_bytes
    if traffic is None:
        traffic = hbm_traffic(batch, m, n, k, tile_m, tile_n, a_bytes, b_bytes, out_bytes, 1,
                              machine)
    # the share of a step's bytes that come from HBM, at the active cores' share of it
    requested = grid.tiles * steps * step_bytes
    from_hbm = min(1.0, traffic / requested) if requested else 1.0
    hbm_share = active * step_bytes * from_hbm / (mx.hbm_bytes_per_cycle
                                                  * mx.hbm_streaming_efficiency)
    # (and stream at most a window per round trip); the wait is for the bytes over the
    # window only, so two steps that just miss it wait a fraction of a round trip
    over = 2 * step_bytes - window if window else 0
    serial = (max(trip * min(1.0, over / step_bytes) + max(port, gm, hbm_share),
                  step_bytes * trip / window)
              if over > 0 else 0.0)
    # (B read along k through a transpose keeps the window model above: this one's DRAM-row
    # charge assumes B's runs along n)
    if serial and steps * grid.waves > 2 and not b_k_major:
        # a long stream of big steps: the next step's loads are in flight while this
        # step's land, so a step lasts its transfer (the window's rate, the HBM share
        # with the DRAM rows its runs use partly), not a round trip more; but a buffer is
        # loaded again only once its product has run: two steps cover one product, one
        # transfer and one round trip
        transfer = max(port, step_bytes * trip / window)
        serial = max(gm, transfer, buffered(mx_cycles, transfer, trip, 2),
                     hbm_share + _partial_runs(in_m, in_n, in_k, a_bytes, b_bytes, machine)
                     * active * _row_penalty(machine))
    step = max(mx_cycles, port, gm, latency, serial) + step_issue(machine)
    drain = drain_cycles(machine, in_m * in_n * out_bytes, active)
    vector = epilogue.cycles(machine, tile_m * tile_n)
    exposed = drain + vector + store_latency(machine) if acc_copies == 1 else 0.0
    total = grid.waves * (steps * step + exposed) + 2 * trip + drain + vector
    # the runs HBM serves: A's rows of a k tile, B's rows of an n tile (of a k tile when B
    # is stored k-contiguous, [n, k] read through a transpose), C's rows of an n tile;
    # one that is not whole DRAM rows ends in a partly used row
    row = machine.hbm_row_bytes
    runs = 0.0
    b_run = (in_k if b_k_major else in_n) * b_bytes
    for run_bytes, count in ((in_k * a_bytes, batch * m * k * a_bytes / max(in_k * a_bytes, 1)),
                             (b_run, batch * k * n * b_bytes / max(b_run, 1)),
                             (in_n * out_bytes, batch * m * n * out_bytes / max(in_n * out_bytes, 1))):
        if run_bytes % row:
            runs += count
    return max(total, hbm_cycles(traffic, runs, machine))


def product_floor(batch, m, n, k, tile_m, tile_n, least_steps, a_bytes, b_bytes, out_bytes,
                  in_dtype, epilogue: VectorWork, machine) -> float:
    """A floor under `product_cost` for every k tile of an (tile_m, tile_n) tiling that
    takes at least `least_steps` k steps. Per wave, the steps together cover the whole k: no
    less MX work (one MMA over all of k: the steps' MMAs round up each), load-port time
    (likewise) and shared-bandwidth time than one step over all of k, and the double
    buffer's period over them all (`buffered`: a round trip per step); plus the per-step issue, the two round trips
    and the last store, which no k tile avoids. The search skips tilings whose floor is out
    of reach of the best cost found: it visits fewer and chooses the same."""
    mx = machine
    grid = waves(batch * ceil(m / tile_m) * ceil(n / tile_n), machine)
    product = mma_cycles(machine, in_dtype, tile_m, tile_n, round_up(k, mx.mx_k))
    in_m, in_n = min(tile_m, m), min(tile_n, n)
    k_bytes = (in_m * a_bytes + in_n * b_bytes) * k
    port = k_bytes / mx.ld_bytes_per_cycle
    shared = mx.l2_bytes_per_cycle if mx.l2_bytes else mx.hbm_bytes_per_cycle
    gm = grid.active * k_bytes / shared
    trip = round_trip(machine)
    latency = buffered(product, port, least_steps * trip, 2)
    drain = drain_cycles(machine, in_m * in_n * out_bytes, grid.active)
    vector = epilogue.cycles(machine, tile_m * tile_n)
    return (grid.waves * (max(product, port, gm, latency) + step_issue(machine) * least_steps)
            + 2 * trip + drain + vector)


# ---- a conv's implicit-GEMM tile -------------------------------------------------------


@dataclass(frozen=True)
class ConvShape:
    """The sizes of a conv2d the tiler needs (per group: og output, cg input channels)."""

    n: int
    groups: int
    og: int
    oh: int
    ow: int
    cg: int
    taps: int
    stride_one: bool = True   # unit stride along the width (a box row is one run)
    # a unit-stride conv's halo (dilated kernel extent - 1 along rows and columns) when its
    # taps may read one input box a step (`halo_cols`), else 0
    halo_rows: int = 0
    halo_cols: int = 0


def conv_cost(shape: ConvShape, tile_o, rows, cols, tile_c, acc_copies, ld_copies, in_dtype,
              out_bytes, epilogue: VectorWork, machine, stationary: bool = False,
              halo: bool = False) -> float:
    """Estimated cycles of a conv's implicit GEMM (compiler/backend/conv.py): a GEMM step
    of tile_o x pixels x (taps x tile_c, padded to the MX depth) whose operand B arrives as
    one DMA box per tap (or one halo box a step).

    A step lasts the longest of its MMA, its loads on the core's port, its share of the L2
    (re-reads) and HBM bandwidth, and the DMA latency the load buffers cannot hide: the load
    of step i + copies starts when step i's MMA ends, so copies x period >= MMA + round trip
    + transfer. The taps re-read x and the tiles re-read w; when both fit the L2 those
    re-reads hit it, and HBM carries each byte once.
    """
    mx = machine
    in_bytes = itemsize(in_dtype)
    grid = waves(shape.n * shape.groups * ceil(shape.og / tile_o) * ceil(shape.oh / rows)
                 * ceil(shape.ow / cols), machine)
    active = grid.active
    steps = ceil(shape.cg / tile_c)
    pixels = rows * cols
    k_pad = round_up(shape.taps * tile_c, mx.mx_k)
    mx_cycles = mma_cycles(machine, in_dtype, tile_o, pixels, k_pad)
    in_pixels = min(rows, shape.oh) * min(cols, shape.ow)
    in_c = min(tile_c, shape.cg)
    w_step = 0 if stationary else shape.taps * in_c * min(tile_o, shape.og) * in_bytes
    line = mx.l2_line_bytes or 1
    if halo:
        # one box a step: the input rows under the tile with their halo (whole input rows:
        # one run per channel); the taps read it in L1
        run = (min(rows, shape.oh) + shape.halo_rows) * (shape.ow + shape.halo_cols)
        runs = in_c
    else:
        # a box of x per tap: runs of `cols` pixels (one run per channel when it spans
        # whole rows of a stride-1 conv)
        run = in_pixels if cols >= shape.ow and shape.stride_one else min(cols, shape.ow)
        runs = shape.taps * in_c * in_pixels // run
    # the caches move whole lines and the DMA port whole bursts, each run starting
    # anywhere in one; the weights are a run of (tap, channel) per output channel
    line_bytes = runs * (round_up(run * in_bytes, line) + line // 2)
    burst = mx.dma_burst_bytes or 1
    w_runs = 0 if stationary else min(tile_o, shape.og)
    port_bytes = (runs * (round_up(run * in_bytes, burst) + burst // 2)
                  + w_runs * (round_up(w_step // max(w_runs, 1), burst) + burst // 2))
    transfer = load_cycles(machine, port_bytes)
    step_lines = line_bytes + w_step
    x_bytes = shape.n * shape.groups * shape.cg * shape.oh * shape.ow * in_bytes
    w_bytes = shape.groups * shape.og * shape.cg * shape.taps * in_bytes
    out_total = shape.n * shape.groups * shape.og * shape.oh * shape.ow * out_bytes
    # re-reads come from the L2 when x and w fit it (a machine without one: from HBM)
    cached = 2 * (x_bytes + w_bytes) <= mx.l2_bytes
    reread = (mx.l2_bytes_per_cycle if cached else 0) or mx.hbm_bytes_per_cycle
    store = min(tile_o, shape.og) * in_pixels * out_bytes
    # every active core loads (and stores its last tile) through the L2 at once
    shared = active * (step_lines + store / steps) / reread
    written = active * store / steps / mx.hbm_bytes_per_cycle  # the L2 writes through
    hidden = buffered(mx_cycles, transfer, round_trip(machine), ld_copies)
    step = (max(mx_cycles, transfer, shared, written, hidden)
            + step_issue(machine, loads=shape.taps + 1))
    drain = drain_cycles(machine, store, active)
    vector = epilogue.cycles(machine, tile_o * pixels)
    # an accumulator copy is free again once its tile's store has landed
    per_tile = steps * step
    per_tile = max(per_tile,
                   (per_tile + vector + drain + store_latency(machine)) / acc_copies)
    total = grid.waves * per_tile + round_trip(machine) + transfer + drain + vector
    read_total = grid.tiles * steps * step_lines
    if stationary:  # each core's weights, once, before its first tile
        resident = shape.taps * in_c * min(tile_o, shape.og) * in_bytes
        total += load_cycles(machine, resident)
        read_total += active * resident
    return max(total, (x_bytes + w_bytes + out_total) / mx.hbm_bytes_per_cycle,
               (read_total + out_total) / reread)
