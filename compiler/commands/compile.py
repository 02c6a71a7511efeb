"""`zhenwu compile prog.zt -o OUT [--emit graph|kernels|asm|bin]`.

`graph` is the Graph IR after the graph passes, `kernels` the planned Kernel IR, `asm` the
M890 assembly (runnable with `zhenwu run prog.s`), `bin` its binary encoding. Without `-o`
the text forms go to standard output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from isa.errors import InputError, UsageError


def run(args) -> int:
    from compiler.backend.pipeline import compile_function
    from compiler.commands import compile_options, timing_measure
    from compiler.frontend import load_program
    from compiler.graph.printer import print_function
    from compiler.inputs import parse_shape_options
    from isa.machine import load_machine

    machine = load_machine(args.machine)
    fn = load_program(args.program, entry=args.entry, shapes=parse_shape_options(args.shape))
    compiled = compile_function(fn, machine, compile_options(args), measure=timing_measure)
    if args.emit == "bin":
        from isa.encoding import encode_program

        if not args.output:
            raise UsageError("--emit bin needs -o FILE")
        data = encode_program(compiled.program)
        try:
            Path(args.output).write_bytes(data)
        except OSError as err:
            raise InputError(f"cannot write '{args.output}': {err.strerror or err}") from None
        return 0
    text = {"graph": lambda: print_function(compiled.graph),
            "kernels": lambda: compiled.kernels_text,
            "asm": lambda: compiled.asm_text}[args.emit]()
    if not text.endswith("\n"):
        text += "\n"
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as err:
            raise InputError(f"cannot write '{args.output}': {err.strerror or err}") from None
    else:
        sys.stdout.write(text)
    return 0
