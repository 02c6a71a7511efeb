"""Sharded programs: annotations, propagation (which collectives), per-chip runs against the
one-chip reference, and the diagnostics for bad shardings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zhenwu.compiler.backend.pipeline import CompileOptions
from zhenwu.compiler.cli import main
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.inputs import prepare_inputs
from zhenwu.compiler.reference import evaluate
from zhenwu.compiler.shard import compile_spmd, parse_mesh, resolve_mesh, run_spmd, shard_function
from zhenwu.isa.errors import Diagnostic, UsageError
from zhenwu.isa.machine import load_machine

M890 = load_machine("m890")

MLP = """
fn main(x: bf16[T, D], w1: bf16[D, F@tp], b1: f32[F@tp], w2: bf16[F@tp, D],
        b2: f32[D]) -> f32[T, D] {
    h = relu(x @ w1 + b1)
    return h @ w2 + b2
}
"""


def _load(text: str, tmp_path, **shapes):
    path = tmp_path / "prog.zt"
    path.write_text(text)
    return load_program(str(path), shapes=shapes)


def _run(fn, mesh_text: str, seed: int = 0):
    mesh = parse_mesh(mesh_text)
    spmd = shard_function(fn, mesh)
    compiled = compile_spmd(spmd, M890, CompileOptions(), mesh.chips)
    inputs = prepare_inputs(fn, {}, seed, {})
    outputs, result = run_spmd(compiled, M890, inputs)
    return spmd, compiled, outputs, evaluate(fn, inputs), result


def _kinds(spmd) -> list[str]:
    return [op.kind for op in spmd.collectives]


def test_megatron_mlp_is_one_all_reduce_and_matches(tmp_path):
    fn = _load(MLP, tmp_path, T=32, D=64, F=128)
    spmd, compiled, outputs, want, result = _run(fn, "tp=8")
    assert _kinds(spmd) == ["all_reduce"]
    assert [str(s) for s in spmd.param_specs] == ["[_, _]", "[_, tp]", "[tp]", "[tp, _]",
                                                  "[_]"]
    # each chip holds its 128/8 columns of w1
    assert spmd.fn.params[1].type.shape == (64, 16)
    np.testing.assert_allclose(outputs[0], want[0], rtol=2e-2, atol=2e-2)
    assert compiled.collectives[0][1:] == ("oneshot", 32 * 64 * 4)  # 8 KiB: latency-bound
    assert len(result.report.chips) == 8 and result.report.link_bytes > 0


def test_data_parallel_needs_no_collective(tmp_path):
    text = """
fn main(x: f32[B@dp, 64], w1: f32[64, 128], w2: f32[128, 16]) -> f32[B@dp, 16] {
    return softmax(relu(x @ w1) @ w2, axis=-1)
}
"""
    fn = _load(text, tmp_path, B=32)
    spmd, _, outputs, want, _ = _run(fn, "dp=4")
    assert _kinds(spmd) == []
    np.testing.assert_allclose(outputs[0], want[0], rtol=1e-5, atol=1e-6)


def test_two_axes_reshards_and_scalar_reduction(tmp_path):
    text = """
fn main(x: f32[B@dp, D], w1: f32[D, F@tp],
        w2: f32[F@tp, D]) -> (f32[B@dp, D@tp], f32[B, D], f32[]) {
    y = relu(x @ w1) @ w2
    return y, y, sum(y * y)
}
"""
    fn = _load(text, tmp_path, B=16, D=32, F=64)
    spmd, _, outputs, want, _ = _run(fn, "dp=2,tp=4")
    assert sorted(_kinds(spmd)) == ["all_gather", "all_reduce", "all_reduce", "shard_slice"]
    for got, ref in zip(outputs, want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_all_to_all_and_reduce_scatter(tmp_path):
    text = """
fn main(x: f32[B@tp, D], w: f32[D@tp, E]) -> (f32[B, D@tp], f32[B, E@tp]) {
    return x * 2.0, x @ w
}
"""
    fn = _load(text, tmp_path, B=16, D=32, E=8)
    spmd, _, outputs, want, _ = _run(fn, "tp=4")
    assert _kinds(spmd) == ["all_to_all", "all_to_all", "reduce_scatter"]
    for got, ref in zip(outputs, want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_qwen_block_tensor_parallel_cli(capsys):
    args = ["run", "samples/sharded/qwen_block_tp.zt", "--chips", "4", "--mesh", "tp=4",
            "--shape", "S=16", "--shape", "D=64", "--shape", "F=128", "--check"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "check out0" in out and " ok" in out
    assert out.count("all_reduce(tp") == 2
    assert main(["ir", "samples/sharded/qwen_block_tp.zt", "--chips", "4", "--shape", "S=16",
                 "--shape", "D=64", "--shape", "F=128"]) == 0
    ir = capsys.readouterr().out
    assert "mesh tp=4" in ir and "param wq: bf16[64,1024] sharded [_, tp]" in ir
    assert "// collectives: all_reduce(tp), all_reduce(tp)" in ir


def _diagnostic(text: str, tmp_path, mesh: str, chips: int, **shapes) -> str:
    fn = _load(text, tmp_path, **shapes)
    with pytest.raises((Diagnostic, UsageError)) as info:
        shard_function(fn, resolve_mesh(fn, mesh, chips))
    return info.value.format()


def test_bad_shardings_are_located_diagnostics(tmp_path):
    message = _diagnostic(MLP, tmp_path, "tp=3", 3, T=8, D=16, F=32)
    assert "prog.zt:2:36: error: dim 1 of parameter 'w1' bf16[16,32] (32) is not divisible " \
        "by mesh axis 'tp' (3 chips)" in message
    assert "^" in message
    message = _diagnostic(MLP.replace("F@tp]", "F@tq]", 1), tmp_path, "tp=2", 2, T=8, D=16,
                          F=32)
    assert "'tq' is not an axis of the mesh (tp=2)" in message
    with pytest.raises(Diagnostic, match="mesh axis 'tp' splits two dims of one type"):
        _load(MLP.replace("w1: bf16[D, F@tp]", "w1: bf16[D@tp, F@tp]"), tmp_path, T=8, D=16,
              F=32)
    fn = _load(MLP, tmp_path, T=8, D=16, F=32)
    with pytest.raises(UsageError, match="--mesh tp=8 needs 8 chips, more than --chips 4"):
        resolve_mesh(fn, "tp=8", 4)
    with pytest.raises(UsageError, match="covers 2 chips, but --chips is 4"):
        resolve_mesh(fn, "tp=2", 4)
    assert resolve_mesh(fn, None, 4).axes == (("tp", 4),)


def test_per_chip_share_must_fit_hbm(tmp_path, capsys):
    text = """
fn main(x: bf16[8, 16], w: bf16[16, N@tp]) -> bf16[8, N@tp] {
    return x @ w
}
"""
    path = tmp_path / "big.zt"
    path.write_text(text)
    # w: 16 x 10^10 bf16 = 320 GB over 2 chips, 160 GB each, and the result 80 GB each
    status = main(["run", str(path), "--chips", "2", "--mesh", "tp=2", "--shape",
                   "N=10000000000", "--timing-only"])
    err = capsys.readouterr().err
    assert status == 1
    assert "each chip needs 240 GB" in err and "but m890 has 144 GB" in err
    assert "big.zt:2:25: error" in err


FAMILY = """
fn main(x: f32[B{x0}, D{x1}], w: f32[D{w0}, F{w1}], v: f32[F{v0}, D{v1}],
        b: f32[F{b0}]) -> (f32[B{r0}, D{r1}], f32[B, F]) {{
    h = tanh(x @ w + b)
    return h @ v + x, exp(h) * 0.5
}}
"""


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["", "@a", "@b"]), min_size=9, max_size=9),
       st.sampled_from(["a=2", "a=2,b=2", "b=2,a=2"]))
def test_random_shardings_match_the_reference(tmp_path, marks, mesh):
    names = ["x0", "x1", "w0", "w1", "v0", "v1", "b0", "r0", "r1"]
    picks = dict(zip(names, marks))
    for first, second in (("x0", "x1"), ("w0", "w1"), ("v0", "v1"), ("r0", "r1")):
        if picks[first] and picks[first] == picks[second]:
            picks[second] = ""  # an axis splits one dim of a type
    if "b=" not in mesh:
        picks = {k: "" if v == "@b" else v for k, v in picks.items()}
    fn = _load(FAMILY.format(**picks), tmp_path, B=8, D=8, F=16)
    _, _, outputs, want, _ = _run(fn, mesh, seed=3)
    for got, ref in zip(outputs, want):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzer_random_programs_with_random_shardings(data):
    """The fuzzer's random programs, with random dims split over a 2-chip mesh, match the
    one-chip reference evaluator."""
    import tempfile
    from pathlib import Path

    from zhenwu.compiler.check import output_tolerance, relative_error
    from zhenwu.compiler.fuzz.generator import HypothesisChooser, add_shardings, generate_program

    chooser = HypothesisChooser(data)
    text = add_shardings(generate_program(chooser, max_steps=3, max_rank=3), chooser,
                         {"tp": 2})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.zt"
        path.write_text(text)
        fn = load_program(str(path))
    _, _, outputs, want, _ = _run(fn, "tp=2", seed=1)
    for got, ref, value in zip(outputs, want, fn.outputs):
        assert relative_error(got, ref) <= output_tolerance(fn, value), text


def test_pinned_sharding_makes_a_reduce_scatter(tmp_path):
    text = """
fn main(x: f32[B, D], w1: f32[D, F@tp], w2: f32[F@tp, D]) -> f32[B, D] {
    y = shard(relu(x @ w1) @ w2, "tp, _")
    return y * 2.0
}
"""
    fn = _load(text, tmp_path, B=16, D=32, F=64)
    spmd, _, outputs, want, _ = _run(fn, "tp=4")
    assert _kinds(spmd) == ["reduce_scatter", "all_gather"]
    np.testing.assert_allclose(outputs[0], want[0], rtol=1e-5, atol=1e-5)
    # one chip: the pin changes nothing
    from zhenwu.compiler.backend.pipeline import compile_function
    from zhenwu.runtime import run_program

    compiled = compile_function(fn, M890)
    inputs = prepare_inputs(fn, {}, 0, {})
    result = run_program(compiled.program, M890, compiled.program_inputs(inputs))
    np.testing.assert_allclose(compiled.graph_outputs(result)[0], want[0], rtol=1e-5)
    with pytest.raises(Diagnostic, match=r"shard\(\): 1 entries for f32\[16,32\], which has 2"):
        _load(text.replace('"tp, _"', '"tp"'), tmp_path, B=16, D=32, F=64)
    with pytest.raises(Diagnostic, match="'tq' is not an axis of the mesh"):
        shard_function(_load(text.replace('"tp, _"', '"tq, _"'), tmp_path, B=16, D=32, F=64),
                       parse_mesh("tp=4"))


def test_mesh_declared_in_the_file(tmp_path, capsys):
    path = tmp_path / "decl.zt"
    path.write_text("""mesh dp = 2, tp = 2

fn main(x: f32[B@dp, D], w1: f32[D, F@tp], w2: f32[F@tp, D]) -> f32[B@dp, D] {
    return relu(x @ w1) @ w2
}
""")
    shapes = ["--shape", "B=8", "--shape", "D=16", "--shape", "F=32"]
    assert main(["run", str(path), "--check", *shapes]) == 0
    out = capsys.readouterr().out
    assert "mesh dp=2,tp=2 on 4 chips: collectives all_reduce(tp" in out and " ok" in out
    assert main(["run", str(path), "--chips", "8", *shapes]) == 1
    assert "decl.zt:1:1: error: the program's mesh dp=2,tp=2 has 4 chips, but --chips is 8" \
        in capsys.readouterr().err
    path.write_text("mesh tp = 0\nfn main(x: f32[4]) -> f32[4] {\n    return x\n}\n")
    assert main(["run", str(path)]) == 1
    assert "mesh axis 'tp' needs a positive integer size" in capsys.readouterr().err


def test_parameters_returned_as_results(tmp_path):
    text = """
fn main(x: f32[8@tp, 4], y: f32[8, 4]) -> (f32[8@tp, 4], f32[8, 4], f32[8, 4]) {
    return x, x, y
}
"""
    fn = _load(text, tmp_path)
    spmd, _, outputs, want, _ = _run(fn, "tp=2")
    assert _kinds(spmd) == ["all_gather"]
    for got, ref in zip(outputs, want):
        np.testing.assert_array_equal(got, ref)


def test_an_op_whose_split_does_not_hold_runs_replicated(tmp_path, capsys):
    """A batch dim broadcast from 1 against a split one (the fuzzer's attention forms): the
    product cannot keep the split, so it runs on gathered inputs and still matches."""
    path = tmp_path / "bcast.zt"
    path.write_text("fn main(p4: f32[1, 8@tp], p5: f32[1, 4]) -> f32[1, 2, 1, 1] {\n"
                    "    k = broadcast_to(reshape(p5, [1, 1, 1, 4]), [1, 2, 1, 4])\n"
                    "    return reshape(p4, [1, 2, 1, 4]) @ transpose(k, [0, 1, 3, 2]) * 0.5\n"
                    "}\n")
    assert main(["run", str(path), "--mesh", "tp=2", "--check"]) == 0
    out = capsys.readouterr().out
    assert "all_gather(tp" in out and " ok" in out


# ---- backward hints --------------------------------------------------------------------


def test_backward_hint_turns_an_all_reduce_into_a_reduce_scatter(tmp_path, capsys):
    """gelu(x @ w1) with x split on the contracted dim and the result split on F: forward
    alone adds the partial sums up everywhere (all-reduce) and runs gelu on every chip; the
    result's sharding, carried back, makes it a reduce-scatter and gelu runs on 1/4."""
    from zhenwu.compiler.shard.propagate import _propagate, traffic

    text = """
fn main(x: f32[T, D@tp], w1: f32[D, F]) -> f32[T, F@tp] {
    return gelu(x @ w1)
}
"""
    fn = _load(text, tmp_path, T=16, D=32, F=64)
    mesh = parse_mesh("tp=4")
    forward = _propagate(fn, mesh, {})
    assert _kinds(forward) == ["shard_slice", "all_reduce", "shard_slice"]
    spmd, _, outputs, want, _ = _run(fn, "tp=4")
    assert _kinds(spmd) == ["shard_slice", "reduce_scatter"]
    gelu = next(op for op in spmd.fn.ops if op.kind == "gelu")
    assert gelu.result.type.shape == (16, 16)
    # bytes each chip sends: all-reduce 2 x 3/4 of 4 KiB, reduce-scatter 3/4 of it
    assert traffic(forward) == (2 * 3 / 4 * 16 * 64 * 4, 1)
    assert traffic(spmd) == (3 / 4 * 16 * 64 * 4, 1)
    np.testing.assert_allclose(outputs[0], want[0], rtol=1e-5, atol=1e-5)
    path = tmp_path / "prog.zt"
    assert main(["ir", str(path), "--chips", "4", "--mesh", "tp=4", "--shape", "T=16",
                 "--shape", "D=32", "--shape", "F=64"]) == 0
    assert "// collectives: shard_slice(tp), reduce_scatter(tp)" in capsys.readouterr().out


def test_backward_hint_splits_the_work_of_unannotated_parameters(tmp_path):
    """Only the result is split: the matmul, bias and relu run on each chip's columns (a
    local slice of the replicated weights), no collective moves data."""
    text = """
fn main(x: f32[T, D], w: f32[D, F], b: f32[F]) -> f32[T, F@tp] {
    return relu(x @ w + b)
}
"""
    fn = _load(text, tmp_path, T=16, D=32, F=64)
    spmd, _, outputs, want, _ = _run(fn, "tp=4")
    assert set(_kinds(spmd)) == {"shard_slice"}
    matmul = next(op for op in spmd.fn.ops if op.kind == "matmul")
    assert matmul.result.type.shape == (16, 16)
    np.testing.assert_allclose(outputs[0], want[0], rtol=1e-5, atol=1e-5)


def test_backward_hints_refused_where_they_cost_traffic_or_uses_disagree(tmp_path):
    """A hint that would make an operand split across its other operand's axis costs an
    all-to-all more than forward: forward wins. A value also returned replicated gets no
    hint (its uses disagree)."""
    from zhenwu.compiler.shard.propagate import _hints, _propagate, traffic

    text = """
fn main(x: f32[T, F], w: f32[T@tp, F]) -> f32[T, F@tp] {
    v = x * 2.0
    return v + w
}
"""
    fn = _load(text, tmp_path, T=16, F=64)
    mesh = parse_mesh("tp=4")
    hinted = _propagate(fn, mesh, _hints(fn, mesh))
    forward = _propagate(fn, mesh, {})
    assert traffic(hinted) > traffic(forward)
    spmd, _, outputs, want, _ = _run(fn, "tp=4")
    assert [k for k in _kinds(spmd) if k != "shard_slice"] == ["all_to_all"]
    np.testing.assert_allclose(outputs[0], want[0], rtol=1e-6)
    text = """
fn main(x: f32[T, F], w: f32[F, F]) -> (f32[T, F@tp], f32[T, F]) {
    v = x @ w
    return relu(v), v
}
"""
    fn = _load(text, tmp_path, T=16, F=64)
    hints = _hints(fn, mesh)
    v = next(op for op in fn.ops if op.kind == "matmul")
    assert v.id not in hints
    spmd, _, outputs, want, _ = _run(fn, "tp=4")
    for got, ref in zip(outputs, want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
