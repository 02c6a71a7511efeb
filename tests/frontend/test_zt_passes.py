"""Each pass on a small input IR against the expected IR text, plus the pipeline machinery."""

from __future__ import annotations

import textwrap

import pytest
from zhenwu.compiler.graph import parse_function, print_function
from zhenwu.compiler.passes import (
    PASSES,
    default_graph_pipeline,
    get_pass,
    parse_pipeline,
    run_pipeline,
)
from zhenwu.isa.errors import UsageError


def apply(pass_name: str, text: str) -> str:
    fn = parse_function(textwrap.dedent(text))
    return print_function(run_pipeline(fn, [get_pass(pass_name)]))


def same(text: str) -> str:
    return textwrap.dedent(text)


def test_canonicalize():
    got = apply("canonicalize", """\
        func @f(%x: f32[2,3]) -> (f32[3,2], f32[2,3]) {
          %1 = reshape %x {shape=[2, 3]} : f32[2,3]
          %2 = transpose %1 {perm=[1, 0]} : f32[3,2]
          %3 = transpose %2 {perm=[1, 0]} : f32[2,3]
          %4 = constant {value=0.0, dtype="f32", shape=[]} : f32[]
          %5 = add %3, %4 : f32[2,3]
          %6 = reshape %5 {shape=[6]} : f32[6]
          %7 = reshape %6 {shape=[3, 2]} : f32[3,2]
          %8 = constant {value=2.0, dtype="f32", shape=[]} : f32[]
          %9 = pow %x, %8 : f32[2,3]
          %10 = neg %9 : f32[2,3]
          %11 = neg %10 : f32[2,3]
          return %7, %11
        }
        """)
    # dead ops stay for dce; x ** 2 became x * x and --x disappeared
    assert got == same("""\
        func @f(%x: f32[2,3]) -> (f32[3,2], f32[2,3]) {
          %2 = transpose %x {perm=[1, 0]} : f32[3,2]
          %4 = constant {value=0.0, dtype="f32", shape=[]} : f32[]
          %6 = reshape %x {shape=[6]} : f32[6]
          %12 = reshape %x {shape=[3, 2]} : f32[3,2]
          %8 = constant {value=2.0, dtype="f32", shape=[]} : f32[]
          %13 = mul %x, %x : f32[2,3]
          %10 = neg %13 : f32[2,3]
          return %12, %13
        }
        """)


def test_canonicalize_cast_round_trips():
    text = """\
        func @f(%x: bf16[4], %y: f32[4]) -> (bf16[4], f32[4]) {
          %2 = cast %x {dtype="f32"} : f32[4]
          %3 = cast %2 {dtype="bf16"} : bf16[4]
          %4 = cast %y {dtype="bf16"} : bf16[4]
          %5 = cast %4 {dtype="f32"} : f32[4]
          return %3, %5
        }
        """
    assert apply("canonicalize", text) == same("""\
        func @f(%x: bf16[4], %y: f32[4]) -> (bf16[4], f32[4]) {
          %2 = cast %x {dtype="f32"} : f32[4]
          %4 = cast %y {dtype="bf16"} : bf16[4]
          %5 = cast %4 {dtype="f32"} : f32[4]
          return %x, %5
        }
        """)


def test_canonicalize_keeps_broadcasting_identities():
    text = """\
        func @f(%x: f32[3]) -> (f32[2,3]) {
          %1 = constant {value=0.0, dtype="f32", shape=[2, 3]} : f32[2,3]
          %2 = add %x, %1 : f32[2,3]
          return %2
        }
        """
    assert apply("canonicalize", text) == same(text)


def test_constant_fold():
    got = apply("constant-fold", """\
        func @f(%x: f32[4]) -> (f32[4], bf16[2,2], i32[]) {
          %1 = constant {value=2.0, dtype="f32", shape=[]} : f32[]
          %2 = constant {value=3.0, dtype="f32", shape=[]} : f32[]
          %3 = mul %1, %2 : f32[]
          %4 = sqrt %3 : f32[]
          %5 = add %x, %4 : f32[4]
          %6 = cast %1 {dtype="bf16"} : bf16[]
          %7 = broadcast_to %6 {shape=[2, 2]} : bf16[2,2]
          %8 = constant {value=5, dtype="i32", shape=[3, 2]} : i32[3,2]
          %9 = reduce_sum %8 {axes=[0, 1], keepdims=false} : i32[]
          return %5, %7, %9
        }
        """)
    assert got == same("""\
        func @f(%x: f32[4]) -> (f32[4], bf16[2,2], i32[]) {
          %1 = constant {value=2.0, dtype="f32", shape=[]} : f32[]
          %2 = constant {value=3.0, dtype="f32", shape=[]} : f32[]
          %10 = constant {value=6.0, dtype="f32", shape=[]} : f32[]
          %11 = constant {value=2.4494898319244385, dtype="f32", shape=[]} : f32[]
          %5 = add %x, %11 : f32[4]
          %12 = constant {value=2.0, dtype="bf16", shape=[]} : bf16[]
          %13 = constant {value=2.0, dtype="bf16", shape=[2, 2]} : bf16[2,2]
          %8 = constant {value=5, dtype="i32", shape=[3, 2]} : i32[3,2]
          %14 = constant {value=30, dtype="i32", shape=[]} : i32[]
          return %5, %13, %14
        }
        """)


def test_cse_and_dce():
    text = """\
        func @f(%x: f32[4]) -> (f32[4]) {
          %1 = exp %x : f32[4]
          %2 = exp %x : f32[4]
          %3 = add %1, %2 : f32[4]
          %4 = log %x : f32[4]
          %5 = reduce_sum %x {axes=[0], keepdims=true} : f32[1]
          %6 = reduce_sum %x {axes=[0], keepdims=false} : f32[]
          return %3
        }
        """
    commuted = """\
        func @f(%x: f32[4], %y: f32[4]) -> (f32[4]) {
          %2 = add %x, %y : f32[4]
          %3 = add %y, %x : f32[4]
          %4 = sub %x, %y : f32[4]
          %5 = sub %y, %x : f32[4]
          %6 = mul %2, %3 : f32[4]
          %7 = mul %4, %5 : f32[4]
          %8 = add %6, %7 : f32[4]
          return %8
        }
        """
    assert apply("cse", commuted) == same("""\
        func @f(%x: f32[4], %y: f32[4]) -> (f32[4]) {
          %2 = add %x, %y : f32[4]
          %4 = sub %x, %y : f32[4]
          %5 = sub %y, %x : f32[4]
          %6 = mul %2, %2 : f32[4]
          %7 = mul %4, %5 : f32[4]
          %8 = add %6, %7 : f32[4]
          return %8
        }
        """)
    assert apply("cse", text) == same("""\
        func @f(%x: f32[4]) -> (f32[4]) {
          %1 = exp %x : f32[4]
          %3 = add %1, %1 : f32[4]
          %4 = log %x : f32[4]
          %5 = reduce_sum %x {axes=[0], keepdims=true} : f32[1]
          %6 = reduce_sum %x {axes=[0], keepdims=false} : f32[]
          return %3
        }
        """)
    assert apply("dce", text) == same("""\
        func @f(%x: f32[4]) -> (f32[4]) {
          %1 = exp %x : f32[4]
          %2 = exp %x : f32[4]
          %3 = add %1, %2 : f32[4]
          return %3
        }
        """)


def test_decompose_einsum():
    got = apply("decompose", """\
        func @f(%q: f32[2,3,4], %k: f32[2,5,4]) -> (f32[2,3,5]) {
          %2 = einsum %q, %k {spec="bqd,bkd->bqk"} : f32[2,3,5] loc("t.zt":1:2-1:9)
          return %2
        }
        """)
    assert got == same("""\
        func @f(%q: f32[2,3,4], %k: f32[2,5,4]) -> (f32[2,3,5]) {
          %3 = transpose %k {perm=[0, 2, 1]} : f32[2,4,5] origin("einsum#1") loc("t.zt":1:2-1:9)
          %4 = matmul %q, %3 : f32[2,3,5] origin("einsum#1") loc("t.zt":1:2-1:9)
          return %4
        }
        """)


def test_decompose_maxpool():
    got = apply("decompose", """\
        func @f(%x: f32[1,1,4,4]) -> (f32[1,1,2,2]) {
          %1 = maxpool2d %x {kernel=[2, 1], strides=[2, 2], pads=[[0, 0], [0, 0]]} : f32[1,1,2,2]
          return %1
        }
        """)
    origin = ' origin("maxpool2d#1")'
    assert got.splitlines() == [
        "func @f(%x: f32[1,1,4,4]) -> (f32[1,1,2,2]) {",
        "  %2 = slice %x {starts=[0, 0, 0, 0], stops=[1, 1, 3, 3], steps=[1, 1, 2, 2]}"
        " : f32[1,1,2,2]" + origin,
        "  %3 = slice %x {starts=[0, 0, 1, 0], stops=[1, 1, 4, 3], steps=[1, 1, 2, 2]}"
        " : f32[1,1,2,2]" + origin,
        "  %4 = maximum %2, %3 : f32[1,1,2,2]" + origin,
        "  return %4",
        "}",
    ]


def test_pass_options():
    (decompose,) = parse_pipeline("decompose{kinds=einsum,maxpool2d}")
    assert decompose.kinds == ("einsum", "maxpool2d")
    text = """\
        func @f(%x: f32[1,1,4,4], %w: f32[1,1,1,1]) -> (f32[1,1,4,4], f32[1,1,2,2]) {
          %2 = conv2d %x, %w {strides=[1, 1], pads=[[0, 0], [0, 0]], dilation=[1, 1],
            groups=1} : f32[1,1,4,4]
          %3 = maxpool2d %x {kernel=[2, 2], strides=[2, 2], pads=[[0, 0], [0, 0]]}
            : f32[1,1,2,2]
          return %2, %3
        }
        """
    fn = run_pipeline(parse_function(textwrap.dedent(text)), [decompose])
    assert [op.kind for op in fn.ops].count("conv2d") == 1
    assert "maxpool2d" not in [op.kind for op in fn.ops]
    assert [p.name for p in parse_pipeline("default,cse")][-2:] == ["dce", "cse"]
    for bad, message in [("decompose{kinds}", "must be key=value"),
                         ("decompose{flavour=x}", "has no option 'flavour'"),
                         ("decompose{kinds=x", "must end with '}'")]:
        with pytest.raises(UsageError, match=message):
            parse_pipeline(bad)
    with pytest.raises(UsageError, match="no rule for x"):
        run_pipeline(parse_function(textwrap.dedent(text)), parse_pipeline("decompose{kinds=x}"))


def test_pass_registry_and_pipeline_options():
    assert {"canonicalize", "constant-fold", "cse", "dce", "decompose"} <= set(PASSES)
    assert [p.name for p in parse_pipeline("cse, dce")] == ["cse", "dce"]
    with pytest.raises(UsageError, match="did you mean 'cse'"):
        parse_pipeline("cse,csee")
    fn = parse_function(textwrap.dedent("""\
        func @f(%x: f32[4]) -> (f32[4]) {
          %1 = exp %x : f32[4]
          %2 = log %x : f32[4]
          return %1
        }
        """))
    calls = []
    out = run_pipeline(fn, default_graph_pipeline(), disabled=["dce"],
                       callback=lambda p, f, s: calls.append((p.name, len(f.ops))))
    assert "dce" not in [c[0] for c in calls] and len(out.ops) == 2
    passes = default_graph_pipeline()
    assert all(hash(p) == hash(type(p)()) for p in passes)  # frozen, hashable options


def test_hoist_scales_moves_operand_scales_onto_the_product():
    fn = parse_function(textwrap.dedent("""\
        func @f(%q: bf16[2,8,4], %k: bf16[2,8,4]) -> (bf16[2,8,8]) {
          %2 = constant {value=0.5, dtype="bf16", shape=[]} : bf16[]
          %3 = mul %k, %2 : bf16[2,8,4]
          %4 = transpose %3 {perm=[0, 2, 1]} : bf16[2,4,8]
          %5 = matmul %q, %4 : bf16[2,8,8]
          return %5
        }
        """))
    got = print_function(run_pipeline(fn, [get_pass("hoist-scales"), get_pass("dce")]))
    assert got == same("""\
        func @f(%q: bf16[2,8,4], %k: bf16[2,8,4]) -> (bf16[2,8,8]) {
          %2 = constant {value=0.5, dtype="bf16", shape=[]} : bf16[]
          %6 = transpose %k {perm=[0, 2, 1]} : bf16[2,4,8]
          %8 = matmul %q, %6 : bf16[2,8,8]
          %9 = mul %8, %2 : bf16[2,8,8]
          return %9
        }
        """)


@pytest.mark.parametrize("why, text", [
    ("integers wrap", """\
        func @f(%a: i32[4,4], %b: i32[4,4]) -> (i32[4,4]) {
          %2 = constant {value=3, dtype="i32", shape=[]} : i32[]
          %3 = mul %a, %2 : i32[4,4]
          %4 = matmul %3, %b : i32[4,4]
          return %4
        }
        """),
    ("fp8 saturates", """\
        func @f(%a: fp8[4,4], %b: fp8[4,4]) -> (fp8[4,4]) {
          %2 = constant {value=3.0, dtype="fp8", shape=[]} : fp8[]
          %3 = mul %a, %2 : fp8[4,4]
          %4 = matmul %3, %b : fp8[4,4]
          return %4
        }
        """),
    ("the scaled value has another user", """\
        func @f(%a: f32[4,4], %b: f32[4,4]) -> (f32[4,4], f32[4,4]) {
          %2 = constant {value=3.0, dtype="f32", shape=[]} : f32[]
          %3 = mul %a, %2 : f32[4,4]
          %4 = matmul %3, %b : f32[4,4]
          return %4, %3
        }
        """),
    ("the scale is a tensor", """\
        func @f(%a: f32[4,4], %b: f32[4,4], %s: f32[4]) -> (f32[4,4]) {
          %3 = mul %a, %s : f32[4,4]
          %4 = matmul %3, %b : f32[4,4]
          return %4
        }
        """),
])
def test_hoist_scales_refuses(why, text):
    assert apply("hoist-scales", text) == same(text), why
