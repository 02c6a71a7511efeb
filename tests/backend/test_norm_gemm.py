"""The RMSNorm-prologue matmul (compiler/passes/norm_gemm_match.py, backend/gemm_prologue.py):
what it takes, what it refuses, and its numbers against the reference with several tiles
per core (the race detector runs on every functional run)."""

from __future__ import annotations

import pytest
from backend_helpers import compile_and_run
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline
from zhenwu.compiler.passes.fuse import plan_fusion

# decode's two forms: a bf16 input widened to f32 (the attention norm), an f32 residual
# stream with a residual add after the product (the MLP norm's product, here with an epilogue)
WIDENED = """
fn main(x: bf16[1, 512], g: f32[512], w: bf16[8192, 512]) -> bf16[1, 8192] {
    return cast(rmsnorm(cast(x, f32), g, eps=1e-06), bf16) @ transpose(w)
}
"""
RESIDUAL = """
fn main(h: f32[4, 1024], g: f32[1024], w: bf16[16384, 1024], r: bf16[4, 16384]) -> bf16[4, 16384] {
    a = cast(rmsnorm(h, g, eps=1e-05), bf16)
    return cast(cast(r, f32) + a @ transpose(w), bf16)
}
"""
NO_WEIGHT = """
fn main(h: f32[2, 512], w: bf16[1024, 512]) -> bf16[2, 1024] {
    s = rsqrt(sum(h * h, axis=-1, keepdims=true) / 512.0 + 1e-06)
    return cast(h * s, bf16) @ transpose(w)
}
"""


def kinds(source: str) -> list[tuple[str, int]]:
    fn = run_pipeline(load_program("t.zt", text=source), default_graph_pipeline())
    plan = plan_fusion(fn)
    return [(g.kind, len(g.op_ids)) for g in plan.groups if g.kind not in ("view", "constant")]


@pytest.mark.parametrize("source", [WIDENED, RESIDUAL, NO_WEIGHT])
def test_the_norm_is_the_products_prologue(source):
    _, compiled, result, _ = compile_and_run(source, opt_level=2)
    assert len(compiled.kernels.kernels) == 1
    nest = compiled.kernels.kernels[0].nests[0]
    if source is not NO_WEIGHT:
        assert nest.parallel_tiles >= 2 * 32, nest.grid   # several tiles per core
    assert any(getattr(s, "op", None) == "SUM" for s in nest.setup)   # the rows' scale
    assert len(result.report.kernels) == 1


def test_one_launch_fewer_than_the_row_kernel_and_the_product():
    from zhenwu.compiler.passes import fuse

    _, fused, fused_run, _ = compile_and_run(RESIDUAL, opt_level=2)
    saved = fuse.KERNEL_MATCHERS.pop("matmul")
    try:
        _, plain, plain_run, _ = compile_and_run(RESIDUAL, opt_level=2)
    finally:
        fuse.KERNEL_MATCHERS["matmul"] = saved
    assert len(plain.kernels.kernels) == 2 and len(fused.kernels.kernels) == 1
    assert fused_run.report.cycles < plain_run.report.cycles


REFUSED = {
    # too many rows: the row kernel is cheap against the product
    "many rows": """
fn main(h: f32[128, 256], g: f32[256], w: bf16[256, 256]) -> bf16[128, 256] {
    return cast(rmsnorm(h, g, eps=1e-06), bf16) @ transpose(w)
}""",
    # the normalised value is also an output
    "used elsewhere": """
fn main(h: f32[1, 256], g: f32[256], w: bf16[256, 256]) -> (bf16[1, 256], bf16[1, 256]) {
    a = cast(rmsnorm(h, g, eps=1e-06), bf16)
    return a @ transpose(w), a
}""",
    # a mean over a different count than the row (not an RMS of the row)
    "wrong count": """
fn main(h: f32[1, 256], w: bf16[256, 256]) -> bf16[1, 256] {
    s = rsqrt(sum(h * h, axis=-1, keepdims=true) / 100.0 + 1e-06)
    return cast(h * s, bf16) @ transpose(w)
}""",
    # the scale is not of the rows' own squares
    "not a square": """
fn main(h: f32[1, 256], k: f32[1, 256], w: bf16[256, 256]) -> bf16[1, 256] {
    s = rsqrt(sum(h * k, axis=-1, keepdims=true) / 256.0 + 1e-06)
    return cast(h * s, bf16) @ transpose(w)
}""",
    # the scale is used again after the product
    "scale reused": """
fn main(h: f32[1, 256], w: bf16[256, 256]) -> (bf16[1, 256], f32[1, 1]) {
    s = rsqrt(sum(h * h, axis=-1, keepdims=true) / 256.0 + 1e-06)
    return cast(h * s, bf16) @ transpose(w), s
}""",
    # the norm of a narrow value (computed and rounded in bf16)
    "bf16 norm": """
fn main(x: bf16[1, 256], g: bf16[256], w: bf16[256, 256]) -> bf16[1, 256] {
    return rmsnorm(x, g, eps=1e-06) @ transpose(w)
}""",
    # the norm feeds B, not A
    "norm on B": """
fn main(x: bf16[1, 256], h: f32[256, 4], w: bf16[1, 256]) -> bf16[1, 4] {
    s = rsqrt(sum(h * h, axis=-1, keepdims=true) / 4.0 + 1e-06)
    return x @ cast(h * s, bf16)
}""",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_forms_keep_their_own_kernels(name):
    source = REFUSED[name]
    groups = kinds(source)
    matmuls = [size for kind, size in groups if kind == "matmul"]
    assert matmuls and all(
        size <= 3 for size in matmuls), groups   # the product, its casts: no reduction
    compile_and_run(source, opt_level=2)   # and the unfused kernels give the numbers
