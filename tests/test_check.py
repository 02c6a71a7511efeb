"""The --check rule: the loosest float dtype an output is computed through sets its tolerance."""

from __future__ import annotations

import numpy as np

from compiler.check import output_tolerance, relative_error
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
