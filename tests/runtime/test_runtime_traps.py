"""Every check stops the run with exit status 3 and names the instruction, core and engines;
none of them produces a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from runtime_helpers import FIXTURES

CASES = {
    "race.s": ("race on L1[0x0, 0x400)", "@3: VADD.f32 L1[1024], L1[0], #1.0, 16, 16",
               "engines LD, VX", ["the other access: @2: DMA.LD L1[0], d0[0, 0]"]),
    "deadlock.s": ("deadlock: every engine is blocked", "@3: BAR.CORE", "engines S, LD, VX",
                   ["LD waits (E1:1) at @1", "VX waits (E2:1) at @2"]),
    "oob_dma.s": ("out-of-bounds access: L1[0xffe00, 0x100200)",
                  "@2: DMA.LD L1[r1], d0[0, 0] .sig E0", "engines LD", []),
    "leftover_event.s": ("event not zero at HALT: E3 = 1", "@2: HALT", "engines LD", []),
    "queue_at_halt.s": ("queue not empty at HALT", "@0: MMA.bf16.f32", "engines S, MX",
                        ["MX waits (E5:1)"]),
    "runaway.s": ("runaway program: more than 5000 instructions", "@2: JMP spin",
                  "engines S", []),
}


def _zhenwu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zhenwu", *args], check=False,
                          capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trap_fixture(name):
    message, where, engines, notes = CASES[name]
    proc = _zhenwu("run", str(FIXTURES / name), "--max-instructions", "5000")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("trap: " + message), proc.stderr
    assert "core " in lines[0] and engines in lines[0]
    assert lines[1].strip().startswith("at " + where), proc.stderr
    for note in notes:
        assert note in proc.stderr


def test_mma_size_trap_names_the_instruction(tmp_path):
    program = tmp_path / "bad_mma.s"
    program.write_text("    MMA.bf16.f32 ACC[0], L1[0], L1[512], 24, 16, 16 .init\n    HALT\n")
    proc = _zhenwu("run", str(program))
    assert proc.returncode == 3
    assert "trap: MMA M = 24 is not a multiple of 16" in proc.stderr
    assert "@0: MMA.bf16.f32 ACC[0], L1[0], L1[512], 24, 16, 16 .init" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gm_out_of_bounds_dma(tmp_path):
    program = tmp_path / "gm_oob.s"
    # a descriptor whose base lies past the end of 144 GB of HBM
    program.write_text(
        "    LI r1, 144000000000\n"
        "    DESC d0, r1, f32, [16, 16], [16, 1], [16, 16]\n"
        "    DMA.LD L1[0], d0[0, 0] .sig E0\n    WAIT.S E0\n    HALT\n")
    proc = _zhenwu("run", str(program))
    assert proc.returncode == 3, proc.stderr
    assert "out-of-bounds access: GM" in proc.stderr
    assert "@2: DMA.LD L1[0], d0[0, 0] .sig E0" in proc.stderr


def test_chip_barrier_with_a_halted_core_deadlocks(tmp_path):
    program = tmp_path / "bar.s"
    program.write_text("    GETID r0, core\n    BEQZ r0, out\n    BAR.CHIP\nout:\n    HALT\n")
    proc = _zhenwu("run", str(program))
    assert proc.returncode == 3
    assert "deadlock: cores wait at BAR.CHIP for cores that halted" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_deadlock_names_the_stuck_core_not_the_waiting_ones(tmp_path):
    program = tmp_path / "stuck.s"
    program.write_text("    GETID r0, core\n    SEQ r1, r0, 5\n    BEQZ r1, bar\n    WAIT.S E7\n"
                       "bar:\n    BAR.CHIP\n    HALT\n")
    proc = _zhenwu("run", str(program))
    assert proc.returncode == 3
    assert proc.stderr.startswith(
        "trap: deadlock: the scalar waits for an event that is never signalled (core 5;")
    assert "at @3: WAIT.S E7" in proc.stderr
