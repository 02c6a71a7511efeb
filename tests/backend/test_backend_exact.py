"""Exact numerics on every pipeline: integer products (no f32 on the way), casts folded into
operand loads only where they keep every value, and NaN through max/min/argmax as numpy has
it. Each program runs at -O0 and -O2 on given inputs and must equal the reference (integer and
bool outputs bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest

from backend_helpers import machine


def run_both(source: str, inputs: dict, machine_name: str = "m890") -> list:
    """Compile at -O0 and -O2, run, and assert each output matches the reference (exactly for
    integer and bool outputs); the compiled programs' assembly, by opt level."""
    from compiler.backend.pipeline import CompileOptions, compile_function
    from compiler.check import check_output
    from compiler.frontend import load_program
    from compiler.reference import evaluate
    from runtime import run_program

    fn = load_program("test.zt", text=source)
    want = evaluate(fn, inputs)
    target = machine(machine_name)
    asm = []
    for level in (0, 2):
        compiled = compile_function(fn, target, CompileOptions(opt_level=level))
        result = run_program(compiled.program, target, compiled.program_inputs(inputs))
        for index, (got, ref, value) in enumerate(zip(compiled.graph_outputs(result), want,
                                                      fn.outputs)):
            passes, summary = check_output(fn, value, got, ref)
            assert passes, f"-O{level} out{index}: {summary}"
        asm.append(compiled.asm_text)
    return asm


def nan_rows(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    for row in range(0, flat.shape[0], 2):  # every other row gets NaNs, the rest none
        cols = rng.choice(shape[-1], size=2, replace=False)
        flat[row, cols] = np.nan
    return x


@pytest.mark.parametrize("shape", [(4, 6), (3, 700), (40, 33)])
def test_argmax_max_min_with_nan_follow_numpy(shape):
    x = nan_rows(shape)
    run_both(f"""
    fn main(x: f32[{shape[0]}, {shape[1]}]) -> (i32[{shape[0]}], i32[{shape[1]}], i32[],
            f32[{shape[0]}], f32[{shape[1]}], f32[], f32[{shape[0]}]) {{
        return argmax(x, axis=-1), argmax(x, axis=0), argmax(x), max(x, axis=-1),
               min(x, axis=0), max(x), min(x, axis=1)
    }}""", {"x": x})


def test_softmax_rows_with_nan_are_nan_and_the_others_are_not():
    x = nan_rows((8, 96))
    run_both("""
    fn main(x: f32[8, 96]) -> (f32[8, 96], i32[8]) {
        return softmax(x, axis=-1), argmax(log_softmax(x, axis=-1), axis=-1)
    }""", {"x": x})
