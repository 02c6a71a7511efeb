"""One module per `zhenwu` subcommand, each with `run(args) -> int`."""

from __future__ import annotations


def compile_options(args):
    """The CompileOptions a command line asks for (-O, --tune, --disable-pass)."""
    from compiler.backend.pipeline import CompileOptions
    from compiler.passes import PASSES
    from isa.errors import UsageError

    disabled = tuple(name.strip() for option in getattr(args, "disable_pass", []) or []
                     for name in option.split(",") if name.strip())
    for name in disabled:
        if name not in PASSES:
            raise UsageError(f"--disable-pass {name}: no such pass (passes: "
                             f"{', '.join(PASSES)})")
    return CompileOptions(opt_level=int(args.opt), tune=bool(getattr(args, "tune", False)),
                          disabled_passes=disabled)


def timing_measure(program, machine) -> int:
    """The interpreter's cycles for `program` (timing-only, placeholder inputs): the timing
    model `--tune` searches with, injected into the backend from here."""
    import numpy as np

    from runtime import run_program

    inputs = {t.name: np.broadcast_to(np.zeros((), np.float32), tuple(t.shape) or (1,))
              for t in program.inputs}
    return run_program(program, machine, inputs, timing_only=True).report.cycles
