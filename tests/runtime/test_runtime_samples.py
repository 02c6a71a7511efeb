"""The hand-written samples in samples/asm/ give numpy's results, and a compute-bound GEMM
keeps the MX engines of all 32 cores busy."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from runtime_gemm_asm import gemm_assembly
from runtime_helpers import run_asm
from zhenwu.isa.asm import parse_assembly
from zhenwu.isa.machine import load_machine
from zhenwu.runtime import run_program

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "asm"
BF16 = ml_dtypes.bfloat16


def _run_sample(name: str, inputs: dict, **options):
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"{path} is not there")
    program = parse_assembly(path.read_text(), str(path))
    return run_program(program, load_machine("m890"), inputs, **options)


def _mx_steady_busy(trace: dict) -> list[float]:
    """Per core: MX busy time over the span from its first product to its last."""
    spans = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e["name"].startswith("MMA"):
            spans[e["pid"]].append((e["ts"], e["ts"] + e["dur"]))
    return [sum(b - a for a, b in s) / (max(b for _, b in s) - min(a for a, _ in s))
            for s in spans.values()]


def test_gemm_db_sample():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    b = rng.standard_normal((2048, 2048)).astype(np.float32)
    result = _run_sample("gemm_db.s", {"a": a, "b": b}, trace=True)
    exact = np.maximum(a.astype(BF16).astype(np.float32) @ b.astype(BF16).astype(np.float32), 0)
    out = result.outputs["c"]
    assert out.dtype == BF16
    np.testing.assert_allclose(out.astype(np.float32), exact, rtol=2**-7, atol=1e-3)
    report = result.report
    assert report.flops == 2 * 2048**3 and report.kernels[0].name == "gemm_relu"
    assert report.hbm_write_bytes == 2048 * 2048 * 2
    # MX stays at least 90% busy in the steady state (first to last product) on every core
    assert min(_mx_steady_busy(result.trace)) >= 0.9
    # the report shows loads in flight while MX multiplies on every core
    assert min(report.overlap_cycles) > 0 and report.to_json()["dma_compute_overlap_fraction"] > 0
    # the trace shows loads in flight (occupancy, then HBM latency) while MX multiplies
    us = 1e6 / load_machine("m890").clock_hz
    slices = [e for e in result.trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 1]
    mx = [(e["ts"], e["ts"] + e["dur"]) for e in slices if e["name"].startswith("MMA")]
    ld = [(e["ts"], e["ts"] + e["dur"] + e["args"]["latency"] * us) for e in slices
          if e["name"] == "DMA.LD"]
    assert len(mx) == 64 and len(ld) == 128
    assert sum(1 for a0, a1 in ld if any(b0 < a1 and a0 < b1 for b0, b1 in mx)) >= 4


def test_axpy_sample():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 1024)).astype(np.float32)
    y = rng.standard_normal((512, 1024)).astype(np.float32)
    result = _run_sample("axpy.s", {"x": x, "y": y})
    np.testing.assert_array_equal(result.outputs["y"], (np.float32(2.5) * x + y))


def test_softmax_rows_sample():
    x = np.random.default_rng(2).standard_normal((512, 1000)).astype(np.float32)
    result = _run_sample("softmax_rows.s", {"x": x})
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(result.outputs["out"], e / e.sum(axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-7)


def test_compute_bound_gemm_keeps_all_mx_engines_busy():
    # 256 x 256 C tiles reach 128 FLOPs per HBM byte, above the m890's ridge point (~98):
    # all 32 cores are compute-bound and HBM is not the limit
    text = gemm_assembly(2048, 2048, 4096, tile_m=256, tile_n=256, acc_buffers=1, cores=32)
    result = run_asm(text, cores=None, timing_only=True, trace=True)
    report = result.report
    assert report.mean_busy_fraction()["MX"] >= 0.9
    assert min(_mx_steady_busy(result.trace)) >= 0.9
    assert report.efficiency >= 0.9
