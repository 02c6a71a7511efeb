"""Graph IR: text round-trips for every sample (before and after every pass), the IR parser's
errors, the verifier, and the networkx view."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.graph import OPS, PRIMITIVES, parse_function, print_function, verify_function
from zhenwu.compiler.graph.dtypes import promote, tolerance
from zhenwu.compiler.graph.ir import to_dot
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline
from zhenwu.compiler.reference import evaluate
from zhenwu.isa.errors import CompileError, Diagnostic

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = {
    "mlp": {"B": 3},
    "softmax": {"N": 3, "C": 5},
    "layernorm": {"B": 2, "S": 3},
    "attention": {"B": 2, "S": 6},
    "conv": {"B": 2},
    "qwen_block": {"S": 8},
}


def test_every_sample_is_covered():
    assert {p.stem for p in (ROOT / "samples").glob("*.zt")} >= set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_round_trips_and_lowers(name):
    fn = load_program(str(ROOT / f"samples/{name}.zt"), shapes=SAMPLES[name])
    text = print_function(fn)
    assert print_function(parse_function(text)) == text
    seen = []

    def check(graph_pass, fn_after, seconds):
        after = print_function(fn_after)
        assert print_function(parse_function(after)) == after
        seen.append(graph_pass.name)

    lowered = run_pipeline(fn, default_graph_pipeline(), callback=check)
    assert seen == ["canonicalize", "constant-fold", "decompose", "split-int-matmul",
                    "canonicalize", "hoist-scales", "constant-fold", "cse", "dce"]
    assert {op.kind for op in lowered.ops} <= set(PRIMITIVES)
    verify_function(lowered, primitives_only=True)
    rng = np.random.default_rng(0)
    inputs = {p.name: (rng.standard_normal(p.type.shape) * 0.5).astype(np.float32)
              for p in fn.params}
    for want, got, value in zip(evaluate(fn, inputs), evaluate(lowered, inputs), fn.outputs):
        want, got = want.astype(np.float64), got.astype(np.float64)
        scale = max(np.abs(want).max(), 1e-30)
        assert np.abs(want - got).max() / scale <= tolerance(value.type.dtype)


def test_spans_and_origins_survive_the_text_form():
    fn = load_program(str(ROOT / "samples/mlp.zt"), shapes={"B": 2})
    parsed = parse_function(print_function(fn))
    for a, b in zip(fn.ops, parsed.ops):
        assert (a.id, a.kind, a.origin, a.attrs) == (b.id, b.kind, b.origin, b.attrs)
        assert (a.span.file, a.span.line, a.span.col, a.span.end_line, a.span.end_col) == (
            b.span.file, b.span.line, b.span.col, b.span.end_line, b.span.end_col)
    assert any(op.origin == "softmax#1" for op in parsed.ops)


def test_attribute_values_round_trip():
    text = ('func @f(%x: f32[2,3]) -> (f32[2,3], i32[2,3], bool[]) {\n'
            '  %1 = constant {value=-inf, dtype="f32", shape=[2, 3]} : f32[2,3]\n'
            '  %2 = maximum %x, %1 : f32[2,3] origin("clip#1") loc("a b.zt":1:2-3:4)\n'
            '  %3 = constant {value=-7, dtype="i32", shape=[2, 3]} : i32[2,3]\n'
            '  %4 = constant {value=true, dtype="bool", shape=[]} : bool[]\n'
            '  %5 = pad %2 {pads=[[0, 0], [0, 0]], value=1e-05} : f32[2,3]\n'
            '  return %5, %3, %4\n}\n')
    fn = parse_function(text)
    assert print_function(fn) == text
    assert fn.ops[0].attrs["value"] == float("-inf")
    assert fn.ops[1].span.file == "a b.zt" and fn.ops[1].span.end_col == 4


@pytest.mark.parametrize("text, message", [
    ("func @f(%x: f32[2]) -> (f32[2]) {\n  %1 = exp %y : f32[2]\n  return %1\n}\n",
     "<ir>:2:12: error: use of undefined value %y"),
    ("func @f(%x: f32[2]) -> (f32[2]) {\n  %1 = exp %x : f32[3]\n  return %1\n}\n",
     "<ir>:2:17: error: %1: declared type f32[3] but exp gives f32[2]"),
    ("func @f(%x: f32[2]) -> (f32[2]) {\n  %1 = frob %x : f32[2]\n  return %1\n}\n",
     "<ir>:2:8: error: unknown op kind 'frob'"),
    ("func @f(%x: f32[2]) -> (f32[2]) {\n  %1 = add %x : f32[2]\n  return %1\n}\n",
     "<ir>:2:8: error: add takes 2 operands, got 1"),
    ("func @f(%x: f32[2]) -> (f32[2]) {\n  %1 = exp %x : f32[2]\n",
     "<ir>:3:1: error: expected an op '%N = kind ...' or 'return' in Graph IR, found end of input"),
    ("func @f(%x: f32[2]) -> (f32[2]) {\n  return %x\n}\n extra",
     "<ir>:4:2: error: expected end of input in Graph IR, found 'extra'"),
    ("func @f(%x: f64[2]) -> (f32[2]) {\n  return %x\n}\n",
     "<ir>:1:13: error: expected a dtype (f32, bf16, f16, fp8, i32, i8, bool) in Graph IR"),
])
def test_ir_parse_errors(text, message):
    with pytest.raises(Diagnostic) as info:
        parse_function(text)
    assert info.value.format().startswith(message), info.value.format()


def test_verifier_catches_broken_ir():
    fn = load_program("t.zt", text="fn main(x: f32[2, 3]) { return exp(x) + 1.0 }")
    verify_function(fn)
    broken = load_program("t.zt", text="fn main(x: f32[2, 3]) { return exp(x) + 1.0 }")
    broken.ops.reverse()
    with pytest.raises(CompileError, match="before it is defined"):
        verify_function(broken, after="test")
    retyped = load_program("t.zt", text="fn main(x: f32[2, 3]) { return exp(x) }")
    retyped.ops[0].attrs["bogus"] = 1
    with pytest.raises(CompileError, match="unknown attribute bogus"):
        verify_function(retyped)
    conv = load_program("t.zt", text="fn main(x: f32[1,1,4,4]) { return maxpool2d(x, 2) }")
    with pytest.raises(CompileError, match="not a primitive"):
        verify_function(conv, primitives_only=True)


def test_to_networkx_and_dot():
    fn = load_program("t.zt", text="fn main(x: f32[2, 3]) { return x * x + 1.0, exp(x) }")
    graph = fn.to_networkx()
    order = list(nx.topological_sort(graph))
    assert order.index(fn.params[0].id) == 0
    mul = next(op for op in fn.ops if op.kind == "mul")
    assert graph.number_of_edges(fn.params[0].id, mul.id) == 2
    assert graph.nodes[fn.outputs[1].id]["output"] == 1
    dot = to_dot(fn)
    assert dot.startswith('digraph "main" {') and "-> out1" in dot


PRIMITIVE_NAMES = [
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "sigmoid", "relu",
    "gelu", "erf", "sin", "cos", "floor", "ceil", "sign", "cast", "add", "sub", "mul", "div",
    "pow", "maximum", "minimum", "lt", "le", "gt", "ge", "eq", "ne", "where", "reduce_sum",
    "reduce_max", "reduce_min", "reduce_prod", "argmax", "matmul", "reshape", "transpose",
    "broadcast_to", "slice", "concat", "pad", "constant", "iota", "shard",
]


def test_registry_is_complete_and_consistent():
    expected = set(PRIMITIVE_NAMES)
    assert set(PRIMITIVES) == expected
    assert set(OPS) - expected == {"conv2d", "maxpool2d", "avgpool2d", "einsum", "gather"}
    fusion = {op.fusion for op in OPS.values()}
    assert fusion <= {"elementwise", "broadcast", "injective", "reduce", "contraction", "opaque"}


def test_costs():
    fn = load_program("t.zt", text="fn main(a: bf16[4, 8], b: bf16[8, 16]) { return a @ b }")
    (op,) = fn.ops
    types = tuple(v.type for v in op.inputs)
    assert OPS["matmul"].flops(types, op.result.type, op.attrs) == 2 * 4 * 8 * 16
    assert OPS["matmul"].bytes(types, op.result.type) == (4 * 8 + 8 * 16 + 4 * 16) * 2


def test_promotion_and_tolerance_tables():
    assert promote("bf16", "f32") == "f32" and promote("bf16", "f16") == "f32"
    assert promote("i8", "bf16") == "bf16" and promote("bool", "i8") == "i8"
    assert promote("fp8", "f16") == "f16" and promote("i8", "i32") == "i32"
    assert tolerance("f32") == 1e-4 and tolerance("bf16") == 2e-2
    assert tolerance("f16") == 1e-2 and tolerance("fp8") == 1.5e-1
    assert tolerance("i32") == 0.0 and tolerance("bool") == 0.0
