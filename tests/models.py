"""Tiny real models for tests (after MLServer's tests/fixtures.py). Loaded by import path,
e.g. ``tests.models:Echo``, inside real replica processes."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from typing import Any

from aiscale.model import Model, Schema, TensorSpec

_TEXT_IN_TEXT_OUT = Schema(
    inputs=(TensorSpec("text", "BYTES", ()),),
    outputs=(TensorSpec("text", "BYTES", ()),),
)
_VECTOR_IN_SCALAR_OUT = Schema(
    inputs=(TensorSpec("input", "FP64", (-1,)),),
    outputs=(TensorSpec("sum", "FP64", ()),),
)


class Echo(Model):
    """Returns each text unchanged."""

    schema = _TEXT_IN_TEXT_OUT

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        return list(batch)


class NoOp(Model):
    """Does no work at all: measures the framework's own overhead."""

    schema = _TEXT_IN_TEXT_OUT

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        return ["" for _ in batch]


class Sum(Model):
    """Sums each numeric vector."""

    schema = _VECTOR_IN_SCALAR_OUT

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        return [float(sum(row)) for row in batch]


class Fail(Model):
    """Raises on every batch, or on a share of items set by ``config['error_rate']``."""

    schema = _TEXT_IN_TEXT_OUT

    def load(self) -> None:
        self.error_rate = float(self.config.get("error_rate", 1.0))
        self.rng = random.Random(int(self.config.get("seed", 0)))

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        if any(self.rng.random() < self.error_rate for _ in batch):
            raise ValueError("model failed on purpose")
        return list(batch)


class Slow(Model):
    """Sleeps ``config['delay_ms']`` per batch (default 50) before echoing: a busy replica."""

    schema = _TEXT_IN_TEXT_OUT

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        time.sleep(float(self.config.get("delay_ms", 50)) / 1000.0)
        return list(batch)


class WrongCount(Model):
    """Returns one output too few: the batch must fail, never be truncated."""

    schema = _TEXT_IN_TEXT_OUT

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        return list(batch)[:-1]


class Crash(Model):
    """Kills its own replica process when it sees the text ``"crash"``."""

    schema = _TEXT_IN_TEXT_OUT

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        if "crash" in batch:
            os._exit(3)
        return list(batch)


class HashEmbed(Model):
    """A deterministic 8-dimensional unit-vector 'embedding' of each text: an embedding model
    that loads in milliseconds, for protocol tests."""

    schema = Schema(
        inputs=(TensorSpec("text", "BYTES", ()),),
        outputs=(TensorSpec("embedding", "FP32", (8,)),),
    )

    def predict(self, batch: Sequence[Any]) -> Any:
        import hashlib

        import numpy as np

        rows = []
        for text in batch:
            digest = hashlib.sha256(text.encode()).digest()[:8]
            vector = np.frombuffer(digest, dtype=np.uint8).astype(np.float32) + 1.0
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows)


class SlowOnDemand(Model):
    """Echoes, after sleeping the milliseconds written in the file ``config['delay_file']``
    (none while the file is missing or empty): a latency regression a test injects at will."""

    schema = _TEXT_IN_TEXT_OUT

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        try:
            with open(self.config["delay_file"], encoding="utf-8") as f:
                text = f.read().strip()
        except FileNotFoundError:
            text = ""
        if text:
            time.sleep(float(text) / 1000.0)
        return list(batch)


class VisibleDevices(Model):
    """Answers each text with the replica's ``CUDA_VISIBLE_DEVICES`` ("" when unset), after
    sleeping ``config['delay_ms']`` per batch (default 0) so concurrent requests spread."""

    schema = _TEXT_IN_TEXT_OUT

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        time.sleep(float(self.config.get("delay_ms", 0)) / 1000.0)
        return [os.environ.get("CUDA_VISIBLE_DEVICES", "") for _ in batch]


class EnvValue(Model):
    """Answers each text with the replica's environment variable of that name ("" when unset):
    what model code could read of the gateway's environment."""

    schema = _TEXT_IN_TEXT_OUT

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        return [os.environ.get(str(name), "") for name in batch]
