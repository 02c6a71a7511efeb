"""Exact numerics on every pipeline: integer products (no f32 on the way), casts folded into
operand loads only where they keep every value, and NaN through max/min/argmax as numpy has
it. Each program runs at -O0 and -O2 on given inputs and must equal the reference (integer and
bool outputs bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
from backend_helpers import machine


def run_both(source: str, inputs: dict, machine_name: str = "m890") -> list:
    """Compile at -O0 and -O2, run, and assert each output matches the reference (exactly for
    integer and bool outputs); the compiled programs' assembly, by opt level."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.check import check_output
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.reference import evaluate
    from zhenwu.runtime import run_program

    fn = load_program("test.zt", text=source)
    want = evaluate(fn, inputs)
    target = machine(machine_name)
    asm = []
    for level in (0, 2):
        compiled = compile_function(fn, target, CompileOptions(opt_level=level))
        result = run_program(compiled.program, target, compiled.program_inputs(inputs))
        for index, (got, ref, value) in enumerate(zip(compiled.graph_outputs(result), want,
                                                      fn.outputs)):
            passes, summary = check_output(fn, value, got, ref)
            assert passes, f"-O{level} out{index}: {summary}"
        asm.append(compiled.asm_text)
    return asm


def nan_rows(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    for row in range(0, flat.shape[0], 2):  # every other row gets NaNs, the rest none
        cols = rng.choice(shape[-1], size=2, replace=False)
        flat[row, cols] = np.nan
    return x


@pytest.mark.parametrize("shape", [(4, 6), (3, 700), (40, 33)])
def test_argmax_max_min_with_nan_follow_numpy(shape):
    x = nan_rows(shape)
    run_both(f"""
    fn main(x: f32[{shape[0]}, {shape[1]}]) -> (i32[{shape[0]}], i32[{shape[1]}], i32[],
            f32[{shape[0]}], f32[{shape[1]}], f32[], f32[{shape[0]}]) {{
        return argmax(x, axis=-1), argmax(x, axis=0), argmax(x), max(x, axis=-1),
               min(x, axis=0), max(x), min(x, axis=1)
    }}""", {"x": x})


def test_argmin_follows_numpy_with_nan_and_integer_extremes():
    rng = np.random.default_rng(5)
    i = rng.integers(-128, 128, (6, 40)).astype(np.int8)
    i[0, [5, 9]] = -128
    j = rng.integers(-2**31, 2**31, (6, 40)).astype(np.int32)
    j[1, 3] = -2**31
    run_both("""
    fn main(x: f32[6, 40], i: i8[6, 40], j: i32[6, 40], b: bool[6, 40]) -> (i32[6], i32[40],
            i32[], i32[6], i32[6], i32[6, 1]) {
        return argmin(x, axis=-1), argmin(x, axis=0), argmin(x), argmin(i, axis=1),
               argmin(j, axis=1), argmin(b, axis=1, keepdims=true)
    }""", {"x": nan_rows((6, 40)), "i": i, "j": j, "b": rng.random((6, 40)) > 0.3})


def test_max_pool_and_row_kernels_carry_nan():
    x = nan_rows((2, 3, 8, 8))
    run_both("""
    fn main(x: f32[2, 3, 8, 8]) -> (f32[2, 3, 4, 4], f32[2, 3, 8, 1], f32[2, 3, 8, 8]) {
        return maxpool2d(x, 2), max(x, axis=-1, keepdims=true),
               x - max(x, axis=-1, keepdims=true)
    }""", {"x": x})


def test_softmax_rows_with_nan_are_nan_and_the_others_are_not():
    x = nan_rows((8, 96))
    run_both("""
    fn main(x: f32[8, 96]) -> (f32[8, 96], i32[8]) {
        return softmax(x, axis=-1), argmax(log_softmax(x, axis=-1), axis=-1)
    }""", {"x": x})


# ------------------------------------------------------------------ integer products


def ints(shape, low, high, dtype, seed=0):
    return np.random.default_rng(seed).integers(low, high, shape).astype(dtype)


def test_float_to_int_cast_operands_truncate_before_the_product():
    # issue 11 item 0f: the casts were folded into the operand loads, which skipped the
    # truncation (trunc(x @ w) instead of trunc(x) @ trunc(w))
    rng = np.random.default_rng(1)
    inputs = {"x": rng.normal(0, 4, (16, 16)).astype(np.float32),
              "w": rng.normal(0, 4, (16, 16)).astype(np.float32)}
    run_both("""
    fn main(x: f32[16, 16], w: f32[16, 16]) -> i32[16, 16] {
        return cast(x, i32) @ cast(w, i32)
    }""", inputs)


def test_a_cast_to_i8_folded_into_the_loads_truncates_and_saturates():
    rng = np.random.default_rng(2)
    inputs = {"x": rng.normal(0, 150, (32, 48)).astype(np.float32),
              "w": rng.normal(0, 150, (48, 16)).astype(np.float32)}
    asm = run_both("""
    fn main(x: f32[32, 48], w: f32[48, 16]) -> i32[32, 16] {
        return matmul(cast(x, i8), cast(w, i8), acc=i32)
    }""", inputs)
    assert "MMA.i8.i32" in asm[1] and "DMA.LD.i8" in asm[1]  # -O2 folds: the DMA casts


def test_i8_products_widened_to_i32_are_exact_at_k_4096_and_use_the_i8_rate():
    # issue 11 item 1: this was MMA.f32.f32, off by up to 7
    inputs = {"a": ints((32, 4096), -128, 128, np.int8), "b": ints((4096, 32), -128, 128,
                                                                     np.int8, seed=1)}
    asm = run_both("""
    fn main(a: i8[32, 4096], b: i8[4096, 32]) -> (i32[32, 32], i32[32, 32]) {
        return cast(a, i32) @ cast(b, i32), matmul(a, b, acc=i32)
    }""", inputs)
    for text in asm:
        assert "MMA.i8.i32" in text and "MMA.f32" not in text


def test_i32_products_are_exact_and_wrap_as_numpy_int32():
    inputs = {"a": ints((32, 96), -2**31, 2**31, np.int32),
              "b": ints((96, 16), -2**31, 2**31, np.int32, seed=1),
              "c": ints((2, 16, 32), -2**31, 2**31, np.int32, seed=2)}
    asm = run_both("""
    fn main(a: i32[32, 96], b: i32[96, 16], c: i32[2, 16, 32]) -> (i32[32, 16], i32[2, 16, 16],
                                                                    i32[32, 16]) {
        return a @ b, c @ a[:32, :16], einsum("mk,kn->mn", a, b)
    }""", inputs)
    want = (inputs["a"].astype(np.int64) @ inputs["b"]).astype(np.int32)
    assert np.count_nonzero(want != np.matmul(inputs["a"], inputs["b"])) == 0  # numpy wraps
    for text in asm:
        assert "MMA.i8.i32" in text and "MMA.f32" not in text


def test_acc_runs_narrow_products_on_their_own_rate_with_a_wide_result():
    rng = np.random.default_rng(3)
    inputs = {"x": rng.normal(size=(64, 64)).astype(np.float32),
              "a": ints((4, 32, 64), -128, 128, np.int8), "b": ints((64, 48), -128, 128,
                                                                      np.int8, seed=1)}
    asm = run_both("""
    fn main(x: f32[64, 64], a: i8[4, 32, 64], b: i8[64, 48]) -> (f32[64, 64], i32[4, 32, 48],
            i32[4, 48], f32[64, 64]) {
        xb = cast(x, bf16)
        return matmul(xb, xb, acc=f32), einsum("bmk,kn->bmn", a, b, acc=i32),
               einsum("bmk,kn->bn", a, b, acc=i32),
               einsum("ij,jk->ik", cast(x, fp8), cast(x, fp8), acc=f32)
    }""", inputs)
    for text in asm:
        assert "MMA.bf16.f32" in text and "MMA.i8.i32" in text and "MMA.f32" not in text


def test_an_i32_matmul_left_to_the_backend_is_refused_with_its_place():
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.errors import CompileError

    fn = load_program("p.zt", text="fn main(a: i32[16, 16]) -> i32[16, 16] {\n"
                                   "    return a @ a\n}\n")
    for level in (0, 2):
        options = CompileOptions(opt_level=level, disabled_passes=("split-int-matmul",))
        with pytest.raises(CompileError, match="i32 matmul") as err:
            compile_function(fn, machine(), options)
        assert str(err.value).startswith("p.zt:2:12: error:")


def test_casts_in_a_fused_kernel_wrap_and_round_where_their_value_is_used():
    # found while splitting i32 products: inside a fused kernel an i8 (fp8) value lives in
    # i32 (f32), and a cast to it from i32 (f32) was skipped when the kernel read it again
    inputs = {"a": ints((16, 32), -2**31, 2**31, np.int32),
              "x": np.random.default_rng(4).normal(size=(16, 32)).astype(np.float32)}
    run_both("""
    fn main(a: i32[16, 32], x: f32[16, 32]) -> (i8[16, 32], i32[16, 32], fp8[16, 32], f32[16, 32]) {
        d = cast(a, i8)
        y = cast(x * 3.0, fp8)
        return d, cast(d, i32) + 1, y, cast(y, f32) + 1.0
    }""", inputs)


def test_a_machine_without_f16_or_i8_products_refuses_what_it_cannot_do_exactly(tmp_path):
    from pathlib import Path

    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.errors import CompileError
    from zhenwu.isa.machine import load_machine

    text = (Path(__file__).parents[2] / "isa/machines/m890.toml").read_text()
    text = text.replace("\nf16 = 1.0", "").replace("\ni8 = 2.0", "").replace(
        'name = "m890"', 'name = "no16"')
    (tmp_path / "no16.toml").write_text(text)
    target = load_machine(str(tmp_path / "no16.toml"))
    assert not target.supports_mx("f16") and not target.supports_mx("i8")
    for source, where in (
            ("fn main(x: f32[16, 16]) -> f16[16, 16] {\n    return cast(x, f16) @ cast(x, f16)\n}",
             "p.zt:2:12: error: machine"),
            ("fn main(a: i8[16, 16]) -> i32[16, 16] {\n    return matmul(a, a, acc=i32)\n}",
             "p.zt:2:12: error: machine")):
        fn = load_program("p.zt", text=source)
        with pytest.raises(CompileError) as err:
            compile_function(fn, target, CompileOptions(opt_level=2))
        assert str(err.value).startswith(where), str(err.value)


def test_kernel_ir_with_a_nan_immediate_prints_and_parses_back():
    from zhenwu.compiler.backend.kernel_ir import parse_kernels, print_kernels
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program

    fn = load_program("p.zt", text="fn main(x: f32[4, 8]) -> f32[4, 8] {\n"
                                   "    return where(x > 1.0, x * (inf - inf), x)\n}\n")
    for level in (0, 2):
        kernels = compile_function(fn, machine(), CompileOptions(opt_level=level)).kernels
        text = print_kernels(kernels)
        assert "nan" in text
        assert parse_kernels(text) == kernels and print_kernels(parse_kernels(text)) == text
