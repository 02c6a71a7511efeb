"""Diagnostics a new user meets (issue 11, items 10 and 11): reserved words as names, dims
written as expressions, where an unclosed bracket or too-deep nesting is, non-UTF-8 text."""

from __future__ import annotations

import numpy as np
import pytest
from zhenwu.compiler.frontend import load_program
from zhenwu.isa.errors import Diagnostic, InputError

import zhenwu


def diagnose(text: str, **kwargs) -> Diagnostic:
    with pytest.raises(Diagnostic) as info:
        load_program("p.zt", text=text, **kwargs)
    return info.value


@pytest.mark.parametrize("word", ["true", "false", "None", "fn", "return", "const", "inf", "pi"])
def test_reserved_word_as_a_parameter_is_a_diagnostic_at_the_name(word):
    text = f"fn main(x: f32[4], {word}: f32[4]) -> f32[4] {{ return x }}"
    err = diagnose(text)
    assert err.message == f"'{word}' is a reserved word and cannot name a parameter"
    assert (err.span.line, err.span.col) == (1, text.index(word, 10) + 1)


def test_reserved_word_as_a_variable_is_a_diagnostic_at_the_name():
    err = diagnose("fn main(x: f32[4]) -> f32[4] {\n    inf = x\n    return inf\n}")
    assert "'inf' is a reserved word and cannot name a variable" in err.message
    assert (err.span.line, err.span.col) == (2, 5)


def test_dim_expression_is_inferred_from_the_input_shape():
    fn = load_program("p.zt", text="fn main(x: f32[2 * N], y: f32[N + 1, M - 2]) -> f32[N] "
                                   "{ return sum(reshape(x, [2, N]), axis=0) }",
                      input_shapes={"x": (6,), "y": (4, 5)})
    assert fn.params[0].type.shape == (6,) and fn.params[1].type.shape == (4, 5)
    assert fn.outputs[0].type.shape == (3,)
    x = np.arange(6, dtype=np.float32)
    (got,) = zhenwu.reference("fn main(x: f32[2 * N]) -> f32[N] "
                              "{ return sum(reshape(x, [2, N]), axis=0) }", x=x)
    np.testing.assert_array_equal(got, x.reshape(2, 3).sum(axis=0))


def test_dim_expression_no_size_can_satisfy_is_a_diagnostic_at_the_dim():
    text = "fn main(x: f32[2 * N]) -> f32[2 * N] { return x }"
    with pytest.raises(InputError) as info:
        load_program("p.zt", text=text, input_shapes={"x": (7,)})
    assert "input 'x' has 7 where its type says '2 * N'" in info.value.message
    assert info.value.span.col == text.index("2 * N") + 1


def test_dim_expression_that_cannot_be_inverted_asks_for_shape():
    err = diagnose("fn main(x: f32[N // 2]) -> f32[N // 2] { return x }",
                   input_shapes={"x": (3,)})
    assert "symbolic dim 'N' is not bound" in err.message


def test_unclosed_paren_points_at_the_open_paren_too():
    text = "fn main(x: f32[4]) -> f32[4] {\n    y = relu(x\n    return y\n}\n"
    err = diagnose(text)
    assert (err.span.line, err.span.col) == (3, 5)  # where the parser gave up
    assert err.notes and err.notes[0].startswith("p.zt:2:13: the '(' opened here is not closed")
    assert "    y = relu(x\n            ^" in err.format()


def test_too_deep_nesting_points_at_the_expression():
    text = ("fn main(x: f32[4]) -> f32[4] {\n    y = x\n    z = " + "relu(" * 3000 + "x"
            + ")" * 3000 + "\n    return z\n}\n")
    err = diagnose(text)
    assert "nested too deeply" in err.message
    assert (err.span.line, err.span.col) == (3, 9)


def test_non_utf8_is_a_diagnostic_at_line_and_column(tmp_path):
    path = tmp_path / "p.zt"
    path.write_bytes(b"fn main(x: f32[4]) -> f32[4] {\n    # caf\xe9\n    return x\n}\n")
    with pytest.raises(Diagnostic) as info:
        load_program(str(path))
    assert "not UTF-8" in info.value.message
    assert (info.value.span.line, info.value.span.col) == (2, 10)


def test_bad_binary_names_its_file(tmp_path, capsys):
    from zhenwu.compiler.cli import main

    path = tmp_path / "bad.bin"
    path.write_bytes(b"\x00" * 64)
    assert main(["run", str(path)]) == 1
    assert str(path) in capsys.readouterr().err
