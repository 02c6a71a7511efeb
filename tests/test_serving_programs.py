"""The generated serving programs against an independent numpy decode step (functional runs
on the simulated chip, race-checked), and each program against the reference evaluator."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
from zhenwu.compiler.check import output_tolerance, relative_error
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.reference import evaluate
from zhenwu.compiler.serving import programs as gen
from zhenwu.compiler.serving.model import parse_model
from zhenwu.isa.machine import load_machine
from zhenwu.runtime import run_program

BF16 = ml_dtypes.bfloat16
DENSE = parse_model("""
name = "tiny-dense"
layers = 1
hidden = 64
heads = 4
kv_heads = 2
head_dim = 16
ffn = 96
vocab = 64
""")
MOE = parse_model("""
name = "tiny-moe"
layers = 1
hidden = 64
heads = 4
kv_heads = 2
head_dim = 16
vocab = 64
[moe]
experts = 8
top_k = 2
expert_ffn = 32
""")
SHARD = gen.Shard(heads=4, kv_heads=2, ffn=96, experts=8, expert_ffn=32, vocab=64)
MACHINE = load_machine("m890")


def bf16(a):
    return np.asarray(a, np.float32).astype(BF16)


def run(spec: gen.ProgramSpec, inputs: dict, persistent: bool = False) -> list[np.ndarray]:
    """Compile and run `spec` functionally; check it against the reference evaluator too.
    `persistent`: as one persistent kernel (how `zhenwu serve` launches decode programs)."""
    fn = load_program(f"<{spec.name}>", text=spec.source)
    compiled = compile_function(fn, MACHINE, CompileOptions(persistent=persistent))
    result = run_program(compiled.program, MACHINE, compiled.program_inputs(inputs))
    outs = compiled.graph_outputs(result)
    for got, want, value in zip(outs, evaluate(fn, inputs), fn.outputs):
        if got.dtype.kind in "iu":
            np.testing.assert_array_equal(got, want)
        else:
            assert relative_error(got, want) <= output_tolerance(fn, value), spec.name
    return [np.asarray(o, np.float32) if o.dtype.kind not in "iu" else o for o in outs]


def rmsnorm(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, hd, theta=1e6):
    inv = theta ** (-(np.arange(0, hd, 2, dtype=np.float32) / hd))
    ang = positions[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)
    return x * np.cos(ang)[:, None, :] + rot * np.sin(ang)[:, None, :]


def silu(x):
    return x / (1 + np.exp(-x))


def weights(rng, model, moe: bool) -> dict:
    d, hd, h, kv = model.hidden, model.head_dim, model.heads, model.kv_heads
    w = {
        "attn_norm": (1 + 0.1 * rng.standard_normal(d)).astype(np.float32),
        "wq": bf16(rng.standard_normal((d, h * hd)) / 8),
        "wk": bf16(rng.standard_normal((d, kv * hd)) / 8),
        "wv": bf16(rng.standard_normal((d, kv * hd)) / 8),
        "q_norm": (1 + 0.1 * rng.standard_normal(hd)).astype(np.float32),
        "k_norm": (1 + 0.1 * rng.standard_normal(hd)).astype(np.float32),
        "wo": bf16(rng.standard_normal((h * hd, d)) / 8),
        "mlp_norm": (1 + 0.1 * rng.standard_normal(d)).astype(np.float32),
    }
    if moe:
        e, fe = model.moe.experts, model.moe.expert_ffn
        w["w_router"] = rng.standard_normal((d, e)).astype(np.float32)
        w["ew_gate"] = bf16(rng.standard_normal((e, d, fe)) / 8)
        w["ew_up"] = bf16(rng.standard_normal((e, d, fe)) / 8)
        w["ew_down"] = bf16(rng.standard_normal((e, fe, d)) / 6)
        # the program's layout: [expert, out, in], gate and up side by side
        w["ew_gate_up"] = np.ascontiguousarray(
            np.concatenate([w["ew_gate"], w["ew_up"]], axis=-1).transpose(0, 2, 1))
        w["ew_down_t"] = np.ascontiguousarray(w["ew_down"].transpose(0, 2, 1))
    else:
        f = model.ffn
        w["w_gate"] = bf16(rng.standard_normal((d, f)) / 8)
        w["w_up"] = bf16(rng.standard_normal((d, f)) / 8)
        w["w_down"] = bf16(rng.standard_normal((f, d)) / 10)
    return w


def program_weights(w: dict) -> dict:
    """The programs' weights from the numpy step's: every matrix [out, in] (a checkpoint's
    layout), the fused projections' weights side by side."""
    p = {n: w[n] for n in ("attn_norm", "q_norm", "k_norm", "mlp_norm")}
    p["w_qkv"] = np.concatenate([w["wq"], w["wk"], w["wv"]], axis=-1).T
    p["wo"] = w["wo"].T
    if "w_router" in w:
        p["w_router"] = w["w_router"].T
    else:
        p["w_gate_up"] = np.concatenate([w["w_gate"], w["w_up"]], axis=-1).T
        p["w_down"] = w["w_down"].T
    return {n: np.ascontiguousarray(a) for n, a in p.items()}


def numpy_attention_step(model, w, x, k_old, v_old, pos):
    """One decode step's attention half in numpy (f32): the new token at `pos` attends to
    the `pos` cached positions and itself. Returns (h, k_new, v_new)."""
    f = lambda a: np.asarray(a, np.float32)
    b = x.shape[0]
    hd, h, kv = model.head_dim, model.heads, model.kv_heads
    a = rmsnorm(f(x), w["attn_norm"])
    q = rmsnorm((a @ f(w["wq"])).reshape(b, h, hd), w["q_norm"])
    k = rmsnorm((a @ f(w["wk"])).reshape(b, kv, hd), w["k_norm"])
    v = (a @ f(w["wv"])).reshape(b, kv, hd)
    positions = np.full(b, pos, np.float32)
    q, k = rope(q, positions, hd), rope(k, positions, hd)
    keys = np.concatenate([f(k_old), k[:, :, None]], axis=2)        # [b, kv, pos+1, hd]
    values = np.concatenate([f(v_old), v[:, :, None]], axis=2)
    qg = q.reshape(b, kv, h // kv, hd)
    s = np.einsum("bkgd,bktd->bkgt", qg, keys) / np.sqrt(hd)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    attn = np.einsum("bkgt,bktd->bkgd", p, values).reshape(b, h * hd)
    return f(x) + attn @ f(w["wo"]), k, v


def decode_inputs(rng, model, batch, pos):
    kv, hd = model.kv_heads, model.head_dim
    x = bf16(rng.standard_normal((batch, model.hidden)))
    k_old = bf16(rng.standard_normal((batch, kv, pos, hd)))
    v_old = bf16(rng.standard_normal((batch, kv, pos, hd)))
    return x, k_old, v_old


def attention_half(model, w, x, k_old, v_old, pos):
    """Run decode_qkv, append its K/V to the cache (the host's view of the HBM write), and
    return the inputs decode_attn takes."""
    qkv = gen.qkv(model, SHARD, gen.decode(x.shape[0], pos + 1), "bf16", "bf16")
    cos_t, sin_t = gen.rope_tables(model.head_dim, model.rope_theta, [pos] * x.shape[0])
    q, k_new, v_new = run(qkv, {"x": x, "cos_t": cos_t, "sin_t": sin_t,
                                **{n: program_weights(w)[n] for n in qkv.weights}})
    k_cache = np.concatenate([np.asarray(k_old, np.float32), k_new[:, :, None]], axis=2)
    v_cache = np.concatenate([np.asarray(v_old, np.float32), v_new[:, :, None]], axis=2)
    return q, k_new, v_new, bf16(k_cache), bf16(v_cache)


@pytest.mark.parametrize("persistent", [False, True])
def test_dense_decode_step_matches_numpy(persistent):
    rng = np.random.default_rng(0)
    batch, pos = 3, 37
    w = weights(rng, DENSE, moe=False)
    x, k_old, v_old = decode_inputs(rng, DENSE, batch, pos)
    q, k_new, v_new, k_cache, v_cache = attention_half(DENSE, w, x, k_old, v_old, pos)
    attn = gen.layer_attention(DENSE, SHARD, gen.decode(batch, pos + 1), "bf16", "bf16")
    (out,) = run(attn, {"x": x, "q": bf16(q), "k_cache": k_cache, "v_cache": v_cache,
                        **{n: program_weights(w)[n] for n in attn.weights}}, persistent)
    h, k_want, v_want = numpy_attention_step(DENSE, w, x, k_old, v_old, pos)
    f = lambda a: np.asarray(a, np.float32)
    m = rmsnorm(h, w["mlp_norm"])
    want = h + (silu(m @ f(w["w_gate"])) * (m @ f(w["w_up"]))) @ f(w["w_down"])
    assert relative_error(k_new, k_want) < 2e-2
    assert relative_error(v_new, v_want) < 2e-2
    assert relative_error(out, want) < 3e-2


@pytest.mark.parametrize("persistent", [False, True])
def test_moe_decode_step_matches_numpy(persistent):
    rng = np.random.default_rng(1)
    batch, pos, top_k = 4, 9, MOE.moe.top_k
    w = weights(rng, MOE, moe=True)
    x, k_old, v_old = decode_inputs(rng, MOE, batch, pos)
    q, _, _, k_cache, v_cache = attention_half(MOE, w, x, k_old, v_old, pos)
    attn = gen.layer_attention(MOE, SHARD, gen.decode(batch, pos + 1), "bf16", "bf16")
    h, m, dense_gates = run(attn, {"x": x, "q": bf16(q), "k_cache": k_cache,
                                   "v_cache": v_cache,
                                   **{n: program_weights(w)[n] for n in attn.weights}},
                            persistent)
    h_want, _, _ = numpy_attention_step(MOE, w, x, k_old, v_old, pos)
    assert relative_error(h, h_want) < 2e-2
    probs = np.exp(rmsnorm(h_want, w["mlp_norm"]) @ w["w_router"])
    probs /= probs.sum(-1, keepdims=True)
    # the router keeps exactly the k most likely experts, renormalised
    index = np.sort(np.argsort(-probs, -1)[:, :top_k], -1)
    np.testing.assert_array_equal(np.sort(np.nonzero(dense_gates)[1].reshape(batch, top_k), -1),
                                  index)
    gates = np.take_along_axis(dense_gates, index, -1)
    np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-5)
    # the host's permutation (the all-to-all's addressing): token rows to their experts
    hit = sorted(set(index.ravel().tolist()))
    slots = {e: [(b, j) for b in range(batch) for j in range(top_k) if index[b, j] == e]
             for e in hit}
    per_expert = max(len(s) for s in slots.values())
    xe = np.zeros((len(hit), per_expert, MOE.hidden), np.float32)
    for i, e in enumerate(hit):
        for c, (b, _) in enumerate(slots[e]):
            xe[i, c] = m[b]
    ex = gen.experts(MOE, SHARD, len(hit), per_expert, "bf16")
    (ye,) = run(ex, {"xe": bf16(xe), "w_gate_up": w["ew_gate_up"][hit],
                     "w_down": w["ew_down_t"][hit]})
    back = np.zeros((batch, top_k, MOE.hidden), np.float32)
    for i, e in enumerate(hit):
        for c, (b, j) in enumerate(slots[e]):
            back[b, j] = ye[i, c]
    (out,) = run(gen.moe_combine(MOE, batch), {"h": bf16(h), "gates": gates, "ye": bf16(back)})
    f = lambda a: np.asarray(a, np.float32)
    mm = rmsnorm(h_want, w["mlp_norm"])
    want = h_want.copy()
    for b in range(batch):
        chosen = np.argsort(-probs[b])[:top_k]
        g = probs[b, chosen] / probs[b, chosen].sum()
        for gate, e in zip(g, chosen):
            ffn = (silu(mm[b] @ f(w["ew_gate"][e])) * (mm[b] @ f(w["ew_up"][e]))) \
                @ f(w["ew_down"][e])
            want[b] += gate * ffn
    assert relative_error(out, want) < 3e-2


@pytest.mark.parametrize("kind", ["prefill_qkv", "prefill_attn", "lm_head"])
def test_prefill_and_head_programs_match_reference(kind):
    rng = np.random.default_rng(2)
    w = weights(rng, DENSE, moe=False)
    tokens = 40
    step = gen.prefill(tokens)
    spec = {"prefill_qkv": lambda: gen.qkv(DENSE, SHARD, step, "bf16", "bf16"),
            "prefill_attn": lambda: gen.layer_attention(DENSE, SHARD, step, "bf16", "bf16"),
            "lm_head": lambda: gen.lm_head(DENSE, SHARD, 3, "bf16")}[kind]()
    fn = load_program("<p>", text=spec.source)
    w = program_weights(w)
    inputs = {p.name: (w[p.name] if p.name in w else
                       bf16(rng.standard_normal(p.type.shape))) for p in fn.params}
    if kind == "prefill_qkv":
        inputs["cos_t"], inputs["sin_t"] = gen.rope_tables(16, 1e6, np.arange(tokens))
    if kind == "lm_head":
        inputs["final_norm"] = np.ones(DENSE.hidden, np.float32)
        inputs["w_lm"] = bf16(rng.standard_normal((64, DENSE.hidden)) / 8)
    run(spec, inputs)


@pytest.mark.parametrize("wdt, kvdt", [("fp8", "bf16"), ("f16", "f16"), ("bf16", "f16")])
def test_other_dtypes_match_and_read_the_cache_once(wdt, kvdt):
    """fp8 or f16 weights, an f16 cache: the attention takes q in the cache's dtype, so no
    kernel converts the cache (its bytes are read once)."""
    from zhenwu.compiler.roofline import compulsory_bytes

    rng = np.random.default_rng(3)
    spec = gen.layer_attention(DENSE, SHARD, gen.decode(2, 64), wdt, kvdt)
    fn = load_program("<p>", text=spec.source)
    inputs = {p.name: np.asarray(rng.standard_normal(p.type.shape) / 4, np.float32)
              for p in fn.params}
    run(spec, inputs)
    compiled = compile_function(fn, MACHINE)
    report = run_program(compiled.program, MACHINE, {}, timing_only=True).report
    cache = sum(inputs[name].size * (1 if kvdt == "fp8" else 2) for name in spec.cache)
    # a conversion kernel would read the cache twice and write it once more
    assert report.hbm_read_bytes < compulsory_bytes(fn) + cache // 2


def test_expected_experts_hit():
    # E (1 - (1 - k/E)^N): one token hits exactly k experts; many tokens hit nearly all
    assert gen.expected_experts_hit(128, 8, 1) == pytest.approx(8.0)
    assert gen.expected_experts_hit(128, 8, 2) == pytest.approx(128 * (1 - (120 / 128) ** 2))
    assert gen.expected_experts_hit(128, 8, 4096) == pytest.approx(128.0)


@pytest.mark.parametrize("phase", ["prefill", "decode", "decode --persistent"])
def test_cli_check_runs_the_tiny_layer_programs(phase, tmp_path, capsys):
    """`zhenwu run PROGRAM --check` on the tiny model's layer programs (seeded random inputs,
    functional run with the race detector, compared with the reference evaluator). The MoE
    router is left to test_moe_decode_step_matches_numpy: with the CLI's N(0, 1) random
    weights its softmax over 64-wide logits is so sharp that the gates amplify bf16 rounding
    differences of h beyond the tolerance."""
    from zhenwu.compiler.cli import main

    step = gen.prefill(48) if phase == "prefill" else gen.decode(3, 40)
    for spec in (gen.qkv(DENSE, SHARD, step, "bf16", "bf16"),
                 gen.layer_attention(DENSE, SHARD, step, "bf16", "bf16")):
        path = tmp_path / f"{spec.name}.zt"
        path.write_text(spec.source)
        assert main(["run", str(path), "--check", *phase.split()[1:]]) == 0, spec.name
    assert "FAIL" not in capsys.readouterr().out


def test_fused_projections_are_one_product_each():
    """q/k/v is one matrix product, gate/up one more (with the down and output projections:
    three in the attention program); the programs' kernels say so."""
    counts = {}
    for spec in (gen.qkv(DENSE, SHARD, gen.prefill(64), "bf16", "bf16"),
                 gen.layer_attention(DENSE, SHARD, gen.prefill(64), "bf16", "bf16")):
        compiled = compile_function(load_program("<p>", text=spec.source), MACHINE)
        counts[spec.name] = sum(k.name.startswith("matmul") for k in compiled.kernels.kernels)
    assert counts == {"prefill_qkv": 1, "prefill_attn": 3}


SMALL = parse_model("""
name = "small-dense"
layers = 1
hidden = 256
heads = 8
kv_heads = 2
head_dim = 32
ffn = 512
vocab = 64
""")


def test_prefill_layer_matches_the_reference_with_several_tiles_per_core():
    """A prefill layer at 1024 tokens on the 16-core 810E: every product, the flash attention
    and the norm kernels have two or more tiles per core, so the race detector sees buffers
    reused across a core's tiles."""
    machine = load_machine("z810e")
    shard = gen.Shard(heads=8, kv_heads=2, ffn=512, experts=None, expert_ffn=None, vocab=64)
    rng = np.random.default_rng(5)
    step = gen.prefill(1024)
    cos_t, sin_t = gen.rope_tables(32, 1e6, np.arange(1024))
    for spec in (gen.qkv(SMALL, shard, step, "bf16", "bf16"),
                 gen.layer_attention(SMALL, shard, step, "bf16", "bf16")):
        fn = load_program(f"<{spec.name}>", text=spec.source)
        inputs = {p.name: bf16(rng.standard_normal(p.type.shape)
                               / (np.sqrt(p.type.shape[-1]) if p.name.startswith("w") else 1))
                  for p in fn.params}
        inputs.update({n: (1 + 0.1 * rng.standard_normal(inputs[n].shape)).astype(np.float32)
                       for n in spec.weights if n.endswith("norm")})
        if "cos_t" in inputs:
            inputs.update(cos_t=cos_t, sin_t=sin_t)
        compiled = compile_function(fn, machine)
        result = run_program(compiled.program, machine, compiled.program_inputs(inputs))
        for got, want, value in zip(compiled.graph_outputs(result), evaluate(fn, inputs),
                                    fn.outputs):
            assert relative_error(got, want) <= output_tolerance(fn, value), spec.name


@pytest.mark.parametrize("wdt, kvdt", [("fp8", "bf16"), ("bf16", "f16")])
def test_qkv_without_qk_norm_matches_the_reference(wdt, kvdt):
    """A model file with `qk_norm = false`: q and k go to the rotation in the cache dtype
    straight from the product (in the weights' dtype)."""
    model = parse_model("name = \"no-qk-norm\"\nlayers = 1\nhidden = 64\nheads = 4\n"
                        "kv_heads = 2\nhead_dim = 16\nffn = 96\nvocab = 64\nqk_norm = false\n")
    spec = gen.qkv(model, SHARD, gen.prefill(24), wdt, kvdt)
    fn = load_program("<p>", text=spec.source)
    rng = np.random.default_rng(4)
    inputs = {p.name: np.asarray(rng.standard_normal(p.type.shape) / 4, np.float32)
              for p in fn.params}
    inputs["cos_t"], inputs["sin_t"] = gen.rope_tables(16, 1e6, np.arange(24))
    run(spec, inputs)
