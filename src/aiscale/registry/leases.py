"""Named leases on the registry's database: who drives a rollout when several gateways run.

On PostgreSQL a lease is a session advisory lock held on one dedicated connection of this
process: at most one process holds a name at a time, and the database frees it by itself
when the process dies or its connection breaks, so another gateway can take over. On SQLite
(one gateway per registry file) every lease is granted in process.

It never decides who should drive; callers ask (``try_acquire``), check their leases are
still held (``check``) and give them back (``release``). Every method is synchronous SQL
on that one connection, serialised by a lock; callers on an event loop use a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import threading

import sqlalchemy as sa
from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)


class SqlLeases:
    """The leases this process holds on one registry (``SqlRegistry.open_leases``)."""

    def __init__(self, engine: Engine, scope: str) -> None:
        self._engine = engine
        self._scope = scope
        self._is_postgres = engine.dialect.name == "postgresql"
        self._conn: sa.Connection | None = None
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def _key(self, name: str) -> int:
        digest = hashlib.blake2b(f"{self._scope}\0{name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def is_held(self, name: str) -> bool:
        return name in self._held

    def try_acquire(self, name: str) -> bool:
        """Take ``name`` unless another process holds it; True if this process holds it now."""
        with self._lock:
            if name in self._held:
                return True
            if self._is_postgres:
                got = self._connection().execute(
                    sa.select(sa.func.pg_try_advisory_lock(self._key(name)))
                ).scalar_one()
                if not got:
                    return False
            self._held.add(name)
            return True

    def release(self, name: str) -> None:
        with self._lock:
            if name not in self._held:
                return
            self._held.discard(name)
            if self._is_postgres and self._conn is not None:
                try:
                    self._conn.execute(sa.select(sa.func.pg_advisory_unlock(self._key(name))))
                except sa.exc.DBAPIError:
                    self._drop()

    def check(self) -> bool:
        """True while every held lease is still held; False (and none held) once the
        connection that held them broke (the database has released them)."""
        with self._lock:
            if not self._is_postgres or not self._held:
                return True
            try:
                self._connection().execute(sa.text("SELECT 1"))
            except sa.exc.DBAPIError:
                logger.warning("lost the registry connection holding leases %s", sorted(self._held))
                self._drop()
                return False
            return True

    def _drop(self) -> None:
        self._held.clear()
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except sa.exc.DBAPIError:
                pass
            self._conn = None

    def close(self) -> None:
        """Give every lease back (closing the connection frees them all)."""
        with self._lock:
            self._held.clear()
            if self._conn is not None:
                self._conn.close()
                self._conn = None
