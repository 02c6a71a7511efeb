"""`zhenwu run prog.s|prog.bin`: run M890 assembly (or a binary) on the interpreter.

The program's `in`/`inout` tensors are the kernel arguments: `-i NAME=FILE.npy` and
`--inputs IN.npz` fill them by name; any missing input is drawn from a normal distribution
seeded by `--seed` and cast to the tensor's dtype. Outputs (`out`/`inout` tensors, in
directive order) are written as `out0`, `out1`, ... to `-o OUT.npz` (float dtypes as f32).
Prints each output's dtype and shape and the run's summary (compiler/commands/summary.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# The interpreter multiplies many small tiles: BLAS worker threads only add wake-up latency
# there (40x slower per 128x128 product on a busy 2-core host). This takes effect when numpy
# is not loaded yet, as on the command line.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
from zhenwu.isa.errors import InputError, UsageError


def run_assembly(args) -> int:
    """Run `args.program` (.s or .bin) with the `run` subcommand's options; return 0."""
    from zhenwu.compiler.commands.summary import output_line, run_summary, write_text
    from zhenwu.compiler.inputs import assembly_inputs, missing_inputs_message
    from zhenwu.isa.machine import load_machine
    from zhenwu.runtime import run_program
    from zhenwu.runtime.interpreter import check_tensors

    from zhenwu.hostmem import check_functional_run, out_of_memory
    from zhenwu.progress import TerminalProgress

    if getattr(args, "mesh", None):
        raise UsageError("--mesh shards a .zt program; assembly runs as written (SPMD: the "
                         "same program on every chip of --chips N)")
    program = _load_program(args.program)
    machine_spec = args.machine
    if machine_spec == "m890" and program.machine and program.machine != "m890":
        machine_spec = program.machine  # `.machine z810e` in the file, no --machine given
    machine = load_machine(machine_spec)
    check_tensors(program, machine)  # before drawing inputs for a tensor that cannot exist
    if not args.timing_only:
        # before drawing inputs: a program bigger than the host would die in the allocator
        check_functional_run(program, args.program)
    # a timing-only run computes no values: do not draw (possibly huge) random inputs
    inputs, missing = assembly_inputs(program, args.input, args.inputs, args.seed,
                                      draw_missing=not args.timing_only)
    require = getattr(args, "require_inputs", False)
    warning = missing_inputs_message(missing if require or not args.timing_only else [],
                                     require, bool(args.input or args.inputs))
    if warning:
        print(warning, file=sys.stderr)
    if getattr(args, "chips", 1) != 1:
        return _run_cluster(args, program, machine, inputs)
    reporter = TerminalProgress(machine.clock_hz)
    try:
        result = run_program(program, machine, inputs, timing_only=args.timing_only,
                             max_instructions=args.max_instructions, trace=bool(args.trace),
                             progress=reporter if reporter.enabled else None,
                             fast_forward=not getattr(args, "no_fast_forward", False))
    except MemoryError:
        raise out_of_memory(args.program) from None
    finally:
        reporter.close()
    if args.output and not args.timing_only:
        write_outputs(args.output, list(result.outputs.values()))
    if args.report:
        write_text(args.report, json.dumps(result.report.to_json(), indent=2) + "\n")
    if args.trace and result.trace is not None:
        write_text(args.trace, json.dumps(result.trace))
    note = "timing only: not computed" if args.timing_only else ""
    for index, tensor in enumerate(program.outputs):
        print(output_line(index, tensor.dtype, tensor.shape, tensor.name, note))
    print(run_summary(result.report))
    return 0


def _run_cluster(args, program, machine, inputs) -> int:
    """The same program on every chip of --chips N (GETID chip tells them apart); every
    chip gets the same inputs; the outputs written are chip 0's."""
    from zhenwu.compiler.commands.summary import write_text
    from zhenwu.runtime.cluster import run_cluster

    if args.chips < 1:
        raise UsageError(f"--chips {args.chips}: at least one chip")
    result = run_cluster([program] * args.chips, machine, [inputs] * args.chips,
                         timing_only=args.timing_only, max_instructions=args.max_instructions,
                         trace=bool(args.trace))
    if args.output and not args.timing_only:
        write_outputs(args.output, list(result.outputs[0].values()))
    if args.report:
        write_text(args.report, json.dumps(result.report.to_json(), indent=2) + "\n")
    if args.trace and result.trace is not None:
        write_text(args.trace, json.dumps(result.trace))
    print(result.report.to_text())
    return 0


def _load_program(path: str):
    from zhenwu.isa.asm import parse_assembly

    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read '{path}': {err.strerror or err}") from None
    if file.suffix == ".bin":
        from zhenwu.isa.encoding import decode_program

        return decode_program(data, path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"'{path}' is not UTF-8 text (a binary? name it .bin)") from None
    return parse_assembly(text, str(file))


def load_inputs(program, pairs: list[str], npz: str | None, seed: int, *,
                draw_missing: bool = True) -> dict[str, np.ndarray]:
    """The kernel arguments by tensor name (compiler.inputs.assembly_inputs)."""
    from zhenwu.compiler.inputs import assembly_inputs

    return assembly_inputs(program, pairs, npz, seed, draw_missing=draw_missing)[0]


def write_outputs(path: str, outputs: list[np.ndarray]) -> None:
    """Write outputs as out0, out1, ... to exactly `path` (compiler.inputs.write_outputs)."""
    from zhenwu.compiler.inputs import write_outputs as write

    write(path, outputs)
