"""``aiscale keys create/list/limits/usage`` with LLM limits, through the real CLI against a
real registry (SQLite in tmp_path), the local Redis and a real gateway's admin API."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner, Result

from aiscale.cli import app
from aiscale.llm.ledger import TokenLedger, TokenUsage, make_ledger
from aiscale.llm.ledger_config import LedgerConfig
from aiscale.registry import FsspecArtifactStore, LlmLimits, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command of a test shares one data dir, given through AISCALE_DATA_DIR."""
    folder = tmp_path / "data"
    monkeypatch.setenv("AISCALE_DATA_DIR", str(folder))
    monkeypatch.setenv("COLUMNS", "250")
    return folder


@pytest.fixture
def prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no local Redis at 127.0.0.1:6379")
    name = f"test:{uuid.uuid4().hex[:12]}:"
    yield name
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def ok(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output


def assert_clean_failure(result: Result, message: str) -> None:
    """Non-zero exit, the message on one line, and no traceback anywhere."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert message in result.output, result.output


def create_key(*flags: str) -> str:
    out = ok("keys", "create", "svc", "--scope", "inference", *flags)
    found = re.search(r"key id: ([0-9a-f]+)", out)
    assert found is not None
    return found.group(1)


def test_create_with_limits_then_list_and_replace(data_dir: Path) -> None:
    """Every LLM flag is stored with the key, shown by list (table and JSON), and replaced
    whole by ``keys limits``."""
    out = ok("keys", "create", "svc", "--scope", "inference", "--team", "search",
             "--rpm", "60", "--tpm", "100000", "--max-concurrent", "4",
             "--budget-tokens-day", "1000000", "--budget-tokens-month", "20000000",
             "--budget-usd-day", "2.50", "--budget-usd-month", "50")
    assert "team: search  llm limits: rpm=60 tpm=100000 concurrent=4" in out
    key_id = re.search(r"key id: ([0-9a-f]+)", out).group(1)  # type: ignore[union-attr]
    with SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}") as registry:
        record = registry.get_key(key_id)
    assert record.team == "search"
    assert record.llm_limits == LlmLimits(60, 100_000, 4, 1_000_000, 20_000_000,
                                          Decimal("2.5"), Decimal(50))
    (listed,) = json.loads(ok("keys", "list", "--json"))
    assert listed["team"] == "search"
    assert listed["llm_limits"]["budget_usd_per_day"] == "2.5"
    assert "usd/month=50" in ok("keys", "list")

    out = ok("keys", "limits", key_id, "--tpm", "500")
    assert f"{key_id} (svc): team -, llm limits tpm=500" in out
    (listed,) = json.loads(ok("keys", "list", "--json"))
    assert listed["team"] is None and listed["llm_limits"]["requests_per_minute"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--rpm", "0"), "--rpm must be a whole number from 1"),
        (("--tpm", "-5"), "--tpm must be a whole number from 1"),
        (("--max-concurrent", "many"), "Invalid value for '--max-concurrent'"),
        (("--budget-usd-month", "abc"), "--budget-usd-month must be a decimal number"),
        (("--budget-usd-day", "0.0000001"), "--budget-usd-day takes at most 6 decimal places"),
        (("--budget-usd-day", "0"), "--budget-usd-day must be > 0"),
        (("--budget-usd-day", "inf"), "--budget-usd-day must be > 0"),
        (("--team", "Bad Team"), "invalid team 'Bad Team'"),
    ],
)
def test_bad_limit_values_fail_with_one_line(
    data_dir: Path, flags: tuple[str, ...], message: str
) -> None:
    """A bad limit is one clear line and a non-zero exit; no key is created."""
    assert_clean_failure(run("keys", "create", "svc", "--scope", "inference", *flags), message)
    assert json.loads(ok("keys", "list", "--json")) == []


def test_usage_errors_are_one_line(data_dir: Path, prefix: str) -> None:
    """Usage needs exactly one of a key and a team; an unknown key is named."""
    redis_flags = ("--redis-url", REDIS_URL, "--redis-key-prefix", prefix)
    assert_clean_failure(run("keys", "usage", *redis_flags), "give either a KEY id or --team")
    assert_clean_failure(run("keys", "usage", "k", "--team", "t", *redis_flags),
                         "give either a KEY id or --team")
    assert_clean_failure(run("keys", "usage", "nosuch", *redis_flags),
                         "unknown key id 'nosuch'")
    assert_clean_failure(run("keys", "usage", "--team", "Bad!", *redis_flags), "invalid team")
    assert_clean_failure(run("keys", "limits", "nosuch", "--rpm", "1"),
                         "unknown key id 'nosuch'")


async def _spend(ledger: TokenLedger, key_id: str, team: str | None) -> None:
    """Two settled requests (150 + 300 tokens) and one left in flight."""
    for usage in (TokenUsage(100, 40, 50), TokenUsage(200, 0, 100)):
        reservation = await ledger.admit(
            key_id=key_id, team=team, model="chat", prompt_tokens_max=400, max_tokens=100
        )
        await ledger.settle(reservation, usage)
    await ledger.admit(key_id=key_id, team=team, model="chat", prompt_tokens_max=400,
                       max_tokens=100)


PRICES = {"prices": [{"model": "chat", "prompt_usd_per_1m": 1, "completion_usd_per_1m": 4}]}


def test_usage_read_from_redis(data_dir: Path, prefix: str, tmp_path: Path) -> None:
    """``keys usage`` reads the gateways' ledger in Redis directly: per key with its team and
    limits, per team with the team's limits from --config, as JSON or a table."""
    key_id = create_key("--team", "search", "--tpm", "9000")
    config = LedgerConfig.model_validate(PRICES)

    async def book() -> None:
        ledger = make_ledger(config, redis_url=REDIS_URL, key_prefix=prefix)
        await _spend(ledger, key_id, "search")
        await ledger.close()

    asyncio.run(book())
    config_file = tmp_path / "aiscale.yaml"
    config_file.write_text(json.dumps({"server": {
        "redis_url": REDIS_URL, "redis_key_prefix": prefix,
        "ledger": {**PRICES, "teams": [{"name": "search", "budget_usd_per_month": 100}]},
    }}))
    report = json.loads(ok("keys", "usage", key_id, "--json", "--config", str(config_file)))
    key = report["key"]
    assert (key["id"], key["team"], key["revoked"]) == (key_id, "search", False)
    assert key["limits"]["tokens_per_minute"] == 9000
    assert key["day"]["tokens"] == 450 and key["day"]["requests"] == 2
    assert key["day"]["cached_tokens"] == 40
    assert key["day"]["usd"] == "0.0009"  # 300 prompt x $1/M + 150 completion x $4/M
    assert key["in_flight"]["requests"] == 1
    assert key["last_minute"]["tokens"] == 450 + 500
    assert report["team"]["limits"]["budget_usd_per_month"] == "100"
    assert report["team"]["month"]["tokens"] == 450

    table = ok("keys", "usage", "--team", "search", "--redis-url", REDIS_URL,
               "--redis-key-prefix", prefix)
    assert re.search(r"team search\s+│\s+\d{4}-\d{2}-\d{2}\s+│\s+2\s+│\s+450", table), table


def test_usage_through_the_admin_api(data_dir: Path, prefix: str) -> None:
    """``keys usage --url`` asks a running gateway, which reads its own ledger; an unknown
    key id is the server's 404, one line."""
    key_id = create_key("--team", "search", "--rpm", "10")
    admin = ok("keys", "create", "ops", "--scope", "admin")
    admin_key = re.search(r"ask_[A-Za-z0-9_-]+", admin).group(0)  # type: ignore[union-attr]
    registry = SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}")
    config = LedgerConfig.model_validate(
        {**PRICES, "teams": [{"name": "search", "requests_per_minute": 1000}]}
    )
    gateway = Gateway(
        GatewaySettings(drain_timeout_s=5.0),
        [],
        metrics_registry=CollectorRegistry(),
        control=RegistryControl(registry, FsspecArtifactStore(data_dir / "artifacts")),
        ledger=make_ledger(config, redis_url=REDIS_URL, key_prefix=prefix),
    )
    server = start_in_thread(GatewayApp(gateway))
    try:
        async def book() -> None:
            ledger = make_ledger(config, redis_url=REDIS_URL, key_prefix=prefix)
            await _spend(ledger, key_id, "search")
            await ledger.close()

        asyncio.run(book())
        report = json.loads(ok("keys", "usage", key_id, "--json", "--url", server.url,
                               "--key", admin_key))
        assert report["key"]["limits"]["requests_per_minute"] == 10
        assert report["key"]["day"]["tokens"] == 450
        assert report["team"]["limits"]["requests_per_minute"] == 1000
        team = httpx.get(f"{server.url}/admin/teams/search/usage",
                         headers={"authorization": f"Bearer {admin_key}"})
        assert team.status_code == 200 and team.json()["team"]["day"]["usd"] == "0.0009"
        bad = httpx.get(f"{server.url}/admin/teams/BAD/usage",
                        headers={"authorization": f"Bearer {admin_key}"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "team"
        assert_clean_failure(
            run("keys", "usage", "nosuch", "--url", server.url, "--key", admin_key),
            "server answered 404: no active API key with id 'nosuch'",
        )
    finally:
        server.stop()
        registry.close()
