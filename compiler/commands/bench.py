"""`zhenwu bench`: the benchmark suite in samples/bench/ (docs/design.md section 11).

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

Beside the roofline, a latency-aware bound (`compiler.roofline.latency_bound_cycles`): the
roofline plus, per kernel, its launch, its first load's round trip and its last store's
latency, from the machine file. A program shorter than a round trip (a small GEMM) is judged
against what any schedule must wait for (`latency_bound_cycles`, `latency_efficiency`); the
table ends with the geometric mean efficiency against both bounds. A third, informative
column (`eff HBM`, `sustained_efficiency`) takes the compulsory traffic at the HBM's sustained
streaming rate of the machine file (`compiler.roofline.sustained_bound_cycles`): the ceiling
a streaming kernel can reach there.

A subdirectory of samples/bench/ is a group (`zhenwu bench attention_forms`): the same
computation spelled several ways; each program's `# kind:` names what it computes, and the
table adds its cycles over the best spelling's of that kind (`vs_best`, `kind` in JSON).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from zhenwu.compiler.roofline import (
    io_lower_bound_bytes,
    latency_bound_cycles,
    roofline,
    sustained_bound_cycles,
)
from zhenwu.isa.errors import UsageError

BENCH_DIR = Path(__file__).resolve().parents[2] / "samples" / "bench"
BENCH_KEYS = ("name", "cycles", "roofline_cycles", "efficiency", "hbm_bytes", "compulsory_bytes",
              "io_bound_ratio", "kernels", "compile_seconds", "gm_bytes", "l2_hit_bytes",
              "latency_bound_cycles", "latency_efficiency", "sustained_bound_cycles",
              "sustained_efficiency")


def _collectives(args, machine) -> int:
    from zhenwu.compiler.commands.bench_collectives import run_collectives

    return run_collectives(args, machine)


def _scaling(args, machine) -> int:
    from zhenwu.compiler.commands.bench_collectives import run_scaling

    return run_scaling(args, machine)


# benchmarks of many chips, by name (not in the default suite: they simulate whole clusters)
MANY_CHIP_BENCHES = {"collectives": _collectives, "scaling": _scaling}


def available() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BENCH_DIR.glob("*.zt"))}


def groups() -> dict[str, dict[str, Path]]:
    """Benchmark groups: each subdirectory of samples/bench/ (`attention_forms`), its
    programs by name. A program's `# kind: NAME` line says which others compute the same
    thing; `zhenwu bench GROUP` compares each with the best of its kind."""
    return {d.name: {p.stem: p for p in sorted(d.glob("*.zt"))}
            for d in sorted(BENCH_DIR.iterdir()) if d.is_dir() and any(d.glob("*.zt"))}


def kind_of(path: Path) -> str:
    """The `# kind:` of a group's program (its own name when it has none)."""
    for line in path.read_text().splitlines():
        if line.startswith("# kind:"):
            return line.split(":", 1)[1].strip()
    return path.stem


def versus_best(rows: list[dict], kinds: dict[str, str]) -> dict[str, float]:
    """name -> its cycles over the fewest cycles of a program of its kind."""
    best: dict[str, int] = {}
    for r in rows:
        kind = kinds[r["name"]]
        best[kind] = min(best.get(kind, r["cycles"]), r["cycles"])
    return {r["name"]: r["cycles"] / best[kinds[r["name"]]] for r in rows if r["cycles"]}


def run_one(path: Path, machine, opt_level: int) -> dict:
    """Compile and time one benchmark program; the row of the table."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.runtime import run_program

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
    latency_bound = latency_bound_cycles(compiled.graph, compiled.kernels, machine)
    sustained = sustained_bound_cycles(compiled.graph, compiled.kernels, machine)
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
        "latency_bound_cycles": latency_bound,
        "latency_efficiency": latency_bound / report.cycles if report.cycles else 0.0,
        "sustained_bound_cycles": sustained,
        "sustained_efficiency": sustained / report.cycles if report.cycles else 0.0,
    }


def _run_or_error(path: Path, machine, opt_level: int) -> dict | str:
    """A benchmark's row, or its diagnostic (one broken benchmark does not hide the rest)."""
    from zhenwu.isa.errors import ZhenwuError

    try:
        return run_one(path, machine, opt_level)
    except ZhenwuError as err:
        return err.format()


def _serving(args) -> int:
    """`zhenwu bench serving`: Qwen3-32B decode and prefill against their bounds, on the M890
    and the 810E (compiler/commands/bench_serving.py)."""
    from zhenwu.compiler.commands.bench_serving import format_rows, measure
    from zhenwu.isa.machine import load_machine

    machines = [load_machine(args.machine)]
    if args.machine != "z810e":
        machines.append(load_machine("z810e"))
    rows = measure(machines, processes=args.jobs)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def _table(rows: list[dict]) -> str:
    head = (f"{'benchmark':<24} {'cycles':>12} {'roofline':>12} {'eff':>6} {'HBM MB':>10} "
            f"{'compul MB':>10} {'L2 hit':>6} {'io/LB':>6} {'kern':>5} {'compile s':>9} "
            f"{'lat bound':>12} {'eff lat':>7} {'eff HBM':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        io = f"{r['io_bound_ratio']:.2f}" if r["io_bound_ratio"] is not None else "-"
        served = f"{r['l2_hit_bytes'] / r['gm_bytes']:.0%}" if r["gm_bytes"] else "-"
        lines.append(
            f"{r['name']:<24} {r['cycles']:>12,} {r['roofline_cycles']:>12,.0f} "
            f"{r['efficiency']:>6.2f} {r['hbm_bytes'] / 1e6:>10.1f} "
            f"{r['compulsory_bytes'] / 1e6:>10.1f} {served:>6} {io:>6} {r['kernels']:>5} "
            f"{r['compile_seconds']:>9.2f} {r['latency_bound_cycles']:>12,.0f} "
            f"{r['latency_efficiency']:>7.2f} {r['sustained_efficiency']:>7.2f}"
        )
    if rows:
        lines.append(f"{'geomean':<24} {'':>12} {'':>12} "
                     f"{geomean([r['efficiency'] for r in rows]):>6.2f} {'':>10} {'':>10} "
                     f"{'':>6} {'':>6} {'':>5} {'':>9} {'':>12} "
                     f"{geomean([r['latency_efficiency'] for r in rows]):>7.2f} "
                     f"{geomean([r['sustained_efficiency'] for r in rows]):>7.2f}")
    return "\n".join(lines)


def geomean(values: list[float]) -> float:
    """The geometric mean of positive numbers (0.0 when one is not positive, or none)."""
    if not values or min(values) <= 0:
        return 0.0
    return float(np.exp(np.mean(np.log(values))))


def _versus_table(rows: list[dict], kinds: dict[str, str]) -> str:
    """Each grouped program's cycles against the best program of its kind."""
    head = f"{'spelling':<32} {'kind':<10} {'cycles':>12} {'vs best':>8}"
    lines = ["", head, "-" * len(head)]
    for r in sorted((r for r in rows if "vs_best" in r), key=lambda r: (r["kind"], r["name"])):
        lines.append(f"{r['name']:<32} {r['kind']:<10} {r['cycles']:>12,} "
                     f"{r['vs_best']:>7.2f}x")
    return "\n".join(lines)


def run(args) -> int:
    from zhenwu.isa.machine import load_machine

    if args.compile:
        from zhenwu.compiler.commands import bench_compile

        return bench_compile.run(args, BENCH_DIR)
    machine = load_machine(args.machine)
    if args.names == ["serving"]:
        return _serving(args)
    if args.names and args.names[0] in MANY_CHIP_BENCHES:
        return MANY_CHIP_BENCHES[args.names[0]](args, machine)
    benches = available()
    grouped = groups()
    names = []
    kinds: dict[str, str] = {}
    for name in args.names or list(benches):
        if name in grouped:
            benches.update(grouped[name])
            names += list(grouped[name])
            kinds.update({n: kind_of(p) for n, p in grouped[name].items()})
        else:
            names.append(name)
    unknown = [n for n in names if n not in benches]
    if unknown:
        raise UsageError(f"unknown benchmark {unknown[0]!r}; available: {', '.join(benches)}; "
                         f"groups: {', '.join(grouped)}")
    jobs = args.jobs if args.jobs > 0 else (os.cpu_count() or 1)
    jobs = max(1, min(jobs, len(names)))
    results: dict[str, dict | str] = {}
    done = 0

    from zhenwu.progress import StatusLine

    status = StatusLine(sys.stderr)

    def progress(count: int, text: str) -> None:
        # off a terminal, one line per finished benchmark (a log of what ran)
        status.update(f"[{count}/{len(names)}] {text}", force=text.endswith(" done"))

    if jobs == 1:
        for name in names:
            progress(done + 1, name)
            results[name] = _run_or_error(benches[name], machine, int(args.opt))
            done += 1
            progress(done, f"{name} done")
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
    status.close()
    rows = [results[n] for n in names if isinstance(results[n], dict)]
    failures = [f"{n}: {results[n]}" for n in names if isinstance(results[n], str)]
    ratios = versus_best([r for r in rows if r["name"] in kinds], kinds)
    for r in rows:
        if r["name"] in ratios:
            r["kind"], r["vs_best"] = kinds[r["name"]], round(ratios[r["name"]], 3)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"machine {machine.name}, -O{args.opt}, timing-only")
        print(_table(rows))
        if ratios:
            print(_versus_table(rows, kinds))
        print("L2 hit: the share of the DMAs' GM bytes the L2 served; io/LB: those bytes over "
              "the I/O lower bound of one core's L1 (matrix products); lat bound: the roofline "
              "plus each kernel's launch, first load round trip and last store latency; eff HBM: "
              "against that bound with the HBM at its sustained streaming rate")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0
