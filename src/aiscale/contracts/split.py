"""The traffic split of a deployment: which model version answers a request.

A ``TrafficSplit`` holds percentage weights over versions in a fixed order, and optionally a
shadow version that receives a copy of a fraction of requests (its answers are compared, never
returned). ``choose_version`` is called once per request on the gateway's hot path:

* a ``forced`` version (from a request header) wins when it names a version of the split;
* with a user key, the key is hashed (blake2b, salted per deployment) to a point in
  ``[0, 2**64)`` and mapped onto the cumulative weights, so the same user always lands on the
  same version while the weights stay the same (sticky assignment; experiments measure users);
* without a key, the injected ``random.Random`` draws the point.

Why the version order is fixed: each version owns one interval of the hash space, laid out in
the split's order. When a rollout moves weight from the baseline (first) to the canary (last),
only the boundary between them moves, so users only ever move baseline -> canary while the canary
grows, and canary -> baseline when it shrinks (an abort): never back and forth. Callers must
therefore keep the order of versions stable over the life of a rollout (``canary_split`` does:
baseline first, canary last). With three or more versions, moving weight between two versions
that are not neighbours also moves the users of the versions in between.

This module never does I/O, never reads a clock and never uses global randomness.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiscale.errors import InvalidInput

__all__ = ["TrafficSplit", "canary_split", "choose_version", "should_shadow"]

#: Weights must sum to 100 within this tolerance (percentage points).
_SUM_TOLERANCE = 1e-6
#: blake2b accepts keys of at most 64 bytes; longer salts are hashed down first.
_MAX_SALT_BYTES = 64


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """Percentage weights over model versions, in a fixed order, plus an optional shadow.

    ``weights`` is a tuple of ``(version, percent)`` pairs; percents are finite, non-negative
    and sum to 100. A version may carry weight 0 (it then gets only forced traffic). ``salt``
    decorrelates the user hash between deployments, so the same 1 % of users is not the canary
    population of every deployment. ``shadow_version`` receives a copy of ``shadow_fraction``
    (0..1) of requests; it must not also carry live weight.

    Raises ``InvalidInput`` naming the bad field (``weights``, ``weights.<version>``,
    ``shadow_version``, ``shadow_fraction``).
    """

    weights: tuple[tuple[str, float], ...]
    shadow_version: str | None = None
    shadow_fraction: float = 0.0
    salt: str = ""
    # Precomputed lookup tables for the hot path (derived from the fields above).
    _versions: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _hash_bounds: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _random_bounds: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _known: frozenset[str] = field(init=False, repr=False, compare=False)
    _hash_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.weights:
            raise InvalidInput("a traffic split needs at least one version", field="weights")
        versions: list[str] = []
        total = 0.0
        for pair in self.weights:
            if len(pair) != 2:
                raise InvalidInput("weights are (version, percent) pairs", field="weights")
            version, weight = pair
            if not isinstance(version, str) or not version:
                raise InvalidInput("a version name must be a non-empty string", field="weights")
            if version in versions:
                raise InvalidInput(f"version {version!r} appears twice", field="weights")
            if not isinstance(weight, int | float) or not math.isfinite(weight):
                raise InvalidInput(
                    f"weight of {version!r} must be a finite number", field=f"weights.{version}"
                )
            if weight < 0:
                raise InvalidInput(
                    f"weight of {version!r} is negative ({weight})", field=f"weights.{version}"
                )
            versions.append(version)
            total += weight
        if abs(total - 100.0) > _SUM_TOLERANCE:
            raise InvalidInput(f"weights must sum to 100, not {total:g}", field="weights")
        self._check_shadow(versions)

        cumulative: list[float] = []
        running = 0.0
        for _, weight in self.weights:
            running += weight
            cumulative.append(running / total)
        # The last bound is exactly 1.0 (running == total), so every point maps to a version.
        random_bounds = tuple(cumulative)
        hash_bounds = tuple(min(1 << 64, int(bound * (1 << 64))) for bound in random_bounds)
        salt_bytes = self.salt.encode()
        if len(salt_bytes) > _MAX_SALT_BYTES:
            salt_bytes = hashlib.blake2b(salt_bytes).digest()
        object.__setattr__(self, "_versions", tuple(versions))
        object.__setattr__(self, "_random_bounds", random_bounds)
        object.__setattr__(self, "_hash_bounds", hash_bounds)
        known = set(versions)
        if self.shadow_version is not None:
            known.add(self.shadow_version)
        object.__setattr__(self, "_known", frozenset(known))
        object.__setattr__(self, "_hash_key", salt_bytes)

    def _check_shadow(self, versions: list[str]) -> None:
        fraction = self.shadow_fraction
        if not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise InvalidInput(
                f"shadow_fraction must be within [0, 1], not {fraction!r}", field="shadow_fraction"
            )
        if self.shadow_version is None:
            if fraction > 0:
                raise InvalidInput(
                    "shadow_fraction > 0 needs a shadow_version", field="shadow_version"
                )
            return
        if not isinstance(self.shadow_version, str) or not self.shadow_version:
            raise InvalidInput("shadow_version must be a non-empty string", field="shadow_version")
        live = dict(self.weights).get(self.shadow_version, 0.0)
        if live > 0:
            raise InvalidInput(
                f"shadow version {self.shadow_version!r} also carries {live:g} % live traffic",
                field="shadow_version",
            )

    @classmethod
    def of(
        cls,
        weights: Mapping[str, float],
        *,
        shadow_version: str | None = None,
        shadow_fraction: float = 0.0,
        salt: str = "",
    ) -> TrafficSplit:
        """Build a split from a mapping; its iteration order becomes the fixed version order."""
        return cls(tuple(weights.items()), shadow_version, shadow_fraction, salt)

    @property
    def versions(self) -> tuple[str, ...]:
        """The live versions, in the split's fixed order (zero-weight ones included)."""
        return self._versions

    def weight_of(self, version: str) -> float:
        """The percent of live traffic ``version`` gets; ``InvalidInput`` if unknown."""
        for name, weight in self.weights:
            if name == version:
                return float(weight)
        raise InvalidInput(f"version {version!r} is not in the split", field="version")


def canary_split(
    baseline: str,
    canary: str,
    canary_percent: float,
    *,
    salt: str = "",
    shadow_version: str | None = None,
    shadow_fraction: float = 0.0,
) -> TrafficSplit:
    """The two-version split of a canary step: baseline first, canary last (a stable order)."""
    if baseline == canary:
        raise InvalidInput("baseline and canary must differ", field="canary")
    if not isinstance(canary_percent, int | float) or not 0.0 <= canary_percent <= 100.0:
        raise InvalidInput(
            f"canary_percent must be within [0, 100], not {canary_percent!r}",
            field="canary_percent",
        )
    return TrafficSplit(
        ((baseline, 100.0 - canary_percent), (canary, float(canary_percent))),
        shadow_version=shadow_version,
        shadow_fraction=shadow_fraction,
        salt=salt,
    )


def choose_version(
    split: TrafficSplit,
    user_key: str | None,
    rng: random.Random,
    forced: str | None = None,
) -> str:
    """The version that answers this request.

    ``forced`` (a version named by the client) wins when it is one of the split's versions or
    its shadow version; any other name raises ``InvalidInput`` (field ``forced``) rather than
    silently serving a different version. With ``user_key`` the choice is a pure function of
    the key, the salt and the weights (``rng`` is not touched); without one it is drawn from
    ``rng``. Called on the request hot path: one short hash and one bisect over precomputed
    bounds.
    """
    if forced is not None:
        if forced in split._known:
            return forced
        raise InvalidInput(
            f"version {forced!r} is not served by this deployment "
            f"(known: {', '.join(sorted(split._known))})",
            field="forced",
        )
    if user_key is not None:
        digest = hashlib.blake2b(user_key.encode(), digest_size=8, key=split._hash_key).digest()
        point = int.from_bytes(digest, "big")
        return split._versions[bisect.bisect_right(split._hash_bounds, point)]
    return split._versions[bisect.bisect_right(split._random_bounds, rng.random())]


def should_shadow(split: TrafficSplit, rng: random.Random) -> bool:
    """Whether this request is also copied to ``split.shadow_version``.

    Draws from ``rng`` only when a shadow is configured with a fraction strictly between 0 and 1.
    """
    fraction = split.shadow_fraction
    if split.shadow_version is None or fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    return rng.random() < fraction
