"""Split-K (compiler/backend/split_k.py): a product with too few output tiles splits K into
ranges across the cores and adds the partial sums in a second nest of the same kernel."""

from dataclasses import replace

import pytest
from zhenwu.compiler.frontend import load_program


def _small_machine():
    """Four cores with 64 KiB of L1: small products make several tiles per core."""
    from zhenwu.isa.machine import load_machine

    return replace(load_machine("m890"), l1_bytes=64 * 1024, cores=4)


def _compile(source: str, machine):
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function

    fn = load_program("test.zt", text=source)
    return fn, compile_function(fn, machine, CompileOptions(opt_level=2))


def _check(source: str, machine):
    """Run on `machine` (functional: the race detector on) against the reference."""
    from zhenwu.compiler.check import relative_error
    from zhenwu.compiler.graph.dtypes import tolerance
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.runtime import run_program

    fn, compiled = _compile(source, machine)
    inputs = prepare_inputs(fn, {}, 0)
    result = run_program(compiled.program, machine, compiled.program_inputs(inputs))
    want = evaluate(fn, inputs)
    for got, ref, out in zip(compiled.graph_outputs(result), want, fn.outputs):
        assert relative_error(got, ref) <= tolerance(out.type.dtype)
    return compiled, result


SKINNY = """
fn main(x: bf16[16, 4096], w: bf16[4096, 4096]) -> bf16[16, 4096] {
    return x @ w
}
"""


def test_decode_gemm_splits_k_in_one_kernel():
    """16 x 4096 x 4096 on the M890: one kernel of two nests, the partial sums in an f32
    temporary of splits x 16 x 4096, B tiles as wide as a DRAM row."""
    from zhenwu.isa.machine import load_machine

    machine = load_machine("m890")
    _, compiled = _compile(SKINNY, machine)
    assert compiled.kernel_count == 1
    (kernel,) = compiled.kernels.kernels
    assert len(kernel.nests) == 2
    first, second = kernel.nests
    splits = first.extents[0]
    assert splits > 1 and first.kinds[0] == "p" and second.kinds[-1] == "r"
    assert second.extents[-1] == splits
    assert first.parallel_tiles >= machine.cores and second.parallel_tiles >= machine.cores
    assert first.tile[-2] * 2 % machine.hbm_row_bytes == 0   # whole DRAM rows of bf16 B
    part = [t for t in compiled.kernels.tensors if t.name.endswith("_part")]
    assert [(t.dtype, t.shape) for t in part] == [("f32", (splits, 16, 4096))]


@pytest.mark.parametrize("source", [
    # bias, activation and a cast: the epilogue runs on the summed tile
    """
    fn main(x: bf16[16, 1024], w: bf16[1024, 128], b: f32[128]) -> bf16[16, 128] {
        return cast(relu(x @ w + b), bf16)
    }
    """,
    # f32 operands, a residual of the output's shape
    """
    fn main(x: f32[8, 512], w: f32[512, 64], r: f32[8, 64]) -> f32[8, 64] {
        return x @ w + r
    }
    """,
    # a batched product: the split is one more batch axis
    """
    fn main(x: bf16[2, 16, 1024], w: bf16[2, 1024, 64]) -> f32[2, 16, 64] {
        return cast(x @ w, f32)
    }
    """,
])
def test_split_products_match_the_reference(source, monkeypatch):
    """Products split in four ranges of 16 x 32 tiles on four cores, several tiles per core
    (the split forced: the model gives each core one), run functionally."""
    from zhenwu.compiler.backend import gemm
    from zhenwu.compiler.backend.tile_cost import VectorWork

    def four_ranges(batch, m, n, k, in_dtype, acc_dtype, a_bytes, b_bytes, out_bytes,
                    full_bytes, row_bytes, epilogue_ops, machine, base, b_k_major=False):
        return 4, gemm.choose_gemm_tile(batch * 4, m, n, k // 4, in_dtype, acc_dtype, a_bytes,
                                        b_bytes, 4, full_bytes, row_bytes, VectorWork(),
                                        machine,
                                        fixed=(16, 32, 64))

    monkeypatch.setattr(gemm, "choose_split", four_ranges)
    compiled, _ = _check(source, _small_machine())
    (kernel,) = compiled.kernels.kernels
    assert len(kernel.nests) == 2
    assert kernel.nests[0].parallel_tiles > 4   # several tiles per core


def test_the_model_splits_a_long_thin_product_on_four_cores():
    """1 x 8192 x 32: one output tile; the model splits K over the four cores."""
    compiled, _ = _check("""
    fn main(x: bf16[1, 8192], w: bf16[8192, 32], b: f32[32]) -> f32[1, 32] {
        return silu(x @ w + b)
    }
    """, _small_machine())
    split = [k for k in compiled.kernels.kernels if len(k.nests) == 2]
    assert len(split) == 1 and split[0].nests[0].extents[0] == 4


@pytest.mark.parametrize("source", [
    # enough output tiles already
    """
    fn main(x: bf16[256, 256], w: bf16[256, 256]) -> bf16[256, 256] { return x @ w }
    """,
    # K too short to split into ranges of two MX depths
    """
    fn main(x: bf16[16, 48], w: bf16[48, 64]) -> bf16[16, 64] { return x @ w }
    """,
    # K not a multiple of two MX depths
    """
    fn main(x: bf16[16, 1008], w: bf16[1008, 64]) -> bf16[16, 64] { return x @ w }
    """,
])
def test_products_that_do_not_split(source):
    compiled, _ = _check(source, _small_machine())
    assert all(len(k.nests) == 1 for k in compiled.kernels.kernels)
    assert not any(t.name.endswith("_part") for t in compiled.kernels.tensors)
