"""The pipelining step (compiler/backend/pipelining.py): rings turn through their copies,
stages carry the waits and signals the schedule says, and both the generic nest protocol and
flash attention place every event through it."""

from dataclasses import replace

import numpy as np
import pytest
from zhenwu.compiler.backend import pipelining
from zhenwu.compiler.backend.emitter import Emitter, instruction
from zhenwu.compiler.backend.pipelining import (
    Pipeline,
    Ring,
    Stage,
    copies_needed,
    handoff,
    issue_loads,
    peeled_loop,
    prefetch,
)
from zhenwu.compiler.frontend import load_program
from zhenwu.isa.program import Reg


def _scalar(instrs, regs: dict[int, int]) -> dict[int, int]:
    """Run the scalar arithmetic the rings emit (ADD SUB AND REM MUL, floor REM)."""
    ops = {"ADD": lambda a, b: a + b, "SUB": lambda a, b: a - b, "AND": lambda a, b: a & b,
           "REM": lambda a, b: a % b, "MUL": lambda a, b: a * b}
    for instr in instrs:
        dst, a, b = instr.operands
        value = [regs[x.index] if isinstance(x, Reg) else x.value for x in (a, b)]
        regs[dst.index] = ops[instr.mnemonic](*value)
    return regs


@pytest.mark.parametrize("copies, shift, modulo", [(2, 0, False), (2, 0, True), (3, 0, False),
                                                   (3, -1, False), (3, 1, False),
                                                   (4, 2, False)])
def test_a_ring_selects_the_copy_of_an_iteration(copies, shift, modulo):
    ring = Ring(copies, 256)
    for iteration in range(7):
        emit = Emitter()
        ring.select(emit, 1, 0, shift, modulo=modulo)
        regs = _scalar(emit.instructions, {0: iteration})
        assert regs[1] == ((iteration + shift) % copies) * 256
    emit = Emitter()
    ring.select(emit, 1, 0)
    want = "AND" if copies == 2 else "REM"
    assert [i.mnemonic for i in emit.instructions] == [want, "MUL"]


def test_turn_alternates_two_copies_and_counts():
    ring, emit, regs, seen = Ring(2, 4096), Emitter(), {5: 0}, []
    for _ in range(5):
        emit.instructions.clear()
        ring.turn(emit, 4, 5)
        regs = _scalar(emit.instructions, regs)
        seen.append(regs[4])
    assert seen == [0, 4096, 0, 4096, 0] and regs[5] == 5


def test_copies_needed_counts_every_iteration_in_flight():
    assert copies_needed(0, 0) == 1
    assert copies_needed(1, 1) == 3    # flash: K/V loaded a step ahead, P @ V a step behind
    assert copies_needed(1, 0) == 2    # double buffering


def _events(instr):
    return ([(e.index, e.count) for e in instr.waits], [(e.index, e.count) for e in instr.sigs])


def test_a_step_waits_for_its_loads_and_returns_the_copy():
    """A step of two loads into a ring and three compute instructions (MX, VX, VX): the
    first load takes a credit, both signal `full`, the first compute waits for both, the
    last returns the credit, and the engine switch gets its hand-off."""
    ring = Ring(2, 1024, full=10, free=11)
    emit = Emitter()
    pipe = Pipeline([ring])
    pipe.start(emit)
    loads = ["a", "b"]
    issue_loads(ring, loads, lambda load, waits, sigs:
                emit.op("DMA.LD.f32", _tile(), _desc(), waits=waits, sigs=sigs))
    stage = Stage(["MX", "VX", "VX"]).consume(ring, len(loads)).release(ring)
    stage.switches(mx_to_vx=12, vx_to_mx=13)
    stage.emit(emit, [_mma(), _vec(), _vec()])
    pipe.drain(emit)
    got = [(i.name, *_events(i)) for i in emit.instructions]
    assert got[0][0] == "SIG.S" and emit.instructions[0].operands[0].count == 2
    assert got[1] == ("DMA.LD.f32", [(11, 1)], [(10, 1)])
    assert got[2] == ("DMA.LD.f32", [], [(10, 1)])
    assert got[3] == ("MMA.f32.f32", [(10, 2)], [(12, 1)])
    assert got[4] == ("VADD.f32", [(12, 1)], [])
    assert got[5] == ("VADD.f32", [], [(11, 1)])
    assert [g[0] for g in got[6:]] == ["BAR.CORE", "WAIT.S"]
    assert emit.instructions[-1].operands[0].index == 11


def test_handoffs_and_waits_past_two_become_engine_waits():
    producer, consumer = Stage(["MX"]), Stage(["VX", "VX"])
    handoff(20, producer, consumer, at=1)
    consumer.wait((21, 1), at=1).wait((22, 3), at=1)
    emit = Emitter()
    producer.emit(emit, [_mma()])
    consumer.emit(emit, [_vec(), _vec()])
    got = [(i.name, *_events(i)) for i in emit.instructions]
    assert got[0] == ("MMA.f32.f32", [], [(20, 1)])
    assert got[1] == ("VADD.f32", [], [])
    assert got[2][0] == "WAIT.VX" and emit.instructions[2].operands[0].index == 20
    assert got[3] == ("VADD.f32", [(21, 1), (22, 3)], [])


def test_a_predicated_instruction_carries_no_event():
    stage = Stage(["VX", "VX"]).wait((5, 1)).signal((6, 1))
    emit = Emitter()
    stage.emit(emit, [_vec(), _vec()], conditional={0})
    assert [i.name for i in emit.instructions] == ["WAIT.VX", "VADD.f32", "VADD.f32"]
    assert _events(emit.instructions[1]) == ([], [])
    with pytest.raises(ValueError, match="predicated instruction cannot signal"):
        Stage(["VX"]).signal((6, 1)).emit(Emitter(), [_vec()], conditional={0})


def test_prefetch_loads_the_next_iterations_copy_between_advance_and_restore():
    ring = Ring(3, 512, full=1, free=2)
    emit, order = Emitter(), []
    prefetch(emit, ring, 7, 8, ["k"], lambda load, waits, sigs: order.append((waits, sigs)),
             shift=1, advance=lambda: order.append("advance"),
             restore=lambda: order.append("restore"))
    assert order == ["advance", ([(2, 1)], [(1, 1)]), "restore"]
    for iteration in range(5):
        assert _scalar(emit.instructions, {8: iteration})[7] == (iteration + 1) % 3 * 512


@pytest.mark.parametrize("steps", [1, 2, 3, 6])
def test_peeled_loop_runs_first_middle_and_last_iterations(steps):
    emit, calls = Emitter(), []
    peeled_loop(emit, lambda first, last: calls.append((first, last)), 3, 4, steps=steps)
    want = [(True, steps == 1)] + ([(False, False)] if steps > 2 else [])
    want += [(False, True)] if steps > 1 else []
    assert calls == want
    loops = [i for i in emit.instructions if i.mnemonic == "LOOP"]
    assert [i.operands[1].value for i in loops] == ([steps - 2] if steps > 2 else [])


def test_peeled_loop_with_a_count_known_at_run_time():
    emit, calls = Emitter(), []
    peeled_loop(emit, lambda first, last: calls.append((first, last)), 3, 4,
                registers=(5, 6))
    assert calls == [(True, False), (False, False), (False, True)]
    assert [i.name for i in emit.instructions] == ["LOOP", "ADD", "ENDLOOP", "SUB"]
    assert emit.instructions[0].operands == (Reg(3), Reg(6))
    assert emit.instructions[-1].operands[:2] == (Reg(4), Reg(5))


def _tile(space: str = "L1"):
    from zhenwu.isa.program import Addr, Tile
    return Tile(space, Addr(None, 0))


def _desc():
    from zhenwu.isa.program import Addr, DescRef
    return DescRef(0, (Addr(None, 0), Addr(None, 0)))


def _mma():
    return instruction("MMA.f32.f32", _tile("ACC"), _tile(), _tile(), 16, 16, 16, options=["init"])


def _vec():
    return instruction("VADD.f32", _tile(), _tile(), _tile(), 16, 16)


# ---- nests compiled through it -------------------------------------------------------------

GEMM = """
fn main(x: f32[128, 4096], w: f32[4096, 128]) -> f32[128, 128] { return x @ w }
"""
# head dim 256: Q and O have one copy, so a tile's last P @ V stays in its tile; two tiles
# per core (2 cores) used to deadlock
WIDE = """
fn main(q: bf16[2, 256, 256], k: bf16[2, 384, 256], v: bf16[2, 384, 256]) -> bf16[2, 256, 256] {
    s = einsum("hqd,hkd->hqk", q, k) * 0.0625
    return cast(einsum("hqk,hkd->hqd", cast(softmax(s, axis=-1), bf16), v), bf16)
}
"""
CAUSAL_GQA = """
fn main(q: bf16[8, 384, 64], k: bf16[2, 384, 64], v: bf16[2, 384, 64]) -> bf16[8, 384, 64] {
    causal = arange(384)[:, None] >= arange(384)[None, :]
    qg = reshape(q, [2, 4, 384, 64])
    s = einsum("kgsd,ktd->kgst", qg, k) * 0.125
    p = softmax(where(causal, s, -inf), axis=-1)
    return reshape(einsum("kgst,ktd->kgsd", p, v), [8, 384, 64])
}
"""


def _compile_traced(source: str, cores: int, monkeypatch):
    """Compile `source` recording, for every instruction that waits or signals, whether the
    pipelining step placed it (it was appended inside one of its functions)."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.isa.machine import load_machine

    depth = [0]
    placed: list[tuple[object, bool]] = []

    def inside(fn):
        def wrapped(*args, **kwargs):
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapped

    for owner, name in ((pipelining, "issue_loads"), (pipelining.Stage, "emit"),
                        (pipelining.Pipeline, "start"), (pipelining.Pipeline, "drain")):
        monkeypatch.setattr(owner, name, inside(getattr(owner, name)))
    # the emitters import issue_loads and prefetch by name
    from zhenwu.compiler.backend import codegen, flash_codegen
    for module in (codegen, flash_codegen):
        monkeypatch.setattr(module, "issue_loads", pipelining.issue_loads)
    monkeypatch.setattr(flash_codegen, "prefetch", inside(pipelining.prefetch))
    original = Emitter.append

    def append(self, instr, waits=(), sigs=()):
        original(self, instr, waits, sigs)
        last = self.instructions[-1]
        if last.waits or last.sigs or last.name in ("SIG.S", "WAIT.S", "WAIT.VX", "WAIT.MX"):
            placed.append((last, depth[0] > 0))

    monkeypatch.setattr(Emitter, "append", append)
    machine = replace(load_machine("m890"), cores=cores)
    fn = load_program("test.zt", text=source)
    compiled = compile_function(fn, machine, CompileOptions(opt_level=2))
    return fn, machine, compiled, placed


def _run_checked(fn, machine, compiled):
    from zhenwu.compiler.check import relative_error
    from zhenwu.compiler.graph.dtypes import tolerance
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.runtime import run_program

    inputs = prepare_inputs(fn, {}, 0)
    result = run_program(compiled.program, machine, compiled.program_inputs(inputs))
    for got, want, value in zip(compiled.graph_outputs(result), evaluate(fn, inputs),
                                fn.outputs):
        assert relative_error(np.asarray(got), want) <= tolerance(value.type.dtype)


def test_a_gemm_nest_is_pipelined_through_the_step(monkeypatch):
    """A GEMM's k loop: every event-carrying instruction is placed by the pipelining step;
    the loads alternate between two copies and the MMAs wait for a step's two loads."""
    fn, machine, compiled, placed = _compile_traced(GEMM, 2, monkeypatch)
    nests = [n for k in compiled.kernels.kernels for n in k.nests]
    assert len(nests) == 1 and nests[0].reduction_steps > 2
    assert placed and all(by_step for _, by_step in placed)
    loads = [i for i, _ in placed if i.name == "DMA.LD.f32"]
    mmas = [i for i, _ in placed if i.mnemonic == "MMA"]
    assert loads and all(len(i.sigs) == 1 for i in loads)
    assert {(w.count,) for i in mmas for w in i.waits[:1]} == {(2,)}
    assert all(len(i.sigs) >= 1 for i in mmas)   # each returns its load copy
    _run_checked(fn, machine, compiled)


@pytest.mark.parametrize("source", [WIDE, CAUSAL_GQA])
def test_flash_attention_is_scheduled_by_the_step(source, monkeypatch):
    """Every wait and signal of a flash nest comes from the pipelining step (no hand-placed
    event), and the kernel matches the reference with several tiles per core (race
    detector on), including the one-copy form that used to deadlock."""
    fn, machine, compiled, placed = _compile_traced(source, 2, monkeypatch)
    flash = [n for k in compiled.kernels.kernels for n in k.nests if n.schedule == "flash"]
    assert flash and all(n.parallel_tiles >= 4 for n in flash)
    assert placed and all(by_step for _, by_step in placed)
    _run_checked(fn, machine, compiled)
