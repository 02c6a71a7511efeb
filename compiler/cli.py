"""The `zhenwu` command line (docs/design.md section 9).

This module only parses arguments and turns errors into messages and exit statuses; each
subcommand lives in its own module under compiler/commands/ as `run(args) -> int`.
It is the one place (with compiler/commands/) that joins the compiler and the runtime.

Exit status: 0 ok, 1 user error (diagnostic printed), 2 usage error, 3 the chip trapped.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys

from zhenwu.isa.errors import ZhenwuError


class _Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and a one-line message on a bad command line."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"zhenwu: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _add_schedule_options(parser) -> None:
    """The compile options `run` and `compile` share that change how kernels are scheduled."""
    parser.add_argument("--persistent", action="store_true",
                        help="run every kernel as one persistent kernel, chip-wide barriers "
                             "between its phases: one launch (default: off; docs/internals.md)")
    parser.add_argument("--multipass-rows", action="store_true",
                        help="softmax and norms as a pass over the rows per reduction plus one "
                             "for the output, each reading the rows again, as GPU libraries' "
                             "block-per-row kernels do (default: off: rows read once)")


def _add_machine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--machine", default="m890",
                   help="the machine: m890, z810e, or a machine .toml file (default: m890)")


def _add_program_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entry", help="the function to run (default: main, or the only fn)")
    p.add_argument(
        "--shape", action="append", default=[], metavar="SYM=N",
        help="bind a symbolic dim, e.g. --shape B=64 (repeatable; default: dims bound from "
             "the input files)",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zhenwu")
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """`--version`: reads the installed version only when asked (importlib.metadata is slow)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"zhenwu {_version()}")
        parser.exit()


def _positive_seconds(text: str) -> float:
    """argparse type of `fuzz --seconds`: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}': expected a positive, finite number of "
                                         "seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zhenwu", description="tensor compiler and simulator for the M890")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="compile and run a .zt program, or run .s/.bin assembly")
    run.add_argument("program", help="prog.zt, model.onnx, prog.ir, prog.s or prog.bin")
    run.add_argument("-i", dest="input", action="append", default=[], metavar="NAME=FILE.npy",
                     help="an input from a .npy file (repeatable; default: inputs not given "
                          "are seeded random)")
    run.add_argument("--inputs", metavar="IN.npz",
                     help="inputs keyed by parameter name (default: none)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed for the random inputs (default: 0)")
    run.add_argument("--require-inputs", action="store_true",
                     help="a missing input is an error (default: drawn at random, a warning)")
    run.add_argument("-o", dest="output", metavar="OUT.npz",
                     help="write outputs out0, out1, ... (default: not written)")
    _add_program_options(run)
    _add_machine(run)
    run.add_argument("--chips", type=int, default=1,
                     help="chips to run on (default: 1; with --mesh, the mesh's product)")
    run.add_argument("--mesh", help="shard a .zt program over named axes, e.g. tp=8 or "
                     "dp=2,tp=4 (their product: the chips; default: none)")
    run.add_argument("--overlap-chunks", type=int, metavar="N",
                     help="with --mesh: compute and all-reduce each all-reduce's row-wise "
                          "region in N row chunks, overlapped (1: no overlap; default: "
                          "as many as the alpha-beta cost prefers)")
    run.add_argument("-O", dest="opt", choices=["0", "1", "2"], default="2",
                     help="optimisation level: -O0 one kernel per op, -O1/-O2 fused "
                          "(default: -O2)")
    run.add_argument("--reference", action="store_true",
                     help="run the numpy reference evaluator instead of the chip (default: off)")
    run.add_argument("--check", action="store_true",
                     help="compare the outputs with the reference evaluator; exit 1 beyond "
                          "the tolerance (default: off)")
    run.add_argument("--report", metavar="REPORT.json",
                     help="write the run's report as JSON, '-' for stdout (default: none)")
    run.add_argument("--trace", metavar="TRACE.json",
                     help="write a Chrome/Perfetto trace, '-' for stdout (default: none)")
    run.add_argument("--timing-only", action="store_true",
                     help="simulate the cycles without the math: no inputs, no outputs "
                          "(default: off)")
    run.add_argument("--no-fast-forward", action="store_true",
                     help="with --timing-only, simulate every loop iteration instead of "
                          "skipping ahead over steady states (default: off)")
    run.add_argument("--max-instructions", type=int, default=None,
                     help="stop a runaway program after this many instructions (default: 50 "
                          "million in all and 2**18 in a row with no engine work; N sets both)")
    _add_schedule_options(run)
    run.add_argument("--tune", action="store_true",
                     help="search tile sizes on the timing model (default: off)")
    run.add_argument("--disable-pass", action="append", default=[], metavar="PASS",
                     help="leave a graph pass out (repeatable, or comma-separated; default: "
                          "none)")
    run.add_argument("--remarks", action="store_true",
                     help="print the optimisation remarks (as `zhenwu explain`) on stderr "
                          "(default: off)")

    comp = sub.add_parser("compile", help="compile a .zt program (or .ir Graph IR text)")
    comp.add_argument("program", help="prog.zt, or Graph IR text as `zhenwu ir` prints (.ir)")
    comp.add_argument("-o", dest="output", metavar="OUT",
                      help="the output file, '-' for stdout (default: stdout)")
    comp.add_argument("--emit", choices=["graph", "kernels", "asm", "bin"], default="asm",
                      help="what to write: the Graph IR after the passes, the Kernel IR, M890 "
                           "assembly or its binary (default: asm)")
    _add_program_options(comp)
    _add_machine(comp)
    comp.add_argument("-O", dest="opt", choices=["0", "1", "2"], default="2",
                      help="optimisation level: -O0 one kernel per op, -O1/-O2 fused "
                           "(default: -O2)")
    _add_schedule_options(comp)
    comp.add_argument("--tune", action="store_true",
                      help="search tile sizes on the timing model (default: off)")
    comp.add_argument("--disable-pass", action="append", default=[], metavar="PASS",
                      help="leave a graph pass out (repeatable, or comma-separated; default: "
                           "none)")
    comp.add_argument("--remarks", action="store_true",
                      help="print the optimisation remarks (without the per-kernel bytes of "
                           "a run) on stderr (default: off)")

    explain = sub.add_parser("explain", help="where each op went and why a fusion did not "
                             "happen (optimisation remarks)")
    explain.add_argument("program", help="prog.zt, or Graph IR text (.ir)")
    _add_program_options(explain)
    _add_machine(explain)
    explain.add_argument("-O", dest="opt", choices=["0", "1", "2"], default="2",
                         help="optimisation level (default: -O2)")
    explain.add_argument("--disable-pass", action="append", default=[], metavar="PASS",
                         help="leave a graph pass out (repeatable; default: none)")
    explain.add_argument("--json", action="store_true",
                         help="print JSON instead of text (default: off)")
    explain.add_argument("--no-run", action="store_true",
                         help="do not simulate: no per-kernel cycles and bytes (default: run "
                              "timing-only)")

    ir = sub.add_parser("ir", help="print the Graph IR of a .zt program")
    ir.add_argument("program", help="prog.zt, or Graph IR text (.ir)")
    _add_program_options(ir)
    ir.add_argument("--print-ir-after-all", action="store_true",
                    help="print the IR after the frontend and after every pass (default: off)")
    ir.add_argument("--print-ir-after", action="append", default=[], metavar="PASS",
                    help="print the IR after this pass (repeatable; default: none)")
    ir.add_argument("--passes",
                    help="comma-separated pass pipeline, or 'default' (default: no passes, "
                         "or the default pipeline with the options above)")
    ir.add_argument("--disable-pass", action="append", default=[], metavar="PASS",
                    help="leave a graph pass out (repeatable, or comma-separated; default: "
                         "none)")
    ir.add_argument("--time-passes", action="store_true",
                    help="print each pass's time to stderr (default: off)")
    ir.add_argument("--dot", metavar="GRAPH.dot",
                    help="write the graph for Graphviz, '-' for stdout (default: none)")
    ir.add_argument("--chips", type=int, default=1,
                    help="print the per-chip SPMD IR for this many chips (with --mesh; "
                         "default: 1)")
    ir.add_argument("--mesh", help="the mesh for --chips, e.g. tp=8 or dp=2,tp=4 (default: none)")
    ir.add_argument("--overlap-chunks", type=int, metavar="N",
                    help="with --chips: print the SPMD IR with each all-reduce's row-wise "
                         "region in N row chunks, as `run` overlaps them (default: as printed "
                         "before the overlap)")
    _add_machine(ir)

    asm = sub.add_parser("asm", help="assemble M890 assembly to a binary")
    asm.add_argument("program", help="M890 assembly (.s)")
    asm.add_argument("-o", dest="output", required=True, help="the binary to write (required)")
    _add_machine(asm)

    disasm = sub.add_parser("disasm", help="disassemble an M890 binary")
    disasm.add_argument("program", help="an M890 binary (.bin)")
    disasm.add_argument("-o", dest="output", help="the assembly to write (default: stdout)")

    machines = sub.add_parser("machines", help="print the machine descriptions")
    machines.add_argument("--machine", action="append", default=[],
                          help="a built-in name or a .toml file (default: all built-in)")
    machines.add_argument("--json", action="store_true",
                          help="print JSON instead of a table (default: off)")

    bench = sub.add_parser("bench", help="run the benchmark suite in samples/bench/ (a name "
                           "may be a group: a subdirectory, e.g. attention_forms)")
    bench.add_argument("names", nargs="*",
                       help="benchmarks or groups to run (default: the main suite)")
    _add_machine(bench)
    bench.add_argument("--json", action="store_true",
                       help="print JSON instead of a table (default: off)")
    bench.add_argument("-O", dest="opt", choices=["0", "1", "2"], default="2",
                       help="optimisation level (default: -O2)")
    bench.add_argument("-j", "--jobs", type=int, default=0,
                       help="benchmarks run at once (default: one per host CPU)")
    bench.add_argument("--chips", type=int, default=0,
                       help="chips for 'bench collectives' (default: one node)")
    bench.add_argument("--compile", action="store_true",
                       help="time fresh-process compiles instead of simulating (median of "
                            "--repeat runs; adds a 512-wide MLP and a 1,000-op chain)")
    bench.add_argument("--repeat", type=int, default=5,
                       help="with --compile: compiles per program (default: 5)")

    validate = sub.add_parser("validate",
                              help="simulate operators measured on a real chip and compare")
    validate.add_argument("--machine", default="a100",
                          help="a machine with measurements in isa/machines/validation/ "
                               "(default: a100)")
    validate.add_argument("--json", action="store_true",
                          help="print JSON instead of a table (default: off)")
    validate.add_argument("-j", "--jobs", type=int, default=0,
                          help="points simulated at once (default: one per host CPU)")
    validate.add_argument("--fit", action="store_true",
                          help="print the host time per operator that fits best (default: off)")
    validate.add_argument("--op", action="append", default=[], metavar="OP",
                          help="only this operator type (matmul, softmax, layernorm, gelu); "
                               "repeatable (default: all)")

    imp = sub.add_parser("import", help="write an ONNX model as a .zt program")
    imp.add_argument("model", help="model.onnx")
    imp.add_argument("-o", dest="output", metavar="OUT.zt",
                     help="the program (default: standard output)")
    imp.add_argument("--weights", metavar="WEIGHTS.npz",
                     help="where the initializers go (default: beside the program)")

    coll = sub.add_parser("collective", help="the alpha-beta time of a collective on N chips")
    coll.add_argument("kind", help="allreduce, allgather, reducescatter or alltoall")
    coll.add_argument("--chips", type=int, required=True, help="how many chips (required)")
    coll.add_argument("--size", required=True,
                      help="bytes, e.g. 1GiB, 64MiB, 4KiB (required)")
    coll.add_argument("--algorithm",
                      help="direct, oneshot, ring, rhd; across nodes ring or rhd (default: "
                      "the fastest)")
    coll.add_argument("--simulate", action="store_true",
                      help="also lower it and simulate it (at most 64 chips; default: off)")
    coll.add_argument("--json", action="store_true",
                      help="print JSON instead of a table (default: off)")
    _add_machine(coll)

    fuzz = sub.add_parser("fuzz", help="a differential fuzzing campaign")
    fuzz.add_argument("--seconds", type=_positive_seconds, default=60,
                      help="how long the campaign runs (default: 60)")
    fuzz.add_argument("--seed", type=int, default=0,
                      help="seed of the program generator (default: 0)")
    fuzz.add_argument("--out", default="fuzz-out",
                      help="directory for the failing programs (default: fuzz-out)")
    fuzz.add_argument("--bisect", action="store_true",
                      help="find the pass that breaks each failing program (default: off)")
    fuzz.add_argument("--bad-inputs", action="store_true",
                      help="run mutated assembly, binaries, machine files, input files, .zt "
                           "programs and odd flags through zhenwu instead: every one must end "
                           "with exit status 0-3, no traceback, in bounded time (default: off)")

    from zhenwu.compiler.commands.serve import add_parser as add_serve_parser

    add_serve_parser(sub, _add_machine)
    return parser


# command name -> module under compiler/commands/ holding `run(args) -> int`
_COMMANDS = {
    "run": "run", "compile": "compile", "ir": "ir", "asm": "isa_tools", "disasm": "isa_tools",
    "machines": "isa_tools", "bench": "bench", "fuzz": "fuzz", "validate": "validate",
    "import": "import_model", "collective": "collective", "serve": "serve",
    "explain": "explain",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        module = importlib.import_module(f"zhenwu.compiler.commands.{_COMMANDS[args.command]}")
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("zhenwu.compiler.commands"):
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
