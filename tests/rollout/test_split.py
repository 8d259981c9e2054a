"""Traffic split: validation, sticky users, weight accuracy, forced versions and shadowing."""

from __future__ import annotations

import random

import pytest

from aiscale.contracts.split import TrafficSplit, canary_split, choose_version, should_shadow
from aiscale.errors import InvalidInput

KEYS = [f"user-{i}" for i in range(10_000)]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"weights": (("v1", 60.0), ("v2", 30.0))}, "weights"),
        ({"weights": (("v1", 110.0), ("v2", -10.0))}, "weights.v2"),
        ({"weights": (("v1", 50.0), ("v1", 50.0))}, "weights"),
        ({"weights": ()}, "weights"),
        ({"weights": (("", 100.0),)}, "weights"),
        ({"weights": (("v1", float("nan")), ("v2", 100.0))}, "weights.v1"),
        (
            {"weights": (("v1", 100.0),), "shadow_version": "v2", "shadow_fraction": 1.5},
            "shadow_fraction",
        ),
        ({"weights": (("v1", 100.0),), "shadow_fraction": 0.1}, "shadow_version"),
        (
            {
                "weights": (("v1", 90.0), ("v2", 10.0)),
                "shadow_version": "v2",
                "shadow_fraction": 0.1,
            },
            "shadow_version",
        ),
    ],
)
def test_invalid_split_is_rejected_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    """Weights that do not sum to 100, negative or duplicate versions, bad shadows: InvalidInput."""
    with pytest.raises(InvalidInput) as caught:
        TrafficSplit(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_canary_split_rejects_bad_percent_and_same_versions() -> None:
    """A canary percent outside [0, 100] or a canary equal to its baseline is refused."""
    with pytest.raises(InvalidInput) as caught:
        canary_split("v1", "v2", 101.0)
    assert caught.value.field == "canary_percent"
    with pytest.raises(InvalidInput) as caught:
        canary_split("v1", "v1", 5.0)
    assert caught.value.field == "canary"


def test_same_key_always_gets_the_same_version() -> None:
    """With a user key the choice ignores the rng: the same user lands on the same version."""
    split = TrafficSplit.of({"a": 50.0, "b": 30.0, "c": 20.0}, salt="deploy-1")
    first = [choose_version(split, key, random.Random(1)) for key in KEYS[:2000]]
    again = [choose_version(split, key, random.Random(2)) for key in KEYS[:2000]]
    assert first == again
    assert set(first) == {"a", "b", "c"}


def test_users_only_move_old_to_new_as_the_canary_grows_and_back_on_abort() -> None:
    """Over 1 -> 5 -> 25 -> 50 -> 100 % each user moves at most once, baseline -> canary; on
    abort (back down to 0 %) each moves at most once, canary -> baseline; never back and forth."""
    rng = random.Random(0)
    ramp = [0.0, 1.0, 5.0, 25.0, 50.0, 100.0]
    abort = [50.0, 25.0, 5.0, 0.0]

    def canary_users(percent: float) -> set[str]:
        split = canary_split("stable", "canary", percent, salt="deploy-1")
        return {k for k in KEYS if choose_version(split, k, rng) == "canary"}

    previous = canary_users(ramp[0])
    assert previous == set()
    for percent in ramp[1:]:
        current = canary_users(percent)
        assert previous <= current  # nobody moves canary -> baseline while it grows
        assert abs(len(current) - percent / 100 * len(KEYS)) <= 0.02 * len(KEYS) + 10
        previous = current
    assert previous == set(KEYS)
    previous = canary_users(abort[0])
    for percent in abort[1:]:
        current = canary_users(percent)
        assert current <= previous  # nobody moves baseline -> canary while it shrinks
        previous = current
    assert previous == set()


@pytest.mark.parametrize(
    "weights",
    [
        {"v1": 99.0, "v2": 1.0},
        {"v1": 70.0, "v2": 20.0, "v3": 10.0},
        {"v1": 0.0, "v2": 33.3, "v3": 66.7},
    ],
)
def test_sticky_assignment_matches_weights_within_one_point(weights: dict[str, float]) -> None:
    """Over 100,000 user keys each version's share is within 1 point of its weight."""
    split = TrafficSplit.of(weights, salt="accuracy")
    rng = random.Random(0)
    counts = dict.fromkeys(weights, 0)
    num = 100_000
    for i in range(num):
        counts[choose_version(split, f"k{i}", rng)] += 1
    for version, weight in weights.items():
        assert abs(100.0 * counts[version] / num - weight) <= 1.0, (version, counts)
    assert counts["v1"] > 0 or weights["v1"] == 0.0


def test_keyless_requests_follow_the_weights_and_the_seed() -> None:
    """Without a key, the injected rng draws the version: weights within 1 point, reproducible."""
    split = TrafficSplit.of({"v1": 80.0, "v2": 20.0})
    draws = [choose_version(split, None, random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1
    rng = random.Random(3)
    num = 100_000
    share = sum(choose_version(split, None, rng) == "v2" for _ in range(num)) / num
    assert abs(share - 0.20) <= 0.01


def test_salt_decorrelates_canary_populations_of_deployments() -> None:
    """Two deployments at 10 % canary with different salts share about 1 % of users, not 10 %."""
    rng = random.Random(0)
    one = canary_split("s", "c", 10.0, salt="deployment-one")
    two = canary_split("s", "c", 10.0, salt="deployment-two")
    both = sum(
        choose_version(one, k, rng) == "c" and choose_version(two, k, rng) == "c" for k in KEYS
    )
    assert both / len(KEYS) < 0.03


def test_forced_version_wins_and_unknown_forced_version_is_an_error() -> None:
    """A forced version of the split (even at 0 % or the shadow) wins; an unknown one is refused."""
    split = TrafficSplit.of({"v1": 100.0, "v2": 0.0}, shadow_version="v3", shadow_fraction=0.5)
    rng = random.Random(0)
    assert choose_version(split, "user-1", rng, forced="v2") == "v2"
    assert choose_version(split, None, rng, forced="v3") == "v3"
    assert choose_version(split, "user-1", rng) == "v1"
    with pytest.raises(InvalidInput) as caught:
        choose_version(split, "user-1", rng, forced="v9")
    assert caught.value.field == "forced"
    assert "v9" in caught.value.message


def test_shadow_fraction_is_respected() -> None:
    """About ``shadow_fraction`` of requests are shadowed; none without a shadow version."""
    rng = random.Random(5)
    split = TrafficSplit.of({"v1": 100.0}, shadow_version="v2", shadow_fraction=0.25)
    num = 40_000
    share = sum(should_shadow(split, rng) for _ in range(num)) / num
    assert abs(share - 0.25) <= 0.01
    assert not any(should_shadow(TrafficSplit.of({"v1": 100.0}), rng) for _ in range(100))
    full = TrafficSplit.of({"v1": 100.0}, shadow_version="v2", shadow_fraction=1.0)
    assert all(should_shadow(full, rng) for _ in range(100))
