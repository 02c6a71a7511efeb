"""Interpreter speed: a benchmark, not a test (docs/design.md section 11).

    python tests/runtime/runtime_bench.py [--big]

Prints simulated instructions per host CPU second and, for the GEMM sample
(samples/asm/gemm_db.s) and the generated GEMMs, host time against numpy doing the same
matmul. CPU time (time.process_time) is reported next to wall time: on a shared host the
wall time says more about the neighbours than about the interpreter.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ml_dtypes
import numpy as np
from runtime_gemm_asm import gemm_assembly
from zhenwu.isa.asm import parse_assembly
from zhenwu.isa.machine import load_machine
from zhenwu.runtime import run_program
from zhenwu.runtime.blas import single_blas_thread

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "asm"
BF16 = ml_dtypes.bfloat16


def _timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    value = function()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, text: str, m: int, n: int, k: int, *, timing_only: bool) -> None:
    program = parse_assembly(text, name)
    machine = load_machine("m890")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    inputs = {} if timing_only else {"a": a, "b": b}
    result, wall, cpu = _timed(lambda: run_program(program, machine, inputs,
                                                   timing_only=timing_only))
    report = result.report
    line = (f"{name}{' (timing only)' if timing_only else ''}: {report.instructions} "
            f"instructions ({report.engine_instructions} on engines) in {cpu:.2f} s CPU "
            f"({wall:.2f} s wall): {report.instructions / cpu:,.0f} instructions/s; "
            f"{report.cycles} cycles, MX busy {100 * report.mean_busy_fraction()['MX']:.1f}%")
    if not timing_only:
        a16, b16 = a.astype(BF16).astype(np.float32), b.astype(BF16).astype(np.float32)
        with single_blas_thread():  # the interpreter's setting: a like-for-like CPU time
            _, numpy_wall, numpy_cpu = _timed(lambda: a16 @ b16)
        line += (f"; numpy matmul (1 thread) {numpy_cpu:.3f} s CPU ({numpy_wall:.3f} s wall), "
                 f"interpreter/numpy {cpu / max(numpy_cpu, 1e-9):.0f}x CPU, "
                 f"{wall / max(numpy_wall, 1e-9):.0f}x wall")
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also the 4096^3 GEMMs (minutes)")
    args = parser.parse_args()
    sample = SAMPLES / "gemm_db.s"
    if sample.exists():
        bench("samples/asm/gemm_db.s", sample.read_text(), 2048, 2048, 2048, timing_only=False)
    bench("gemm 1024x1024x2048", gemm_assembly(1024, 1024, 2048), 1024, 1024, 2048,
          timing_only=False)
    bench("gemm 4096^3, 128x128 tiles", gemm_assembly(4096, 4096, 4096), 4096, 4096, 4096,
          timing_only=True)
    big = gemm_assembly(4096, 4096, 4096, tile_m=256, tile_n=256, acc_buffers=1)
    bench("gemm 4096^3, 256x256 tiles", big, 4096, 4096, 4096, timing_only=True)
    if args.big:
        bench("gemm 4096^3, 256x256 tiles", big, 4096, 4096, 4096, timing_only=False)


if __name__ == "__main__":
    main()
