"""The onnx runtime on tiny graphs built here with onnx.helper: schema from the graph,
outputs equal to onnxruntime's own, one run per batch, and the error paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from aiscale.errors import InvalidInput, ModelLoadError
from aiscale.model import Schema, TensorSpec
from aiscale.runtimes import load_model

WEIGHTS = np.arange(8, dtype=np.float32).reshape(4, 2) / 4.0
BIAS = np.array([0.5, -1.0], dtype=np.float32)


def _save(graph: onnx.GraphProto, path: Path) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def _linear(path: Path, batch_dim: str | int = "batch") -> str:
    """y = x @ W + b, x: (batch, 4) float32, y: (batch, 2)."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 2])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    return _save(graph, path)


def test_linear_graph_schema_and_outputs_match_onnxruntime(tmp_path: Path) -> None:
    """Schema comes from the graph (batch dimension dropped); outputs equal a plain
    InferenceSession run on the stacked batch, one row per item."""
    uri = _linear(tmp_path / "linear.onnx")
    model = load_model("onnx", uri, {"num_threads": 1})
    model.load()
    assert model.schema == Schema(
        (TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (2,)),)
    )
    batch = [[1, 2, 3, 4], [0, 0, 0, 0], [-1.5, 2.5, 0.25, 8]]
    out = model.predict(batch)
    session = onnxruntime.InferenceSession(uri, providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": np.array(batch, dtype=np.float32)})
    assert len(out) == len(batch)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_allclose(out, np.array(batch, dtype=np.float32) @ WEIGHTS + BIAS, rtol=1e-6)
    assert model.predict([]) == []


def test_graph_with_batch_fixed_at_one_runs_item_by_item(tmp_path: Path) -> None:
    """A graph exported with batch size 1 still answers a batch of several, in order."""
    model = load_model("onnx", _linear(tmp_path / "one.onnx", batch_dim=1))
    model.load()
    batch = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    np.testing.assert_allclose(model.predict(batch), WEIGHTS[[0, 1, 3]] + BIAS)


def test_two_input_graph_takes_dict_items(tmp_path: Path) -> None:
    """With several graph inputs an item is a dict from input name to value."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["product"])],
        "mul",
        [
            helper.make_tensor_value_info("a", TensorProto.DOUBLE, ["n", 3]),
            helper.make_tensor_value_info("b", TensorProto.DOUBLE, ["n", 3]),
        ],
        [helper.make_tensor_value_info("product", TensorProto.DOUBLE, ["n", 3])],
    )
    model = load_model("onnx", _save(graph, tmp_path / "mul.onnx"))
    model.load()
    assert [spec.name for spec in model.schema.inputs] == ["a", "b"]
    assert model.schema.outputs == (TensorSpec("product", "FP64", (3,)),)
    out = model.predict([{"a": [1, 2, 3], "b": [2, 2, 2]}, {"a": [0, 1, 0], "b": [5, 5, 5]}])
    np.testing.assert_array_equal(out, [[2, 4, 6], [0, 5, 0]])
    with pytest.raises(InvalidInput) as caught:
        model.predict([{"a": [1, 2, 3]}])
    assert caught.value.field == "b"


def test_items_that_do_not_stack_are_invalid_input(tmp_path: Path) -> None:
    """Ragged or wrongly sized items are refused naming the graph input."""
    model = load_model("onnx", _linear(tmp_path / "linear.onnx"))
    model.load()
    for batch in ([[1, 2, 3, 4], [1, 2]], [[1, 2, 3]], [["a", "b", "c", "d"]]):
        with pytest.raises(InvalidInput) as caught:
            model.predict(batch)
        assert caught.value.field == "x"


def test_missing_and_corrupt_files_are_model_load_errors(tmp_path: Path) -> None:
    """load() fails with ModelLoadError on field ``uri`` for a missing or corrupt file."""
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00not an onnx graph")
    for uri in (str(tmp_path / "missing.onnx"), str(corrupt)):
        model = load_model("onnx", uri)
        with pytest.raises(ModelLoadError) as caught:
            model.load()
        assert caught.value.field == "uri"
