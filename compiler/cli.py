"""The `zhenwu` command line (DESIGN.md section 9).

This module only parses arguments and turns errors into messages and exit statuses; each
subcommand lives in its own module under compiler/commands/ as `run(args) -> int`.
It is the one place (with compiler/commands/) that joins the compiler and the runtime.

Exit status: 0 ok, 1 user error (diagnostic printed), 2 usage error, 3 the chip trapped.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from isa.errors import ZhenwuError


class _Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and a one-line message on a bad command line."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"zhenwu: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _add_machine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--machine", default="m890", help="m890, z810e, or a machine .toml file")


def _add_program_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entry", help="the function to run (default: main, or the only fn)")
    p.add_argument(
        "--shape", action="append", default=[], metavar="SYM=N",
        help="bind a symbolic dim, e.g. --shape B=64 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zhenwu", description="tensor compiler and simulator for the M890")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="compile and run a .zt program, or run .s/.bin assembly")
    run.add_argument("program", help="prog.zt, prog.s or prog.bin")
    run.add_argument("-i", dest="input", action="append", default=[], metavar="NAME=FILE.npy")
    run.add_argument("--inputs", metavar="IN.npz", help="inputs keyed by parameter name")
    run.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    run.add_argument("-o", dest="output", metavar="OUT.npz", help="write outputs out0, out1, ...")
    _add_program_options(run)
    _add_machine(run)
    run.add_argument("--chips", type=int, default=1)
    run.add_argument("-O", dest="opt", choices=["0", "1", "2"], default="2", help="-O0, -O1, -O2")
    run.add_argument("--reference", action="store_true", help="run the numpy reference evaluator")
    run.add_argument("--check", action="store_true", help="compare with the reference evaluator")
    run.add_argument("--report", metavar="REPORT.json")
    run.add_argument("--trace", metavar="TRACE.json", help="Chrome/Perfetto trace")
    run.add_argument("--timing-only", action="store_true", help="cycles without the math")
    run.add_argument("--max-instructions", type=int, default=None,
                     help="stop a runaway program after this many instructions")
    run.add_argument("--tune", action="store_true", help="search tile sizes on the timing model")
    run.add_argument("--disable-pass", action="append", default=[], metavar="PASS",
                     help="leave a graph pass out (repeatable, or comma-separated)")

    comp = sub.add_parser("compile", help="compile a .zt program")
    comp.add_argument("program")
    comp.add_argument("-o", dest="output", metavar="OUT")
    comp.add_argument("--emit", choices=["graph", "kernels", "asm", "bin"], default="asm")
    _add_program_options(comp)
    _add_machine(comp)
    comp.add_argument("-O", dest="opt", choices=["0", "1", "2"], default="2")
    comp.add_argument("--tune", action="store_true")
    comp.add_argument("--disable-pass", action="append", default=[], metavar="PASS",
                      help="leave a graph pass out (repeatable, or comma-separated)")

    ir = sub.add_parser("ir", help="print the Graph IR of a .zt program")
    ir.add_argument("program")
    _add_program_options(ir)
    ir.add_argument("--print-ir-after-all", action="store_true")
    ir.add_argument("--print-ir-after", action="append", default=[], metavar="PASS")
    ir.add_argument("--passes", help="comma-separated pass pipeline")
    ir.add_argument("--disable-pass", action="append", default=[], metavar="PASS")
    ir.add_argument("--time-passes", action="store_true")
    ir.add_argument("--dot", metavar="GRAPH.dot", help="write the graph for Graphviz")
    _add_machine(ir)

    asm = sub.add_parser("asm", help="assemble M890 assembly to a binary")
    asm.add_argument("program")
    asm.add_argument("-o", dest="output", required=True)
    _add_machine(asm)

    disasm = sub.add_parser("disasm", help="disassemble an M890 binary")
    disasm.add_argument("program")
    disasm.add_argument("-o", dest="output")

    machines = sub.add_parser("machines", help="print the machine descriptions")
    machines.add_argument("--machine", action="append", default=[],
                          help="a built-in name or a .toml file (default: all built-in)")
    machines.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="run the benchmark suite in samples/bench/")
    bench.add_argument("names", nargs="*")
    _add_machine(bench)
    bench.add_argument("--json", action="store_true")
    bench.add_argument("-O", dest="opt", choices=["0", "1", "2"], default="2")
    bench.add_argument("-j", "--jobs", type=int, default=0,
                       help="benchmarks run at once (default: one per host CPU)")

    fuzz = sub.add_parser("fuzz", help="a differential fuzzing campaign")
    fuzz.add_argument("--seconds", type=float, default=60)
    fuzz.add_argument("--seed", type=int, default=0)
    fuzz.add_argument("--out", default="fuzz-out")
    fuzz.add_argument("--bisect", action="store_true")

    from compiler.commands.serve import add_parser as add_serve_parser

    add_serve_parser(sub, _add_machine)
    return parser


# command name -> module under compiler/commands/ holding `run(args) -> int`
_COMMANDS = {
    "run": "run", "compile": "compile", "ir": "ir", "asm": "isa_tools", "disasm": "isa_tools",
    "machines": "isa_tools", "bench": "bench", "fuzz": "fuzz", "serve": "serve",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        module = importlib.import_module(f"compiler.commands.{_COMMANDS[args.command]}")
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("compiler.commands"):
            raise
        print(f"zhenwu: error: '{args.command}' is not implemented yet", file=sys.stderr)
        return 2
    try:
        return module.run(args)
    except ZhenwuError as err:
        print(err.format(), file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("zhenwu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
