"""`zhenwu compile prog.zt|prog.ir -o OUT [--emit graph|kernels|asm|bin]`.

A thin layer over `zhenwu.compile` (zhenwu/api.py). The program is a `.zt` file or Graph IR
text (`.ir`, as `zhenwu ir` prints it).
`graph` is the Graph IR after the graph passes, `kernels` the planned Kernel IR, `asm` the
M890 assembly (runnable with `zhenwu run prog.s`), `bin` its binary encoding. Without `-o`
(or with `-o -`) the text forms go to standard output; `bin` needs `-o` (`-o -`: stdout).
"""

from __future__ import annotations

import sys
from pathlib import Path

from zhenwu.isa.errors import InputError, UsageError


def run(args) -> int:
    from zhenwu.compiler.inputs import parse_shape_options

    import zhenwu

    if args.emit == "bin" and not args.output:
        raise UsageError("--emit bin needs -o FILE")
    prog = zhenwu.compile(args.program, shapes=parse_shape_options(args.shape),
                          machine=args.machine, opt=int(args.opt), entry=args.entry,
                          tune=bool(args.tune), disable_passes=args.disable_pass,
                          persistent=bool(getattr(args, "persistent", False)))
    if getattr(args, "remarks", False):
        from zhenwu.compiler.commands.explain import print_remarks

        print_remarks(prog)
    if args.emit == "bin":
        data = prog.binary
        if args.output == "-":
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return 0
        try:
            Path(args.output).write_bytes(data)
        except OSError as err:
            raise InputError(f"cannot write '{args.output}': {err.strerror or err}") from None
        return 0
    text = {"graph": lambda: prog.graph, "kernels": lambda: prog.kernels,
            "asm": lambda: prog.asm}[args.emit]()
    if not text.endswith("\n"):
        text += "\n"
    if args.output and args.output != "-":
        try:
            Path(args.output).write_text(text)
        except OSError as err:
            raise InputError(f"cannot write '{args.output}': {err.strerror or err}") from None
    else:
        sys.stdout.write(text)
    return 0
