"""`zhenwu validate`: the shipped measurements, the operator programs, the host-time fit."""

from __future__ import annotations

import pytest
from zhenwu.compiler.commands.validate import (
    VALIDATION_DIR,
    _best_host,
    load_points,
    simulate,
    source,
)


def test_the_measurements_ship_with_the_project():
    points = load_points(VALIDATION_DIR / "a100")
    assert len(points) == 84
    assert {p["op"] for p in points} == {"matmul", "softmax", "layernorm", "gelu"}
    assert all(p["measured"] > 0 and p["dtype"] == "f16" for p in points)
    assert (VALIDATION_DIR / "a100" / "host.toml").is_file()


@pytest.mark.parametrize("op, m, n, k", [("matmul", 256, 128, 128), ("softmax", 64, 256, 0),
                                         ("layernorm", 64, 256, 0), ("gelu", 65536, 0, 0)])
def test_each_operator_compiles_and_runs_on_the_a100(op, m, n, k):
    assert "fn main" in source(op, m, n, k, "f16")
    seconds = simulate({"op": op, "M": m, "N": n, "K": k, "dtype": "f16"}, "a100")
    assert 0 < seconds < 1e-3


def test_host_time_fit_is_the_weighted_median():
    # minimise sum |s + c - m| / m: with equal measured times, the plain median of m - s
    assert _best_host([1.0, 2.0, 3.0], [10.0, 10.0, 10.0]) == 8.0
    assert _best_host([5.0], [4.0]) == 0.0  # never negative
