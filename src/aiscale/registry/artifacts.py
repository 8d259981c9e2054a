"""Content-addressed artifact storage through fsspec: a local folder or any fsspec URL.

Layout under the root (the same on every filesystem)::

    <root>/sha256/<digest>/<file name>      a stored file
    <root>/sha256/<digest>/<tree...>        a stored directory
    <root>/sha256/<digest>.json             its manifest, written last: the artifact is
                                            complete once this exists

A file's digest is the sha256 of its bytes; a directory's is the sha256 over the sorted list
of ``(relative path, file sha256)`` of its regular files, so that equal content has one digest
and is stored once. Stored artifacts are never changed or deleted here. Remote artifacts are
downloaded to a local cache (verified against the manifest) before a runtime reads them.

In a local store, folders are 0700 and a stored file keeps its source's permission bits for
its owner at most (``mode & 0o600``): an artifact is never readable by other users, and a
file its owner could not write stays read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import fsspec

from aiscale.errors import Conflict, InvalidInput, NotFound

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK_BYTES = 1 << 20


class ArtifactStore(Protocol):
    """Where model artifacts live, addressed by content digest."""

    def put_file(self, local_path: str | Path) -> tuple[str, str]: ...

    def put_dir(self, local_dir: str | Path) -> tuple[str, str]: ...

    def get_local(self, uri_or_digest: str) -> Path: ...

    def exists(self, digest: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    path: str  # relative, POSIX separators
    sha256: str
    size_bytes: int


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_digest(entries: list[_Entry]) -> str:
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.path}\0{entry.sha256}\n".encode())
    return digest.hexdigest()


def _walk(local_dir: Path) -> list[_Entry]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(local_dir):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if path.is_file():
                entries.append(_Entry(
                    path=path.relative_to(local_dir).as_posix(),
                    sha256=_file_sha256(path),
                    size_bytes=path.stat().st_size,
                ))
    return sorted(entries, key=lambda e: e.path)


class FsspecArtifactStore:
    """Artifacts under ``root`` (a path or an fsspec URL such as ``s3://bucket/prefix``).

    ``cache_dir`` receives downloads when the root is remote (default
    ``~/.cache/aiscale/artifacts``). ``put_*`` return ``(digest, uri)``; ``get_local`` returns a
    local path for a uri or digest this store returned. Errors: InvalidInput for a missing
    source or a foreign uri, NotFound for an unknown digest, Conflict for a corrupt download.
    """

    def __init__(self, root: str | Path, *, cache_dir: str | Path | None = None) -> None:
        self._fs, path = fsspec.core.url_to_fs(str(root))
        self._is_local = "file" in _protocols(self._fs)
        self._root_path: str = str(path).rstrip("/")
        self._root_uri: str = (
            self._root_path if self._is_local else str(self._fs.unstrip_protocol(path))
        )
        self._cache_dir = (
            Path(cache_dir) if cache_dir is not None
            else Path.home() / ".cache" / "aiscale" / "artifacts"
        )

    @property
    def root_uri(self) -> str:
        return self._root_uri

    def exists(self, digest: str) -> bool:
        """Whether a complete artifact with this digest is stored."""
        return bool(_DIGEST_RE.match(digest)) and bool(self._fs.exists(self._manifest_path(digest)))

    def put_file(self, local_path: str | Path) -> tuple[str, str]:
        """Store one file (its name is kept inside the digest folder); returns (digest, uri).

        Content stored before is not copied again, and keeps the name it was first stored under.
        """
        path = Path(local_path)
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}", field="uri")
        entry = _Entry(path=path.name, sha256=_file_sha256(path), size_bytes=path.stat().st_size)
        return self._put(entry.sha256, "file", [entry], path.parent)

    def put_dir(self, local_dir: str | Path) -> tuple[str, str]:
        """Store a directory tree of regular files; returns (digest, uri of the folder)."""
        path = Path(local_dir)
        if not path.is_dir():
            raise InvalidInput(f"no such directory: {path}", field="uri")
        entries = _walk(path)
        if not entries:
            raise InvalidInput(f"directory {path} holds no files", field="uri")
        return self._put(_tree_digest(entries), "dir", entries, path)

    def get_local(self, uri_or_digest: str) -> Path:
        """A local path to a stored artifact, downloading it to the cache if the root is remote."""
        digest, rel = self._parse(uri_or_digest)
        manifest = self._read_manifest(digest)
        if rel is None:
            rel = manifest["files"][0]["path"] if manifest["kind"] == "file" else ""
        if self._is_local:
            base = Path(self._artifact_path(digest))
        else:
            base = self._download(digest, manifest)
        return base / rel if rel else base

    # ----------------------------------------------------------------- internals

    def _artifact_path(self, digest: str) -> str:
        return f"{self._root_path}/sha256/{digest}"

    def _manifest_path(self, digest: str) -> str:
        return f"{self._root_path}/sha256/{digest}.json"

    def _uri(self, digest: str, manifest: dict[str, Any]) -> str:
        base = f"{self._root_uri}/sha256/{digest}"
        return f"{base}/{manifest['files'][0]['path']}" if manifest["kind"] == "file" else base

    def _put(
        self, digest: str, kind: str, entries: list[_Entry], source: Path
    ) -> tuple[str, str]:
        if self.exists(digest):
            return digest, self._uri(digest, self._read_manifest(digest))
        target = self._artifact_path(digest)
        for entry in entries:
            remote = f"{target}/{entry.path}"
            self._fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self._fs.put_file(str(source / entry.path), remote)
            if self._is_local:
                os.chmod(remote, (source / entry.path).stat().st_mode & _FILE_MODE)
        manifest = {
            "digest": digest,
            "kind": kind,
            "files": [
                {"path": e.path, "sha256": e.sha256, "size_bytes": e.size_bytes} for e in entries
            ],
        }
        # The manifest goes last: a crash before this leaves an incomplete artifact that
        # exists() does not report, and the next put overwrites it with the same bytes.
        self._fs.pipe_file(self._manifest_path(digest), json.dumps(manifest, indent=1).encode())
        if self._is_local:
            _make_private(Path(self._root_path), Path(target), self._manifest_path(digest))
        return digest, self._uri(digest, manifest)

    def _parse(self, uri_or_digest: str) -> tuple[str, str | None]:
        if _DIGEST_RE.match(uri_or_digest):
            return uri_or_digest, None
        prefix = f"{self._root_uri}/sha256/"
        candidate = uri_or_digest
        if self._is_local and candidate.startswith("file://"):
            candidate = candidate[len("file://"):]
        if not candidate.startswith(prefix):
            raise InvalidInput(
                f"{uri_or_digest!r} is not in the artifact store at {self._root_uri}", field="uri"
            )
        digest, _, rel = candidate[len(prefix):].partition("/")
        if not _DIGEST_RE.match(digest) or ".." in rel.split("/"):
            raise InvalidInput(f"{uri_or_digest!r} is not an artifact uri", field="uri")
        return digest, rel

    def _read_manifest(self, digest: str) -> dict[str, Any]:
        if not self.exists(digest):
            raise NotFound(f"no artifact {digest} in {self._root_uri}", field="artifact_digest")
        manifest: dict[str, Any] = json.loads(self._fs.cat_file(self._manifest_path(digest)))
        return manifest

    def _download(self, digest: str, manifest: dict[str, Any]) -> Path:
        final = self._cache_dir / digest
        if final.is_dir():
            return final
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        staging = self._cache_dir / f".partial-{digest[:16]}-{secrets.token_hex(4)}"
        try:
            for item in manifest["files"]:
                local = staging / item["path"]
                local.parent.mkdir(parents=True, exist_ok=True)
                self._fs.get_file(f"{self._artifact_path(digest)}/{item['path']}", str(local))
                if _file_sha256(local) != item["sha256"]:
                    raise Conflict(
                        f"artifact {digest} is corrupt: {item['path']} does not match its digest",
                        field="artifact_digest",
                    )
            try:
                staging.rename(final)
            except OSError:
                if not final.is_dir():  # not another process that finished first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final


#: The most a stored file may allow: its owner reads and writes, nobody else anything.
_FILE_MODE = 0o600
_DIR_MODE = 0o700


def _make_private(root: Path, artifact: Path, manifest: str) -> None:
    """Folders from ``root`` down to and inside ``artifact`` 0700, the manifest 0600."""
    os.chmod(manifest, _FILE_MODE)
    for folder in (root, root / "sha256", artifact):
        os.chmod(folder, _DIR_MODE)
    for dirpath, dirnames, _ in os.walk(artifact):
        for name in dirnames:
            os.chmod(Path(dirpath) / name, _DIR_MODE)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
