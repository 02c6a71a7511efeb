"""Property tests: the frontend answers any input with a program or a diagnostic, never with
another exception; and whatever it accepts, the lowered pipeline computes the same numbers."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.graph import PRIMITIVES, parse_function, print_function
from zhenwu.compiler.graph.dtypes import tolerance
from zhenwu.compiler.inputs import random_input
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline
from zhenwu.compiler.reference import evaluate
from zhenwu.isa.errors import ZhenwuError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

TOKENS = ["fn", "main", "f", "(", ")", "x", "y", ":", "f32", "bf16", "i32", "bool", "[", "]", "3",
          "4", "0", "-1", "2.5", "1e-5", ",", "{", "}", "return", "=", "+", "-", "*", "@", "/",
          "//", "**", "<", ">=", "==", "!=", "softmax", "sum", "max", "axis", "keepdims", "true",
          "false", "reshape", "transpose", "None", ";", "\n", "const", "N", "B", '"ij->ji"',
          "einsum", "where", "arange", "->", "conv2d", "concat", "split", "pad", "cast",
          "argmax", "mean", "layernorm", "inf", "pi", "#", "a", "b", "%", "$", "'", ".", "..."]

PREFIX = "fn main(x: f32[3, 4], y: i32[4], m: bool[3, 1]) {\n    return "

ARGS = ["x", "y", "m", "0", "1", "-1", "2", "2.5", "[4, 3]", "[-1]", "[1, 0]", "(0, 1)",
        "true", "false", "None", '"ij->ji"', '"ij,j->i"', "f32", "i32", "x[0]", "x[:, 1:3]",
        "x[None, ::2]", "axis=0", "axis=-1", "axis=(0, 1)", "keepdims=true", "dtype=bf16",
        "[[0, 1], [1, 0]]", "[x, x]", "inf", "-inf", "x > 0", "x @ transpose(x)", "y * 2",
        "10 ** 20", "1e308", "-2 ** 40", "[10 ** 19]", "x[10 ** 20:]", "..."]

BUILTINS = ["exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "gelu", "silu", "erf",
            "abs", "neg", "sign", "floor", "maximum", "minimum", "pow", "where", "clip", "cast",
            "sum", "mean", "max", "min", "prod", "argmax", "matmul", "einsum", "reshape",
            "transpose", "expand_dims", "squeeze", "broadcast_to", "concat", "split", "pad",
            "zeros", "ones", "full", "arange", "softmax", "log_softmax", "layernorm", "rmsnorm",
            "conv2d", "maxpool2d", "avgpool2d", "frobnicate"]


def check(text: str):
    """Load `text`; a ZhenwuError is a fine answer, anything else fails the test."""
    try:
        return load_program("fuzz.zt", text=text)
    except ZhenwuError as err:
        err.format()  # formatting the diagnostic must not fail either
        return None


@FUZZ
@given(st.text(max_size=120))
def test_random_text(text):
    check(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_random_token_sequences(tokens):
    check(" ".join(tokens))


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=25))
def test_random_tokens_inside_a_function(tokens):
    check(PREFIX + " ".join(tokens) + "\n}\n")


def _agree(fn):
    """The checked function and its lowered form compute the same outputs."""
    text = print_function(fn)
    assert print_function(parse_function(text)) == text
    lowered = run_pipeline(fn, default_graph_pipeline())
    assert {op.kind for op in lowered.ops} <= set(PRIMITIVES)
    inputs = {p.name: random_input(p.type, 0, i) for i, p in enumerate(fn.params)}
    for want, got, value in zip(evaluate(fn, inputs), evaluate(lowered, inputs), fn.outputs):
        assert want.shape == got.shape
        want64, got64 = want.astype(np.float64), got.astype(np.float64)
        finite = np.isfinite(want64)
        if finite.any():
            scale = max(np.abs(want64[finite]).max(), 1.0)
            error = np.abs(want64[finite] - got64[finite]).max() / scale
            assert error <= max(tolerance(value.type.dtype), 1e-4)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(BUILTINS),
                          st.lists(st.sampled_from(ARGS), max_size=4)), min_size=1, max_size=3))
def test_random_builtin_calls(calls):
    expr = "x"
    for name, args in calls:
        positional = [a for a in args if "=" not in a or "==" in a]
        keywords = [a for a in args if a not in positional]
        expr = f"{name}({', '.join([expr] + positional + keywords)})"
    fn = check(PREFIX + expr + "\n}\n")
    if fn is not None:
        _agree(fn)


# Plausible extra arguments per builtin (the first argument is the expression so far), so
# that many generated programs pass the checker and reach the evaluator and the passes.
PLAUSIBLE = {
    "exp": [""], "tanh": [""], "relu": [""], "abs": [""], "neg": [""], "sigmoid": [""],
    "gelu": ["", "approximate=false"], "silu": [""], "floor": [""], "sign": [""],
    "maximum": ["0.5", "x", "y"], "minimum": ["x[0]", "-1"], "pow": ["2", "y"],
    "where_": ["where(m, {x}, 0.0)", "where({x} > 0, 1, -inf)"], "clip": ["-0.5, 0.5"],
    "cast": ["bf16", "i32", "f16"],
    "sum": ["", "axis=0", "axis=-1, keepdims=true", "axis=(0, 1)"],
    "mean": ["axis=1", "axis=0, keepdims=true"], "max": ["axis=-1"], "min": ["", "axis=0"],
    "prod": ["axis=0"], "argmax": ["axis=-1", ""], "matmul": ["transpose(x)", "y"],
    "reshape": ["[-1]", "[4, 3]", "[2, -1, 2]", "[12, 1]"], "transpose": ["", "[1, 0]"],
    "expand_dims": ["0", "-1"], "squeeze": [""], "broadcast_to": ["[2, 3, 4]", "[5, 4]"],
    "split": ["2, axis=1", "[1], axis=0"], "pad": ["[[1, 0], [0, 2]]", "1, value=-1.0"],
    "softmax": ["", "axis=0"], "log_softmax": [""], "rmsnorm": ["y"],
    "layernorm": ["1.0, 0.0", "y, y, eps=0.1"], "full": ["2.0"],
    "maxpool2d": ["2", "[2, 1], stride=1, padding=[1, 0]"], "avgpool2d": ["2, padding=1"],
    "conv2d": ["ones([2, 3, 2, 2])", "ones([1, 1, 1, 1]), stride=2, padding=1, dilation=2"],
    "einsum_": ['einsum("ij->ji", {x})', 'einsum("ij,kj->ik", {x}, {x})'],
    "index": ["{x}[0]", "{x}[:, ::2]", "{x}[None, -1]", "{x}[1:, None]"],
    "binary": ["{x} + y", "{x} * 2", "{x} @ transpose({x})", "{x} / 3", "{x} ** 2",
               "{x} < 0.5", "{x} // 2", "-{x}", "{x} - m"],
}


def _expand(expr: str, name: str, extra: str) -> str:
    if "{x}" in extra:
        return extra.format(x=expr)
    if name in ("maxpool2d", "avgpool2d", "conv2d"):
        expr = f"reshape({expr}, [1, 1, 3, -1])"
    if name == "full":
        return f"full([3, 4], {extra}) + {expr}"
    return f"{name}({expr}{', ' + extra if extra else ''})"


@FUZZ
@given(st.lists(st.sampled_from(sorted(PLAUSIBLE)).flatmap(
    lambda name: st.tuples(st.just(name), st.sampled_from(PLAUSIBLE[name]))),
    min_size=1, max_size=4))
def test_plausible_programs_lower_to_the_same_numbers(calls):
    expr = "x"
    for name, extra in calls:
        expr = _expand(expr, name, extra)
    fn = check(PREFIX + expr + "\n}\n")
    if fn is not None:
        _agree(fn)


IR_SAMPLE = """func @main(%x: f32[2,3]) -> (f32[2,1]) {
  %1 = exp %x : f32[2,3] loc("f.zt":1:2-1:5)
  %2 = reduce_sum %1 {axes=[1], keepdims=true} : f32[2,1] origin("softmax#1")
  return %2
}
"""


@FUZZ
@given(st.data())
def test_mutated_graph_ir_text(data):
    """Deleting, duplicating or replacing a piece of valid IR text: a Diagnostic or a function
    that prints back to the same text, never another exception."""
    from zhenwu.isa.errors import Diagnostic

    text = IR_SAMPLE
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, min(len(text), start + 8)))
        piece = data.draw(st.sampled_from(["", "%", "[", "]", "{", "}", ",", "-", "1", "x",
                                           "\"", "f16", "=", text[start:end] * 2]))
        text = text[:start] + piece + text[end:]
    try:
        fn = parse_function(text)
    except Diagnostic as err:
        err.format()
        return
    printed = print_function(fn)
    assert print_function(parse_function(printed)) == printed


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_in_a_file(data):
    """Bytes that are not UTF-8, or not a program, give an error message, never a crash."""
    import os
    import tempfile

    from zhenwu.compiler.frontend import load_program as load

    handle, path = tempfile.mkstemp(suffix=".zt")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        try:
            load(path)
        except ZhenwuError as err:
            assert err.exit_status == 1
            err.format()
    finally:
        os.unlink(path)
