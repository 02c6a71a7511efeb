"""Whole-chip behaviour: shared HBM bandwidth, a GEMM's numbers and overlap, determinism."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from runtime_gemm_asm import gemm_assembly
from runtime_helpers import machine_with, run_asm

STREAM = """\
.tensor x, f32, [{rows}, 32768], 0x0, in
    GETID r0, core
    MUL r1, r0, {per_core}
    DESC d0, x, f32, [{rows}, 32768], [32768, 1], [1, 32768]
    LOOP r2, {per_core}
    ADD r3, r1, r2
    DMA.LD L1[0], d0[r3, 0] .sig E0
    ENDLOOP
    WAIT.S E0:{per_core}
    HALT
"""


def _stream(cores: int, per_core: int = 8):
    """Each core streams `per_core` rows of 128 KiB from HBM back to back (one buffer: the
    data is not used, only the bandwidth)."""
    text = STREAM.format(rows=cores * per_core, per_core=per_core)
    return run_asm(text, cores=cores, timing_only=True).report


def test_one_core_streams_at_the_rate_its_requests_in_flight_allow():
    # Little's law: one core keeps dma_window_bytes in flight, so it streams at most
    # window / latency bytes per cycle (below its port rate on the M890)
    m = machine_with(1)
    report = _stream(1)
    rate = min(m.ld_bytes_per_cycle, m.dma_window_bytes / m.hbm_latency)
    assert rate < m.ld_bytes_per_cycle
    # the first load fills an empty window (one round trip for its second half); every
    # later one waits for the previous to drain, then for its own second half
    first = m.hbm_latency + 1
    later = 2 * m.hbm_latency + 1
    assert report.busy_cycles[0]["LD"] == first + 7 * later
    assert abs(131072 / later / rate - 1) < 0.01
    assert report.hbm_read_bytes == 8 * 131072
    # the scalar's prefix, then the loads back to back, then one latency
    prefix = report.cycles - (first + 7 * later) - m.hbm_latency
    assert 0 < prefix < 30


def test_all_cores_share_the_chip_hbm_bandwidth():
    m = machine_with(32)
    report = _stream(32, per_core=16)
    nbytes = 32 * 16 * 131072
    assert report.hbm_read_bytes == nbytes
    # 32 ports could move 32 x 256 B/cycle; HBM gives hbm_bytes_per_cycle to all of them
    ports_alone = 16 * 131072 / m.ld_bytes_per_cycle + m.hbm_latency
    # HBM sustains hbm_streaming_efficiency of its peak on whole rows
    sustained = m.hbm_bytes_per_cycle * m.hbm_streaming_efficiency
    streaming = nbytes / sustained + m.hbm_latency
    assert report.cycles >= streaming
    assert report.cycles <= 1.01 * streaming
    assert report.cycles > 2.5 * ports_alone  # 32 x 256 B/cycle would be 3x faster
    assert report.to_json()["hbm_bandwidth_fraction"] > 0.95 * m.hbm_streaming_efficiency
    assert report.stall_cycles["hbm_bandwidth:LD"] > 0
    # fair: every core's LD engine was busy for about the same time
    busy = [core["LD"] for core in report.busy_cycles]
    assert max(busy) <= 1.25 * min(busy)


def test_gemm_result_overlap_and_mx_busy():
    m, n, k = 256, 256, 1024
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    result = run_asm(gemm_assembly(m, n, k, cores=1), {"a": a, "b": b}, cores=1, trace=True)
    bf = ml_dtypes.bfloat16
    expected = a.astype(bf).astype(np.float32) @ b.astype(bf).astype(np.float32)
    np.testing.assert_allclose(result.outputs["c"], expected, rtol=1e-5, atol=1e-4)
    report = result.report
    assert report.flops == 2 * m * n * k
    # DMA/compute overlap: LD and MX together are busy for more than the run lasts, and
    # loads are in flight during most of the products
    assert report.busy_cycles[0]["LD"] + report.busy_cycles[0]["MX"] > report.cycles
    assert report.overlap_cycles[0] > 0.8 * report.busy_cycles[0]["MX"]
    slices = [e for e in result.trace["traceEvents"] if e["ph"] == "X"]
    mx = [(e["ts"], e["ts"] + e["dur"]) for e in slices if e["name"].startswith("MMA")]
    ld = [(e["ts"], e["ts"] + e["dur"]) for e in slices if e["name"].startswith("DMA.LD")]
    assert len(mx) == (m // 128) * (n // 128) * (k // 128)
    assert sum(1 for a0, a1 in ld if any(b0 < a1 and a0 < b1 for b0, b1 in mx)) > len(ld) // 2
    # steady state (first product to last): MX-bound on one core, busy at least 90%
    steady = max(end for _, end in mx) - min(start for start, _ in mx)
    assert sum(end - start for start, end in mx) / steady >= 0.9
    # one core alone streams at dma_window_bytes / hbm_latency (109 B/cycle on the M890),
    # less than the 128 B/cycle a 128-cube step needs: LD-bound by Little's law
    assert report.busy_cycles[0]["MX"] / report.cycles >= 0.7


def test_timing_only_gives_the_same_cycles():
    text = gemm_assembly(256, 256, 512, cores=4)
    full = run_asm(text, cores=4).report
    timing = run_asm(text, cores=4, timing_only=True)
    assert timing.outputs == {}
    assert timing.report.cycles == full.cycles
    assert timing.report.busy_cycles == full.busy_cycles


def test_same_program_same_bits_and_cycles():
    text = gemm_assembly(256, 256, 256, cores=4)
    first = run_asm(text, cores=4, trace=True)
    second = run_asm(text, cores=4, trace=True)
    assert first.report.to_json() == second.report.to_json()
    assert first.outputs["c"].tobytes() == second.outputs["c"].tobytes()
    assert first.trace == second.trace


def test_huge_hbm_address_is_lazy():
    # a tensor at the top of 144 GB of HBM: only the pages touched are allocated
    text = """\
.tensor x, f32, [16, 16], 0x2180000000, in
.tensor y, f32, [16, 16], 0x2000000000, out
    DESC d0, x, f32, [16, 16], [16, 1], [16, 16]
    DESC d1, y, f32, [16, 16], [16, 1], [16, 16]
    DMA.LD L1[0], d0[0, 0] .sig E0
    VMUL.f32 L1[1024], L1[0], #2.0, 16, 16 .wait E0 .sig E1
    DMA.ST d1[0, 0], L1[1024] .wait E1
    HALT
"""
    x = np.arange(256, dtype=np.float32).reshape(16, 16)
    result = run_asm(text, {"x": x})
    np.testing.assert_array_equal(result.outputs["y"], 2 * x)


def test_kernels_are_reported():
    text = """\
.kernel first
    MMA.bf16.f32 ACC[0], L1[0], L1[65536], 64, 64, 64 .init
    BAR.CHIP
.kernel second
    MMA.bf16.f32 ACC[0], L1[0], L1[65536], 128, 128, 128 .init
    BAR.CHIP
    HALT
"""
    report = run_asm(text, cores=2).report
    assert [k.name for k in report.kernels] == ["first", "second"]
    assert report.to_json()["kernels"] == 2
    first, second = report.kernels
    # a kernel runs from its marker to the release of the BAR.CHIP after it: issue, the
    # product's occupancy and latency, then the barrier's own cycle
    m = machine_with(2)
    launch, barrier = m.kernel_launch_cycles, m.barrier_cycles  # (the launch: 2 us)
    assert launch == 3000
    assert (first.start_cycle, first.cycles) == (
        0, launch + 1 + 64 + m.mx_fill_latency + 1 + barrier)
    assert second.start_cycle == first.cycles
    assert second.cycles == launch + 1 + 512 + m.mx_fill_latency + 1 + barrier
    assert report.cycles == first.cycles + second.cycles + 1  # and HALT


def test_timing_only_model_larger_than_the_host():
    # a 100 GB weight: timing-only allocates nothing for it; the cycles are still exact
    text = """\
.tensor w, bf16, [200000, 250000], 0x0, in
.tensor y, bf16, [128, 128], 0x1800000000, out
    DESC d0, w, bf16, [200000, 250000], [250000, 1], [128, 128]
    DESC d1, y, bf16, [128, 128], [128, 1], [128, 128]
    LI r1, 199872
    DMA.LD L1[0], d0[r1, 249872] .sig E0
    DMA.ST d1[0, 0], L1[0] .wait E0
    HALT
"""
    m = machine_with(1)
    result = run_asm(text, {}, timing_only=True)
    assert result.outputs == {}
    tile = 128 * 128 * 2
    # rows of 256 B, 500,000 B apart, from byte 499,744 of row 199,872: every other row
    # starts 32 B into a 64 B burst and touches 5 bursts, the others 4
    assert m.dma_burst_bytes == 64
    bursts = 64 * 5 + 64 * 4
    load = 3 + 1 + bursts * 64 // m.ld_bytes_per_cycle + m.hbm_latency  # DESC, DESC, LI, issue
    assert result.report.cycles == load + m.event_wake_latency + tile // m.st_bytes_per_cycle \
        + m.hbm_latency


def test_a_kernel_of_two_nests_is_one_region_and_one_launch():
    """A BAR.CHIP between two nests of one kernel is no kernel boundary: the kernel's span
    runs to the release of its last barrier, and it pays one launch."""
    text = """\
.kernel first
    MMA.bf16.f32 ACC[0], L1[0], L1[65536], 64, 64, 64 .init
    BAR.CHIP
    MMA.bf16.f32 ACC[0], L1[0], L1[65536], 128, 128, 128 .init
    BAR.CHIP
.kernel second
    MMA.bf16.f32 ACC[0], L1[0], L1[65536], 64, 64, 64 .init
    BAR.CHIP
    HALT
"""
    report = run_asm(text, cores=2).report
    first, second = report.kernels
    m = machine_with(2)
    launch, barrier = m.kernel_launch_cycles, m.barrier_cycles
    nest1 = 1 + 64 + m.mx_fill_latency + 1 + barrier
    nest2 = 1 + 512 + m.mx_fill_latency + 1 + barrier
    assert (first.start_cycle, first.cycles) == (0, launch + nest1 + nest2)
    assert second.start_cycle == first.cycles
    assert report.cycles == first.cycles + second.cycles + 1  # and HALT
