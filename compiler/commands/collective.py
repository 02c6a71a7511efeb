"""`zhenwu collective KIND --chips N --size S`: the alpha-beta time of one collective.

From the machine file alone (compiler/collectives.py): the algorithm chosen, each phase
(inside a node over the links, across nodes over the NICs) with its time and its alpha part,
the total, and the algorithm and bus bandwidths. `--simulate` also lowers it to DMA.PUT
programs and runs them on the simulated cluster (timing-only) for a comparison.
"""

from __future__ import annotations

import json

from zhenwu.compiler.collectives import collective_cost, parse_size
from zhenwu.isa.errors import UsageError

ALIASES = {"all-reduce": "allreduce", "all-gather": "allgather",
           "reduce-scatter": "reducescatter", "all-to-all": "alltoall"}
SIMULATE_LIMIT = 64  # chips: larger systems are estimated only


def run(args) -> int:
    from zhenwu.isa.machine import load_machine

    machine = load_machine(args.machine)
    kind = ALIASES.get(args.kind, args.kind)
    nbytes = parse_size(args.size)
    cost = collective_cost(kind, nbytes, args.chips, machine, algorithm=args.algorithm)
    out = {"kind": kind, "bytes": nbytes, "chips": args.chips, "machine": machine.name,
           "algorithm": cost.algorithm, "seconds": cost.seconds, "algbw": cost.algbw,
           "busbw": cost.busbw,
           "phases": [{"name": p.name, "algorithm": p.algorithm, "chips": p.chips,
                       "bytes_per_chip": p.nbytes, "seconds": p.seconds,
                       "alpha_seconds": p.alpha_seconds} for p in cost.phases]}
    if args.simulate:
        if args.chips > SIMULATE_LIMIT:
            raise UsageError(f"--simulate runs at most {SIMULATE_LIMIT} chips")
        from zhenwu.compiler.collective_codegen import collective_programs
        from zhenwu.runtime.cluster import run_cluster

        programs, lowered = collective_programs(kind, nbytes, args.chips, machine,
                                                algorithm=args.algorithm)
        report = run_cluster(programs, machine, timing_only=True).report
        out["simulated"] = {"algorithm": lowered.algorithm, "model_seconds": lowered.seconds,
                            "seconds": report.seconds, "cycles": report.cycles}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    nodes = -(-args.chips // machine.chips_per_node)
    print(f"{kind} of {nbytes} B over {args.chips} chips ({nodes} node"
          f"{'s' if nodes > 1 else ''} of {machine.chips_per_node}, {machine.topology}) on "
          f"{machine.name}: alpha-beta model")
    for phase in cost.phases:
        print(f"  {phase.name:<26} {phase.algorithm:<8} {phase.chips:>6} chips "
              f"{phase.seconds * 1e6:>12.2f} us  (alpha {phase.alpha_seconds * 1e6:.2f} us)")
    print(f"  total {cost.seconds * 1e6:.2f} us with {cost.algorithm}; algbw "
          f"{cost.algbw / 1e9:.2f} GB/s, busbw {cost.busbw / 1e9:.2f} GB/s")
    if args.simulate:
        sim = out["simulated"]
        print(f"  simulated ({sim['algorithm']}): {sim['seconds'] * 1e6:.2f} us = "
              f"{sim['cycles']} cycles; its model {sim['model_seconds'] * 1e6:.2f} us "
              f"({sim['seconds'] / sim['model_seconds'] - 1:+.2%})")
    return 0
