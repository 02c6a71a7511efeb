"""`zhenwu run prog.zt --chips N [--mesh tp=N]`: compile for N chips, run the cluster.

The program is sharded over the mesh (compiler/shard/), each chip's program is simulated
on the cluster (runtime/cluster.py), and the chips' result shards are joined into the
program's results. `--check` compares them with the one-chip reference evaluator; the
report (`--report`) has one entry per chip and one per link.
"""

from __future__ import annotations

import json
import time

from zhenwu.compiler.check import check_outputs
from zhenwu.isa.errors import Diagnostic, UsageError


def run_sharded(args) -> int:
    from zhenwu.compiler.commands import compile_options
    from zhenwu.compiler.commands.summary import write_text as _write_text
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.inputs import (
        parse_shape_options,
        prepare_inputs,
        read_inputs,
        write_outputs,
    )
    from zhenwu.compiler.shard import compile_spmd, resolve_mesh, run_spmd, shard_function
    from zhenwu.isa.machine import load_machine

    from zhenwu.api import timing_measure

    if args.chips < 1:
        raise UsageError(f"--chips {args.chips}: at least one chip")
    machine = load_machine(args.machine)
    given, sources = read_inputs(args.input or [], args.inputs, args.program)
    fn = load_program(args.program, entry=args.entry,
                      shapes=parse_shape_options(args.shape or []),
                      input_shapes={name: array.shape for name, array in given.items()})
    mesh = resolve_mesh(fn, args.mesh, args.chips)
    start = time.perf_counter()
    spmd = shard_function(fn, mesh)
    if args.overlap_chunks is not None and args.overlap_chunks < 1:
        raise UsageError(f"--overlap-chunks {args.overlap_chunks}: at least 1")
    compiled = compile_spmd(spmd, machine, compile_options(args), mesh.chips,
                            measure=timing_measure, overlap_chunks=args.overlap_chunks)
    compile_seconds = time.perf_counter() - start
    inputs = {} if args.timing_only else prepare_inputs(fn, given, args.seed, sources)
    outputs, result = run_spmd(compiled, machine, inputs, timing_only=args.timing_only,
                               trace=bool(args.trace), max_instructions=args.max_instructions)
    if args.output and outputs:
        write_outputs(args.output, outputs)
    report = result.report
    if args.report:
        data = report.to_json()
        data["compile_seconds"] = round(compile_seconds, 6)
        data["mesh"] = str(mesh)
        data["collectives"] = [{"kind": op.kind, "axis": op.attrs["axis"], "bytes": nbytes,
                                "algorithm": algorithm}
                               for op, algorithm, nbytes in compiled.collectives]
        data["overlap"] = [{"rows": region.rows, "chunks": region.chunks, "ops": len(region.ops),
                            "all_reduces": region.all_reduces} for region in compiled.overlap]
        _write_text(args.report, json.dumps(data, indent=2) + "\n")
    if args.trace and result.trace is not None:
        _write_text(args.trace, json.dumps(result.trace))
    for index, value in enumerate(fn.outputs):
        print(f"out{index}: {value.type.dtype} {list(value.type.shape)}")
    status = 0
    if args.check:
        if args.timing_only:
            raise UsageError("--check needs the math: drop --timing-only")
        from zhenwu.compiler.reference import evaluate

        want = evaluate(fn, inputs)
        for index, (passes, summary) in enumerate(check_outputs(fn, outputs, want, inputs)):
            print(f"check out{index}: {summary} {'ok' if passes else 'FAIL'}")
            if not passes:
                status = 1
    kinds = ", ".join(f"{op.kind}({op.attrs['axis']}, {nbytes} B, {algorithm})"
                      for op, algorithm, nbytes in compiled.collectives) or "none"
    print(f"mesh {mesh} on {mesh.chips} chips: collectives {kinds}")
    for region in compiled.overlap:
        print(f"overlap: {region.all_reduces} all-reduce(s) with {len(region.ops)} ops in "
              f"{region.chunks} row chunks of {region.rows // region.chunks}")
    print(f"kernels {compiled.kernel_count} per chip  compile {compile_seconds:.3f} s")
    print(f"cycles {report.cycles}  simulated time {report.seconds * 1e6:.3f} us")
    print(report.to_text())
    if status:
        raise Diagnostic("the compiled program does not match the reference evaluator")
    return status
