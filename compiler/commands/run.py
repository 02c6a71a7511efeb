"""`zhenwu run`: dispatch on the program kind.

- `prog.s` / `prog.bin`: assembly or a binary, run on the interpreter (compiler/commands/run_asm.py);
- `prog.zt --reference`: the numpy reference evaluator (compiler/commands/run_reference.py);
- `prog.zt`: compile, then run on the interpreter (compiler/commands/run_compiled.py);
- `model.onnx`: the same, on the program `zhenwu import` writes (compiler/importers/onnx.py).
"""

from __future__ import annotations

from pathlib import Path

from isa.errors import UsageError


def run(args) -> int:
    suffix = Path(args.program).suffix
    if suffix in (".s", ".bin"):
        from compiler.commands.run_asm import run_assembly

        return run_assembly(args)
    if suffix not in (".zt", ".onnx"):
        raise UsageError(f"'{args.program}': expected a .zt program, an .onnx model, .s "
                         "assembly or .bin binary")
    if args.reference:
        from compiler.commands.run_reference import run_reference

        return run_reference(args)
    from compiler.commands.run_compiled import run_compiled

    return run_compiled(args)
