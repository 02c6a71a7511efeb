"""Scalar and control instructions (engine S): integer ALU, ids, loops, branches, DESC.

Registers hold signed 64-bit integers; every result wraps to 64 bits. Each scalar
instruction costs `scalar_cycles` (1) on the scalar unit.
"""

from __future__ import annotations

from zhenwu.isa.context import ExecContext
from zhenwu.isa.dtypes import DTYPES
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.instructions.base import (
    Cost,
    InstrDef,
    OperandSpec,
    scalar_value,
    wrap64,
)
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import MAX_RANK, Descriptor, Instruction, IntList, Symbol

GROUP = "scalar and control"
SCALAR_COST_DOC = "occupancy `scalar_cycles` (1), latency 0"


def _scalar_cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
    return Cost(machine.scalar_cycles, 0)


def _nothing(instr: Instruction, ctx: ExecContext) -> None:
    """No architectural effect (the interpreter handles it)."""


RD = OperandSpec("rd", ("reg",), "destination register")
RA = OperandSpec("ra", ("reg",), "source register")
RB_IMM = OperandSpec("rb", ("reg", "imm"), "source register or integer immediate")


def _scalar(mnemonic: str, opcode: int, summary: str, operands, execute, group: str = GROUP,
            **extra) -> InstrDef:
    return InstrDef(
        mnemonic=mnemonic, opcode=opcode, engine="S", group=group, summary=summary,
        operands=tuple(operands), cost=_scalar_cost, execute=execute, cost_doc=SCALAR_COST_DOC,
        **extra,
    )


# ---- ALU ------------------------------------------------------------------------------


def _floor_div(a: int, b: int) -> int:
    if b == 0:
        raise ChipTrap("integer division by zero")
    return a // b


def _floor_rem(a: int, b: int) -> int:
    if b == 0:
        raise ChipTrap("integer remainder by zero")
    return a % b


# mnemonic -> (opcode, function of (a, b), summary)
_ALU = {
    "ADD": (0x03, lambda a, b: a + b, "rd = ra + rb"),
    "SUB": (0x04, lambda a, b: a - b, "rd = ra - rb"),
    "MUL": (0x05, lambda a, b: a * b, "rd = ra * rb"),
    "DIV": (0x06, _floor_div, "rd = floor(ra / rb); traps when rb = 0"),
    "REM": (0x07, _floor_rem, "rd = ra - rb * floor(ra / rb) (sign of rb); traps when rb = 0"),
    "SHL": (0x08, lambda a, b: a << (b & 63), "rd = ra << (rb & 63)"),
    "SHR": (0x09, lambda a, b: a >> (b & 63), "rd = ra >> (rb & 63), arithmetic (sign-filling)"),
    "AND": (0x0A, lambda a, b: a & b, "rd = ra & rb (bitwise)"),
    "OR": (0x0B, lambda a, b: a | b, "rd = ra | rb (bitwise)"),
    "XOR": (0x0C, lambda a, b: a ^ b, "rd = ra ^ rb (bitwise)"),
    "MIN": (0x0D, min, "rd = min(ra, rb) (signed)"),
    "MAX": (0x0E, max, "rd = max(ra, rb) (signed)"),
    "SLT": (0x0F, lambda a, b: int(a < b), "rd = 1 if ra < rb (signed) else 0"),
    "SEQ": (0x10, lambda a, b: int(a == b), "rd = 1 if ra == rb else 0"),
}


def _alu_execute(function):
    def execute(instr: Instruction, ctx: ExecContext) -> None:
        rd, ra, rb = instr.operands
        result = function(ctx.read_reg(ra.index), scalar_value(rb, ctx))
        ctx.write_reg(rd.index, wrap64(result))

    # rd = wrap64(function(ra, rb)): an interpreter may apply it to its registers directly
    # (runtime/decode.py does, to skip the context on its hottest path)
    execute.alu = function
    return execute


def _li(instr: Instruction, ctx: ExecContext) -> None:
    rd, imm = instr.operands
    ctx.write_reg(rd.index, wrap64(imm.value))


def _mov(instr: Instruction, ctx: ExecContext) -> None:
    rd, ra = instr.operands
    ctx.write_reg(rd.index, ctx.read_reg(ra.index))


def _getid(instr: Instruction, ctx: ExecContext) -> None:
    rd, which = instr.operands
    ctx.write_reg(rd.index, ctx.get_id(which.name))


# ---- control ------------------------------------------------------------------------


def _loop(instr: Instruction, ctx: ExecContext) -> None:
    counter, trips = instr.operands
    count = scalar_value(trips, ctx)
    ctx.write_reg(counter.index, 0)
    if count <= 0:
        ctx.jump(ctx.program.targets[ctx.pc])  # past the matching ENDLOOP
    else:
        ctx.push_loop(count)


def _endloop(instr: Instruction, ctx: ExecContext) -> None:
    start = ctx.program.targets[ctx.pc]
    counter = ctx.program.instructions[start].operands[0].index
    count = wrap64(ctx.read_reg(counter) + 1)
    ctx.write_reg(counter, count)
    if count < ctx.loop_trip_count():
        ctx.jump(start + 1)
    else:
        ctx.pop_loop()


def _take_branch(ctx: ExecContext) -> None:
    for _ in range(ctx.program.loop_exits[ctx.pc]):  # the LOOPs the branch leaves
        ctx.pop_loop()
    ctx.jump(ctx.program.targets[ctx.pc])


def _jmp(instr: Instruction, ctx: ExecContext) -> None:
    _take_branch(ctx)


def _branch(when_zero: bool):
    def execute(instr: Instruction, ctx: ExecContext) -> None:
        if (ctx.read_reg(instr.operands[0].index) == 0) == when_zero:
            _take_branch(ctx)

    return execute


# ---- DESC ---------------------------------------------------------------------------


def _desc_check(instr: Instruction) -> str | None:
    _, _, _, dims, strides, box = instr.operands
    if not len(dims.values) == len(strides.values) == len(box.values):
        return (f"DESC dims, strides and box must have one rank, got {len(dims.values)}, "
                f"{len(strides.values)} and {len(box.values)}")
    if any(d < 1 for d in dims.values):
        return "DESC dims must be positive"
    if any(s < 0 for s in strides.values):
        return "DESC strides must be non-negative (0 broadcasts)"
    if any(b < 1 for b in box.values):
        return "DESC box sizes must be positive"
    return None


def _desc(instr: Instruction, ctx: ExecContext) -> None:
    dk, base, dtype, dims, strides, box = instr.operands
    if isinstance(base, Symbol):
        address = ctx.program.tensor(base.name).address + base.offset
    else:
        address = scalar_value(base, ctx)
    assert isinstance(dims, IntList) and isinstance(strides, IntList) and isinstance(box, IntList)
    ctx.write_desc(dk.index, Descriptor(address, dtype.name, dims.values, strides.values,
                                        box.values))


DEFS: list[InstrDef] = [
    _scalar("NOP", 0x01, "does nothing", [], _nothing),
    _scalar("HALT", 0x02, "stops this core's scalar stream; at HALT every event must be 0 and "
            "every queue empty (the interpreter drains the queues first)", [], _nothing),
    *[
        _scalar(name, opcode, summary, [RD, RA, RB_IMM], _alu_execute(function))
        for name, (opcode, function, summary) in _ALU.items()
    ],
    _scalar("LI", 0x11, "rd = imm (64-bit)", [RD, OperandSpec("imm", ("imm",), "integer")], _li),
    _scalar("MOV", 0x12, "rd = ra", [RD, RA], _mov),
    _scalar(
        "GETID", 0x13,
        "rd = this core's index (`core`), this chip's index (`chip`), the cores per chip "
        "(`cores`) or the chips in the run (`chips`)",
        [RD, OperandSpec("which", ("keyword",), "core, chip, cores or chips",
                         keywords=("core", "chip", "cores", "chips"))],
        _getid,
    ),
    _scalar(
        "LOOP", 0x14,
        "rc = 0; runs the body up to the matching ENDLOOP n times with rc = 0 .. n-1 "
        "(n read once, at entry; n <= 0 skips the body); loops nest",
        [OperandSpec("rc", ("reg",), "loop counter"),
         OperandSpec("n", ("imm", "reg"), "trip count")],
        _loop, predicable=False,
    ),
    _scalar("ENDLOOP", 0x15, "rc += 1; back to the top of the matching LOOP while rc < n", [],
            _endloop, predicable=False),
    _scalar("JMP", 0x16, "continue at the label (a branch may leave LOOP bodies, never enter "
            "one)", [OperandSpec("target", ("label",), "label")],
            _jmp),
    _scalar("BEQZ", 0x17, "continue at the label when ra == 0",
            [RA, OperandSpec("target", ("label",), "label")], _branch(True)),
    _scalar("BNEZ", 0x18, "continue at the label when ra != 0",
            [RA, OperandSpec("target", ("label",), "label")], _branch(False)),
    _scalar(
        "DESC", 0x20,
        "dK = a view of a GM tensor (TMA-like): base byte address (a tensor name, name+imm, "
        "an imm, rN or rN+imm), element dtype, dims, strides in elements (0 broadcasts) and "
        f"the box a DMA moves, all of one rank 1..{MAX_RANK}. A DMA snapshots the descriptor "
        "when it is dispatched",
        [OperandSpec("dK", ("dreg",), "descriptor register"),
         OperandSpec("base", ("symbol", "addr"), "GM byte address"),
         OperandSpec("dtype", ("keyword",), "element dtype", keywords=DTYPES),
         OperandSpec("dims", ("list",), "tensor dims"),
         OperandSpec("strides", ("list",), "strides in elements"),
         OperandSpec("box", ("list",), "box dims")],
        _desc, check=_desc_check, group="descriptors and DMA",
    ),
]
