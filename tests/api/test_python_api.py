"""The Python API (`import zhenwu`): compile, run, reference, errors (issue 11)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import zhenwu

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "samples" / "mlp.zt"


def mlp_inputs(batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    shapes = {"x": (batch, 784), "w1": (784, 256), "b1": (256,), "w2": (256, 10), "b2": (10,)}
    return {name: rng.standard_normal(shape, dtype=np.float32) * 0.1
            for name, shape in shapes.items()}


def test_import_zhenwu_from_outside_the_checkout_runs_the_mlp(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, zhenwu
        rng = np.random.default_rng(0)
        shapes = {{"x": (4, 784), "w1": (784, 256), "b1": (256,), "w2": (256, 10), "b2": (10,)}}
        inputs = {{n: rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}}
        prog = zhenwu.compile({str(MLP)!r}, shapes={{"B": 4}}, machine="m890", opt=2)
        outputs, report = prog.run(**inputs)
        want = zhenwu.reference({str(MLP)!r}, **inputs)
        assert len(outputs) == 1 and outputs[0].shape == (4, 10), outputs
        assert outputs[0].dtype == np.float32
        assert np.allclose(outputs[0], want[0], atol=2e-2), abs(outputs[0] - want[0]).max()
        assert np.allclose(outputs[0].sum(axis=-1), 1, atol=1e-3)
        assert report.cycles > 0 and prog.kernel_count == 3
        assert "MMA" in prog.asm and "func @main" in prog.graph and prog.kernels
        print("cycles", report.cycles)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("cycles ")
    assert zhenwu.__file__.startswith(str(ROOT))  # the package of this checkout


def test_compile_run_and_reference_agree_in_process():
    inputs = mlp_inputs()
    prog = zhenwu.compile(str(MLP), shapes={"B": 4})
    outputs, report = prog.run(inputs)              # a dict works as well as keywords
    want = zhenwu.reference(MLP, **inputs)          # a Path works as well as a str
    np.testing.assert_allclose(outputs[0], want[0], atol=2e-2)
    np.testing.assert_array_equal(prog.reference(inputs)[0], want[0])
    assert report.efficiency <= 1.0 and report.roofline_seconds > 0
    assert prog.params[0] == ("x", "bf16", (4, 784)) and prog.outputs == [("f32", (4, 10))]


def test_source_text_and_symbolic_dims_from_input_shapes():
    source = "fn main(x: f32[N, 16]) -> f32[N, 16] { return relu(x) * 2.0 }"
    x = np.linspace(-1, 1, 32 * 16, dtype=np.float32).reshape(32, 16)
    prog = zhenwu.compile(source, input_shapes={"x": x.shape})
    (got,), _ = prog.run(x=x)
    np.testing.assert_array_equal(got, np.maximum(x, 0) * 2)
    (want,) = zhenwu.reference(source, x=x)
    np.testing.assert_array_equal(want, got)


def test_timing_only_needs_no_inputs_and_gives_the_same_cycles():
    prog = zhenwu.compile(MLP, shapes={"B": 4})
    outputs, timed = prog.run(timing_only=True)
    assert outputs == [] and timed.timing_only
    _, functional = prog.run(mlp_inputs())
    assert timed.cycles == functional.cycles


def test_graph_ir_text_compiles(tmp_path):
    from zhenwu.compiler.graph.printer import print_function

    prog = zhenwu.compile(MLP, shapes={"B": 2})
    ir = tmp_path / "mlp.ir"
    ir.write_text(print_function(prog.function))  # the checked IR, as `zhenwu ir` prints it
    assert zhenwu.compile(ir).asm == prog.asm
    assert zhenwu.compile(ir.read_text()).asm == prog.asm


@pytest.mark.parametrize("call, error, text", [
    (lambda: zhenwu.compile(MLP), zhenwu.Diagnostic, "symbolic dim 'B' is not bound"),
    (lambda: zhenwu.compile("fn main(x: f32[4]) -> f32[4] { return relu(x }"),
     zhenwu.Diagnostic, "<string>:1:46: error: unexpected '}'"),
    (lambda: zhenwu.compile(MLP, shapes={"B": 2}, opt=3), zhenwu.UsageError, "opt=3"),
    (lambda: zhenwu.compile(MLP, shapes={"B": 2}, machine="m999"), zhenwu.MachineError, "m999"),
    (lambda: zhenwu.compile(MLP, shapes={"B": 2}, disable_passes="cse,nope"),
     zhenwu.UsageError, "--disable-pass nope: no such pass"),
    (lambda: zhenwu.compile("no/such/file.zt"), zhenwu.InputError, "no such file"),
    (lambda: zhenwu.compile(MLP, shapes={"B": 2}).run(x=np.zeros((2, 784))),
     zhenwu.InputError, "missing inputs: w1 (bf16[784,256])"),
    (lambda: zhenwu.compile(MLP, shapes={"B": 2}).run(x=np.zeros((3, 784)), seed=0),
     zhenwu.InputError, "input 'x'"),
    (lambda: zhenwu.reference(MLP, shapes={"B": 2}, y=np.zeros(3)), zhenwu.InputError,
     "unknown input 'y'"),
])
def test_errors_are_the_zhenwu_family_with_the_cli_messages(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, zhenwu.ZhenwuError)
    assert text in str(info.value)


def test_error_message_is_the_one_the_cli_prints(tmp_path, capsys):
    from zhenwu.compiler.cli import main

    bad = tmp_path / "bad.zt"
    bad.write_text("fn main(x: f32[4]) -> f32[4] {\n    return rleu(x)\n}\n")
    with pytest.raises(zhenwu.Diagnostic) as info:
        zhenwu.compile(bad)
    assert main(["run", str(bad)]) == 1
    assert capsys.readouterr().err.strip() == str(info.value).strip()


def test_missing_inputs_are_seeded_random_only_when_asked():
    prog = zhenwu.compile("fn main(x: f32[16]) -> f32[16] { return x * 2.0 }")
    with pytest.raises(zhenwu.InputError):
        prog.run()
    first, _ = prog.run(seed=3)
    second, _ = prog.run(seed=3)
    np.testing.assert_array_equal(first[0], second[0])


def test_exports():
    for name in ("ZhenwuError", "Diagnostic", "InputError", "CompileError", "ChipTrap",
                 "UsageError", "MachineError", "AssemblyError", "EncodingError"):
        assert issubclass(getattr(zhenwu, name), zhenwu.ZhenwuError)
    assert zhenwu.__version__
