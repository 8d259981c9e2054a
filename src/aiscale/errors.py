"""The one exception tree of aiscale. Domain errors carry no HTTP knowledge.

The gateway maps each class to a status code in one table (``serving/errors.py``).

    AiscaleError
    ├── ConfigError                 invalid configuration (names the dotted field path)
    ├── InvalidInput                a request or argument breaks the contract (names the field)
    │   ├── PayloadTooLarge         body over the configured limit
    │   ├── MethodNotAllowed        the endpoint exists but not for this method
    │   ├── UnsupportedMediaType    a body whose Content-Type the endpoint does not take
    │   ├── MisdirectedRequest      a Host header naming none of this server's names
    │   └── RequestTimeout          the body did not arrive in time (a slow client)
    ├── NotFound                    unknown model, version, alias, deployment or key
    ├── Conflict                    the thing exists already, or an immutable thing would change
    ├── AuthError                   missing or wrong API key
    │   └── Forbidden               the key lacks the scope
    ├── Overloaded                  a bounded queue is full or a rate limit hit (retry_after_s)
    │   └── RateLimited             the key's token bucket is empty
    ├── DeadlineExceeded            the request's deadline passed before it was answered
    ├── ReplicaError                the model raised inside a replica (keeps the original type name)
    ├── ReplicaUnavailable          a replica died or no replica is ready (names the cause)
    ├── ModelLoadError              a runtime could not load a model
    └── UpstreamUnavailable         a service we read from (Prometheus, ...) failed or is down
"""

from __future__ import annotations


class AiscaleError(Exception):
    """Root of every error aiscale raises on purpose.

    ``field`` names the offending input or config path where there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(AiscaleError):
    """Configuration is invalid; ``field`` is the dotted path of the bad field."""


class InvalidInput(AiscaleError):
    """A request or argument does not fit the declared contract."""


class PayloadTooLarge(InvalidInput):
    """A request body is larger than the configured maximum."""


class MethodNotAllowed(InvalidInput):
    """The endpoint exists, but not for this method."""


class UnsupportedMediaType(InvalidInput):
    """A request body of a content type the endpoint does not accept."""


class MisdirectedRequest(InvalidInput):
    """The ``Host`` the client asked for is not one of this server's (DNS rebinding)."""


class RequestTimeout(InvalidInput):
    """The client did not send its request body within the configured time."""


class NotFound(AiscaleError):
    """An unknown model, version, alias, deployment or key."""


class Conflict(AiscaleError):
    """The object exists already, or an immutable object would be changed."""


class AuthError(AiscaleError):
    """The API key is missing or wrong."""


class Forbidden(AuthError):
    """The API key is valid but lacks the scope for this endpoint."""


class Overloaded(AiscaleError):
    """Work is refused because a bounded resource is full; retry after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0, field: str | None = None):
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class RateLimited(Overloaded):
    """The caller's token bucket is empty."""


class DeadlineExceeded(AiscaleError):
    """The request's deadline passed before it was answered."""


class ReplicaError(AiscaleError):
    """The model raised inside a replica; ``type_name`` is the original exception's type."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


class ReplicaUnavailable(AiscaleError):
    """A replica died while holding the request, or no replica is ready."""


class ModelLoadError(AiscaleError):
    """A runtime could not load a model."""


class UpstreamUnavailable(AiscaleError):
    """A service aiscale reads from on the caller's behalf (Prometheus, ...) failed or is down."""
