"""An exact-match response cache bounded in bytes, least recently used out first.

Keys are digests of (deployment, version, canonical input); values are encoded outputs.
In process only; a Redis-backed cache with the same methods is the scale-out counterpart.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict


def cache_key(deployment: str, version: str, item_bytes: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(deployment.encode())
    digest.update(b"\0")
    digest.update(version.encode())
    digest.update(b"\0")
    digest.update(item_bytes)
    return digest.digest()


class ResponseCache:
    """LRU map from key to value bytes holding at most ``max_bytes`` of values and keys."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        cost = len(key) + len(value)
        if cost > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size_bytes -= len(key) + len(old)
        self._entries[key] = value
        self.size_bytes += cost
        while self.size_bytes > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.size_bytes -= len(evicted_key) + len(evicted)
