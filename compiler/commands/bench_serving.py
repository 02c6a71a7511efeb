"""`zhenwu bench serving`: the serving estimate's programs against their bounds.

On Qwen3-32B (samples/models/qwen3-32b.toml), one chip, bf16 weights and cache:

- decode, B=1 at context 4096: one step (64 layers of decode_qkv + decode_attn, and the LM
  head) against (weight bytes + KV-cache bytes) / HBM bandwidth (target: within 1.15x);
- decode, B=64 at context 4096: the KV-cache attention alone against the bytes of the cache
  it reads (target: within 1.2x);
- prefill of T=4096 tokens: 64 layers of prefill_qkv + prefill_attn against the compute
  roofline (the products' FLOPs over the peak; target: at least 0.8);
- decode B=1 again compiled with `persistent=True` (every kernel of a program as one
  persistent kernel: one launch per program; compiler/backend/merge.py), reported beside;
- the same on the 810E, and the M890 / 810E ratios (the announced 3x for compute-bound
  prefill, the HBM bandwidth ratio for memory-bound decode).

Each program is simulated once, timing-only, through the serving cache (compiler/commands/
serve_simulate.py): a run after `zhenwu serve` of the same shapes costs nothing.
"""

from __future__ import annotations

from zhenwu.compiler.commands.serve_simulate import simulate_all
from zhenwu.compiler.serving import programs as gen
from zhenwu.compiler.serving.estimate import Plan, Request, memory_per_chip, shard_of
from zhenwu.compiler.serving.model import load_model

CONTEXT = 4096
PROMPT = 4096
WIDE_BATCH = 64


def bench_programs(model):
    """(name, [(spec, count)]) of each measured quantity."""
    shard = shard_of(model, Plan())
    layers = model.layers
    decode, prefill = gen.decode(1, CONTEXT), gen.prefill(PROMPT)
    return {
        "decode_b1": [(gen.qkv(model, shard, decode, "bf16", "bf16"), layers),
                      (gen.layer_attention(model, shard, decode, "bf16", "bf16"), layers),
                      (gen.lm_head(model, shard, 1, "bf16"), 1)],
        "attention_b64": [(gen.decode_attention(model, shard, WIDE_BATCH, CONTEXT, "bf16"), 1)],
        "prefill": [(gen.qkv(model, shard, prefill, "bf16", "bf16"), layers),
                    (gen.layer_attention(model, shard, prefill, "bf16", "bf16"), layers),
                    (gen.lm_head(model, shard, 1, "bf16"), 1)],
    }


def measure(machines, processes: int = 0, progress=None) -> list[dict]:
    """One row per machine: seconds and bounds of the three measurements."""
    model = load_model("qwen3-32b")
    programs = {m.name: bench_programs(model) for m in machines}
    jobs = [(spec.source, spec.name, m) for m in machines
            for uses in programs[m.name].values() for spec, _ in uses]
    records = simulate_all(jobs, processes=processes, progress=progress)
    # decode B=1 again as persistent kernels (one launch per program; an explicit option)
    persistent_jobs = [(spec.source, spec.name, m) for m in machines
                       for spec, _ in programs[m.name]["decode_b1"]]
    persistent = simulate_all(persistent_jobs, processes=processes, progress=progress,
                              persistent=True)
    rows = []
    for m in machines:
        seconds = {}
        detail = {}
        for key, uses in programs[m.name].items():
            recs = [(records[(spec.source, m.name)], count) for spec, count in uses]
            seconds[key] = sum(r["seconds"] * c for r, c in recs)
            detail[key] = recs
        decode_persistent = sum(persistent[(spec.source, m.name)]["seconds"] * count
                                for spec, count in programs[m.name]["decode_b1"])
        memory = memory_per_chip(model, Plan(), Request(batch=1, prompt=CONTEXT, output=0))
        decode_bytes = memory.weights + memory.kv_cache
        decode_bound = decode_bytes / m.hbm_bandwidth
        cache_bytes = 2 * WIDE_BATCH * model.kv_heads * CONTEXT * model.head_dim * 2
        attention_bound = cache_bytes / m.hbm_bandwidth
        flops = sum(r["compute_cycles"] * c for r, c in detail["prefill"])
        compute_bound = m.seconds(flops)
        rows.append({
            "machine": m.name,
            "decode_b1_s": seconds["decode_b1"], "decode_b1_bound_s": decode_bound,
            "decode_b1_ratio": seconds["decode_b1"] / decode_bound,
            "decode_b1_kernels_per_layer": sum(r["kernels"] for r, c in detail["decode_b1"]
                                               if c == model.layers),
            "decode_b1_persistent_s": decode_persistent,
            "decode_b1_persistent_ratio": decode_persistent / decode_bound,
            "attention_b64_s": seconds["attention_b64"],
            "attention_b64_bound_s": attention_bound,
            "attention_b64_ratio": seconds["attention_b64"] / attention_bound,
            "prefill_s": seconds["prefill"], "prefill_compute_bound_s": compute_bound,
            "prefill_efficiency": compute_bound / seconds["prefill"],
            "programs": {key: [{"name": r["name"], "cycles": r["cycles"], "count": c,
                                "roofline_cycles": r["roofline_cycles"]} for r, c in recs]
                         for key, recs in detail.items()},
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["Qwen3-32B on one chip, bf16 (simulated, timing-only)",
             (f"{'machine':<8} {'decode B=1 L=4096':>30} {'KV attention B=64 L=4096':>30} "
             f"{'prefill T=4096':>30}")]
    for r in rows:
        lines.append(
            f"{r['machine']:<8} "
            f"{r['decode_b1_s'] * 1e3:>9.2f} ms / bound {r['decode_b1_bound_s'] * 1e3:>6.2f} "
            f"= {r['decode_b1_ratio']:.2f}x "
            f"{r['attention_b64_s'] * 1e3:>7.3f} ms / bound "
            f"{r['attention_b64_bound_s'] * 1e3:>6.3f} = {r['attention_b64_ratio']:.2f}x "
            f"{r['prefill_s'] * 1e3:>8.1f} ms, eff {r['prefill_efficiency']:.2f}")
    for r in rows:
        lines.append(f"{r['machine']:<8} decode B=1 with --persistent (one kernel per program): "
                     f"{r['decode_b1_persistent_s'] * 1e3:.2f} ms = "
                     f"{r['decode_b1_persistent_ratio']:.2f}x; "
                     f"{r['decode_b1_kernels_per_layer']} kernels per layer without")
    lines.append("targets: decode within 1.15x of (weights + KV bytes) / HBM bandwidth; "
                 "attention within 1.2x of its bytes; prefill >= 0.8 of the compute roofline")
    if len(rows) == 2:
        a, b = rows
        lines.append(
            f"{a['machine']} / {b['machine']}: prefill {b['prefill_s'] / a['prefill_s']:.2f}x "
            f"faster, decode B=1 {b['decode_b1_s'] / a['decode_b1_s']:.2f}x "
            f"(HBM bandwidth ratio {b['decode_b1_bound_s'] / a['decode_b1_bound_s']:.2f}x), "
            f"KV attention {b['attention_b64_s'] / a['attention_b64_s']:.2f}x")
    return "\n".join(lines)
