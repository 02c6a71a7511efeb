"""Lowering by legality (compiler/backend/groups.py, `decompose`'s target): a conv2d or max
pool that a backend lowering claims reaches the backend whole (one kernel of its kind, no
primitives in the graph); one no lowering claims is decomposed, as -O0 always does, and gives
the reference's numbers; the fuzzer draws both."""

from __future__ import annotations

from dataclasses import replace
from math import prod

import pytest
from backend_helpers import compile_and_run, machine
from zhenwu.compiler.backend import groups
from zhenwu.compiler.backend.groups import FusedTarget
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.passes import default_graph_pipeline, get_pass, run_pipeline

# several tiles per core at these sizes with 2 cores (the race detector sees them)
CONV = ("fn main(x: f32[2, 8, 12, 12], w: f32[64, 8, 3, 3], b: f32[64]) -> f32[2, 64, 12, 12] {\n"
        "    return relu(conv2d(x, w, padding=1) + b[:, None, None])\n}\n")
POOL = ("fn main(x: bf16[2, 8, 12, 12]) -> bf16[2, 8, 6, 6] {\n"
        "    return maxpool2d(x, 3, stride=2, padding=1)\n}\n")


def _kinds(compiled) -> list[str]:
    return [op.kind for op in compiled.graph.ops]


def _refusing(kind: str, why: str):
    """The lowerings, with the one claiming `kind` refusing every op (a test-only
    legality override)."""
    return [replace(low, refusal=lambda op, producers, machine: why) if low.kind == kind
            else low for low in groups.WHOLE_OP_LOWERINGS]


def _decisions(source: str) -> tuple[str, ...]:
    fn = load_program("t.zt", text=source)
    fused = run_pipeline(fn, default_graph_pipeline(FusedTarget(machine())) + [get_pass("fuse")])
    return fused.attrs["fusion"].decisions


def test_a_claimed_conv_reaches_the_backend_whole():
    _, compiled, _, _ = compile_and_run(CONV, opt_level=2, cores=2)
    assert [k.name for k in compiled.kernels.kernels] == ["conv_fused_0"]
    assert "conv2d" in _kinds(compiled) and "matmul" not in _kinds(compiled)
    (nest,) = compiled.kernels.kernels[0].nests
    assert prod(nest.grid) == 6   # 3 tiles per core


def test_a_claimed_pool_reaches_the_backend_whole():
    _, compiled, _, _ = compile_and_run(POOL, opt_level=2, cores=2)
    assert [k.name for k in compiled.kernels.kernels] == ["maxpool_0"]
    assert _kinds(compiled) == ["maxpool2d"]


AVERAGE_POOLS = [
    # x, kernel, stride, dtype
    ((2, 8, 12, 12), 3, 2, "bf16"),
    ((1, 3, 8, 10), (2, 3), (2, 1), "f16"),
    ((2, 4, 16, 16), 2, 2, "f32"),
]


@pytest.mark.parametrize("x, kernel, stride, dtype", AVERAGE_POOLS)
def test_an_unpadded_average_pool_is_one_kernel_with_the_decomposition_s_numbers(
        x, kernel, stride, dtype):
    """Summed in f32 in the decomposition's order and divided once: the -O0 program's
    numbers bit for bit, in one kernel that reads the input once."""
    import numpy as np

    n, c, h, w = x
    (kh, kw), (sh, sw) = ((kernel,) * 2 if isinstance(kernel, int) else kernel,
                          (stride,) * 2 if isinstance(stride, int) else stride)
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    source = (f"fn main(x: {dtype}[{n}, {c}, {h}, {w}]) -> {dtype}[{n}, {c}, {oh}, {ow}] {{\n"
              f"    return avgpool2d(x, {[kh, kw]}, stride={[sh, sw]})\n}}\n")
    _, compiled, result, want = compile_and_run(source, opt_level=2, cores=2)
    assert [k.name for k in compiled.kernels.kernels] == ["avgpool_0"]
    assert result.report.hbm_write_bytes == want[0].nbytes
    _, simple, plain, _ = compile_and_run(source, opt_level=0)
    assert "avgpool2d" not in _kinds(simple)
    got = compiled.graph_outputs(result)[0]
    assert np.array_equal(got, simple.graph_outputs(plain)[0])


def test_a_padded_average_pool_is_decomposed():
    source = ("fn main(x: f32[1, 4, 8, 8]) -> f32[1, 4, 4, 4] {\n"
              "    return avgpool2d(x, 3, stride=2, padding=1)\n}\n")
    assert any(d.startswith("decompose %") and "it is padded" in d for d in _decisions(source))
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert "avgpool2d" not in _kinds(compiled)


def test_the_roofline_counts_a_whole_conv_as_its_im2col_product():
    from zhenwu.compiler.roofline import io_lower_bound_bytes, roofline

    _, whole, _, _ = compile_and_run(CONV, opt_level=2, cores=2)
    _, decomposed, _, _ = compile_and_run(CONV, opt_level=0)
    assert roofline(whole.graph, machine()) == roofline(decomposed.graph, machine())
    assert roofline(whole.graph, machine()).flops == 2 * 2 * 64 * 12 * 12 * 8 * 9
    assert (io_lower_bound_bytes(whole.graph, machine())
            == io_lower_bound_bytes(decomposed.graph, machine()))


def test_o0_claims_nothing():
    _, compiled, _, _ = compile_and_run(CONV, opt_level=0)
    assert "conv2d" not in _kinds(compiled) and "matmul" in _kinds(compiled)


def test_a_conv_no_lowering_claims_is_decomposed_and_matches_the_reference(monkeypatch):
    monkeypatch.setattr(groups, "WHOLE_OP_LOWERINGS", _refusing("conv2d", "refused by a test"))
    _, compiled, _, _ = compile_and_run(CONV, opt_level=2, cores=2)
    names = [k.name for k in compiled.kernels.kernels]
    assert not any(name.startswith("conv") for name in names), names
    assert "conv2d" not in _kinds(compiled) and "matmul" in _kinds(compiled)
    assert any(name.startswith("matmul") for name in names), names
    assert ("decompose %3 conv2d into primitives: the implicit-GEMM lowering refuses it: "
            "refused by a test") in _decisions(CONV)


def test_a_pool_no_lowering_claims_is_decomposed_and_matches_the_reference(monkeypatch):
    monkeypatch.setattr(groups, "WHOLE_OP_LOWERINGS", _refusing("maxpool2d", "refused"))
    _, compiled, _, _ = compile_and_run(POOL, opt_level=2, cores=2)
    assert "maxpool_0" not in [k.name for k in compiled.kernels.kernels]
    assert "maxpool2d" not in _kinds(compiled) and "maximum" in _kinds(compiled)


@pytest.mark.parametrize("source, reason", [
    ("fn main(x: i8[1, 4, 8, 8]) -> i8[1, 4, 4, 4] {\n    return maxpool2d(x, 2)\n}\n",
     "i8 has no one-kernel max pool"),
    (("fn main(x: f32[1, 4, 8, 6]) -> f32[1, 4, 3, 4] {\n"
     "    return maxpool2d(transpose(x, [0, 1, 3, 2]), 2)\n}\n"), "the input is a view"),
    (("fn main(x: bf16[1, 2, 7, 3]) -> bf16[1, 2, 3, 2] {\n"
     "    return maxpool2d(x, 4, stride=4, padding=3)\n}\n"), "is not a multiple of the stride"),
])
def test_pools_the_lowering_refuses_are_decomposed(source, reason):
    decisions = _decisions(source)
    assert any(d.startswith("decompose %") and reason in d for d in decisions), decisions
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert "maxpool2d" not in _kinds(compiled)
    assert not any(k.name.startswith("maxpool") for k in compiled.kernels.kernels)


def test_a_claim_a_later_pass_breaks_is_decomposed_after_the_graph_passes():
    """`hoist-scales` moves the scale off the weights after `decompose` claimed the conv:
    its weights are then a transpose, which the implicit GEMM refuses, so `fuse` asks
    again and decomposes it."""
    source = ("fn main(x: f32[1, 2, 6, 6], w: f32[3, 3, 2, 4]) -> f32[1, 4, 4, 4] {\n"
              "    return conv2d(x, transpose(w, [3, 2, 0, 1]) * 0.5)\n}\n")
    assert any("the weights are a view" in d and d.endswith("(after the graph passes)")
               for d in _decisions(source))
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert not any(k.name.startswith("conv") for k in compiled.kernels.kernels)


def test_a_scale_hoisted_off_a_claimed_conv_is_its_epilogue():
    source = ("fn main(x: f32[1, 4, 8, 8], w: f32[8, 4, 3, 3]) -> f32[1, 8, 8, 8] {\n"
              "    return conv2d(x * 0.5, w, padding=1)\n}\n")
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert [k.name for k in compiled.kernels.kernels] == ["conv_fused_0"]
    assert sorted(op.kind for op in compiled.graph.ops) == ["constant", "conv2d", "mul"]


def test_without_decompose_the_fused_lowering_still_legalizes_every_op():
    """`--disable-pass decompose`: `fuse` asks the target of every whole op, claims what a
    lowering takes and decomposes the rest (the einsum)."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function

    source = ("fn main(x: f32[2, 4, 8, 8], w: f32[8, 16]) -> f32[2, 4, 4, 16] {\n"
              "    return einsum(\"ncij,jk->ncik\", maxpool2d(x, 2, stride=[2, 1], "
              "padding=[[0, 0], [0, 1]]), w)\n}\n")
    fn = load_program("t.zt", text=source)
    compiled = compile_function(fn, machine(), CompileOptions(disabled_passes=("decompose",)))
    assert [k.name for k in compiled.kernels.kernels] == ["maxpool_0", "matmul_1"]


def test_the_fuzzer_draws_claimed_and_refused_convs_and_pools():
    from collections import Counter

    KINDS = ("conv2d", "maxpool2d", "avgpool2d")
    from zhenwu.compiler.fuzz import generator

    seen: Counter = Counter()
    for seed in range(400):
        text = generator.random_program(seed)
        if not any(f"{kind}(" in text for kind in KINDS):
            continue
        for line in _decisions(text):
            for kind in KINDS:
                if f" {kind} whole:" in line:
                    seen[kind, "claimed"] += 1
                elif f" {kind} into primitives:" in line:
                    seen[kind, "refused"] += 1
        if min(seen[k, w] for k in KINDS for w in ("claimed", "refused")):
            break
    assert all(seen[k, w] for k in KINDS for w in ("claimed", "refused")), seen


# an explicit pad before the window op, as ONNX exports write a Conv's padding
PADDED_CONV = ("fn main(x: f32[2, 8, 12, 12], w: f32[64, 8, 3, 3]) -> f32[2, 64, 13, 11] {\n"
               "    return conv2d(pad(x, [[0, 0], [0, 0], [2, 1], [0, 1]]), w, padding=[[0, 0], [0, 0]])\n}\n")
PADDED_POOL = ("fn main(x: bf16[2, 8, 12, 12]) -> bf16[2, 8, 6, 6] {\n"
               "    return maxpool2d(pad(x, [[0, 0], [0, 0], [1, 1], [1, 1]], -inf), 3, stride=2)\n}\n")


@pytest.mark.parametrize("source, kind, pads", [
    (PADDED_CONV, "conv2d", ((2, 1), (0, 1))),
    (PADDED_POOL, "maxpool2d", ((1, 1), (1, 1))),
])
def test_an_explicit_pad_becomes_the_window_op_s_padding(source, kind, pads):
    _, compiled, _, _ = compile_and_run(source, opt_level=2, cores=2)
    (op,) = compiled.graph.ops
    assert op.kind == kind and tuple(map(tuple, op.attrs["pads"])) == pads
    assert len(compiled.kernels.kernels) == 1


@pytest.mark.parametrize("source", [
    # a pad that is not the op's own fill: ones before a conv, zeros before a max-pool
    PADDED_CONV.replace("[0, 1]])", "[0, 1]], 1.0)"),
    PADDED_POOL.replace(", -inf)", ")"),
    # an average pool leaves its padding out of the count: an explicit zero pad is not that
    PADDED_POOL.replace("maxpool2d", "avgpool2d").replace(", -inf)", ")"),
    # the pool's padding would reach its kernel
    PADDED_POOL.replace("[1, 1], [1, 1]], -inf), 3, stride=2)",
                        "[2, 1], [1, 1]], -inf), 3, stride=2, padding=1)").replace(
                            "6, 6]", "8, 7]"),
])
def test_a_pad_the_window_op_cannot_absorb_stays_and_matches_the_reference(source):
    _, compiled, _, _ = compile_and_run(source, opt_level=2, cores=2)
    assert "pad" in _kinds(compiled)
