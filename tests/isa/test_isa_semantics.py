"""The reference semantics of the instructions, against numpy and exact expected values."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from seqrun import SeqContext, execute, read_gm, write_gm
from zhenwu.isa.asm import parse_assembly
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.machine import load_machine

BF16 = ml_dtypes.bfloat16


def run_core(text: str, machine: str = "m890", gm: np.ndarray | None = None,
             setup=None) -> SeqContext:
    program = parse_assembly(text)
    gm = np.zeros(1 << 16, dtype=np.uint8) if gm is None else gm
    ctx = SeqContext(program, load_machine(machine), gm, core=3, cores=32)
    if setup is not None:
        setup(ctx)
    return execute(ctx)


def l1(ctx: SeqContext, address: int, rows: int, cols: int, dtype: str) -> np.ndarray:
    return ctx.tile("L1", address, rows, cols, dtype, cols, 1)


def acc(ctx: SeqContext, address: int, rows: int, cols: int, dtype: str) -> np.ndarray:
    return ctx.tile("ACC", address, rows, cols, dtype, cols, 1)


# ---- scalar ---------------------------------------------------------------------------


def test_scalar_alu_floor_division_shifts_and_wrapping():
    ctx = run_core("""
    LI r1, -7
    LI r2, 2
    DIV r3, r1, r2
    REM r4, r1, r2
    REM r5, r1, -2
    SHR r6, r1, 1
    SHL r7, r2, 62
    ADD r8, r7, r7
    SLT r9, r1, r2
    SEQ r10, r2, 2
    XOR r11, r1, 3
    MIN r12, r1, r2
    MAX r13, r1, 5
    MUL r14, r2, -3
    GETID r15, core
    GETID r16, cores
    MOV r17, r16
    """)
    assert ctx.regs[3:18] == [-4, 1, -1, -4, -(2**63), 0, 1, 1, -7 ^ 3, -7, 5, -6, 3, 32, 32]
    # 2 << 62 wraps to -2**63, and doubling that wraps to 0
    ctx = run_core("LI r1, 1\nSHL r2, r1, 63\nSUB r3, r2, 1")
    assert ctx.regs[2] == -(2**63) and ctx.regs[3] == 2**63 - 1


def test_division_by_zero_traps():
    with pytest.raises(ChipTrap, match="integer division by zero"):
        run_core("LI r1, 5\nDIV r2, r1, 0")
    with pytest.raises(ChipTrap, match="remainder by zero"):
        run_core("LI r1, 5\nREM r2, r1, r0")


def test_nested_loops_branches_and_predication():
    ctx = run_core("""
    LI r5, 0
    LOOP r1, 3
    LOOP r2, r6
    ADD r5, r5, 1
    ENDLOOP
    ADD r6, r6, 1
    ENDLOOP
    LI r7, 0
    LOOP r1, 0
    LI r7, 99
    ENDLOOP
    BEQZ r7, skip
    LI r8, 1
skip:
    @r7 LI r9, 5
    @!r7 LI r10, 6
    BNEZ r10, end
    LI r11, 1
end:
    JMP out
    LI r12, 1
out:
    HALT
    LI r13, 1
    """)
    # inner trip counts 0, 1, 2 (n is read at each entry)
    assert ctx.regs[5] == 3 and ctx.regs[6] == 3 and ctx.regs[1] == 0
    assert ctx.regs[7:14] == [0, 0, 0, 6, 0, 0, 0]


def test_desc_and_dma_load_with_pad_transpose_and_cast():
    gm = np.zeros(1 << 16, dtype=np.uint8)
    x = np.arange(5 * 6, dtype=np.float32).reshape(5, 6)
    write_gm(gm, 0x100, x)
    ctx = run_core("""
    .tensor x, f32, [5, 6], 0x100, in
    DESC d0, x, f32, [5, 6], [6, 1], [4, 4]
    LI r1, 3
    DMA.LD L1[0], d0[r1, -1] .pad #-1.5
    DMA.LD.bf16 L1[256], d0[0, 0] .T
    DMA.LD L1[512, 8], d0[1, 2]
    DESC d1, x+4, f32, [5, 3], [6, 2], [2, 3]
    DMA.LD L1[1024], d1[0, 0]
    """, gm=gm)
    expected = np.full((4, 4), -1.5, dtype=np.float32)
    expected[:2, 1:] = x[3:5, 0:3]
    np.testing.assert_array_equal(l1(ctx, 0, 4, 4, "f32"), expected)
    transposed = l1(ctx, 256, 4, 4, "bf16")
    assert transposed.dtype == BF16
    np.testing.assert_array_equal(transposed.astype(np.float32), x[:4, :4].T)
    np.testing.assert_array_equal(ctx.tile("L1", 512, 4, 4, "f32", 8, 1), x[1:5, 2:6])
    # base x+4 bytes, strides (6, 2): columns 1, 3, 5
    np.testing.assert_array_equal(l1(ctx, 1024, 2, 3, "f32"), x[0:2, 1::2])


def test_dma_store_clips_casts_and_relu():
    gm = np.zeros(1 << 16, dtype=np.uint8)
    ctx_setup = []

    def setup(ctx):
        acc(ctx, 0, 4, 4, "f32")[...] = np.arange(16, dtype=np.float32).reshape(4, 4) - 8
        ctx_setup.append(ctx)

    run_core("""
    .tensor y, bf16, [3, 5], 0x200, out
    DESC d0, y, bf16, [3, 5], [5, 1], [4, 4]
    DMA.ST d0[1, 2], ACC[0] .relu
    DMA.ST d0[-3, -3], ACC[0]
    """, gm=gm, setup=setup)
    y = read_gm(gm, 0x200, "bf16", (3, 5)).astype(np.float32)
    source = np.arange(16, dtype=np.float32).reshape(4, 4) - 8
    expected = np.zeros((3, 5), dtype=np.float32)
    expected[1:3, 2:5] = np.maximum(source[:2, :3], 0)
    expected[0, 0] = source[3, 3]  # the box at (-3, -3) reaches (0, 0) with its last element
    np.testing.assert_array_equal(y, expected)


def test_dma_mov_copies_bytes_between_spaces():
    def setup(ctx):
        l1(ctx, 64, 1, 8, "i32")[...] = np.arange(8)

    ctx = run_core("LI r2, 32\nDMA.MOV ACC[r2+0], L1[64], 32", setup=setup)
    np.testing.assert_array_equal(acc(ctx, 32, 1, 8, "i32"), np.arange(8)[None])


# ---- matrix ---------------------------------------------------------------------------


def test_mma_bf16_transposes_init_and_accumulate():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 16)).astype(BF16)  # stored K x M for .tA: M=16, K=32
    b = rng.standard_normal((48, 32)).astype(BF16)  # stored N x K for .tB: N=48

    def setup(ctx):
        l1(ctx, 0, 32, 16, "bf16")[...] = a
        l1(ctx, 4096, 48, 32, "bf16")[...] = b

    ctx = run_core("""
    MMA.bf16.f32 ACC[0], L1[0], L1[4096], 16, 48, 32 .init .tA .tB
    MMA.bf16.f32 ACC[0], L1[0], L1[4096], 16, 48, 32 .tA .tB
    """, setup=setup)
    expected = a.astype(np.float32).T @ b.astype(np.float32).T
    np.testing.assert_allclose(acc(ctx, 0, 16, 48, "f32"), 2 * expected, rtol=1e-5, atol=1e-5)


def test_mma_i8_accumulates_in_i32_and_row_strides():
    a = np.full((16, 16), 100, dtype=np.int8)
    b = np.full((16, 16), 100, dtype=np.int8)

    def setup(ctx):
        ctx.tile("L1", 0, 16, 16, "i8", 32, 1)[...] = a  # row stride 32
        l1(ctx, 1024, 16, 16, "i8")[...] = b
        acc(ctx, 0, 16, 16, "i32")[...] = 7

    ctx = run_core("MMA.i8.i32 ACC[0], L1[0, 32], L1[1024], 16, 16, 16 .acc", setup=setup)
    np.testing.assert_array_equal(acc(ctx, 0, 16, 16, "i32"), np.full((16, 16), 160007))


def test_mma_traps_on_sizes_and_unsupported_dtype():
    with pytest.raises(ChipTrap, match="K = 24 is not a multiple of 16"):
        run_core("MMA.bf16.f32 ACC[0], L1[0], L1[0], 16, 16, 24")
    with pytest.raises(ChipTrap, match="machine 'z810e' has no fp8 matrix unit"):
        run_core("MMA.fp8.f32 ACC[0], L1[0], L1[0], 16, 16, 16", machine="z810e")


# ---- vector ---------------------------------------------------------------------------


def test_vector_binary_with_broadcast_and_bf16_single_rounding():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 8)).astype(BF16)
    row = rng.standard_normal((1, 8)).astype(BF16)

    def setup(ctx):
        l1(ctx, 0, 4, 8, "bf16")[...] = a
        l1(ctx, 1024, 1, 8, "bf16")[...] = row

    ctx = run_core("""
    VADD.bf16 L1[2048], L1[0], L1[1024, 0], 4, 8
    VMUL.bf16 L1[3072], L1[0], #3.0, 4, 8
    VFMA.bf16 L1[4096], L1[0], L1[0], #1.0, 4, 8
    VMAX.bf16 L1[0], L1[0], #0.0, 4, 8
    """, setup=setup)
    a32 = a.astype(np.float32)
    np.testing.assert_array_equal(l1(ctx, 2048, 4, 8, "bf16"),
                                  (a32 + row.astype(np.float32)).astype(BF16))
    np.testing.assert_array_equal(l1(ctx, 3072, 4, 8, "bf16"), (a32 * 3).astype(BF16))
    np.testing.assert_array_equal(l1(ctx, 4096, 4, 8, "bf16"), (a32 * a32 + 1).astype(BF16))
    np.testing.assert_array_equal(l1(ctx, 0, 4, 8, "bf16"), np.maximum(a32, 0).astype(BF16))


def test_vector_integer_ops_wrap_and_divide_by_floor():
    def setup(ctx):
        l1(ctx, 0, 1, 4, "i8")[...] = [100, -7, 7, -128]
        l1(ctx, 16, 1, 4, "i8")[...] = [100, 2, -2, 1]

    ctx = run_core("""
    VADD.i8 L1[32], L1[0], L1[16], 1, 4
    VDIV.i8 L1[48], L1[0], L1[16], 1, 4
    VNEG.i8 L1[64], L1[0], 1, 4
    """, setup=setup)
    assert l1(ctx, 32, 1, 4, "i8").tolist() == [[-56, -5, 5, -127]]
    assert l1(ctx, 48, 1, 4, "i8").tolist() == [[1, -4, -4, -128]]
    assert l1(ctx, 64, 1, 4, "i8").tolist() == [[-100, 7, -7, -128]]
    with pytest.raises(ChipTrap, match="integer division by zero in VDIV"):
        run_core("VDIV.i32 L1[0], L1[0], L1[64], 1, 4")


def test_compare_select_convert_dup_iota_transpose():
    def setup(ctx):
        l1(ctx, 0, 2, 3, "f32")[...] = [[-1.5, 0.0, 2.7], [300.0, np.nan, -200.0]]

    ctx = run_core("""
    VCMP.gt.f32 L1[64], L1[0], #0.0, 2, 3
    VSEL.f32 L1[128], L1[64], L1[0], #-9.0, 2, 3
    VCVT.f32.i8 L1[192], L1[0], 2, 3
    LI r4, -2
    VDUP.i32 L1[256], r4, 2, 3
    VIOTA.f32 L1[320], 2, 3, 10
    VTRANS.f32 L1[384], L1[0], 2, 3
    """, setup=setup)
    assert l1(ctx, 64, 2, 3, "bool").tolist() == [[False, False, True], [True, False, False]]
    np.testing.assert_array_equal(l1(ctx, 128, 2, 3, "f32"),
                                  np.float32([[-9, -9, 2.7], [300, -9, -9]]))
    assert l1(ctx, 192, 2, 3, "i8").tolist() == [[-1, 0, 2], [127, 0, -128]]
    assert l1(ctx, 256, 2, 3, "i32").tolist() == [[-2] * 3] * 2
    assert l1(ctx, 320, 2, 3, "f32").tolist() == [[10, 11, 12], [13, 14, 15]]
    np.testing.assert_array_equal(l1(ctx, 384, 3, 2, "f32"), l1(ctx, 0, 2, 3, "f32").T)


def test_special_functions_against_numpy():
    x = np.linspace(-3, 3, 32, dtype=np.float32).reshape(4, 8)

    def setup(ctx):
        l1(ctx, 0, 4, 8, "f32")[...] = x

    ctx = run_core("""
    VEXP.f32 L1[1024], L1[0], 4, 8
    VTANH.f32 L1[2048], L1[0], 4, 8
    VSIGM.f32 L1[3072], L1[0], 4, 8
    VGELU.f32 L1[4096], L1[0], 4, 8
    VERF.f32 L1[5120], L1[0], 4, 8
    VCOS.f32 L1[6144], L1[0], 4, 8
    VRSQRT.f32 L1[7168], L1[0], 4, 8
    """, setup=setup)
    import math

    np.testing.assert_allclose(l1(ctx, 1024, 4, 8, "f32"), np.exp(x), rtol=1e-6)
    np.testing.assert_allclose(l1(ctx, 2048, 4, 8, "f32"), np.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(l1(ctx, 3072, 4, 8, "f32"), 1 / (1 + np.exp(-x)), rtol=1e-6)
    gelu = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(l1(ctx, 4096, 4, 8, "f32"), gelu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l1(ctx, 5120, 4, 8, "f32"), [[math.erf(v) for v in r] for r in x],
                               rtol=1e-6)
    np.testing.assert_allclose(l1(ctx, 6144, 4, 8, "f32"), np.cos(x), rtol=1e-6)
    rsqrt = l1(ctx, 7168, 4, 8, "f32")
    assert np.isnan(rsqrt[0, 0]) and rsqrt[3, 7] == np.float32(1 / np.sqrt(np.float32(3)))


def test_reductions_rows_columns_and_accumulate():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)

    def setup(ctx):
        l1(ctx, 0, 3, 4, "f32")[...] = x
        l1(ctx, 512, 3, 1, "f32")[...] = 100

    ctx = run_core("""
    VRSUM.f32 L1[256], L1[0], 3, 4 .row
    VRMAX.f32 L1[384], L1[0], 3, 4 .col
    VRSUM.f32 L1[512], L1[0], 3, 4 .row .acc
    VRPROD.f32 L1[640], L1[0, 4], 2, 2 .col
    """, setup=setup)
    assert l1(ctx, 256, 3, 1, "f32").ravel().tolist() == [6, 22, 38]
    assert l1(ctx, 384, 1, 4, "f32").ravel().tolist() == [8, 9, 10, 11]
    assert l1(ctx, 512, 3, 1, "f32").ravel().tolist() == [106, 122, 138]
    assert l1(ctx, 640, 1, 2, "f32").ravel().tolist() == [0, 5]


def test_argmax_keeps_the_first_maximum_across_calls():
    def setup(ctx):
        l1(ctx, 0, 2, 4, "f32")[...] = [[1, 5, 5, 2], [7, 0, 7, 1]]
        l1(ctx, 64, 2, 4, "f32")[...] = [[5, 9, 0, 0], [7, 7, 7, 7]]

    ctx = run_core("""
    VRARGMAX.f32 L1[256], L1[512], L1[0], 2, 4, 0 .row
    LI r1, 4
    VRARGMAX.f32 L1[256], L1[512], L1[64], 2, 4, r1 .row .acc
    """, setup=setup)
    assert l1(ctx, 256, 2, 1, "f32").ravel().tolist() == [9, 7]
    assert l1(ctx, 512, 2, 1, "i32").ravel().tolist() == [5, 0]


def test_tile_outside_l1_traps():
    with pytest.raises(ChipTrap, match="outside L1"):
        run_core("VDUP.f32 L1[1048572], #1.0, 1, 2")


def test_branches_out_of_loops_pop_their_trip_counts():
    ctx = run_core("""
    LI r5, 0
    LOOP r1, 5
    LOOP r2, 4
    ADD r5, r5, 1
    SLT r3, r2, 1
    BEQZ r3, inner_done
    ENDLOOP
inner_done:
    SEQ r4, r1, 2
    BNEZ r4, out
    ENDLOOP
out:
    LOOP r6, 3
    ADD r7, r7, 1
    ENDLOOP
    """)
    # outer iterations 0, 1, 2 each run the inner body twice; the break at r1 = 2 leaves both
    assert ctx.regs[5] == 6 and ctx.loops == [] and ctx.regs[7] == 3
    program = ctx.program
    assert program.loop_exits[5] == 1 and program.loop_exits[8] == 1
    with pytest.raises(Exception, match="BEQZ jumps into a LOOP body from outside it"):
        parse_assembly("BEQZ r1, inside\nLOOP r2, 3\ninside:\nNOP\nENDLOOP")


def test_vrargmax_takes_the_first_nan_as_numpy_argmax_does():
    nan = float("nan")

    def setup(ctx):
        l1(ctx, 0, 3, 4, "f32")[...] = [[1, 2, 3, 4], [nan, 1, nan, 0], [1, 1, 1, 1]]
        l1(ctx, 64, 3, 4, "f32")[...] = [[0, nan, 9, nan], [5, nan, 0, 0], [nan, 2, 0, 0]]

    ctx = run_core("""
    VRARGMAX.f32 L1[256], L1[512], L1[0], 3, 4, 0 .row
    LI r1, 4
    VRARGMAX.f32 L1[256], L1[512], L1[64], 3, 4, r1 .row .acc
    """, setup=setup)
    # a NaN in a later call beats a number; an earlier NaN is kept against a later one
    assert l1(ctx, 512, 3, 1, "i32").ravel().tolist() == [5, 0, 4]
    assert np.isnan(l1(ctx, 256, 3, 1, "f32")).ravel().tolist() == [True, True, True]
