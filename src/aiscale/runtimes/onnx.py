"""The ``onnx`` runtime: an ``.onnx`` graph run by onnxruntime on the CPU.

The uri is the path of the file. The schema comes from the graph: every graph input (one
input: the item is its value; several: the item is a dict from input name to value) and
the graph's first output. The first dimension of each is the batch; other symbolic or
unknown dimensions become ``-1``. A batch is stacked into one array per input and run
once; a graph whose batch dimension is fixed at 1 is run once per item instead.

Config keys: ``num_threads`` (onnxruntime ``intra_op_num_threads``; default: its own).
onnxruntime is imported inside ``load()`` only. This module must never pick an execution
provider other than the CPU one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiscale.errors import InvalidInput, ModelLoadError
from aiscale.model import Model, Schema, TensorSpec
from aiscale.runtimes._config import check_keys, optional_positive_int

_CONFIG_KEYS = frozenset({"num_threads"})

#: ONNX tensor element types (as onnxruntime names them) -> (OIP datatype, numpy dtype name).
ONNX_TYPES: dict[str, tuple[str, str]] = {
    "tensor(float)": ("FP32", "float32"),
    "tensor(double)": ("FP64", "float64"),
    "tensor(float16)": ("FP16", "float16"),
    "tensor(int8)": ("INT8", "int8"),
    "tensor(int16)": ("INT16", "int16"),
    "tensor(int32)": ("INT32", "int32"),
    "tensor(int64)": ("INT64", "int64"),
    "tensor(uint8)": ("UINT8", "uint8"),
    "tensor(uint16)": ("UINT16", "uint16"),
    "tensor(uint32)": ("UINT32", "uint32"),
    "tensor(uint64)": ("UINT64", "uint64"),
    "tensor(bool)": ("BOOL", "bool"),
    "tensor(string)": ("BYTES", "object"),
}


class OnnxModel(Model):
    """One onnxruntime ``InferenceSession`` per replica; one ``run`` per batch."""

    def __init__(self, uri: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        check_keys(self.config, _CONFIG_KEYS, "onnx")
        self.num_threads = optional_positive_int(self.config, "num_threads")
        self.uri = uri
        self._session: Any = None
        self._input_dtypes: dict[str, str] = {}
        self._output_name = ""
        self._is_batch_fixed_at_one = False

    def load(self) -> None:
        """Open the session and derive the schema; raises ``ModelLoadError``."""
        if not Path(self.uri).is_file():
            raise ModelLoadError(f"ONNX file {self.uri!r} does not exist", field="uri")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        threads = self.num_threads
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = onnxruntime.InferenceSession(
                self.uri, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors on bad graphs
            raise ModelLoadError(
                f"cannot load ONNX graph {self.uri!r}: {type(exc).__name__}: {exc}", field="uri"
            ) from exc
        graph_inputs = session.get_inputs()
        graph_outputs = session.get_outputs()
        if not graph_inputs or not graph_outputs:
            raise ModelLoadError(f"{self.uri!r} has no inputs or no outputs", field="uri")
        inputs = tuple(_spec(arg.name, arg.type, arg.shape) for arg in graph_inputs)
        output = _spec(graph_outputs[0].name, graph_outputs[0].type, graph_outputs[0].shape)
        self._session = session
        self._input_dtypes = {arg.name: ONNX_TYPES[arg.type][1] for arg in graph_inputs}
        self._output_name = graph_outputs[0].name
        self._is_batch_fixed_at_one = any(arg.shape[0] == 1 for arg in graph_inputs)
        self.schema = Schema(inputs=inputs, outputs=(output,))

    def predict(self, batch: Sequence[Any]) -> Any:
        """Stack, run, and return the first output: a numpy array with one row per item,
        or a list of ``str`` for a string output. Raises ``InvalidInput`` naming the input
        whose items do not stack into one array of its type."""
        import numpy as np

        if self._session is None:
            raise ModelLoadError("predict called before load", field="uri")
        if not batch:
            return []
        if self._is_batch_fixed_at_one and len(batch) > 1:
            rows = [self.predict([item]) for item in batch]
            if self.schema.outputs[0].datatype == "BYTES":
                return [row[0] for row in rows]
            return np.concatenate(rows)
        names = list(self._input_dtypes)
        feeds: dict[str, Any] = {}
        for name in names:
            if len(names) == 1:
                values = list(batch)
            else:
                try:
                    values = [item[name] for item in batch]
                except (KeyError, TypeError) as exc:
                    raise InvalidInput(
                        f"each item must be a dict with the inputs {names}", field=name
                    ) from exc
            try:
                feeds[name] = np.asarray(values, dtype=self._input_dtypes[name])
            except (TypeError, ValueError) as exc:
                raise InvalidInput(
                    f"items do not stack into one {self._input_dtypes[name]} array", field=name
                ) from exc
        try:
            (result,) = self._session.run([self._output_name], feeds)
        except Exception as exc:  # onnxruntime reports bad shapes with its own error types
            raise InvalidInput(f"onnxruntime rejected the batch: {exc}", field=names[0]) from exc
        if self.schema.outputs[0].datatype == "BYTES":
            return [str(value) for value in result]
        return result


def _spec(name: str, onnx_type: str, shape: Sequence[Any]) -> TensorSpec:
    """OIP spec of one graph input or output; the first dimension is the batch."""
    if onnx_type not in ONNX_TYPES:
        raise ModelLoadError(f"{name!r} has type {onnx_type}, which is not supported", field="uri")
    if not shape:
        raise ModelLoadError(f"{name!r} has no batch dimension", field="uri")
    first = shape[0]
    if isinstance(first, int) and first != 1:
        raise ModelLoadError(
            f"{name!r} has a fixed batch dimension of {first}; use a symbolic one", field="uri"
        )
    item_shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape[1:])
    return TensorSpec(name, ONNX_TYPES[onnx_type][0], item_shape)
