"""`zhenwu bench collectives`: an nccl-tests-like table of simulated collectives.

For all-reduce, all-gather, reduce-scatter and all-to-all from 4 KiB to 1 GiB on one node of
`--chips` chips (default: the machine's `[system] chips_per_node`): the collective is lowered
to DMA.PUT/RSIG programs (compiler/collective_codegen.py) and simulated timing-only on the
cluster (runtime/cluster.py). Columns: size, simulated time, algorithm bandwidth (size over
time), bus bandwidth (nccl-tests' factor: 2(n-1)/n for all-reduce, (n-1)/n otherwise), the
algorithm, the alpha-beta model's time (compiler/collectives.py) and the simulation's
difference from it. Bus bandwidth is compared with the per-chip link peak (the chip's
injection bandwidth into its node).
"""

from __future__ import annotations

import json

from compiler.collective_codegen import collective_programs
from compiler.collectives import KINDS
from isa.topology import Topology
from runtime.cluster import run_cluster

SIZES = tuple(4096 * 4**i for i in range(11) if 4096 * 4**i <= 1 << 30)


def measure(kind: str, nbytes: int, chips: int, machine) -> dict:
    """One row: simulate `kind` of `nbytes` on `chips` chips; compare with the model."""
    programs, cost = collective_programs(kind, nbytes, chips, machine)
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
    rows = [measure(kind, size, chips, machine) for kind in KINDS for size in SIZES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"machine {machine.name}: {chips} chips, {machine.topology}; per-chip link peak "
          f"{peak / 1e9:.0f} GB/s; simulated timing-only")
    for kind in KINDS:
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
    return 0
