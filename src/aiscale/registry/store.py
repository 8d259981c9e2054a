"""The registry's SQL store: models, immutable versions, aliases, deployments and API keys.

``SqlRegistry`` runs on SQLAlchemy Core over SQLite (default, one file) or PostgreSQL (by URL,
optionally in its own schema), with the same tables and Alembic migrations on both. It is
synchronous and thread-safe: every call is one short transaction on a pooled connection, so the
gateway calls it through ``anyio.to_thread`` and a CLI process may share the SQLite file with a
running server. It never stores an API key's plaintext and never changes a written version.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from aiscale.errors import ConfigError, Conflict, InvalidInput, NotFound
from aiscale.registry import _database
from aiscale.registry.leases import SqlLeases
from aiscale.registry.records import (
    SCOPES,
    DeploymentRecord,
    KeyRecord,
    LlmLimits,
    ModelRecord,
    VersionRecord,
)
from aiscale.registry.rollouts import SqlRolloutRecords
from aiscale.registry.tables import aliases, api_keys, deployments, models, versions

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_NUMBER_RE = re.compile(r"^[0-9]+$")
#: Prefix of every API key plaintext, so that a leaked key is easy to recognise.
KEY_PREFIX = "ask_"

Clock = Callable[[], datetime]


def hash_key(plaintext: str) -> str:
    """The sha256 hex digest under which an API key is stored and looked up."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def validate_name(value: str, field: str) -> str:
    """Return ``value`` if it is a valid model/alias/deployment/version name, else InvalidInput."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidInput(
            f"invalid {field} {value!r}: use 1-63 of a-z 0-9 . _ - starting with a letter or digit",
            field=field,
        )
    return value


#: The largest count a limit may have: the ledger's Redis scripts compute in doubles,
#: exact up to 2**53.
MAX_LIMIT_COUNT = 10**15
#: The largest money budget, in US dollars: 2**53 nano-dollars, rounded down.
MAX_BUDGET_USD = Decimal(9_000_000)
_MICROS = Decimal(1_000_000)
_COUNT_LIMITS = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent",
    "budget_tokens_per_day",
    "budget_tokens_per_month",
)
_MONEY_LIMITS = ("budget_usd_per_day", "budget_usd_per_month")


def parse_usd(value: object, field: str) -> Decimal:
    """A money amount in US dollars: > 0, at most 6 decimal places and ``MAX_BUDGET_USD``.

    Accepts a ``Decimal``, an ``int`` or a decimal string (never a float, which would
    round); anything else is ``InvalidInput`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise InvalidInput(f"{field} must be a decimal number of US dollars", field=field)
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise InvalidInput(
            f"{field} must be a decimal number of US dollars, got {value!r}", field=field
        ) from None
    if not amount.is_finite() or not amount > 0 or amount > MAX_BUDGET_USD:
        raise InvalidInput(
            f"{field} must be > 0 and at most {MAX_BUDGET_USD} US dollars, got {value}",
            field=field,
        )
    if amount != amount.quantize(Decimal("0.000001")):
        raise InvalidInput(f"{field} takes at most 6 decimal places, got {value}", field=field)
    return amount


def validate_llm_limits(limits: LlmLimits) -> LlmLimits:
    """Return ``limits`` if every measure is ``None`` or in range, else ``InvalidInput``
    naming the measure (counts: whole numbers 1..10**15; money: see ``parse_usd``)."""
    for name in _COUNT_LIMITS:
        count = getattr(limits, name)
        if count is None:
            continue
        if isinstance(count, bool) or not isinstance(count, int):
            raise InvalidInput(f"{name} must be a whole number", field=name)
        if not 1 <= count <= MAX_LIMIT_COUNT:
            raise InvalidInput(
                f"{name} must be between 1 and {MAX_LIMIT_COUNT}, got {count}", field=name
            )
    for name in _MONEY_LIMITS:
        amount = getattr(limits, name)
        if amount is not None:
            parse_usd(amount, name)
    return limits


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything the store writes is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_object(value: dict[str, Any] | None, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", field=field)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} is not JSON-serialisable: {exc}", field=field) from exc
    return value


class SqlRegistry:
    """The registry on one SQL database. Create with ``SqlRegistry.open(url)``; ``close()`` it.

    Progressive rollouts and traffic history are kept by ``self.rollouts`` (``rollouts.py``).

    Errors: ``NotFound`` (names the unknown thing), ``Conflict`` (exists already / immutable),
    ``InvalidInput`` (bad name, scope or value; ``field`` set), ``ConfigError`` (unusable URL).
    """

    def __init__(
        self, base_engine: Engine, engine: Engine, *, clock: Clock, schema: str | None = None
    ) -> None:
        """Internal: use ``open``. ``engine`` may map tables into a schema; ``base_engine`` owns
        the pool."""
        self._base_engine = base_engine
        self._engine = engine
        self._clock = clock
        self._schema = schema
        #: Rollouts, their decisions and traffic history, on the same database and clock.
        self.rollouts = SqlRolloutRecords(engine, clock=clock)

    @classmethod
    def open(
        cls, url: str, *, schema: str | None = None, clock: Clock | None = None
    ) -> SqlRegistry:
        """Connect to ``url``, upgrade the database to the newest schema, return the store.

        ``schema`` places the tables and the migration history in that PostgreSQL schema,
        created if missing. ``clock`` returns the UTC datetime to record (tests inject one).
        An in-memory SQLite URL (``sqlite://``) shares one connection: use it from one thread.
        Raises ConfigError when the database cannot be reached or the URL is unusable.
        """
        base, engine = _database.create_engine(url, schema=schema)
        try:
            _database.upgrade_to_head(engine, schema=schema)
        except sa.exc.OperationalError as exc:
            base.dispose()
            shown = sa.make_url(url).render_as_string(hide_password=True)
            raise ConfigError(
                f"cannot open registry at {shown}: {exc.orig}", field="registry_url"
            ) from exc
        return cls(base, engine, clock=clock or _utc_now, schema=schema)

    def open_leases(self) -> SqlLeases:
        """Leases (who drives what) on this database, held by the calling process; see
        ``leases.py``. Close them before closing the store."""
        return SqlLeases(self._engine, self._schema or "")

    def close(self) -> None:
        """Release every pooled connection. The store must not be used afterwards."""
        self._base_engine.dispose()

    def __enter__(self) -> SqlRegistry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, is_write: bool = False) -> Iterator[sa.Connection]:
        with self._engine.connect() as conn:
            if is_write:
                conn.execution_options(**{_database.WRITE_OPTION: True})
            with conn.begin():
                yield conn

    # ------------------------------------------------------------------ models

    def create_model(self, name: str, description: str = "") -> ModelRecord:
        """Create a model. Raises Conflict if it exists."""
        validate_name(name, "model")
        record = ModelRecord(name=name, description=description, created_at=self._clock())
        try:
            with self._transaction(is_write=True) as conn:
                conn.execute(models.insert().values(
                    name=name, description=description, created_at=record.created_at
                ))
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"model {name!r} exists already", field="model") from exc
        return record

    def get_model(self, name: str) -> ModelRecord:
        """Raises NotFound for an unknown model."""
        with self._transaction() as conn:
            row = conn.execute(models.select().where(models.c.name == name)).one_or_none()
        if row is None:
            raise NotFound(f"unknown model {name!r}", field="model")
        return _model_record(row)

    def list_models(self) -> list[ModelRecord]:
        """Every model, by name."""
        with self._transaction() as conn:
            rows = conn.execute(models.select().order_by(models.c.name)).all()
        return [_model_record(row) for row in rows]

    # ---------------------------------------------------------------- versions

    def register_version(
        self,
        model: str,
        *,
        runtime: str,
        uri: str,
        artifact_digest: str | None = None,
        config: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        schema: dict[str, Any] | None = None,
        version: str | None = None,
    ) -> VersionRecord:
        """Write a new, immutable version; the model is created if missing.

        ``version=None`` numbers it one past the highest numeric version ("1", "2", ...).
        Raises Conflict if the version exists, InvalidInput for a bad name or value.
        """
        validate_name(model, "model")
        if version is not None:
            validate_name(version, "version")
        if not runtime:
            raise InvalidInput("runtime must not be empty", field="runtime")
        if not uri:
            raise InvalidInput("uri must not be empty", field="uri")
        values: dict[str, Any] = {
            "model": model,
            "runtime": runtime,
            "uri": uri,
            "artifact_digest": artifact_digest,
            "config": _json_object(config, "config"),
            "metadata": _json_object(metadata, "metadata"),
            "schema": None if schema is None else _json_object(schema, "schema"),
        }
        try:
            return self._insert_version(values, version)
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"cannot register {model!r}: {exc.orig}", field="version") from exc

    def _insert_version(self, values: dict[str, Any], version: str | None) -> VersionRecord:
        model = values["model"]
        now = self._clock()
        with self._transaction(is_write=True) as conn:
            upsert = _insert_ignoring_conflict(conn, models)
            conn.execute(upsert.values(name=model, description="", created_at=now))
            # The model row's lock serialises numbering per model on PostgreSQL; SQLite has
            # serialised the whole write transaction already (BEGIN IMMEDIATE).
            conn.execute(
                sa.select(models.c.name).where(models.c.name == model).with_for_update()
            )
            existing = conn.execute(
                sa.select(versions.c.version).where(versions.c.model == model)
            ).scalars().all()
            if version is None:
                numbers = [int(v) for v in existing if _NUMBER_RE.match(v)]
                version = str(max(numbers, default=0) + 1)
            elif version in existing:
                raise Conflict(
                    f"version {version!r} of model {model!r} exists; versions are immutable",
                    field="version",
                )
            row = {**values, "version": version, "created_at": now}
            conn.execute(versions.insert().values(**row))
        return VersionRecord(**row)

    def get_version(self, model: str, version_or_alias: str) -> VersionRecord:
        """The version named ``version_or_alias``, or the one that alias points at.

        A version name wins over an alias of the same name. Raises NotFound naming the
        unknown model, or the unknown version/alias.
        """
        with self._transaction() as conn:
            row = conn.execute(versions.select().where(
                versions.c.model == model, versions.c.version == version_or_alias
            )).one_or_none()
            if row is None:
                target = conn.execute(sa.select(aliases.c.version).where(
                    aliases.c.model == model, aliases.c.alias == version_or_alias
                )).scalar_one_or_none()
                if target is not None:
                    row = conn.execute(versions.select().where(
                        versions.c.model == model, versions.c.version == target
                    )).one()
            if row is None:
                self._require_model(conn, model)
                raise NotFound(
                    f"model {model!r} has no version or alias {version_or_alias!r}",
                    field="version",
                )
        return _version_record(row)

    def list_versions(self, model: str) -> list[VersionRecord]:
        """Every version of ``model`` in registration order. Raises NotFound for the model."""
        with self._transaction() as conn:
            self._require_model(conn, model)
            rows = conn.execute(versions.select().where(versions.c.model == model)).all()
        records = [_version_record(row) for row in rows]
        return sorted(records, key=lambda r: (r.created_at, _version_sort_key(r.version)))

    # ----------------------------------------------------------------- aliases

    def set_alias(self, model: str, alias: str, version: str) -> None:
        """Point ``alias`` at an existing ``version`` (an alias moves if it exists)."""
        validate_name(alias, "alias")
        with self._transaction(is_write=True) as conn:
            self._require_model(conn, model)
            exists = conn.execute(sa.select(versions.c.version).where(
                versions.c.model == model, versions.c.version == version
            )).first()
            if exists is None:
                raise NotFound(f"model {model!r} has no version {version!r}", field="version")
            moved = conn.execute(aliases.update().where(
                aliases.c.model == model, aliases.c.alias == alias
            ).values(version=version))
            if moved.rowcount == 0:
                conn.execute(aliases.insert().values(model=model, alias=alias, version=version))

    def delete_alias(self, model: str, alias: str) -> None:
        """Remove an alias. Raises NotFound if it does not exist."""
        with self._transaction(is_write=True) as conn:
            deleted = conn.execute(aliases.delete().where(
                aliases.c.model == model, aliases.c.alias == alias
            ))
            if deleted.rowcount == 0:
                self._require_model(conn, model)
                raise NotFound(f"model {model!r} has no alias {alias!r}", field="alias")

    def list_aliases(self, model: str) -> dict[str, str]:
        """``{alias: version}`` for ``model``. Raises NotFound for the model."""
        with self._transaction() as conn:
            self._require_model(conn, model)
            rows = conn.execute(
                sa.select(aliases.c.alias, aliases.c.version)
                .where(aliases.c.model == model)
                .order_by(aliases.c.alias)
            ).all()
        return {row.alias: row.version for row in rows}

    # ------------------------------------------------------------- deployments

    def _upsert_deployment(self, name: str, values: dict[str, Any], now: datetime) -> datetime:
        with self._transaction(is_write=True) as conn:
            created: datetime | None = conn.execute(sa.select(deployments.c.created_at).where(
                deployments.c.name == name
            )).scalar_one_or_none()
            if created is None:
                conn.execute(deployments.insert().values(name=name, created_at=now, **values))
                return now
            conn.execute(deployments.update().where(
                deployments.c.name == name
            ).values(**values))
            return created

    def put_deployment(self, record: DeploymentRecord) -> DeploymentRecord:
        """Insert or replace a deployment; returns it as stored (timestamps set).

        ``record.version`` may be a version or an alias of ``record.model`` and must resolve
        now. ``created_at`` is kept on update; ``updated_at`` is set to the clock's time.
        """
        validate_name(record.name, "deployment")
        if not isinstance(record.replicas, int) or record.replicas < 0:
            raise InvalidInput("replicas must be an integer >= 0", field="replicas")
        config = _json_object(record.config, "config")
        self.get_version(record.model, record.version)
        now = self._clock()
        values = {"model": record.model, "version": record.version,
                  "replicas": record.replicas, "config": config, "updated_at": now}
        try:
            created = self._upsert_deployment(record.name, values, now)
        except sa.exc.IntegrityError:
            # Another gateway inserted the same new deployment at the same moment: update it.
            created = self._upsert_deployment(record.name, values, now)
        return DeploymentRecord(name=record.name, model=record.model, version=record.version,
                                replicas=record.replicas, config=config,
                                created_at=_as_utc(created), updated_at=now)

    def get_deployment(self, name: str) -> DeploymentRecord:
        """Raises NotFound for an unknown deployment."""
        with self._transaction() as conn:
            row = conn.execute(
                deployments.select().where(deployments.c.name == name)
            ).one_or_none()
        if row is None:
            raise NotFound(f"unknown deployment {name!r}", field="deployment")
        return _deployment_record(row)

    def list_deployments(self) -> list[DeploymentRecord]:
        """Every deployment, by name."""
        with self._transaction() as conn:
            rows = conn.execute(deployments.select().order_by(deployments.c.name)).all()
        return [_deployment_record(row) for row in rows]

    def delete_deployment(self, name: str) -> None:
        """Raises NotFound for an unknown deployment."""
        with self._transaction(is_write=True) as conn:
            deleted = conn.execute(deployments.delete().where(deployments.c.name == name))
        if deleted.rowcount == 0:
            raise NotFound(f"unknown deployment {name!r}", field="deployment")

    # -------------------------------------------------------------------- keys

    def create_key(
        self,
        name: str,
        scopes: frozenset[str],
        rate_limit_per_s: float | None = None,
        *,
        team: str | None = None,
        llm_limits: LlmLimits | None = None,
    ) -> tuple[str, KeyRecord]:
        """Create an API key; returns ``(plaintext, record)``. The plaintext is not kept.

        ``scopes`` must be a non-empty subset of ``SCOPES``; ``rate_limit_per_s`` > 0 or None.
        ``team`` (a name like a model's) and ``llm_limits`` are checked as in
        ``set_key_llm_limits``.
        """
        if team is not None:
            validate_name(team, "team")
        limits = validate_llm_limits(llm_limits or LlmLimits())
        if not name or len(name) > 255:
            raise InvalidInput("key name must be 1-255 characters", field="name")
        unknown = set(scopes) - SCOPES
        if unknown or not scopes:
            raise InvalidInput(
                f"scopes must be a non-empty subset of {sorted(SCOPES)}, got {sorted(scopes)}",
                field="scopes",
            )
        if rate_limit_per_s is not None and not rate_limit_per_s > 0:
            raise InvalidInput("rate limit must be > 0 items/s", field="rate_limit_per_s")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            key_id=secrets.token_hex(6),
            name=name,
            key_hash=hash_key(plaintext),
            scopes=frozenset(scopes),
            rate_limit_per_s=rate_limit_per_s,
            created_at=self._clock(),
            team=team,
            llm_limits=limits,
        )
        with self._transaction(is_write=True) as conn:
            conn.execute(api_keys.insert().values(
                key_id=record.key_id, name=name, key_hash=record.key_hash,
                scopes=",".join(sorted(record.scopes)), rate_limit_per_s=rate_limit_per_s,
                created_at=record.created_at, revoked_at=None,
                team=team, **_limit_columns(limits),
            ))
        return plaintext, record

    def set_key_llm_limits(
        self, key_id: str, *, team: str | None, llm_limits: LlmLimits
    ) -> KeyRecord:
        """Replace a key's team and LLM limits (all of them: a measure left ``None`` is
        unlimited afterwards). Gateways pick the change up with their next key refresh.

        Raises NotFound for an unknown key, InvalidInput for a bad team or limit."""
        if team is not None:
            validate_name(team, "team")
        validate_llm_limits(llm_limits)
        with self._transaction(is_write=True) as conn:
            conn.execute(api_keys.update().where(api_keys.c.key_id == key_id).values(
                team=team, **_limit_columns(llm_limits)
            ))
            row = conn.execute(
                api_keys.select().where(api_keys.c.key_id == key_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"unknown key id {key_id!r}", field="key_id")
        return _key_record(row)

    def get_key(self, key_id: str) -> KeyRecord:
        """The key with id ``key_id`` (revoked or not). Raises NotFound."""
        with self._transaction() as conn:
            row = conn.execute(
                api_keys.select().where(api_keys.c.key_id == key_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"unknown key id {key_id!r}", field="key_id")
        return _key_record(row)

    def list_keys(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._transaction() as conn:
            rows = conn.execute(
                api_keys.select().order_by(api_keys.c.created_at, api_keys.c.key_id)
            ).all()
        return [_key_record(row) for row in rows]

    def active_keys(self) -> list[KeyRecord]:
        """Keys not revoked, oldest first (the gateway loads these to authenticate)."""
        return [key for key in self.list_keys() if key.revoked_at is None]

    def get_key_by_hash(self, key_hash: str) -> KeyRecord:
        """The key stored under ``key_hash`` (revoked or not). Raises NotFound."""
        with self._transaction() as conn:
            row = conn.execute(
                api_keys.select().where(api_keys.c.key_hash == key_hash)
            ).one_or_none()
        if row is None:
            raise NotFound("unknown API key", field="key")
        return _key_record(row)

    def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke a key (idempotent: the first revocation time is kept). Raises NotFound."""
        with self._transaction(is_write=True) as conn:
            conn.execute(api_keys.update().where(
                api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None)
            ).values(revoked_at=self._clock()))
            row = conn.execute(
                api_keys.select().where(api_keys.c.key_id == key_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"unknown key id {key_id!r}", field="key_id")
        return _key_record(row)

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _require_model(conn: sa.Connection, model: str) -> None:
        if conn.execute(sa.select(models.c.name).where(models.c.name == model)).first() is None:
            raise NotFound(f"unknown model {model!r}", field="model")


def _insert_ignoring_conflict(conn: sa.Connection, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _version_sort_key(version: str) -> tuple[int, int, str]:
    return (0, int(version), "") if _NUMBER_RE.match(version) else (1, 0, version)


def _model_record(row: sa.Row[Any]) -> ModelRecord:
    return ModelRecord(name=row.name, description=row.description,
                       created_at=_as_utc(row.created_at))


def _version_record(row: sa.Row[Any]) -> VersionRecord:
    return VersionRecord(
        model=row.model, version=row.version, runtime=row.runtime, uri=row.uri,
        artifact_digest=row.artifact_digest, config=dict(row.config),
        metadata=dict(row.metadata), schema=None if row.schema is None else dict(row.schema),
        created_at=_as_utc(row.created_at),
    )


def _deployment_record(row: sa.Row[Any]) -> DeploymentRecord:
    return DeploymentRecord(
        name=row.name, model=row.model, version=row.version, replicas=row.replicas,
        config=dict(row.config), created_at=_as_utc(row.created_at),
        updated_at=_as_utc(row.updated_at),
    )


def _limit_columns(limits: LlmLimits) -> dict[str, int | None]:
    """The ``api_keys`` columns of ``limits``: counts as they are, money in micro-dollars."""
    columns: dict[str, int | None] = {name: getattr(limits, name) for name in _COUNT_LIMITS}
    for name in _MONEY_LIMITS:
        amount: Decimal | None = getattr(limits, name)
        column = name.replace("budget_usd_", "budget_usd_micros_")
        columns[column] = None if amount is None else int(amount * _MICROS)
    return columns


def _llm_limits(row: sa.Row[Any]) -> LlmLimits:
    def usd(micros: int | None) -> Decimal | None:
        return None if micros is None else Decimal(micros) / _MICROS

    return LlmLimits(
        requests_per_minute=row.requests_per_minute,
        tokens_per_minute=row.tokens_per_minute,
        max_concurrent=row.max_concurrent,
        budget_tokens_per_day=row.budget_tokens_per_day,
        budget_tokens_per_month=row.budget_tokens_per_month,
        budget_usd_per_day=usd(row.budget_usd_micros_per_day),
        budget_usd_per_month=usd(row.budget_usd_micros_per_month),
    )


def _key_record(row: sa.Row[Any]) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id, name=row.name, key_hash=row.key_hash,
        scopes=frozenset(s for s in row.scopes.split(",") if s),
        rate_limit_per_s=row.rate_limit_per_s, created_at=_as_utc(row.created_at),
        revoked_at=None if row.revoked_at is None else _as_utc(row.revoked_at),
        team=row.team, llm_limits=_llm_limits(row),
    )
