"""The attention matcher (compiler/passes/attention_match.py): the forms it accepts become one
flash kernel with the reference's numbers; the forms it must refuse (issue 11 item 0) are
left to the other fusion rules and still match the reference."""

from __future__ import annotations

import pytest
from backend_helpers import compile_and_run
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline
from zhenwu.compiler.passes.attention_match import match_attention


def _matches(source: str) -> list[str]:
    fn = run_pipeline(load_program("t.zt", text=source), default_graph_pipeline())
    outputs = {v.id for v in fn.outputs}
    return [what for _, what in match_attention(fn, fn.users(), fn.producers(), outputs)]


def _flash_kernels(compiled) -> int:
    return sum(k.name.startswith("flash_attention") for k in compiled.kernels.kernels)


CAUSAL = "arange({s})[:, None] >= arange({s})[None, :]"

ACCEPTED = {
    # grouped-query attention: the einsum merges (group, query) into the product's rows
    "gqa_einsum": f"""
fn main(q: bf16[8, 24, 32], k: bf16[2, 24, 32], v: bf16[2, 24, 32]) -> bf16[8, 24, 32] {{
    causal = {CAUSAL.format(s=24)}
    qg = reshape(q, [2, 4, 24, 32])
    s = einsum("kgsd,ktd->kgst", qg, k) * 0.17677669529663687
    p = softmax(where(causal, s, -inf), axis=-1)
    return reshape(einsum("kgst,ktd->kgsd", p, v), [8, 24, 32])
}}""",
    "mqa_einsum": f"""
fn main(q: f32[4, 24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[4, 24, 16] {{
    causal = {CAUSAL.format(s=24)}
    p = softmax(where(causal, einsum("hqd,kd->hqk", q, k) * 0.25, -inf), axis=-1)
    return einsum("hqk,kd->hqd", p, v)
}}""",
    "batch_kv_einsum": f"""
fn main(q: f32[2, 3, 20, 16], k: f32[2, 20, 16], v: f32[2, 20, 16]) -> f32[2, 3, 20, 16] {{
    causal = {CAUSAL.format(s=20)}
    p = softmax(where(causal, einsum("bhqd,bkd->bhqk", q, k), -inf), axis=-1)
    return einsum("bhqk,bkd->bhqd", p, v)
}}""",
    "broadcast_batch_regrouped": """
fn main(q: f32[2, 3, 8, 8], k: f32[2, 1, 8, 8], v: f32[3, 2, 8, 8]) -> f32[3, 2, 8, 8] {
    p = softmax(q @ transpose(k, [0, 1, 3, 2]), axis=-1)
    return reshape(p, [3, 2, 8, 8]) @ v
}""",
    # the mask spelt j <= i, and as an upper-triangle bias: canonicalize turns both into i >= j
    "mask_flipped": """
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {
    mask = arange(24)[None, :] <= arange(24)[:, None]
    return softmax(where(mask, q @ transpose(k), -inf), axis=-1) @ v
}""",
    "upper_triangle_bias": """
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {
    bias = where(arange(24)[:, None] < arange(24)[None, :], -inf, 0.0)
    return softmax(q @ transpose(k) * 0.25 + bias, axis=-1) @ v
}""",
    # q, k and v cast up to f32 before the products (the DMAs convert; q @ kᵀ multiplies
    # bf16 at its rate, exact), K/V broadcast to the heads through stride 0
    "f32_casts_of_bf16_inputs": """
fn main(q: bf16[20, 4, 32], k: bf16[20, 2, 32], v: bf16[20, 2, 32]) -> f32[20, 4, 32] {
    qh = transpose(cast(q, f32), [1, 0, 2])
    kh = reshape(broadcast_to(transpose(cast(k, f32), [1, 0, 2])[:, None], [2, 2, 20, 32]),
                 [4, 20, 32])
    vh = reshape(broadcast_to(transpose(cast(v, f32), [1, 0, 2])[:, None], [2, 2, 20, 32]),
                 [4, 20, 32])
    mask = arange(20)[None, :] <= arange(20)[:, None]
    p = softmax(where(mask, qh @ transpose(kh, [0, 2, 1]) / sqrt(32), -inf))
    return transpose(p @ vh, [1, 0, 2])
}""",
    "cross_attention": """
fn main(q: f32[3, 10, 16], k: f32[3, 40, 16], v: f32[3, 40, 16]) -> f32[3, 10, 16] {
    return softmax(q @ transpose(k, [0, 2, 1]) * 0.25, axis=-1) @ v
}""",
}

REFUSED = {
    # the softmax normalises another set than the product's rows
    "reshape_splits_rows": """
fn main(q: f32[4, 8], k: f32[8, 8], v: f32[8, 8]) -> f32[4, 8] {
    p = softmax(reshape(q @ transpose(k), [4, 2, 4]), axis=-1)
    return reshape(p, [4, 8]) @ v
}""",
    "reshape_merges_rows": """
fn main(q: f32[8, 8], k: f32[4, 8], v: f32[4, 8]) -> f32[8, 8] {
    p = softmax(reshape(q @ transpose(k), [4, 8]), axis=-1)
    return reshape(p, [8, 4]) @ v
}""",
    "softmax_not_over_keys": """
fn main(q: f32[16, 8], k: f32[16, 8], v: f32[16, 8]) -> f32[16, 8] {
    return softmax(q @ transpose(k), axis=0) @ v
}""",
    # masks that are not exactly i >= j
    "mask_fp8_arange": """
fn main(q: f32[40, 16], k: f32[40, 16], v: f32[40, 16]) -> f32[40, 16] {
    causal = arange(40, dtype=fp8)[:, None] >= arange(40, dtype=fp8)[None, :]
    return softmax(where(causal, q @ transpose(k), -inf), axis=-1) @ v
}""",
    "mask_i8_arange": """
fn main(q: f32[130, 16], k: f32[130, 16], v: f32[130, 16]) -> f32[130, 16] {
    causal = arange(130, dtype=i8)[:, None] >= arange(130, dtype=i8)[None, :]
    return softmax(where(causal, q @ transpose(k), -inf), axis=-1) @ v
}""",
    "mask_upper_triangle": """
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {
    mask = arange(24)[None, :] >= arange(24)[:, None]
    return softmax(where(mask, q @ transpose(k), -inf), axis=-1) @ v
}""",
    "mask_strict": """
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {
    mask = arange(24)[:, None] > arange(24)[None, :]
    return softmax(where(mask, q @ transpose(k), -inf), axis=-1) @ v
}""",
    # -inf on the diagonal too: the first query sees no key
    "upper_triangle_bias_with_diagonal": """
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {
    bias = where(arange(24)[:, None] <= arange(24)[None, :], -inf, 0.0)
    return softmax(q @ transpose(k) + bias, axis=-1) @ v
}""",
    "mask_strict_flipped": """
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {
    mask = arange(24)[None, :] < arange(24)[:, None]
    return softmax(where(mask, q @ transpose(k), -inf), axis=-1) @ v
}""",
    "mask_finite_fill": """
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {
    mask = arange(24)[:, None] >= arange(24)[None, :]
    return softmax(where(mask, q @ transpose(k), -30000.0), axis=-1) @ v
}""",
    # fp8 has no infinity: the -inf fill is NaN (docs/language.md)
    "fp8_scores": f"""
fn main(q: fp8[40, 16], k: fp8[40, 16], v: fp8[40, 16]) -> fp8[40, 16] {{
    causal = {CAUSAL.format(s=40)}
    return softmax(where(causal, q @ transpose(k), -inf), axis=-1) @ v
}}""",
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_forms_are_one_flash_kernel(name):
    assert len(_matches(ACCEPTED[name])) == 1
    fn, compiled, result, _ = compile_and_run(ACCEPTED[name], opt_level=2)
    assert _flash_kernels(compiled) == 1
    assert compiled.kernel_count == 1
    # no score matrix and no repeated K/V in HBM: only the output is written
    assert result.report.hbm_write_bytes == fn.outputs[0].type.nbytes


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_forms_are_not_attention_and_stay_correct(name):
    assert _matches(REFUSED[name]) == []
    _, compiled, _, _ = compile_and_run(REFUSED[name], opt_level=2)
    assert _flash_kernels(compiled) == 0


def test_fp8_minus_inf_is_nan_in_every_pipeline():
    import numpy as np

    for level in (0, 2):
        # compile_and_run asserts that NaN sits where the reference has it
        _, _, _, reference = compile_and_run(REFUSED["fp8_scores"], opt_level=level)
        want = np.asarray(reference[0], np.float32)
        assert np.isnan(want[:-1]).all()  # every row but the last has a masked (NaN) score
        assert np.isfinite(want[-1]).all()


def test_canonical_comparisons_are_exact_for_every_value():
    """a <= b is b >= a (NaN included); a select on an integer a > b swaps to b >= a."""
    import numpy as np

    import zhenwu

    source = """
fn main(a: f32[6], b: f32[6], i: i32[6], j: i32[6], x: f32[6],
        y: f32[6]) -> (bool[6], bool[6], f32[6], f32[6]) {
    return a <= b, a < b, where(i > j, x, y), where(i < j, x, y)
}"""
    fn = run_pipeline(load_program("t.zt", text=source), default_graph_pipeline())
    kinds = [op.kind for op in fn.ops]
    assert "le" not in kinds and "lt" not in kinds and kinds.count("gt") == 1  # a < b
    inputs = {"a": np.array([1, 2, np.nan, 3, -1, 0], np.float32),
              "b": np.array([1, 1, 0, np.nan, 0, -0.0], np.float32),
              "i": np.array([0, 1, 2, -3, 5, 5], np.int32),
              "j": np.array([0, 2, 1, -3, 4, 6], np.int32),
              "x": np.arange(6, dtype=np.float32), "y": -np.arange(6, dtype=np.float32)}
    for opt in (0, 2):
        got, _ = zhenwu.compile(source, opt=opt).run(inputs)
        for have, want in zip(got, zhenwu.reference(source, inputs)):
            assert np.array_equal(have, want)


def test_cast_operands_run_race_free_with_several_tiles_per_core():
    """The f32-cast spelling on a 2-core machine: every core runs several query tiles, and
    the functional run (race detector on) gives the reference's values."""
    from dataclasses import replace

    import numpy as np
    from zhenwu.compiler.check import relative_error
    from zhenwu.isa.machine import load_machine

    import zhenwu

    source = ACCEPTED["f32_casts_of_bf16_inputs"].replace("20", "300")
    target = replace(load_machine("m890"), cores=2)
    prog = zhenwu.compile(source, machine=target)
    assert prog.kernel_count == 1
    nest = prog.kernel_ir.kernels[0].nests[0]
    assert nest.parallel_tiles >= 3 * target.cores
    rng = np.random.default_rng(1)
    inputs = {p.name: rng.standard_normal(p.type.shape).astype(np.float32)
              for p in prog.function.params}
    (got,), _ = prog.run(inputs)
    assert relative_error(got, zhenwu.reference(source, inputs)[0]) < 1e-4


def test_a_narrowing_cast_of_q_stays_its_own_kernel():
    """f32 -> bf16 rounds q: the flash kernel's DMA cannot do that cast, so it is not taken."""
    source = """
fn main(q: f32[24, 16], k: bf16[24, 16], v: bf16[24, 16]) -> bf16[24, 16] {
    return softmax(cast(q, bf16) @ transpose(k), axis=-1) @ v
}"""
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert _flash_kernels(compiled) == 1 and compiled.kernel_count == 2


def test_bf16_scores_with_an_f32_bias_multiply_each_product_in_its_dtype():
    """bf16 scores plus an f32 bias promote the softmax and P @ V to f32: one flash kernel,
    q @ kT in bf16 and P @ V in f32, within bf16's tolerance (the scores' dtype), on a
    2-core machine with several query tiles per core."""
    from dataclasses import replace

    import numpy as np
    from zhenwu.compiler.check import check_output
    from zhenwu.isa.machine import load_machine

    import zhenwu

    source = """
fn main(q: bf16[2, 300, 16], k: bf16[2, 300, 16], v: bf16[2, 300, 16]) -> f32[2, 300, 16] {
    bias = where(arange(300)[:, None] < arange(300)[None, :], -inf, 0.0)
    s = q @ transpose(k, [0, 2, 1]) / 4.0 + bias
    return softmax(s, axis=-1) @ cast(v, f32)
}"""
    assert len(_matches(source)) == 1
    prog = zhenwu.compile(source, machine=replace(load_machine("m890"), cores=2))
    assert prog.kernel_count == 1
    (nest,) = prog.kernel_ir.kernels[0].nests
    assert {b.name: b.dtype for b in nest.buffers if b.name in ("q", "kt", "p", "vt")} == {
        "q": "bf16", "kt": "bf16", "p": "f32", "vt": "f32"}
    rng = np.random.default_rng(2)
    inputs = {p.name: rng.standard_normal(p.type.shape).astype(np.float32)
              for p in prog.function.params}
    (got,), _ = prog.run(inputs)
    passes, summary = check_output(prog.function, prog.function.outputs[0], got,
                                   zhenwu.reference(source, inputs)[0])
    assert passes, summary
