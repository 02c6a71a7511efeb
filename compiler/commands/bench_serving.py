"""`zhenwu bench serving`: the serving estimate's programs against their bounds.

On Qwen3-32B (samples/models/qwen3-32b.toml), one chip, bf16 weights and cache:

- decode, B=1 at context 4096: one step (64 layers of decode_qkv + decode_attn, and the LM
  head) against (weight bytes + KV-cache bytes) / HBM bandwidth (target: within 1.15x),
  launched as `zhenwu serve` launches it by default (`--launch graph`: each program's
  kernels as one persistent kernel, compiler/backend/merge.py; one launch per program);
- decode, B=64 at context 4096: the KV-cache attention alone against the bytes of the cache
  it reads (target: within 1.2x);
- prefill of T=4096 tokens: 64 layers of prefill_qkv + prefill_attn against the compute
  roofline (the products' FLOPs over the peak; target: at least 0.8);
- decode B=1 again launched kernel by kernel (`--launch kernels`), reported beside;
- the same on the 810E, and the M890 / 810E ratios (the announced 3x for compute-bound
  prefill, the HBM bandwidth ratio for memory-bound decode);
- where the decode step's time goes: each kernel of its programs with its cycles, its HBM
  bytes at the sustained (streaming) rate, its launch, and the rest (the kernel's ramp, its
  tail and the cores' imbalance), per layer (`kernel_breakdown`).

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


def kernel_breakdown(uses, records: dict, machine) -> list[dict]:
    """One entry per kernel of the programs `uses` ([(spec, count)]) from their simulation
    `records` (keyed by source): its cycles (launch included), HBM bytes, the bytes' cycles at
    the HBM's sustained rate (peak x streaming efficiency: what whole-row streams reach), the
    launch, and `other_cycles`, what is left (the kernel's first loads' round trip and its
    last stores, barriers, cores idle at the end of an uneven share of the tiles)."""
    sustained = machine.hbm_bytes_per_cycle * machine.hbm_streaming_efficiency
    launch = machine.kernel_launch_cycles
    rows = []
    for spec, count in uses:
        for kernel in records[spec.source]["kernel_times"]:
            streaming = kernel["hbm_bytes"] / sustained
            rows.append({"program": spec.name, "kernel": kernel["name"], "count": count,
                         "cycles": kernel["cycles"], "hbm_bytes": kernel["hbm_bytes"],
                         "streaming_cycles": streaming, "launch_cycles": launch,
                         "other_cycles": kernel["cycles"] - streaming - launch})
    return rows


def measure(machines, processes: int = 0, progress=None) -> list[dict]:
    """One row per machine: seconds and bounds of the three measurements."""
    model = load_model("qwen3-32b")
    programs = {m.name: bench_programs(model) for m in machines}
    jobs = [(spec.source, spec.name, m) for m in machines
            for uses in programs[m.name].values() for spec, _ in uses]
    records = simulate_all(jobs, processes=processes, progress=progress)
    # decode B=1 as `zhenwu serve` launches it by default: one persistent kernel per program
    graph_jobs = [(spec.source, spec.name, m) for m in machines
                  for spec, _ in programs[m.name]["decode_b1"]]
    graph = simulate_all(graph_jobs, processes=processes, progress=progress, persistent=True)
    rows = []
    for m in machines:
        seconds = {}
        detail = {}
        for key, uses in programs[m.name].items():
            recs = [(records[(spec.source, m.name)], count) for spec, count in uses]
            seconds[key] = sum(r["seconds"] * c for r, c in recs)
            detail[key] = recs
        decode_graph = sum(graph[(spec.source, m.name)]["seconds"] * count
                           for spec, count in programs[m.name]["decode_b1"])
        memory = memory_per_chip(model, Plan(), Request(batch=1, prompt=CONTEXT, output=0))
        decode_bytes = memory.weights + memory.kv_cache
        decode_bound = decode_bytes / m.hbm_bandwidth
        cache_bytes = 2 * WIDE_BATCH * model.kv_heads * CONTEXT * model.head_dim * 2
        attention_bound = cache_bytes / m.hbm_bandwidth
        flops = sum(r["compute_cycles"] * c for r, c in detail["prefill"])
        compute_bound = m.seconds(flops)
        kernels = kernel_breakdown(programs[m.name]["decode_b1"],
                                   {spec.source: records[(spec.source, m.name)]
                                    for spec, _ in programs[m.name]["decode_b1"]}, m)
        rows.append({
            "machine": m.name,
            "decode_b1_s": decode_graph, "decode_b1_bound_s": decode_bound,
            "decode_b1_ratio": decode_graph / decode_bound,
            "decode_b1_launch": "graph",
            "decode_b1_kernels_per_layer": sum(r["kernels"] for r, c in detail["decode_b1"]
                                               if c == model.layers),
            "decode_b1_by_kernel_s": seconds["decode_b1"],
            "decode_b1_by_kernel_ratio": seconds["decode_b1"] / decode_bound,
            "attention_b64_s": seconds["attention_b64"],
            "attention_b64_bound_s": attention_bound,
            "attention_b64_ratio": seconds["attention_b64"] / attention_bound,
            "prefill_s": seconds["prefill"], "prefill_compute_bound_s": compute_bound,
            "prefill_efficiency": compute_bound / seconds["prefill"],
            "decode_b1_kernels": kernels,
            "programs": {key: [{"name": r["name"], "cycles": r["cycles"], "count": c,
                                "roofline_cycles": r["roofline_cycles"]} for r, c in recs]
                         for key, recs in detail.items()},
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["Qwen3-32B on one chip, bf16 (simulated, timing-only)",
             (f"{'machine':<8} {'decode B=1 L=4096 (by program)':>30} "
              f"{'KV attention B=64 L=4096':>30} "
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
        lines.append(f"{r['machine']:<8} decode B=1 launched by kernel (--launch kernels, "
                     f"{r['decode_b1_kernels_per_layer']} kernels per layer): "
                     f"{r['decode_b1_by_kernel_s'] * 1e3:.2f} ms = "
                     f"{r['decode_b1_by_kernel_ratio']:.2f}x")
    lines.append("decode by program: each program's kernels as one persistent kernel, one "
                 "launch per program (zhenwu serve's default, --launch graph)")
    lines.append("targets: decode within 1.15x of (weights + KV bytes) / HBM bandwidth; "
                 "attention within 1.2x of its bytes; prefill >= 0.8 of the compute roofline")
    for r in rows:
        lines += format_breakdown(r["machine"], r["decode_b1_kernels"])
    if len(rows) == 2:
        a, b = rows
        lines.append(
            f"{a['machine']} / {b['machine']}: prefill {b['prefill_s'] / a['prefill_s']:.2f}x "
            f"faster, decode B=1 {b['decode_b1_s'] / a['decode_b1_s']:.2f}x "
            f"(HBM bandwidth ratio {b['decode_b1_bound_s'] / a['decode_b1_bound_s']:.2f}x), "
            f"KV attention {b['attention_b64_s'] / a['attention_b64_s']:.2f}x")
    return "\n".join(lines)


def format_breakdown(machine: str, kernels: list[dict]) -> list[str]:
    """The decode step's kernels (`kernel_breakdown`) as table lines, then the sums over a
    layer's kernels (each once) and over the whole step (each times its count)."""
    keys = ("cycles", "streaming_cycles", "launch_cycles", "other_cycles")

    def line(label: str, count, values) -> str:
        cycles, streaming, launch, other = values
        return (f"  {label:<41} {count:>5} {cycles:>12,} {streaming:>12,.0f} {launch:>10,} "
                f"{other:>11,.0f}")

    title = (f"{machine} decode B=1 launched by kernel, per kernel (cycles; streaming: its HBM bytes at the "
             "sustained rate; other: ramp, tail, imbalance):")
    header = (f"  {'program':<12} {'kernel':<28} {'count':>5} {'cycles':>12} "
              f"{'streaming':>12} {'launch':>10} {'other':>11}")
    lines = [title, header]
    for k in kernels:
        lines.append(line(f"{k['program']:<12} {k['kernel'][:28]}", k["count"],
                          [k[key] for key in keys]))
    layers = max(k["count"] for k in kernels)
    layer = [k for k in kernels if k["count"] == layers]
    lines.append(line("a layer", len(layer), [sum(k[key] for k in layer) for key in keys]))
    lines.append(line("the step", "", [sum(k[key] * k["count"] for k in kernels)
                                       for key in keys]))
    return lines
