"""All-reduces overlapped with compute: `.async` transfers, the asynchronous all-reduce's
timing by hand, the row-chunk rewrite (what it chunks and what it refuses), its price, and
overlapped many-chip runs against the one-chip reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zhenwu.compiler.backend.emitter import Emitter
from zhenwu.compiler.backend.pipeline import CompileOptions
from zhenwu.compiler.cli import main
from zhenwu.compiler.collective_codegen import (
    Region,
    emit_async_allreduce_done,
    emit_async_allreduce_start,
)
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.inputs import prepare_inputs
from zhenwu.compiler.reference import evaluate
from zhenwu.compiler.shard import compile_spmd, parse_mesh, run_spmd, shard_function
from zhenwu.compiler.shard.overlap import ROW_CHUNK, ROW_JOIN, chunk_count, find_region
from zhenwu.isa.asm import parse_assembly
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.machine import load_machine
from zhenwu.isa.program import TensorDecl
from zhenwu.runtime.cluster import run_cluster

M890 = load_machine("m890")

MLP = """
fn main(x: bf16[T, D], w1: bf16[D, F@tp], b1: f32[F@tp], w2: bf16[F@tp, D],
        b2: f32[D]) -> f32[T, D] {
    h = relu(x @ w1 + b1)
    return softmax(h @ w2 + b2, axis=-1)
}
"""


def _hand_programs(comm: bool, compute: bool):
    """Two chips: an asynchronous all-reduce of 1000 f32 on core 31, and/or 100 MMAs of
    64 x 64 x 64 on core 0 in a kernel of their own (ending with BAR.CHIP) in between."""
    programs = []
    for chip in range(2):
        emit = Emitter()
        emit.tensor(TensorDecl("buf", "f32", (1000,), 0, "inout"))
        if comm:
            emit_async_allreduce_start(emit, (0, 1), chip, Region("buf", 0, 4000, "f32"), 31,
                                       label="ar_start")
        if compute:   # hand-written: the Emitter reads text lines too
            emit.lines.extend([".kernel compute", "    GETID r0, core",
                               "    BNEZ r0, compute_skip", "    LOOP r3, 100",
                               "    MMA.bf16.f32 ACC[0], L1[0], L1[8192], 64, 64, 64 .init",
                               "    ENDLOOP", "compute_skip:", "    BAR.CHIP"])
        if comm:
            emit_async_allreduce_done(emit, [(31, 2)], label="ar_done")
        emit.op("HALT")
        programs.append(emit.program())
    return programs


def test_async_allreduce_overlaps_compute_cycles_by_hand():
    """All-reduce of 1000 f32 (4000 B) on 2 M890 chips on core 31's NET queue, `.async`.

    A kernel's first instruction issues LAUNCH (3000) cycles after a core enters it, except
    a control-only region (scalar, waits and NET transfers: the start and done regions)
    entered after the program's first region; a chip barrier releases BARRIER (100) cycles
    after its last arrival.

    Alone. ar_start is the program's first region: launched. Core 31: GETID, SUB, BNEZ;
    RSIG issues at 3003, starts at 3004 and lands on the peer at 3004 + 1 + 3000 (alpha
    2 us) = 6005. The PUT.add (2000 B: ceil(2000 / 533.3 B/cycle) = 4 cycles), queued
    behind it, waits for the peer's RSIG (6005 + 4 wake = 6009) and lands at 6009 + 4 +
    3000 = 9013; the all-gather PUT waits for the peer's add (9017) and lands at 9017 + 4 +
    3000 = 12021 (there and, as its `.sig`, here). ar_done is not launched: GETID 3006 ..,
    WAIT.S gathered wakes at 12025, WAIT.S sent 12026, BAR.CHIP at 12027 releases at 12028 +
    100, HALT ends at 12129.

    Compute alone: the launch, then GETID 3000, BNEZ 3001, LOOP 3002, the first MMA issues
    at 3003 and starts at 3004; 100 x 64 cycles, the last completes at 3004 + 6400 + 32
    (fill) = 9436; BAR.CHIP releases at 9437 + 100, HALT ends at 9538.

    Both: ar_start as above (core 0 leaves it at 3003, core 31 at 3006 with its puts
    queued); the compute kernel is launched: its MMAs start at 6007 and end at 12439; its
    BAR.CHIP releases at 12540 although core 31's NET queue still holds the `.async` puts
    (landed at 12021); ar_done: WAIT.S .. BAR.CHIP at 12545 releases at 12646, HALT ends at
    12647: the max of the two, not their sum."""
    comm = run_cluster(_hand_programs(True, False), M890, timing_only=True).report.cycles
    compute = run_cluster(_hand_programs(False, True), M890, timing_only=True).report.cycles
    assert (comm, compute) == (12129, 9538)
    xs = [np.arange(1000, dtype=np.float32) * (chip + 1) for chip in range(2)]
    both = run_cluster(_hand_programs(True, True), M890, [{"buf": x} for x in xs])
    assert both.report.cycles == 12647 < comm + compute
    kernels = {k.name: (k.start_cycle, k.cycles) for k in both.report.chips[0].kernels}
    assert kernels["compute"] == (3003, 9537) and kernels["ar_done"] == (12540, 106)
    for out in both.outputs:
        np.testing.assert_array_equal(out["buf"], xs[0] + xs[1])


def test_halt_waits_for_async_transfers_and_barriers_do_not():
    """A core whose NET queue holds only `.async` work passes BAR.CHIP at once, but HALT
    waits for it; without `.async` the barrier waits for the RSIG to land (alpha)."""
    def program(option: str) -> list:
        text = (f".tensor buf, f32, [4], 0x0, inout\n.kernel send\n    RSIG 1, E5 {option}\n"
                "    BAR.CHIP\n.kernel after\n    HALT\n")
        other = ".tensor buf, f32, [4], 0x0, inout\n    WAIT.S E5\n    BAR.CHIP\n    HALT\n"
        return [parse_assembly(text, "a.s"), parse_assembly(other, "b.s")]

    alpha = round(M890.cycles(M890.link_alpha))
    launch = M890.kernel_launch_cycles  # the RSIG issues after the kernel's launch
    for option, barrier_waits in ((".async", False), ("", True)):
        chip0 = run_cluster(program(option), M890, timing_only=True).report.chips[0]
        after = next(k for k in chip0.kernels if k.name == "after")
        assert (after.start_cycle > launch + alpha) == barrier_waits
        assert chip0.cycles > launch + alpha  # HALT waits either way


def test_async_option_round_trips_through_the_binary():
    from zhenwu.isa.asm import print_program
    from zhenwu.isa.encoding import decode_program, encode_program

    text = (".tensor buf, f32, [8], 0x0, inout\n"
            "    DMA.PUT.f32 1, buf+16, buf, 16, E29 .add .async .wait E28:7\n"
            "    RSIG 1, E28 .async\n    HALT\n")
    program = parse_assembly(text, "t.s")
    again = decode_program(encode_program(program))
    assert print_program(again) == print_program(program)
    assert ".async" in print_program(again)


# ---- the rewrite ------------------------------------------------------------------------


def _spmd(text: str, tmp_path, mesh: str = "tp=8", **shapes):
    path = tmp_path / "prog.zt"
    path.write_text(text)
    fn = load_program(str(path), shapes=shapes)
    return fn, shard_function(fn, parse_mesh(mesh))


def test_region_of_the_megatron_mlp(tmp_path):
    """Upward through the row-parallel matmul, relu, bias add, the column-parallel matmul
    (x has rows; w1 is used whole); downward through the bias add and the softmax (its
    reductions keep the rows)."""
    _, spmd = _spmd(MLP, tmp_path, T=32, D=64, F=128)
    seed = next(op for op in spmd.fn.ops if op.kind == "all_reduce")
    kinds = [op.kind for op in find_region(spmd.fn, seed)]
    assert kinds.count("matmul") == 2 and "all_reduce" in kinds
    assert "reduce_max" in kinds and "reduce_sum" in kinds and "exp" in kinds


@pytest.mark.parametrize("body, joined", [
    # the rows reach the product as its right operand: not row-wise, stays outside
    ("r = all_reduce_me\n    return transpose(r, [1, 0]) @ r", "transpose"),
    # a reduction over the rows
    ("r = all_reduce_me\n    return sum(r, axis=0)", "reduce_sum"),
])
def test_region_refuses_what_is_not_row_wise(tmp_path, body, joined):
    text = """
fn main(x: f32[T, F@tp], w: f32[F@tp, T]) -> f32[{shape}] {{
    {body}
}}
""".format(shape="T, T" if "transpose" in body else "T",
           body=body.replace("all_reduce_me", "x @ w"))
    _, spmd = _spmd(text, tmp_path, mesh="tp=2", T=32, F=32)
    seed = next(op for op in spmd.fn.ops if op.kind == "all_reduce")
    region = find_region(spmd.fn, seed)
    assert joined not in [op.kind for op in region]
    # chunked anyway, the refused op reads the joined rows: still exact
    _check(tmp_path, text, chunks=2, mesh="tp=2", T=32, F=32)


def _check(tmp_path, text, chunks, mesh="tp=8", **shapes):
    path = tmp_path / "prog.zt"
    path.write_text(text)
    fn = load_program(str(path), shapes=shapes)
    spmd = shard_function(fn, parse_mesh(mesh))
    compiled = compile_spmd(spmd, M890, CompileOptions(), parse_mesh(mesh).chips,
                            overlap_chunks=chunks)
    inputs = prepare_inputs(fn, {}, 5, {})
    outputs, result = run_spmd(compiled, M890, inputs)
    for got, want in zip(outputs, evaluate(fn, inputs)):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
    return compiled, result


@pytest.mark.parametrize("chunks", [2, 4])
def test_overlapped_mlp_matches_the_reference(tmp_path, chunks):
    compiled, result = _check(tmp_path, MLP, chunks, T=32, D=64, F=128)
    assert [region.chunks for region in compiled.overlap] == [chunks]
    kinds = [op.kind for op in compiled.fn.ops]
    assert kinds.count(ROW_CHUNK) == chunks and kinds.count(ROW_JOIN) == 1
    assert [algorithm for _, algorithm, _ in compiled.collectives] == ["async"] * chunks
    names = [k.name for k in result.report.chips[0].kernels]
    # chunk i's all-reduce starts before chunk i+1's kernels: the first done comes later
    first_start = next(i for i, n in enumerate(names) if n.endswith("_start"))
    first_done = next(i for i, n in enumerate(names) if n.endswith("_done"))
    assert first_done > first_start + 1


def test_overlapped_qwen_block_cli(capsys):
    """The Megatron Qwen-style block: both all-reduces in one region, 4 chunks, exact."""
    status = main(["run", "samples/sharded/qwen_block_tp.zt", "--chips", "8", "--mesh",
                   "tp=8", "--shape", "S=32", "--shape", "D=64", "--shape", "F=128",
                   "--check", "--overlap-chunks", "4"])
    out = capsys.readouterr().out
    assert status == 0 and " ok" in out
    assert "overlap: 2 all-reduce(s)" in out and "in 4 row chunks of 8" in out
    assert out.count("async") == 8


def test_chunk_count_is_priced(tmp_path):
    """Tiny messages: a chunk's kernel launches cost more than the all-reduce hides (1);
    the Qwen-style block at T=4096 on 8 chips: several chunks."""
    _, small = _spmd(MLP, tmp_path, T=32, D=64, F=128)
    seed = next(op for op in small.fn.ops if op.kind == "all_reduce")
    assert chunk_count(find_region(small.fn, seed), 32, tuple(range(8)), 8, M890) == 1
    fn = load_program("samples/sharded/qwen_block_4096_tp.zt")
    big = shard_function(fn, parse_mesh("tp=8"))
    seed = next(op for op in big.fn.ops if op.kind == "all_reduce")
    region = find_region(big.fn, seed)
    assert sum(op.kind == "all_reduce" for op in region) == 2
    assert chunk_count(region, 4096, tuple(range(8)), 8, M890) >= 2


def test_overlap_chunks_must_be_positive(capsys):
    status = main(["run", "samples/sharded/qwen_block_tp.zt", "--chips", "8", "--mesh",
                   "tp=8", "--shape", "S=32", "--shape", "D=64", "--shape", "F=128",
                   "--overlap-chunks", "0"])
    assert status == 2 and "--overlap-chunks 0" in capsys.readouterr().err


def test_a_core_that_halts_with_async_work_pending_is_a_trap():
    """A peer's `.async` signal landing after this core halted is still caught."""
    sender = parse_assembly(".tensor buf, f32, [4], 0x0, inout\n    RSIG 1, E5 .async\n"
                            "    HALT\n", "a.s")
    receiver = parse_assembly(".tensor buf, f32, [4], 0x0, inout\n    HALT\n", "b.s")
    with pytest.raises(ChipTrap, match="after this core halted"):
        run_cluster([sender, receiver], M890, timing_only=True)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzer_overlapped_programs_match_the_reference(data):
    """The fuzzer's Megatron-style programs (random activation, random epilogue, row-wise or
    not) with a random forced chunk count on 2 chips match the one-chip reference."""
    import tempfile
    from pathlib import Path

    from zhenwu.compiler.fuzz.generator import HypothesisChooser, overlap_program

    text, chunks = overlap_program(HypothesisChooser(data), 2)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.zt"
        path.write_text(text)
        fn = load_program(str(path))
    spmd = shard_function(fn, parse_mesh("tp=2"))
    compiled = compile_spmd(spmd, M890, CompileOptions(), 2, overlap_chunks=chunks)
    assert [region.chunks for region in compiled.overlap] == [chunks], text
    inputs = prepare_inputs(fn, {}, 2, {})
    outputs, _ = run_spmd(compiled, M890, inputs)
    for got, want in zip(outputs, evaluate(fn, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=text)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzer_random_programs_overlapped(data):
    """The fuzzer's random programs with random shardings over 2 chips and a random forced
    chunk count (regions whose rows it does not divide stay whole) match the reference."""
    import tempfile
    from pathlib import Path

    from zhenwu.compiler.check import output_tolerance, relative_error
    from zhenwu.compiler.fuzz.generator import HypothesisChooser, add_shardings, generate_program

    chooser = HypothesisChooser(data)
    text = add_shardings(generate_program(chooser, max_steps=3, max_rank=3), chooser,
                         {"tp": 2})
    chunks = data.draw(st.sampled_from([2, 4]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.zt"
        path.write_text(text)
        fn = load_program(str(path))
    spmd = shard_function(fn, parse_mesh("tp=2"))
    compiled = compile_spmd(spmd, M890, CompileOptions(), 2, overlap_chunks=chunks)
    inputs = prepare_inputs(fn, {}, 1, {})
    outputs, _ = run_spmd(compiled, M890, inputs)
    for got, want, value in zip(outputs, evaluate(fn, inputs), fn.outputs):
        assert relative_error(got, want) <= output_tolerance(fn, value), text


def test_all_reduce_of_an_operand_from_outside_the_region(tmp_path):
    """A batched product is not row-wise: the all-reduce alone is chunked, in place on the
    row chunks of the product's buffer, and the joined value is that buffer."""
    text = """
fn main(x: f32[4, 16, 8@tp], w: f32[4, 8@tp, 8]) -> f32[64, 8] {
    return reshape(x @ w, [64, 8])
}
"""
    compiled, _ = _check(tmp_path, text, 2, mesh="tp=2")
    [region] = compiled.overlap
    assert [op.kind for op in region.ops] == ["all_reduce"] and region.rows == 4


def test_ir_prints_the_chunked_spmd_function(capsys):
    status = main(["ir", "samples/sharded/qwen_block_tp.zt", "--chips", "8", "--shape",
                   "S=32", "--shape", "D=64", "--shape", "F=128", "--overlap-chunks", "2"])
    out = capsys.readouterr().out
    assert status == 0 and "// overlap: 2 all-reduce(s)" in out
    assert out.count(" = row_join ") == 1 and out.count("chunks=2} : f32[16,64]") == 2
