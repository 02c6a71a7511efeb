"""`zhenwu run prog.zt`: compile for the machine, run on the interpreter (DESIGN.md section 9).

Inputs come from `-i NAME=FILE.npy` / `--inputs IN.npz` (symbolic dims are bound from their
shapes and `--shape`), missing ones from a seeded normal distribution. Prints each output's
shape, the cycles and the simulated time. `--check` also runs the reference evaluator on the
same inputs and prints, per output, the largest error relative to the output's scale; beyond
the dtype's tolerance the command fails with exit status 1. `--report` writes the
interpreter's report plus `kernels`, `roofline_cycles` and `efficiency`.
"""

from __future__ import annotations

import json
import time

from compiler.check import output_tolerance, relative_error
from isa.errors import Diagnostic, UsageError


def report_json(report, compiled, fn, machine) -> dict:
    """The interpreter's report plus `kernels`, `roofline_cycles` and `efficiency`."""
    from compiler.roofline import roofline

    data = report.to_json()
    bound = roofline(compiled.graph, machine)
    if "kernels" in data:
        data["kernel_times"] = data.pop("kernels")
    data["kernels"] = compiled.kernel_count
    data["roofline_cycles"] = bound.cycles
    data["efficiency"] = bound.cycles / report.cycles if report.cycles else 0.0
    return data


def run_compiled(args) -> int:
    from compiler.backend.pipeline import compile_function
    from compiler.commands import compile_options
    from compiler.commands.run_asm import _write_text
    from compiler.frontend import load_program
    from compiler.inputs import (
        parse_shape_options,
        prepare_inputs,
        read_inputs,
        write_outputs,
    )
    from isa.machine import load_machine
    from runtime import run_program

    if getattr(args, "chips", 1) != 1 or getattr(args, "mesh", None):
        from compiler.commands.run_sharded import run_sharded

        return run_sharded(args)
    machine = load_machine(args.machine)
    given, sources = read_inputs(args.input or [], args.inputs)
    fn = load_program(args.program, entry=args.entry, shapes=parse_shape_options(args.shape or []),
                      input_shapes={name: array.shape for name, array in given.items()})
    if "mesh" in fn.attrs:  # `mesh tp = 8` in the file: a many-chip run
        from compiler.commands.run_sharded import run_sharded

        return run_sharded(args)
    # Compile before making inputs: a program too big for the chip is a diagnostic, not a
    # host that runs out of memory drawing its random inputs.
    start = time.perf_counter()
    compiled = compile_function(fn, machine, compile_options(args))
    compile_seconds = time.perf_counter() - start
    # Timing-only runs read no data: draw no inputs (a 70B-parameter layer would not fit here).
    inputs = {} if args.timing_only else prepare_inputs(fn, given, args.seed, sources)
    result = run_program(compiled.program, machine, compiled.program_inputs(inputs),
                         timing_only=args.timing_only,
                         max_instructions=args.max_instructions, trace=bool(args.trace))
    outputs = compiled.graph_outputs(result) if not args.timing_only else []
    if args.output:
        write_outputs(args.output, outputs)
    report = result.report
    if args.report:
        data = report_json(report, compiled, fn, machine)
        data["compile_seconds"] = round(compile_seconds, 6)
        _write_text(args.report, json.dumps(data, indent=2) + "\n")
    if args.trace and result.trace is not None:
        _write_text(args.trace, json.dumps(result.trace))
    for index, value in enumerate(fn.outputs):
        print(f"out{index}: {value.type.dtype} {list(value.type.shape)}")
    status = 0
    if args.check:
        if args.timing_only:
            raise UsageError("--check needs the math: drop --timing-only")
        from compiler.reference import evaluate

        want = evaluate(fn, inputs)
        for index, (got, ref, value) in enumerate(zip(outputs, want, fn.outputs)):
            err = relative_error(got, ref)
            tol = output_tolerance(fn, value)
            verdict = "ok" if err <= tol else "FAIL"
            print(f"check out{index}: max relative error {err:.3g} (tolerance {tol:g}) {verdict}")
            if err > tol:
                status = 1
    print(f"kernels {compiled.kernel_count}  compile {compile_seconds:.3f} s")
    print(f"cycles {report.cycles}  simulated time {report.seconds * 1e6:.3f} us")
    if status:
        raise Diagnostic("the compiled program does not match the reference evaluator")
    return status
