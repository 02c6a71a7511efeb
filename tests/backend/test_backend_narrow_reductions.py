"""A row reduction whose result is fp8 or i8 is rounded (wrapped) as the reference rounds
it before the kernel uses it again: a fused fp8 softmax gives the reference's bits."""

import numpy as np
import pytest

import zhenwu

SOFTMAX_FP8 = "fn main(x: fp8[3, 7, 33]) -> fp8[3, 7, 33] {\n    return softmax(x, axis=-1)\n}\n"
SUM_I8 = ("fn main(x: f32[4, 40]) -> i8[4, 40] {\n    a = cast(x * 20.0, i8)\n"
          "    return a - sum(a, axis=-1, keepdims=true)\n}\n")


@pytest.mark.parametrize("source", [SOFTMAX_FP8, SUM_I8], ids=["softmax_fp8", "sum_i8"])
@pytest.mark.parametrize("seed", range(4))
def test_fused_narrow_reductions_match_the_reference_exactly(source, seed):
    prog = zhenwu.compile(source, opt=2)
    inputs = prog.prepare_inputs(seed=seed)
    (got,), _ = prog.run(inputs)
    (want,) = prog.reference(inputs)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
