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
    "softplus", "softsign", "elu", "celu", "selu", "hardsigmoid", "hardswish", "mish",
    "thresholdedrelu", "tan", "isnan", "isinf", "prelu", "mean", "pad", "tile",
    "instance_normalization", "argmax", "argmin", "reducesumsquare", "reducel1", "reducel2",
    "reduce_log_sum", "reduce_log_sum_exp",
]


@dataclass
class Outcome:
    name: str
    status: str  # passed, skipped, failed
    reason: str = ""


# Modules whose cases take the onnx package tens of seconds to build (reference pooling).
SLOW = ("maxpool", "averagepool")


def collect_cases(slow: bool = True) -> list:
    """The node test cases of MODULES (importing a module runs its exports); `slow=False`
    leaves out the SLOW modules."""
    import onnx.backend.test.case.node as node_cases

    for name in MODULES:
        if slow or name not in SLOW:
            importlib.import_module(f"onnx.backend.test.case.node.{name}")
    return list(node_cases._NodeTestCases)


def _bind_shape_inputs(case):
    """The model with its integer and scalar graph inputs made initializers (their values
    are the same in every data set): node tests pass axes, shapes, slice bounds and range
    bounds as inputs, which zhenwu needs at import. Returns (model, data sets without those
    inputs), or None."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    graph = model.graph
    bound = []
    for index, info in enumerate(graph.input):
        scalar = not info.type.tensor_type.shape.dim
        if info.type.tensor_type.elem_type != TensorProto.INT64 and not scalar:
            continue
        values = [np.asarray(inputs[index]) for inputs, _ in case.data_sets]
        if any(not np.array_equal(v, values[0]) for v in values[1:]):
            return None
        graph.initializer.append(numpy_helper.from_array(values[0], info.name))
        bound.append(index)
    if not bound:
        return None
    kept = [info for i, info in enumerate(graph.input) if i not in bound]
    del graph.input[:]
    graph.input.extend(kept)
    data_sets = [([a for i, a in enumerate(inputs) if i not in bound], outputs)
                 for inputs, outputs in case.data_sets]
    return model, data_sets


def _save(case, tmp: Path):
    """Import the case (binding integer inputs as initializers when the importer needs them
    at import); returns ((path, source, model, data sets, note), None) or (None, reason)."""
    import onnx
    from zhenwu.compiler.importers.onnx import OnnxImportError, import_onnx

    model, data_sets, note = case.model, case.data_sets, ""
    try:
        source, _ = import_onnx(model, where=f"{case.name}.onnx")
    except OnnxImportError as err:
        rebound = _bind_shape_inputs(case)
        if rebound is None:
            return None, err.message
        model, data_sets = rebound
        note = "integer and scalar inputs bound as initializers"
        try:
            source, _ = import_onnx(model, where=f"{case.name}.onnx")
        except OnnxImportError as err2:
            return None, err2.message
    model_path = tmp / f"{case.name}.onnx"
    onnx.save(model, str(model_path))
    return (model_path, source, model, data_sets, note), None


def _host_array(array: np.ndarray, elem_type: int) -> np.ndarray:
    """An input as an .npz can hold it: bf16/fp8 as their exact f32 values, f64 as f32,
    int64 as int32, object arrays at the graph input's dtype."""
    from onnx import TensorProto, helper, numpy_helper

    if isinstance(array, TensorProto):
        array = numpy_helper.to_array(array)
    array = np.asarray(array)
    if array.dtype == object:
        array = array.astype(helper.tensor_dtype_to_np_dtype(elem_type))
    if array.dtype.kind == "V" or str(array.dtype) in ("bfloat16", "float8_e4m3fn", "float64"):
        array = array.astype(np.float32)
    if array.dtype == np.int64:
        array = array.astype(np.int32)
    return array


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
    from zhenwu.compiler.cli import main
    from zhenwu.isa.errors import ZhenwuError

    saved, reason = _save(case, tmp)
    if saved is None:
        return Outcome(case.name, "skipped", reason)
    model_path, source, model, data_sets, note = saved
    params = _param_names(source)
    failures = []
    for index, (inputs, outputs) in enumerate(data_sets):
        npz = tmp / f"{case.name}.{index}.in.npz"
        out = tmp / f"{case.name}.{index}.out.npz"
        arrays = {name: _host_array(array, info.type.tensor_type.elem_type)
                  for name, array, info in zip(params, inputs, model.graph.input)}
        np.savez(npz, **arrays)
        stderr = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            try:
                status = main(["run", str(model_path), "--inputs", str(npz), "-o", str(out)])
            except ZhenwuError as err:  # main catches these; a leak would be a bug
                return Outcome(case.name, "failed", f"uncaught {err.format()}")
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
            w = np.asarray(_host_array(w, 0) if not isinstance(w, np.ndarray) else w)
            # a narrow float result is compared at its own precision (2 units in the last place)
            narrow = {"bfloat16": 2**-7, "float16": 2**-10, "float8_e4m3fn": 2**-2}.get(
                str(w.dtype), 0.0)
            if w.dtype == object or w.dtype.kind == "V" or narrow:
                w = w.astype(np.float32)
            problem = _compare(g, w, max(rtol, narrow), max(atol, narrow * 1e-3))
            if problem:
                failures.append(problem)
    if failures:
        return Outcome(case.name, "failed", "; ".join(failures))
    return Outcome(case.name, "passed", note)


def _param_names(source: str) -> list[str]:
    """The entry's parameter names, in order (graph inputs first, then weights)."""
    head = source[source.index("fn main(") + len("fn main("): source.index(") ->")]
    return [part.split(":")[0].strip() for part in head.split(",\n")]
