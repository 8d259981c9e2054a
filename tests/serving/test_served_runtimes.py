"""Each runtime through the whole path: registry artifact → replica process → OIP v2 over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import joblib
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LinearRegression

from aiscale.config import DeploymentConfig
from aiscale.registry import FsspecArtifactStore, SqlRegistry, register_with_artifact
from aiscale.registry.front import RegistryControl
from aiscale.serving.specs import spec_from_config
from tests.serving.conftest import ServerFactory


def make_onnx(path: Path) -> None:
    weights = np.arange(8, dtype=np.float32).reshape(4, 2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_sklearn_and_onnx_artifacts_served(tmp_path: Path, serve: ServerFactory) -> None:
    """Registered files are stored by digest, loaded in replicas and answer like the library."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 3))
    regressor = LinearRegression().fit(features, features @ np.array([1.0, -2.0, 0.5]) + 3.0)
    joblib.dump(regressor, tmp_path / "reg.joblib")
    make_onnx(tmp_path / "linear.onnx")

    registry = SqlRegistry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    artifacts = FsspecArtifactStore(tmp_path / "artifacts")
    register_with_artifact(
        registry, artifacts, "reg", runtime="sklearn", uri=str(tmp_path / "reg.joblib"),
        is_pickle_allowed=True,
    )
    register_with_artifact(
        registry, artifacts, "lin", runtime="onnx", uri=str(tmp_path / "linear.onnx")
    )
    (tmp_path / "reg.joblib").unlink()  # served from the artifact store, not the original file
    control = RegistryControl(registry, artifacts)
    specs = [
        spec_from_config(
            DeploymentConfig(name=name, model=name, num_threads=1),
            control.resolve_version(name, None),
        )
        for name in ("reg", "lin")
    ]
    url = serve(*specs, control=control).url

    rows = features[:4]
    body = {
        "inputs": [
            {"name": "input", "shape": [4, 3], "datatype": "FP64", "data": rows.ravel().tolist()}
        ]
    }
    result = httpx.post(f"{url}/v2/models/reg/infer", json=body)
    assert result.status_code == 200, result.text
    np.testing.assert_allclose(
        result.json()["outputs"][0]["data"], regressor.predict(rows), rtol=1e-9
    )

    meta = httpx.get(f"{url}/v2/models/lin").json()
    name, datatype = meta["inputs"][0]["name"], meta["inputs"][0]["datatype"]
    x = np.ones((2, 4), dtype=np.float32)
    body = {
        "inputs": [
            {"name": name, "shape": [2, 4], "datatype": datatype, "data": x.ravel().tolist()}
        ]
    }
    result = httpx.post(f"{url}/v2/models/lin/infer", json=body)
    assert result.status_code == 200, result.text
    expected = x @ np.arange(8, dtype=np.float32).reshape(4, 2)
    assert result.json()["outputs"][0]["data"] == expected.ravel().tolist()
    registry.close()
