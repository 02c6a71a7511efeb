"""`zhenwu serve MODEL.toml`: what a model costs to serve (TTFT, TPOT, tokens/s, $/M tokens).

Generates one chip's share of each layer program (compiler/serving/programs.py), compiles and
simulates each distinct one once, timing-only, cached on disk, and composes them with the
analytic collectives (compiler/serving/estimate.py). `--compare MACHINE` prints a second
machine side by side; `--sweep batch=1,8,64` a throughput-latency table (and with `--plot`,
a PNG, if matplotlib is installed); `--ray [ADDRESS]` runs the simulations on Ray.
"""

from __future__ import annotations

import json
import sys

from zhenwu.isa.errors import UsageError

GB = 1e9


def add_parser(sub, add_machine) -> None:
    """The `serve` subcommand's options (called from compiler/cli.py)."""
    p = sub.add_parser("serve", help="estimate serving a model: TTFT, TPOT, tokens/s, cost")
    p.add_argument("model", help="a model .toml (samples/models/) or a sample's name "
                   "(required)")
    add_machine(p)
    p.add_argument("--chips", type=int, default=None, help="chips (default: tp x pp, or 1)")
    p.add_argument("--tp", type=int, help="tensor-parallel chips (default: chips in a node)")
    p.add_argument("--pp", type=int, help="pipeline stages (default: chips / tp)")
    p.add_argument("--ep", type=int, help="expert-parallel chips among the tp (default: tp)")
    p.add_argument("--chips-per-node", type=int, default=None,
                   help="chips that share a node's links (default: the machine's [system])")
    p.add_argument("--batch", type=int, default=1,
                   help="sequences decoded together (default: 1)")
    p.add_argument("--prompt", type=int, default=1024,
                   help="prompt tokens per sequence (default: 1024)")
    p.add_argument("--output", type=int, default=256,
                   help="generated tokens per sequence (default: 256)")
    p.add_argument("--weight-dtype", choices=["bf16", "f16", "fp8"],
                   help="weight dtype (default: the model file's)")
    p.add_argument("--kv-dtype", choices=["bf16", "f16"],
                   help="KV-cache dtype (default: the model file's)")
    p.add_argument("--launch", choices=["graph", "kernels"], default="graph",
                   help="decode steps: one launch per program (graph: its kernels one "
                        "persistent kernel, as engines replay a captured decode step) or one "
                        "per kernel (default: graph)")
    p.add_argument("--price-per-chip-hour", type=float, default=2.0, metavar="USD",
                   help="what a chip-hour costs, an assumption (default: 2.0)")
    p.add_argument("--compare", metavar="MACHINE",
                   help="a second machine, side by side (default: none)")
    p.add_argument("--sweep", metavar="KEY=V1,V2,..",
                   help="sweep batch, prompt or output: a throughput-latency table "
                        "(default: none)")
    p.add_argument("--plot", metavar="OUT.png",
                   help="with --sweep: the curve, with matplotlib (default: none)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="simulate on Ray, a local one or the cluster at ADDRESS (default: "
                        "local processes)")
    p.add_argument("-j", "--jobs", type=int, default=0,
                   help="local simulation processes (default: one per host CPU)")
    p.add_argument("--json", action="store_true",
                   help="print JSON instead of a table (default: off)")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"--{name} must be at least 1, got {value}")


def _plan(args, model):
    from zhenwu.compiler.serving.estimate import Plan, default_plan

    for name in ("chips", "tp", "pp", "ep", "chips_per_node", "batch", "prompt", "output"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if args.tp is None and args.pp is None:
        plan = default_plan(model, args.chips or 1, args.chips_per_node)
    else:
        tp = args.tp or 1
        pp = args.pp or max(1, (args.chips or tp) // tp)
        ep = args.ep if args.ep is not None else (
            tp if model.moe is not None and model.moe.experts % tp == 0 else 1)
        plan = Plan(tp=tp, pp=pp, ep=ep, chips_per_node=args.chips_per_node)
    if args.ep is not None and args.tp is None and args.pp is None:
        plan = Plan(plan.tp, plan.pp, args.ep, plan.chips_per_node)
    if args.chips is not None and plan.chips != args.chips:
        raise UsageError(f"--chips {args.chips} but tp x pp = {plan.tp} x {plan.pp} = "
                         f"{plan.chips}")
    return plan


def _sweep_points(spec: str | None) -> tuple[str | None, list[int]]:
    if spec is None:
        return None, []
    key, _, values = spec.partition("=")
    if key not in ("batch", "prompt", "output") or not values:
        raise UsageError(f"--sweep {spec}: expected batch=..., prompt=... or output=..., "
                         f"e.g. --sweep batch=1,8,64,256")
    try:
        points = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--sweep {spec}: the values must be integers") from None
    if not points or min(points) < 1:
        raise UsageError(f"--sweep {spec}: the values must be positive integers")
    return key, points


def run(args) -> int:
    from dataclasses import replace

    from zhenwu.compiler.commands.serve_simulate import simulate_all
    from zhenwu.compiler.serving.estimate import (
        Request,
        analytic_pieces,
        check_fits,
        compose,
        layer_programs,
    )
    from zhenwu.compiler.serving.model import load_model
    from zhenwu.isa.machine import load_machine

    model = load_model(args.model)
    machines = [load_machine(args.machine)]
    if args.compare:
        machines.append(load_machine(args.compare))
    if args.chips_per_node is None:
        args.chips_per_node = machines[0].chips_per_node
    plan = _plan(args, model)
    base = Request(batch=args.batch, prompt=args.prompt, output=args.output,
                   weight_dtype=args.weight_dtype or model.weight_dtype,
                   kv_dtype=args.kv_dtype or model.kv_dtype, decode_launch=args.launch)
    key, points = _sweep_points(args.sweep)
    requests = [replace(base, **{key: value}) for value in points] if key else [base]
    if args.plot and not key:
        raise UsageError("--plot needs --sweep")
    if plan.chips > 1 and any(m.link_count == 0 for m in machines):
        raise UsageError("a machine without chip links ([link] count = 0) runs one chip only")

    # fail fast, before any simulation, on what does not fit
    cases = [(machine, request) for machine in machines for request in requests]
    for machine, request in cases:
        check_fits(model, machine, plan, request)
    uses = {(m.name, r): layer_programs(model, plan, r) for m, r in cases}
    # one simulation per distinct (program, machine, launch mode): the same lm_head serves
    # prefill (launched by kernel) and decode (maybe one persistent launch)
    jobs: dict[bool, list] = {False: [], True: []}
    for machine, request in cases:
        for use in uses[(machine.name, request)]:
            jobs[use.persistent].append((use.spec.source, use.spec.name, machine))

    def progress(done, total, name):
        print(f"\r[{done}/{total}] simulated {name:<24}", end="", file=sys.stderr, flush=True)

    records = {persistent: simulate_all(
        batch, processes=args.jobs, persistent=persistent,
        ray_address=False if args.ray is None else (args.ray or None),
        progress=progress if sys.stderr.isatty() else None)
        for persistent, batch in jobs.items() if batch}
    if sys.stderr.isatty():
        print("\r" + " " * 50 + "\r", end="", file=sys.stderr, flush=True)
    estimates = []
    for machine, request in cases:
        recs = [(use, records[use.persistent][(use.spec.source, machine.name)])
                for use in uses[(machine.name, request)]]
        estimates.append(compose(model, machine, plan, request, recs,
                                 analytic_pieces(model, plan, request, machine),
                                 args.price_per_chip_hour))
    if args.json:
        data = [e.to_json() for e in estimates]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    elif key:
        print(_sweep_table(estimates, key))
    else:
        print(_summary(estimates))
        print()
        print(_programs_table(estimates[0]))
    if args.plot:
        _plot(estimates, key, args.plot)
    return 0


def _summary(estimates) -> str:
    first = estimates[0]
    m, r, plan = first.model, first.request, first.plan
    head = (f"{m.name}{' (ASSUMED configuration)' if m.assumed else ''}: "
            f"{m.parameters() / 1e9:.1f}B parameters, {m.active_parameters() / 1e9:.1f}B active; "
            f"tp={plan.tp} pp={plan.pp} ep={plan.ep} ({plan.chips} chip"
            f"{'s' if plan.chips > 1 else ''}); batch {r.batch}, "
            f"prompt {r.prompt}, output {r.output}; weights {r.weight_dtype}, KV {r.kv_dtype}; "
            f"decode launched by {'program' if r.decode_launch == 'graph' else 'kernel'}")
    rows = [
        ("TTFT", lambda e: f"{e.ttft_s * 1e3:.2f} ms"),
        ("TPOT", lambda e: f"{e.tpot_s * 1e3:.3f} ms"),
        ("tokens/s", lambda e: f"{e.tokens_per_s:,.1f}"),
        ("tokens/s per chip", lambda e: f"{e.tokens_per_s_per_chip:,.1f}"),
        ("USD per M output tokens", lambda e: f"{e.usd_per_million_tokens:.3f}"),
        ("weights per chip", lambda e: f"{e.memory.weights / GB:.2f} GB"),
        ("KV cache per chip", lambda e: f"{e.memory.kv_cache / GB:.3f} GB"),
        ("activations per chip", lambda e: f"{e.memory.activations / GB:.3f} GB"),
        ("HBM per chip", lambda e: f"{e.machine.hbm_bytes / GB:.0f} GB"),
        (f"max batch at context {r.context}", lambda e: f"{e.max_batch_at(r.context):,}"),
        ("max batch at 32k context", lambda e: f"{e.max_batch_at(32768):,}"),
    ]
    width = max(len(name) for name, _ in rows) + 2
    lines = [head, "", " " * width + "".join(f"{e.machine.name:>16}" for e in estimates)]
    for name, cell in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{cell(e):>16}" for e in estimates))
    if len(estimates) == 2:
        a, b = estimates
        lines.append("")
        lines.append(f"{a.machine.name} / {b.machine.name}: prefill (TTFT) "
                     f"{b.ttft_s / a.ttft_s:.2f}x faster, decode (TPOT) "
                     f"{b.tpot_s / a.tpot_s:.2f}x faster, tokens/s per chip "
                     f"{a.tokens_per_s_per_chip / b.tokens_per_s_per_chip:.2f}x")
    for e in estimates:
        shares = []
        for phase, total in (("prefill", e.ttft_s), ("decode", e.tpot_s)):
            analytic = sum(a.seconds * a.count for a in e.analytic if a.phase == phase)
            shares.append(f"{'TTFT' if phase == 'prefill' else 'TPOT'} "
                          f"{analytic / total:.0%}" if total else "-")
        lines.append(f"{e.machine.name}: analytic share (collectives, embedding gather): "
                     f"{', '.join(shares)}; the rest is simulated")
    for note in first.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _programs_table(estimate) -> str:
    """Every figure's source: simulated programs and analytic pieces, with counts."""
    lines = [f"where the time goes on {estimate.machine.name} (per prefill / per decode step):",
             (f"{'phase':<8} {'program':<32} {'source':<10} {'cycles':>12} {'seconds':>11} "
             f"{'count':>6} {'total s':>10} {'eff':>5} {'launches':>8}")]
    for use, rec in estimate.programs:
        eff = rec["roofline_cycles"] / rec["cycles"] if rec["cycles"] else 0.0
        lines.append(f"{use.phase:<8} {use.spec.name:<32} {'simulated':<10} "
                     f"{rec['cycles']:>12,} {rec['seconds']:>11.3e} {use.count:>6} "
                     f"{rec['seconds'] * use.count:>10.3e} {eff:>5.2f} "
                     f"{1 if use.persistent else rec['kernels']:>8}")
    for piece in estimate.analytic:
        lines.append(f"{piece.phase:<8} {piece.name:<32} {'analytic':<10} {'-':>12} "
                     f"{piece.seconds:>11.3e} {piece.count:>6} "
                     f"{piece.seconds * piece.count:>10.3e} {'-':>5}")
    lines.append("simulated: compiled and run timing-only on one chip; analytic: an alpha-beta "
                 "formula from the machine's [link]/[nic] numbers (collectives) or the HBM "
                 "bandwidth (embedding gather); launches: kernel launches per run (1: the "
                 "program's kernels as one persistent kernel, --launch graph)")
    return "\n".join(lines)


def _sweep_table(estimates, key: str) -> str:
    lines = [(f"{'machine':<8} {key:>7} {'TTFT ms':>10} {'TPOT ms':>10} {'tok/s':>11} "
             f"{'tok/s/chip':>11} {'USD/M tok':>10} {'mem/chip GB':>12}")]
    for e in estimates:
        value = getattr(e.request, key)
        lines.append(f"{e.machine.name:<8} {value:>7} {e.ttft_s * 1e3:>10.2f} "
                     f"{e.tpot_s * 1e3:>10.3f} {e.tokens_per_s:>11,.1f} "
                     f"{e.tokens_per_s_per_chip:>11,.1f} {e.usd_per_million_tokens:>10.3f} "
                     f"{e.memory.total / GB:>12.2f}")
    return "\n".join(lines)


def _plot(estimates, key: str, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'zhenwu[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(e.machine.name for e in estimates):
        points = [e for e in estimates if e.machine.name == name]
        xs = [e.tpot_s * 1e3 for e in points]
        ys = [e.tokens_per_s_per_chip for e in points]
        ax.plot(xs, ys, marker="o", label=name)
        for e, x, y in zip(points, xs, ys):
            ax.annotate(f"{key}={getattr(e.request, key)}", (x, y), fontsize=7)
    ax.set_xlabel("time per output token (ms)")
    ax.set_ylabel("output tokens/s per chip")
    ax.set_title(f"{estimates[0].model.name}, {estimates[0].plan.chips} chip(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
