"""-O2 map kernels with any number of operands, and concat along the last axis fused into its
consumer (issue 14 item 3): kernel counts, HBM bytes against the compulsory bytes, the forms
the fusion must refuse, and every program against the reference evaluator with several tiles
per core (the interpreter's race detector on)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from zhenwu.compiler.backend.kernel_ir import ColumnCopy, Load, parse_kernels, print_kernels
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline
from zhenwu.compiler.passes.fuse import MAX_KERNEL_TENSORS, plan_fusion
from zhenwu.compiler.roofline import compulsory_bytes


def _small_machine():
    """Four cores with 64 KiB of L1: small programs make several tiles per core."""
    from zhenwu.isa.machine import load_machine

    return replace(load_machine("m890"), l1_bytes=64 * 1024, cores=4)


def compile_and_run(source: str, opt_level: int = 2):
    """(fn, compiled, result, reference outputs) on the small machine; asserts every output
    is within tolerance of the reference evaluator."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.check import relative_error
    from zhenwu.compiler.graph.dtypes import tolerance
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.runtime import run_program

    fn = load_program("test.zt", text=source)
    inputs = prepare_inputs(fn, {}, 0)
    target = _small_machine()
    compiled = compile_function(fn, target, CompileOptions(opt_level=opt_level))
    result = run_program(compiled.program, target, compiled.program_inputs(inputs))
    want = evaluate(fn, inputs)
    for g, w, value in zip(compiled.graph_outputs(result), want, fn.outputs):
        assert relative_error(g, w) <= tolerance(value.type.dtype)
    return fn, compiled, result, want


def _hbm(result) -> int:
    return result.report.hbm_read_bytes + result.report.hbm_write_bytes


def _plan(source: str):
    fn = run_pipeline(load_program("t.zt", text=source), default_graph_pipeline())
    plan = plan_fusion(fn)
    return [g for g in plan.groups if g.kind not in ("view", "constant")], plan


def _tiles_per_core(compiled) -> float:
    nest = compiled.kernels.kernels[0].nests[0]
    return nest.parallel_tiles / 4


def test_weighted_sum_of_two_tensors_is_one_kernel():
    # an optimiser's moving average: two scaled terms, each once its own kernel
    fn, compiled, result, _ = compile_and_run(
        "fn main(m: f32[384, 320], g: f32[384, 320]) -> f32[384, 320] {\n"
        "    return m * 0.9 + g * 0.1\n}\n", opt_level=2)
    assert compiled.kernel_count == 1
    assert _tiles_per_core(compiled) >= 2
    assert _hbm(result) == compulsory_bytes(fn)


@pytest.mark.parametrize("terms", [3, 6])
def test_linear_combination_of_n_tensors_is_one_kernel(terms):
    params = ", ".join(f"x{i}: {'bf16' if i % 3 == 2 else 'f32'}[256, 300]"
                       for i in range(terms))
    body = " + ".join(f"x{i} * {0.5 + i}" for i in range(terms))
    fn, compiled, result, _ = compile_and_run(
        f"fn main({params}) -> f32[256, 300] {{\n    return {body}\n}}\n", opt_level=2)
    assert compiled.kernel_count == 1
    assert _tiles_per_core(compiled) >= 2
    assert _hbm(result) == compulsory_bytes(fn)


def test_a_linear_combination_past_the_descriptors_splits_and_says_why():
    terms = MAX_KERNEL_TENSORS + 4
    params = ", ".join(f"x{i}: f32[8, 16]" for i in range(terms))
    body = " + ".join(f"x{i} * {i + 1}.0" for i in range(terms))
    source = f"fn main({params}) -> f32[8, 16] {{\n    return {body}\n}}\n"
    groups, plan = _plan(source)
    assert 2 <= len(groups) <= 6
    assert any(f"more than {MAX_KERNEL_TENSORS} tensors" in d for d in plan.decisions)
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert compiled.kernel_count == len(groups)


def test_row_kernels_are_not_merged_with_each_other():
    groups, plan = _plan(
        "fn main(x: f32[16, 64], y: f32[16, 64]) -> f32[16, 64] {\n"
        "    return softmax(x, axis=-1) + softmax(y, axis=-1)\n}\n")
    assert len(groups) == 2
    assert any("both are row kernels" in d for d in plan.decisions)


ROPE = """
fn rope(x: f32[S, N, HD], cos_t: f32[S, HD], sin_t: f32[S, HD]) -> f32[S, N, HD] {
    x1 = x[:, :, 0:HD // 2]
    x2 = x[:, :, HD // 2:HD]
    rotated = concat([-x2, x1], axis=-1)
    return x * cos_t[:, None, :] + rotated * sin_t[:, None, :]
}
"""


def test_rotary_embedding_of_an_input_is_one_kernel_reading_x_once():
    fn, compiled, result, _ = compile_and_run(
        "const HD = 64\n" + ROPE +
        "fn main(x: f32[192, 8, HD], cos_t: f32[192, HD], sin_t: f32[192, HD])"
        " -> f32[192, 8, HD] {\n    return rope(x, cos_t, sin_t)\n}\n", opt_level=2)
    assert compiled.kernel_count == 1
    nest = compiled.kernels.kernels[0].nests[0]
    assert nest.parallel_tiles >= 8
    # the halves are column copies of x's tile (one negated), not loads of their own
    copies = [s for s in nest.step if isinstance(s, ColumnCopy)]
    assert [c.negate for c in copies] == [True, False]
    assert sum(isinstance(s, Load) for s in nest.step) == 3
    assert _hbm(result) <= compulsory_bytes(fn) + 4 * 2 * 64 * 4 * 8


def test_rotary_embedding_of_a_computed_value_joins_its_row_kernel():
    # q = rmsnorm(...) then rope: the halves are column ranges of a tile computed in the
    # kernel, so norm, rotation and both products are one kernel
    fn, compiled, result, _ = compile_and_run(
        "const HD = 32\n" + ROPE +
        "fn main(a: f32[256, 4, HD], w: f32[HD], cos_t: f32[256, HD], sin_t: f32[256, HD])"
        " -> f32[256, 4, HD] {\n    return rope(rmsnorm(a, w) * 1.5, cos_t, sin_t)\n}\n",
        opt_level=2)
    assert compiled.kernel_count == 1
    assert _tiles_per_core(compiled) >= 2
    assert _hbm(result) <= compulsory_bytes(fn) + 4 * 2 * 32 * 4 * 8


def test_rotary_embedding_in_bf16_from_a_product_and_a_three_piece_concat():
    _, compiled, _, _ = compile_and_run(
        "fn main(h: bf16[256, 64], wq: bf16[64, 96], cos_t: f32[256, 32], sin_t: f32[256, 32])"
        " -> (f32[256, 3, 32], bf16[256, 3, 32]) {\n"
        "    x = cast(reshape(h @ wq, [256, 3, 32]), f32)\n"
        "    rotated = concat([-x[:, :, 8:32], x[:, :, 0:8]], axis=-1)\n"
        "    y = cast(reshape(h @ wq, [256, 3, 32]), bf16)\n"
        "    c = concat([y[:, :, 30:32], -y[:, :, 0:10], y[:, :, 10:30]], axis=2)\n"
        "    return x * cos_t[:, None, :] + rotated * sin_t[:, None, :], c * 2.0\n}\n",
        opt_level=2)
    # the product (CSE'd), the rotation, and the three-piece concat with its consumer (the
    # last two independent: one kernel of two nests, compiler/backend/merge.py)
    assert sum(len(k.nests) for k in compiled.kernels.kernels) == 3
    assert compiled.kernel_count == 2


def test_a_concat_used_outside_its_kernel_is_stored_and_pieces_load_from_gm():
    fn, compiled, result, _ = compile_and_run(
        "fn main(a: f32[128, 40], b: f32[128, 24]) -> (f32[128, 64], f32[128, 64]) {\n"
        "    c = concat([a, -b], axis=1)\n"
        "    return c, exp(c) * 2.0\n}\n", opt_level=2)
    assert compiled.kernel_count == 1
    assert _hbm(result) == compulsory_bytes(fn)


@pytest.mark.parametrize("source, reason", [
    # along another axis: its own kernel
    (("fn main(a: f32[8, 16], b: f32[4, 16]) -> f32[12, 16] {\n"
      "    return concat([a, b], axis=0) * 2.0\n}\n"), "not along the last axis"),
    # a splat constant piece has no tensor to load
    (("fn main(a: f32[8, 16]) -> f32[8, 32] {\n"
      "    return concat([a, zeros([8, 16], f32)], axis=1) * 2.0\n}\n"),
     "a piece is a constant"),
])
def test_concats_the_map_kernel_refuses(source, reason):
    groups, plan = _plan(source)
    assert any(g.kind == "single" for g in groups)
    assert any(reason in d for d in plan.decisions)
    compile_and_run(source, opt_level=2)


def test_a_neg_or_slice_used_elsewhere_is_not_absorbed():
    source = ("fn main(x: f32[64, 32]) -> (f32[64, 32], f32[64, 16]) {\n"
              "    n = -x[:, 16:32]\n"
              "    return concat([n, x[:, 0:16]], axis=-1) * 3.0, n\n}\n")
    _, plan = _plan(source)
    assert not any("neg into concat" in d for d in plan.decisions)
    compile_and_run(source, opt_level=2)


def test_a_slice_of_other_axes_is_loaded_as_a_piece():
    # x[::2, 0:16] is no column range of a tile: the piece is loaded through its view
    compile_and_run(
        "fn main(x: f32[128, 32], y: f32[64, 16]) -> f32[64, 32] {\n"
        "    return concat([x[::2, 16:32], -y], axis=-1) + 1.0\n}\n", opt_level=2)


def test_column_copies_print_and_parse_back():
    _, compiled, _, _ = compile_and_run(
        "fn main(x: bf16[64, 32]) -> bf16[64, 32] {\n"
        "    return concat([-x[:, 16:32], x[:, 0:16]], axis=-1) * 2.0\n}\n", opt_level=2)
    text = print_kernels(compiled.kernels)
    assert "colcopy.bf16" in text and " neg" in text
    assert parse_kernels(text) == compiled.kernels


def test_a_widening_cast_of_an_operand_is_its_load():
    # x is read only by its cast: the DMA loads it as f32, no conversion on the vector engine
    fn, compiled, result, _ = compile_and_run(
        "fn main(x: bf16[256, 300], y: f32[256, 300]) -> f32[256, 300] {\n"
        "    return cast(x, f32) * 0.5 + y * 1.5\n}\n", opt_level=2)
    nest = compiled.kernels.kernels[0].nests[0]
    assert compiled.kernel_count == 1
    assert not any(getattr(s, "op", "").startswith("CVT") for s in nest.step)
    assert _hbm(result) == compulsory_bytes(fn)


@pytest.mark.parametrize("source", [
    "fn main(x: bf16[4]) -> f32[] {\n    return cast(sum(x), f32)\n}\n",
    "fn main(x: bf16[96, 40]) -> f32[96, 40] {\n    return cast(x, f32)\n}\n",
    ("fn main(x: f16[96, 40]) -> (f32[96, 40], f32[96, 40]) {\n"
     "    y = cast(x, f32)\n    return y, y * 2.0\n}\n"),
])
def test_a_loaded_cast_that_is_also_stored(source):
    # the cast's value is its load's buffer and is copied to an output buffer for the store
    compile_and_run(source, opt_level=2)


def test_a_concat_whose_rows_do_not_fit_l1_falls_back_to_one_kernel_per_op():
    # rows of 24000 f32 values (96 KB) on a 64 KiB L1: the concat and its consumer are
    # lowered op by op, still right
    _, compiled, _, _ = compile_and_run(
        "fn main(x: f32[4, 24000]) -> f32[4, 24000] {\n"
        "    return concat([-x[:, 12000:24000], x[:, 0:12000]], axis=-1) * 2.0\n}\n",
        opt_level=2)
    assert compiled.kernel_count >= 2
