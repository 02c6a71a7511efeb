"""`zhenwu bench`: the JSON rows the issue asks for, on the smallest benchmarks of the suite."""

from __future__ import annotations

import json
import subprocess
import sys

from zhenwu.compiler.commands.bench import BENCH_KEYS, available


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zhenwu", "bench", *args], capture_output=True,
                          text=True, timeout=600, check=False)


def test_bench_json_rows_have_every_key():
    run = _bench("gemm_4096_bf16", "eltwise_chain", "--json", "-j", "1")
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    assert [r["name"] for r in rows] == ["gemm_4096_bf16", "eltwise_chain"]
    for row in rows:
        assert set(BENCH_KEYS) <= set(row)
        assert row["efficiency"] == row["roofline_cycles"] / row["cycles"]
        assert row["kernels"] == 1
        assert row["hbm_bytes"] >= row["compulsory_bytes"] > 0
    gemm, chain = rows
    # a lower bound on the DMA traffic: no schedule moves fewer bytes
    assert gemm["io_bound_ratio"] is not None and gemm["io_bound_ratio"] >= 1
    assert gemm["efficiency"] >= 0.85  # the issue's GEMM target, on the simulated cycles
    assert chain["io_bound_ratio"] is None
    # an elementwise chain streams its operands once: exactly its compulsory bytes
    assert chain["hbm_bytes"] == chain["compulsory_bytes"]
    assert "[1/2] gemm_4096_bf16" in run.stderr  # the progress display


def test_parallel_bench_gives_the_same_rows_in_the_same_order():
    one = _bench("softmax_rows", "gemm_skinny_bf16", "--json", "-j", "1")
    two = _bench("softmax_rows", "gemm_skinny_bf16", "--json", "-j", "2")
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    strip = [{k: v for k, v in r.items() if k != "compile_seconds"}
             for r in json.loads(one.stdout)]
    assert strip == [{k: v for k, v in r.items() if k != "compile_seconds"}
                     for r in json.loads(two.stdout)]
    assert "2/2] " in two.stderr


def test_bench_table_and_unknown_names():
    run = _bench("gemm_small_bf16")
    assert run.returncode == 0, run.stderr
    assert "gemm_small_bf16" in run.stdout and "roofline" in run.stdout
    bad = _bench("no_such_benchmark")
    assert bad.returncode == 2
    assert "unknown benchmark 'no_such_benchmark'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_suite_covers_what_the_issue_lists():
    names = set(available())
    for prefix in ("gemm_4096_bf16", "gemm_4096_fp8", "gemm_small", "bmm", "resnet50_conv",
                   "softmax", "layernorm", "rmsnorm", "eltwise", "attention_causal_1024",
                   "attention_causal_32768", "mlp", "qwen_block"):
        assert any(n.startswith(prefix) for n in names), prefix
