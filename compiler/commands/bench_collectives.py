"""`zhenwu bench collectives` (an nccl-tests-like table of simulated collectives) and
`zhenwu bench scaling` (programs on 1 to 8 chips, tensor parallel).

For all-reduce, all-gather, reduce-scatter and all-to-all from 4 KiB to 1 GiB on one node of
`--chips` chips (default: the machine's `[system] chips_per_node`): the collective is lowered
to DMA.PUT/RSIG programs (compiler/collective_codegen.py) and simulated timing-only on the
cluster (runtime/cluster.py). Columns: size, simulated time, algorithm bandwidth (size over
time), bus bandwidth (nccl-tests' factor: 2(n-1)/n for all-reduce, (n-1)/n otherwise), the
algorithm, the alpha-beta model's time (compiler/collectives.py) and the simulation's
difference from it. Bus bandwidth is compared with the per-chip link peak (the chip's
injection bandwidth into its node).

`scaling` compiles each program of `SCALING` for 1, 2, 4 or 8 chips (mesh `tp=N`) and
simulates it timing-only: cycles, speedup over one chip, the share of chip 0's time in
collective kernels (communication not hidden behind compute: an overlapped all-reduce's
kernels are only its start and its wait), the row chunks of each overlapped region
(compiler/shard/overlap.py), and the host seconds the simulation took.
"""

from __future__ import annotations

import json

from zhenwu.compiler.collective_codegen import collective_programs
from zhenwu.compiler.collectives import KINDS, LOWERED, applies
from zhenwu.isa.errors import UsageError
from zhenwu.isa.topology import Topology
from zhenwu.runtime.cluster import run_cluster

SIZES = tuple(4096 * 4**i for i in range(11) if 4096 * 4**i <= 1 << 30)
COMPARED_SIZES = (4096, 1 << 20, 64 << 20, 1 << 30)  # every algorithm, side by side


def compare_algorithms(chips: int, machine) -> list[dict]:
    """Each lowered algorithm that applies to each kind, simulated at `COMPARED_SIZES`."""
    rows = []
    for kind in KINDS:
        for algorithm in LOWERED:
            if applies(algorithm, kind, chips) is not None:
                continue
            rows += [measure(kind, size, chips, machine, algorithm) for size in COMPARED_SIZES]
    return rows


def measure(kind: str, nbytes: int, chips: int, machine, algorithm: str | None = None) -> dict:
    """One row: simulate `kind` of `nbytes` on `chips` chips (with the model's choice of
    algorithm, or the one named); compare with the model."""
    programs, cost = collective_programs(kind, nbytes, chips, machine, algorithm=algorithm)
    report = run_cluster(programs, machine, timing_only=True).report
    seconds = report.seconds
    algbw = nbytes / seconds
    factor = cost.busbw / cost.algbw if cost.algbw else 0.0
    return {"kind": kind, "bytes": nbytes, "chips": chips, "algorithm": cost.algorithm,
            "cycles": report.cycles, "seconds": seconds, "algbw": algbw,
            "busbw": algbw * factor, "model_seconds": cost.seconds,
            "model_error": seconds / cost.seconds - 1}


def _size(nbytes: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= factor:
            return f"{nbytes // factor} {unit}"
    return f"{nbytes} B"


def run_collectives(args, machine) -> int:
    chips = args.chips or machine.chips_per_node
    peak = Topology(machine, chips).injection_bandwidth()
    rows, skipped = [], []
    for kind in KINDS:
        try:
            rows += [measure(kind, size, chips, machine) for size in SIZES]
        except UsageError as err:  # e.g. all-to-all across nodes: no schedule
            skipped.append(f"{kind}: {err.message}")
    compared = compare_algorithms(chips, machine) if chips <= machine.chips_per_node else []
    if args.json:
        print(json.dumps({"chosen": rows, "compared": compared}, indent=2))
        return 0
    print(f"machine {machine.name}: {chips} chips, {machine.topology}; per-chip link peak "
          f"{peak / 1e9:.0f} GB/s; simulated timing-only")
    for note in skipped:
        print(f"skipped {note}")
    for kind in sorted({row["kind"] for row in rows}, key=KINDS.index):
        print(f"\n{kind}")
        print(f"{'size':>9} {'time us':>10} {'algbw GB/s':>11} {'busbw GB/s':>11} "
              f"{'busbw/peak':>10}  {'algorithm':<18} {'model us':>10} {'sim/model':>9}")
        for row in rows:
            if row["kind"] != kind:
                continue
            print(f"{_size(row['bytes']):>9} {row['seconds'] * 1e6:>10.2f} "
                  f"{row['algbw'] / 1e9:>11.2f} {row['busbw'] / 1e9:>11.2f} "
                  f"{row['busbw'] / peak:>10.1%}  {row['algorithm']:<18} "
                  f"{row['model_seconds'] * 1e6:>10.2f} {row['model_error']:>+9.2%}")
    if compared:
        _print_compared(compared)
    return 0


def _print_compared(rows: list[dict]) -> None:
    """Simulated time (and sim/model) of every algorithm at a few sizes, per kind."""
    print("\nevery algorithm, simulated: time us (sim/model)")
    for kind in KINDS:
        mine = [row for row in rows if row["kind"] == kind]
        algorithms = list(dict.fromkeys(row["algorithm"] for row in mine))
        if not algorithms:
            continue
        print(f"\n{kind}")
        print(f"{'size':>9} " + " ".join(f"{name:>20}" for name in algorithms))
        for size in COMPARED_SIZES:
            cells = []
            for name in algorithms:
                row = next(r for r in mine if r["algorithm"] == name and r["bytes"] == size)
                cells.append(f"{row['seconds'] * 1e6:>10.2f} ({row['model_error']:>+6.2%})")
            print(f"{_size(size):>9} " + " ".join(f"{cell:>20}" for cell in cells))


# ---- zhenwu bench scaling ---------------------------------------------------------------

SCALING = (
    # (name, program, shapes, chip counts)
    ("FFN GEMM 8192x8192x28672 bf16", "samples/sharded/ffn_gemm.zt", {}, (1, 8)),
    ("Qwen-style block T=4096, TP", "samples/sharded/qwen_block_4096_tp.zt", {}, (1, 2, 4, 8)),
)
_COLLECTIVE_KERNELS = ("all_reduce_", "all_gather_", "reduce_scatter_", "all_to_all_")


def scaling_row(path: str, shapes: dict, chips: int, machine) -> dict:
    """Compile `path` for `chips` chips (mesh tp=chips), simulate it timing-only."""
    import time
    from pathlib import Path

    from zhenwu.compiler.backend.pipeline import CompileOptions
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.shard import compile_spmd, parse_mesh, run_spmd, shard_function

    root = Path(__file__).resolve().parents[2]
    fn = load_program(str(root / path), shapes=shapes)
    mesh = parse_mesh(f"tp={chips}")
    start = time.perf_counter()
    compiled = compile_spmd(shard_function(fn, mesh), machine, CompileOptions(), chips)
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, result = run_spmd(compiled, machine, {}, timing_only=True)
    host_seconds = time.perf_counter() - start
    chip0 = result.report.chips[0]
    comm = sum(k.cycles for k in chip0.kernels if k.name.startswith(_COLLECTIVE_KERNELS))
    return {"chips": chips, "cycles": result.report.cycles, "seconds": result.report.seconds,
            "communication_cycles": comm, "communication_share": comm / chip0.cycles,
            "collectives": len(compiled.collectives), "compile_seconds": compile_seconds,
            "host_seconds": host_seconds,
            "overlap_chunks": [region.chunks for region in compiled.overlap]}


def run_scaling(args, machine) -> int:
    results = []
    for name, path, shapes, counts in SCALING:
        rows = [scaling_row(path, shapes, chips, machine) for chips in counts]
        for row in rows:
            row["speedup"] = rows[0]["cycles"] / row["cycles"]
        results.append({"name": name, "program": path, "rows": rows})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"machine {machine.name}: tensor parallel over one node ({machine.topology}), "
          "simulated timing-only")
    for entry in results:
        print(f"\n{entry['name']} ({entry['program']})")
        print(f"{'chips':>5} {'cycles':>12} {'time ms':>9} {'speedup':>8} {'comm share':>10} "
              f"{'collectives':>11} {'chunks':>6} {'host s':>8}")
        for row in entry["rows"]:
            chunks = ",".join(str(c) for c in row["overlap_chunks"]) or "-"
            print(f"{row['chips']:>5} {row['cycles']:>12} {row['seconds'] * 1e3:>9.3f} "
                  f"{row['speedup']:>7.2f}x {row['communication_share']:>10.1%} "
                  f"{row['collectives']:>11} {chunks:>6} {row['host_seconds']:>8.1f}")
    print("\ncomm share: the time chip 0 spends in collective regions, i.e. communication not "
          "hidden\nbehind compute (an overlapped all-reduce counts only its start and its wait); "
          "chunks:\nthe row chunks of each overlapped region (compiler/shard/overlap.py)")
    return 0
