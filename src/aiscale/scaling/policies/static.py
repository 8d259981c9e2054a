"""A fixed number of replicas: the baseline every other policy is compared against.

Pure; never reads the observation's load and never changes its answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import ScalingDecision, ScalingObservation


@dataclass(frozen=True, slots=True)
class StaticConfig:
    num_replicas: int = 1

    def __post_init__(self) -> None:
        if self.num_replicas < 0:
            raise ConfigError("num_replicas must be >= 0", field="num_replicas")


@dataclass(frozen=True, slots=True)
class StaticPolicy:
    """Always ``config.num_replicas``; its state is ``None``."""

    config: StaticConfig = StaticConfig()

    def initial_state(self) -> None:
        return None

    def decide(self, observation: ScalingObservation, state: None) -> tuple[ScalingDecision, None]:
        return ScalingDecision(self.config.num_replicas, "static"), None
