"""A unit-stride conv over several channel steps loads, per step, the input rows under its
tile with their halo once (one box per step, whole input rows: one DMA run per channel), and
each tap's operand is a window of that box read by its own MMA, instead of one DMA box per
tap whose rows are narrow runs (ResNet's 3x3 convolutions). Checked against the reference
evaluator with several tiles per core (the race detector on)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from backend_helpers import compile_and_run, conv_nest
from zhenwu.compiler.backend.kernel_ir import Load, Mma
from zhenwu.compiler.frontend import load_program


def _compile(source: str, machine):
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function

    fn = load_program("test.zt", text=source)
    return fn, compile_function(fn, machine, CompileOptions(opt_level=2))


def _run(source: str, cores: int = 2):
    """(compiled, result) at -O2 on `cores` cores, checked against the reference."""
    _, compiled, result, _ = compile_and_run(source, opt_level=2, cores=cores)
    return compiled, result


def _out_hw(h, w, k, padding, dilation):
    return tuple(size + 2 * padding - dilation * (kk - 1) for size, kk in zip((h, w), k))


@pytest.mark.parametrize("dtype, n, c, hw, o, k, padding, dilation, epilogue", [
    # ResNet's 3x3 padding 1, bf16
    ("bf16", 3, 128, (14, 14), 64, (3, 3), 1, 1, False),
    # bias and ReLU after it
    ("bf16", 3, 128, (12, 12), 32, (3, 3), 1, 1, True),
    # no padding (the box's halo lies inside x), a 5x3 kernel
    ("bf16", 2, 64, (16, 20), 64, (5, 3), 0, 1, False),
    # dilation 2, padding 2
    ("bf16", 3, 64, (12, 10), 32, (3, 3), 2, 2, False),
    # f32 operands
    ("f32", 4, 64, (8, 8), 16, (3, 3), 1, 1, True),
])
def test_halo_conv_matches_with_several_tiles_per_core(dtype, n, c, hw, o, k, padding,
                                                       dilation, epilogue):
    oh, ow = _out_hw(*hw, k, padding, dilation)
    conv = f"conv2d(x, w, padding={padding}, dilation={dilation})"
    body = f"relu({conv} + b)" if epilogue else conv
    out = "f32" if epilogue else dtype
    source = (f"fn main(x: {dtype}[{n}, {c}, {hw[0]}, {hw[1]}], w: {dtype}[{o}, {c}, {k[0]}, "
              f"{k[1]}], b: f32[{o}, 1, 1]) -> {out}[{n}, {o}, {oh}, {ow}] {{\n"
              f"    return {body}\n}}\n")
    compiled, _ = _run(source)
    nest = conv_nest(compiled)
    assert "xh" in {b.name for b in nest.buffers}
    # two loads a step (the weights, the input box) and one product per tap
    assert [s.dst for s in nest.step if isinstance(s, Load)] == ["w", "xh"]
    assert sum(isinstance(s, Mma) for s in nest.step) == k[0] * k[1]
    assert nest.reduction_steps >= 2
    # several tiles per core (2 cores), the load copies reused across them
    assert nest.parallel_tiles >= 2 * 2, nest.parallel_tiles


@pytest.mark.parametrize("source, halo_cycles, tap_cycles", [
    # ResNet-50 stage 3 (the bench's resnet50_conv3x3 at batch 2)
    (("fn main(x: bf16[2, 64, 14, 14], w: bf16[256, 64, 3, 3]) -> bf16[2, 256, 14, 14] {\n"
      "    return conv2d(x, w, padding=1)\n}\n"), 5063, 6404),
    # ResNet-50 stage 1, 56 x 56
    (("fn main(x: bf16[8, 64, 56, 56], w: bf16[64, 64, 3, 3]) -> bf16[8, 64, 56, 56] {\n"
      "    return conv2d(x, w, padding=1)\n}\n"), 12777, 14617),
])
def test_halo_tiling_is_chosen_where_it_is_faster(source, halo_cycles, tap_cycles):
    """Host-independent cycles (timing only, 32 cores): the halo tiling the model picks,
    against the best tiling of one DMA per tap."""
    from zhenwu.compiler.backend import conv
    from zhenwu.isa.machine import load_machine
    from zhenwu.runtime import run_program

    machine = load_machine("m890")

    def cycles() -> tuple[int, bool]:
        _, compiled = _compile(source, machine)
        halo = "xh" in {b.name for b in conv_nest(compiled).buffers}
        return run_program(compiled.program, machine, {}, timing_only=True).report.cycles, halo

    assert cycles() == (halo_cycles, True)
    original = conv._best_halo_tile
    conv._best_halo_tile = lambda *args: None
    try:
        assert cycles() == (tap_cycles, False)
    finally:
        conv._best_halo_tile = original


def test_halo_tiling_refuses_what_it_does_not_handle():
    """Strided convs, grouped convs and one-step convs (weights stationary) keep their
    tilings; 1 x 1 convs have no halo."""
    from zhenwu.compiler.backend.conv import ConvShape, _best_halo_tile
    from zhenwu.compiler.backend.tile_cost import VectorWork
    from zhenwu.isa.machine import load_machine

    machine = load_machine("m890")
    args = ("bf16", 4, 2, 0, 0, VectorWork(), machine)
    ok = ConvShape(2, 1, 64, 14, 14, 64, 9, True, 2, 2)
    assert _best_halo_tile(ok, *args) is not None
    assert _best_halo_tile(ConvShape(2, 1, 64, 14, 14, 64, 9, True), *args) is None  # strided
    assert _best_halo_tile(replace(ok, groups=2), *args) is None
    assert _best_halo_tile(replace(ok, cg=16), *args) is None   # one step of 16 channels
    assert _best_halo_tile(replace(ok, taps=1, halo_rows=0, halo_cols=0), *args) is None
