"""`zhenwu bench`: the benchmark suite in samples/bench/ (DESIGN.md section 11).

Each benchmark is compiled and run in timing-only mode (the chip's cycles without the math,
so the suite's large shapes run on a small host). For each it prints cycles, the roofline
bound, their ratio, HBM bytes moved against the compulsory bytes, the bytes the L2 served,
and, for programs made of matrix products, the ratio of the bytes the cores' DMAs moved to and
from GM to the I/O lower bound 2·M·N·K/√S − 2·S, plus kernel count and compile time.

The I/O bound is for the traffic into a fast memory of S words: one core's L1. With the L2
modelled, a re-read that hits it is still such traffic but no HBM traffic, so the ratio is
taken over the DMA bytes (`gm_bytes`: reads through the L2 plus writes), which the bound
constrains, not over HBM bytes, which the L2 can take below it. Without an L2 the two agree.
`--json` prints a list of objects with the keys of `BENCH_KEYS`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from compiler.roofline import io_lower_bound_bytes, roofline
from isa.errors import UsageError

BENCH_DIR = Path(__file__).resolve().parents[2] / "samples" / "bench"
BENCH_KEYS = ("name", "cycles", "roofline_cycles", "efficiency", "hbm_bytes", "compulsory_bytes",
              "io_bound_ratio", "kernels", "compile_seconds", "gm_bytes", "l2_hit_bytes")


def available() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BENCH_DIR.glob("*.zt"))}


def run_one(path: Path, machine, opt_level: int) -> dict:
    """Compile and time one benchmark program; the row of the table."""
    from compiler.backend.pipeline import CompileOptions, compile_function
    from compiler.frontend import load_program
    from runtime import run_program

    fn = load_program(str(path))
    start = time.perf_counter()
    compiled = compile_function(fn, machine, CompileOptions(opt_level=opt_level))
    compile_seconds = time.perf_counter() - start
    # Timing-only runs read no data: zero-strided placeholders stand in for the inputs.
    placeholders = {
        t.name: np.broadcast_to(np.zeros((), np.float32), tuple(t.shape))
        for t in compiled.program.inputs
    }
    result = run_program(compiled.program, machine, placeholders, timing_only=True)
    report = result.report
    # after the graph passes: einsum and conv2d are matrix products there
    bound = roofline(compiled.graph, machine)
    hbm_bytes = report.hbm_read_bytes + report.hbm_write_bytes
    gm_bytes = (report.l2_read_bytes if report.l2_read_bytes else report.hbm_read_bytes) \
        + report.hbm_write_bytes
    io_bound = io_lower_bound_bytes(compiled.graph, machine)
    return {
        "name": path.stem,
        "cycles": report.cycles,
        "roofline_cycles": bound.cycles,
        "efficiency": bound.cycles / report.cycles if report.cycles else 0.0,
        "hbm_bytes": hbm_bytes,
        "compulsory_bytes": bound.compulsory_bytes,
        "io_bound_ratio": gm_bytes / io_bound if io_bound else None,
        "kernels": compiled.kernel_count,
        "compile_seconds": round(compile_seconds, 3),
        "gm_bytes": gm_bytes,
        "l2_hit_bytes": report.l2_hit_bytes,
    }


def _run_or_error(path: Path, machine, opt_level: int) -> dict | str:
    """A benchmark's row, or its diagnostic (one broken benchmark does not hide the rest)."""
    from isa.errors import ZhenwuError

    try:
        return run_one(path, machine, opt_level)
    except ZhenwuError as err:
        return err.format()


def _serving(args) -> int:
    """`zhenwu bench serving`: Qwen3-32B decode and prefill against their bounds, on the M890
    and the 810E (compiler/commands/bench_serving.py)."""
    from compiler.commands.bench_serving import format_rows, measure
    from isa.machine import load_machine

    machines = [load_machine(args.machine)]
    if args.machine != "z810e":
        machines.append(load_machine("z810e"))
    rows = measure(machines, processes=args.jobs)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def _table(rows: list[dict]) -> str:
    head = (f"{'benchmark':<24} {'cycles':>12} {'roofline':>12} {'eff':>6} {'HBM MB':>10} "
            f"{'compul MB':>10} {'L2 hit':>6} {'io/LB':>6} {'kern':>5} {'compile s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        io = f"{r['io_bound_ratio']:.2f}" if r["io_bound_ratio"] is not None else "-"
        served = f"{r['l2_hit_bytes'] / r['gm_bytes']:.0%}" if r["gm_bytes"] else "-"
        lines.append(
            f"{r['name']:<24} {r['cycles']:>12,} {r['roofline_cycles']:>12,.0f} "
            f"{r['efficiency']:>6.2f} {r['hbm_bytes'] / 1e6:>10.1f} "
            f"{r['compulsory_bytes'] / 1e6:>10.1f} {served:>6} {io:>6} {r['kernels']:>5} "
            f"{r['compile_seconds']:>9.2f}"
        )
    return "\n".join(lines)


def run(args) -> int:
    from isa.machine import load_machine

    machine = load_machine(args.machine)
    if args.names == ["serving"]:
        return _serving(args)
    benches = available()
    names = args.names or list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        raise UsageError(f"unknown benchmark {unknown[0]!r}; available: {', '.join(benches)}")
    jobs = args.jobs if args.jobs > 0 else (os.cpu_count() or 1)
    jobs = max(1, min(jobs, len(names)))
    results: dict[str, dict | str] = {}
    done = 0

    def progress(count: int, text: str) -> None:
        print(f"\r[{count}/{len(names)}] {text:<40}", end="", file=sys.stderr, flush=True)

    if jobs == 1:
        for name in names:
            progress(done + 1, name)
            results[name] = _run_or_error(benches[name], machine, int(args.opt))
            done += 1
    else:
        # one process per benchmark at a time: the simulator is single-threaded Python
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_run_or_error, benches[name], machine, int(args.opt)): name
                       for name in names}
            for future in as_completed(futures):
                name = futures[future]
                results[name] = future.result()
                done += 1
                progress(done, f"{name} done")
    print("\r" + " " * 56 + "\r", end="", file=sys.stderr, flush=True)
    rows = [results[n] for n in names if isinstance(results[n], dict)]
    failures = [f"{n}: {results[n]}" for n in names if isinstance(results[n], str)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"machine {machine.name}, -O{args.opt}, timing-only")
        print(_table(rows))
        print("L2 hit: the share of the DMAs' GM bytes the L2 served; io/LB: those bytes over "
              "the I/O lower bound of one core's L1 (matrix products)")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0
