"""`zhenwu explain prog.zt`: where each op went and why a fusion did not happen.

Compiles the program (as `zhenwu compile` does), runs it timing-only (no inputs needed; the
per-kernel cycles and HBM bytes), and prints compiler/remarks.py's `Explanation`: the
kernels, the kernel each Graph IR op went into with its file:line:col, and the remarks
(`passed`, `missed`, `analysis`, `warning`). `--json` prints the same as one JSON object;
`--no-run` skips the simulation (no per-kernel bytes). `--remarks` on `compile` and `run`
prints the remarks alone, on standard error (compiler/commands/explain.py's
`print_remarks`).
"""

from __future__ import annotations

import json
import sys


def explanation(prog, report=None):
    from zhenwu.compiler.remarks import explain

    return explain(prog, report)


def print_remarks(prog, report=None) -> None:
    """The remarks of a compiled program (and its run), one per line on standard error."""
    text = explanation(prog, report).format(remarks_only=True)
    if text:
        print(text, file=sys.stderr)


def run(args) -> int:
    from zhenwu.compiler.inputs import parse_shape_options

    import zhenwu

    prog = zhenwu.compile(args.program, shapes=parse_shape_options(args.shape),
                          machine=args.machine, opt=int(args.opt), entry=args.entry,
                          disable_passes=args.disable_pass)
    report = None
    if not args.no_run:
        _, report = prog.run(timing_only=True, progress=True)
    explained = explanation(prog, report)
    if args.json:
        print(json.dumps(explained.to_json(), indent=2))
    else:
        print(explained.format())
    return 0
