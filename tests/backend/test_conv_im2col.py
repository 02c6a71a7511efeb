"""A conv strided along the width gathers its patches in L1 from the input rows under the tile
(issue 14 item 6: the ResNet stem), instead of one DMA per tap whose every element is a burst
of its own. Checked against the reference evaluator with several tiles per core."""

from __future__ import annotations

import re

import pytest
from backend_helpers import compile_and_run, conv_nest
from zhenwu.compiler.backend.kernel_ir import Load
from zhenwu.compiler.frontend import load_program


def _run(source: str, cores: int = 2):
    """(compiled, result) at -O2 on `cores` cores, checked against the reference."""
    _, compiled, result, _ = compile_and_run(source, opt_level=2, cores=cores)
    return compiled, result


@pytest.mark.parametrize("shape, weights, args", [
    # the ResNet stem's 7x7 stride 2 over 3 channels, then ReLU
    ("bf16[2, 3, 64, 64]", "bf16[32, 3, 7, 7]", "stride=2, padding=3"),
    # dilated 3x3 stride 2 over 4 channels
    ("bf16[2, 4, 30, 24]", "bf16[16, 4, 3, 3]", "stride=2, padding=2, dilation=2"),
    # 1x1 stride 2 (a ResNet downsampling shortcut), f32
    ("f32[4, 8, 32, 32]", "f32[16, 8, 1, 1]", "stride=2"),
])
def test_width_strided_conv_gathers_patches_in_l1(shape, weights, args):
    dtype = shape.split("[")[0]
    compiled, _ = _run(f"fn main(x: {shape}, w: {weights}, b: {dtype}[1, 1, 1]) -> f32[] {{\n"
                       f"    return cast(sum(relu(conv2d(x, w, {args}) + b)), f32)\n}}\n")
    nest = conv_nest(compiled)
    loads = [s for s in nest.step if isinstance(s, Load)]
    assert [s.dst for s in loads] == ["xin"]  # one load a step: the rows under the tile
    assert nest.parallel_tiles >= 2 * 2


def test_stem_conv_output_matches_with_several_tiles_per_core():
    compiled, _ = _run(
        "fn main(x: bf16[2, 3, 64, 64], w: bf16[64, 3, 7, 7]) -> bf16[2, 64, 16, 16] {\n"
        "    y = relu(conv2d(x, w, stride=2, padding=3))\n"
        "    return maxpool2d(y, 3, stride=2, padding=1)\n}\n")
    nest = conv_nest(compiled)
    assert nest.buffer("xin") is not None
    assert nest.parallel_tiles >= 2 * 2
    # 147 gathers a tile, more than the vector queue holds: the next tile's rows are
    # loaded a tile ahead (codegen's prefetch schedule), into one of several copies
    assert nest.schedule == "prefetch" and nest.buffer("xin").copies > 2


@pytest.mark.parametrize("channels, schedule", [(1, ""), (3, "prefetch")])
def test_the_prefetch_schedule_takes_nests_with_more_gathers_than_the_queue(channels,
                                                                            schedule):
    """3x3 stride 2: 9 gathers a tile for one channel (the queue holds them), 27 for three;
    an odd tile count per core (the last tile has none to prefetch)."""
    compiled, _ = _run(
        f"fn main(x: bf16[3, {channels}, 32, 32], w: bf16[16, {channels}, 3, 3]) "
        f"-> bf16[3, 16, 16, 16] {{\n    return relu(conv2d(x, w, stride=2, padding=1))\n}}\n")
    nest = conv_nest(compiled)
    assert nest.buffer("xin") is not None and nest.schedule == schedule


def test_an_input_height_the_stride_does_not_divide_loads_taps():
    compiled, _ = _run(
        "fn main(x: bf16[2, 3, 33, 32], w: bf16[16, 3, 3, 3]) -> bf16[2, 16, 16, 15] {\n"
        "    return conv2d(x, w, stride=2)\n}\n")
    loads = [s.dst for s in conv_nest(compiled).step if isinstance(s, Load)]
    assert "xin" not in loads and len(loads) == 9


def test_stride_one_convs_keep_their_tap_loads():
    compiled, _ = _run(
        "fn main(x: bf16[2, 16, 12, 12], w: bf16[16, 16, 3, 3]) -> bf16[2, 16, 12, 12] {\n"
        "    return conv2d(x, w, padding=1)\n}\n")
    loads = [s.dst for s in conv_nest(compiled).step if isinstance(s, Load)]
    assert "xin" not in loads


_STEM = ("fn main(x: bf16[4, 3, 64, 64], w: bf16[64, 3, 7, 7]) -> bf16[4, 64, 32, 32] {\n"
         "    return relu(conv2d(x, w, stride=2, padding=3))\n}\n")


def test_staged_gathers_wait_for_the_mma_not_the_store():
    """The gathers of a tile wait for their patch copy (freed by the MMA two tiles back,
    `stage_free`), the MMA for its accumulator copy (freed by the store): checked on the
    chip with several tiles per core (the race detector on) and in the code."""
    from zhenwu.compiler.backend import codegen as cg

    compiled, _ = _run(_STEM)
    nest = conv_nest(compiled)
    assert cg._staged(nest)
    assert nest.parallel_tiles >= 3 * 2
    text = compiled.asm_text
    # a nest's events, as codegen takes them from the program's event file
    from zhenwu.compiler.backend.allocators import EventFile

    ev = cg.NestEvents.take(EventFile(reserve_async=True))
    gathers = [line for line in text.splitlines() if line.strip().startswith("VCOPY")]
    assert f"E{ev.stage_free}" in gathers[0] and f"E{ev.out_free}" not in gathers[0]
    mma = next(line for line in text.splitlines() if line.strip().startswith("MMA"))
    assert f".wait E{ev.out_free}" in mma and f".sig E{ev.stage_free}" in mma
    # the load buffer's credit comes back with the last gather (the MMA reads no load)
    assert f".sig E{ev.ld_free} " in gathers[-1] + " "
    assert not re.search(rf"\bE{ev.ld_free}\b", mma)


def test_staging_credit_saves_the_store_round_trip():
    """Host-independent cycles: the staged protocol against the store-coupled one on the
    same kernels (timing only, the full 32 cores)."""
    from zhenwu.compiler.backend import codegen as cg
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.isa.machine import load_machine
    from zhenwu.runtime import run_program

    machine = load_machine("m890")
    source = ("fn main(x: bf16[8, 3, 224, 224], w: bf16[64, 3, 7, 7]) "
              "-> bf16[8, 64, 112, 112] {\n"
              "    return relu(conv2d(x, w, stride=2, padding=3))\n}\n")

    def cycles() -> int:
        fn = load_program("stem.zt", text=source)
        compiled = compile_function(fn, machine, CompileOptions(opt_level=2))
        return run_program(compiled.program, machine, {}, timing_only=True).report.cycles

    staged = cycles()
    original = cg._staged
    cg._staged = lambda nest: False
    try:
        coupled = cycles()
    finally:
        cg._staged = original
    # (6.5% with the DRAM rows a store leaves open shared between cores: 12,861 vs 13,757)
    assert staged < coupled * 0.95, (staged, coupled)


@pytest.mark.parametrize("source", [
    # several reduction steps (a 3x3 conv over 256 channels: a tap's DMA per step)
    ("fn main(x: bf16[2, 256, 14, 14], w: bf16[256, 256, 3, 3]) -> bf16[2, 256, 14, 14] {\n"
     "    return conv2d(x, w, padding=1)\n}\n"),
    # an epilogue on the accumulator before the store (bias)
    ("fn main(x: bf16[2, 3, 64, 64], w: bf16[64, 3, 7, 7], b: f32[64, 1, 1]) "
     "-> f32[2, 64, 32, 32] {\n    return conv2d(x, w, stride=2, padding=3) + b\n}\n"),
    # a plain GEMM: the MMA reads its load buffers
    ("fn main(a: bf16[256, 256], b: bf16[256, 256]) -> bf16[256, 256] {\n"
     "    return a @ b\n}\n"),
])
def test_nests_that_are_not_staged(source):
    """The staged protocol refuses what it does not handle, and those nests still match
    the reference with several tiles per core."""
    from zhenwu.compiler.backend import codegen as cg

    compiled, _ = _run(source)
    for kernel in compiled.kernels.kernels:
        for nest in kernel.nests:
            if nest.schedule != "flash":
                staged = cg._staged(nest)
                if any(isinstance(s, Load) for s in nest.step) and nest.reduction_steps > 1:
                    assert not staged
    if "+ b" in source:
        nest = conv_nest(compiled)
        assert not cg._staged(nest)
    if "a @ b" in source:
        assert not any(cg._staged(n) for k in compiled.kernels.kernels for n in k.nests)
