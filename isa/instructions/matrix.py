"""The matrix instruction (engine MX): C (ACC) = or += A (L1) @ B (L1)."""

from __future__ import annotations

from zhenwu.isa.context import ExecContext
from zhenwu.isa.dtypes import MX_DTYPES
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.instructions.base import (
    Cost,
    InstrDef,
    OperandSpec,
    OptionSpec,
    SuffixSlot,
    check_elements,
    positive_value,
    tile_view,
)
from zhenwu.isa.instructions.costs import mma_cost
from zhenwu.isa.lazy import numpy as np
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import Instruction

GROUP = "matrix"


def mma_dims(instr: Instruction, machine: Machine, ctx: ExecContext) -> tuple[int, int, int]:
    """(M, N, K) of an MMA; ChipTrap unless they are multiples of the MX array and the
    machine supports the input dtype."""
    in_dtype = instr.suffixes[0]
    if not machine.supports_mx(in_dtype):
        raise ChipTrap(f"MMA.{in_dtype}: machine '{machine.name}' has no {in_dtype} matrix unit")
    m, n, k = (positive_value(op, ctx, name) for op, name in zip(instr.operands[3:], "MNK"))
    for value, unit, name in ((m, machine.mx_m, "M"), (n, machine.mx_n, "N"),
                              (k, machine.mx_k, "K")):
        if value % unit:
            raise ChipTrap(f"MMA {name} = {value} is not a multiple of {unit}")
    for rows, cols, name in ((m, k, "A"), (k, n, "B"), (m, n, "C")):
        check_elements(machine, rows * cols, f"MMA {name} ({rows} x {cols})")
    return m, n, k


def _mma(instr: Instruction, ctx: ExecContext) -> None:
    in_dtype, acc_dtype = instr.suffixes
    c_tile, a_tile, b_tile = instr.operands[:3]
    m, n, k = mma_dims(instr, ctx.machine, ctx)
    if instr.has("tA"):
        a = tile_view(ctx, a_tile, k, m, in_dtype).T
    else:
        a = tile_view(ctx, a_tile, m, k, in_dtype)
    if instr.has("tB"):
        b = tile_view(ctx, b_tile, n, k, in_dtype).T
    else:
        b = tile_view(ctx, b_tile, k, n, in_dtype)
    c = tile_view(ctx, c_tile, m, n, acc_dtype)
    if acc_dtype == "i32":
        product = a.astype(np.int64) @ b.astype(np.int64)
        if not instr.has("init"):
            product = product + c.astype(np.int64)
        c[...] = product.astype(np.int32)  # wraps, as 32-bit hardware would
    else:
        product = a.astype(np.float32) @ b.astype(np.float32)
        if not instr.has("init"):
            product = product + c
        c[...] = product


def _mma_cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
    m, n, k = mma_dims(instr, machine, ctx)
    return mma_cost(machine, instr.suffixes[0], m, n, k)


def _mma_check(instr: Instruction) -> str | None:
    in_dtype, acc_dtype = instr.suffixes
    wanted = "i32" if in_dtype == "i8" else "f32"
    if acc_dtype != wanted:
        return f"MMA.{in_dtype} accumulates in {wanted}: write MMA.{in_dtype}.{wanted}"
    return None


DEFS: list[InstrDef] = [
    InstrDef(
        mnemonic="MMA", opcode=0x30, engine="MX", group=GROUP,
        summary="C (M x N, in ACC) = A @ B with `.init`, C += A @ B with `.acc` (the default). "
        "A is M x K (stored K x M with `.tA`), B is K x N (stored N x K with `.tB`), both in "
        "L1 of dtype <in>; row strides come from the tile operands. Products accumulate in "
        "f32 (i32 for i8, wrapping). M, N, K must be multiples of the MX array (16): else a "
        "trap; so is an <in> dtype the machine has no rate for (fp8 on z810e)",
        operands=(OperandSpec("c", ("tile",), "accumulator tile", spaces=("ACC",)),
                  OperandSpec("a", ("tile",), "left operand", spaces=("L1",)),
                  OperandSpec("b", ("tile",), "right operand", spaces=("L1",)),
                  OperandSpec("m", ("imm", "reg"), "rows of C", positive=True),
                  OperandSpec("n", ("imm", "reg"), "columns of C", positive=True),
                  OperandSpec("k", ("imm", "reg"), "reduction length", positive=True)),
        suffixes=(SuffixSlot("in", MX_DTYPES), SuffixSlot("acc", ("f32", "i32"))),
        options=(OptionSpec("init", doc="C = A @ B"), OptionSpec("acc", doc="C += A @ B"),
                 OptionSpec("tA", doc="A is stored transposed"),
                 OptionSpec("tB", doc="B is stored transposed")),
        exclusive=(("init", "acc"),),
        sync=True, cost=_mma_cost, execute=_mma, check=_mma_check,
        cost_doc="occupancy ceil((M/`mx_m`)(N/`mx_n`)(K/`mx_k`) / rate(<in>)) with rate from "
        "`mx.rate` (bf16/f16 1, fp8/i8 2, f32 0.25), latency `mx_fill_latency`; "
        "flops 2·M·N·K",
    ),
]
