"""Cold start to the first token of an engine replica whose weights live in object storage,
with a cold and with a warm node cache (and, for scale, from a local file).

An S3-compatible server (moto's server mode, on 127.0.0.1) holds the bundled SmolLM2 GGUF
and its ``.sha256``. Each round, interleaved:

* cold:  a new, empty node cache; ``LlamaCppBackend.spawn`` fetches the model into it
         (download + sha256), starts llama.cpp on the cached file, and a streamed chat
         request gets its first token;
* warm:  the same with the cache the cold run left (a stat of the stamp; no download);
* local: the model from its local file (no object store at all).

Each figure is seconds from asking for the replica to its first streamed token. The fetch
alone (``WeightsCache.fetch``, cold and warm) is timed too, so the split is visible. The
store is on loopback in this process: the cold fetch is a floor; a real store adds
``size / bandwidth`` (98 MB: ~1 s at 100 MB/s).

    .venv/bin/python benchmarks/llm/weights_cold_start.py [--rounds 5]
    # smoke test at tiny size: --rounds 1 --out /tmp/x.md

Duration (printed at start): about 15 s per round, ~1.5 min with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.llm.common import (  # noqa: E402
    MODEL,
    RESULTS,
    Missing,
    announce_duration,
    command_line,
    machine,
    machine_lines,
    main_guard,
    spread,
    write_section,
)

KEY_ENV, SECRET_ENV = "AISCALE_BENCH_S3_KEY", "AISCALE_BENCH_S3_SECRET"


def start_store(model: Path) -> tuple[Any, str, str]:
    """moto's S3 server on loopback holding ``model`` and its ``.sha256``: (server,
    endpoint, uri)."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise Missing("moto[server] is not installed: pip install 'moto[server]'") from None
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                          aws_secret_access_key="bench", region_name="us-east-1")  # fmt: skip
    client.create_bucket(Bucket="weights")
    data = model.read_bytes()
    client.put_object(Bucket="weights", Key=model.name, Body=data)
    digest = hashlib.sha256(data).hexdigest()
    client.put_object(Bucket="weights", Key=f"{model.name}.sha256",
                      Body=f"{digest}  {model.name}\n".encode())  # fmt: skip
    client.close()
    return server, endpoint, f"s3://weights/{model.name}"


def spec_for(model: str, endpoint: str, cache_dir: Path, slot_dir: Path) -> Any:
    from aiscale.engines.spec import EngineSpec, ObjectStoreOptions

    return EngineSpec(
        "llamacpp", model, MODEL, context_window=2048, parallel=4, threads=2,
        max_output_tokens=64, slot_save_dir=str(slot_dir), model_cache_dir=str(cache_dir),
        object_store=ObjectStoreOptions(endpoint_url=endpoint, region="us-east-1",
                                        access_key_id_env=KEY_ENV,
                                        secret_access_key_env=SECRET_ENV),
    )  # fmt: skip


async def first_token(url: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4, "stream": True}  # fmt: skip
    async with httpx.AsyncClient(timeout=300) as client, client.stream(
        "POST", f"{url}/v1/chat/completions", json=body
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
        async for line in response.aiter_lines():
            if '"content":"' in line.replace(" ", "") and '"content":""' not in line:
                return
    raise RuntimeError(f"{url} streamed no token")


async def replica_to_first_token(spec: Any) -> float:
    """Seconds from ``spawn`` (fetch included) to the first streamed token."""
    from aiscale.engines.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(spec)
    started = time.perf_counter()
    handle, _ = await backend.spawn(0, num_replicas=1, lease=None)
    try:
        await first_token(handle.url)
        return time.perf_counter() - started
    finally:
        await backend.stop(handle, 10.0)


def fetch_s(uri: str, spec: Any) -> tuple[float, bool]:
    from aiscale.engines.weights import WeightsCache

    cache = WeightsCache(spec.model_cache_dir, options=spec.object_store)
    result = cache.fetch(uri)
    return result.duration_s, result.was_fetched


def expected_duration_s(args: argparse.Namespace) -> float:
    """Seconds a run takes: the store's start and upload (~5 s), then per round three replica
    starts to the first token (~3-6 s each) and two fetches (~2 s)."""
    return float(5 + args.rounds * 14)


def run(args: argparse.Namespace) -> None:
    import os

    announce_duration(expected_duration_s(args))
    from aiscale.engines.models import locate_model

    info = machine()
    model = locate_model(MODEL)
    os.environ[KEY_ENV] = os.environ[SECRET_ENV] = "bench"
    server, endpoint, uri = start_store(model)
    rows: dict[str, list[float]] = {"cold": [], "warm": [], "local": [],
                                    "fetch_cold": [], "fetch_warm": []}  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="aiscale-weights-bench-") as temp:
            root = Path(temp)
            (root / "slots").mkdir()
            for index in range(args.rounds):
                cache = root / f"cache-{index}"
                remote = spec_for(uri, endpoint, cache, root / "slots")
                local = spec_for(str(model), endpoint, cache, root / "slots")
                order = ["cold", "warm", "local"] if index % 2 == 0 else ["local", "cold", "warm"]
                for arm in order:
                    spec = local if arm == "local" else remote
                    seconds = asyncio.run(replica_to_first_token(spec))
                    rows[arm].append(seconds)
                    print(f"round {index + 1} {arm}: first token after {seconds:.2f} s",
                          flush=True)  # fmt: skip
                fresh = spec_for(uri, endpoint, root / f"fetch-{index}", root / "slots")
                cold_s, was_fetched = fetch_s(uri, fresh)
                warm_s, again = fetch_s(uri, fresh)
                if not was_fetched or again:
                    raise RuntimeError("the fetch-only rounds did not go cold then warm")
                rows["fetch_cold"].append(cold_s)
                rows["fetch_warm"].append(warm_s)
    finally:
        server.stop()
    write_section("weights_cold_start", render(info, args, rows, model), args.out)
    print(f"wrote the weights_cold_start section of {args.out}")


def render(info: dict[str, Any], args: argparse.Namespace, rows: dict[str, list[float]],
           model: Path) -> str:
    def cell(name: str, fmt: str = "{:.2f}") -> str:
        return spread(rows[name], fmt)

    size_mb = model.stat().st_size / 1e6
    ratio = [c / w for c, w in zip(rows["cold"], rows["warm"], strict=True)]
    return "\n".join([
        "## Cold start with weights in object storage: cold and warm node cache",
        "",
        *machine_lines(info),
        f"- command: `{command_line()}`",
        f"- {MODEL} GGUF ({size_mb:.0f} MB) in moto's S3 server on loopback (in the benchmark's "
        "process: the cold fetch is a floor; a real store adds size / bandwidth); one "
        f"llama.cpp replica (4 slots, 2 threads); {args.rounds} rounds, arms interleaved; "
        "cells: median (min-max)",
        "",
        "| replica start, weights from | seconds to the first streamed token |",
        "| --- | --- |",
        f"| object store, cold node cache (fetch + sha256 + load) | {cell('cold')} |",
        f"| object store, warm node cache | {cell('warm')} |",
        f"| local file (no object store) | {cell('local')} |",
        f"| cold / warm (per round) | {spread(ratio, '{:.2f}')} |",
        "",
        "| fetch alone (`WeightsCache.fetch`) | seconds |",
        "| --- | --- |",
        f"| cold (download + sha256 + rename) | {cell('fetch_cold', '{:.3f}')} |",
        f"| warm (read `.sha256` from the store, stamp check, no download) | "
        f"{cell('fetch_warm', '{:.4f}')} |",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    main_guard(lambda: run(args))


if __name__ == "__main__":
    main()
