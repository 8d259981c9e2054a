"""Where the tests find the public data sets, and synthetic arrivals for those that need none.

The Azure LLM inference traces (2023, CC-BY-4.0) and part of the Numenta Anomaly Benchmark
(NAB v1.1, MIT) are not shipped with the project. One setting says where they are:
``AISCALE_TEST_DATA``, a folder holding ``traces/`` and ``nab/`` (default: ``../shared/data``
beside the repository root). It is read once when this module is imported (at collection,
before ``clean_environ`` empties the ``AISCALE_*`` variables for each test).

A test that checks something about the data itself takes its file through ``public_file``,
which skips with one line naming what is missing and how to get it. The core tests (the
simulator's determinism and conservation, trace scaling) use ``synthetic_trace_times``,
seeded arrivals made here, and so run in a fresh clone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("AISCALE_TEST_DATA") or REPO_ROOT.parent / "shared" / "data")

_SOURCES = {
    "traces": "the Azure LLM inference trace 2023 (AzureLLMInferenceTrace_{code,conv}.csv from "
    "https://github.com/Azure/AzurePublicDataset, data/, CC-BY-4.0)",
    "nab": "NAB v1.1 (data/ and labels from https://github.com/numenta/NAB, MIT)",
}


def public_file(relative: str) -> Path:
    """``DATA_ROOT / relative``, or skip the test saying what is missing and how to get it."""
    path = DATA_ROOT / relative
    if not path.exists():
        source = _SOURCES.get(relative.split("/")[0], "the public data sets")
        pytest.skip(
            f"needs {relative} under AISCALE_TEST_DATA={DATA_ROOT} (not found): download "
            f"{source} into {DATA_ROOT / relative.split('/')[0]}, or point AISCALE_TEST_DATA "
            "at a folder holding traces/ and nab/"
        )
    return path


def synthetic_trace_times(
    num_requests: int = 19_366, span_s: float = 3505.0, *, burstiness: float = 0.3, seed: int = 7
) -> np.ndarray:
    """Sorted arrival offsets (s, the first at 0) shaped like a production trace: a Poisson
    process whose rate follows a slow swell and short bursts (``burstiness`` 0: flat). The
    defaults match the Azure conversation trace's volume (19,366 requests in 58.4 min)."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, span_s, 1000)
    swell = 1.0 + burstiness * np.sin(2 * np.pi * grid / span_s * 3.0)
    bursts = 1.0 + burstiness * 4.0 * (rng.random(grid.size) < 0.03)
    weight = swell * bursts
    cumulative = np.concatenate([[0.0], np.cumsum(weight[1:] * np.diff(grid))])
    uniform = np.sort(rng.random(num_requests - 1)) * cumulative[-1]
    times = np.interp(uniform, cumulative, grid)
    return np.concatenate([[0.0], times])


def write_trace(path: Path, times_s: np.ndarray) -> Path:
    """Write ``times_s`` as a trace CSV in the Azure files' layout (``TIMESTAMP`` to 0.1 µs,
    token columns); returns ``path``."""
    start = np.datetime64("2023-11-16T18:15:46", "ns")
    stamps = start + np.round(np.asarray(times_s) * 1e9).astype("timedelta64[ns]")
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"{str(s).replace('T', ' ')[:27]},100,20" for s in stamps]
    path.write_text("\n".join(lines) + "\n")
    return path
