"""Codegen builds isa instructions directly (compiler/backend/emitter.py): the built program
is the one the assembler reads from its printed text, instruction for instruction and byte
for byte, for every sample and a spread of compiled programs; the text path that emitters
not yet converted use reads exactly what the assembler reads; malformed instructions are
refused."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from backend_helpers import machine

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.zt")) + sorted((ROOT / "samples/bench").glob("*.zt"))
SAMPLES += sorted((ROOT / "samples/bench/attention_forms").glob("*.zt"))
DEFAULT_DIMS = {"B": 2, "S": 64, "N": 32, "C": 64, "D": 128}
FUZZ_SEEDS = range(12)


def load(path: Path):
    """A sample with its symbolic dims bound to small sizes."""
    import re

    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.errors import Diagnostic

    shapes: dict[str, int] = {}
    for _ in range(6):
        try:
            return load_program(str(path), shapes=shapes)
        except Diagnostic as err:
            unbound = re.search(r"symbolic dim '(\w+)' is not bound", err.message)
            if unbound is None:
                raise
            shapes[unbound[1]] = DEFAULT_DIMS.get(unbound[1], 32)
    raise AssertionError(f"{path}: too many symbolic dims")


def compiled_programs():
    """(name, compiled program) for the samples (-O2) and fuzz programs (-O0 and -O2, both
    machines)."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.fuzz.generator import random_program

    for path in SAMPLES:
        fn = load(path)
        yield path.stem, compile_function(fn, machine("m890"), CompileOptions(opt_level=2))
    for seed in FUZZ_SEEDS:
        fn = load_program("fuzz.zt", text=random_program(seed))
        target = machine("z810e" if seed % 3 == 0 else "m890")
        yield (f"fuzz{seed}",
               compile_function(fn, target, CompileOptions(opt_level=0 if seed % 4 == 0 else 2)))


@pytest.fixture(scope="module")
def programs():
    return list(compiled_programs())


def test_built_program_prints_and_parses_back_identical(programs):
    """print -> assemble gives the built program (operands, options, events, markers,
    tensors) and the same bytes; the bytes decode to it."""
    from zhenwu.isa.asm import parse_assembly, print_program
    from zhenwu.isa.encoding import decode_program, encode_program

    assert len(programs) == len(SAMPLES) + len(FUZZ_SEEDS)
    kernels = 0
    for name, compiled in programs:
        built = compiled.program
        text = print_program(built)
        assert compiled.asm_text == text
        read = parse_assembly(text, f"{name}.s")
        assert read == built, name
        assert read.instructions == built.instructions, name
        binary = encode_program(built)
        assert encode_program(read) == binary, name
        assert decode_program(binary) == built, name
        kernels += len(built.kernels)
    assert kernels >= len(programs)


def test_text_reader_reads_what_the_assembler_reads(programs):
    """Every instruction line of every compiled program, read by the Emitter's text path
    (the one for emitters still writing text), equals the assembler's reading."""
    from zhenwu.compiler.backend import emitter
    from zhenwu.isa.asm import print_instruction, read_one_instruction

    seen: set[str] = set()
    for _, compiled in programs:
        for instr in compiled.program.instructions:
            line = print_instruction(instr)
            if line in seen:
                continue
            seen.add(line)
            assert emitter._read(line) == read_one_instruction(line) == instr, line
    assert len(seen) > 500


NON_CANONICAL = [
    "  ADD   r1 , r2, 0x10",
    "SUB r3, r3, -7",
    "DMA.LD.bf16 L1[r15+64], d0[r5, -3, r6-2] .pad #-inf .wait E1 .sig E0:2",
    "@!r3 VADD.f32 L1[0], L1[64, 0, 1], #1.5, 4, 16",
    "@r25 VMUL.f32 L1[r17+128, 16, 1], L1[0, 0, 1], #-1e-05, r4, 16",
    "VDUP.i32 L1[0], 3, 1, 16",
    "VDUP.f32 L1[0], #nan, 1, 16",
    "MMA.bf16.f32 ACC[r17], L1[r15], L1[r15+512], 16, 32, 64 .tA .acc",
    "VRSUM.f32 L1[0], L1[64, 0, 1], 4, 16 .acc .row",
    "WAIT.VX E8:3",
    "GETID r1, cores",
    "LOOP r3, r2",
    "BNEZ r0, top",
    "DESC d0, x+64, f32, [64, 16], [16, 1], [8, 16]",
]


@pytest.mark.parametrize("line", NON_CANONICAL)
def test_text_reader_non_canonical_forms(line):
    from zhenwu.compiler.backend import emitter
    from zhenwu.isa.asm import read_one_instruction

    assert emitter._read(line.strip()) == read_one_instruction(line)
    assert emitter.read_instruction(line) == read_one_instruction(line)


@pytest.mark.parametrize("line", ["LI r1, -5 # a comment", "LOOP r3, 4 ; trip count",
                                  "ADD r1, r2, - 3"])
def test_text_reader_falls_back_to_the_assembler(line):
    """What the fast reader does not take (comments, spaced signs), the assembler reads."""
    from zhenwu.compiler.backend import emitter
    from zhenwu.isa.asm import read_one_instruction

    with pytest.raises(emitter._Unread):
        emitter._read(line)
    assert emitter.read_instruction(line) == read_one_instruction(line)


def test_text_reader_desc_and_whole_programs():
    """DESC with a tensor base, and whole texts with labels, comments and directives
    appended to `Emitter.lines`, as `parse_assembly` reads them."""
    from zhenwu.compiler.backend.emitter import Emitter
    from zhenwu.isa.asm import parse_assembly

    def read(text: str):
        emit = Emitter()
        emit.lines.extend(text.splitlines())
        return emit.program()

    text = (".machine m890\n.tensor x, f32, [64, 16], 0x0, in\n"
            "    DESC d0, x+64, f32, [64, 16], [16, 1], [8, 16]\n"
            "# a comment\ntop:\n    GETID r0, core\n.kernel k\n    BNEZ r0, top\n    HALT\n")
    assert read(text) == parse_assembly(text)
    for path in sorted((ROOT / "samples/asm").glob("*.s")):
        text = path.read_text()
        assert read(text) == parse_assembly(text), path.name


def test_text_path_gives_the_assemblers_diagnostics():
    from zhenwu.compiler.backend.emitter import Emitter, read_instruction
    from zhenwu.isa.errors import AssemblyError

    with pytest.raises(AssemblyError, match="takes 3 operands"):
        read_instruction("ADD r1, r2")
    with pytest.raises(AssemblyError, match="unknown mnemonic 'FOO'"):
        Emitter()("FOO r1")
    with pytest.raises(AssemblyError, match="out of range"):
        read_instruction("ADD r40, r1, 1")
    emit = Emitter()
    emit.lines.extend(["    GETID r0, core", "    BNEZ r0, nowhere", "    HALT"])
    with pytest.raises(AssemblyError, match="unknown label 'nowhere'"):
        emit.program()


def test_typed_ops_refuse_malformed_instructions():
    """What the assembler would refuse, the Emitter refuses as the instruction is built."""
    from zhenwu.compiler.backend.emitter import Emitter, instruction
    from zhenwu.isa.errors import AssemblyError
    from zhenwu.isa.program import Addr, Event, Reg, Tile

    emit = Emitter()
    with pytest.raises(AssemblyError, match="out of range"):
        emit.op("ADD", Reg(40), Reg(1), 1)
    with pytest.raises(AssemblyError, match="at most two .wait"):
        emit.op("VEXP.f32", Tile("L1", Addr(None, 0)), Tile("L1", Addr(None, 64)), 4, 16,
                waits=[(0, 1), (1, 1), (2, 1)])
    with pytest.raises(AssemblyError, match="takes no .wait"):
        emit.op("LI", Reg(1), 3, waits=[(0, 1)])
    with pytest.raises(AssemblyError, match="must be in ACC"):
        emit.op("MMA.bf16.f32", Tile("L1", Addr(None, 0)), Tile("L1", Addr(None, 0)),
                Tile("L1", Addr(None, 0)), 16, 16, 16)
    with pytest.raises(AssemblyError, match="expected an integer"):
        emit.op("LI", Reg(1), 1.5)
    with pytest.raises(ValueError, match="takes 3 operands"):
        instruction("ADD", Reg(1), Reg(2))
    assert emit.instructions == []
    emit.op("SIG.S", Event(3, 2))
    emit.op("HALT")
    assert [str(i) for i in emit.program().instructions] == ["SIG.S E3:2", "HALT"]


def test_typed_operands_match_the_text():
    """Python numbers become what the assembler reads from their text: an int an integer
    (or an address where the operand takes one), a float a float immediate, any NaN the one
    `#nan` (so the binary does not depend on how the NaN was computed)."""
    from zhenwu.compiler.backend.emitter import instruction
    from zhenwu.isa.asm import parse_instruction
    from zhenwu.isa.program import Addr, FImm, Reg, Tile

    negative_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000000))[0]
    assert math.isnan(negative_nan)
    built = instruction("VADD.f32", Tile("L1", Addr(None, 0)), Tile("L1", Addr(5, -64), 0, 1),
                        negative_nan, 4, 16)
    assert built == parse_instruction(str(built))
    assert built.operands[2] == FImm(float("nan"))
    iota = instruction("VIOTA.i32", Tile("L1", Addr(None, 0)), 4, 16, Reg(5))
    assert iota == parse_instruction("VIOTA.i32 L1[0], 4, 16, r5")


def test_lines_view_for_text_emitters():
    """`len(emit.lines)` grows with every line (text emitters name labels by it), appended
    lines are placed, and the lines print the program so far, labels not yet resolved."""
    from zhenwu.compiler.backend.emitter import Emitter
    from zhenwu.isa.asm import parse_assembly
    from zhenwu.isa.program import Reg

    emit = Emitter("m890")
    emit.op("GETID", Reg(0), "core")
    label = f"skip_{len(emit.lines)}"
    emit(f"BEQZ r0, {label}")
    assert len(emit.lines) == 3
    emit.lines.append("    ADD r1, r1, 1")
    emit.raw(f"{label}:")
    emit.lines.extend([".kernel tail", "    HALT"])
    assert len(emit.lines) == 7
    text = "\n".join(emit.lines) + "\n"
    assert text == (".machine m890\n    GETID r0, core\n    BEQZ r0, skip_2\n"
                    "    ADD r1, r1, 1\nskip_2:\n.kernel tail\n    HALT\n")
    assert parse_assembly(text) == emit.program()
