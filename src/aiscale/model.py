"""The Model contract users implement, and the schema the gateway validates against.

A model is a class with ``load()`` (called once per replica, in the replica process) and
``predict(batch)`` (a list of items in, a list of outputs of the same length out). The
declared ``schema`` lets the gateway reject bad input before it reaches a replica.

An *item* is one request's worth of input. For a model with one input tensor the item is
that tensor's per-item value (a ``str`` for BYTES of shape ``()``, a list of numbers for
FP32 of shape ``(4,)``); with several inputs it is a ``dict`` from input name to value.
Outputs follow the same rule with the output specs. This module must never import the
web framework or anything heavy: replicas and the CLI import it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiscale.errors import InvalidInput

#: Open Inference Protocol v2 datatypes we accept, mapped to the Python kind they hold.
DATATYPES: dict[str, type] = {
    "BOOL": bool,
    "INT8": int,
    "INT16": int,
    "INT32": int,
    "INT64": int,
    "UINT8": int,
    "UINT16": int,
    "UINT32": int,
    "UINT64": int,
    "FP16": float,
    "FP32": float,
    "FP64": float,
    "BYTES": str,
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named input or output: OIP v2 datatype and the shape of *one item*.

    ``shape`` excludes the batch dimension; ``()`` is a scalar per item and ``-1`` marks
    a dimension of any length.
    """

    name: str
    datatype: str
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise InvalidInput(f"unknown datatype {self.datatype!r}", field=self.name)

    def to_json(self) -> dict[str, Any]:
        """OIP v2 metadata form; the batch dimension shows as -1."""
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True, slots=True)
class Schema:
    """Declared inputs and outputs of a model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schema:
        """Inverse of :meth:`to_json`; a leading -1 batch dimension is dropped."""

        def spec(entry: dict[str, Any]) -> TensorSpec:
            shape = [int(d) for d in entry.get("shape", [])]
            if shape and shape[0] == -1:
                shape = shape[1:]
            return TensorSpec(str(entry["name"]), str(entry["datatype"]), tuple(shape))

        return cls(
            tuple(spec(e) for e in data.get("inputs", [])),
            tuple(spec(e) for e in data.get("outputs", [])),
        )


#: The schema of a text-in, embedding-out model such as the bundled ``minilm``.
def text_embedding_schema(dimensions: int) -> Schema:
    return Schema(
        inputs=(TensorSpec("text", "BYTES", ()),),
        outputs=(TensorSpec("embedding", "FP32", (dimensions,)),),
    )


#: Used when a model declares nothing: one variable-length numeric vector in and out.
GENERIC_SCHEMA = Schema(
    inputs=(TensorSpec("input", "FP64", (-1,)),),
    outputs=(TensorSpec("output", "FP64", (-1,)),),
)


class Model(ABC):
    """Base class of every servable model.

    Subclasses set ``schema`` (a class attribute, or in ``__init__``/``load``) and implement
    ``predict``. ``config`` is the deployment's model configuration (a plain dict from the
    registry). ``load`` runs once in each replica process before the first batch;
    ``predict`` must return exactly one output per input item — a different count is an
    error that fails the whole batch, never truncated.
    """

    schema: Schema = GENERIC_SCHEMA

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})

    def load(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Load weights; called once per replica before the first ``predict``."""

    @abstractmethod
    def predict(self, batch: Sequence[Any]) -> Sequence[Any]:
        """Return one output per item of ``batch``, in order."""
