"""The token ledger's rules, in process and in Redis alike (every test runs on both).

Each test drives the ledger with a fake clock (Unix seconds) that it moves by hand, so the
sliding minute, the UTC day and month and the expiry of unsettled reservations are checked
without waiting. The Redis variant uses the local Redis with a key prefix per test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from aiscale.errors import Forbidden, InvalidInput, RateLimited
from aiscale.llm.ledger import (
    LimitExceeded,
    Reservation,
    TokenLedger,
    TokenUsage,
    make_ledger,
)
from aiscale.llm.ledger_config import LedgerConfig
from aiscale.registry import LlmLimits

REDIS_URL = "redis://127.0.0.1:6379/0"
#: 2026-03-31 23:59:00 UTC: a minute before a new day and a new month.
T0 = datetime(2026, 3, 31, 23, 59, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, now_s: float = T0 - 3600) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def _redis_prefix() -> Iterator[str]:
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


LedgerFactory = Callable[..., TokenLedger]


@pytest.fixture(params=["local", "redis"])
def new_ledger(request: pytest.FixtureRequest) -> Iterator[LedgerFactory]:
    """Make ledgers of the parametrized kind; Redis ones share one fresh key prefix (so two
    of them are two gateways of one installation). Closing is each test's own job."""
    if request.param == "local":

        def local(config: LedgerConfig | None = None, **options: Any) -> TokenLedger:
            return make_ledger(config or LedgerConfig(), redis_url=None, key_prefix="x:", **options)

        yield local
        return
    prefix_iter = _redis_prefix()
    prefix = next(prefix_iter)

    def shared(config: LedgerConfig | None = None, **options: Any) -> TokenLedger:
        return make_ledger(config or LedgerConfig(), redis_url=REDIS_URL, key_prefix=prefix,
                           **options)

    yield shared
    next(prefix_iter, None)


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


async def admit(
    ledger: TokenLedger, *, key: str | None = "k1", team: str | None = None,
    prompt: int = 300, max_tokens: int = 200, limits: LlmLimits | None = None,
    model: str = "m",
) -> Reservation:
    return await ledger.admit(
        key_id=key, team=team, model=model, prompt_tokens_max=prompt, max_tokens=max_tokens,
        key_limits=limits,
    )


async def refused(ledger: TokenLedger, **kwargs: Any) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await admit(ledger, **kwargs)
    return caught.value


def test_requests_per_minute_slide_with_the_window(new_ledger: LedgerFactory) -> None:
    """With 3 requests/minute the 4th in the minute is refused naming key:requests_per_minute,
    with Retry-After when the first leaves the sliding window (61 s after its second), and
    admitted once it has left."""
    clock = FakeClock()
    limits = LlmLimits(requests_per_minute=3)

    async def scenario() -> None:
        ledger = new_ledger(clock=clock)
        for _ in range(3):
            await ledger.settle(await admit(ledger, limits=limits), TokenUsage(1, 0, 1))
            clock.advance(5)
        error = await refused(ledger, limits=limits)
        assert error.limit == "key:requests_per_minute" and error.field == error.limit
        assert isinstance(error, RateLimited)  # 429 with Retry-After in serving/errors.py
        assert error.retry_after_s == pytest.approx(61 - 15)
        assert "requests_per_minute limit 3 reached: 3 requests in the last minute" in str(error)
        clock.advance(error.retry_after_s - 1)
        await refused(ledger, limits=limits)
        clock.advance(1)
        await admit(ledger, limits=limits)
        await ledger.close()

    run(scenario())


def test_tokens_per_minute_reserve_then_settle(new_ledger: LedgerFactory) -> None:
    """A request reserves prompt_tokens_max + max_tokens; settling books the real usage and
    frees the rest, so a refused request fits after its peers settle below their ask."""
    clock = FakeClock()
    limits = LlmLimits(tokens_per_minute=1000)

    async def scenario() -> None:
        ledger = new_ledger(clock=clock)
        first = await admit(ledger, limits=limits)  # 500 reserved
        second = await admit(ledger, limits=limits)  # 1000 reserved
        clock.advance(10)
        error = await refused(ledger, limits=limits)
        assert error.limit == "key:tokens_per_minute"
        assert error.retry_after_s == pytest.approx(51)  # the first second leaves at 61 s
        assert "1000 tokens in the last minute" in str(error) and "up to 500" in str(error)
        await ledger.settle(first, TokenUsage(80, 0, 20))  # 100 used: 600 in the window
        await refused(ledger, limits=limits)
        await ledger.settle(second, TokenUsage(80, 0, 20))  # 200 in the window
        third = await admit(ledger, limits=limits)  # 700
        usage = await ledger.usage(key_id="k1")
        assert usage["key"]["last_minute"] == {"requests": 3, "tokens": 700}
        assert usage["key"]["in_flight"]["requests"] == 1
        await ledger.settle(third, TokenUsage(100, 0, 0))
        await ledger.close()

    run(scenario())


def test_a_request_bigger_than_the_minute_runs_alone(new_ledger: LedgerFactory) -> None:
    """A reservation above the tokens-per-minute limit passes in an empty minute (overshoot by
    at most one request) and is refused while anything else is in the minute."""
    clock = FakeClock()
    limits = LlmLimits(tokens_per_minute=100)

    async def scenario() -> None:
        ledger = new_ledger(clock=clock)
        big = await admit(ledger, limits=limits, prompt=400, max_tokens=100)
        clock.advance(1)
        error = await refused(ledger, limits=limits, prompt=10, max_tokens=10)
        assert error.retry_after_s == pytest.approx(60)
        await ledger.settle(big, TokenUsage(300, 0, 100))
        error = await refused(ledger, limits=limits, prompt=400, max_tokens=100)
        assert "runs only alone in an empty minute" in str(error)
        clock.advance(60)
        await admit(ledger, limits=limits, prompt=400, max_tokens=100)
        await ledger.close()

    run(scenario())


def test_refusals_say_whether_a_smaller_prompt_count_could_fit(new_ledger: LedgerFactory) -> None:
    """Refusals by a limit in tokens or money say so (the gateway then counts the prompt
    exactly and asks once more); refusals by requests or concurrency do not."""
    clock = FakeClock()

    async def scenario() -> None:
        ledger = new_ledger(clock=clock)
        tight = LlmLimits(tokens_per_minute=1000)
        await admit(ledger, key="t", limits=tight)
        await admit(ledger, key="t", limits=tight)
        by_tokens = await refused(ledger, key="t", limits=tight)
        assert by_tokens.limit == "key:tokens_per_minute" and by_tokens.is_about_tokens
        one_at_a_time = LlmLimits(max_concurrent=1)
        await admit(ledger, key="c", limits=one_at_a_time)
        by_concurrency = await refused(ledger, key="c", limits=one_at_a_time)
        assert by_concurrency.limit == "key:max_concurrent"
        assert not by_concurrency.is_about_tokens
        await ledger.close()

    run(scenario())


def test_team_limits_count_every_key_of_the_team(new_ledger: LedgerFactory) -> None:
    """Two keys of one team share its tokens-per-minute limit from the config; a key of
    another team is not held back by them; the refusal names team:tokens_per_minute."""
    clock = FakeClock()
    config = LedgerConfig.model_validate(
        {"teams": [{"name": "search", "tokens_per_minute": 1000}, {"name": "ads"}]}
    )

    async def scenario() -> None:
        ledger = new_ledger(config, clock=clock)
        await admit(ledger, key="a1", team="search")
        await admit(ledger, key="a2", team="search")
        error = await refused(ledger, key="a3", team="search")
        assert error.limit == "team:tokens_per_minute"
        assert str(error).startswith("team:search: tokens_per_minute limit 1000 reached")
        await admit(ledger, key="a3", team="ads")
        await admit(ledger, key="a4", team=None)
        usage = await ledger.usage(team="search")
        assert usage["key"] is None
        assert usage["team"]["last_minute"] == {"requests": 2, "tokens": 1000}
        assert usage["team"]["limits"]["tokens_per_minute"] == 1000
        await ledger.close()

    run(scenario())


def test_key_and_team_limits_are_taken_together_or_not_at_all(new_ledger: LedgerFactory) -> None:
    """When the team has room but the key has none, nothing is taken from the team either."""
    clock = FakeClock()
    config = LedgerConfig.model_validate({"teams": [{"name": "t", "requests_per_minute": 2}]})
    limits = LlmLimits(max_concurrent=1)

    async def scenario() -> None:
        ledger = new_ledger(config, clock=clock)
        await admit(ledger, key="a", team="t", limits=limits)
        for _ in range(3):
            error = await refused(ledger, key="a", team="t", limits=limits)
            assert error.limit == "key:max_concurrent"
        usage = await ledger.usage(team="t")
        assert usage["team"]["last_minute"]["requests"] == 1
        await admit(ledger, key="b", team="t")  # the team's second request still fits
        error = await refused(ledger, key="c", team="t")
        assert error.limit == "team:requests_per_minute"
        await ledger.close()

    run(scenario())


def test_concurrency_frees_on_settle(new_ledger: LedgerFactory) -> None:
    """max_concurrent counts admitted, unsettled requests; a settle frees a slot at once."""
    clock = FakeClock()
    limits = LlmLimits(max_concurrent=2)

    async def scenario() -> None:
        ledger = new_ledger(clock=clock)
        first = await admit(ledger, limits=limits)
        await admit(ledger, limits=limits)
        error = await refused(ledger, limits=limits)
        assert error.limit == "key:max_concurrent" and error.retry_after_s == 1.0
        assert "2 requests in flight" in str(error)
        await ledger.settle(first, TokenUsage(1, 0, 1))
        await admit(ledger, limits=limits)
        await ledger.close()

    run(scenario())


def test_token_budgets_per_utc_day_and_month(new_ledger: LedgerFactory) -> None:
    """Day and month budgets count settled usage plus what is in flight; a refusal retries at
    the next UTC day (or month); a new day frees the day budget but not the month's."""
    clock = FakeClock(T0 - 3600)  # 2026-03-31 22:59 UTC
    limits = LlmLimits(budget_tokens_per_day=1000, budget_tokens_per_month=1500)

    async def scenario() -> None:
        ledger = new_ledger(clock=clock)
        held = await admit(ledger, limits=limits)  # 500 in flight
        await ledger.settle(await admit(ledger, limits=limits), TokenUsage(200, 0, 100))
        error = await refused(ledger, limits=limits)  # 300 + 500 held + 500 > 1000
        assert error.limit == "key:budget_tokens_per_day"
        assert error.retry_after_s == pytest.approx(3660)  # to 2026-04-01 00:00 UTC
        await ledger.settle(held, TokenUsage(300, 0, 100))  # 700 today
        await refused(ledger, limits=limits, prompt=200, max_tokens=200)
        await ledger.settle(await admit(ledger, limits=limits, prompt=200, max_tokens=100),
                            TokenUsage(200, 0, 100))  # 1000 today and this month
        clock.advance(3600)  # 23:59 on the last day of the month
        error = await refused(ledger, limits=limits, prompt=1, max_tokens=0)
        assert error.limit == "key:budget_tokens_per_day"
        clock.advance(60)  # 2026-04-01: a new day and a new month
        await admit(ledger, limits=limits)
        usage = await ledger.usage(key_id="k1")
        assert usage["key"]["day"]["period"] == "2026-04-01"
        assert usage["key"]["day"]["tokens"] == 0 and usage["key"]["month"]["tokens"] == 0
        await ledger.close()

    run(scenario())


def test_month_budget_outlasts_the_day(new_ledger: LedgerFactory) -> None:
    """A month budget still refuses on the next day of the same month, until the month ends."""
    clock = FakeClock(datetime(2026, 3, 30, 12, tzinfo=UTC).timestamp())
    limits = LlmLimits(budget_tokens_per_month=600)

    async def scenario() -> None:
        ledger = new_ledger(clock=clock)
        await ledger.settle(await admit(ledger, limits=limits), TokenUsage(300, 0, 200))
        clock.advance(86_400)  # 2026-03-31 12:00
        error = await refused(ledger, limits=limits, prompt=100, max_tokens=50)
        assert error.limit == "key:budget_tokens_per_month"
        assert error.retry_after_s == pytest.approx(12 * 3600)
        clock.advance(12 * 3600)
        await admit(ledger, limits=limits, prompt=100, max_tokens=50)
        await ledger.close()

    run(scenario())


def test_money_budget_with_prices(new_ledger: LedgerFactory) -> None:
    """A budget in US dollars reserves the dearest price of the ask and books the real cost at
    the configured prices (cached prompt tokens at their own price), to the nano-dollar."""
    clock = FakeClock()
    config = LedgerConfig.model_validate({"prices": [
        {"model": "m", "prompt_usd_per_1m": 2, "cached_prompt_usd_per_1m": "0.5",
         "completion_usd_per_1m": 10},
    ]})
    limits = LlmLimits(budget_usd_per_day=Decimal("0.01"))

    async def scenario() -> None:
        ledger = new_ledger(config, clock=clock)
        # 1000 prompt at $2/M + 500 completion at $10/M: $0.007 reserved.
        first = await admit(ledger, limits=limits, prompt=1000, max_tokens=500)
        error = await refused(ledger, limits=limits, prompt=1000, max_tokens=500)
        assert error.limit == "key:budget_usd_per_day"
        assert "limit 0.01 reached: 0.007 US dollars today" in str(error)
        # 400 uncached x $2/M + 400 cached x $0.5/M + 100 x $10/M = $0.002.
        await ledger.settle(first, TokenUsage(800, 400, 100))
        second = await admit(ledger, limits=limits, prompt=1000, max_tokens=500)  # 0.009
        usage = await ledger.usage(key_id="k1")
        day = usage["key"]["day"]
        assert day["usd"] == "0.002" and day["cached_tokens"] == 400 and day["requests"] == 1
        assert day["by_model"]["m"]["usd"] == "0.002"
        assert usage["key"]["in_flight"]["reserved_usd"] == "0.007"
        await ledger.settle(second, TokenUsage(1, 0, 1))  # $0.000012
        usage = await ledger.usage(key_id="k1")
        assert usage["key"]["day"]["usd"] == "0.002012"
        await ledger.close()

    run(scenario())


def test_money_budget_on_an_unpriced_model_is_refused(new_ledger: LedgerFactory) -> None:
    """A money budget cannot be enforced without a price: refused (403), never let through."""

    async def scenario() -> None:
        ledger = new_ledger()
        with pytest.raises(Forbidden, match="has no price"):
            await admit(ledger, limits=LlmLimits(budget_usd_per_month=Decimal(5)))
        await admit(ledger, limits=LlmLimits(tokens_per_minute=10_000))
        await ledger.close()

    run(scenario())


def test_settle_is_idempotent(new_ledger: LedgerFactory) -> None:
    """Settling one reservation twice books it once and frees its slot once."""
    clock = FakeClock()
    limits = LlmLimits(max_concurrent=2)

    async def scenario() -> None:
        metrics = CollectorRegistry()
        ledger = new_ledger(clock=clock, metrics_registry=metrics)
        first = await admit(ledger, limits=limits)
        await admit(ledger, limits=limits)
        for _ in range(3):
            await ledger.settle(first, TokenUsage(100, 10, 50))
        await admit(ledger, limits=limits)  # one slot freed, not three
        await refused(ledger, limits=limits)
        usage = await ledger.usage(key_id="k1")
        assert usage["key"]["day"]["requests"] == 1 and usage["key"]["day"]["tokens"] == 150
        sample = metrics.get_sample_value(
            "aiscale_ledger_tokens_total",
            {"key_id": "k1", "team": "", "model": "m", "kind": "completion"},
        )
        assert sample == 50
        assert metrics.get_sample_value("aiscale_ledger_reservations_in_flight") == 2
        await ledger.close()

    run(scenario())


def test_an_unsettled_reservation_expires(new_ledger: LedgerFactory) -> None:
    """A reservation never settled (a crashed gateway) stops holding its slot and its budget
    share after reservation_ttl_s; a late settle still books the real usage, once."""
    clock = FakeClock()
    config = LedgerConfig(reservation_ttl_s=120)
    limits = LlmLimits(max_concurrent=1, budget_tokens_per_day=600)

    async def scenario() -> None:
        ledger = new_ledger(config, clock=clock)
        lost = await admit(ledger, limits=limits)  # as if its request's gateway died
        clock.advance(119)
        error = await refused(ledger, limits=limits)
        assert error.limit in ("key:max_concurrent", "key:budget_tokens_per_day")
        clock.advance(1)
        again = await admit(ledger, limits=limits)
        usage = await ledger.usage(key_id="k1")
        assert usage["key"]["in_flight"] == {
            "requests": 1, "reserved_tokens": 500, "reserved_usd": "0",
        }
        await ledger.settle(again, TokenUsage(50, 0, 50))
        await ledger.settle(lost, TokenUsage(100, 0, 100))  # late, from a retried settle
        await ledger.settle(lost, TokenUsage(100, 0, 100))
        usage = await ledger.usage(key_id="k1")
        assert usage["key"]["day"]["tokens"] == 300 and usage["key"]["day"]["requests"] == 2
        assert usage["key"]["in_flight"]["requests"] == 0
        await ledger.close()

    run(scenario())


def test_settle_survives_a_cancelled_caller(new_ledger: LedgerFactory) -> None:
    """A request task cancelled while it settles (a client gone) still books its usage."""
    clock = FakeClock()

    async def scenario() -> None:
        ledger = new_ledger(clock=clock)
        reservation = await admit(ledger)
        task = asyncio.create_task(ledger.settle(reservation, TokenUsage(10, 0, 5)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = asyncio.get_running_loop().time() + 5
        while (await ledger.usage(key_id="k1"))["key"]["day"]["tokens"] != 15:
            assert asyncio.get_running_loop().time() < deadline, "the settle was lost"
            await asyncio.sleep(0.01)
        await ledger.close()

    run(scenario())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"prompt": 1.5}, "prompt_tokens_max"),
        ({"model": "Bad Model"}, "model"),
        ({"key": "a key"}, "key_id"),
        ({"team": "x" * 80}, "team"),
    ],
)
def test_bad_arguments_are_refused(
    new_ledger: LedgerFactory, kwargs: dict[str, Any], field: str
) -> None:
    """Arguments the gateway should never pass are InvalidInput naming the field."""

    async def scenario() -> None:
        ledger = new_ledger()
        with pytest.raises(InvalidInput) as caught:
            await admit(ledger, **kwargs)
        assert caught.value.field == field
        await ledger.close()

    run(scenario())


def test_requests_without_key_or_team_are_counted_in_metrics(new_ledger: LedgerFactory) -> None:
    """No key and no team: nothing to limit, but spend still reaches the metrics, once."""
    config = LedgerConfig.model_validate(
        {"prices": [{"model": "*", "prompt_usd_per_1m": 1, "completion_usd_per_1m": 1}]}
    )

    async def scenario() -> None:
        metrics = CollectorRegistry()
        ledger = new_ledger(config, metrics_registry=metrics)
        reservation = await admit(ledger, key=None)
        await ledger.settle(reservation, TokenUsage(500_000, 0, 500_000))
        await ledger.settle(reservation, TokenUsage(500_000, 0, 500_000))
        labels = {"key_id": "", "team": "", "model": "m"}
        assert metrics.get_sample_value("aiscale_ledger_spend_usd_total", labels) == 1.0
        await ledger.close()

    run(scenario())


def test_a_refusal_is_a_429_naming_the_limit_with_retry_after(new_ledger: LedgerFactory) -> None:
    """The gateway's one error table turns a refusal into 429, ``Retry-After`` rounded up to
    whole seconds, and an OpenAI-shaped body whose ``param`` names the limit."""
    from aiscale.serving.errors import render_error

    clock = FakeClock()

    async def scenario() -> LimitExceeded:
        ledger = new_ledger(clock=clock)
        await admit(ledger, limits=LlmLimits(tokens_per_minute=600))
        clock.advance(0.5)
        error = await refused(ledger, limits=LlmLimits(tokens_per_minute=600))
        await ledger.close()
        return error

    error = run(scenario())
    status, body, headers = render_error(error, "openai")
    assert status == 429
    assert (b"retry-after", b"61") in headers  # 60.5 s, rounded up
    payload = json.loads(body)["error"]
    assert payload["param"] == "key:tokens_per_minute" and payload["type"] == "LimitExceeded"
    assert "tokens_per_minute limit 600 reached" in payload["message"]


@pytest.mark.parametrize(
    ("ledger", "path"),
    [
        ({"teams": [{"name": "t", "tokens_per_minute": 0}]},
         "server.ledger.teams.0.tokens_per_minute"),
        ({"teams": [{"name": "t"}, {"name": "t"}]}, "server.ledger.teams"),
        ({"teams": [{"name": "t", "budget_usd_per_day": "0.0000001"}]},
         "server.ledger.teams.0.budget_usd_per_day"),
        ({"prices": [{"model": "m", "prompt_usd_per_1m": -1, "completion_usd_per_1m": 1}]},
         "server.ledger.prices.0.prompt_usd_per_1m"),
        ({"prices": [{"model": "m", "prompt_usd_per_1m": 1}]},
         "server.ledger.prices.0.completion_usd_per_1m"),
        ({"reservation_ttl_s": 0}, "server.ledger.reservation_ttl_s"),
        ({"teams": [], "budgets": {}}, "server.ledger.budgets"),
    ],
)
def test_bad_ledger_config_names_the_field(ledger: dict[str, Any], path: str) -> None:
    """A bad team limit, price or setting rejects the whole config, naming its dotted path."""
    from aiscale.config import parse_config
    from aiscale.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {"ledger": ledger}})
    assert caught.value.field == path
