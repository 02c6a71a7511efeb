"""The physical effects that keep a chip below its peaks (docs/internals.md section 3.4), each
pinned by a cycle count computed here by hand from the machine's [fidelity] numbers; and
fast-forward (section 3.5) against the full simulation."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from runtime_helpers import machine_with, run_asm
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.machine import MACHINES_DIR, parse_machine
from zhenwu.runtime.bandwidth import HbmServer

M = machine_with(1)


def _machine(cores: int = 1, **fidelity):
    text = (MACHINES_DIR / "m890.toml").read_text()
    text = re.sub(r"(\[core\][^\[]*?count\s*=\s*)\d+", rf"\g<1>{cores}", text, count=1)
    text = re.sub(r"\n\[fidelity\][^\[]*", "\n", text)
    text += "\n[fidelity]\n" + "".join(f"{k} = {v}\n" for k, v in fidelity.items())
    return parse_machine(text, "fidelity-test")


def _load(rows, cols, box_rows, box_cols, dtype="f32"):
    return (f".tensor x, {dtype}, [{rows}, {cols}], 0x0, in\n"
            f"DESC d0, x, {dtype}, [{rows}, {cols}], [{cols}, 1], [{box_rows}, {box_cols}]\n"
            "DMA.LD L1[0], d0[0, 0]\nHALT\n")


def test_defaults_are_printed_and_range_checked():
    assert M.dma_requests_in_flight == 1024 and M.dma_burst_bytes == 64
    assert M.dma_window_bytes == 64 * 1024
    from zhenwu.isa.errors import MachineError
    from zhenwu.isa.machine import machine_rows

    labels = dict(machine_rows(M))
    assert labels["DMA in flight per core"] == "1024 x 64 B bursts = 64 KiB"
    with pytest.raises(MachineError, match="fidelity.hbm_streaming_efficiency"):
        _machine(hbm_streaming_efficiency=1.5)
    with pytest.raises(MachineError, match="fidelity.no_such_key"):
        _machine(no_such_key=1)


def test_littles_law_caps_one_dma():
    # 256 KiB from HBM with 64 KiB in flight: the port would take 1024 cycles; each further
    # 64 KiB waits one round trip for the first requests to return: 3 x 600 + 1
    report = run_asm(_load(256, 256, 256, 256), timing_only=True).report
    assert 256 * 256 * 4 // M.ld_bytes_per_cycle == 1024
    occupancy = 3 * M.hbm_latency + 1
    assert report.cycles == 1 + 1 + occupancy + M.hbm_latency
    assert report.stall_cycles["dma_in_flight:LD"] == occupancy - 1024


def test_a_bigger_window_gives_the_port_rate_back():
    machine = _machine(dma_requests_in_flight=4096)  # 256 KiB in flight
    report = run_asm(_load(256, 256, 256, 256), machine=machine, timing_only=True).report
    assert report.cycles == 1 + 1 + 1024 + M.hbm_latency


def test_narrow_rows_pay_whole_bursts():
    # 16-byte rows over 4096 lines (64 KiB) cost 4096 bursts of 64 B at the port, four times
    # one contiguous 64 KiB load
    narrow = run_asm(_load(4096, 1024, 4096, 4), timing_only=True).report
    contiguous = run_asm(_load(16, 1024, 16, 1024), timing_only=True).report
    assert narrow.l2_read_bytes == contiguous.l2_read_bytes == 65536
    assert contiguous.cycles == 1 + 1 + 65536 // 256 + M.hbm_latency
    assert narrow.cycles == 1 + 1 + 4096 * 64 // 256 + M.hbm_latency
    # HBM moves whole L2 lines: one 128 B line per 16 B row
    assert narrow.hbm_read_bytes == 4096 * 128


def test_hbm_streaming_scattered_and_turnaround():
    machine = _machine(hbm_streaming_efficiency=0.8, hbm_scattered_efficiency=0.4,
                       hbm_turnaround_seconds='"10 ns"', hbm_write_batch_bytes=65536)
    peak = machine.hbm_bytes_per_cycle  # 2666.67 B/cycle
    server = HbmServer.for_machine(machine)
    # whole rows stream at 80 % of peak
    assert server.transfer(0, 1 << 20, 0) == pytest.approx((1 << 20) / (0.8 * peak))
    # a burst that opens a row of its own runs at the scattered efficiency
    start = server.free_at
    end = server.transfer(start, 64, 0, partial_rows=1)
    assert end - start == pytest.approx(64 / (0.4 * peak))
    # 64 KiB of writes after reads: one write batch drains, with two turnarounds of 15 cycles
    start = server.free_at
    end = server.transfer(start, 0, 65536)
    assert machine.hbm_turnaround_cycles == pytest.approx(15)
    assert end - start == pytest.approx(65536 / (0.8 * peak) + 2 * 15)
    assert server.turnarounds == 1
    # writes alone: no turnaround
    start = server.free_at
    assert server.transfer(start, 0, 65536) - start == pytest.approx(65536 / (0.8 * peak))


def test_scattered_reads_are_slower_than_streaming_on_the_whole_chip():
    # 32 cores each read 256 B pieces 32 KiB apart: every piece opens a DRAM row of its own
    text = """\
.tensor x, bf16, [4096, 16384], 0x0, in
    GETID r0, core
    DESC d0, x, bf16, [4096, 16384], [16384, 1], [128, 128]
    MUL r1, r0, 128
    LOOP r2, 8
    MUL r3, r2, 128
    DMA.LD L1[0], d0[r1, r3] .sig E0
    WAIT.LD E0
    ENDLOOP
    HALT
"""
    scattered = run_asm(text, cores=32, timing_only=True).report
    bytes_ = 32 * 8 * 128 * 256
    sustained = bytes_ / (scattered.cycles - M.hbm_latency)
    peak = M.hbm_bytes_per_cycle
    assert sustained < 0.75 * peak  # far below the 90 % a stream sustains


def test_chip_barrier_costs_barrier_cycles():
    report = run_asm("BAR.CHIP\nHALT\n", cores=2).report
    assert M.barrier_cycles == 100
    # issue (1), release 100 cycles after the last arrival, then HALT (1)
    assert report.cycles == 1 + 100 + 1


def test_kernel_launch_cost():
    report = run_asm(".kernel k\nNOP\nHALT\n", cores=2).report
    launch = math.ceil(2e-6 * M.clock_hz)
    assert M.kernel_launch_cycles == launch == 3000
    assert report.cycles == launch + 1 + 1
    assert report.kernels[0].cycles == launch + 2
    assert report.stall_cycles["kernel_launch"] == 2 * launch


def test_timing_only_traps_out_of_bounds_from_addresses():
    text = "VADD.f32 L1[1048000], L1[0], L1[0], 16, 16\nHALT\n"
    with pytest.raises(ChipTrap, match="out-of-bounds"):
        run_asm(text, timing_only=True)
    gm = (".tensor x, f32, [16, 16], 0x0, in\n"
          "DESC d0, 0x23FFFFFFF00, f32, [16, 16], [16, 1], [16, 16]\n"
          "DMA.LD L1[0], d0[0, 0]\nHALT\n")
    with pytest.raises(ChipTrap, match="out-of-bounds"):
        run_asm(gm, {}, timing_only=True)


@pytest.mark.parametrize("body, message", [
    ("DMA.LD L1[1048000], d0[0, 0]", "out-of-bounds"),          # the tile past L1
    ("DMA.ST d0[0, 0], L1[1048000]", "out-of-bounds"),
    ("DMA.LD L1[0], d0[0]", "rank 2 but 1 coordinates"),
    ("DMA.ST d0[0, 0, 0], L1[0]", "rank 2 but 3 coordinates"),
    ("DMA.LD L1[0], d1[0] .T", "rank 2 or more"),
])
def test_timing_only_dma_bounds_trap_as_the_functional_run(body, message):
    # a timing-only run checks a DMA from its addresses alone (InstrDef.bounds), not by
    # moving zeros: the same traps as the functional run
    text = (".tensor x, f32, [16, 16], 0x0, in\n"
            "DESC d0, x, f32, [16, 16], [16, 1], [16, 16]\n"
            "DESC d1, x, f32, [256], [1], [16]\n"
            f"{body}\nHALT\n")
    inputs = {"x": np.zeros((16, 16), np.float32)}
    for timing_only in (False, True):
        with pytest.raises(ChipTrap, match=message):
            run_asm(text, inputs, timing_only=timing_only)


def test_timing_only_integer_division_does_not_trap_on_the_zeros_it_has():
    # a timing-only run has no data: an integer VDIV is checked from its addresses (its
    # `bounds`), not run on zeros, which would divide by zero; its ranges still trap
    text = "VDIV.i32 L1[0], L1[64], L1[128], 4, 4\nHALT\n"
    assert run_asm(text, {}, timing_only=True).report.cycles > 0
    with pytest.raises(ChipTrap, match="division by zero"):
        run_asm(text, {})  # the functional run divides L1's zeros
    with pytest.raises(ChipTrap, match="out-of-bounds"):
        run_asm("VDIV.i32 L1[1048560], L1[64], L1[128], 4, 4\nHALT\n", {},
                timing_only=True)


_ROWS = """\
.tensor x, f32, [64, 4096], 0x0, in
.tensor y, f32, [64, 4096], 0x100000, out
    GETID r0, core
    DESC d0, x, f32, [64, 4096], [4096, 1], [1, 4096]
    DESC d1, y, f32, [64, 4096], [4096, 1], [1, 4096]
    DESC d2, x+1040, f32, [32, 4096], [4096, 1], [1, 3000]
    SIG.S E2
    LOOP r1, 32
    MUL r2, r1, 2
    ADD r2, r2, r0
    AND r3, r1, 1
    MUL r3, r3, 16384
    MUL r4, r1, 37
    DMA.LD L1[r3], d0[r2, 0] .wait E2 .sig E0
    DMA.ST d1[r2, 0], L1[r3] .wait E0 .sig E1
    DMA.LD L1[65536], d2[r1, r4] .wait E1 .sig E2
    ENDLOOP
    WAIT.LD E2
    HALT
"""


def test_a_moved_dma_costs_what_binding_it_afresh_costs(monkeypatch):
    # timing-only runs bind a DMA whose box lies inside the tensor as a moved copy of one
    # bound before with the same descriptor, tile and offset in a burst (InstrDef.moves):
    # rows at every alignment, boxes the tensor's edge clips; the same cycles, traffic and
    # L2 figures as binding every one afresh
    from dataclasses import replace

    from zhenwu.isa.instructions import INSTRUCTIONS

    machine = machine_with(2)
    # (fast-forward off: the functional run has none)
    moved = run_asm(_ROWS, cores=None, machine=machine, timing_only=True,
                    fast_forward=False).report
    for name in ("DMA.LD", "DMA.ST"):
        monkeypatch.setitem(INSTRUCTIONS, name, replace(INSTRUCTIONS[name], moves=None))
    afresh = run_asm(_ROWS, cores=None, machine=machine, timing_only=True,
                     fast_forward=False).report
    functional = run_asm(_ROWS, cores=None, machine=machine).report
    for report in (afresh, functional):
        assert (moved.cycles, moved.hbm_read_bytes, moved.hbm_write_bytes) == \
            (report.cycles, report.hbm_read_bytes, report.hbm_write_bytes)
        assert (moved.l2_read_bytes, moved.l2_hit_bytes) == \
            (report.l2_read_bytes, report.l2_hit_bytes)
    assert moved.l2_read_bytes > 0 and moved.busy_cycles == afresh.busy_cycles


def test_a_moved_dma_past_the_end_of_gm_traps():
    # the rows of a descriptor that runs past the end of GM: the first rows are bound, the
    # next ones moved, and the first row past the end traps as a fresh bind would
    end = M.hbm_bytes
    text = (f"DESC d0, {end - 1024}, f32, [64, 16], [16, 1], [1, 16]\n"
            "LOOP r1, 64\nDMA.LD L1[0], d0[r1, 0] .sig E0\nWAIT.LD E0\nENDLOOP\nHALT\n")
    with pytest.raises(ChipTrap, match="out-of-bounds"):
        run_asm(text, {}, timing_only=True)


# ---- fast-forward -----------------------------------------------------------------------


def _compiled_gemm(m, n, k, machine):
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program

    text = (f"fn main(a: bf16[{m}, {k}], b: bf16[{k}, {n}]) -> bf16[{m}, {n}] "
            "{\n    return a @ b\n}\n")
    return compile_function(load_program("<gemm>", text=text), machine,
                            CompileOptions()).program


def _fast_and_full(program, machine):
    """The timing-only reports of `program` with and without fast-forward."""
    from zhenwu.runtime import run_program

    inputs = {t.name: np.broadcast_to(np.zeros((), np.float32), tuple(t.shape))
              for t in program.inputs}
    fast = run_program(program, machine, inputs, timing_only=True).report
    full = run_program(program, machine, inputs, timing_only=True, fast_forward=False).report
    return fast, full


def _jump_depths(monkeypatch) -> list[int]:
    """Filled with core 0's loop depth at every fast-forward jump from now on."""
    import zhenwu.runtime.fastforward as ff

    depths = []
    jump = ff.FastForward._jump

    def spy(self, *args):
        depths.append(len(self.sim.cores[0].loops))
        return jump(self, *args)

    monkeypatch.setattr(ff.FastForward, "_jump", spy)
    return depths


@pytest.mark.parametrize("m, n, k", [(2048, 2048, 512), (1024, 2048, 2048)])
def test_fast_forward_agrees_with_the_full_simulation(m, n, k):
    machine = machine_with(2)
    fast, full = _fast_and_full(_compiled_gemm(m, n, k, machine), machine)
    assert abs(fast.cycles - full.cycles) <= 0.01 * full.cycles
    assert fast.flops == full.flops == 2 * m * n * k
    assert fast.instructions == full.instructions
    assert fast.busy_cycles[0]["MX"] == full.busy_cycles[0]["MX"]


_ROTATING = """\
.tensor x, f32, [8192, 8192], 0x0, in
    GETID r0, core
    GETID r5, cores
    DESC d0, x, f32, [8192, 8192], [8192, 1], [2, 8192]
    MUL r6, r0, 300
    LOOP r7, r6
    NOP
    ENDLOOP
    LOOP r1, 120
    ADD r3, r1, 2
    REM r3, r3, 3
    MUL r3, r3, 65536
    MUL r4, r1, r5
    ADD r4, r4, r0
    MUL r4, r4, 2
    DMA.LD L1[r3], d0[r4, 0] .sig E0
    VADD.f32 L1[r3], L1[r3], L1[r3], 16, 1024 .wait E0 .sig E1
    WAIT.S E1
    VMUL.f32 L1[r3], L1[r3], L1[r3], 16, 1024 .sig E2
    WAIT.S E2
    ENDLOOP
    HALT
"""


def test_a_jump_leaves_a_rotating_buffer_index_valid(monkeypatch):
    # r3 rotates over three 64 KiB buffers and is recomputed at the top of the loop; the
    # cores start 300 cycles apart, so at core 0's back edge the others hold r3 between
    # computing and reading it. Over the two periods before the first jump r3 stepped by
    # 64 KiB twice: a jump once moved it by 113 steps and the next VMUL read past L1.
    from zhenwu.isa.asm import parse_assembly

    depths = _jump_depths(monkeypatch)
    machine = machine_with(4)
    fast, full = _fast_and_full(parse_assembly(_ROTATING, "rotating.s"), machine)
    assert depths  # the loop was jumped over
    assert fast.cycles == full.cycles


@pytest.mark.parametrize("m, n, k", [(256, 512, 32768), (512, 512, 16384)])
def test_an_inner_loop_jumps_and_agrees_with_the_full_simulation(monkeypatch, m, n, k):
    # one or two tiles per core and a long k loop: only the k loop, inside the tile loop,
    # can jump (its rhythm held four periods with every core in the same k steps)
    depths = _jump_depths(monkeypatch)
    machine = machine_with(2)
    fast, full = _fast_and_full(_compiled_gemm(m, n, k, machine), machine)
    assert depths and min(depths) >= 2
    assert abs(fast.cycles - full.cycles) <= 0.01 * full.cycles
    assert fast.flops == full.flops >= 2 * m * n * k


def test_fast_forward_skips_and_is_off_with_a_trace():
    from zhenwu.runtime import run_program
    from zhenwu.runtime.engine import Simulator

    machine = machine_with(2)
    program = _compiled_gemm(2048, 2048, 512, machine)
    inputs = {t.name: np.broadcast_to(np.zeros((), np.float32), tuple(t.shape))
              for t in program.inputs}
    seen = []
    original = Simulator.run

    def spy(self):
        cycles = original(self)
        seen.append(self.fast_forward)
        return cycles

    Simulator.run = spy
    try:
        run_program(program, machine, inputs, timing_only=True)
        run_program(program, machine, inputs, timing_only=True, trace=True)
    finally:
        Simulator.run = original
    assert seen[0] is not None and seen[0].jumps >= 1 and seen[0].skipped_cycles > 0
    assert seen[1] is None


# ---- open DRAM rows ---------------------------------------------------------------------


def test_an_open_row_pays_no_second_activation():
    # 4 banks (row r in bank r mod 4), each holding the row it last opened
    machine = _machine(hbm_streaming_efficiency=0.8, hbm_scattered_efficiency=0.4, hbm_banks=4)
    peak = machine.hbm_bytes_per_cycle
    penalty = 64 / peak * (1 / 0.4 - 1 / 0.8)  # one activation: 64 B at 40 % instead of 80 %
    stream = 128 / (0.8 * peak)
    server = HbmServer.for_machine(machine)
    assert server.transfer(0, 128, 0, np.array([0, 1])) == pytest.approx(stream + 2 * penalty)
    # another core reads the other halves of rows 0 and 1: both still open
    start = server.free_at
    assert server.transfer(start, 128, 0, np.array([0, 1])) - start == pytest.approx(stream)
    # row 4 is in bank 0: it closes row 0, which then pays again
    for row in (4, 0):
        start = server.free_at
        assert server.transfer(start, 128, 0, np.array([row])) - start == \
            pytest.approx(stream + penalty)
    assert server.partial_rows == 4
    # hbm_banks = 0: no row stays open, every partly touched row pays
    closed = HbmServer.for_machine(_machine(hbm_scattered_efficiency=0.4, hbm_banks=0))
    closed.transfer(0, 128, 0, np.array([0, 1]))
    closed.transfer(closed.free_at, 128, 0, np.array([0, 1]))
    assert closed.partial_rows == 4


def test_cores_reading_halves_of_the_same_rows_share_their_activations():
    # 2 cores read the two 512 B halves of the first 1 KiB DRAM row of each of 8 rows of x at
    # the same time. Activations cost 64 B at 1 % of peak: each of core 0's 8 rows pays
    # one; core 1's rows are still open, unless no bank keeps a row open
    text = """\
.tensor x, f32, [8, 1024], 0x0, in
    GETID r0, core
    DESC d0, x, f32, [8, 1024], [1024, 1], [8, 128]
    MUL r1, r0, 128
    DMA.LD L1[0], d0[0, r1]
    HALT
"""
    cycles = {}
    for banks in (0, 64):
        machine = _machine(2, hbm_scattered_efficiency=0.01, hbm_banks=banks)
        cycles[banks] = run_asm(text, machine=machine, timing_only=True).report.cycles
    peak = M.hbm_bytes_per_cycle
    penalty = 64 / peak * (1 / 0.01 - 1 / 0.90)
    stream = 8 * 512 / (0.90 * peak)
    core0 = stream + 8 * penalty  # HBM-bound: more than the port's 4096 / 256 = 16 cycles
    assert core0 > 8 * 512 / M.ld_bytes_per_cycle
    # core 1's transfer queues behind core 0's on the HBM server
    shared, alone = core0 + stream, core0 + stream + 8 * penalty
    assert cycles[0] - cycles[64] == math.ceil(alone) - math.ceil(shared)
    assert cycles[64] == 1 + 1 + 1 + 1 + math.ceil(shared) + M.hbm_latency
