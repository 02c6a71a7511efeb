"""`zhenwu ir prog.zt`: check a program, run graph passes, print the Graph IR.

Plain `zhenwu ir prog.zt` prints the IR straight from the checker. `--passes a,b` runs those
passes (`--passes default`: the default graph pipeline, the IR the backend receives), and
so do `--print-ir-after-all` / `--print-ir-after PASS` (print the IR between passes),
`--time-passes` (the time of each pass, to stderr) and `--disable-pass P` (skip a pass),
which imply the default pipeline when `--passes` is not given.
`--dot FILE` writes the final graph for Graphviz (`--dot -`: to standard output, instead of
the IR). A `.ir` file (Graph IR text, as printed here) is read back instead of a `.zt`
program, so any stage can be fed in again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zhenwu.compiler.frontend import load_program, read_source
from zhenwu.compiler.graph.ir import Function, to_dot
from zhenwu.compiler.graph.parser import parse_function
from zhenwu.compiler.graph.printer import print_function
from zhenwu.compiler.inputs import parse_shape_options
from zhenwu.compiler.passes import default_graph_pipeline, get_pass, parse_pipeline, run_pipeline
from zhenwu.isa.errors import InputError, UsageError


def read_program(args) -> Function:
    """A `.zt` program, or Graph IR text (`.ir`, as printed by this command) read back."""
    if Path(args.program).suffix == ".ir":
        return parse_function(read_source(args.program), args.program)
    return load_program(args.program, entry=args.entry, shapes=parse_shape_options(args.shape))


def run(args) -> int:
    """`zhenwu ir`: print the Graph IR after the requested passes."""
    fn = read_program(args)
    # `--disable-pass cse,dce` as `zhenwu run` takes it
    args.disable_pass = [name.strip() for option in args.disable_pass
                         for name in option.split(",") if name.strip()]
    if getattr(args, "chips", 1) != 1 or getattr(args, "mesh", None) or "mesh" in fn.attrs:
        return _print_spmd(fn, args)
    wants_passes = (args.print_ir_after_all or args.print_ir_after or args.time_passes
                    or args.disable_pass)
    if args.passes is not None:
        passes = parse_pipeline(args.passes)
    else:
        passes = default_graph_pipeline() if wants_passes else []
        if "fuse" in args.print_ir_after:
            # -O2's grouping into kernels, after the graph passes as -O2 runs them: keeping
            # whole the ops a fused lowering claims on the machine (lowering by legality)
            from zhenwu.compiler.backend.groups import FusedTarget
            from zhenwu.isa.machine import load_machine

            target = FusedTarget(load_machine(getattr(args, "machine", None) or "m890"))
            passes = default_graph_pipeline(target) + [get_pass("fuse")]
    for name in list(args.print_ir_after) + list(args.disable_pass):
        get_pass(name)  # unknown names are usage errors
    timings: list[tuple[str, float]] = []
    out = sys.stdout

    if args.print_ir_after_all:
        out.write("// ----- IR after the frontend -----\n")
        out.write(print_function(fn))

    def after_pass(graph_pass, fn_after, seconds):
        timings.append((graph_pass.name, seconds))
        if args.print_ir_after_all or graph_pass.name in args.print_ir_after:
            out.write(f"// ----- IR after {graph_pass.name} -----\n")
            out.write(print_function(fn_after))
            if "fusion" in fn_after.attrs:
                out.write(fn_after.attrs["fusion"].format(fn_after))

    fn = run_pipeline(fn, passes, callback=after_pass, disabled=args.disable_pass)
    if not (args.print_ir_after_all or args.print_ir_after or args.dot == "-"):
        out.write(print_function(fn))
    if args.time_passes:
        total = sum(seconds for _, seconds in timings)
        lines = ["pass                 time (ms)"]
        lines += [f"{name:<20} {seconds * 1e3:9.3f}" for name, seconds in timings]
        lines.append(f"{'total':<20} {total * 1e3:9.3f}")
        print("\n".join(lines), file=sys.stderr)
    if args.dot == "-":
        out.write(to_dot(fn))
    elif args.dot:
        try:
            Path(args.dot).write_text(to_dot(fn))
        except OSError as err:
            raise InputError(f"{args.dot}: cannot write ({err})") from None
    return 0


def _print_spmd(fn: Function, args) -> int:
    """`zhenwu ir --chips N [--mesh ...]`: the SPMD Graph IR every chip runs (local shapes,
    collectives as ops) and the sharding of each parameter and result."""
    from zhenwu.compiler.shard import resolve_mesh, shard_function

    mesh = resolve_mesh(fn, args.mesh, args.chips)
    spmd = shard_function(fn, mesh)
    out = sys.stdout
    out.write(f"// SPMD IR on each of {mesh.chips} chips, mesh {mesh}\n")
    for param, spec in zip(fn.params, spmd.param_specs):
        out.write(f"// param {param.name}: {param.type} sharded {spec}\n")
    for index, (value, spec) in enumerate(zip(fn.outputs, spmd.result_specs)):
        out.write(f"// result {index}: {value.type} sharded {spec}\n")
    shown = spmd.fn
    if args.overlap_chunks is not None:
        from zhenwu.compiler.shard.overlap import overlap_function
        from zhenwu.isa.machine import load_machine

        if args.overlap_chunks < 1:
            raise UsageError(f"--overlap-chunks {args.overlap_chunks}: at least 1")
        machine = load_machine(getattr(args, "machine", None) or "m890")
        shown, regions = overlap_function(spmd.fn, mesh, machine, mesh.chips,
                                          chunks=args.overlap_chunks)
        for region in regions:
            out.write(f"// overlap: {region.all_reduces} all-reduce(s) with "
                      f"{len(region.ops)} ops in {region.chunks} row chunks\n")
    out.write(print_function(shown))
    kinds = [f"{op.kind}({op.attrs['axis']})" for op in spmd.collectives]
    out.write(f"// collectives: {', '.join(kinds) or 'none'}\n")
    return 0
