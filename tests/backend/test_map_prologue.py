"""The map-prologue matmul (compiler/passes/prologue_gemm_match.py, backend/gemm_prologue.py),
the resident rows of the prologue kernels, and independent nests without chip barriers
(backend/codegen.py): what is taken, what is refused, kernel counts and cycles, and the
numbers against the reference with several tiles per core (the race detector runs on every
functional run)."""

from __future__ import annotations

import re

import pytest
from backend_helpers import compile_and_run
from zhenwu.compiler.backend.kernel_ir import Load
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline
from zhenwu.compiler.passes.fuse import plan_fusion

# SwiGLU at a decode step's batch, as serving stacks and users write it; the down product
# has 2048 output columns (64 tiles of 32: two per core) and K = F
FUSED = """
fn main(x: bf16[R, 256], w_gate_up: bf16[2 * F, 256], w_down: bf16[2048, F]) -> bf16[R, 2048] {
    gu = x @ transpose(w_gate_up)
    return (silu(gu[:, :F]) * gu[:, F:]) @ transpose(w_down)
}
"""
SWAPPED = """
fn main(x: bf16[R, 256], wg: bf16[256, F], wu: bf16[256, F], w_down: bf16[2048, F]) -> f32[R, 2048] {
    return cast(((x @ wu) * silu(x @ wg)) @ transpose(w_down), f32)
}
"""
SIGMOID = """
fn main(x: bf16[R, 256], wg: bf16[256, F], wu: bf16[256, F], w_down: bf16[2048, F]) -> bf16[R, 2048] {
    g = x @ wg
    return (g * sigmoid(g) * (x @ wu)) @ transpose(w_down)
}
"""
FORMS = {"fused gate/up": FUSED, "up * silu(gate)": SWAPPED, "g * sigmoid(g) * u": SIGMOID}


def decisions(source: str, shapes: dict) -> list[str]:
    fn = run_pipeline(load_program("t.zt", text=source, shapes=shapes), default_graph_pipeline())
    return list(plan_fusion(fn).decisions)


def down_nest(compiled):
    return compiled.kernels.kernels[-1].nests[0]


@pytest.mark.parametrize("name", sorted(FORMS))
@pytest.mark.parametrize("rows", [1, 3])
def test_swiglu_is_the_down_products_prologue(name, rows):
    """Resident form (F = 2048: four k tiles of 512): the map runs once per core in the
    setup; the steps load only B. Two kernels: the gate/up product(s), then the down."""
    shapes = {"R": rows, "F": 2048}
    assert any("map-prologue matmul" in d for d in decisions(FORMS[name], shapes))
    _, compiled, result, _ = compile_and_run(FORMS[name], opt_level=2, shapes=shapes)
    assert len(compiled.kernels.kernels) == 2
    nest = down_nest(compiled)
    assert nest.parallel_tiles >= 2 * 32, nest.grid   # several tiles per core
    assert nest.reduction_steps >= 2
    assert {b.name for b in nest.buffers} >= {"P0", "P1", "A"}
    assert [s.dst for s in nest.step if isinstance(s, Load)] == ["b"]
    assert len(result.report.kernels) == 2


def test_stepped_form_when_k_tiles_do_not_cut_k():
    """F = 1040 is not a whole number of k tiles: each step computes its A tile instead."""
    shapes = {"R": 2, "F": 1040}
    _, compiled, _, _ = compile_and_run(FUSED, opt_level=2, shapes=shapes)
    assert len(compiled.kernels.kernels) == 2
    loads = [s.dst for s in down_nest(compiled).step if isinstance(s, Load)]
    assert loads == ["a", "b", "p0", "p1"]


def test_one_kernel_and_cycles_fewer_than_the_map_kernel():
    from zhenwu.compiler.passes import fuse

    shapes = {"R": 1, "F": 2048}
    _, fused, fused_run, _ = compile_and_run(FUSED, opt_level=2, shapes=shapes)
    saved = fuse.KERNEL_MATCHERS.pop("matmul@map")
    try:
        _, plain, plain_run, _ = compile_and_run(FUSED, opt_level=2, shapes=shapes)
    finally:
        fuse.KERNEL_MATCHERS["matmul@map"] = saved
    assert len(plain.kernels.kernels) == 3 and len(fused.kernels.kernels) == 2
    assert fused_run.report.cycles < plain_run.report.cycles


def test_a_map_of_a_program_input_is_taken():
    source = """
fn main(h: bf16[1, 1024], w: bf16[2048, 1024]) -> bf16[1, 2048] {
    return relu(h) @ transpose(w)
}"""
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert len(compiled.kernels.kernels) == 1


REFUSED = {
    # many rows: every n tile would redo the map's vector work
    "many rows": ("""
fn main(g: bf16[8, 512], u: bf16[8, 512], w: bf16[512, 512]) -> bf16[8, 512] {
    return (silu(g) * u) @ w
}""", "A has 8 rows"),
    # a broadcast operand (a bias row) is not one of A's tiles
    "broadcast row": ("""
fn main(g: bf16[1, 512], b: bf16[512], u: bf16[1, 512], w: bf16[512, 512]) -> bf16[1, 512] {
    return (silu(g + b) * u) @ w
}""", "an operand of the map is bf16[512]"),
    # A is a cast (the operand load does it; the map is its own kernel)
    "cast": ("""
fn main(g: f32[1, 512], u: f32[1, 512], w: bf16[512, 512]) -> bf16[1, 512] {
    return cast(silu(g) * u, bf16) @ w
}""", "A is not computed by a fusable elementwise op"),
    # the map's value is also an output
    "used elsewhere": ("""
fn main(g: bf16[1, 512], u: bf16[1, 512], w: bf16[512, 512]) -> (bf16[1, 512], bf16[1, 512]) {
    h = silu(g) * u
    return h @ w, h
}""", "A is also read elsewhere"),
    # one operand, a product's result: that product's epilogue takes the map
    "epilogue's": ("""
fn main(x: bf16[1, 512], w1: bf16[512, 512], w2: bf16[512, 512]) -> bf16[1, 512] {
    return relu(x @ w1) @ w2
}""", "that product's epilogue takes it"),
    # more operands than the kernel loads
    "five operands": ("""
fn main(a: bf16[1, 512], b: bf16[1, 512], c: bf16[1, 512], d: bf16[1, 512], e: bf16[1, 512],
        w: bf16[512, 512]) -> bf16[1, 512] {
    return (a * b + c * d - e) @ w
}""", "the map has 5 operands"),
    # integers: not a vector float map
    "integer": ("""
fn main(g: i8[1, 512], u: i8[1, 512], w: i8[512, 512]) -> i32[1, 512] {
    return cast(g + u, i32) @ cast(w, i32)
}""", None),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_forms_keep_the_map_kernel(name):
    from zhenwu.compiler.passes.fuse import fusable_elementwise
    from zhenwu.compiler.passes.prologue_gemm_match import analyse

    source, why = REFUSED[name]
    fn = run_pipeline(load_program("t.zt", text=source), default_graph_pipeline())
    plan = plan_fusion(fn)
    assert not any("map-prologue matmul" in d for d in plan.decisions), plan.decisions
    if why is not None:
        users, producers = fn.users(), fn.producers()
        outputs = {v.id for v in fn.outputs}
        found = [analyse(op, users, producers, outputs, fusable_elementwise)[1]
                 for op in fn.ops if op.kind == "matmul"]
        assert any(w is not None and why in w for w in found), found
    compile_and_run(source, opt_level=2)   # and the unfused kernels give the numbers


NORM = """
fn main(x: bf16[R, 2048], g: f32[2048], w: bf16[4096, 2048]) -> bf16[R, 4096] {
    return cast(rmsnorm(cast(x, f32), g, eps=1e-06), bf16) @ transpose(w)
}
"""


@pytest.mark.parametrize("rows", [1, 5])
def test_rmsnorm_rows_are_scaled_once_per_core(rows):
    """An RMSNorm prologue over four k tiles: A = cast(X * ss * g) in the setup, the steps
    load only B, and the numbers are the reference's."""
    _, compiled, _, _ = compile_and_run(NORM, opt_level=2, shapes={"R": rows})
    (kernel,) = compiled.kernels.kernels
    nest = kernel.nests[0]
    assert nest.parallel_tiles >= 2 * 32 and nest.reduction_steps == 4
    assert {b.name for b in nest.buffers} >= {"X", "G", "A"}
    assert [s.dst for s in nest.step if isinstance(s, Load)] == ["b"]


INDEPENDENT = """
fn main(a: f32[64, 256], b: f32[8, 128], c: bf16[4, 64]) -> (f32[64, 256], f32[8, 128], bf16[4, 64]) {
    return exp(a), tanh(b), c * 2.0
}
"""


def test_independent_nests_run_side_by_side_without_barriers(monkeypatch):
    """Three independent map kernels merged horizontally: one kernel, one chip barrier (its
    end), the later nests' tiles dealt from the cores after the earlier ones'; faster than
    the same nests one after another with barriers between them."""
    from zhenwu.compiler.backend import codegen

    _, compiled, result, _ = compile_and_run(INDEPENDENT, opt_level=2)
    (kernel,) = compiled.kernels.kernels
    assert len(kernel.nests) == 3
    text = compiled.asm_text
    assert text.count("BAR.CHIP") == 1
    # the two later nests number their cores from an offset: (core - offset) mod cores
    assert len(re.findall(r"SUB (r\d+), r0, r\d+\n\s*ADD \1, \1, r1\n\s*REM \1, \1, r1",
                          text)) == 2
    monkeypatch.setattr(codegen, "_rotatable", lambda nest: False)
    _, serial, serial_run, _ = compile_and_run(INDEPENDENT, opt_level=2)
    assert serial.asm_text.count("BAR.CHIP") == 3
    assert result.report.cycles < serial_run.report.cycles
