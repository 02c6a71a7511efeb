"""Cluster instructions (engine NET): a copy from this chip's GM into a peer's GM over the chip
links or the NIC, and a bare cross-chip signal.

Transfers are push-only: a chip writes into a peer's HBM, never reads from it (a "get" is a
put issued by the peer). Every cluster instruction names its peer chip and an event `Ek[:n]`
that is signalled **on the peer**, on the core with this core's index, when the transfer has
landed there: these are the cross-chip events. Its own `.sig` fields fire on this core at
the same moment (when the bytes have landed), so a sender knows when it may reuse its source.

The route a transfer takes and its start-up time (alpha) come from the machine's `[system]`,
`[link]` and `[nic]` (isa/topology.py): inside a node over the links in its topology, between
nodes through both chips' NICs. The interpreter passes the bytes through each channel of the
route and through both chips' HBM as shared bandwidth servers, so transfers that share a link
share its bandwidth. Collectives (all-reduce, all-gather, ...) are not instructions: the
compiler builds them from these (compiler/collective_codegen.py).

Asynchronous transfers: with `.async` a cluster instruction is detached from the chip's
barriers: `BAR.CORE` and `BAR.CHIP` wait for every other queued or running instruction of the
core but not for it (nor for the NET queue behind it while the queue holds only `.async`
instructions); `HALT` still waits for it. Its completion is known only through its events.
This is how a collective runs on the links while the cores go on with later kernels (each
kernel ends with a `BAR.CHIP`): the compiler enqueues a whole collective on one core's NET
queue, ordered by `.wait`s on cross-chip events, and waits for its last event (`WAIT.S`)
before the first kernel that reads the result (compiler/collective_codegen.py,
`async_allreduce`).
"""

from __future__ import annotations

import functools

from zhenwu.isa.context import ExecContext
from zhenwu.isa.dtypes import DTYPES, compute_dtype, convert, itemsize, np_dtype
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.instructions.base import (
    Cost,
    InstrDef,
    NetTransfer,
    OperandSpec,
    OptionSpec,
    SuffixSlot,
    ceil_div,
    positive_value,
    scalar_value,
)
from zhenwu.isa.lazy import numpy as np
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import Event, Instruction, Symbol
from zhenwu.isa.topology import Route, Topology

GROUP = "cluster"
ASYNC = OptionSpec("async", doc="detached from barriers: BAR.CORE/BAR.CHIP do not wait for it "
                   "(HALT does); its events say when it is done")

PEER = OperandSpec("peer", ("imm", "reg"), "the peer chip (0 .. chips-1)")
EVENT = OperandSpec("event", ("event",), "event Ek[:n] signalled on the peer when it lands")


@functools.lru_cache(maxsize=64)
def topology(machine: Machine, chips: int) -> Topology:
    """The network of a run of `chips` chips (cached: costs ask for it per transfer)."""
    return Topology(machine, chips)


def _peer(instr: Instruction, ctx: ExecContext) -> int:
    peer = scalar_value(instr.operands[0], ctx)
    chips = ctx.get_id("chips")
    if not 0 <= peer < chips:
        raise ChipTrap(f"{instr.name}: peer chip {peer} is not in this run of {chips} chip"
                       f"{'' if chips == 1 else 's'} (0..{chips - 1})")
    return peer


def route(machine: Machine, ctx: ExecContext, peer: int) -> Route:
    """The route from this chip to `peer` (none to itself: a copy within this chip's HBM)."""
    chip = ctx.get_id("chip")
    if peer == chip:
        return Route((), 0.0)
    return topology(machine, ctx.get_id("chips")).route(chip, peer)


def _gm_address(op, ctx: ExecContext) -> int:
    if isinstance(op, Symbol):  # a tensor of this program; SPMD chips share the layout
        return ctx.program.tensor(op.name).address + op.offset
    return scalar_value(op, ctx)


def _event(instr: Instruction) -> tuple[tuple[int, int], ...]:
    event = instr.operands[-1]
    assert isinstance(event, Event)
    return ((event.index, event.count),)


def _put_dtype(instr: Instruction) -> str | None:
    return instr.suffixes[0] if instr.suffixes else None


def _put_check(instr: Instruction) -> str | None:
    if instr.has("add") and _put_dtype(instr) is None:
        return "DMA.PUT .add needs the element dtype: DMA.PUT.<dt> ... .add"
    if instr.has("add") and _put_dtype(instr) == "bool":
        return "DMA.PUT .add cannot add bool"
    return None


def _put_sizes(instr: Instruction, ctx: ExecContext) -> tuple[int, int, int, int]:
    peer = _peer(instr, ctx)
    dst = _gm_address(instr.operands[1], ctx)
    src = _gm_address(instr.operands[2], ctx)
    nbytes = positive_value(instr.operands[3], ctx, "DMA.PUT size")
    dtype = _put_dtype(instr)
    if dtype is not None and nbytes % itemsize(dtype):
        raise ChipTrap(f"DMA.PUT.{dtype}: {nbytes} bytes is not a whole number of {dtype} "
                       f"elements ({itemsize(dtype)} bytes)")
    return peer, dst, src, nbytes


def _put(instr: Instruction, ctx: ExecContext) -> None:
    peer, dst, src, nbytes = _put_sizes(instr, ctx)
    data = ctx.chip_read(ctx.get_id("chip"), src, nbytes)
    if instr.has("add"):
        dtype = _put_dtype(instr)
        assert dtype is not None
        here = data.view(np_dtype(dtype)).astype(compute_dtype(dtype))
        there = ctx.chip_read(peer, dst, nbytes).view(np_dtype(dtype)).astype(
            compute_dtype(dtype))
        data = np.ascontiguousarray(convert(there + here, dtype)).view(np.uint8)
    ctx.chip_write(peer, dst, data)


def _put_cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
    peer, _, _, nbytes = _put_sizes(instr, ctx)
    path = route(machine, ctx, peer)
    topo = topology(machine, ctx.get_id("chips"))
    if path.channels:
        slowest = min(topo.channels[name].bytes_per_second for name in path.channels)
    else:
        slowest = machine.hbm_bandwidth
    return Cost(max(1, ceil_div(nbytes, slowest / machine.clock_hz)),
                round(machine.cycles(path.alpha_seconds)), hbm_read=nbytes,
                net=NetTransfer(peer, nbytes, _event(instr), instr.has("add")))


def _rsig(instr: Instruction, ctx: ExecContext) -> None:
    _peer(instr, ctx)  # the signal itself is the interpreter's


def _rsig_cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
    peer = _peer(instr, ctx)
    path = route(machine, ctx, peer)
    return Cost(1, round(machine.cycles(path.alpha_seconds)),
                net=NetTransfer(peer, 0, _event(instr)))


DEFS: list[InstrDef] = [
    InstrDef(
        mnemonic="DMA.PUT", opcode=0xA0, engine="NET", group=GROUP,
        summary="copy nbytes contiguous bytes from this chip's GM at src to the GM of chip "
        "peer at dst (with `.add`: add them there, element-wise as `.dt`, the result rounded "
        "to `.dt`); when they have landed, signal the event on the peer (on the core of this "
        "core's index) and this instruction's `.sig`s here. An address is an integer, a "
        "register, or a tensor name (+offset) of this program, which SPMD chips place at the "
        "same address; peer may be this chip (a copy within its HBM)",
        operands=(PEER,
                  OperandSpec("dst", ("addr", "symbol"), "GM byte address on the peer"),
                  OperandSpec("src", ("addr", "symbol"), "GM byte address on this chip"),
                  OperandSpec("nbytes", ("imm", "reg"), "bytes", positive=True),
                  EVENT),
        suffixes=(SuffixSlot("dt", DTYPES, optional=True),),
        options=(OptionSpec("add", doc="reduce into the destination (needs `.dt`)"), ASYNC),
        sync=True, cost=_put_cost, execute=_put, check=_put_check,
        cost_doc="occupancy ceil(nbytes / the slowest channel of the route, in bytes per "
        "cycle) (at least 1; HBM bandwidth to this chip itself), latency the route's alpha "
        "(`link.alpha_seconds` per link hop, `nic.alpha_seconds` between nodes) in cycles; "
        "nbytes are HBM reads here and HBM writes on the peer (and reads too with `.add`); "
        "every channel of the route and both HBMs are shared bandwidth servers",
    ),
    InstrDef(
        mnemonic="RSIG", opcode=0xA1, engine="NET", group=GROUP,
        summary="signal the event on chip peer (on the core of this core's index) after the "
        "route's alpha: a cross-chip event with no data (\"my buffer is ready\")",
        operands=(PEER, EVENT), options=(ASYNC,),
        sync=True, cost=_rsig_cost, execute=_rsig,
        cost_doc="occupancy 1, latency the route's alpha in cycles (as DMA.PUT)",
    ),
]
