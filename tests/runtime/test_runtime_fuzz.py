"""Random instruction streams run to completion or trap cleanly (a ChipTrap), never with an
internal error; and they run the same twice."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_helpers import machine_with
from zhenwu.isa.asm import parse_assembly
from zhenwu.isa.errors import AssemblyError, ChipTrap
from zhenwu.runtime import run_program

MACHINE = machine_with(2)
HEADER = (".tensor x, f32, [32, 32], 0x0, in\n"
          ".tensor y, f32, [32, 32], 0x1000, out\n"
          "DESC d0, x, f32, [32, 32], [32, 1], [16, 16]\n"
          "DESC d1, y, f32, [32, 32], [32, 1], [16, 16]\n")

small = st.integers(0, 3)
address = st.sampled_from([0, 256, 1024, 4096, 1048064, "r1", "r2+64"])
space = st.sampled_from(["L1", "ACC"])


@st.composite
def tile(draw):
    base = draw(address)
    return f"{draw(space)}[{base}]"


@st.composite
def sync(draw):
    parts = []
    for kind in ("wait", "sig"):
        for _ in range(draw(st.integers(0, 1))):
            parts.append(f".{kind} E{draw(small)}")
    return " ".join(parts)


@st.composite
def instruction(draw):
    rows, cols = draw(st.sampled_from([(1, 1), (4, 8), (16, 16), (8, 300)]))
    dt = draw(st.sampled_from(["f32", "bf16", "i32"]))
    choice = draw(st.integers(0, 11))
    if choice == 0:
        return f"LI r{draw(small)}, {draw(st.integers(-5, 70000))}"
    if choice == 1:
        op = draw(st.sampled_from(["ADD", "SUB", "MUL", "DIV", "REM", "SHL", "MIN"]))
        return f"{op} r{draw(small)}, r{draw(small)}, {draw(st.integers(-3, 9))}"
    if choice == 2:
        return f"DMA.LD {draw(tile())}, d0[{draw(st.integers(-20, 40))}, r{draw(small)}] " \
               + draw(sync())
    if choice == 3:
        return f"DMA.ST d1[r{draw(small)}, {draw(st.integers(-20, 40))}], {draw(tile())} " \
               + draw(sync())
    if choice == 4:
        m, n, k = (draw(st.sampled_from([16, 32, 24])) for _ in range(3))
        return f"MMA.bf16.f32 ACC[{draw(address)}], L1[0], L1[8192], {m}, {n}, {k} " \
               f"{draw(st.sampled_from(['.init', '.acc']))} " + draw(sync())
    if choice == 5:
        op = draw(st.sampled_from(["VADD", "VMUL", "VDIV", "VMAX"]))
        return f"{op}.{dt} {draw(tile())}, {draw(tile())}, #1.5, {rows}, {cols} " + draw(sync())
    if choice == 6:
        op = draw(st.sampled_from(["VEXP", "VLOG", "VRSQRT", "VSIN"]))
        return f"{op}.f32 {draw(tile())}, {draw(tile())}, {rows}, {cols} " + draw(sync())
    if choice == 7:
        return f"VRSUM.f32 {draw(tile())}, {draw(tile())}, {rows}, {cols} .row " + draw(sync())
    if choice == 8:
        return f"WAIT.{draw(st.sampled_from(['S', 'LD', 'MX', 'VX', 'ST']))} E{draw(small)}"
    if choice == 9:
        return f"SIG.S E{draw(small)}"
    if choice == 10:
        return draw(st.sampled_from(["BAR.CORE", "BAR.CHIP", "NOP", "GETID r1, core"]))
    return f"DMA.MOV {draw(tile())}, {draw(tile())}, {draw(st.sampled_from([4, 100, 5000]))} " \
           + draw(sync())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(instruction(), min_size=1, max_size=12))
def test_random_streams_finish_or_trap_cleanly(lines):
    text = HEADER + "\n".join(lines) + "\nHALT\n"
    try:
        program = parse_assembly(text, "fuzz.s")
    except AssemblyError:
        return  # not a valid program (say, a .wait on an instruction that takes none)
    x = np.arange(1024, dtype=np.float32).reshape(32, 32)
    outcomes = []
    for _ in range(2):
        try:
            result = run_program(program, MACHINE, {"x": x}, max_instructions=500)
            outcomes.append(("ok", result.report.cycles, result.outputs["y"].tobytes()))
        except ChipTrap as trap:
            assert trap.address is not None, trap.format()
            outcomes.append(("trap", trap.format()))
    assert outcomes[0] == outcomes[1]
