"""The backend pipeline: Graph IR function -> Kernel IR -> M890 program.

Stages, in order (each has a text form): graph passes (the frontend's default pipeline,
including `decompose`, which at -O1/-O2 keeps whole the ops a fused lowering claims), `lower` (one kernel per non-view op, tiled for the machine), `hbm`
(addresses), `codegen` (an `isa` Program, built directly: its assembly text is printed
from it only when asked for, `CompiledProgram.asm_text`).

At `-O1`/`-O2` the `fuse` pass (compiler/passes/fuse.py) groups the ops and `lower` builds
one kernel per group (compiler/backend/fusion.py); `-O0` keeps one kernel per op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from zhenwu.compiler.backend.codegen import generate_program
from zhenwu.compiler.backend.hbm import plan_hbm
from zhenwu.compiler.backend.kernel_ir import KernelProgram, print_kernels
from zhenwu.compiler.backend.lower import lower_function
from zhenwu.compiler.backend.merge import merge_all, merge_independent


@dataclass(frozen=True)
class CompileOptions:
    """Everything that changes the compiled code (hashable: it can key a cache)."""

    opt_level: int = 2
    disabled_passes: tuple[str, ...] = ()
    tune: bool = False
    tune_candidates: int = 4     # tilings tried per matrix product: the model's and 3 more
    persistent: bool = False     # every kernel as one (compiler/backend/merge.py)
    # row kernels (softmax, norms) as several passes over the rows, each reading them again:
    # one per reduction, then one recomputing the output (as GPU libraries' one-block-per-row
    # kernels do; `zhenwu validate` simulates PyTorch's softmax so). Default: rows read once.
    multipass_rows: bool = False


@dataclass
class CompiledProgram:
    """The result of `compile_function`: every stage's output."""

    graph: object                # the Graph IR after the graph passes
    kernels: KernelProgram       # planned Kernel IR (tensors have addresses)
    program: object              # isa.program.Program
    spans: dict = field(default_factory=dict)

    @cached_property
    def asm_text(self) -> str:
        """The program's assembly text (`isa.asm.print_program`; parses back to it)."""
        from zhenwu.isa.asm_print import print_program

        return print_program(self.program)

    @property
    def kernel_count(self) -> int:
        return len(self.kernels.kernels)

    @property
    def kernels_text(self) -> str:
        return print_kernels(self.kernels)

    def program_inputs(self, inputs: dict) -> dict:
        """Graph inputs (by parameter name) shaped as the program's tensors (a scalar is a
        one-element tensor in GM)."""
        import numpy as np

        shapes = {t.name: t.shape for t in self.program.tensors}
        return {name: np.reshape(value, shapes[name]) if name in shapes else value
                for name, value in inputs.items()}

    def graph_outputs(self, result) -> list:
        """The run's outputs in order, shaped as the graph's outputs."""
        import numpy as np

        values = list(result.outputs.values())
        return [np.reshape(v, out.type.shape) for v, out in zip(values, self.graph.outputs)]


def fuses(options: CompileOptions) -> bool:
    """Whether `options` lower through fused kernels (-O1/-O2 with `fuse` enabled)."""
    return options.opt_level >= 1 and "fuse" not in options.disabled_passes


def graph_passes(fn, options: CompileOptions, machine=None):
    """The frontend's default graph pipeline (decompose and friends) for `options`. When
    the fused lowering runs, `decompose` keeps whole the ops one of its lowerings claims on
    `machine` (lowering by legality, compiler/backend/groups.py); -O0 lowers primitives."""
    from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline

    target = None
    if machine is not None and fuses(options):
        from zhenwu.compiler.backend.groups import FusedTarget

        target = FusedTarget(machine)
    out = run_pipeline(fn, default_graph_pipeline(target), disabled=options.disabled_passes)
    if target is not None:  # `fuse` asks it again (also when `decompose` was disabled)
        out.attrs.setdefault("target", target)
    return out


def compile_function(fn, machine, options: CompileOptions = CompileOptions(), measure=None
                     ) -> CompiledProgram:
    """Compile a Graph IR function for `machine`; CompileError when it cannot fit.

    `measure(program, machine) -> cycles` is the timing model `options.tune` searches with
    (the backend does not import the runtime: the caller injects it)."""
    from zhenwu.compiler.shard.annotations import strip_pins

    graph = graph_passes(strip_pins(fn), options, machine)
    if fuses(options):
        from zhenwu.compiler.backend.fusion import lower_fused
        from zhenwu.compiler.passes.fuse import fuse_function

        # `graph` holds primitives and the ops a fused lowering claimed whole (conv2d,
        # maxpool2d: `decompose` asked compiler/backend/groups.py)
        fused, plan = fuse_function(graph)
        tiles = {}
        if options.tune:
            from zhenwu.compiler.backend.tune import tune_gemm_tiles

            if measure is None:
                raise ValueError("compile_function: tune=True needs a measure callable")
            tiles = tune_gemm_tiles(fused, machine, plan, options, measure)
        tensors, kernels, spans = lower_fused(fused, machine, plan, tiles,
                                              multipass_rows=options.multipass_rows)
        kernels = merge_independent(kernels)   # horizontal fusion
    else:
        tensors, kernels, spans = lower_function(graph, machine)
    if options.persistent:
        kernels = merge_all(kernels)
    _check_tile_steps(kernels, graph)
    for param in graph.params:  # an input that does not fit points at its declaration
        if param.span is not None:
            spans.setdefault(param.name, param.span)
    planned = plan_hbm(KernelProgram(tuple(tensors), tuple(kernels)), machine.hbm_bytes, spans)
    program = _generate(planned, machine, graph)
    return CompiledProgram(graph, planned, program, spans)


def _generate(planned: KernelProgram, machine, graph):
    """`generate_program`; a kernel that needs more registers or events than a core has
    is a CompileError at its first source op."""
    from zhenwu.compiler.backend.allocators import ResourceError

    try:
        return generate_program(planned, machine.name, machine.cores)
    except ResourceError as err:
        if err.span is None:
            spans = {op.id: op.span for op in graph.ops}
            err.span = next((spans[i] for i in err.op_ids
                             if spans.get(i) is not None), None)
        raise


# More tile steps than any simulation runs (the interpreter stops a program after 50 million
# instructions by default, and a tile step takes several): such a kernel is refused at its
# source op instead of running for hours (`sum(broadcast_to(x, [2**62]))`).
MAX_TILE_STEPS = 1 << 31


def _check_tile_steps(kernels, graph) -> None:
    from math import prod

    from zhenwu.isa.errors import CompileError

    spans = {op.id: op.span for op in graph.ops}
    for kernel in kernels:
        steps = sum(prod(nest.grid) for nest in kernel.nests)
        if steps > MAX_TILE_STEPS:
            span = next((spans[i] for i in kernel.op_ids if spans.get(i) is not None), None)
            raise CompileError(
                f"kernel '{kernel.name}' needs {steps:,} tile steps, more than the "
                f"{MAX_TILE_STEPS:,} a simulation can run: make the tensors smaller", span)

