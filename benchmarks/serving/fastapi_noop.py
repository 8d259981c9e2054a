"""The baseline: a plain FastAPI + uvicorn endpoint doing the no-op model's work.

It parses the same OIP v2 request body (validated by pydantic, as FastAPI apps do) and
answers the same response shape, with no model, batching, auth, metrics or capture.
Started by ``benchmarks/serving/run.py`` as
``uvicorn benchmarks.serving.fastapi_noop:app --workers N``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor]


@app.post("/v2/models/noop/infer")
async def infer(request: InferRequest) -> dict[str, Any]:
    rows = request.inputs[0].shape[0]
    return {
        "model_name": "noop",
        "model_version": "1",
        "outputs": [{"name": "text", "datatype": "BYTES", "shape": [rows], "data": [""] * rows}],
    }


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}
