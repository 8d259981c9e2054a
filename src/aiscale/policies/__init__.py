"""Pure serving policies shared by the live gateway and the simulator (standard library only)."""

from __future__ import annotations

from aiscale.policies.batching import batch_size_to_take

__all__ = ["batch_size_to_take"]
