"""The node's weights cache: engine weights kept in object storage, fetched once per node.

An engine whose ``model`` is an object URI (``s3://bucket/key.gguf``) does not download it per
replica: ``WeightsCache.fetch`` finds the file in this node's content-addressed cache, or
fetches it there once, and every replica on the node (and every later scale-up, and the next
run of the gateway) loads that one file. Layout under the cache folder (0700)::

    sha256/<digest>            the weights, read-only (0400): the address is the content
    sha256/<digest>.ok         what the file looked like when its hash was last checked
    uris/<sha256 of the uri>   the digest last fetched for that uri (used only offline)
    locks/<digest>.lock        held (flock) by the one process fetching or checking it

**Which digest.** The expected sha256 comes from the caller (the config's
``engine.model_sha256``, or the registry version's ``artifact_digest``: a pin, and a cache hit
then needs no network at all); else from a ``<uri>.sha256`` object beside the model (the
``sha256sum`` format). Not the ETag: S3's ETag is an MD5 of a single-part upload and no hash
of the content at all for a multipart one. A model with neither is refused: unverified weights
are never served. When the store cannot be reached, the digest last fetched for that uri is
used, so a node with a warm cache still starts its replicas.

**Once per node.** Concurrent fetchers (replicas starting together, gateways on one node)
take an exclusive ``flock`` on the digest's lock file; the first downloads into a private
partial file while hashing it, checks the digest, and renames it into place (atomic on one
filesystem); the others wake to find it there. A crashed fetch leaves only a partial file
(removed by its ``finally``, or ignored: nothing reads ``.partial-*``).

**Verified by hash.** A download whose bytes do not match the digest is thrown away
(``ModelLoadError``). A cached file is re-hashed whenever it differs from its ``.ok`` stamp
(size, mtime, inode and ctime, which no user can set back), so a file changed in place is
found and fetched again; an unchanged one is not re-read on every start (hashing 100 GB at
each scale-up would cost more than the cache saves).

Blocking I/O: callers on an event loop run ``fetch`` in a thread (``asyncio.to_thread``).
Never evicts: the operator owns the cache's size (TODO(#16): an LRU bound).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiscale.engines.models import OBJECT_SCHEMES, check_object_uri
from aiscale.engines.spec import ObjectStoreOptions
from aiscale.errors import ModelLoadError

__all__ = ["DEFAULT_CACHE_DIR", "CachedWeights", "WeightsCache", "file_sha256"]

logger = logging.getLogger(__name__)

#: The node cache when the spec names none (beside the artifact store's download cache).
DEFAULT_CACHE_DIR = Path("~/.cache/aiscale/model-cache")
#: Bytes read and hashed at a time.
CHUNK_BYTES = 8 << 20
#: Object-store client settings: fail fast on a dead endpoint (the tries are the options').
_CLIENT_CONFIG: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 60}
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class CachedWeights:
    """One model file in the node's cache, and what it took to have it there."""

    path: Path
    sha256: str
    size_bytes: int
    #: ``True``: this call downloaded it; ``False``: it was in the cache already.
    was_fetched: bool
    #: Seconds this call took: digest look-up, waiting for another fetcher, download, hash.
    duration_s: float


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class WeightsCache:
    """The content-addressed weights cache in ``folder`` (default ``DEFAULT_CACHE_DIR``).

    ``options`` say how to reach the object store; ``environ`` is where their ``*_env``
    names are looked up (default ``os.environ``, read at each fetch, never at import).
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        options: ObjectStoreOptions | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder or DEFAULT_CACHE_DIR).expanduser()
        self._options = options or ObjectStoreOptions()
        self._environ = environ

    def path_of(self, sha256: str) -> Path:
        """Where the file of ``sha256`` lives in this cache (whether or not it is there)."""
        return self.folder / "sha256" / sha256

    def fetch(self, uri: str, *, sha256: str | None = None) -> CachedWeights:
        """The model at ``uri`` as a verified file in this node's cache, fetched if needed.

        ``sha256``: the expected digest (a pin); ``None`` reads ``<uri>.sha256``. Raises
        ``ConfigError`` for a malformed uri and ``ModelLoadError`` naming the cause for
        everything else: no digest, no such object, access denied, store unreachable with
        nothing cached, a download that does not match its digest.
        """
        started = time.monotonic()
        check_object_uri(uri)
        if sha256 is not None and not _is_sha256(sha256):
            raise ModelLoadError(f"model_sha256 for {uri} is not a sha256 (64 hex digits)")
        self._make_folders()
        store = _Store(uri, self._options, self._environ)
        digest = sha256 or self._digest_from_store(store)
        final = self.path_of(digest)
        was_fetched = False
        if not self._is_stamped(final):
            with self._locked(digest):
                # Another process may have fetched (or checked) it while we waited.
                if not self._is_intact(final, digest):
                    self._download(store, final, digest)
                    was_fetched = True
        self._remember(uri, digest)
        result = CachedWeights(
            final, digest, final.stat().st_size, was_fetched, time.monotonic() - started
        )
        logger.info(
            "weights %s: %s %s (%.0f MB) in %.2f s",
            uri,
            "fetched into" if was_fetched else "found in",
            final,
            result.size_bytes / 1e6,
            result.duration_s,
        )
        return result

    # ----- the digest ----------------------------------------------------------------
    def _digest_from_store(self, store: _Store) -> str:
        sidecar = f"{store.uri}.sha256"
        try:
            text = store.read_small(".sha256")
        except FileNotFoundError:
            store.require_object()
            raise ModelLoadError(
                f"no sha256 for {store.uri}: set engine.model_sha256, register the version "
                f"with its artifact digest, or store `sha256sum` output at {sidecar}"
            ) from None
        except ModelLoadError as exc:
            remembered = self._remembered(store.uri)
            if remembered is None:
                raise
            logger.warning(
                "cannot read %s (%s); using the digest fetched before, %s",
                sidecar, exc.message, remembered,
            )
            return remembered
        words = text.decode("utf-8", "replace").split()
        digest = words[0].lower() if words else ""
        if not _is_sha256(digest):
            raise ModelLoadError(f"{sidecar} does not start with a sha256 (64 hex digits)")
        return digest

    def _remembered(self, uri: str) -> str | None:
        try:
            digest = (self.folder / "uris" / _uri_key(uri)).read_text().strip()
        except OSError:
            return None
        return digest if _is_sha256(digest) else None

    def _remember(self, uri: str, digest: str) -> None:
        path = self.folder / "uris" / _uri_key(uri)
        if self._remembered(uri) != digest:
            _write_private(path, digest.encode())

    # ----- the cached file -----------------------------------------------------------
    def _is_stamped(self, final: Path) -> bool:
        """Whether ``final`` is exactly as it was when its hash last matched (no I/O
        beyond two ``stat``s and a small read)."""
        try:
            stamp = json.loads((final.parent / f"{final.name}.ok").read_text())
            return bool(stamp == _stat_stamp(final))
        except (OSError, ValueError):
            return False

    def _is_intact(self, final: Path, digest: str) -> bool:
        """Under the lock: whether ``final`` is there and hashes to ``digest`` (stamped
        then); a file that does not is removed, with a warning, to be fetched again."""
        if self._is_stamped(final):
            return True
        if not final.exists():
            return False
        if file_sha256(final) == digest:
            self._stamp(final)
            return True
        logger.warning("cached weights %s do not match their sha256: fetching them again", final)
        final.unlink()
        return False

    def _stamp(self, final: Path) -> None:
        _write_private(final.parent / f"{final.name}.ok", json.dumps(_stat_stamp(final)).encode())

    def _download(self, store: _Store, final: Path, digest: str) -> None:
        partial = final.parent / f".partial-{digest[:16]}-{secrets.token_hex(4)}"
        hasher = hashlib.sha256()
        try:
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                for chunk in store.read_chunks():
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            got = hasher.hexdigest()
            if got != digest:
                raise ModelLoadError(
                    f"{store.uri} does not match its sha256 (expected {digest}, got {got}); "
                    "nothing was cached"
                )
            os.chmod(partial, 0o400)
            os.replace(partial, final)
            _fsync_folder(final.parent)
        finally:
            partial.unlink(missing_ok=True)
        self._stamp(final)

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        """An exclusive ``flock`` on the digest's lock file: one fetcher per node at a time
        (separate opens conflict, so threads of one process exclude each other too)."""
        lock = self.folder / "locks" / f"{digest}.lock"
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def _make_folders(self) -> None:
        for folder in (self.folder, self.folder / "sha256", self.folder / "uris",
                       self.folder / "locks"):  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.folder.stat().st_mode & 0o077:
            self.folder.chmod(0o700)


class _Store:
    """One object in an object store, through fsspec (``s3fs`` for ``s3://``)."""

    def __init__(
        self, uri: str, options: ObjectStoreOptions, environ: Mapping[str, str] | None
    ) -> None:
        self.uri = uri
        self._options = options
        self._environ = os.environ if environ is None else environ
        self._fs: Any = None
        self._path = ""

    def read_small(self, suffix: str) -> bytes:
        """The whole object ``<uri><suffix>`` (a sidecar); ``FileNotFoundError`` if absent."""
        fs, path = self._filesystem()
        return bytes(self._call(fs.cat_file, f"{path}{suffix}", what=f"{self.uri}{suffix}"))

    def require_object(self) -> None:
        """``ModelLoadError`` unless the model object exists."""
        fs, path = self._filesystem()
        if not self._call(fs.exists, path, what=self.uri):
            raise ModelLoadError(f"no object {self.uri} in the object store")

    def read_chunks(self) -> Iterator[bytes]:
        """The model object's bytes, in order, ``CHUNK_BYTES`` at a time."""
        fs, path = self._filesystem()
        source = self._call(fs.open, path, "rb", block_size=CHUNK_BYTES, what=self.uri)
        with source:
            while True:
                chunk = self._call(source.read, CHUNK_BYTES, what=self.uri)
                if not chunk:
                    return
                yield bytes(chunk)

    def _call(self, function: Any, *args: Any, what: str, **kwargs: Any) -> Any:
        """``function(...)`` with the store's failures as ``ModelLoadError`` naming the
        object (``FileNotFoundError`` passes for the caller to word)."""
        try:
            return function(*args, **kwargs)
        except FileNotFoundError:
            if what != self.uri:
                raise
            raise ModelLoadError(f"no object {self.uri} in the object store") from None
        except PermissionError as exc:
            raise ModelLoadError(f"access to {what} was denied: {exc}") from None
        except Exception as exc:  # the store's boundary: botocore, aiohttp, OSError, ...
            raise ModelLoadError(
                f"cannot read {what} from the object store: {type(exc).__name__}: {exc}"
            ) from None

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            import fsspec

            scheme = self.uri.partition("://")[0].lower()
            try:
                self._fs, self._path = fsspec.core.url_to_fs(self.uri, **self._storage_options())
            except ImportError:
                package = OBJECT_SCHEMES[scheme]
                raise ModelLoadError(
                    f"{scheme}:// weights need the package {package}: pip install {package}"
                ) from None
        return self._fs, self._path

    def _storage_options(self) -> dict[str, Any]:
        """s3fs's options from ``ObjectStoreOptions``; credentials from the environment."""
        options = self._options
        retries = {"max_attempts": options.max_attempts, "mode": "standard"}
        storage: dict[str, Any] = {"config_kwargs": {**_CLIENT_CONFIG, "retries": retries}}
        if options.is_anonymous:
            storage["anon"] = True
        if options.endpoint_url is not None:
            storage["endpoint_url"] = options.endpoint_url
        if options.region is not None:
            storage["client_kwargs"] = {"region_name": options.region}
        for name, variable in (("key", options.access_key_id_env),
                               ("secret", options.secret_access_key_env)):  # fmt: skip
            if variable is None:
                continue
            value = self._environ.get(variable)
            if not value:
                raise ModelLoadError(
                    f"the object store's credentials are read from ${variable}, which is not set"
                )
            storage[name] = value
        return storage


def _stat_stamp(path: Path) -> dict[str, int]:
    status = path.stat()
    return {
        "size": status.st_size,
        "mtime_ns": status.st_mtime_ns,
        "ctime_ns": status.st_ctime_ns,
        "ino": status.st_ino,
    }


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a private temporary file renamed over it)."""
    partial = path.parent / f".partial-{path.name}-{secrets.token_hex(4)}"
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _uri_key(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX
