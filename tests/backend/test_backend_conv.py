"""conv2d as one implicit-GEMM kernel at -O1/-O2 (compiler/backend/conv.py): numbers against
the reference evaluator over strides, paddings, dilations, groups, odd sizes and dtypes, the
kernel structure (one kernel, no patches in HBM), the fuse log, and the Kernel IR round trip."""

from __future__ import annotations

import pytest
from backend_helpers import compile_and_run
from zhenwu.compiler.backend.kernel_ir import Load, Vec, parse_kernels, print_kernels


def _out(size: int, kernel: int, stride: int, pads: tuple[int, int], dilation: int) -> int:
    return (size + sum(pads) - dilation * (kernel - 1) - 1) // stride + 1


def _pair(value):
    return value if isinstance(value, tuple) else (value, value)


def conv_program(x, w, dtype="f32", stride=1, padding=0, dilation=1, groups=1,
                 bias=False, relu=False) -> str:
    n, c, h, wd = x
    o, cg, kh, kw = w
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        pads = padding
    else:
        ph, pw = _pair(padding)
        pads = ((ph, ph), (pw, pw))
    oh, ow = _out(h, kh, sh, pads[0], dh), _out(wd, kw, sw, pads[1], dw)
    params = f"x: {dtype}[{n}, {c}, {h}, {wd}], w: {dtype}[{o}, {cg}, {kh}, {kw}]"
    pad_text = "[[{}, {}], [{}, {}]]".format(*pads[0], *pads[1])
    expr = (f"conv2d(x, w, stride=[{sh}, {sw}], padding={pad_text}, dilation=[{dh}, {dw}], "
            f"groups={groups})")
    if bias:
        params += f", b: {dtype}[{o}]"
        expr = f"{expr} + b[:, None, None]"
    if relu:
        expr = f"relu({expr})"
    return f"fn main({params}) -> {dtype}[{n}, {o}, {oh}, {ow}] {{\n    return {expr}\n}}\n"


CASES = [
    # x, w, keyword arguments
    ((1, 3, 5, 7), (1, 3, 3, 3), {"padding": 1}),
    ((3, 3, 7, 5), (4, 3, 3, 3), {"stride": 2, "padding": 1, "bias": True, "relu": True}),
    ((2, 3, 11, 11), (8, 3, 7, 7), {"dtype": "bf16", "stride": 2, "padding": 3, "relu": True}),
    ((1, 5, 9, 8), (6, 5, 3, 3), {"dtype": "f16", "stride": 3, "padding": 2, "bias": True}),
    ((1, 4, 9, 10), (4, 4, 3, 3), {"dilation": 2, "padding": 2}),
    ((2, 6, 8, 7), (9, 2, 3, 3), {"groups": 3, "padding": 1, "bias": True}),
    ((1, 4, 6, 6), (4, 1, 3, 3), {"dtype": "bf16", "groups": 4, "padding": 1, "relu": True}),
    ((1, 17, 6, 5), (20, 17, 1, 1), {"dtype": "bf16", "bias": True}),
    ((3, 16, 5, 9), (1, 16, 2, 3), {"stride": (1, 2), "padding": ((0, 2), (1, 0))}),
    ((1, 2, 4, 4), (3, 2, 3, 3), {"stride": 2, "padding": 3}),   # taps entirely in the padding
    ((1, 3, 12, 9), (5, 3, 5, 3),
     {"dtype": "f16", "dilation": (2, 1), "stride": (2, 3), "padding": 2}),
    ((1, 40, 7, 7), (24, 40, 3, 3), {"dtype": "bf16", "padding": 1, "bias": True, "relu": True}),
]


@pytest.mark.parametrize("x, w, kwargs", CASES)
def test_conv_is_one_kernel_that_matches_the_reference(x, w, kwargs):
    source = conv_program(x, w, **kwargs)
    _fn, compiled, result, want = compile_and_run(source, opt_level=2)
    names = [k.name for k in compiled.kernels.kernels]
    assert len(names) == 1 and names[0].startswith("conv"), names
    # no patches: HBM receives the output and nothing else
    assert result.report.hbm_write_bytes == want[0].nbytes


def test_o1_also_takes_the_implicit_gemm_and_o0_keeps_im2col():
    source = conv_program((1, 3, 6, 6), (4, 3, 3, 3), padding=1)
    _, fused, _, _ = compile_and_run(source, opt_level=1)
    _, simple, _, _ = compile_and_run(source, opt_level=0)
    assert fused.kernel_count == 1
    assert simple.kernel_count > 3   # pad, taps, concat, matmul


def test_stem_pads_k_once_and_zeroes_the_padding_rows():
    """3 channels x 49 taps = 147 rows of K: one MX multiple over all taps, not one per tap."""
    source = conv_program((1, 3, 20, 20), (16, 3, 7, 7), dtype="bf16", stride=2, padding=3)
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    (nest,) = compiled.kernels.kernels[0].nests
    assert nest.buffer("w").rows == 160 and nest.buffer("x0").rows == 160
    zeroed = [s for s in nest.setup if isinstance(s, Vec) and s.op == "DUP"]
    # the padding rows of every copy of x0, and of the weights (here one resident copy)
    assert len(zeroed) == nest.buffer("x0").copies + nest.buffer("w").copies
    assert "MMA.bf16.f32" in compiled.asm_text and ".tA" in compiled.asm_text


def test_weights_stay_in_l1_when_every_tile_of_a_core_has_the_same_channels():
    """Output channels are the innermost parallel axis: with 4 channel tiles on 32 cores,
    core c always gets channel tile c % 4 and loads its weights once. (16 input channels:
    one MX depth, so one reduction step; over more channels the halo tiling of several
    steps, tests/backend/test_conv_halo.py, is faster.)"""
    source = conv_program((2, 16, 14, 14), (256, 16, 3, 3), dtype="bf16", padding=1)
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    (nest,) = compiled.kernels.kernels[0].nests
    assert [s.dst for s in nest.setup if isinstance(s, Load)] == ["w"]
    assert not [s for s in nest.step if isinstance(s, Load) and s.dst == "w"]
    assert nest.core_axes and nest.grid[nest.core_axes[0]] > 1
    assert "WAIT.MX" in compiled.asm_text   # the scalar does not wait for the weights


def test_taps_of_one_phase_share_a_descriptor():
    source = conv_program((1, 8, 9, 9), (8, 8, 3, 3), padding=1)
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    descs = [line for line in compiled.asm_text.splitlines() if line.strip().startswith("DESC")]
    assert len(descs) == 3   # x (one phase for stride 1), w, out


def test_residual_and_cast_epilogue():
    source = ("fn main(x: f32[2, 8, 6, 6], w: f32[8, 8, 3, 3], r: f32[2, 8, 6, 6], "
              "b: f32[8]) -> bf16[2, 8, 6, 6] {\n"
              "    y = conv2d(x, w, padding=1) + b[:, None, None]\n"
              "    return cast(relu(y + r), bf16)\n}\n")
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert [k.name for k in compiled.kernels.kernels] == ["conv_fused_0"]


def test_an_operand_along_one_pixel_axis_stays_outside():
    source = ("fn main(x: f32[1, 4, 6, 6], w: f32[4, 4, 3, 3], s: f32[6]) -> f32[1, 4, 6, 6] {\n"
              "    return conv2d(x, w, padding=1) * s\n}\n")
    _fn, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert compiled.kernel_count == 2


def fused_graph(source: str):
    """The graph as -O2 fuses it: the graph passes with the fused lowering's target (which
    keeps whole the ops it claims), then `fuse`."""
    from backend_helpers import machine
    from zhenwu.compiler.backend.groups import FusedTarget
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.passes import default_graph_pipeline, get_pass, run_pipeline

    fn = load_program("test.zt", text=source)
    return run_pipeline(fn, default_graph_pipeline(FusedTarget(machine())) + [get_pass("fuse")])


def test_a_claimed_conv_stays_whole_and_logs_it():
    source = conv_program((1, 3, 8, 8), (4, 3, 3, 3), padding=1, bias=True, relu=True)
    fused = fused_graph(source)
    text = fused.attrs["fusion"].format(fused)
    assert [op.kind for op in fused.ops if op.kind not in ("reshape",)] == [
        "conv2d", "add", "relu"]
    assert "kernel 0 conv:" in text and ":conv2d" in text and ":relu" in text
    assert "keep %3 conv2d whole: the implicit-GEMM lowering claims it" in text


@pytest.mark.parametrize("source, reason", [
    # 64 taps and the weights are more loads than one event counts
    (("fn main(x: f32[1, 1, 9, 9], w: f32[1, 1, 8, 8]) -> f32[1, 1, 2, 2] {\n"
     "    return conv2d(x, w)\n}\n"), "64 taps"),
    (("fn main(x: f32[1, 2, 6, 6], w: f32[3, 3, 2, 4]) -> f32[1, 4, 4, 4] {\n"
     "    return conv2d(x, transpose(w, [3, 2, 0, 1]))\n}\n"), "the weights are a view"),
    # 5x5 stride-5 taps fall in 25 phases: one descriptor each, more than a kernel keeps
    (("fn main(x: f32[1, 1, 10, 10], w: f32[1, 1, 5, 5]) -> f32[1, 1, 2, 2] {\n"
     "    return conv2d(x, w, stride=5)\n}\n"), "25 tap phases"),
    # (an i32 conv's im2col product is split into i8 ones by split-int-matmul before fuse)
    (("fn main(x: i8[1, 2, 5, 5], w: i8[3, 2, 3, 3]) -> i8[1, 3, 3, 3] {\n"
     "    return conv2d(x, w)\n}\n"), "i8 has no implicit GEMM"),
])
def test_convs_the_implicit_gemm_does_not_claim_are_decomposed(source, reason):
    fused = fused_graph(source)
    plan = fused.attrs["fusion"]
    assert any(reason in d and d.startswith("decompose %") and "implicit-GEMM lowering refuses"
               in d for d in plan.decisions), plan.decisions
    assert "conv2d" not in [op.kind for op in fused.ops]
    assert "matmul" in [op.kind for op in fused.ops]   # the im2col's product
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert not any(k.name.startswith("conv") for k in compiled.kernels.kernels)


def test_conv_kernel_ir_prints_and_parses_back():
    source = conv_program((1, 3, 9, 9), (5, 3, 3, 3), dtype="bf16", stride=2, padding=1,
                          bias=True, relu=True)
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    text = print_kernels(compiled.kernels)
    assert "tA" in text
    assert parse_kernels(text) == compiled.kernels
    assert print_kernels(parse_kernels(text)) == text


def test_samples_conv_block():
    from pathlib import Path

    source = (Path(__file__).parents[2] / "samples" / "conv.zt").read_text()
    _, compiled, _, _ = compile_and_run(source, opt_level=2, shapes={"B": 2})
    # three conv nests; the two independent ones share a kernel (horizontal fusion,
    # compiler/backend/merge.py: its name joins theirs)
    assert sum(k.name.split("_").count("conv") for k in compiled.kernels.kernels) == 3
    # and the mean's division by the pixel count is the classifier product's prologue
    # (compiler/passes/prologue_gemm_match.py): convs, pool, sum, product
    assert len(compiled.kernels.kernels) == 5


POOLS = [
    # x, kernel, stride, padding, dtype
    ((2, 3, 14, 13), 3, 2, 1, "bf16"),     # the stem's pool, odd width
    ((1, 2, 6, 19), 3, 2, 1, "f16"),
    ((3, 1, 16, 13), 2, 2, 1, "f32"),
    ((1, 2, 2, 2), 4, 1, 3, "f32"),        # windows mostly in the padding
    ((2, 5, 9, 9), 2, 3, 1, "f32"),
    ((1, 16, 4, 8), 3, 1, 0, "bf16"),
]


@pytest.mark.parametrize("x, kernel, stride, padding, dtype", POOLS)
def test_maxpool_is_one_kernel_that_matches_the_reference(x, kernel, stride, padding, dtype):
    n, c, h, w = x
    oh, ow = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    source = (f"fn main(x: {dtype}[{n}, {c}, {h}, {w}]) -> {dtype}[{n}, {c}, {oh}, {ow}] {{\n"
              f"    return maxpool2d(x, {kernel}, stride={stride}, padding={padding})\n}}\n")
    _, compiled, result, want = compile_and_run(source, opt_level=2)
    assert [k.name for k in compiled.kernels.kernels] == ["maxpool_0"]
    assert result.report.hbm_write_bytes == want[0].nbytes


def test_a_pool_whose_rows_do_not_split_by_the_stride_stays_taps():
    source = ("fn main(x: bf16[1, 2, 7, 3]) -> bf16[1, 2, 3, 2] {\n"
              "    return maxpool2d(x, 4, stride=4, padding=3)\n}\n")
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    assert "maxpool_0" not in [k.name for k in compiled.kernels.kernels]


def test_stem_is_two_kernels():
    """7x7 stride-2 conv + relu, then a 3x3 stride-2 max pool: the conv's output is the only
    intermediate in HBM."""
    source = ("fn main(x: bf16[2, 3, 32, 32], w: bf16[16, 3, 7, 7]) -> bf16[2, 16, 8, 8] {\n"
              "    y = relu(conv2d(x, w, stride=2, padding=3))\n"
              "    return maxpool2d(y, 3, stride=2, padding=1)\n}\n")
    _, compiled, result, want = compile_and_run(source, opt_level=2)
    assert [k.name for k in compiled.kernels.kernels] == ["conv_fused_0", "maxpool_1"]
    assert result.report.hbm_write_bytes == want[0].nbytes + 2 * 16 * 16 * 16 * 2


def test_maxpool_taps_are_typed_strided_operands_that_print_and_parse_back():
    from zhenwu.compiler.backend.kernel_ir import Strided, Vec

    _, compiled, _, _ = compile_and_run(
        "fn main(x: f32[2, 3, 12, 12]) -> f32[2, 3, 6, 6] {\n"
        "    return maxpool2d(x, 3, stride=2, padding=1)\n}\n", opt_level=2)
    nest = compiled.kernels.kernels[0].nests[0]
    taps = [s for stmt in nest.statements() if isinstance(stmt, Vec) for s in stmt.srcs
            if isinstance(s, Strided)]
    assert len(taps) == 9 and {t.buffer for t in taps} == {"in"}
    text = print_kernels(compiled.kernels)
    assert str(taps[0]) in text and f"{taps[0].buffer}@{taps[0].offset}:" in text
    assert parse_kernels(text) == compiled.kernels
