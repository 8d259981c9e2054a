"""Several real gateways (``aiscale serve`` processes on 127.0.0.1, port 0) sharing a fresh
PostgreSQL database, a Redis key prefix and a NATS JetStream stream, all removed afterwards."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml

ROOT = Path(__file__).resolve().parents[2]
AISCALE = [sys.executable, "-m", "aiscale.cli"]
PG_USERS = ("postgres", "root")
REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True, slots=True)
class Shared:
    """What a test's gateways share."""

    registry_url: str
    redis_prefix: str
    nats_stream: str


def _pg_user() -> str | None:
    for user in PG_USERS:
        try:
            with psycopg.connect(host="127.0.0.1", user=user, dbname="test", connect_timeout=3):
                return user
        except psycopg.Error:
            continue
    return None


@pytest.fixture
def shared() -> Iterator[Shared]:
    """A new PostgreSQL database, Redis prefix and NATS stream name; all deleted afterwards."""
    user = _pg_user()
    if user is None:
        pytest.skip("no local PostgreSQL at 127.0.0.1:5432")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no local Redis at 127.0.0.1:6379")
    token = uuid.uuid4().hex[:12]
    database = f"scaleout_{token}"
    with psycopg.connect(host="127.0.0.1", user=user, dbname="test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    prefix = f"test:{token}:"
    stream = f"T{token}"
    yield Shared(f"postgresql+psycopg://{user}@127.0.0.1:5432/{database}", prefix, stream)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()
    with psycopg.connect(host="127.0.0.1", user=user, dbname="test", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    asyncio.run(_delete_stream(stream))


async def _delete_stream(stream: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(NATS_URL, connect_timeout=3)
    try:
        await nc.jetstream().delete_stream(stream)
    except NotFoundError:
        pass
    finally:
        await nc.close()


@dataclass
class Gateway:
    process: subprocess.Popen[str]
    url: str


def write_config(path: Path, shared: Shared, **server: Any) -> Path:
    """The gateways' aiscale.yaml: the shared Redis prefix and NATS stream."""
    config = {
        "server": {
            "redis_key_prefix": shared.redis_prefix,
            # Gateways sharing a Redis cache must share the secret that seals its values.
            "redis_cache_secret": f"secret-of-{shared.redis_prefix}",
            "capture": {"nats_url": NATS_URL, "nats_stream": shared.nats_stream},
            **server,
        }
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_gateways(
    num: int, shared: Shared, tmp_path: Path, *args: str, timeout_s: float = 90.0
) -> list[Gateway]:
    """Start ``num`` gateways at once and wait until each announces its URL (it says so only
    once every deployment is ready, i.e. after ``/v2/health/ready`` would answer 200)."""
    config = write_config(tmp_path / "aiscale.yaml", shared)
    processes = []
    for index in range(num):
        data_dir = tmp_path / f"gateway{index}"
        data_dir.mkdir()
        with (data_dir / "stderr.log").open("w") as stderr:
            processes.append(
                subprocess.Popen(
                    [*AISCALE, "serve", *args, "--port", "0", "--data-dir", str(data_dir),
                     "--registry-url", shared.registry_url, "--redis-url", REDIS_URL,
                     "--config", str(config)],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            )
    gateways = []
    deadline = time.monotonic() + timeout_s
    for index, process in enumerate(processes):
        assert process.stdout is not None
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            found = re.search(r"aiscale serving on (http://\S+)", line)
            url = found.group(1) if found else None
        if url is None:
            stop_gateways([Gateway(p, "") for p in processes])
            errors = (tmp_path / f"gateway{index}" / "stderr.log").read_text()
            raise AssertionError(f"gateway {index} did not start: {errors[-3000:]}")
        gateways.append(Gateway(process, url))
    return gateways


def stop_gateways(gateways: list[Gateway]) -> None:
    """SIGTERM every gateway, then wait for each (kill past the deadline)."""
    for gateway in gateways:
        if gateway.process.poll() is None:
            gateway.process.send_signal(signal.SIGTERM)
    for gateway in gateways:
        try:
            gateway.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait(timeout=10)
        if gateway.process.stdout is not None:
            gateway.process.stdout.close()
