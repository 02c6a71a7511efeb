"""Decode an `isa.program.Program` once into the interpreter's `Op` list (runtime/ops.py).

Every instruction's meaning and cost come from its one definition in `isa.instructions`
(`InstrDef.execute` and `InstrDef.cost`); the decoder only prepares closures that call them
with the right context, classifies each instruction for the scheduler (scalar, engine queue,
or scalar synchronisation), and resolves `.wait`/`.sig` fields to (event, count) tuples.
"""

from __future__ import annotations

import math
from operator import itemgetter

from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.instructions import INSTRUCTIONS
from zhenwu.isa.instructions.base import wrap64
from zhenwu.isa.program import Event, Imm, Instruction, Program, Reg, Tile
from zhenwu.runtime.context import EngineContext
from zhenwu.runtime.memory import OutOfBounds, span_of
from zhenwu.runtime.ops import BAR_CHIP, BAR_CORE, ENGINE, HALT, SCALAR, SIG_S, WAIT_S, Bound, Op

# Operand names (OperandSpec.name) of the tiles an instruction writes; every other tile
# operand is read. Used to tell reads from writes for race detection. (MMA's accumulator is
# named `c`; VFMA's `c` is a source.)
DESTINATION_OPERANDS = frozenset({"dst", "dval", "didx"})
MATRIX_DESTINATION = "c"
_COST_CACHE_SIZE = 1 << 14  # per instruction; cleared when full


def _sync_kind(instr: Instruction, engine: str) -> int | None:
    name = instr.name
    if name == "HALT":
        return HALT
    if name in ("BAR.CORE", "BAR.CHIP"):
        return BAR_CORE if name == "BAR.CORE" else BAR_CHIP
    if instr.mnemonic == "WAIT" and engine == "S":
        return WAIT_S
    if instr.mnemonic == "SIG" and engine == "S":
        return SIG_S
    return None


def _events(events) -> tuple[tuple[int, int], ...]:
    return tuple((e.index, e.count) for e in events)


def decode_program(program: Program, machine, engines: tuple[str, ...], *, functional: bool,
                   gm, chip: int = 0, chips: int = 1, l2=None) -> list[Op]:
    """One `Op` per instruction (index = address), plus a final HALT sentinel past the end.

    With an `l2` (runtime.l2.L2Cache), a DMA's bound operands carry the GM lines it touches.

    Running off the end of the program is treated as a HALT at `len(instructions)`.
    """
    kernel_at = {index: k for k, (_, index) in enumerate(program.kernels)}
    ops: list[Op] = []
    for index, instr in enumerate(program.instructions):
        defn = INSTRUCTIONS.get(instr.mnemonic)
        if defn is None:  # the assembler and decoder only build known instructions
            raise ChipTrap(f"unknown instruction '{instr.mnemonic}'", address=index,
                           instruction=str(instr))
        engine = defn.engine_of(instr)
        text = str(instr)  # the assembly text, for traps and traces
        pred = None
        if instr.predicate is not None:
            pred = (instr.predicate.reg, instr.predicate.negate)
        waits = _events(instr.waits)
        sigs = _events(instr.sigs)
        event_operands = _events(op for op in instr.operands if isinstance(op, Event))
        kind = _sync_kind(instr, engine)
        op = Op(index, SCALAR, text, instr.name, pred=pred, kernel=kernel_at.get(index))
        op.cycles = _scalar_cycles(defn, instr, machine)
        if kind is not None:
            op.kind = kind
            if kind == WAIT_S:
                op.waits = waits + event_operands
            elif kind == SIG_S:
                op.sigs = sigs + event_operands
        elif engine == "S":
            op.step = _scalar_step(defn.execute, instr, index)
        else:
            if engine not in engines:
                raise ChipTrap(f"{instr.name} runs on the {engine} engine, which is not "
                               "supported yet", address=index, instruction=text)
            op.kind = ENGINE
            op.engine = engines.index(engine)
            # WAIT.<eng> Ek: the event operand is a wait in that engine's queue
            op.waits = waits + (event_operands if instr.mnemonic == "WAIT" else ())
            op.sigs = sigs + (event_operands if instr.mnemonic == "SIG" else ())
            op.detached = engine == "NET" and instr.has("async")
            if engine == "MX" and instr.suffixes and machine.supports_mx(instr.suffixes[0]):
                op.flop_dtype = instr.suffixes[0]
            op.bind = _engine_binder(defn, instr, index, machine, program, functional, gm,
                                     chip, chips, l2)
        ops.append(op)
    end = Op(len(ops), HALT, "HALT (end of program)", "HALT",
             kernel=kernel_at.get(len(ops)))
    end.cycles = machine.scalar_cycles
    ops.append(end)
    return ops


def _scalar_cycles(defn, instr: Instruction, machine) -> int:
    """A scalar-unit instruction's issue cycles, from its cost formula."""
    if defn.engine != "S":
        return machine.scalar_cycles
    try:
        return max(1, defn.cost(instr, machine, None).occupancy)
    except (AttributeError, TypeError):  # a cost reading operands (ctx is None here)
        return machine.scalar_cycles


def _scalar_step(execute, instr: Instruction, index: int):
    """A closure running one scalar instruction on a core; returns the next pc."""
    following = index + 1
    alu = getattr(execute, "alu", None)
    if alu is not None:
        step = _alu_step(alu, instr, following)
        if step is not None:
            return step

    def step(core) -> int:
        ctx = core.scalar_ctx
        ctx.pc = index
        ctx.next_pc = following
        execute(instr, ctx)
        return ctx.next_pc

    return step


def _alu_step(function, instr: Instruction, following: int):
    """`rd = wrap64(function(ra, rb))` on the core's registers, with the operands resolved
    once: the same as the instruction's `execute` without a context per step (None for an
    operand form it does not know: the generic step runs it)."""
    rd, ra, rb = instr.operands
    if not (isinstance(rd, Reg) and isinstance(ra, Reg) and isinstance(rb, (Reg, Imm))):
        return None
    target, source = rd.index, ra.index
    if isinstance(rb, Reg):
        other = rb.index

        def step(core) -> int:
            regs = core.regs
            regs[target] = wrap64(function(regs[source], regs[other]))
            return following
    else:
        value = rb.value

        def step(core) -> int:
            regs = core.regs
            regs[target] = wrap64(function(regs[source], value))
            return following
    return step


def _getter(indices: tuple[int, ...]):
    """A fast function of a list giving its items at `indices` (hashable)."""
    if not indices:
        return lambda values: None
    return itemgetter(*indices)


def _check_box(box, machine) -> None:
    """A DMA box must lie in GM and fit a core's local memory: checked before the L2 model
    walks its lines (a huge stride or box would otherwise overflow or take hours there)."""
    low, high = span_of(box.shape, box.strides, box.itemsize)
    if box.address + low < 0 or box.address + high > machine.hbm_bytes:
        raise OutOfBounds("GM", box.address + low, box.address + high, machine.hbm_bytes)
    local = max(machine.l1_bytes, machine.acc_bytes)
    nbytes = math.prod(box.shape) * box.itemsize
    if nbytes > local:
        raise OutOfBounds("L1", 0, nbytes, local)


def _engine_binder(defn, instr: Instruction, index: int, machine, program, functional: bool, gm,
                   chip: int, chips: int, l2):
    """A closure binding an engine instruction at dispatch: snapshot, cost, semantics.

    A cost depends only on the instruction, the machine and the registers and descriptors
    the instruction reads (`Instruction.reads_regs()`/`reads_descs()`, all an ExecContext
    gives a cost function), so costs are memoised on those values: the cores of an SPMD
    program mostly dispatch the same instruction with the same operands.
    """
    execute = defn.execute
    cost_fn = defn.cost
    written = tuple(
        operand for spec, operand in zip(defn.operands, instr.operands)
        if isinstance(operand, Tile) and (
            spec.name in DESTINATION_OPERANDS
            or (defn.engine == "MX" and spec.name == MATRIX_DESTINATION))
    )
    reg_reads = instr.reads_regs()
    desc_reads = instr.reads_descs()
    costs: dict = {}  # operand values -> (Cost, GM lines) (functional) or Bound (timing only)

    def context(core) -> EngineContext:
        regs = core.regs
        written_at = frozenset(
            (tile.space, (0 if tile.base.reg is None else regs[tile.base.reg]) + tile.base.offset)
            for tile in written
        )
        return EngineContext(machine, program, index, list(regs), list(core.descs),
                             core.memories, gm, core.index, chip, chips, written_at, functional)

    def cost_of(core, key, ctx):
        if len(costs) >= _COST_CACHE_SIZE:
            costs.clear()
        cost = cost_fn(instr, machine, ctx or context(core))
        box = cost.gm
        if box is not None:
            _check_box(box, machine)
        lines = None if l2 is None or box is None else \
            l2.lines(box.address, box.shape, box.strides, box.itemsize)
        if functional:
            costs[key] = cost, lines
            return costs[key]
        bound = costs[key] = Bound(cost.occupancy, cost.latency, cost.hbm_read, cost.hbm_write,
                                   cost.flops, gm_lines=lines, net=cost.net)
        return bound, box

    read_regs = _getter(reg_reads)
    read_descs = _getter(desc_reads)

    if not functional:
        check = defn.bounds or execute
        moves = defn.moves
        # moves key -> (a bound, its box, the box's lowest and highest byte from its address)
        moved: dict = {}
        hbm_bytes = machine.hbm_bytes

        def bind_timing(core) -> Bound:
            key = (read_regs(core.regs), read_descs(core.descs))
            bound = costs.get(key)
            if bound is not None:
                return bound
            found = None if moves is None else moves(instr, core.scalar_ctx)
            if found is not None:
                like = moved.get(found[0])
                address = found[1]
                if like is not None and like[2] + address >= 0 and \
                        like[3] + address <= hbm_bytes:
                    # the cost of operands already bound, with the box moved
                    bound, box = like[0], like[1]
                    lines = None if bound.gm_lines is None else \
                        l2.lines(address, box.shape, box.strides, box.itemsize)
                    return Bound(bound.occupancy, bound.latency, bound.hbm_read,
                                 bound.hbm_write, bound.flops, gm_lines=lines, net=bound.net)
            # a new operand set: check its bounds from the addresses alone (the instruction's
            # `bounds`, or its semantics run on a context that hands out zeros and checks
            # every range it is asked for)
            ctx = context(core)
            check(instr, ctx)
            bound, box = cost_of(core, key, ctx)
            if found is not None and box is not None and box.address == found[1]:
                if len(moved) >= _COST_CACHE_SIZE:
                    moved.clear()
                low, high = span_of(box.shape, box.strides, box.itemsize)
                moved[found[0]] = (bound, box, low, high)
            return bound

        return bind_timing

    def bind(core) -> Bound:
        key = (read_regs(core.regs), read_descs(core.descs))
        ctx = context(core)
        cached = costs.get(key)
        cost, lines = cached if cached is not None else cost_of(core, key, ctx)

        def run() -> None:
            execute(instr, ctx)

        return Bound(cost.occupancy, cost.latency, cost.hbm_read, cost.hbm_write, cost.flops,
                     run, ctx.accesses, lines, cost.net)

    return bind
