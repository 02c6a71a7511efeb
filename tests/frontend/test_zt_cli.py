"""`zhenwu run --reference` and `zhenwu ir` end to end: files, options, exit statuses."""

from __future__ import annotations

import pickle
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from zhenwu.compiler.cli import main
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.reference import evaluate

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "samples/mlp.zt")


def zhenwu(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_run_reference_writes_outputs(tmp_path, capsys):
    out = tmp_path / "o.npz"
    status, stdout, _ = zhenwu(capsys, "run", MLP, "--shape", "B=4", "--reference", "-o", out)
    assert status == 0 and stdout.startswith("out0: f32 [4, 10]")
    data = np.load(out)
    assert list(data.files) == ["out0"] and data["out0"].dtype == np.float32
    np.testing.assert_allclose(data["out0"].sum(axis=1), 1.0, rtol=1e-5)


def test_inputs_from_files_bind_dims_and_are_cast(tmp_path, capsys):
    rng = np.random.default_rng(5)
    fn = load_program(MLP, shapes={"B": 3})
    arrays = {p.name: rng.standard_normal(p.type.shape).astype(np.float32) * 0.1
              for p in fn.params}
    np.save(tmp_path / "x.npy", arrays["x"])
    np.savez(tmp_path / "in.npz", **{k: v for k, v in arrays.items() if k != "x"})
    status, _, _ = zhenwu(capsys, "run", MLP, "--reference", "-i", f"x={tmp_path / 'x.npy'}",
                          "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz")
    assert status == 0
    want = evaluate(fn, arrays)[0]
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")["out0"], want)


def test_random_inputs_are_seeded(tmp_path, capsys):
    runs = []
    for seed in (1, 1, 2):
        path = tmp_path / f"o{len(runs)}.npz"
        zhenwu(capsys, "run", ROOT / "samples/softmax.zt", "--shape", "N=2", "--shape", "C=3",
               "--reference", "--seed", seed, "-o", path)
        runs.append(np.load(path)["out0"])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_integer_and_bool_outputs_keep_their_dtype(tmp_path, capsys):
    prog = tmp_path / "p.zt"
    prog.write_text("fn main(x: f32[3, 4], y: bf16[2]) { return argmax(x, axis=1), x > 0, y }\n")
    status, _, _ = zhenwu(capsys, "run", prog, "--reference", "-o", tmp_path / "o.npz")
    assert status == 0
    data = np.load(tmp_path / "o.npz")
    assert data["out0"].dtype == np.int32 and data["out1"].dtype == np.bool_
    assert data["out2"].dtype == np.float32


@pytest.mark.parametrize("make, args, message", [
    (None, ["--reference"], ("samples/mlp.zt:4:17: error: symbolic dim 'B' is not bound; pass "
     "--shape B=<size> or an input file")),
    ("pickle", ["--shape", "B=2", "--reference", "-i", "x={f}"],
     "holds a pickled object array; zhenwu never loads pickles"),
    ("garbage", ["--shape", "B=2", "--reference", "-i", "x={f}"],
     "x.npy: not a .npy file (no NUMPY header)"),
    ("int", ["--reference", "-i", "x={f}"], "input 'x' ("),
    ("wrong_shape", ["--reference", "-i", "x={f}"],
     ("mlp.zt:4:12: error: input 'x' has shape [2, 783], but parameter 'x' is bf16[2,784]: "
     "dims 1 differ (783 vs 784)")),
    ("missing", ["--shape", "B=2", "--reference", "-i", "x={f}"], "no such file"),
    (None, ["--shape", "B=2", "--reference", "-i", "y={f}"], "unknown input 'y'"),
    (None, ["--shape", "B=2", "--shape", "Q=3", "--reference"],
     "error: --shape Q=3: 'Q' is not a symbolic dim of 'main' (symbolic dims: B)"),
])
def test_user_errors_exit_1(tmp_path, capsys, make, args, message):
    path = tmp_path / "x.npy"
    if make is None:
        np.save(path, np.ones((2, 784), dtype=np.float32))
    elif make == "pickle":
        with open(path, "wb") as handle:
            np.save(handle, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif make == "garbage":
        path.write_bytes(b"not an npy file at all")
    elif make == "int":
        np.save(path, np.ones((2, 784), dtype=np.int64))
    elif make == "wrong_shape":
        np.save(path, np.ones((2, 783), dtype=np.float32))
    elif make == "missing":
        path = tmp_path / "nothere.npy"
    args = [a.replace("{f}", str(path)) for a in args]
    status, _, err = zhenwu(capsys, "run", MLP, *args)
    assert status == 1
    assert message in err, err


def test_pickled_npy_is_never_unpickled(tmp_path, capsys, monkeypatch):
    path = tmp_path / "x.npy"
    with open(path, "wb") as handle:
        np.save(handle, np.array([object()], dtype=object), allow_pickle=True)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    status, _, _ = zhenwu(capsys, "run", MLP, "--shape", "B=1", "--reference", "-i", f"x={path}")
    assert status == 1


def test_usage_errors_exit_2(capsys):
    assert zhenwu(capsys, "run", MLP, "--shape", "B", "--reference")[0] == 2
    assert zhenwu(capsys, "run", MLP, "--shape", "B=0", "--reference")[0] == 2
    assert zhenwu(capsys, "run", MLP, "--shape", "B=2", "-i", "x", "--reference")[0] == 2
    status, _, err = zhenwu(capsys, "ir", MLP, "--shape", "B=2", "--passes", "cse,frob")
    assert status == 2 and "unknown pass 'frob'" in err


def test_syntax_error_in_a_file(tmp_path, capsys):
    prog = tmp_path / "bad.zt"
    prog.write_text("fn main(x: f32[4]) {\n    return x +\n}\n")
    status, _, err = zhenwu(capsys, "run", prog, "--reference")
    assert status == 1
    assert err == (f"{prog}:3:1: error: unexpected '}}'; expected an expression\n}}\n^\n")


def test_missing_program(capsys):
    status, _, err = zhenwu(capsys, "ir", "/nonexistent/p.zt")
    assert status == 1 and "no such file" in err


def test_ir_command(tmp_path, capsys):
    status, out, _ = zhenwu(capsys, "ir", ROOT / "samples/conv.zt", "--shape", "B=1")
    assert status == 0 and out.startswith("func @main(") and "= conv2d " in out
    status, out, _ = zhenwu(capsys, "ir", ROOT / "samples/conv.zt", "--shape", "B=1",
                            "--passes", "default")
    assert status == 0 and "= conv2d " not in out and "= matmul " in out
    status, out, err = zhenwu(capsys, "ir", MLP, "--shape", "B=1", "--print-ir-after-all",
                              "--time-passes", "--disable-pass", "cse",
                              "--dot", tmp_path / "g.dot")
    assert status == 0
    assert out.count("// ----- IR after") == 9 and "IR after cse" not in out
    assert "canonicalize" in err and "total" in err
    assert (tmp_path / "g.dot").read_text().startswith('digraph "main"')
    status, out, _ = zhenwu(capsys, "ir", MLP, "--shape", "B=1", "--print-ir-after",
                            "decompose")
    assert status == 0 and out.count("// ----- IR after decompose") == 1


def test_ir_text_is_accepted_as_input(tmp_path, capsys):
    status, checked, _ = zhenwu(capsys, "ir", MLP, "--shape", "B=2")
    (tmp_path / "mlp.ir").write_text(checked)
    status, lowered, _ = zhenwu(capsys, "ir", tmp_path / "mlp.ir", "--passes", "default")
    _, direct, _ = zhenwu(capsys, "ir", MLP, "--shape", "B=2", "--passes", "default")
    assert status == 0 and lowered == direct
    (tmp_path / "bad.ir").write_text("func @f(%x: f32[2]) -> (f32[2]) {\n  return %y\n}\n")
    status, _, err = zhenwu(capsys, "ir", tmp_path / "bad.ir")
    assert status == 1 and "bad.ir:2:10: error: use of undefined value %y" in err


def test_bf16_npy_inputs(tmp_path, capsys):
    prog = tmp_path / "p.zt"
    prog.write_text("fn main(x: bf16[2]) { return x * 2 }\n")
    np.save(tmp_path / "x.npy", np.array([1.5, -2.0], dtype=np.float32))
    status, _, _ = zhenwu(capsys, "run", prog, "--reference", "-i", f"x={tmp_path / 'x.npy'}",
                          "-o", tmp_path / "o.npz")
    assert status == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")["out0"], [3.0, -4.0])
    assert ml_dtypes.bfloat16 is not None
