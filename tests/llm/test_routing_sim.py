"""The routing simulation: deterministic, and it tells the policies apart."""

from __future__ import annotations

from typing import Any

from aiscale.llm.routing_sim import simulate_multi_turn


def test_simulation_is_deterministic_and_prefix_aware_hits_the_cache_most() -> None:
    """The same seed gives the same result; on multi-turn traffic over 2 engines the
    prefix-aware router finds more of each prompt cached than round robin, and both engines
    serve (sticky conversations spread by conversation, so not as evenly as requests)."""
    small: dict[str, Any] = {"num_users": 6, "num_conversations": 12, "turns": 4}
    prefix = simulate_multi_turn("prefix_aware", **small)
    assert prefix == simulate_multi_turn("prefix_aware", **small)
    round_robin = simulate_multi_turn("round_robin", **small)
    assert prefix.num_requests == round_robin.num_requests == 48
    assert prefix.cache_hit_rate > round_robin.cache_hit_rate + 0.1, (prefix, round_robin)
    assert prefix.load_spread < 0.5, prefix.served
    assert prefix.decisions.get("prefix", 0) > 30, prefix.decisions
