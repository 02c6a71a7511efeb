"""The chip's cost rules per instruction step, defined once.

Each function prices one instruction's work from the machine description alone: the MX
occupancy of an MMA of M x N x K at an input dtype, a DMA load or store of N bytes through a
core's port, a vector pass over N bytes, a special-function pass over N elements. The
simulator's `InstrDef` cost functions (the modules beside this one) work out the operands of an
instruction and call these; the compiler's tile models (compiler/backend/tile_cost.py) call
them with the sizes of a tile's steps. A change to a rule here moves both.

Every function returns a `Cost` (occupancy and latency in cycles); the callers that know an
instruction's GM bytes add them (`hbm_read`, `hbm_write`, `gm`).
"""

from __future__ import annotations

from math import ceil

from zhenwu.isa.instructions.base import Cost, GMBox
from zhenwu.isa.machine import Machine


def _occupancy(work: float, rate: float) -> int:
    """Cycles an engine is busy for `work` units at `rate` units per cycle (at least 1)."""
    return max(1, ceil(work / rate))


def mx_blocks(machine: Machine, m: int, n: int, k: int) -> int:
    """MX array passes of an M x N x K product (each a multiple of the MX shape)."""
    return (m // machine.mx_m) * (n // machine.mx_n) * (k // machine.mx_k)


def mma_cost(machine: Machine, in_dtype: str, m: int, n: int, k: int) -> Cost:
    """An MMA of M x N x K at input dtype `in_dtype`: its MX blocks at the dtype's MAC-rate
    multiplier (`mx.rate`), latency `mx_fill_latency`."""
    return Cost(_occupancy(mx_blocks(machine, m, n, k), machine.mx_rate(in_dtype) or 1.0),
                machine.mx_fill_latency, flops=2 * m * n * k)


def dma_load_cost(machine: Machine, moved: float, nbytes: int = 0,
                  gm: GMBox | None = None) -> Cost:
    """A DMA.LD that moves `moved` bytes through the core's load port (its in-bounds bytes
    rounded up to the bursts they touch): one HBM round trip of latency; `nbytes` in-bounds
    bytes are GM reads."""
    return Cost(_occupancy(moved, machine.ld_bytes_per_cycle), machine.hbm_latency,
                hbm_read=nbytes, gm=gm)


def dma_store_cost(machine: Machine, moved: float, nbytes: int = 0,
                   gm: GMBox | None = None) -> Cost:
    """A DMA.ST that moves `moved` bytes through the core's store port: latency an HBM
    write; `nbytes` in-bounds bytes are GM writes."""
    return Cost(_occupancy(moved, machine.st_bytes_per_cycle), machine.hbm_latency,
                hbm_write=nbytes, gm=gm)


def dma_copy_cost(machine: Machine, nbytes: int) -> Cost:
    """A DMA.MOV of `nbytes` within a core: the load port's rate, SRAM latency."""
    return Cost(_occupancy(nbytes, machine.ld_bytes_per_cycle), machine.sram_latency)


def vx_cost(machine: Machine, work_bytes: float, flops: int = 0) -> Cost:
    """A vector instruction over `work_bytes` (its elements times its widest operand's
    element size) at `vx_bytes_per_cycle`, latency `vx_latency`."""
    return Cost(_occupancy(work_bytes, machine.vx_bytes_per_cycle), machine.vx_latency,
                flops=flops)


def sfu_cost(machine: Machine, elems: float, trig: bool = False) -> Cost:
    """A special-function instruction over `elems` elements at the SFU's element rate
    (`sfu_trig_elems_per_cycle` for sine and cosine), latency `sfu_latency`."""
    rate = machine.sfu_trig_elems_per_cycle if trig else machine.sfu_elems_per_cycle
    return Cost(_occupancy(elems, rate), machine.sfu_latency, flops=int(elems))
