"""The register and event allocators (compiler/backend/allocators.py) and their use by
codegen: numbers by purpose, freeing, scopes, exhaustion as a diagnostic, the asynchronous
collectives' reserved events, and no register or event number written in the compiler."""

import re
from pathlib import Path

import pytest
from zhenwu.compiler.backend.allocators import (
    ASYNC_EVENTS,
    EventFile,
    RegisterFile,
    ResourceError,
)
from zhenwu.isa.errors import CompileError
from zhenwu.isa.program import NUM_EVENTS, NUM_REGS, Event, Reg

ROOT = Path(__file__).resolve().parents[2]


def test_take_hands_out_the_lowest_free_number_and_free_gives_it_back():
    regs = RegisterFile()
    assert regs.count == NUM_REGS
    core, cores, tile = regs.take("core"), regs.take("cores"), regs.take("tile")
    assert (core, cores, tile) == (0, 1, 2)
    regs.free(cores)
    assert regs.take("again") == 1
    assert regs.live == {0: "core", 1: "again", 2: "tile"}
    with pytest.raises(ValueError, match="r7 is not taken"):
        regs.free(7)
    regs.free(None)   # an optional register that was not taken
    assert regs.take_many(2, "pair") == [3, 4]
    assert regs.live[4] == "pair 1"


def test_scopes_free_what_was_taken_inside_them_nested():
    regs = RegisterFile()
    program = regs.take("core")
    with regs.scope("nest"):
        nest = regs.take("tile")
        with regs.scope("decomposition"):
            scratch = regs.take("scratch")
            assert scratch == 2
        assert regs.take("step") == 2          # the scratch's number is free again
        early = regs.take("early")
        regs.free(early)                       # freed early: the scope does not free it twice
    assert regs.live == {program: "core"}
    assert nest == 1 and regs.free_count() == NUM_REGS - 1
    # a scope is left on an exception too
    with pytest.raises(RuntimeError), regs.scope("failing"):
        regs.take("x")
        raise RuntimeError
    assert regs.live == {program: "core"}


def test_exhaustion_is_a_compile_error_naming_the_request_and_what_is_live():
    regs = RegisterFile(4, advice="use fewer tiled axes")
    regs.take("core id")
    with regs.scope("a 3-axis nest"):
        regs.take_many(3, "coordinate")
        assert regs.take_optional("saved coordinate") is None
        with pytest.raises(ResourceError) as info:
            regs.take("step index")
    err = info.value
    assert isinstance(err, CompileError) and err.exit_status == 1
    text = err.format()
    assert "out of scalar registers (r0..r3): no scalar register for 'step index' in a " \
           "3-axis nest" in text
    assert "r0 core id, r1 coordinate 0, r2 coordinate 1, r3 coordinate 2" in text
    assert "note: use fewer tiled axes" in text
    assert regs.live == {0: "core id"}


def test_event_file_reads_the_isa_limit_and_reserves_the_asynchronous_events():
    full = EventFile()
    assert full.count == NUM_EVENTS
    assert full.take_many(NUM_EVENTS, "e") == list(range(NUM_EVENTS))
    compute = EventFile(reserve_async=True)
    taken = compute.take_many(NUM_EVENTS - len(ASYNC_EVENTS), "e")
    assert not set(taken) & set(ASYNC_EVENTS)
    assert max(ASYNC_EVENTS) == NUM_EVENTS - 1
    with pytest.raises(ResourceError, match=r"out of events \(E0..E31; E28..E31 reserved\)"):
        compute.take("one more")


def test_collective_out_of_events_is_a_diagnostic():
    from zhenwu.compiler.collective_codegen import CollectiveSpec, Region, collective_program

    region = Region("buf", 0, 1 << 20, "f32")
    spec = CollectiveSpec("allreduce", "hierarchical(ring)", tuple(range(16)), region,
                          chips_per_node=8, pipeline=NUM_EVENTS)   # more stages than events
    with pytest.raises(ResourceError, match="out of events") as info:
        collective_program(spec, 0, [])
    assert "fewer pipeline chunks" in info.value.format()


def _registers_and_events(program) -> tuple[set[int], set[int]]:
    regs, events = set(), set()
    for instr in program.instructions:
        for op in instr.operands:
            if isinstance(op, Reg):
                regs.add(op.index)
            elif isinstance(op, Event):
                events.add(op.index)
            elif getattr(op, "base", None) is not None and getattr(op.base, "reg", None) \
                    is not None:
                regs.add(op.base.reg)
        events.update(e.index for e in instr.waits + instr.sigs)
    return regs, events


CAUSAL = """
fn main(q: bf16[2, 4, 512, 64], k: bf16[2, 4, 512, 64], v: bf16[2, 4, 512, 64]) -> bf16[2, 4, 512, 64] {
    scores = einsum("bhqd,bhkd->bhqk", q, k) * 0.125
    mask = arange(512)[:, None] >= arange(512)[None, :]
    p = softmax(where(mask, scores, -inf), axis=-1)
    return cast(einsum("bhqk,bhkd->bhqd", cast(p, bf16), v), bf16)
}
"""


def _compile(source: str):
    from dataclasses import replace

    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.machine import load_machine

    machine = replace(load_machine("m890"), cores=4)
    fn = load_program("attn.zt", text=source)
    return fn, machine, compile_function(fn, machine, CompileOptions(opt_level=2))


def test_the_kernel_with_most_live_registers_compiles_and_matches_the_reference():
    """A causal flash nest over two tiled batch axes (the most registers a nest holds: the
    tile loop, four coordinates, the step counts, the S/P, K/V, Q and O copies and the
    saved store coordinates of the deferred epilogue) fits the register file, stays off the
    reserved events, and runs with the reference's numbers."""
    from zhenwu.compiler.check import relative_error
    from zhenwu.compiler.graph.dtypes import tolerance
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.runtime import run_program

    fn, machine, compiled = _compile(CAUSAL)
    assert "flash_first_epilogue" in compiled.asm_text   # the deferred epilogue: most live
    regs, events = _registers_and_events(compiled.program)
    assert len(regs) >= 24 and max(regs) < NUM_REGS
    assert not events & set(ASYNC_EVENTS)
    inputs = prepare_inputs(fn, {}, 0)
    result = run_program(compiled.program, machine, compiled.program_inputs(inputs))
    got = compiled.graph_outputs(result)[0]
    assert relative_error(got, evaluate(fn, inputs)[0]) <= tolerance("bf16")


def test_a_kernel_needing_more_registers_than_the_core_has_fails_at_its_source(monkeypatch):
    """The same kernel on a core of 20 registers: a diagnostic at the attention's source
    line, not a traceback."""
    from zhenwu.compiler.backend import codegen

    monkeypatch.setattr(codegen, "RegisterFile",
                        lambda advice="": RegisterFile(20, advice=advice))
    with pytest.raises(ResourceError) as info:
        _compile(CAUSAL)
    err = info.value
    assert err.span is not None and err.span.file == "attn.zt" and err.span.line >= 2
    text = err.format()
    assert "out of scalar registers (r0..r19)" in text and "kernel '" in text
    assert "r0 core id, r1 core count" in text and "^" in text


def _literal_numbers(path: Path) -> list[str]:
    """Register or event numbers written in `path`'s code: in strings that are not
    docstrings (`"r12"`, `f"E{x} ... r3"`), and constants named R_* / E_* bound to ints."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    number = re.compile(r"\b[rE][0-9]+\b")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings and number.search(node.value):
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            names += [e.id for t in node.targets if isinstance(t, ast.Tuple)
                      for e in t.elts if isinstance(e, ast.Name)]
            if any(re.fullmatch(r"[RE]_[A-Z_]+", n) for n in names):
                found.append(f"{path.name}:{node.lineno}: {', '.join(names)} =")
    return found


def test_no_register_or_event_number_is_written_in_the_compiler():
    """Registers and events come from the allocators: no `r12`/`E3` in generated text and
    no `R_TILE = 4` constants in the compiler (docstrings may show assembly; the fuzzer's
    bad-input tokens are assembly on purpose)."""
    found = []
    for path in sorted((ROOT / "compiler").rglob("*.py")):
        if path.name != "bad_inputs.py":
            found += _literal_numbers(path)
    assert not found, "\n".join(found)
    # the check finds them where they are
    assert _literal_numbers(ROOT / "compiler" / "fuzz" / "bad_inputs.py")
