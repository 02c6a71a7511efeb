"""Synchronisation instructions. Events are counters `E0..E31` per core; the interpreter
implements them (their `execute` has no architectural effect on registers or memory).

Besides these, every engine instruction may carry `.wait Ek[:n]` (start when Ek >= n, then
subtract n) and `.sig Ek[:n]` (add n on completion), at most two of each.
"""

from __future__ import annotations

from zhenwu.isa.context import ExecContext
from zhenwu.isa.instructions.base import Cost, InstrDef, OperandSpec, SuffixSlot
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import Instruction

GROUP = "sync"
EVENT = OperandSpec("event", ("event",), "event Ek with a count n (default 1)")


def _nothing(instr: Instruction, ctx: ExecContext) -> None:
    """Events are the interpreter's: no effect on registers or memory."""


def _wait_cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
    if instr.suffixes[0] == "S":
        return Cost(machine.scalar_cycles, 0)
    return Cost(0, 0)


def _scalar_cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
    return Cost(machine.scalar_cycles, 0)


DEFS: list[InstrDef] = [
    InstrDef(
        mnemonic="WAIT", opcode=0x90, engine="<suffix>", group=GROUP,
        summary="in the queue of engine <eng> (the scalar stream itself for S): wait until "
        "Ek >= n, then subtract n; later instructions of that queue start after it",
        operands=(EVENT,), suffixes=(SuffixSlot("eng", ("LD", "MX", "VX", "ST", "S", "NET")),),
        cost=_wait_cost, execute=_nothing,
        cost_doc="WAIT.S: occupancy `scalar_cycles`; on an engine: occupancy 0; a wait "
        "satisfied by a signal adds `event_wake_latency`",
    ),
    InstrDef(
        mnemonic="SIG", opcode=0x91, engine="S", group=GROUP,
        summary="the scalar stream adds n to Ek (in program order, at dispatch)",
        operands=(EVENT,), suffixes=(SuffixSlot("eng", ("S",)),),
        cost=_scalar_cost, execute=_nothing, cost_doc="occupancy `scalar_cycles`",
    ),
    InstrDef(
        mnemonic="BAR.CORE", opcode=0x92, engine="S", group=GROUP,
        summary="the scalar stream waits until every engine queue of this core is empty and "
        "every dispatched instruction has completed (but `.async` cluster transfers: a NET "
        "queue holding only those counts as empty; HALT waits for them)",
        operands=(), cost=_scalar_cost, execute=_nothing,
        cost_doc="occupancy `scalar_cycles`, plus the wait",
    ),
    InstrDef(
        mnemonic="BAR.CHIP", opcode=0x93, engine="S", group=GROUP,
        summary="every core of the chip reaches its BAR.CHIP and drains (as BAR.CORE); then "
        "all continue",
        operands=(), cost=_scalar_cost, execute=_nothing,
        cost_doc="occupancy `scalar_cycles`, plus the wait",
    ),
]
