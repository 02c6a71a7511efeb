"""Cost formulas: exact cycles and bytes from the machine description."""

from __future__ import annotations

import numpy as np
import pytest
from seqrun import SeqContext
from zhenwu.isa.asm import parse_assembly
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.instructions import INSTRUCTIONS, Cost, costs
from zhenwu.isa.instructions.base import GMBox
from zhenwu.isa.machine import load_machine

SETUP = """
.tensor a, bf16, [40, 32], 0x0, in
.tensor c, f32, [64, 64], 0x1000, out
    DESC d0, a, bf16, [40, 32], [32, 1], [16, 32]
    DESC d1, a, bf16, [40, 32], [32, 1], [64, 128]
    DESC d2, c, f32, [64, 64], [64, 1], [16, 16]
"""


def cost_of(line: str, machine: str = "m890", regs: dict[int, int] | None = None) -> Cost:
    program = parse_assembly(SETUP + "    " + line + "\n")
    m = load_machine(machine)
    ctx = SeqContext(program, m, np.zeros(1 << 16, dtype=np.uint8), 0, 1)
    for instr in program.instructions[:-1]:  # the DESCs
        INSTRUCTIONS[instr.mnemonic].execute(instr, ctx)
    for index, value in (regs or {}).items():
        ctx.regs[index] = value
    instr = program.instructions[-1]
    return INSTRUCTIONS[instr.mnemonic].cost(instr, m, ctx)


@pytest.mark.parametrize("line, expected", [
    # 16 x 32 bf16 = 1024 bytes in bounds / 256 per cycle; HBM latency 600
    # (the GM box names the bytes, for the runtime's L2 model)
    ("DMA.LD L1[0], d0[0, 0]", Cost(4, 600, hbm_read=1024, gm=GMBox(0, (16, 32), (64, 2), 2))),
    # rows 32..47 of 40: 8 rows in bounds = 512 bytes
    ("DMA.LD L1[0], d0[r1, 0]", Cost(2, 600, hbm_read=512,
                                      gm=GMBox(32 * 64, (8, 32), (64, 2), 2))),
    # a 64 x 128 box over a 40 x 32 tensor: only 40 x 32 x 2 = 2560 bytes move
    ("DMA.LD L1[0], d1[0, 0] .pad #0.0", Cost(10, 600, hbm_read=2560,
                                               gm=GMBox(0, (40, 32), (64, 2), 2))),
    # entirely outside: nothing read, still one cycle
    ("DMA.LD L1[0], d0[100, 0]", Cost(1, 600, hbm_read=0)),
    # 16 x 16 f32 = 1024 bytes / 128 per cycle
    ("DMA.ST d2[0, 0], ACC[0]", Cost(8, 600, hbm_write=1024,
                                      gm=GMBox(0x1000, (16, 16), (256, 4), 4))),
    # 8 rows of 32 B, each inside its own 64 B burst: 512 burst bytes / 128 per cycle
    ("DMA.ST d2[56, 56], ACC[0] .relu", Cost(4, 600, hbm_write=256,
                                              gm=GMBox(0x1000 + (56 * 64 + 56) * 4, (8, 8),
                                                       (256, 4), 4))),
    ("DMA.MOV L1[0], ACC[0], 1000", Cost(4, 8)),
    # (128/16)^3 = 512 MX blocks at rate 1; latency mx_fill 32; 2 M N K flops
    ("MMA.bf16.f32 ACC[0], L1[0], L1[0], 128, 128, 128 .init", Cost(512, 32, flops=4194304)),
    ("MMA.f16.f32 ACC[0], L1[0], L1[0], 128, 128, 128", Cost(512, 32, flops=4194304)),
    ("MMA.fp8.f32 ACC[0], L1[0], L1[0], 128, 128, 128", Cost(256, 32, flops=4194304)),
    ("MMA.i8.i32 ACC[0], L1[0], L1[0], 128, 128, 128", Cost(256, 32, flops=4194304)),
    ("MMA.f32.f32 ACC[0], L1[0], L1[0], 128, 128, 128", Cost(2048, 32, flops=4194304)),
    ("MMA.bf16.f32 ACC[0], L1[0], L1[0], 16, 16, 16", Cost(1, 32, flops=8192)),
    ("MMA.fp8.f32 ACC[0], L1[0], L1[0], 16, 16, 16", Cost(1, 32, flops=8192)),
    ("MMA.bf16.f32 ACC[0], L1[0], L1[0], r1, 64, 32", Cost(16, 32, flops=131072)),
    # VX: rows * cols * bytes / 512 per cycle, latency 8
    ("VADD.f32 L1[0], L1[0], L1[0], 8, 1024", Cost(64, 8, flops=8192)),
    ("VADD.bf16 L1[0], L1[0], #1.0, 8, 1024", Cost(32, 8, flops=8192)),
    ("VFMA.f32 L1[0], L1[0], L1[0], L1[0], 8, 1024", Cost(64, 8, flops=16384)),
    ("VCVT.f32.bf16 L1[0], L1[0], 16, 16", Cost(2, 8)),
    ("VCOPY.i8 L1[0], L1[0], 3, 5", Cost(1, 8)),
    ("VRSUM.f32 L1[0], L1[0], 16, 1024 .row", Cost(128, 8, flops=16384)),
    ("VRARGMAX.bf16 L1[0], L1[64], L1[0], 16, 1024, 0 .row", Cost(128, 8, flops=16384)),
    # SFU: rows * cols / 32 per cycle (sin/cos 16), latency 24
    ("VEXP.f32 L1[0], L1[0], 16, 1024", Cost(512, 24, flops=16384)),
    ("VSIN.bf16 L1[0], L1[0], 16, 1024", Cost(1024, 24, flops=16384)),
    ("VRCP.f32 L1[0], L1[0], 16, 1", Cost(1, 24, flops=16)),
    # scalar and sync
    ("ADD r1, r2, 3", Cost(1, 0)),
    ("DESC d3, 0, f32, [4], [1], [4]", Cost(1, 0)),
    ("WAIT.S E1:2", Cost(1, 0)),
    ("WAIT.MX E1", Cost(0, 0)),
    ("SIG.S E1", Cost(1, 0)),
    ("BAR.CHIP", Cost(1, 0)),
])
def test_cost_on_m890(line, expected):
    assert cost_of(line, regs={1: 32}) == expected


def test_z810e_costs_per_core_match_and_fp8_traps():
    line = "MMA.bf16.f32 ACC[0], L1[0], L1[0], 128, 128, 128"
    assert cost_of(line, "z810e") == Cost(512, 32, flops=4194304)
    with pytest.raises(ChipTrap, match="no fp8 matrix unit"):
        cost_of("MMA.fp8.f32 ACC[0], L1[0], L1[0], 16, 16, 16", "z810e")


def test_cost_traps_on_bad_sizes():
    with pytest.raises(ChipTrap, match="N = 20 is not a multiple of 16"):
        cost_of("MMA.bf16.f32 ACC[0], L1[0], L1[0], 16, 20, 16")
    with pytest.raises(ChipTrap, match="rows must be positive, got -1"):
        cost_of("VADD.f32 L1[0], L1[0], L1[0], r1, 4", regs={1: -1})
    with pytest.raises(ChipTrap, match="d0 has rank 2 but 1 coordinates"):
        cost_of("DMA.LD L1[0], d0[0]")


def test_engines():
    program = parse_assembly("WAIT.VX E0\nWAIT.S E0\nDMA.MOV L1[0], L1[64], 4\nVEXP.f32 "
                             "L1[0], L1[0], 1, 1\nMMA.bf16.f32 ACC[0], L1[0], L1[0], 16, 16, 16\n"
                             "DESC d0, 0, f32, [4], [1], [4]\nDMA.ST d0[0], L1[0]\n")
    engines = [INSTRUCTIONS[i.mnemonic].engine_of(i) for i in program.instructions]
    assert engines == ["VX", "S", "LD", "VX", "MX", "S", "ST"]
    assert INSTRUCTIONS["VEXP"].unit == "SFU"


# The per-step primitives (isa/instructions/costs.py) the compiler's tile models price tiles
# with are the rules the simulator charges: each equals the InstrDef cost of one instruction.
@pytest.mark.parametrize("machine", ["m890", "z810e", "a100"])
@pytest.mark.parametrize("line, primitive", [
    ("MMA.bf16.f32 ACC[0], L1[0], L1[0], 128, 64, 48 .init",
     lambda m: costs.mma_cost(m, "bf16", 128, 64, 48)),
    ("MMA.f32.f32 ACC[0], L1[0], L1[0], 16, 16, 32",
     lambda m: costs.mma_cost(m, "f32", 16, 16, 32)),
    # 16 x 32 bf16 in bounds, whole bursts
    ("DMA.LD L1[0], d0[0, 0]", lambda m: costs.dma_load_cost(
        m, 1024, 1024, GMBox(0, (16, 32), (64, 2), 2))),
    # 8 rows of 32 B, each in a burst of its own: 8 bursts move, 256 bytes are written
    ("DMA.ST d2[56, 56], ACC[0]", lambda m: costs.dma_store_cost(
        m, 8 * m.dma_burst_bytes, 256, GMBox(0x1000 + (56 * 64 + 56) * 4, (8, 8), (256, 4),
                                             4))),
    ("DMA.MOV L1[0], ACC[0], 1000", lambda m: costs.dma_copy_cost(m, 1000)),
    ("VADD.bf16 L1[0], L1[0], #1.0, 8, 1000", lambda m: costs.vx_cost(m, 8 * 1000 * 2, 8000)),
    ("VFMA.f32 L1[0], L1[0], L1[0], L1[0], 3, 5", lambda m: costs.vx_cost(m, 60, 30)),
    ("VEXP.f32 L1[0], L1[0], 16, 1000", lambda m: costs.sfu_cost(m, 16000)),
    ("VSIN.bf16 L1[0], L1[0], 16, 1000", lambda m: costs.sfu_cost(m, 16000, trig=True)),
])
def test_primitives_are_the_simulators_costs(line, primitive, machine):
    m = load_machine(machine)
    assert primitive(m) == cost_of(line, machine)


def test_mma_primitive_rounds_up_a_partial_pass():
    """An fp8 MMA of an odd number of MX blocks takes a whole cycle for the last one."""
    m = load_machine("m890")
    assert costs.mma_cost(m, "fp8", 48, 16, 16).occupancy == 2 == cost_of(
        "MMA.fp8.f32 ACC[0], L1[0], L1[0], 48, 16, 16").occupancy
