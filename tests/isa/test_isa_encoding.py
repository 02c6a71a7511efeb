"""The binary form: lossless round trips, the word layout, and errors for bad binaries."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import seqrun
from zhenwu.compiler.cli import main
from zhenwu.isa.asm import parse_assembly, print_program
from zhenwu.isa.encoding import MAGIC, decode_program, encode_program
from zhenwu.isa.errors import EncodingError
from zhenwu.isa.machine import load_machine
from zhenwu.runtime.blas import single_blas_thread

SAMPLES = sorted((Path(__file__).parents[2] / "samples" / "asm").glob("*.s"))
HEADER = 12


def _fix_crc(data: bytes) -> bytes:
    return data[:8] + struct.pack("<I", zlib.crc32(data[HEADER:])) + data[HEADER:]


def _words(data: bytes, count: int) -> list[int]:
    return [int.from_bytes(data[len(data) - 16 * (count - i):][:16], "little")
            for i in range(count)]


def test_samples_exist():
    assert [p.name for p in SAMPLES] == ["axpy.s", "gemm_db.s", "softmax_rows.s"]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_assembles_disassembles_and_reassembles_identically(path, tmp_path):
    text = path.read_text()
    assert text.startswith("# " + path.name + ": ")  # the header comment says what it computes
    binary, listing, again = tmp_path / "a.bin", tmp_path / "a.s", tmp_path / "b.bin"
    assert main(["asm", str(path), "-o", str(binary)]) == 0
    assert main(["disasm", str(binary), "-o", str(listing)]) == 0
    assert main(["asm", str(listing), "-o", str(again)]) == 0
    assert binary.read_bytes() == again.read_bytes()
    program = parse_assembly(text, str(path))
    assert listing.read_text() == print_program(program)
    assert decode_program(binary.read_bytes()) == program


def test_disasm_to_stdout(tmp_path, capsys):
    binary = tmp_path / "a.bin"
    binary.write_bytes(encode_program(parse_assembly("LI r1, 5\nHALT\n")))
    assert main(["disasm", str(binary)]) == 0
    assert capsys.readouterr().out == "    LI r1, 5\n    HALT\n"


def test_samples_compute_their_header_comments():
    rng = np.random.default_rng(7)
    m890 = load_machine("m890")
    programs = {p.name: parse_assembly(p.read_text(), p.name) for p in SAMPLES}
    x = rng.standard_normal((512, 1024)).astype(np.float32)
    y = rng.standard_normal((512, 1024)).astype(np.float32)
    out = seqrun.run(programs["axpy.s"], m890, {"x": x, "y": y})
    np.testing.assert_array_equal(out["y"], np.float32(2.5) * x + y)
    x = 3 * rng.standard_normal((512, 1000)).astype(np.float32)
    out = seqrun.run(programs["softmax_rows.s"], m890, {"x": x})
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(out["out"], e / e.sum(-1, keepdims=True), rtol=2e-6, atol=1e-9)
    a = rng.standard_normal((2048, 2048)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((2048, 2048)).astype(ml_dtypes.bfloat16)
    for machine in ("m890", "z810e"):
        with single_blas_thread():  # thousands of small tile products: threads only contend
            out = seqrun.run(programs["gemm_db.s"], load_machine(machine), {"a": a, "b": b})
        ref = np.maximum(a.astype(np.float32) @ b.astype(np.float32), 0)
        np.testing.assert_allclose(out["c"].astype(np.float32), ref, rtol=2**-8, atol=1e-3)


def test_word_layout():
    program = parse_assembly("@!r5 VADD.bf16 L1[0], L1[64], #1.0, 4, 8 .wait E3:2 .sig E7\n"
                             "LI r2, -3\n")
    data = encode_program(program)
    vadd, li = _words(data, 2)
    assert vadd & 0xFF == 0x40  # opcode
    assert (vadd >> 8) & 0xF == 2  # .bf16 is the second dt value
    assert (vadd >> 16) & 0x7F == 1 | 1 << 1 | 5 << 2  # predicate present, negated, r5
    assert (vadd >> 29) & 1 == 1  # three tiles do not fit 48 bits: spilled
    assert (vadd >> 32) & 0xFFF == 1 | 3 << 1 | 1 << 6  # .wait E3:2
    assert (vadd >> 44) & 0xFFF == 0  # no second .wait
    assert (vadd >> 56) & 0xFFF == 1 | 7 << 1  # .sig E7
    assert li & 0xFF == 0x11 and (li >> 29) & 1 == 0
    assert li >> 80 == 2 | ((-3) & 0xFFFF) << 5  # rd 5 bits, then imm 16 bits
    assert data[:4] == MAGIC


def test_bad_magic_version_truncation_and_checksum():
    data = encode_program(parse_assembly("LI r1, 1\nHALT\n"))
    with pytest.raises(EncodingError, match=r"p.bin: not an M890 binary \(magic b'XXXX'"):
        decode_program(b"XXXX" + data[4:], "p.bin")
    with pytest.raises(EncodingError, match="binary version 9 is not supported"):
        decode_program(data[:4] + struct.pack("<H", 9) + data[6:])
    with pytest.raises(EncodingError, match=r"truncated binary \(5 bytes"):
        decode_program(data[:5])
    with pytest.raises(EncodingError, match="checksum mismatch"):
        decode_program(data[:-1])
    with pytest.raises(EncodingError, match="checksum mismatch"):
        decode_program(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(EncodingError, match="truncated binary: 2 instructions do not fit"):
        decode_program(_fix_crc(data[:-1]))
    with pytest.raises(EncodingError, match="3 bytes after the last instruction"):
        decode_program(_fix_crc(data + b"abc"))


def _with_word(data: bytes, word: int) -> bytes:
    return _fix_crc(data[:-16] + word.to_bytes(16, "little"))


def test_bad_fields():
    data = encode_program(parse_assembly("VADD.f32 L1[0], L1[0], #1.0, 4, 4\n"))
    (word,) = _words(data, 1)
    with pytest.raises(EncodingError, match="instruction 0: unknown opcode 0xff"):
        decode_program(_with_word(data, word | 0xFF))
    with pytest.raises(EncodingError, match=r"opcode 0xa8 \(COLL.ALLREDUCE\) is reserved"):
        decode_program(_with_word(data, (word & ~0xFF) | 0xA8))
    with pytest.raises(EncodingError, match="VADD suffix field 0 = 15 out of range"):
        decode_program(_with_word(data, word | 0xF << 8))
    with pytest.raises(EncodingError, match="option bits 0x1 out of range for VADD"):
        decode_program(_with_word(data, word | 1 << 23))
    with pytest.raises(EncodingError, match="reserved bits are set"):
        decode_program(_with_word(data, word | 1 << 30))
    with pytest.raises(EncodingError, match="operand record index 7 out of range"):
        decode_program(_with_word(data, (word & ((1 << 80) - 1)) | 7 << 80))
    with pytest.raises(EncodingError, match="sync field 1 present after an empty one"):
        decode_program(_with_word(data, word | 1 << 44))
    li = encode_program(parse_assembly("LI r1, 1\n"))
    (word,) = _words(li, 1)
    with pytest.raises(EncodingError, match="nonzero bits after the last operand field"):
        decode_program(_with_word(li, word | 1 << 127))


def test_encode_rejects_invalid_instruction():
    from zhenwu.isa.program import Imm, Instruction, Program, Reg

    program = Program.build(None, [], [Instruction("ADD", (), (Reg(1), Reg(40), Imm(1)))])
    with pytest.raises(EncodingError, match="register r40 out of range"):
        encode_program(program)


def test_cli_errors_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.s"
    bad.write_text("NOP\nVAD.f32 L1[0], L1[0], L1[0], 4, 4\n")
    assert main(["asm", str(bad), "-o", str(tmp_path / "x.bin")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:2:1: error: unknown mnemonic 'VAD.f32'; did you mean 'VADD'?")
    assert main(["disasm", str(bad)]) == 1
    assert "not an M890 binary" in capsys.readouterr().err
    assert main(["disasm", str(tmp_path / "missing.bin")]) == 1
    assert "cannot read" in capsys.readouterr().err
    fp8 = tmp_path / "fp8.s"
    fp8.write_text(".machine z810e\nMMA.fp8.f32 ACC[0], L1[0], L1[0], 16, 16, 16\n")
    assert main(["asm", str(fp8), "-o", str(tmp_path / "x.bin")]) == 1
    assert "MMA.fp8.f32: machine 'z810e' has no fp8 matrix unit" in capsys.readouterr().err
