"""`zhenwu serve`: model files, memory and KV-cache arithmetic, the analytic collectives and the
composition of simulated programs, against hand-computed numbers."""

from __future__ import annotations

import json

import pytest
from zhenwu.compiler.cli import main
from zhenwu.compiler.serving import programs as gen
from zhenwu.compiler.serving.comm import collective_seconds
from zhenwu.compiler.serving.estimate import (
    Plan,
    Request,
    ServeError,
    analytic_pieces,
    check_fits,
    compose,
    default_plan,
    layer_programs,
    memory_per_chip,
)
from zhenwu.compiler.serving.model import MODELS_DIR, ModelError, load_model, parse_model
from zhenwu.isa.machine import load_machine

M890 = load_machine("m890")
TINY = """\
name = "tiny"
layers = 2
hidden = 64
heads = 4
kv_heads = 2
head_dim = 16
ffn = 96
vocab = 64
"""


# ---- model files ----------------------------------------------------------------------


@pytest.mark.parametrize("name, total, active", [
    ("qwen3-8b", 8.2e9, 8.2e9), ("qwen3-32b", 32.8e9, 32.8e9),
    ("qwen3-30b-a3b", 30.5e9, 3.3e9), ("qwen3-235b-a22b", 235e9, 22e9),
    ("max-class-1.2t", 1.2e12, 57e9),
])
def test_sample_models_have_their_published_sizes(name, total, active):
    model = load_model(MODELS_DIR / f"{name}.toml")
    assert model.parameters() == pytest.approx(total, rel=0.05)
    assert model.active_parameters() == pytest.approx(active, rel=0.07)
    assert model.assumed == (name == "max-class-1.2t")


@pytest.mark.parametrize("text, where, message", [
    (TINY + "hiden = 3\n", ":9:1:", "unknown key 'hiden'"),
    (TINY.replace("heads = 4\n", "heads = \"four\"\n"), ":4:1:", "'heads' must be"),
    (TINY.replace("kv_heads = 2", "kv_heads = 3"), ":5:1:", "multiple of 'kv_heads'"),
    (TINY.replace("layers = 2", "layers = 0"), ":2:1:", "must be positive"),
    (TINY + "[moe]\nexperts = 8\ntop_k = 2\nexpert_ffn = 4\n", ":7:1:", "takes no 'ffn'"),
    (TINY.replace("ffn = 96\n", "") + "[moe]\nexperts = 8\ntop_k = 9\nexpert_ffn = 4\n",
     ":10:1:", "exceeds"),
    (TINY.replace("ffn = 96\n", "") + "[moe]\nexperts = 8\n", ":8:1:", "missing key 'moe.top_k'"),
    (TINY + "kv_dtype = \"i8\"\n", ":9:1:", "not supported"),
    ("name = \n", ":1:", "malformed TOML"),
])
def test_bad_model_files_are_located_diagnostics(text, where, message):
    with pytest.raises(ModelError) as info:
        parse_model(text, "m.toml")
    formatted = info.value.format()
    assert formatted.startswith("m.toml" + where), formatted
    assert message in formatted


def test_cli_bad_model_file_exits_1_with_its_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(TINY.replace("vocab = 64", "vocab = -64"))
    assert main(["serve", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:8:1: error: 'vocab' must be positive" in err and "^" in err


# ---- memory and KV-cache arithmetic ---------------------------------------------------


def test_qwen3_32b_memory_on_one_chip_by_hand():
    model = load_model(MODELS_DIR / "qwen3-32b.toml")
    mem = memory_per_chip(model, Plan(), Request(batch=1, prompt=1024, output=256))
    # KV: 2 x 8 KV heads x 128 x 2 bytes x 64 layers = 256 KiB per token (models.md)
    assert mem.kv_per_token == 262_144
    assert mem.kv_cache == 1280 * 262_144
    attn = (5120 * (64 + 2 * 8) * 128 + 64 * 128 * 5120) * 2
    norms = 2 * 5120 * 4 + 2 * 128 * 4
    ffn = 3 * 5120 * 25600 * 2
    ends = 2 * 5120 * 151936 * 2 + 5120 * 4        # embedding, LM head, final norm
    assert mem.weights == 64 * (attn + norms + ffn) + ends == 65_525_600_256
    # 144 GB minus the weights, over 256 KiB per token at 32k: 9 sequences
    assert mem.max_batch(32768, M890.hbm_bytes) == (144e9 - 65_525_600_256) // (32768 * 262_144)


def test_qwen3_32b_memory_on_eight_chips_by_hand():
    model = load_model(MODELS_DIR / "qwen3-32b.toml")
    mem = memory_per_chip(model, default_plan(model, 8), Request(batch=4, prompt=1000, output=24))
    per_layer = (5120 * (8 + 2) * 128 + 8 * 128 * 5120) * 2 + 2 * 5120 * 4 + 2 * 128 * 4 \
        + 3 * 5120 * 3200 * 2
    assert mem.weights == 64 * per_layer + 2 * 5120 * 18992 * 2 + 5120 * 4 == 8_193_069_056
    assert mem.kv_per_token == 2 * 1 * 128 * 2 * 64          # one of the 8 KV heads
    assert mem.kv_cache == 4 * 1024 * 32_768


def test_moe_kv_heads_are_copied_when_tp_exceeds_them():
    model = load_model(MODELS_DIR / "qwen3-235b-a22b.toml")
    plan = default_plan(model, 8)
    assert (plan.tp, plan.pp, plan.ep) == (8, 1, 8)
    mem = memory_per_chip(model, plan, Request())
    assert mem.kv_per_token == 2 * 1 * 128 * 2 * 94         # 4 KV heads over 8 chips: 1 each
    per_layer = (4096 * (8 + 2) * 128 + 8 * 128 * 4096) * 2 + 2 * 4096 * 4 + 2 * 128 * 4 \
        + 4096 * 128 * 4 + 16 * 3 * 4096 * 1536 * 2
    assert mem.weights == 94 * per_layer + 2 * 4096 * 18992 * 2 + 4096 * 4


def test_program_parameters_match_the_memory_arithmetic():
    """The generated programs' weight parameters are the bytes memory_per_chip counts."""
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.graph.dtypes import itemsize

    model = parse_model(TINY.replace("ffn = 96\n", "") + "[moe]\nexperts = 8\ntop_k = 2\n"
                        "expert_ffn = 32\n")
    plan, request = Plan(tp=2, ep=2), Request(batch=2, prompt=16, output=4)
    mem = memory_per_chip(model, plan, request)
    layer = 0
    for use in layer_programs(model, plan, request):
        if use.phase != "decode" or use.spec.name in ("lm_head", "moe_combine"):
            continue
        fn = load_program("<p>", text=use.spec.source)
        for p in fn.params:
            if p.name in use.spec.weights:
                size = itemsize(p.type.dtype)
                for dim in p.type.shape:
                    size *= dim
                if use.spec.name == "experts":   # the hit experts of all 4 on this chip
                    size = size // p.type.shape[0] * 4
                layer += size
    ends = 2 * 64 * 32 * 2 + 64 * 4
    assert mem.weights == 2 * layer + ends


def test_model_that_does_not_fit_says_what_would():
    model = load_model(MODELS_DIR / "qwen3-235b-a22b.toml")
    with pytest.raises(ServeError) as info:
        check_fits(model, M890, default_plan(model, 1), Request())
    text = info.value.format()
    assert "does not fit 1 x m890" in text and "fits on 4 chips (tp=4 pp=1)" in text


def test_cli_does_not_fit_exits_1(capsys):
    assert main(["serve", "qwen3-32b", "--batch", "100", "--prompt", "32768"]) == 1
    err = capsys.readouterr().err
    assert "does not fit" in err and "at most batch 9 fits" in err


def test_plan_that_does_not_divide_is_an_error(capsys):
    assert main(["serve", "qwen3-8b", "--tp", "3"]) == 1
    assert "32 query heads over tp=3" in capsys.readouterr().err


# ---- analytic collectives -------------------------------------------------------------


def test_collectives_alpha_beta_by_hand():
    """Inside a node the many-chip model's direct schedule (compiler/collectives.py): a
    ready handshake, then a reduce-scatter and an all-gather, one alpha each; a send between
    nodes is one NIC message."""
    alpha, beta = 2e-6, 8 * 100e9
    launch, barrier = 2e-6, 100 / 1.5e9   # each collective is a launched kernel whose
    n = 1_000_000                         # phases end in a chip barrier
    assert collective_seconds("all_reduce", n, 8, M890) == pytest.approx(
        3 * alpha + 2 * 7 / 8 * n / beta + launch + 2 * barrier)
    assert collective_seconds("all_to_all", n, 4, M890) == pytest.approx(
        2 * alpha + 3 / 4 * n / beta + launch + barrier)
    assert collective_seconds("send", n, 2, M890, across_nodes=True) == pytest.approx(
        8e-6 + n / 50e9)
    assert collective_seconds("all_reduce", n, 1, M890) == 0.0


# ---- composition ----------------------------------------------------------------------


def test_composition_by_hand():
    model = parse_model(TINY)
    request = Request(batch=2, prompt=8, output=4)
    plan = Plan()
    seconds = {("prefill", "prefill_qkv"): 1e-3, ("prefill", "prefill_attn"): 2e-3,
               ("prefill", "lm_head"): 5e-4, ("decode", "decode_qkv"): 1e-4,
               ("decode", "decode_attn"): 3e-4, ("decode", "lm_head"): 5e-5}
    records = [(use, {"seconds": seconds[(use.phase, use.spec.name)], "param_bytes": {},
                      "output_bytes": [1000]})
               for use in layer_programs(model, plan, request)]
    estimate = compose(model, M890, plan, request, records,
                       analytic_pieces(model, plan, request, M890), price_per_chip_hour=3.6)
    gather = 600 / 1.5e9                              # one HBM latency per embedding lookup
    ttft = 2 * 1e-3 + 2 * 2e-3 + 5e-4 + 8 * 64 * 2 / 4e12 + gather
    tpot = 2 * 1e-4 + 2 * 3e-4 + 5e-5 + 2 * 64 * 2 / 4e12 + gather
    assert estimate.ttft_s == pytest.approx(ttft)
    assert estimate.tpot_s == pytest.approx(tpot)
    assert estimate.tokens_per_s == pytest.approx(2 * 4 / (2 * ttft + 4 * tpot))
    assert estimate.usd_per_million_tokens == pytest.approx(1e-3 / estimate.tokens_per_s * 1e6)
    assert estimate.memory.activations == 1000


def test_serve_json_is_the_sum_of_its_programs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZHENWU_CACHE", str(tmp_path))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.replace("ffn = 96\n", "") + "[moe]\nexperts = 8\ntop_k = 2\n"
                    "expert_ffn = 32\n")
    args = ["serve", str(path), "--chips", "2", "--batch", "2", "--prompt", "16", "--output",
            "4", "--json", "-j", "1"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["plan"], data["chips"]) == ({"tp": 2, "pp": 1, "ep": 2}, 2)
    for phase, key in (("prefill", "ttft_s"), ("decode", "tpot_s")):
        total = sum(p["seconds"] * p["count"] for p in data["programs"] if p["phase"] == phase)
        total += sum(a["seconds"] * a["count"] for a in data["analytic"] if a["phase"] == phase)
        assert data[key] == pytest.approx(total)
    names = {(p["phase"], p["name"]): p["count"] for p in data["programs"]}
    assert names[("decode", "experts")] == 2 and names[("decode", "lm_head")] == 1
    assert all(a["model"] == "analytic" for a in data["analytic"])
    assert any(a["name"].startswith("all-to-all") for a in data["analytic"])
    assert data["tokens_per_s_per_chip"] == pytest.approx(data["tokens_per_s"] / 2)
    # warm: every program comes from the cache, same numbers
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["tpot_s"] == data["tpot_s"]
    assert len(list((tmp_path / "serve").glob("*.json"))) == len(data["programs"])
    # the table: every program and analytic piece with its source
    assert main(args[:-3]) == 0
    table = capsys.readouterr().out
    assert "analytic share" in table and "decode   experts" in table
    rows = [line for line in table.splitlines() if line.startswith(("prefill ", "decode "))]
    assert sum(" simulated " in row for row in rows) == len(data["programs"])
    assert sum(" analytic " in row for row in rows) == len(data["analytic"])


def test_decode_experts_program_reads_only_the_hit_experts():
    model = load_model(MODELS_DIR / "qwen3-235b-a22b.toml")
    plan = default_plan(model, 8)
    shard = gen.Shard(8, 1, None, 16, 1536, 18992)
    # batch 1: 8 experts hit of 128, 1 per chip; batch 64: 128 (1 - (15/16)^64) = 126.8
    assert gen.experts_per_chip(model, shard, 1) == (1, 1)
    assert gen.experts_per_chip(model, shard, 64) == (16, 5)
    uses = {u.spec.name: u for u in layer_programs(model, plan, Request(batch=64))
            if u.phase == "decode"}
    assert "const EH = 16" in uses["experts"].spec.source


def test_sweep_with_compare_gives_one_estimate_per_point(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZHENWU_CACHE", str(tmp_path))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    assert main(["serve", str(path), "--prompt", "16", "--output", "4", "--sweep",
                 "batch=1,2", "--compare", "z810e", "--json", "-j", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["machine"], r["batch"]) for r in rows] == [
        ("m890", 1), ("m890", 2), ("z810e", 1), ("z810e", 2)]
    # the prefill programs are shared by the batch points; the 810E is slower
    assert rows[0]["ttft_s"] == rows[1]["ttft_s"]
    assert rows[2]["tpot_s"] > rows[0]["tpot_s"]
    assert main(["serve", str(path), "--sweep", "chips=1,2"]) == 2


def test_ray_asked_but_missing_is_a_usage_error(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` raises ImportError
    monkeypatch.setenv("ZHENWU_CACHE", str(tmp_path))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    assert main(["serve", str(path), "--prompt", "16", "--output", "4", "--ray"]) == 2
    assert "--ray needs Ray" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["x = " + "[" * 5000 + "]" * 5000, "x = 1" + "0" * 5000],
                         ids=["nested_arrays", "huge_integer"])
def test_tomllib_limits_in_a_model_file_are_diagnostics(text):
    with pytest.raises(ModelError, match="malformed TOML"):
        parse_model(text, "bad.toml")


def test_decode_kernel_breakdown_by_hand():
    from zhenwu.compiler.commands.bench_serving import format_breakdown, kernel_breakdown

    qkv = gen.ProgramSpec("decode_qkv", "qkv source")
    head = gen.ProgramSpec("lm_head", "head source")
    records = {"qkv source": {"kernel_times": [{"name": "matmul_0", "cycles": 10_000,
                                                "hbm_bytes": 2_400_000},
                                               {"name": "row_1", "cycles": 4_000,
                                                "hbm_bytes": 0}]},
               "head source": {"kernel_times": [{"name": "matmul_0", "cycles": 9_000,
                                                 "hbm_bytes": 4_800_000}]}}
    rows = kernel_breakdown([(qkv, 64), (head, 1)], records, M890)
    sustained = 4e12 / 1.5e9 * 0.9                  # 2,400 B/cycle on the M890
    launch = 3000                                    # 2 us at 1.5 GHz
    assert [(r["program"], r["kernel"], r["count"]) for r in rows] == [
        ("decode_qkv", "matmul_0", 64), ("decode_qkv", "row_1", 64), ("lm_head", "matmul_0", 1)]
    assert rows[0]["streaming_cycles"] == pytest.approx(2_400_000 / sustained)   # 1,000
    assert rows[0]["other_cycles"] == pytest.approx(10_000 - 1_000 - launch)
    assert rows[1]["other_cycles"] == pytest.approx(4_000 - launch)
    assert rows[2]["other_cycles"] == pytest.approx(9_000 - 2_000 - launch)
    lines = format_breakdown("m890", rows)
    layer = next(line for line in lines if "a layer" in line).split()
    assert layer[2:] == ["2", "14,000", "1,000", "6,000", "7,000"]
    step = next(line for line in lines if "the step" in line).split()
    assert step[2:] == [f"{64 * 14_000 + 9_000:,}", f"{64 * 1_000 + 2_000:,}",
                        f"{(64 + 64 + 1) * launch:,}", f"{64 * 7_000 + 4_000:,}"]


def test_simulation_record_times_each_kernel(tmp_path, monkeypatch):
    from zhenwu.compiler.commands.serve_simulate import simulate_source

    model = parse_model(TINY)
    shard = gen.Shard(4, 2, 96, None, None, 64)
    spec = gen.qkv(model, shard, gen.decode(1, 8), "bf16", "bf16")
    record = simulate_source(spec.source, spec.name, M890)
    times = record["kernel_times"]
    assert len(times) == record["kernels"]
    # the kernels run one after another: their cycles are the program's but for the
    # cycles before the first kernel starts (the core-id reads)
    assert 0 <= record["cycles"] - sum(k["cycles"] for k in times) < 10
    assert sum(k["hbm_bytes"] for k in times) == (record["hbm_read_bytes"]
                                                 + record["hbm_write_bytes"])


def test_decode_launched_by_program_or_by_kernel(tmp_path, monkeypatch, capsys):
    """`--launch graph` (the default) compiles each decode program as one persistent kernel:
    one launch per program, as engines replay a captured decode step; `--launch kernels`
    launches every kernel. Prefill is launched by kernel either way."""
    monkeypatch.setenv("ZHENWU_CACHE", str(tmp_path))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    base = ["serve", str(path), "--prompt", "16", "--output", "4", "--json", "-j", "1"]
    runs = {}
    for launch in ("graph", "kernels"):
        assert main(base + ["--launch", launch]) == 0
        runs[launch] = json.loads(capsys.readouterr().out)
    graph, kernels = runs["graph"], runs["kernels"]
    assert graph["decode_launch"] == "graph" and kernels["decode_launch"] == "kernels"
    assert graph["ttft_s"] == kernels["ttft_s"]
    for program in graph["programs"]:
        assert program["launches"] == (1 if program["phase"] == "decode" else program["kernels"])
    assert all(p["launches"] == p["kernels"] for p in kernels["programs"])
    assert sum(p["kernels"] > 1 for p in kernels["programs"] if p["phase"] == "decode") >= 2
    # the launches saved are most of the difference (barriers replace them)
    assert graph["tpot_s"] < kernels["tpot_s"]
    with pytest.raises(SystemExit) as exit_:
        main(base[:-3] + ["--launch", "eager"])
    assert exit_.value.code == 2


def test_bench_serving_decode_is_launched_as_serve_launches_it(monkeypatch):
    """The headline decode figure is `zhenwu serve`'s default (persistent programs, one
    launch each); the kernel-by-kernel figure is reported beside it."""
    from zhenwu.compiler.commands import bench_serving

    def fake_simulate_all(jobs, *, persistent=False, **_):
        seconds = 1e-4 if persistent else 2e-4
        return {(source, m.name): {"seconds": seconds, "cycles": 1, "kernels": 3,
                                   "roofline_cycles": 1, "compute_cycles": 1.5e9,
                                   "name": name, "kernel_times": [
                                       {"name": "k", "cycles": 10, "hbm_bytes": 0}]}
                for source, name, m in jobs}

    monkeypatch.setattr(bench_serving, "simulate_all", fake_simulate_all)
    (row,) = bench_serving.measure([M890])
    layers = load_model(MODELS_DIR / "qwen3-32b.toml").layers
    assert row["decode_b1_s"] == pytest.approx((2 * layers + 1) * 1e-4)
    assert row["decode_b1_by_kernel_s"] == pytest.approx((2 * layers + 1) * 2e-4)
    assert row["decode_b1_launch"] == "graph"
    text = bench_serving.format_rows([row])
    assert "launched by kernel" in text and "one launch per program" in text
