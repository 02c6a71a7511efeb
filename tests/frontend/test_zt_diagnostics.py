"""Every user mistake is a diagnostic `FILE:LINE:COL: error: MESSAGE` with the source line and
a caret under the span; these tests pin the exact text."""

from __future__ import annotations

import pytest
from frontend_helpers import diag


def test_broadcast_mismatch_names_both_shapes_and_the_dim():
    src = "fn main(x: f32[64, 256], b: f32[10]) {\n    return x + b\n}\n"
    assert diag(src) == (
        "t.zt:2:12: error: cannot add f32[64,256] and f32[10]: dims 1 differ (256 vs 10)\n"
        "    return x + b\n"
        "           ^^^^^")


@pytest.mark.parametrize("src, want", [
    # syntax
    ("fn main(x: f32[4]) {\n  y = x +\n}\n",
     "t.zt:3:1: error: unexpected '}'; expected an expression"),
    ("fn main(x: f32[4]) { return x $ 2 }", "t.zt:1:31: error: unexpected character '$'"),
    ("fn main(x: f32[4]) { return x", "t.zt:1:30: error: unexpected end of file; expected "),
    ("fn main(x: f32[4] { return x }", "t.zt:1:19: error: unexpected '{'; expected "),
    ("fn main(x: f32[4]) { return 'a' }", ("t.zt:1:29: error: unexpected character \"'\"; "
     "strings use double quotes")),
    # names
    ("fn main(x: f32[4]) { return sofmax(x) }",
     "t.zt:1:29: error: unknown function 'sofmax'; did you mean 'softmax'?"),
    ("fn main(xs: f32[4]) { return x }",
     "t.zt:1:30: error: unknown name 'x'; did you mean 'xs'?"),
    ("fn main(x: f32[4]) { return cast(x, f64) }",
     "t.zt:1:37: error: unknown name 'f64'; did you mean 'f16'?"),
    ("fn main(x: f32[4]) { return exp }",
     "t.zt:1:29: error: 'exp' is a function; call it as exp(...)"),
    # arity and keywords
    ("fn main(x: f32[4]) { return softmax(x, axs=0) }",
     "t.zt:1:40: error: softmax() has no parameter 'axs'; did you mean 'axis'?"),
    ("fn main(x: f32[4]) { return exp(x, x) }",
     "t.zt:1:36: error: exp() takes 1 positional argument but 2 were given"),
    ("fn main(x: f32[4]) { return where(x > 0, x) }",
     "t.zt:1:29: error: where() is missing argument 'b'"),
    ("fn main(x: f32[4]) { return sum(x, axis=0, axis=0) }",
     "t.zt:1:44: error: keyword argument 'axis' is given twice"),
    # shapes
    ("fn main(x: f32[4, 5], w: f32[6, 3]) { return x @ w }",
     ("t.zt:1:46: error: cannot multiply (@) f32[4,5] and f32[6,3]: contracted dims differ "
     "(5 vs 6)")),
    ("fn main(x: f32[4, 5]) { return reshape(x, [3, 7]) }",
     "t.zt:1:32: error: cannot reshape f32[4,5] (20 elements) to [3, 7] (21 elements)"),
    ("fn main(x: f32[4, 5]) { return reshape(x, [-1, -1]) }",
     "t.zt:1:43: error: reshape(): only one dim may be -1, got [-1, -1]"),
    ("fn main(x: f32[4, 5]) { return transpose(x, [0, 0]) }",
     "t.zt:1:45: error: transpose(): [0, 0] is not a permutation of the 2 axes of f32[4,5]"),
    ("fn main(x: f32[4, 5]) { return sum(x, axis=2) }",
     "t.zt:1:39: error: axis 2 is out of range for f32[4,5] (rank 2)"),
    ("fn main(x: f32[4, 5]) { return softmax(x, axis=-3) }",
     "t.zt:1:32: error: softmax: axis -3 is out of range for f32[4,5] (rank 2)"),
    ("fn main(x: f32[4, 5]) { return x[4] }",
     "t.zt:1:34: error: index 4 is out of bounds for axis 0 of f32[4,5] (size 4)"),
    ("fn main(x: f32[4, 5]) { return x[:, 3:1] }",
     "t.zt:1:37: error: slice selects no elements of axis 1 of f32[4,5]"),
    ("fn main(x: f32[4, 5]) { return concat([x, x[:, :2]], axis=0) }",
     "t.zt:1:32: error: cannot concatenate f32[4,5] and f32[4,2]: dims 1 differ (5 vs 2)"),
    ("fn main(x: f32[4, 5]) { a, b = split(x, 2, axis=1); return a }",
     "t.zt:1:41: error: split(): axis 1 of f32[4,5] (size 5) does not divide into 2 equal parts"),
    ("fn main(x: f32[1, 3, 8, 8], w: f32[4, 2, 3, 3]) { return conv2d(x, w) }",
     ("t.zt:1:58: error: conv2d: f32[1,3,8,8] with groups=1 needs w with 3 input channels per "
     "group, got f32[4,2,3,3]: dims 1 differ (2 vs 3)")),
    # dtypes
    ("fn main(x: f32[4]) { return where(x, x, 0.0) }",
     "t.zt:1:35: error: where() needs a bool condition, got f32[4]"),
    ("fn main(x: i32[4]) -> f32[4] { return x }",
     "t.zt:1:23: error: 'main' returns (i32[4]) but declares (f32[4])"),
    ("fn main(x: bool[4]) { return -x }", "t.zt:1:30: error: cannot negate bool[4]"),
    # symbolic dims and calls
    ("fn main(x: f32[B, 5]) { return x }",
     ("t.zt:1:16: error: symbolic dim 'B' is not bound; pass --shape B=<size> or an input "
      "file")),
    (("fn f(a: f32[N], b: f32[N]) { return a + b }\n"
      "fn main(x: f32[4], y: f32[5]) { return f(x, y) }"),
     "t.zt:2:45: error: symbolic dim 'N' of 'f' is bound to 4 and to 5 (argument 'b' is f32[5])"),
    ("fn f(a: bf16[N]) { return a }\nfn main(x: f32[4]) { return f(x) }",
     "t.zt:2:31: error: argument 'a' of 'f' is f32[4], but the parameter is bf16: dtypes differ"),
    ("fn f(a) { return f(a) }\nfn main(x: f32[4]) { return f(x) }",
     "t.zt:1:18: error: recursive call of 'f' (functions are inlined, so they cannot recurse)"),
    ("fn main(x) { return x }",
     "t.zt:1:9: error: parameter 'x' of the entry function 'main' needs a type"),
    ("fn main(x: f32[4]) { y = x }", "t.zt:1:4: error: function 'main' has no return statement"),
    ("fn main(x: f32[4]) { a, b = x; return a }",
     "t.zt:1:29: error: cannot unpack f32[4] into 2 names"),
    ("fn main(x: f32[4]) { return x }\nfn main(y: f32[4]) { return y }",
     "t.zt:2:4: error: function 'main' is defined twice"),
    ("fn a(x: f32[4]) { return x }\nfn b(y: f32[4]) { return y }",
     "error: no function 'main' and several functions (a, b); pass --entry NAME"),
    ("fn main(x: f32[4]) { return einsum(\"ij->i\", x) }",
     "t.zt:1:36: error: einsum: subscripts 'ij' need an operand of rank 2, got rank 1"),
    ("fn main(x: f32[4]) { return x[x] }",
     ("t.zt:1:31: error: indexing with a tensor is not supported; indices must be integers or "
     "slices")),
    ("fn main(x: f32[0]) { return x }", "t.zt:1:16: error: a dim must be positive, got 0"),
    ("fn main(x: f32[2, 3], g: f32[5]) { return layernorm(x, g, 0.0) }",
     "t.zt:1:43: error: layernorm: cannot multiply f32[2,3] and f32[5]: dims 1 differ (3 vs 5)"),
    ("fn main(x: f32[2]) { return x; y = 1 }",
     "t.zt:1:32: error: statement after 'return' is never run"),
    ("fn main(x: i8[4]) { return x + 300 }", "t.zt:1:32: error: 300 is not a value of i8"),
    ("fn main(x: f32[10 ** 30]) { return x }", "t.zt:1:16: error: a dim must be at most 2**62"),
    ("fn main(x: f32[2]) { return x * 10 ** 10 ** 10 }",
     "t.zt:1:33: error: 10 ** 10000000000 is too large"),
    ("fn main(x: f32[2]) { return arange(0.0, inf) }",
     "t.zt:1:29: error: arange(): the bounds must be finite"),
    ("fn main(x: f32[2]) { return arange(10 ** 400) }",
     "t.zt:1:29: error: a dim must be at most 2**62"),
    ("const N = 3.5\nfn main(x: f32[N]) { return x }",
     "t.zt:2:16: error: a dim must be an integer, got the number 3.5"),
])
def test_diagnostic(src, want):
    assert diag(src).startswith(want), diag(src)


def test_caret_under_the_span_with_tabs():
    text = diag("fn main(x: f32[4]) {\n\treturn x @ x @ 1\n}\n")
    lines = text.splitlines()
    assert lines[1] == "\treturn x @ x @ 1"
    assert lines[2].startswith("\t")


def test_shape_option_naming_an_unknown_symbol():
    assert diag("fn main(x: f32[B]) { return x }", B=2, C=3) == (
        "error: --shape C=3: 'C' is not a symbolic dim of 'main' (symbolic dims: B)")


def test_input_shape_conflicts():
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.errors import InputError

    src = "fn main(x: f32[B, 4], y: f32[B]) { return x }"
    with pytest.raises(InputError) as info:
        load_program("t.zt", text=src, input_shapes={"x": (2, 4), "y": (3,)})
    assert info.value.message == "symbolic dim 'B' is 2 by input 'x' but 3 by input 'y'"
    with pytest.raises(InputError) as info:
        load_program("t.zt", text=src, input_shapes={"x": (2, 5)})
    assert info.value.message == ("input 'x' has shape [2, 5], but parameter 'x' is f32[2,4]: "
                                  "dims 1 differ (5 vs 4)")
    with pytest.raises(InputError) as info:
        load_program("t.zt", text=src, input_shapes={"z": (2,)})
    assert info.value.message.startswith("unknown input 'z'")
