"""`zhenwu run prog.s|prog.bin`: run M890 assembly (or a binary) on the interpreter.

The program's `in`/`inout` tensors are the kernel arguments: `-i NAME=FILE.npy` and
`--inputs IN.npz` fill them by name; any missing input is drawn from a normal distribution
seeded by `--seed` and cast to the tensor's dtype. Outputs (`out`/`inout` tensors, in
directive order) are written as `out0`, `out1`, ... to `-o OUT.npz` (float dtypes as f32).
Prints a short summary (output shapes, cycles, simulated time) and the report.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

# The interpreter multiplies many small tiles: BLAS worker threads only add wake-up latency
# there (40x slower per 128x128 product on a busy 2-core host). This takes effect when numpy
# is not loaded yet, as on the command line.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

from isa.errors import InputError, UsageError


def run_assembly(args) -> int:
    """Run `args.program` (.s or .bin) with the `run` subcommand's options; return 0."""
    from isa.machine import load_machine
    from runtime import run_program

    if getattr(args, "mesh", None):
        raise UsageError("--mesh shards a .zt program; assembly runs as written (SPMD: the "
                         "same program on every chip of --chips N)")
    program = _load_program(args.program)
    machine_spec = args.machine
    if machine_spec == "m890" and program.machine and program.machine != "m890":
        machine_spec = program.machine  # `.machine z810e` in the file, no --machine given
    machine = load_machine(machine_spec)
    # a timing-only run computes no values: do not draw (possibly huge) random inputs
    inputs = load_inputs(program, args.input, args.inputs, args.seed,
                         draw_missing=not args.timing_only)
    if getattr(args, "chips", 1) != 1:
        return _run_cluster(args, program, machine, inputs)
    result = run_program(program, machine, inputs, timing_only=args.timing_only,
                         max_instructions=args.max_instructions, trace=bool(args.trace))
    if args.output and not args.timing_only:
        write_outputs(args.output, list(result.outputs.values()))
    if args.report:
        _write_text(args.report, json.dumps(result.report.to_json(), indent=2) + "\n")
    if args.trace and result.trace is not None:
        _write_text(args.trace, json.dumps(result.trace))
    if args.timing_only:
        for index, tensor in enumerate(program.outputs):
            print(f"out{index} ({tensor.name}): {tensor.dtype} {list(tensor.shape)} "
                  "(timing only: not computed" + (", not written)" if args.output else ")"))
    for index, (name, value) in enumerate(result.outputs.items()):
        print(f"out{index} ({name}): {value.dtype} {list(value.shape)}")
    report = result.report
    print(f"cycles {report.cycles}  simulated time {report.seconds * 1e6:.3f} us")
    print(report.to_text())
    return 0


def _run_cluster(args, program, machine, inputs) -> int:
    """The same program on every chip of --chips N (GETID chip tells them apart); every
    chip gets the same inputs; the outputs written are chip 0's."""
    from runtime.cluster import run_cluster

    if args.chips < 1:
        raise UsageError(f"--chips {args.chips}: at least one chip")
    result = run_cluster([program] * args.chips, machine, [inputs] * args.chips,
                         timing_only=args.timing_only, max_instructions=args.max_instructions,
                         trace=bool(args.trace))
    if args.output and not args.timing_only:
        write_outputs(args.output, list(result.outputs[0].values()))
    if args.report:
        _write_text(args.report, json.dumps(result.report.to_json(), indent=2) + "\n")
    if args.trace and result.trace is not None:
        _write_text(args.trace, json.dumps(result.trace))
    print(result.report.to_text())
    return 0


def _load_program(path: str):
    from isa.asm import parse_assembly

    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read '{path}': {err.strerror or err}") from None
    if file.suffix == ".bin":
        from isa.encoding import decode_program

        return decode_program(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"'{path}' is not UTF-8 text (a binary? name it .bin)") from None
    return parse_assembly(text, str(file))


def load_inputs(program, pairs: list[str], npz: str | None, seed: int, *,
                draw_missing: bool = True) -> dict[str, np.ndarray]:
    """The kernel arguments by tensor name: from files, else (when `draw_missing`) seeded
    normal random values, drawn in directive order and cast to the tensor's dtype."""
    from isa.dtypes import np_dtype

    by_name = {t.name: t for t in program.inputs}
    given: dict[str, np.ndarray] = {}
    if npz:
        try:
            with np.load(npz, allow_pickle=False) as archive:
                for key in archive.files:
                    given[key] = archive[key]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise InputError(f"cannot read inputs '{npz}': {err}") from None
    for pair in pairs or []:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise InputError(f"-i '{pair}': expected NAME=FILE.npy")
        try:
            given[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise InputError(f"-i {name}: cannot read '{file}': {err}") from None
    for name in given:
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise InputError(f"input '{name}' is not an input tensor of the program "
                             f"(inputs: {known})")
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for tensor in program.inputs:
        dtype = np_dtype(tensor.dtype)
        if tensor.name in given:
            value = np.asarray(given[tensor.name])
            if tuple(value.shape) != tuple(tensor.shape):
                raise InputError(
                    f"input '{tensor.name}': shape {list(value.shape)} does not match the "
                    f"tensor's {list(tensor.shape)}")
            if value.dtype.kind not in "biuf" and value.dtype != dtype:
                raise InputError(f"input '{tensor.name}': dtype {value.dtype} is not numeric")
        elif not draw_missing:
            continue
        else:
            value = rng.standard_normal(tensor.shape, dtype=np.float32)
            if tensor.dtype in ("i32", "i8"):
                value = np.round(value * 4)
            elif tensor.dtype == "bool":
                value = value > 0
        inputs[tensor.name] = value
    return inputs


def write_outputs(path: str, outputs: list[np.ndarray]) -> None:
    """Write outputs as out0, out1, ... (float dtypes as f32, others as they are)."""
    arrays = {}
    for index, value in enumerate(outputs):
        if value.dtype.kind == "f" or value.dtype.name in ("bfloat16", "float8_e4m3fn"):
            value = value.astype(np.float32)
        arrays[f"out{index}"] = value
    try:
        np.savez(path, **arrays)
    except OSError as err:
        raise InputError(f"cannot write '{path}': {err.strerror or err}") from None


def _write_text(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as err:
        raise InputError(f"cannot write '{path}': {err.strerror or err}") from None
