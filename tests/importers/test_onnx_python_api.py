"""The Python API takes an ONNX model (an `onnx.ModelProto` or an `.onnx` path) and uses its
initializers as inputs unless others are given."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper

import zhenwu


def _linear_relu() -> "onnx.ModelProto":
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "linear_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_compile_a_model_proto_and_run_it_with_its_weights():
    model = _linear_relu()
    w, b = (numpy_helper.to_array(t) for t in model.graph.initializer)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    prog = zhenwu.compile(model, shapes={"batch": 3})
    (got,), report = prog.run(x=x)
    np.testing.assert_allclose(got, np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-5)
    assert report.cycles > 0
    (want,) = zhenwu.reference(model, x=x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_onnx_path_brings_its_weights_and_given_ones_win(tmp_path):
    model = _linear_relu()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.ones((2, 8), np.float32)
    zero_bias = np.zeros(4, np.float32)
    w = numpy_helper.to_array(model.graph.initializer[0])
    (got,), _ = zhenwu.compile(str(path), shapes={"batch": 2}).run(x=x, b=zero_bias)
    np.testing.assert_allclose(got, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-5)
