"""Causal attention whose heads do not merge into one batch stride (grouped-query heads
reading their KV head's K and V, as samples/bench/qwen_block.zt writes it) is one flash nest
with a batch axis per factor of the heads: every core takes tiles of every head, dealt
longest first over all of them, with no barrier between heads. Checked against the
reference with several tiles per core (the race detector on), and in cycles against one
nest per KV head."""

from dataclasses import replace

import pytest
from zhenwu.compiler.frontend import load_program

GQA = """
fn main(q: bf16[S, H, 64], k: bf16[S, KV, 64], v: bf16[S, KV, 64]) -> bf16[S, H, 64] {
    kk = reshape(broadcast_to(k[:, :, None, :], [S, KV, H // KV, 64]), [S, H, 64])
    vv = reshape(broadcast_to(v[:, :, None, :], [S, KV, H // KV, 64]), [S, H, 64])
    scores = einsum("qhd,khd->hqk", q, kk) * 0.125
    mask = arange(S)[:, None] >= arange(S)[None, :]
    p = softmax(where(mask, scores, -inf), axis=-1)
    return cast(einsum("hqk,khd->qhd", cast(p, bf16), vv), bf16)
}
"""


def _source(seq: int, heads: int, kv: int) -> str:
    return (f"const S = {seq}\nconst H = {heads}\nconst KV = {kv}\n") + GQA


def _compile(source: str, machine):
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function

    fn = load_program("test.zt", text=source)
    return fn, compile_function(fn, machine, CompileOptions(opt_level=2))


def _flash(compiled):
    return next(k for k in compiled.kernels.kernels if k.name.startswith("flash"))


@pytest.mark.parametrize("seq, heads, kv", [(384, 4, 2), (256, 6, 3), (512, 4, 1)])
def test_grouped_heads_are_one_nest_and_match(seq, heads, kv):
    from zhenwu.compiler.check import relative_error
    from zhenwu.compiler.graph.dtypes import tolerance
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.isa.machine import load_machine
    from zhenwu.runtime import run_program

    machine = replace(load_machine("m890"), cores=3)
    fn, compiled = _compile(_source(seq, heads, kv), machine)
    (nest,) = _flash(compiled).nests
    assert nest.causal
    head_axes = [a for a in range(nest.causal[0]) if nest.grid[a] > 1]
    assert len(head_axes) == (2 if 1 < kv < heads else 1)
    assert nest.parallel_tiles >= 3 * 3   # several tiles a core
    inputs = prepare_inputs(fn, {}, 0)
    result = run_program(compiled.program, machine, compiled.program_inputs(inputs))
    for got, want, value in zip(compiled.graph_outputs(result), evaluate(fn, inputs),
                                fn.outputs):
        assert relative_error(got, want) <= tolerance(value.type.dtype)


def test_one_nest_beats_a_nest_per_kv_head():
    """Host-independent cycles (timing only, 32 cores): 16 query heads over 8 KV heads at
    S=2048 as one nest, against the nest per KV head it was (a core's tiles of one head
    are few and of unequal length, and every nest ends in a chip barrier)."""
    from zhenwu.compiler.backend import flash
    from zhenwu.isa.machine import load_machine
    from zhenwu.runtime import run_program

    machine = load_machine("m890")

    def cycles() -> tuple[int, int]:
        _, compiled = _compile(_source(2048, 16, 8), machine)
        nests = len(_flash(compiled).nests)
        return run_program(compiled.program, machine, {}, timing_only=True).report.cycles, nests

    one, nests = cycles()
    assert nests == 1
    original = flash.MAX_DESC_RANK
    flash.MAX_DESC_RANK = 0   # the nest per outer index
    try:
        split, nests = cycles()
    finally:
        flash.MAX_DESC_RANK = original
    assert nests == 8
    assert one < 0.6 * split, (one, split)
