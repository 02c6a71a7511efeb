"""`zhenwu run`: dispatch on the program kind.

- `prog.s` / `prog.bin`: assembly or a binary, run on the interpreter (compiler/commands/run_asm.py);
- `prog.zt --reference`: the numpy reference evaluator (compiler/commands/run_reference.py);
- `prog.zt` (or `prog.ir`, Graph IR text): compile, then run on the interpreter
  (compiler/commands/run_compiled.py);
- `model.onnx`: the same, on the program `zhenwu import` writes (compiler/importers/onnx.py).

Options that contradict each other are refused before anything runs (exit status 2).
"""

from __future__ import annotations

from pathlib import Path

from zhenwu.isa.errors import UsageError


def check_conflicts(args) -> None:
    """Refuse option combinations that cannot both be honoured (a UsageError, at once)."""
    if args.timing_only:
        if args.output:
            raise UsageError("-o writes the outputs, which --timing-only does not compute: "
                             "drop one of them")
        if args.check:
            raise UsageError("--check needs the math: drop --timing-only")
    if args.reference:
        for flag, given in (("--check", args.check), ("--trace", args.trace),
                            ("--timing-only", args.timing_only), ("--report", args.report),
                            ("--remarks", getattr(args, "remarks", False))):
            if given:
                raise UsageError(f"--reference runs the numpy evaluator, not the chip: "
                                 f"{flag} does not apply to it")


def run(args) -> int:
    from zhenwu.compiler.commands.run_options import check_run_options

    check_run_options(args)
    check_conflicts(args)
    suffix = Path(args.program).suffix
    if suffix in (".s", ".bin"):
        if args.reference or args.check:
            flag = "--reference" if args.reference else "--check"
            raise UsageError(f"{flag} needs a .zt program (assembly has no reference "
                             "evaluator)")
        from zhenwu.compiler.commands.run_asm import run_assembly

        return run_assembly(args)
    if suffix not in (".zt", ".ir", ".onnx"):
        raise UsageError(f"'{args.program}': expected a .zt program, an .onnx model, .ir Graph "
                         "IR, .s assembly or .bin binary")
    if args.reference:
        from zhenwu.compiler.commands.run_reference import run_reference

        return run_reference(args)
    from zhenwu.compiler.commands.run_compiled import run_compiled

    return run_compiled(args)
