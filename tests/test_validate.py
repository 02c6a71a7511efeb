"""`zhenwu validate`: the shipped measurements, the operator programs, the host-time fit."""

from __future__ import annotations

import pytest
from zhenwu.compiler.commands.validate import (
    VALIDATION_DIR,
    _best_host,
    load_points,
    multipass_rows,
    predict,
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


def test_host_time_fit_finds_the_time_before_and_beside_the_kernel():
    """A call costs the host's time before the launch plus the longer of the kernel and the
    host's time after it: the fit finds both when the data has them (20 us before, 20 us
    after: the shortest kernel hides behind the host, the others do not)."""
    us = 1e-6
    before, after = _best_host([1 * us, 50 * us, 100 * us], [40 * us, 70 * us, 120 * us])
    assert before == pytest.approx(20 * us) and after == pytest.approx(20 * us)
    assert predict(1 * us, before, after) == pytest.approx(40 * us)
    # times that grow with the kernel's from the first: only the time before the launch
    # shows (the smallest time after it that fits, 0)
    assert _best_host([11.0, 12.0, 13.0], [19.0, 20.0, 21.0]) == (8.0, 0.0)
    assert _best_host([5.0], [4.0])[0] == 0.0  # never negative


def test_softmax_is_simulated_as_the_measured_kernel_ran_it():
    """PyTorch reads a softmax row once when it has at most 1,024 elements (a warp per row),
    three times otherwise (a block per row): the validation compiles the same passes."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.machine import load_machine

    def point(op, n, dtype="f16"):
        return {"op": op, "M": 64, "N": n, "K": 0, "dtype": dtype}

    assert not multipass_rows(point("softmax", 1024))
    assert multipass_rows(point("softmax", 2048))
    assert multipass_rows(point("softmax", 1024, "f32")) is False  # 4,096 bytes: still a warp
    assert not multipass_rows(point("layernorm", 4096)) and not multipass_rows(point("gelu", 0))
    machine = load_machine("a100")
    for n, passes in ((1024, 1), (2048, 3)):
        fn = load_program("<softmax>", text=source("softmax", 64, n, 0, "f16"))
        compiled = compile_function(fn, machine, CompileOptions(
            multipass_rows=multipass_rows(point("softmax", n))))
        (kernel,) = compiled.kernels.kernels
        assert len(kernel.nests) == passes
