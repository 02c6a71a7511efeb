"""Map and row kernels at -O2 keep only the tiles live at once (issue 14 item 6): a vector op
overwrites an operand tile that dies with it, a step's load tile may hold values computed
from it (never a stored one), map tiles are budgeted by their real buffers, and a row kernel
keeps bf16/f16 values in f32 (loaded widened, narrowed at the store; an explicit narrowing
cast still rounds). Each program runs on a small machine with several tiles per core (the
race detector on) and is compared with the reference evaluator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from zhenwu.compiler.backend.kernel_ir import Load, Store, Vec


def _small_machine():
    """Four cores with 96 KiB of L1: small programs make several tiles per core."""
    from zhenwu.isa.machine import load_machine

    return replace(load_machine("m890"), l1_bytes=96 * 1024, cores=4)


def _run(source: str, machine=None):
    """(fn, compiled, outputs, reference outputs), every output checked by the `--check` rule."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.check import check_output
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.runtime import run_program

    fn = load_program("test.zt", text=source)
    inputs = prepare_inputs(fn, {}, 0)
    target = machine or _small_machine()
    compiled = compile_function(fn, target, CompileOptions(opt_level=2))
    result = run_program(compiled.program, target, compiled.program_inputs(inputs))
    want = evaluate(fn, inputs)
    got = compiled.graph_outputs(result)
    for index, (g, w, value) in enumerate(zip(got, want, fn.outputs)):
        passes, summary = check_output(fn, value, g, w)
        assert passes, f"out{index}: {summary}"
    return fn, compiled, got, want


def _nest(compiled):
    assert compiled.kernel_count == 1
    return compiled.kernels.kernels[0].nests[0]


def _tile_buffers(nest) -> list:
    """The nest's buffers of the tile's full shape."""
    rows, cols = int(np.prod(nest.tile[:-1])), nest.tile[-1]
    return [b for b in nest.buffers if (b.rows, b.cols) == (rows, cols)]


def test_softmax_runs_in_the_load_tile_and_one_output_tile():
    _, compiled, _, _ = _run("fn main(x: f32[96, 300]) -> f32[96, 300] {\n"
                             "    return softmax(x, axis=-1)\n}\n")
    nest = _nest(compiled)
    assert nest.parallel_tiles >= 3 * 4
    # x - max and exp(...) overwrite the load tile; the division writes the stored tile
    assert len(_tile_buffers(nest)) == 2
    loaded = {s.dst for s in nest.step if isinstance(s, Load)}
    stored = {s.src for s in nest.final if isinstance(s, Store)}
    assert not loaded & stored


def test_an_operand_still_read_later_is_not_overwritten():
    # x is read again by the subtraction: the FMA and the gelu may not write its tile
    _, compiled, _, _ = _run("fn main(x: f32[64, 512], s: f32[512], t: f32[512]) -> "
                             "f32[64, 512] {\n    return gelu(x * s + t) - x\n}\n")
    nest = _nest(compiled)
    load = next(s.dst for s in nest.step if isinstance(s, Load) and s.dst
                in {b.name for b in _tile_buffers(nest)})
    writes = [s for s in nest.step if isinstance(s, Vec)]
    assert all(v.dst != load for v in writes)
    assert len(_tile_buffers(nest)) == 2


def test_map_tile_is_budgeted_by_its_real_buffers():
    from zhenwu.isa.machine import load_machine

    m890 = load_machine("m890")
    _, compiled, _, _ = _run("fn main(x: f32[256, 8192], s: f32[8192], t: f32[8192]) -> "
                             "f32[256, 8192] {\n    return gelu(x * s + t) - x\n}\n", m890)
    nest = _nest(compiled)
    # two tile buffers of two copies (x, the result) and s, t once per core
    row = 8192 * 4
    assert nest.tile[-1] == 8192
    assert nest.tile[-2] == min((m890.l1_bytes - 2 * row) // (4 * row), 256 // m890.cores)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_a_row_kernel_keeps_narrow_values_in_f32(dtype):
    _, compiled, _, _ = _run(
        f"fn main(x: {dtype}[128, 384], g: f32[384], b: f32[384]) -> {dtype}[128, 384] {{\n"
        f"    return cast(layernorm(x, g, b, eps=1e-5), {dtype})\n}}\n")
    nest = _nest(compiled)
    assert nest.parallel_tiles >= 3 * 4
    # the DMA widens x and narrows the result: no conversion of a whole tile
    full = {b.name for b in _tile_buffers(nest)}
    converts = [s for s in nest.step if isinstance(s, Vec) and s.op.startswith("CVT")]
    assert converts and all(s.dst not in full for s in converts)
    assert all(b.dtype == "f32" for b in _tile_buffers(nest))
    # x, d (in x's tile) and the result: two tile buffers
    assert len(_tile_buffers(nest)) == 2


def test_an_explicit_narrowing_cast_in_a_row_kernel_still_rounds():
    # the residual of rounding to bf16 is exactly what widening must not lose
    _, _, got, want = _run(
        "fn main(x: f32[64, 256]) -> (f32[64, 256], f32[64, 1]) {\n"
        "    r = x - cast(cast(x, bf16), f32)\n"
        "    return r * 3.0, sum(r, axis=-1, keepdims=true)\n}\n")
    assert np.abs(want[0]).max() > 0
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("step", ["where(y > 0.25, y, 0.0)", "floor(y)"])
def test_a_step_function_of_a_narrow_value_keeps_the_row_kernel_narrow(step):
    # widened, y would not be rounded before the comparison (or floor) and could land on the
    # other side of it than in the reference: the kernel computes in bf16 as the reference
    _, compiled, _, _ = _run(
        "fn main(x: bf16[96, 256]) -> bf16[96, 256] {\n"
        f"    y = x * 1.37\n    m = {step}\n"
        "    return m - max(m, axis=-1, keepdims=true)\n}\n")
    nest = _nest(compiled)
    assert "bf16" in {b.dtype for b in _tile_buffers(nest)}
    assert "f32" not in {b.dtype for b in _tile_buffers(nest)}


def test_a_row_too_long_for_l1_keeps_a_real_tile_in_its_map_pass():
    # the last pass reads g and b in pieces of its tile's width, not whole rows of 32768
    _, compiled, _, _ = _run(
        "fn main(x: bf16[8, 32768], g: f32[32768], b: f32[32768]) -> bf16[8, 32768] {\n"
        "    return cast(layernorm(x, g, b), bf16)\n}\n")
    nests = compiled.kernels.kernels[0].nests
    assert len(nests) == 3
    assert nests[-1].tile[-1] >= 1024
