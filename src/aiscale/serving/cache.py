"""An exact-match response cache bounded in bytes, and the data-only encoding of its values.

Keys are digests of (deployment, version, canonical input); values are model outputs
encoded by ``encode_output``: msgpack of plain data (None, bool, int, float, str, bytes,
lists, maps) plus numpy arrays and scalars as (dtype, shape, raw bytes). Decoding builds
data and nothing else: it never imports, calls or unpickles, so a value read from a store
another party can write (Redis, see ``shared_state.py``, which also authenticates it) can at
worst be wrong data, never code. Outputs that do not fit this encoding are not cached.
The LRU map below is in process only; ``RedisResponseCache`` is the scale-out counterpart.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import msgpack
import numpy as np

#: msgpack extension codes: a numpy array, and a numpy scalar (a 0-d array unwrapped).
_EXT_ARRAY = 1
_EXT_SCALAR = 2
#: dtype kinds a cached value may hold: plain numbers, booleans, strings, dates. Never
#: object ('O') or void ('V', whose fields may hide objects).
_DATA_KINDS = frozenset("biufcSUMm")


def cache_key(deployment: str, version: str, item_bytes: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(deployment.encode())
    digest.update(b"\0")
    digest.update(version.encode())
    digest.update(b"\0")
    digest.update(item_bytes)
    return digest.digest()


def _pack_array(array: np.ndarray[Any, Any]) -> bytes:
    if array.dtype.kind not in _DATA_KINDS:
        raise TypeError(f"numpy dtype {array.dtype} is not cacheable")
    # ``tobytes`` is C order whatever the layout; a 0-d array keeps its empty shape.
    packed: bytes = msgpack.packb(
        [array.dtype.str, list(array.shape), array.tobytes()], use_bin_type=True
    )
    return packed


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return msgpack.ExtType(_EXT_ARRAY, _pack_array(value))
    if isinstance(value, np.generic):
        return msgpack.ExtType(_EXT_SCALAR, _pack_array(np.asarray(value)))
    raise TypeError(f"{type(value).__name__} is not cacheable")


def _unpack_array(data: bytes) -> np.ndarray[Any, Any]:
    parts = msgpack.unpackb(data, raw=False, use_list=True)
    if (
        not isinstance(parts, list)
        or len(parts) != 3
        or not isinstance(parts[0], str)
        or not isinstance(parts[1], list)
        or not all(isinstance(n, int) and n >= 0 for n in parts[1])
        or not isinstance(parts[2], bytes)
    ):
        raise ValueError("malformed cached array")
    dtype = np.dtype(parts[0])  # a TypeError for a bad string: handled by the caller
    if dtype.kind not in _DATA_KINDS:
        raise ValueError(f"cached array of dtype {dtype} refused")
    array = np.frombuffer(parts[2], dtype=dtype).reshape(parts[1])
    return array.copy()  # writable, and not a view of the cache's bytes


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_ARRAY:
        return _unpack_array(data)
    if code == _EXT_SCALAR:
        return _unpack_array(data)[()]
    raise ValueError(f"unknown cached extension type {code}")


def encode_output(value: Any) -> bytes | None:
    """``value`` as data-only bytes; ``None`` when it holds something else (not cached)."""
    try:
        packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return None
    return packed


def decode_output(data: bytes) -> Any:
    """The value ``encode_output`` encoded (tuples come back as lists); ``ValueError`` if
    ``data`` is not such an encoding. Builds plain data only, whatever ``data`` holds."""
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, ext_hook=_ext_hook, strict_map_key=False
        )
    except ValueError:
        raise
    except Exception as exc:  # msgpack's own errors and numpy's TypeError: all malformed
        raise ValueError(f"malformed cached value: {type(exc).__name__}") from None


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
