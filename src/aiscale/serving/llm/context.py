"""What every LLM lane of one gateway shares: engine connections, Redis, the token ledger.

Made once by the gateway (``Gateway.llm``) and handed to each LLM lane it builds; closed when
the gateway stops, after the lanes. Holds no request state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiscale.serving.llm.engine_client import EngineClient

__all__ = ["LlmContext"]


@dataclass(slots=True)
class LlmContext:
    """``redis_url``/``key_prefix``: where ``prefix_aware`` routers share their index
    (``None``: each gateway keeps its own). ``ledger``: the token ledger
    (``aiscale.llm.ledger.TokenLedger``) every LLM request is admitted and settled by."""

    redis_url: str | None = None
    key_prefix: str = "aiscale:"
    ledger: Any = None
    client: EngineClient = field(default_factory=EngineClient)

    async def aclose(self) -> None:
        """Close the engine connections and the ledger (after every lane has stopped)."""
        await self.client.aclose()
        if self.ledger is not None:
            await self.ledger.close()
