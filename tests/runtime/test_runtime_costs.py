"""Each instruction class alone takes exactly the cycles of its cost formula.

A program `DESC ...; X; HALT` on one core: the scalar issues the prefix one instruction per
`scalar_cycles`, X is dispatched when issued, starts at once, and the run ends when X
completes: cycles = issue cycles before X + 1 + occupancy + latency. The expected numbers are
computed here from the machine description and docs/internals.md section 3, independently
of isa's cost functions.
"""

from __future__ import annotations

import math

import pytest
from runtime_helpers import machine_with, run_asm

M = machine_with(1)
S = M.scalar_cycles


def _tensor(name, dtype, shape, address=0, role="in"):
    return f".tensor {name}, {dtype}, [{', '.join(map(str, shape))}], {address:#x}, {role}\n"


@pytest.mark.parametrize("rows, cols, dtype, nbytes", [
    (16, 16, "f32", 4), (64, 128, "bf16", 2), (128, 256, "f32", 4), (8, 8, "i8", 1)])
def test_dma_ld(rows, cols, dtype, nbytes):
    text = (_tensor("x", dtype, (rows, cols))
            + f"DESC d0, x, {dtype}, [{rows}, {cols}], [{cols}, 1], [{rows}, {cols}]\n"
            + "DMA.LD L1[0], d0[0, 0]\nHALT\n")
    report = run_asm(text).report
    size = rows * cols * nbytes
    occupancy = max(1, math.ceil(size / M.ld_bytes_per_cycle))
    if size > M.dma_window_bytes:  # Little's law: one window of requests per round trip
        occupancy = max(occupancy, M.hbm_latency * (math.ceil(size / M.dma_window_bytes) - 1)
                        + 1)
    assert report.cycles == S + 1 + occupancy + M.hbm_latency
    assert report.busy_cycles[0]["LD"] == occupancy
    # the DMA moves its bytes; HBM moves whole L2 lines (the tensor starts at a line)
    assert report.l2_read_bytes == rows * cols * nbytes
    line = M.l2_line_bytes
    assert report.hbm_read_bytes == -(-rows * cols * nbytes // line) * line


def test_dma_ld_counts_only_in_bounds_bytes():
    # a 64x64 box at (32, 48) of a 64x64 tensor: 32 x 16 elements are inside
    text = (_tensor("x", "f32", (64, 64))
            + "DESC d0, x, f32, [64, 64], [64, 1], [64, 64]\nDMA.LD L1[0], d0[32, 48]\nHALT\n")
    report = run_asm(text).report
    assert report.l2_read_bytes == 32 * 16 * 4
    # each 64-byte row piece is in its own L2 line, which HBM moves whole
    assert report.hbm_read_bytes == 32 * max(64, M.l2_line_bytes)
    assert report.cycles == S + 1 + 32 * 16 * 4 // M.ld_bytes_per_cycle + M.hbm_latency


@pytest.mark.parametrize("rows, cols", [(16, 16), (128, 128), (256, 64)])
def test_dma_st(rows, cols):
    text = (_tensor("y", "f32", (rows, cols), role="out")
            + f"DESC d0, y, f32, [{rows}, {cols}], [{cols}, 1], [{rows}, {cols}]\n"
            + "DMA.ST d0[0, 0], L1[0]\nHALT\n")
    report = run_asm(text).report
    occupancy = math.ceil(rows * cols * 4 / M.st_bytes_per_cycle)
    assert report.cycles == S + 1 + occupancy + M.hbm_latency
    assert report.hbm_write_bytes == rows * cols * 4


@pytest.mark.parametrize("nbytes", [64, 4096, 100000])
def test_dma_mov(nbytes):
    report = run_asm(f"DMA.MOV ACC[0], L1[0], {nbytes}\nHALT\n").report
    assert report.cycles == 1 + max(1, math.ceil(nbytes / M.ld_bytes_per_cycle)) + M.sram_latency
    assert report.hbm_read_bytes == 0


@pytest.mark.parametrize("dtype, m, n, k", [
    ("bf16", 16, 16, 16), ("bf16", 128, 128, 128), ("bf16", 64, 32, 256),
    ("fp8", 128, 128, 128), ("f32", 32, 32, 32), ("i8", 64, 64, 64)])
def test_mma(dtype, m, n, k):
    acc = "i32" if dtype == "i8" else "f32"
    report = run_asm(f"MMA.{dtype}.{acc} ACC[0], L1[0], L1[65536], {m}, {n}, {k} .init\n"
                     "HALT\n").report
    blocks = (m // M.mx_m) * (n // M.mx_n) * (k // M.mx_k)
    occupancy = max(1, math.ceil(blocks / M.mx_rate(dtype)))
    assert report.cycles == 1 + occupancy + M.mx_fill_latency
    assert report.busy_cycles[0]["MX"] == occupancy
    assert report.flops == 2 * m * n * k


@pytest.mark.parametrize("mnemonic, rows, cols, dtype", [
    ("VADD", 16, 16, "f32"), ("VADD", 64, 128, "f32"), ("VMUL", 64, 128, "bf16"),
    ("VMAX", 1, 1000, "f32"), ("VSUB", 128, 128, "i8")])
def test_vector(mnemonic, rows, cols, dtype):
    size = {"f32": 4, "bf16": 2, "i8": 1}[dtype]
    report = run_asm(f"{mnemonic}.{dtype} L1[0], L1[0], L1[131072], {rows}, {cols}\n"
                     "HALT\n").report
    occupancy = max(1, math.ceil(rows * cols * size / M.vx_bytes_per_cycle))
    assert report.cycles == 1 + occupancy + M.vx_latency


@pytest.mark.parametrize("mnemonic, rows, cols", [
    ("VEXP", 64, 64), ("VTANH", 16, 100), ("VSIN", 64, 64), ("VCOS", 8, 8)])
def test_special_functions(mnemonic, rows, cols):
    report = run_asm(f"{mnemonic}.f32 L1[0], L1[65536], {rows}, {cols}\nHALT\n").report
    rate = M.sfu_trig_elems_per_cycle if mnemonic in ("VSIN", "VCOS") else M.sfu_elems_per_cycle
    assert report.cycles == 1 + max(1, math.ceil(rows * cols / rate)) + M.sfu_latency


def test_same_engine_pipelines_latency():
    # three MMAs back to back: their occupancies add, one latency at the end
    text = "MMA.bf16.f32 ACC[0], L1[0], L1[65536], 64, 64, 64 .init\n" * 3 + "HALT\n"
    report = run_asm(text).report
    assert report.cycles == 1 + 3 * 64 + M.mx_fill_latency


def test_event_wait_adds_wake_latency():
    text = ("DMA.MOV L1[0], L1[4096], 2560 .sig E0\n"
            "MMA.bf16.f32 ACC[0], L1[0], L1[65536], 16, 16, 16 .init .wait E0\n"
            "HALT\n")
    report = run_asm(text).report
    mov_done = 1 + 10 + M.sram_latency
    assert report.cycles == mov_done + M.event_wake_latency + 1 + M.mx_fill_latency
    assert report.stall_cycles["wait_event:MX"] == mov_done + M.event_wake_latency - 2


def test_scalar_one_cycle_each_and_loops():
    text = "LI r1, 5\nLOOP r2, 10\nADD r1, r1, r2\nENDLOOP\nHALT\n"
    report = run_asm(text).report
    # LI, LOOP, 10 x (ADD, ENDLOOP), HALT
    assert report.instructions == 1 + 1 + 20 + 1
    assert report.cycles == 23 * S


def test_full_queue_stalls_the_scalar():
    depth = M.queue_depth
    count = depth + 4
    text = "MMA.bf16.f32 ACC[0], L1[0], L1[65536], 64, 64, 64 .init\n" * count + "HALT\n"
    report = run_asm(text).report
    assert report.cycles == 1 + count * 64 + M.mx_fill_latency
    assert report.stall_cycles["queue_full:MX"] > 0


def test_wait_on_an_engine_queue_orders_it():
    text = ("DMA.MOV L1[0], L1[4096], 2560 .sig E1\n"
            "WAIT.VX E1\n"
            "VADD.f32 L1[8192], L1[0], #1.0, 16, 16\n"
            "HALT\n")
    report = run_asm(text).report
    mov_done = 1 + 10 + M.sram_latency
    assert report.cycles == mov_done + M.event_wake_latency + 2 + M.vx_latency
