"""Property tests: random valid instructions survive print -> parse -> encode -> decode, and
random bytes or text give the project's errors, never another exception."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from zhenwu.isa.asm import parse_assembly, print_instruction, print_program
from zhenwu.isa.encoding import decode_program, encode_program
from zhenwu.isa.errors import AssemblyError, EncodingError
from zhenwu.isa.instructions import INSTRUCTIONS, InstrError, validate
from zhenwu.isa.program import (
    MAX_EVENT_COUNT,
    Addr,
    DescRef,
    DReg,
    Event,
    FImm,
    Imm,
    Instruction,
    IntList,
    Keyword,
    LabelRef,
    Marker,
    Option,
    Predicate,
    Program,
    Reg,
    Symbol,
    TensorDecl,
    Tile,
)

# CI runs a fixed (derandomized) set; ZHENWU_HYPOTHESIS_EXAMPLES=5000 runs a longer, random
# campaign by hand
CAMPAIGN = int(os.environ.get("ZHENWU_HYPOTHESIS_EXAMPLES", "0"))


def _settings(examples: int) -> settings:
    return settings(max_examples=CAMPAIGN or examples, deadline=None, derandomize=not CAMPAIGN,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


SETTINGS = _settings(300)
TENSORS = ("x", "weights", "t0")
LABELS = ("top", "done", "L_1")

regs = st.integers(0, 31)
int64 = st.integers(-(2**63), 2**63 - 1)
ints = st.one_of(st.integers(-300, 300), int64)
strides = st.one_of(st.integers(0, 300), st.integers(0, 2**63 - 1))
floats = st.one_of(st.floats(allow_nan=False), st.just(float("nan")))
addrs = st.builds(Addr, st.none() | regs, ints)
events = st.builds(Event, regs, st.integers(1, MAX_EVENT_COUNT))


@st.composite
def tiles(draw, spaces):
    space = draw(st.sampled_from(spaces))
    count = draw(st.integers(0, 2))
    row = draw(strides) if count >= 1 else None
    col = draw(strides) if count == 2 else None
    return Tile(space, draw(addrs), row, col)


@st.composite
def operands(draw, spec, defn):
    kind = draw(st.sampled_from(spec.kinds))
    if kind == "reg":
        return Reg(draw(regs))
    if kind == "dreg":
        return DReg(draw(regs))
    if kind == "imm":
        return Imm(draw(st.integers(1, 2**63 - 1) if spec.positive else ints))
    if kind == "fimm":
        return FImm(draw(floats))
    if kind == "event":
        return draw(events)
    if kind == "addr":
        return draw(addrs)
    if kind == "tile":
        if defn.mnemonic == "DMA.MOV":
            return Tile(draw(st.sampled_from(spec.spaces)), draw(addrs))
        return draw(tiles(spec.spaces))
    if kind == "descref":
        return DescRef(draw(regs), tuple(draw(st.lists(addrs, min_size=1, max_size=5))))
    if kind == "label":
        return LabelRef(draw(st.sampled_from(LABELS)))
    if kind == "keyword":
        return Keyword(draw(st.sampled_from(spec.keywords)))
    if kind == "symbol":
        return Symbol(draw(st.sampled_from(TENSORS)), draw(ints))
    if kind == "list":
        return IntList(tuple(draw(st.lists(ints, min_size=1, max_size=5))))
    raise AssertionError(kind)


@st.composite
def instructions(draw):
    defn = INSTRUCTIONS[draw(st.sampled_from(sorted(INSTRUCTIONS)))]
    suffixes = []
    for slot in defn.suffixes:
        if slot.optional and draw(st.booleans()):
            break
        suffixes.append(draw(st.sampled_from(slot.values)))
    if defn.mnemonic == "MMA":
        suffixes[1] = "i32" if suffixes[0] == "i8" else "f32"
    ops = [draw(operands(spec, defn)) for spec in defn.operands]
    if defn.mnemonic == "DESC":
        rank = draw(st.integers(1, 5))
        ops[3] = IntList(tuple(draw(st.lists(st.integers(1, 2**40), min_size=rank,
                                             max_size=rank))))
        ops[4] = IntList(tuple(draw(st.lists(st.integers(0, 2**40), min_size=rank,
                                             max_size=rank))))
        ops[5] = IntList(tuple(draw(st.lists(st.integers(1, 256), min_size=rank,
                                             max_size=rank))))
    present = {o.name for o in defn.options if draw(st.booleans())}
    for group in defn.exclusive:
        keep = draw(st.sampled_from(group))
        present -= set(group) - {keep}
    for group in defn.required:
        present -= set(group)
        present.add(draw(st.sampled_from(group)))
    options = tuple(Option(o.name, FImm(draw(floats)) if o.takes_value else None)
                    for o in defn.options if o.name in present)
    waits = sigs = ()
    if defn.sync:
        waits = tuple(draw(st.lists(events, max_size=2)))
        sigs = tuple(draw(st.lists(events, max_size=2)))
    predicate = None
    if defn.predicable and draw(st.booleans()):
        predicate = Predicate(draw(regs), draw(st.booleans()))
    instr = Instruction(defn.mnemonic, tuple(suffixes), tuple(ops), options, waits, sigs,
                        predicate)
    try:
        validate(defn, instr)
    except InstrError:
        assume(False)
    return instr


def _program(instrs: list[Instruction]) -> Program:
    """A program around the instructions: their tensors, labels, and matching loops."""
    body: list[Instruction] = []
    for instr in instrs:
        if instr.mnemonic == "ENDLOOP":
            body.append(Instruction("LOOP", (), (Reg(0), Imm(1))))
        body.append(instr)
        if instr.mnemonic == "LOOP":
            body.append(Instruction("ENDLOOP"))
    tensors = [TensorDecl(name, "f32", (4, 4), 64 * i, "in") for i, name in enumerate(TENSORS)]
    markers = [Marker(0, "kernel", "k"), *(Marker(min(i, len(body)), "label", name)
                                           for i, name in enumerate(LABELS))]
    try:
        return Program.build("m890", tensors, body, markers)
    except AssemblyError:  # a branch into a loop body: put the labels at the end instead
        markers = [Marker(0, "kernel", "k"), *(Marker(len(body), "label", n) for n in LABELS)]
        return Program.build("m890", tensors, body, markers)


@_settings(100)
@given(st.lists(instructions(), min_size=1, max_size=4))
def test_print_parse_encode_decode_round_trip(instrs):
    program = _program(instrs)
    for instr in program.instructions:
        if instr.mnemonic in ("LOOP", "ENDLOOP"):
            continue
        assert parse_assembly(print_instruction(instr) + "\n" + "\n".join(
            f"{name}:" for name in LABELS) + "\n" + "\n".join(
            f".tensor {name}, f32, [4], {64 * i}, in" for i, name in enumerate(TENSORS))
        ).instructions[0] == instr
    text = print_program(program)
    parsed = parse_assembly(text)
    assert parsed == program
    assert print_program(parsed) == text
    data = encode_program(parsed)
    decoded = decode_program(data)
    assert decoded == program
    assert encode_program(decoded) == data
    assert print_program(decoded) == text


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_give_encoding_errors(data):
    try:
        decode_program(data)
    except EncodingError:
        pass


SAMPLE = encode_program(parse_assembly(
    (Path(__file__).parents[2] / "samples" / "asm" / "gemm_db.s").read_text()))


@SETTINGS
@given(st.lists(st.tuples(st.integers(12, len(SAMPLE) - 1), st.integers(0, 255)),
                min_size=1, max_size=6),
       st.integers(12, len(SAMPLE)))
def test_corrupted_binaries_with_valid_checksums_give_encoding_errors(edits, cut):
    data = bytearray(SAMPLE)
    for position, value in edits:
        data[position] = value
    data = data[:cut]
    data[8:12] = struct.pack("<I", zlib.crc32(bytes(data[12:])))
    try:
        program = decode_program(bytes(data))
    except EncodingError:
        return
    # whatever decodes is a valid program that round-trips
    assert decode_program(encode_program(program)) == program


TOKENS = ["LI", "ADD", "VADD.f32", "MMA.bf16.f32", "DMA.LD", "DESC", "LOOP", "ENDLOOP", "HALT",
          "r1", "r99", "d0", "E1", "E2:3", "L1[", "ACC[", "]", "[", ",", ":", "+", "-", "@", "!",
          "#1.5", "#inf", "#", ";", "0x10", "16", "-3", ".wait", ".sig", ".T", ".pad", ".tensor",
          ".kernel", ".machine", "x", "top:", "\n", " ", "\t", "\r", "é", "\x00"]


@SETTINGS
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
                 st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join)))
def test_random_text_gives_assembly_errors(text):
    try:
        program = parse_assembly(text)
    except AssemblyError as err:
        assert err.span is not None and err.span.line >= 1 and err.span.col >= 1
        err.format()
        return
    assert parse_assembly(print_program(program)) == program


@_settings(60)
@given(st.lists(instructions(), min_size=1, max_size=6),
       st.lists(st.one_of(st.integers(-4, 4096), int64), min_size=32, max_size=32))
def test_random_instructions_execute_or_trap_cleanly(instrs, registers):
    import numpy as np
    import seqrun
    from zhenwu.isa.errors import ChipTrap
    from zhenwu.isa.machine import load_machine

    program = _program(instrs)
    machine = load_machine("m890")
    ctx = seqrun.SeqContext(program, machine, np.zeros(4096, dtype=np.uint8), 1, 2)
    ctx.regs = list(registers)
    try:
        for instr in program.instructions:
            INSTRUCTIONS[instr.mnemonic].cost(instr, machine, ctx)
        seqrun.execute(ctx, max_steps=200)
    except ChipTrap:
        pass
