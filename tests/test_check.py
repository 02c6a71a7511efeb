"""The --check rule: the loosest float dtype an output is computed through sets its tolerance."""

from __future__ import annotations

import numpy as np

from compiler.check import check_output, mismatch_summary, output_tolerance, relative_error
from compiler.frontend import load_program

PROGRAM = """
fn main(a: bf16[4, 8], b: bf16[8, 4], x: f32[4]) -> (f32[4, 4], f32[4], i32[4]) {
    return cast(a @ b, f32) * 2.0, x + 1.0, argmax(a, axis=1)
}
"""


def test_an_output_computed_through_bf16_gets_bf16_tolerance():
    fn = load_program("t.zt", text=PROGRAM)
    through_bf16, pure_f32, index = fn.outputs
    assert output_tolerance(fn, through_bf16) == 2e-2
    assert output_tolerance(fn, pure_f32) == 1e-4
    assert output_tolerance(fn, index) == 0


def test_relative_error_is_scaled_by_the_reference():
    want = np.array([10.0, -20.0, 5.0])
    assert relative_error(want + np.array([0.0, 0.25, 0.0]), want) == 0.25 / 20.0
    assert relative_error(np.array([np.nan, 1, 1]), want) == float("inf")
    assert relative_error(np.zeros(2), want) == float("inf")  # shapes differ


def test_an_integer_output_reports_how_many_elements_differ_and_the_first():
    fn = load_program("t.zt", text=PROGRAM)
    index = fn.outputs[2]
    want = np.array([3, 1, 2, 0], np.int32)
    passes, summary = check_output(fn, index, np.array([3, 0, 2, 1], np.int32), want)
    assert not passes
    assert summary == "2 of 4 elements differ; first at [1]: got 0, want 1"
    assert check_output(fn, index, want.copy(), want) == (True, "exact (4 elements equal)")
    assert mismatch_summary(np.zeros((2, 2), bool), np.eye(2, dtype=bool)) == (
        "2 of 4 elements differ; first at [0, 0]: got False, want True")


def test_a_float_output_reports_its_relative_error():
    fn = load_program("t.zt", text=PROGRAM)
    passes, summary = check_output(fn, fn.outputs[1], np.array([1.0, 2.5]), np.array([1.0, 2.0]))
    assert not passes and summary == "max relative error 0.25 (tolerance 0.0001)"


def test_run_check_of_a_wrong_index_names_the_element(tmp_path, capsys):
    from compiler.cli import main

    src = tmp_path / "a.zt"
    src.write_text("fn main(x: f32[4, 6]) -> i32[4] { return argmax(x, axis=-1) }\n")
    x = np.zeros((4, 6), np.float32)
    x[1, 2] = np.nan  # numpy: the first NaN is the maximum
    x[2, 4] = 1.0
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(src), "--inputs", str(tmp_path / "in.npz"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "check out0: exact (4 elements equal) ok" in out
