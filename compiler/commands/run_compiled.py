"""`zhenwu run prog.zt`: compile for the machine, run on the interpreter (docs/design.md section 9).

A thin layer over the Python API (zhenwu/api.py): `zhenwu.compile`, then `Program.run`.
Inputs come from `-i NAME=FILE.npy` / `--inputs IN.npz` (symbolic dims are bound from their
shapes and `--shape`), missing ones from a seeded normal distribution. Prints each output's
dtype and shape and the run's summary (compiler/commands/summary.py). `--check` also runs
the reference evaluator on the same inputs and prints, per output, the largest error
relative to the output's scale; beyond the dtype's tolerance the command fails with exit
status 1. `--report` writes the interpreter's report plus `kernels`, `roofline_cycles`,
`efficiency` and `compile_seconds` (`Program.report_json`).
"""

from __future__ import annotations

import json
import sys

from zhenwu.compiler.check import check_outputs
from zhenwu.isa.errors import Diagnostic


def compile_for_run(args, given):
    """`zhenwu.compile` with the command line's options; symbolic dims bound from `given`."""
    from zhenwu.compiler.inputs import parse_shape_options

    import zhenwu

    return zhenwu.compile(args.program, shapes=parse_shape_options(args.shape or []),
                          machine=args.machine, opt=int(args.opt), entry=args.entry,
                          input_shapes={name: array.shape for name, array in given.items()},
                          tune=bool(getattr(args, "tune", False)),
                          disable_passes=getattr(args, "disable_pass", []) or [],
                          persistent=bool(getattr(args, "persistent", False)))


def _function(args, given):
    """The checked program (to see whether it declares a mesh), before compiling it."""
    from zhenwu.compiler.inputs import parse_shape_options

    from zhenwu.api import load_function

    return load_function(args.program, shapes=parse_shape_options(args.shape or []),
                         entry=args.entry,
                         input_shapes={name: array.shape for name, array in given.items()})


def _no_sharded_remarks(args) -> None:
    if getattr(args, "remarks", False):
        from zhenwu.isa.errors import UsageError

        raise UsageError("--remarks explains a one-chip program: drop --chips/--mesh (or "
                         "run `zhenwu explain` on the unsharded program)")


def run_compiled(args) -> int:
    from zhenwu.compiler.commands.summary import output_line, run_summary, write_text
    from zhenwu.compiler.inputs import read_inputs, warn_on_stderr, write_outputs

    if getattr(args, "chips", 1) != 1 or getattr(args, "mesh", None):
        from zhenwu.compiler.commands.run_sharded import run_sharded

        _no_sharded_remarks(args)

        return run_sharded(args)
    given, sources = read_inputs(args.input or [], args.inputs, args.program)
    if "mesh" in _function(args, given).attrs:  # `mesh tp = 8` in the file: many chips
        from zhenwu.compiler.commands.run_sharded import run_sharded

        _no_sharded_remarks(args)

        return run_sharded(args)
    # Compile before making inputs: a program too big for the chip is a diagnostic, not a
    # host that runs out of memory drawing its random inputs.
    prog = compile_for_run(args, given)
    fn = prog.function
    # Timing-only runs read no data: draw no inputs (a 70B-parameter layer would not fit here).
    inputs = {} if args.timing_only else prog.prepare_inputs(
        given, seed=args.seed, sources=sources, require=getattr(args, "require_inputs", False),
        warn=warn_on_stderr)
    outputs, report = prog.run(inputs, timing_only=args.timing_only,
                               max_instructions=args.max_instructions, trace=bool(args.trace),
                               progress=True,
                               fast_forward=not getattr(args, "no_fast_forward", False))
    if args.output:
        write_outputs(args.output, outputs)
    if args.report:
        write_text(args.report, json.dumps(prog.report_json(report), indent=2) + "\n")
    if args.trace and report.trace is not None:
        write_text(args.trace, json.dumps(report.trace))
    note = "timing only: not computed" if args.timing_only else ""
    for index, value in enumerate(fn.outputs):
        print(output_line(index, value.type.dtype, value.type.shape, note=note))
    status = 0
    if args.check:
        want = prog.reference(inputs)
        checks = check_outputs(fn, outputs, want, {**prog.weights, **inputs})
        for index, (passes, summary) in enumerate(checks):
            print(f"check out{index}: {summary} {'ok' if passes else 'FAIL'}")
            if not passes:
                status = 1
    print(run_summary(report, kernels=prog.kernel_count, compile_seconds=prog.compile_seconds))
    if getattr(args, "remarks", False):
        from zhenwu.compiler.commands.explain import print_remarks

        sys.stdout.flush()
        print_remarks(prog, report)
    if status:
        raise Diagnostic("the compiled program does not match the reference evaluator")
    return status
