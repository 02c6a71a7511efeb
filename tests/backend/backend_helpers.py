"""Helpers for the backend tests: compile a `.zt` text, run it on the interpreter (every
trap check on), and compare each output with the reference evaluator."""

from __future__ import annotations

import functools


@functools.cache
def machine(name: str = "m890"):
    from zhenwu.isa.machine import load_machine

    return load_machine(name)


def compile_and_run(source: str, *, machine_name: str = "m890", opt_level: int = 0,
                    seed: int = 0, shapes: dict[str, int] | None = None,
                    persistent: bool = False, multipass_rows: bool = False,
                    cores: int | None = None):
    """(fn, compiled, result, reference outputs); asserts every output is within tolerance.
    `cores`: the machine cut to that many cores (several tiles per core at a small size)."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.check import relative_error
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.graph.dtypes import tolerance
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.runtime import run_program

    fn = load_program("test.zt", text=source, shapes=shapes or {})
    inputs = prepare_inputs(fn, {}, seed)
    target = machine(machine_name)
    if cores is not None:
        from dataclasses import replace

        target = replace(target, cores=cores)
    compiled = compile_function(fn, target, CompileOptions(opt_level=opt_level,
                                                           persistent=persistent,
                                                           multipass_rows=multipass_rows))
    result = run_program(compiled.program, target, compiled.program_inputs(inputs))
    want = evaluate(fn, inputs)
    got = compiled.graph_outputs(result)
    assert len(got) == len(want)
    for index, (g, w, value) in enumerate(zip(got, want, fn.outputs)):
        assert g.shape == w.shape, f"out{index}: shape {g.shape} vs {w.shape}"
        err = relative_error(g, w)
        tol = tolerance(value.type.dtype)
        assert err <= tol, (f"out{index} ({value.type}): relative error {err:.3g} > {tol:g}\n"
                            f"got {g!r}\nwant {w!r}")
    return fn, compiled, result, want


def conv_nest(compiled):
    """The first nest of the compiled program's conv kernel."""
    kernel = next(k for k in compiled.kernels.kernels if k.name.startswith("conv"))
    return kernel.nests[0]

