"""The fuzzer draws issue 11's numeric forms: integer products (with `acc=`, casts of floats
and of i8 values, i32 wrap-around) compared exactly, NaN-bearing values into max/min/argmax/
softmax, and weakly typed math on numbers."""

from __future__ import annotations

import random

from zhenwu.compiler.fuzz.campaign import check_program
from zhenwu.compiler.fuzz.generator import ProgramBuilder, RandomChooser, random_program


def _drawn(step: str, seed: int) -> str:
    builder = ProgramBuilder(RandomChooser(random.Random(seed)))
    builder.new_param(builder.new_shape())
    getattr(builder, step)()
    return builder.text(builder.checked or [builder.values[-1]])


def test_the_generator_reaches_every_integer_product_form():
    texts = "\n".join(_drawn("step_int_matmul", seed) for seed in range(60))
    for form in ("acc=i32", "einsum(", ", i8) @ ", "i32) * 7654321) @ (", "cast(cast(",
                 "* 50.0, i32) @ cast("):
        assert form in texts, form
    # and whole programs draw them, with the product among the outputs (checked exactly)
    programs = [random_program(seed) for seed in range(150)]
    assert any("acc=i32" in p for p in programs)
    assert any("inf - inf" in p or "- 10.0)" in p for p in programs)
    assert any("rsqrt(128.0)" in p or "sqrt(7)" in p for p in programs)


def test_the_generator_reaches_nan_into_every_reduction():
    texts = "\n".join(_drawn("step_nan_reduce", seed) for seed in range(60))
    for form in ("max(v", "min(v", "argmax(v", "argmin(v", "softmax(v", "inf - inf",
                 "- 10.0)"):
        assert form in texts, form


def test_drawn_numeric_forms_match_the_reference():
    for step, seed in (("step_int_matmul", 5), ("step_nan_reduce", 1), ("step_weak_math", 2),
                       ("step_nan_reduce", 3)):
        text = _drawn(step, seed)
        check_program(text, seed=seed)
