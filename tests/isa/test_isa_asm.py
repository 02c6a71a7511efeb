"""The assembly text form: parsing, printing, round trips, and diagnostics with line:col."""

from __future__ import annotations

import pytest
from zhenwu.isa.asm import parse_assembly, parse_instruction, print_program
from zhenwu.isa.errors import AssemblyError
from zhenwu.isa.program import (
    Addr,
    DescRef,
    Event,
    FImm,
    Instruction,
    Marker,
    Option,
    Predicate,
    Reg,
    TensorDecl,
    Tile,
)

SOURCE = """\
# a comment line
.machine m890
.tensor x, bf16, [64, 784], 0x0, in   ; trailing comment
.tensor y, f32, [64], 0x40000, out
.kernel k0
    GETID r1, core
    DESC d0, x+16, bf16, [64, 784], [784, 1], [16, 64]
    LOOP r2, 4
top:
    @!r3 DMA.LD.bf16 L1[r3+16, 64], d0[r1, -1] .T .pad #-inf .wait E1:2 .sig E2
    VADD.f32 L1[0], L1[256], #2.0, 16, 16 # comment after an instruction
    MMA.bf16.f32 ACC[0], L1[0], L1[r4-32, 32, 1], 16, 32, r5 .tB .acc
    VRSUM.f32 L1[0], L1[64], 4, 16 .acc .row
    LI r6, 0x7fffffffffffffff
    BNEZ r1, top
    ENDLOOP
    HALT
"""

CANONICAL = """\
.machine m890
.tensor x, bf16, [64, 784], 0x0, in
.tensor y, f32, [64], 0x40000, out
.kernel k0
    GETID r1, core
    DESC d0, x+16, bf16, [64, 784], [784, 1], [16, 64]
    LOOP r2, 4
top:
    @!r3 DMA.LD.bf16 L1[r3+16, 64], d0[r1, -1] .T .pad #-inf .wait E1:2 .sig E2
    VADD.f32 L1[0], L1[256], #2.0, 16, 16
    MMA.bf16.f32 ACC[0], L1[0], L1[r4-32, 32, 1], 16, 32, r5 .acc .tB
    VRSUM.f32 L1[0], L1[64], 4, 16 .row .acc
    LI r6, 9223372036854775807
    BNEZ r1, top
    ENDLOOP
    HALT
"""


def test_parse_print_canonical_and_round_trip():
    program = parse_assembly(SOURCE, "p.s")
    assert print_program(program) == CANONICAL
    again = parse_assembly(CANONICAL)
    assert again == program
    assert print_program(again) == CANONICAL


def test_parsed_structure():
    program = parse_assembly(SOURCE, "p.s")
    assert program.machine == "m890"
    assert program.tensors[0] == TensorDecl("x", "bf16", (64, 784), 0, "in")
    assert program.outputs == (program.tensors[1],)
    assert program.markers == (Marker(0, "kernel", "k0"), Marker(3, "label", "top"))
    assert program.kernels == (("k0", 0),)
    load = program.instructions[3]
    assert load == Instruction(
        "DMA.LD", ("bf16",),
        (Tile("L1", Addr(3, 16), 64, None), DescRef(0, (Addr(1, 0), Addr(None, -1)))),
        (Option("T"), Option("pad", FImm(float("-inf")))),
        (Event(1, 2),), (Event(2, 1),), Predicate(3, True),
    )
    assert load.span.line == 10 and load.span.col == 10
    assert load.reads_regs() == (1, 3) and load.reads_descs() == (0,)
    assert program.instructions[5].options == (Option("acc"), Option("tB"))
    # targets: LOOP -> past its ENDLOOP, ENDLOOP -> its LOOP, BNEZ -> the label
    assert program.targets[2] == 10 and program.targets[9] == 2 and program.targets[8] == 3
    assert program.labels == {"top": 3}


def test_parse_instruction_and_str():
    instr = parse_instruction("  VDUP.i32 L1[r2], r7, 2, 3  ")
    assert instr.operands[1] == Reg(7)
    assert str(instr) == "VDUP.i32 L1[r2], r7, 2, 3"
    assert instr.name == "VDUP.i32"


def test_crlf_blank_lines_and_no_final_newline():
    program = parse_assembly("\r\n\r\nNOP\r\n  \r\nHALT")
    assert print_program(program) == "    NOP\n    HALT\n"
    assert print_program(parse_assembly("")) == "\n"


def diagnostic(text: str) -> str:
    with pytest.raises(AssemblyError) as info:
        parse_assembly(text, "bad.s")
    return info.value.format()


@pytest.mark.parametrize("text, expected", [
    ("NOP\n    VAD.f32 L1[0], L1[0], L1[0], 4, 4\n",
     ("bad.s:2:5: error: unknown mnemonic 'VAD.f32'; did you mean 'VADD'?\n"
     "    VAD.f32 L1[0], L1[0], L1[0], 4, 4\n    ^^^^^^^")),
    ("ADD r1, r32, 1",
     ("bad.s:1:9: error: operand 'ra' of ADD: register r32 out of range r0..r31\n"
     "ADD r1, r32, 1\n        ^^^\nnote: syntax: ADD rd, ra, rb")),
    ("VADD.f32 L1[0], r3, L1[0], 4, 4",
     ("bad.s:1:17: error: operand 'a' of VADD.f32: expected a tile (L1[...] or ACC[...]) or a "
     "float immediate (#1.5), got 'r3'\nVADD.f32 L1[0], r3, L1[0], 4, 4\n                ^^\n"
     "note: syntax: VADD.<dt> dst, a, b, rows, cols [.wait Ek[:n]]* [.sig Ek[:n]]*")),
    ("ADD r1, r2",
     ("bad.s:1:1: error: ADD takes 3 operands, got 2\nADD r1, r2\n^^^\n"
     "note: syntax: ADD rd, ra, rb")),
    ("  JMP nowhere\nhere:\n",
     ("bad.s:1:7: error: unknown label 'nowhere'; did you mean 'here'?\n  JMP nowhere\n"
     "      ^^^^^^^")),
    ("JMP ther\nthere:",
     "bad.s:1:5: error: unknown label 'ther'; did you mean 'there'?\nJMP ther\n    ^^^^"),
    (".tensor x, f32, [4], 0, in\nDESC d0, y, f32, [4], [1], [4]",
     ("bad.s:2:10: error: unknown tensor 'y'\nDESC d0, y, f32, [4], [1], [4]\n"
     "         ^")),
    ("VADD.f64 L1[0], L1[0], L1[0], 4, 4",
     ("bad.s:1:1: error: bad dt suffix '.f64' for VADD; expected one of: f32, bf16, f16, i32, i8"
     "\nVADD.f64 L1[0], L1[0], L1[0], 4, 4\n^^^^^^^^\n"
     "note: syntax: VADD.<dt> dst, a, b, rows, cols [.wait Ek[:n]]* [.sig Ek[:n]]*")),
    ("LOOP r1, 3\nNOP",
     "bad.s:1:1: error: LOOP without a matching ENDLOOP\nLOOP r1, 3\n^^^^"),
    ("NOP\nENDLOOP",
     "bad.s:2:1: error: ENDLOOP without a matching LOOP\nENDLOOP\n^^^^^^^"),
    ("ADD r1 r2",
     ("bad.s:1:8: error: unexpected 'r2'; expected ',', an option (.name) or end of line\n"
     "ADD r1 r2\n       ^^")),
    ("NOP\n  x €", "bad.s:2:5: error: unexpected character '€'\n  x €\n    ^"),
    ("VADD.f32 L1[0], L1[0], L1[0], 4, 4 .T",
     ("bad.s:1:36: error: unknown option '.T' for VADD\nVADD.f32 L1[0], L1[0], L1[0], 4, 4 .T\n"
     "                                   ^^\nnote: VADD options: none")),
    ("MMA.bf16.f32 ACC[0], L1[0], L1[0], 16, 16, 16 .init .acc",
     "bad.s:1:1: error: MMA: at most one of .init, .acc"),
    ("MMA.i8.f32 ACC[0], L1[0], L1[0], 16, 16, 16",
     "bad.s:1:1: error: MMA.i8 accumulates in i32: write MMA.i8.i32"),
    ("MMA.bf16.f32 L1[0], L1[0], L1[0], 16, 16, 16",
     "bad.s:1:14: error: operand 'c' of MMA.bf16.f32: must be in ACC, got L1"),
    ("VRSUM.f32 L1[0], L1[0], 4, 4",
     "bad.s:1:1: error: VRSUM needs exactly one of .row, .col"),
    ("ADD r1, r2, 3 .wait E1",
     "bad.s:1:1: error: ADD runs on the scalar unit and takes no .wait/.sig"),
    ("VCOPY.f32 L1[0], L1[0], 4, 4 .wait E1:65",
     "bad.s:1:1: error: .wait: event count 65 out of range 1..64"),
    ("WAIT.LD E32", "bad.s:1:9: error: operand 'event' of WAIT.LD: event E32 out of range E0..E31"),
    ("VADD.f32 L1[0], L1[0], L1[0], 0, 4",
     "bad.s:1:31: error: operand 'rows' of VADD.f32: must be positive, got 0"),
    ("DMA.MOV L1[0, 4], L1[0], 16",
     "bad.s:1:1: error: DMA.MOV copies contiguous bytes: write L1[a] or ACC[a] without strides"),
    ("DESC d0, 0, f32, [4, 4], [1], [4, 4]",
     "bad.s:1:1: error: DESC dims, strides and box must have one rank, got 2, 1 and 2"),
    ("LI r1, 99999999999999999999999",
     "bad.s:1:8: error: operand 'imm' of LI: 99999999999999999999999 does not fit in 64 bits"),
    (".tensr x", "bad.s:1:1: error: unknown directive '.tensr'; did you mean '.tensor'?"),
    (".tensor x, f64, [4], 0, in", "bad.s:1:12: error: unknown dtype 'f64'"),
    (".tensor x, f32, [4], 0, input", "bad.s:1:25: error: unknown tensor role 'input'"),
    (".tensor x, f32, [4], 0, in\n.tensor x, f32, [4], 64, in",
     "bad.s:2:9: error: tensor 'x' declared twice"),
    ("a:\na:\nNOP", "bad.s:2:1: error: label 'a' defined twice"),
    ("LOOP r1, 2 .wait E0", "bad.s:1:1: error: LOOP runs on the scalar unit"),
    ("@r1 LOOP r2, 2\nENDLOOP", "bad.s:1:5: error: LOOP cannot be predicated"),
    ("DMA.LD L1[0, 3, 1, 3], d0[0]",
     "bad.s:1:8: error: a tile is L1[base], L1[base, rs] or L1[base, rs, cs]"),
    ("DMA.LD L1[0, -3], d0[0]",
     "bad.s:1:14: error: a tile stride is a non-negative integer (elements)"),
    ("DMA.LD.bf16 L1[0], d0[0] .pad 3", "bad.s:1:26: error: .pad takes a float immediate"),
])
def test_diagnostics(text, expected):
    assert diagnostic(text).startswith(expected)


def test_fp8_float_comment_ambiguity():
    # '#' followed by a number is a float immediate where one is expected, else a comment
    program = parse_assembly("#1 this line is a comment\nVDUP.f32 L1[0], #1, 1, 1 #2 also\n")
    assert program.instructions[0].operands[1] == FImm(1.0)
    assert len(program.instructions) == 1


def test_scalar_tensor_directive_round_trips():
    text = ".tensor x, f32, [], 0x0, in\n.tensor y, f32, [], 0x100, out\n    HALT\n"
    program = parse_assembly(text, "scalar.s")
    assert program.tensors[0].shape == ()
    assert print_program(program) == text
