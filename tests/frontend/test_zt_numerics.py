"""Builtins against numpy written independently of the registry's references."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from frontend_helpers import compile_zt, run_zt
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline
from zhenwu.compiler.reference import evaluate


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def both(src, inputs, **shapes):
    """Outputs of the checked function and of the fully lowered one (must agree)."""
    fn = compile_zt(src, **shapes)
    lowered = run_pipeline(fn, default_graph_pipeline())
    return evaluate(fn, inputs), evaluate(lowered, inputs)


def test_softmax_matches_formula(rng):
    x = f32(rng, 3, 7)
    (out,) = run_zt("fn main(x: f32[N, C]) { return softmax(x, axis=-1) }", {"x": x})
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out, e / e.sum(axis=1, keepdims=True), rtol=1e-6)


def test_softmax_axis0_and_log_softmax(rng):
    x = f32(rng, 4, 5)
    src = "fn main(x: f32[4, 5]) { return softmax(x, axis=0), log_softmax(x) }"
    sm, lsm = run_zt(src, {"x": x})
    e = np.exp(x - x.max(axis=0))
    np.testing.assert_allclose(sm, e / e.sum(axis=0), rtol=1e-6)
    want = x - np.log(np.sum(np.exp(x), axis=1, keepdims=True))
    np.testing.assert_allclose(lsm, want, rtol=1e-5, atol=1e-6)


def test_layernorm_and_rmsnorm(rng):
    x, g, b = f32(rng, 2, 3, 8), f32(rng, 8), f32(rng, 8)
    src = ("fn main(x: f32[2, 3, 8], g: f32[8], b: f32[8]) {\n"
           "  return layernorm(x, g, b), rmsnorm(x, g, eps=1e-6)\n}")
    ln, rms = run_zt(src, {"x": x, "g": g, "b": b})
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    np.testing.assert_allclose(ln, (x - mu) / np.sqrt(var + 1e-5) * g + b, rtol=1e-4, atol=1e-5)
    want = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * g
    np.testing.assert_allclose(rms, want, rtol=1e-4, atol=1e-5)


def test_activations(rng):
    x = f32(rng, 16)
    src = ("fn main(x: f32[16]) { return gelu(x), gelu(x, approximate=false), silu(x),"
           " sigmoid(x), relu(x), tanh(x) }")
    ga, ge, si, sg, re, th = run_zt(src, {"x": x})
    xd = x.astype(np.float64)
    tanh_form = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))
    erf_form = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xd])
    np.testing.assert_allclose(ga, tanh_form, rtol=1e-5, atol=1e-6)
    # note: the erf form of gelu is x/2 (1 + erf(x / sqrt 2))
    np.testing.assert_allclose(ge, erf_form, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(si, xd / (1 + np.exp(-xd)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sg, 1 / (1 + np.exp(-xd)), rtol=1e-5)
    np.testing.assert_array_equal(re, np.maximum(x, 0))
    np.testing.assert_allclose(th, np.tanh(xd), rtol=1e-5, atol=1e-7)


def test_unary_math(rng):
    x = np.abs(f32(rng, 10)) + 0.1
    src = ("fn main(x: f32[10]) { return exp(x), log(x), sqrt(x), rsqrt(x), reciprocal(x), "
           "sin(x), cos(x), floor(x * 3), ceil(x * 3), sign(x - 1), abs(-x), neg(x), "
           "erf(x), clip(x, 0.5, 1.0) }")
    outs = run_zt(src, {"x": x})
    xd = x.astype(np.float64)
    wants = [np.exp(xd), np.log(xd), np.sqrt(xd), 1 / np.sqrt(xd), 1 / xd, np.sin(xd),
             np.cos(xd), np.floor(x * 3), np.ceil(x * 3), np.sign(x - 1), x, -x,
             [math.erf(v) for v in xd], np.clip(x, 0.5, 1.0)]
    for got, want in zip(outs, wants):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_broadcasting_and_promotion(rng):
    a, b = f32(rng, 4, 1, 3), f32(rng, 5, 1)
    fn = compile_zt("fn main(a: bf16[4, 1, 3], b: f32[5, 1]) { return a * b, a + 1.5 }")
    assert [str(v.type) for v in fn.outputs] == ["f32[4,5,3]", "bf16[4,1,3]"]
    prod, plus = evaluate(fn, {"a": a, "b": b})
    a16 = a.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_allclose(prod, a16 * b, rtol=1e-6)
    assert plus.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(plus.astype(np.float32), a16 + 1.5, rtol=1e-2)


@pytest.mark.parametrize("src, want", [
    ("fn main(a: i32[2], b: f32[2]) { return a + b }", "f32[2]"),
    ("fn main(a: i8[2], b: i32[2]) { return a * b }", "i32[2]"),
    ("fn main(a: bf16[2], b: f16[2]) { return a - b }", "f32[2]"),
    ("fn main(a: fp8[2], b: bf16[2]) { return a + b }", "bf16[2]"),
    ("fn main(a: i32[2]) { return a + 1.5 }", "f32[2]"),
    ("fn main(a: i32[2]) { return a / 2 }", "f32[2]"),
    ("fn main(a: i32[2]) { return a // 2 }", "i32[2]"),
    ("fn main(a: bool[2]) { return a + 1 }", "i32[2]"),
    ("fn main(a: f16[2]) { return a < 1 }", "bool[2]"),
    ("fn main(a: i8[2]) { return exp(a) }", "f32[2]"),
    ("fn main(a: bool[3]) { return sum(a) }", "i32[]"),
    ("fn main(a: f32[2, 3]) { return argmax(a, axis=1) }", "i32[2]"),
])
def test_result_types(src, want):
    assert str(compile_zt(src).outputs[0].type) == want


def test_integer_arithmetic_is_exact():
    a = np.array([7, -7, 5, 0], dtype=np.int32)
    src = "fn main(a: i32[4]) { return a // 2, a * a - 3, a / 2, maximum(a, 1) }"
    fd, sq, td, mx = run_zt(src, {"a": a})
    np.testing.assert_array_equal(fd, a // 2)
    np.testing.assert_array_equal(sq, a * a - 3)
    np.testing.assert_allclose(td, a / 2)
    np.testing.assert_array_equal(mx, np.maximum(a, 1))


def test_matmul_bf16_accumulates_in_f32(rng):
    a, b = f32(rng, 3, 64), f32(rng, 64, 5)
    (out,) = run_zt("fn main(a: bf16[3, 64], b: bf16[64, 5]) { return a @ b }", {"a": a, "b": b})
    a16 = a.astype(ml_dtypes.bfloat16).astype(np.float64)
    b16 = b.astype(ml_dtypes.bfloat16).astype(np.float64)
    want = (a16 @ b16).astype(np.float32).astype(ml_dtypes.bfloat16)
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out.astype(np.float32), want.astype(np.float32))


def test_matmul_vectors_and_batches(rng):
    a, b, v = f32(rng, 2, 3, 4), f32(rng, 4, 5), f32(rng, 4)
    src = ("fn main(a: f32[2, 3, 4], b: f32[4, 5], v: f32[4]) {\n"
           "  return a @ b, a @ v, v @ b, v @ v, matmul(a, b) }")
    outs = run_zt(src, {"a": a, "b": b, "v": v})
    for got, want in zip(outs, [a @ b, a @ v, v @ b, v @ v, a @ b]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert got.shape == np.shape(want)


def test_reductions(rng):
    x = f32(rng, 3, 4, 5)
    src = ("fn main(x: f32[3, 4, 5]) { return sum(x), mean(x, axis=(0, 2)), "
           "max(x, axis=-1, keepdims=true), min(x, axis=1), prod(x, axis=0), "
           "argmax(x, axis=1), argmax(x) }")
    outs = run_zt(src, {"x": x})
    wants = [x.sum(), x.mean(axis=(0, 2)), x.max(-1, keepdims=True), x.min(1), x.prod(0),
             x.argmax(1), x.argmax()]
    for got, want in zip(outs, wants):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert got.shape == np.shape(want)


def test_slicing(rng):
    x = f32(rng, 6, 7, 8)
    src = ("fn main(x: f32[6, 7, 8]) { return x[1:5:2, -1, None, ::3], x[-2], x[:, 2:, :4],"
           " x[..., :4], x[1, ..., None, 2], x[...] }")
    a, b, c, d, e, f = run_zt(src, {"x": x})
    np.testing.assert_array_equal(a, x[1:5:2, -1, None, ::3])
    np.testing.assert_array_equal(b, x[-2])
    np.testing.assert_array_equal(c, x[:, 2:, :4])
    np.testing.assert_array_equal(d, x[..., :4])
    np.testing.assert_array_equal(e, x[1, ..., None, 2])
    np.testing.assert_array_equal(f, x)


def test_shape_builtins(rng):
    x = f32(rng, 2, 3, 4)
    src = ("fn main(x: f32[2, 3, 4]) {\n"
           "  a, b = split(x, 2, axis=0)\n"
           "  c, d, e = split(x, [1, 3], axis=2)\n"
           "  return reshape(x, [4, -1]), transpose(x), transpose(x, [1, 0, 2]),\n"
           "    expand_dims(x, -1), squeeze(a), broadcast_to(x[:, :1], [5, 2, 3, 4]),\n"
           "    concat([a, b, a], axis=0), d, pad(x, [[0, 1], [2, 0], [1, 1]], value=-1.0)\n"
           "}")
    outs = run_zt(src, {"x": x})
    wants = [x.reshape(4, -1), x.T, x.transpose(1, 0, 2), x[..., None], x[0],
             np.broadcast_to(x[:, :1], (5, 2, 3, 4)), np.concatenate([x[:1], x[1:], x[:1]]),
             x[:, :, 1:3], np.pad(x, [[0, 1], [2, 0], [1, 1]], constant_values=-1.0)]
    for got, want in zip(outs, wants):
        np.testing.assert_array_equal(got, want)


def test_creation_and_where():
    src = ("fn main(x: f32[3, 3]) {\n"
           "  m = arange(3)[:, None] >= arange(3)[None, :]\n"
           "  return where(m, x, -inf), zeros([2], i32), ones([2, 2]), full([2], 7),"
           " arange(1, 10, 3), arange(0.0, 1.0, 0.25), pi * 2\n}")
    x = np.arange(9, dtype=np.float32).reshape(3, 3)
    w, z, o, f, a, af, p = run_zt(src, {"x": x})
    np.testing.assert_array_equal(w, np.where(np.tril(np.ones((3, 3), bool)), x, -np.inf))
    assert z.dtype == np.int32 and z.tolist() == [0, 0]
    assert o.dtype == np.float32 and o.tolist() == [[1, 1], [1, 1]]
    assert f.dtype == np.int32 and f.tolist() == [7, 7]
    assert a.tolist() == [1, 4, 7]
    np.testing.assert_allclose(af, [0, 0.25, 0.5, 0.75])
    assert p.dtype == np.float32 and abs(float(p) - 2 * math.pi) < 1e-6


def test_cast_rounds_and_truncates():
    x = np.array([1.7, -1.7, 300.0, 1.001], dtype=np.float32)
    src = "fn main(x: f32[4]) { return cast(x, i32), cast(x, i8), cast(x, bf16), cast(x, fp8) }"
    i, i8, b, f8 = run_zt(src, {"x": x})
    assert i.tolist() == [1, -1, 300, 1]
    assert i8.tolist() == [1, -1, 127, 1]
    np.testing.assert_array_equal(b, x.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(f8.astype(np.float32),
                                  x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32))


def _conv_naive(x, w, stride, pad, dil, groups):
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                acc += (xp[b, g * cg + ci, i * stride + p * dil,
                                           j * stride + q * dil] * w[oc, ci, p, q])
                    out[b, oc, i, j] = acc
    return out


@pytest.mark.parametrize("stride, pad, dil, groups", [(1, 0, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1),
                                                      (2, 0, 1, 4)])
def test_conv2d_against_loops(rng, stride, pad, dil, groups):
    x, w = f32(rng, 2, 4, 7, 6), f32(rng, 4, 4 // groups, 3, 3)
    src = (f"fn main(x: f32[2, 4, 7, 6], w: f32[4, {4 // groups}, 3, 3]) {{ return "
           f"conv2d(x, w, stride={stride}, padding={pad}, dilation={dil}, groups={groups}) }}")
    ref, lowered = both(src, {"x": x, "w": w})
    want = _conv_naive(x, w, stride, pad, dil, groups)
    np.testing.assert_allclose(ref[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lowered[0], want, rtol=1e-4, atol=1e-4)


def _pool_naive(x, k, s, p, kind):
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, c, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - p, j * s - p
            win = x[:, :, max(r0, 0):min(r0 + k, h), max(c0, 0):min(c0 + k, w)]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return out


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_pools_against_loops(rng, k, s, p):
    x = f32(rng, 2, 3, 7, 8)
    src = (f"fn main(x: f32[2, 3, 7, 8]) {{ return maxpool2d(x, {k}, stride={s}, padding={p}),"
           f" avgpool2d(x, [{k}, {k}], stride={s}, padding={p}) }}")
    ref, lowered = both(src, {"x": x})
    for outs in (ref, lowered):
        np.testing.assert_allclose(outs[0], _pool_naive(x, k, s, p, "max"), rtol=1e-6)
        np.testing.assert_allclose(outs[1], _pool_naive(x, k, s, p, "avg"), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("spec, shapes", [
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ij->ji", [(3, 4)]),
    ("ijk->k", [(2, 3, 4)]),
    ("i,j->ij", [(3,), (4,)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)]),
    ("skgd,tkd->kgst", [(4, 2, 3, 5), (4, 2, 5)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
])
def test_einsum(rng, spec, shapes):
    arrays = [f32(rng, *s) for s in shapes]
    names = "abcdef"[:len(arrays)]
    params = ", ".join(f"{n}: f32[{', '.join(map(str, s))}]" for n, s in zip(names, shapes))
    src = f'fn main({params}) {{ return einsum("{spec}", {", ".join(names)}) }}'
    ref, lowered = both(src, dict(zip(names, arrays)))
    want = np.einsum(spec, *[a.astype(np.float64) for a in arrays])
    np.testing.assert_allclose(ref[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lowered[0], want, rtol=1e-4, atol=1e-4)


def test_attention_sample_matches_numpy(rng):
    from pathlib import Path

    from zhenwu.compiler.frontend import load_program

    root = Path(__file__).resolve().parents[2]
    fn = load_program(str(root / "samples/attention.zt"), shapes={"B": 2, "S": 5})
    inputs = {p.name: f32(rng, *p.type.shape) * 0.3 for p in fn.params}
    (out,) = evaluate(fn, inputs)
    bf = {k: v.astype(ml_dtypes.bfloat16).astype(np.float64) for k, v in inputs.items()}
    x = bf["x"]
    h, hd = 4, 16

    def heads(t):
        return t.reshape(2, 5, h, hd).transpose(0, 2, 1, 3)

    q, k, v = heads(x @ bf["wq"]), heads(x @ bf["wk"]), heads(x @ bf["wv"])
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    s = np.where(np.tril(np.ones((5, 5), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (p @ v).transpose(0, 2, 1, 3).reshape(2, 5, 64) @ bf["wo"]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_helper_functions_are_inlined_with_symbolic_dims(rng):
    src = ("const K = 2\n"
           "fn twice(t: f32[N, M]) -> f32[N, M * 1] { return t * K }\n"
           "fn main(x: f32[3, 4]) { a, b = pair(x); return twice(a) + b }\n"
           "fn pair(x) { return x, x[0] }\n")
    x = f32(rng, 3, 4)
    fn = compile_zt(src)
    assert [op.kind for op in fn.ops].count("mul") == 1
    (out,) = evaluate(fn, {"x": x})
    np.testing.assert_allclose(out, x * 2 + x[0], rtol=1e-6)


def test_origins_of_composites():
    fn = compile_zt("fn main(x: f32[2, 3]) { return softmax(x) + softmax(layernorm(x, 1.0, 0.0)) }")
    origins = {op.origin for op in fn.ops}
    assert {"softmax#1", "softmax#2", "layernorm#1"} <= origins
    fn = compile_zt("fn main(x: f32[2, 3]) { return mean(x, axis=1), rmsnorm(x, 1.0) }")
    assert [op.origin for op in fn.ops if op.kind == "reduce_sum"] == ["mean#1", "rmsnorm#1"]
    assert all(op.span is not None and op.span.file == "t.zt" for op in fn.ops)


def test_more_shapes_and_broadcasts(rng):
    x, y, s = f32(rng, 2, 1, 3, 4), f32(rng, 5, 4, 6), f32(rng)
    c = rng.random((3, 1)) < 0.5
    src = ("fn main(x: f32[2, 1, 3, 4], y: f32[5, 4, 6], s: f32[], c: bool[3, 1]) {\n"
           "  return x @ y, transpose(x, [-1, 0, 1, 2]), squeeze(x, (1,)),\n"
           "    expand_dims(s, (0, -1)), s[None], where(c, x[0, 0], s), c == c,\n"
           "    cast(c, i32) * -3, -cast(x, i8), pow(cast(y, i32) + 3, 2)\n}")
    outs = run_zt(src, {"x": x, "y": y, "s": s, "c": c})
    wants = [x @ y, x.transpose(3, 0, 1, 2), x[:, 0], s.reshape(1, 1), s[None],
             np.where(c, x[0, 0], s), np.ones_like(c), c.astype(np.int32) * -3,
             -np.trunc(x).astype(np.int8), (np.trunc(y).astype(np.int32) + 3) ** 2]
    for got, want in zip(outs, wants):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert got.shape == np.shape(want)


def test_names_rebind_and_consts_fold():
    src = ("const K = 3\nconst M = K * 2 + 1\n"
           "fn main(x: f32[M]) {\n  x = x * K\n  x = x + M // 2\n  return x, M * 1.5\n}")
    x = np.arange(7, dtype=np.float32)
    out, m = run_zt(src, {"x": x})
    np.testing.assert_array_equal(out, x * 3 + 3)
    assert m.dtype == np.float32 and float(m) == 10.5
