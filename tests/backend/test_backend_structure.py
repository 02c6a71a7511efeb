"""Structure of the compiled code: kernel counts at -O0, views without kernels, compact code
for big shapes, HBM reuse, compile-time diagnostics for programs that cannot fit, and the
`compile`/`run` commands."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from backend_helpers import compile_and_run, machine
from zhenwu.compiler.backend.hbm import live_ranges, peak_bytes
from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
from zhenwu.compiler.cli import main
from zhenwu.compiler.frontend import load_program
from zhenwu.isa.errors import CompileError

# ops that make no kernel at -O0: DMA views, and scalar constants used as immediates
VIEW_OPS = ("reshape", "transpose", "slice", "broadcast_to", "constant")


def _compile(source: str, name: str = "m890", **shapes):
    fn = load_program("t.zt", text=source, shapes=shapes)
    return compile_function(fn, machine(name), CompileOptions(opt_level=0))


def test_one_kernel_per_non_view_op():
    compiled = _compile(
        "fn main(x: f32[8, 6], w: f32[6, 4]) -> f32[4, 8] {\n"
        "    y = transpose(relu(x @ w)[:, None, :], [2, 1, 0])\n"
        "    return reshape(y, [4, 8]) * 2.0\n}\n")
    kinds = [op.kind for op in compiled.graph.ops]
    assert compiled.kernel_count == sum(kind not in VIEW_OPS for kind in kinds)
    assert compiled.kernel_count == 3  # matmul, relu, mul: the shape ops are DMA views


def test_output_that_is_a_view_is_copied_once():
    compiled = _compile("fn main(x: f32[5, 3]) -> (f32[3, 5], f32[5, 3]) {\n"
                        "    return transpose(x), x\n}\n")
    assert compiled.kernel_count == 2
    assert [t.role for t in compiled.kernels.tensors] == ["in", "out", "out"]


def test_big_gemm_code_is_compact():
    compiled = _compile("fn main(a: bf16[4096, 4096], b: bf16[4096, 4096]) -> bf16[4096, 4096]"
                        " {\n    return a @ b\n}\n")
    assert compiled.kernel_count == 1
    assert len(compiled.program.instructions) < 100
    (nest,) = compiled.kernels.kernels[0].nests
    assert nest.parallel_tiles >= machine().cores


def test_tiles_fit_the_machine():
    for name in ("m890", "z810e"):
        target = machine(name)
        compiled = _compile(
            "fn main(x: f32[B, 3000], w: f32[3000, 1000]) -> f32[B, 1000] {\n"
            "    return softmax(x @ w, axis=-1)\n}\n", name, B=300)
        for kernel in compiled.kernels.kernels:
            for nest in kernel.nests:
                for level, size in (("L1", target.l1_bytes), ("ACC", target.acc_bytes)):
                    top = max((b.offset + b.footprint for b in nest.buffers
                               if b.level == level), default=0)
                    assert top <= size


def test_hbm_reuses_dead_intermediates():
    compiled = _compile("fn main(x: f32[64, 64]) -> f32[64, 64] {\n"
                        "    return exp(exp(exp(exp(x))))\n}\n")
    temps = [t for t in compiled.kernels.tensors if t.role == "temp"]
    assert len(temps) == 3
    assert len({t.address for t in temps}) == 2  # the third reuses the first
    ranges = live_ranges(compiled.kernels)
    by_address = {}
    for t in temps:
        by_address.setdefault(t.address, []).append(ranges[t.name])
    for spans in by_address.values():  # tensors sharing memory are never live together
        spans.sort()
        assert all(a[1] < b[0] for a, b in pairwise(spans))
    assert peak_bytes(compiled.kernels) < 6 * 64 * 64 * 4


def test_tensor_larger_than_hbm_is_a_diagnostic_at_its_op():
    source = ("fn main(x: f32[4]) -> f32[300000, 300000] {\n"
              "    return zeros([300000, 300000]) + x[0:1]\n}\n")
    with pytest.raises(CompileError) as info:
        _compile(source)
    assert info.value.span is not None and info.value.span.line == 2
    assert "does not fit in HBM" in info.value.message


def test_input_larger_than_hbm_is_a_diagnostic(capsys):
    source = "fn main(x: f32[300000, 300000]) -> f32[300000, 300000] {\n    return -x\n}\n"
    with pytest.raises(CompileError, match="input 'x'") as info:
        _compile(source)
    span = info.value.span  # points at the parameter's declaration
    assert (span.line, span.col) == (1, 9) and "^" in info.value.format()


def test_cli_compile_emits_every_stage(tmp_path):
    src = tmp_path / "p.zt"
    src.write_text("fn main(x: f32[B, 7]) -> f32[B] {\n    return sum(x * x, axis=1)\n}\n")
    for emit, marker in (("graph", "reduce_sum"), ("kernels", "nest ["), ("asm", ".kernel")):
        out = tmp_path / ("p.s" if emit == "asm" else f"p.{emit}")
        assert main(["compile", str(src), "--shape", "B=3", "--emit", emit, "-o", str(out),
                     "-O0"]) == 0
        assert marker in out.read_text()
    assert main(["compile", str(src), "--shape", "B=3", "--emit", "bin", "-o",
                 str(tmp_path / "p.bin")]) == 0
    # the emitted assembly runs as it is
    assert main(["run", str(tmp_path / "p.s"), "-o", str(tmp_path / "a.npz")]) == 0
    assert main(["run", str(tmp_path / "p.bin")]) == 0


def test_cli_run_check_report_trace(tmp_path, capsys):
    src = tmp_path / "p.zt"
    src.write_text("fn main(a: bf16[B, 40], b: bf16[40, 24]) -> f32[B, 24] {\n"
                   "    return cast(a @ b, f32)\n}\n")
    report, trace, out = tmp_path / "r.json", tmp_path / "t.json", tmp_path / "o.npz"
    status = main(["run", str(src), "--shape", "B=5", "--check", "--report", str(report),
                   "--trace", str(trace), "-o", str(out), "-O0"])
    assert status == 0
    text = capsys.readouterr().out
    assert "out0: f32 [5, 24]" in text and "cycles" in text and "ok" in text
    data = json.loads(report.read_text())
    assert data["kernels"] == 2
    assert data["roofline_cycles"] > 0
    assert data["efficiency"] == pytest.approx(data["roofline_cycles"] / data["cycles"])
    assert json.loads(trace.read_text())
    import numpy as np

    assert np.load(out)["out0"].shape == (5, 24)


def test_cli_check_failure_exits_1(tmp_path, monkeypatch, capsys):
    from zhenwu.compiler.commands import run_compiled

    src = tmp_path / "p.zt"
    src.write_text("fn main(x: f32[6]) -> f32[6] {\n    return exp(x)\n}\n")
    monkeypatch.setattr(run_compiled, "check_outputs",
                        lambda fn, got, want, inputs: [(False, "max relative error 1")])
    assert main(["run", str(src), "--check"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_same_program_twice_gives_the_same_asm_and_cycles():
    source = "fn main(x: f32[33, 65]) -> f32[33] {\n    return max(x, axis=1)\n}\n"
    (_, first, r1, _), (_, second, r2, _) = compile_and_run(source), compile_and_run(source)
    assert first.asm_text == second.asm_text
    assert r1.report.cycles == r2.report.cycles


def test_single_buffered_accumulator_is_race_free():
    """On a machine whose ACC holds one accumulator tile of the MX shape and not two, the
    plain product's tile (the GEMM chooser's) has a single accumulator (stores no longer
    overlap the next tile); several tiles per core reuse it, in order."""
    from dataclasses import replace

    import numpy as np
    from zhenwu.compiler.check import relative_error
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.runtime import run_program

    base = machine()
    one_tile = base.mx_m * base.mx_n * 4   # f32
    target = replace(base, cores=2, acc_bytes=one_tile + one_tile // 2, hbm_bandwidth=1.5e9 * 64)
    fn = load_program("t.zt", text="fn main(a: bf16[200, 300], b: bf16[300, 300]) -> "
                                   "f32[200, 300] {\n    return cast(a @ b, f32)\n}\n")
    compiled = compile_function(fn, target, CompileOptions(opt_level=0))
    nest = compiled.kernels.kernels[0].nests[0]
    assert nest.buffer("c").copies == 1 and nest.parallel_tiles > target.cores
    inputs = prepare_inputs(fn, {}, 0)
    result = run_program(compiled.program, target, compiled.program_inputs(inputs))
    want = evaluate(fn, inputs)[0]
    # a bf16 product (then cast): bf16 tolerance
    assert relative_error(np.asarray(compiled.graph_outputs(result)[0]), want) <= 2e-2


def test_qwen_block_at_o2_takes_under_half_the_cycles_of_o0():
    # the target, on the sample block (GQA, RoPE, q/k norms, SwiGLU) at 256 tokens;
    # `zhenwu bench qwen_block -O 0` against -O2 measures it on the 2048-token bench block
    from pathlib import Path

    import numpy as np
    from zhenwu.runtime import run_program

    path = Path(__file__).resolve().parents[2] / "samples" / "qwen_block.zt"
    fn = load_program(str(path), shapes={"S": 256})
    cycles, kernels = {}, {}
    for level in (0, 2):
        compiled = compile_function(fn, machine(), CompileOptions(opt_level=level))
        inputs = {t.name: np.broadcast_to(np.zeros((), np.float32), tuple(t.shape))
                  for t in compiled.program.inputs}
        report = run_program(compiled.program, machine(), inputs, timing_only=True).report
        cycles[level], kernels[level] = report.cycles, compiled.kernel_count
    assert 2 * cycles[2] <= cycles[0]
    assert kernels[2] < kernels[0] // 2
