"""The Open Inference Protocol v2 (KServe, Triton, MLServer) inference body, both ways.

Parses JSON tensors (name, shape, datatype, data) and Triton's binary tensor extension
(``Inference-Header-Content-Length``), checks them against the model's declared schema and
turns them into per-request items; renders outputs back as tensors. Pure functions: no I/O.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from aiscale.errors import InvalidInput
from aiscale.model import Schema, TensorSpec
from aiscale.serving.limits import check_item_count

NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
_LENGTH = struct.Struct("<I")
_UNEVEN = "data must be a flat list, or lists nested evenly and at most 32 deep"


@dataclass(frozen=True, slots=True)
class InferRequest:
    request_id: str | None
    items: list[Any]
    is_binary_output: bool


def _decode_bytes_tensor(raw: bytes, count: int, field: str) -> list[str]:
    if count * _LENGTH.size > len(raw):  # each value has at least its 4-byte length
        raise InvalidInput("binary BYTES tensor is shorter than its shape says", field=field)
    values: list[str] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput("binary BYTES tensor is shorter than its shape says", field=field)
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        values.append(raw[offset : offset + length].decode("utf-8", errors="replace"))
        offset += length
    return values


def _tensor_values(
    tensor: dict[str, Any],
    spec: TensorSpec,
    binary: memoryview,
    offset: int,
    field: str,
    max_items: int,
) -> tuple[Any, int, int]:
    """Values of one input tensor, its batch size, and the next binary offset.

    The batch size (``shape[0]``) is checked against ``max_items`` before any value is read.
    """
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput(
            "shape must be a non-empty list of non-negative integers", field=f"{field}.shape"
        )
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise InvalidInput(
            f"input {spec.name!r} has datatype {spec.datatype}, got {datatype!r}",
            field=f"{field}.datatype",
        )
    item_shape = tuple(shape[1:])
    if len(item_shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, item_shape, strict=True)
    ):
        raise InvalidInput(
            f"input {spec.name!r} has shape {[-1, *spec.shape]}, got {shape}",
            field=f"{field}.shape",
        )
    check_item_count(shape[0], max_items, f"{field}.shape")
    count = math.prod(shape)
    parameters = tensor.get("parameters") or {}
    binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if binary_size is not None:
        if (
            not isinstance(binary_size, int)
            or binary_size < 0
            or offset + binary_size > len(binary)
        ):
            raise InvalidInput(
                "binary_data_size does not match the body", field=f"{field}.parameters"
            )
        raw = bytes(binary[offset : offset + binary_size])
        offset += binary_size
        if datatype == "BYTES":
            values: Any = _decode_bytes_tensor(raw, count, field)
        else:
            dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
            if len(raw) != count * dtype.itemsize:
                raise InvalidInput(
                    "binary data size does not match the shape", field=f"{field}.parameters"
                )
            values = np.frombuffer(raw, dtype=dtype)
    else:
        if "data" not in tensor:
            raise InvalidInput(f"input {spec.name!r} has no data", field=f"{field}.data")
        flat = _flat_values(tensor["data"], field)
        kinds = set(map(type, flat))  # one C-level pass; no Python code runs per value
        if list in kinds:  # a list numpy could not line up with the others
            raise InvalidInput(_UNEVEN, field=f"{field}.data")
        if len(flat) != count:
            raise InvalidInput(
                f"input {spec.name!r} has {len(flat)} values but shape {shape} needs {count}",
                field=f"{field}.data",
            )
        if datatype == "BYTES":
            if kinds - {str}:
                raise InvalidInput(f"input {spec.name!r} must hold strings", field=f"{field}.data")
            values = flat if isinstance(flat, list) else flat.tolist()
        else:
            values = _numeric_array(flat, kinds, datatype, field)
    if datatype == "BYTES" and item_shape == ():
        return values, shape[0], offset
    array = np.asarray(values, dtype=object if datatype == "BYTES" else None)
    return array.reshape(shape), shape[0], offset


def _flat_values(data: Any, field: str) -> list[Any] | np.ndarray[Any, Any]:
    """A tensor's JSON ``data``, flat or nested in row-major order, as one flat sequence.

    Nested lists are walked by numpy (an object array: the values themselves, unconverted),
    so no Python code runs per value; a list left among the values means uneven nesting.
    """
    if not isinstance(data, list):
        raise InvalidInput("data must be a list", field=f"{field}.data")
    if not data or not isinstance(data[0], list):
        return data
    try:
        return np.array(data, dtype=object).ravel()
    except (ValueError, RuntimeError):  # uneven beyond what numpy holds, or over 32 deep
        raise InvalidInput(_UNEVEN, field=f"{field}.data") from None


_NUMERIC_KINDS: dict[bool, frozenset[type]] = {
    True: frozenset({bool}),
    False: frozenset({int, float}),
}


def _numeric_array(
    flat: list[Any] | np.ndarray[Any, Any], kinds: set[type], datatype: str, field: str
) -> np.ndarray[Any, Any]:
    """``flat`` as an array of ``datatype``; ``kinds`` are the Python types found in it.

    JSON ``true`` is not a number here and a number is not a BOOL, as in the protocol's
    typed tensors; integers may be written ``2.0``, never ``2.5``. Vectorised throughout.
    """
    allowed = _NUMERIC_KINDS[datatype == "BOOL"]
    if not kinds <= allowed:
        bad = next(v for v in flat if type(v) not in allowed)  # only on the error path
        raise InvalidInput(f"data must hold {datatype} values, got {bad!r}", field=f"{field}.data")
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    try:
        if dtype.kind in "iu" and float in kinds:
            as_float = np.asarray(flat, dtype=np.float64)
            if not np.all(np.isfinite(as_float) & (as_float == np.trunc(as_float))):
                raise InvalidInput(f"data must hold integers for {datatype}", field=f"{field}.data")
            limits = np.iinfo(dtype)
            if as_float.size and (as_float.min() < limits.min or as_float.max() > limits.max):
                raise OverflowError
            return as_float.astype(dtype)
        return np.asarray(flat, dtype=dtype)
    except OverflowError:
        raise InvalidInput(
            f"data holds a value out of range for {datatype}", field=f"{field}.data"
        ) from None


def parse_infer_request(
    body: bytes, json_length: int | None, schema: Schema, *, max_items: int
) -> InferRequest:
    """Items of one OIP v2 infer body; ``InvalidInput`` names the offending field.

    A request of more than ``max_items`` items (its tensors' first dimension) is refused
    with ``PayloadTooLarge`` from the declared shape, before any of its data is decoded.
    Vectorised: the work per value is numpy's, and Python loops only over items (at most
    ``max_items``) where the model needs one object per item. Pure, so the caller may run
    it in a worker thread for a large body.
    """
    if json_length is not None and not 0 < json_length <= len(body):
        raise InvalidInput("Inference-Header-Content-Length is outside the body", field="headers")
    header = body[:json_length] if json_length is not None else body
    binary = memoryview(body)[json_length:] if json_length is not None else memoryview(b"")
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    if not isinstance(request, dict):
        raise InvalidInput("body must be a JSON object", field="body")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors", field="inputs")
    specs = {spec.name: spec for spec in schema.inputs}
    columns: dict[str, Any] = {}
    batch_size: int | None = None
    offset = 0
    for index, tensor in enumerate(inputs):
        field = f"inputs[{index}]"
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput("each input must be an object with a name", field=field)
        spec = specs.get(tensor["name"])
        if spec is None:
            raise InvalidInput(
                f"unknown input {tensor['name']!r}; this model takes {sorted(specs)}",
                field=f"{field}.name",
            )
        if spec.name in columns:  # also bounds this loop by the model's input count
            raise InvalidInput(f"input {spec.name!r} is given twice", field=f"{field}.name")
        values, size, offset = _tensor_values(tensor, spec, binary, offset, field, max_items)
        if batch_size is not None and size != batch_size:
            raise InvalidInput(
                "all inputs must have the same first dimension", field=f"{field}.shape"
            )
        batch_size = size
        columns[spec.name] = values
    missing = set(specs) - set(columns)
    if missing:
        raise InvalidInput(f"missing input {sorted(missing)[0]!r}", field="inputs")
    assert batch_size is not None
    if batch_size == 0:
        raise InvalidInput("the batch dimension must be at least 1", field="inputs[0].shape")
    items = _items_from_columns(columns, schema, batch_size)
    parameters = request.get("parameters") or {}
    is_binary_output = bool(isinstance(parameters, dict) and parameters.get("binary_data_output"))
    outputs = request.get("outputs")
    if isinstance(outputs, list):
        if len(outputs) > len(schema.outputs):
            raise InvalidInput(
                f"{len(outputs)} outputs requested; this model has {len(schema.outputs)}",
                field="outputs",
            )
        is_binary_output = is_binary_output or any(
            isinstance(o, dict)
            and isinstance(o.get("parameters"), dict)
            and bool(o["parameters"].get("binary_data"))
            for o in outputs
        )
    request_id = request.get("id")
    return InferRequest(
        str(request_id) if request_id is not None else None, items, is_binary_output
    )


def _column_items(values: Any) -> list[Any]:
    if isinstance(values, list):
        return values
    return list(values.tolist()) if values.dtype != object else [list(v) for v in values]


def _items_from_columns(columns: dict[str, Any], schema: Schema, batch_size: int) -> list[Any]:
    if len(schema.inputs) == 1:
        return _column_items(columns[schema.inputs[0].name])
    per_input = {name: _column_items(values) for name, values in columns.items()}
    return [{name: per_input[name][i] for name in per_input} for i in range(batch_size)]


def _output_array(spec: TensorSpec, values: list[Any]) -> tuple[Any, list[int]]:
    if spec.datatype == "BYTES":
        flat = [v if isinstance(v, str) else str(v) for v in values]
        return flat, [len(flat), *([1] * len(spec.shape))] if spec.shape else [len(flat)]
    if values and isinstance(values[0], np.ndarray):
        array = np.stack(values)
    else:
        array = np.asarray(values)
    array = array.astype(NUMPY_DTYPES[spec.datatype], copy=False)
    return array, list(array.shape)


def _encode_bytes_tensor(values: list[str]) -> bytes:
    parts = []
    for value in values:
        raw = value.encode()
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def render_infer_response(
    model_name: str,
    version: str,
    request_id: str | None,
    outputs: list[Any],
    schema: Schema,
    *,
    is_binary_output: bool,
) -> tuple[bytes, int | None]:
    """Body of an OIP v2 infer response and, for binary output, the JSON header's length."""
    tensors: list[dict[str, Any]] = []
    binary_parts: list[bytes] = []
    for spec in schema.outputs:
        values = outputs if len(schema.outputs) == 1 else [o[spec.name] for o in outputs]
        array, shape = _output_array(spec, values)
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": shape}
        if is_binary_output:
            raw = (
                _encode_bytes_tensor(array)
                if spec.datatype == "BYTES"
                else np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            )
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            tensor["data"] = array if spec.datatype == "BYTES" else array.ravel()
        tensors.append(tensor)
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": version,
        "outputs": tensors,
    }
    if request_id is not None:
        response["id"] = request_id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not is_binary_output:
        return header, None
    return header + b"".join(binary_parts), len(header)
