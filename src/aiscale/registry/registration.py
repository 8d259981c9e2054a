"""Registering a model version together with its artifact.

Decides, per runtime, whether the artifact is copied into the content-addressed artifact store
(scikit-learn and ONNX files, sentence-transformers folders) or the uri is kept as given
(``python`` import paths, the ``minilm`` bundled model), then writes the immutable version.
It never loads a model; the runtimes do that from the recorded uri.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiscale.errors import InvalidInput
from aiscale.registry.artifacts import ArtifactStore
from aiscale.registry.records import VersionRecord
from aiscale.registry.store import SqlRegistry, validate_name

#: Runtimes whose artifact is one local file, copied into the artifact store.
FILE_RUNTIMES: frozenset[str] = frozenset({"sklearn", "onnx"})
#: Runtimes whose artifact is one local folder, copied into the artifact store.
DIR_RUNTIMES: frozenset[str] = frozenset({"sentence-transformers"})
#: Runtimes whose uri is kept as given (an import path, or a bundled model).
KEPT_URI_RUNTIMES: frozenset[str] = frozenset({"python", "minilm"})
RUNTIMES: frozenset[str] = FILE_RUNTIMES | DIR_RUNTIMES | KEPT_URI_RUNTIMES

_IMPORT_PATH_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def register_with_artifact(
    registry: SqlRegistry,
    artifacts: ArtifactStore,
    model: str,
    *,
    runtime: str,
    uri: str,
    config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    version: str | None = None,
    alias: str | None = None,
) -> VersionRecord:
    """Store the artifact if the runtime has one, register the version, then move ``alias``.

    Raises InvalidInput for an unknown runtime, a malformed ``pkg.module:Class`` path or a
    missing local file/folder; NotFound/Conflict/InvalidInput from the registry otherwise.
    """
    # Check every name first: nothing is copied or written for a request that will fail.
    validate_name(model, "model")
    if version is not None:
        validate_name(version, "version")
    if alias is not None:
        validate_name(alias, "alias")
    digest: str | None = None
    if runtime not in RUNTIMES:
        raise InvalidInput(
            f"unknown runtime {runtime!r}; use one of {sorted(RUNTIMES)}", field="runtime"
        )
    if runtime == "python" and not _IMPORT_PATH_RE.match(uri):
        raise InvalidInput(
            f"python runtime needs uri 'package.module:Class', got {uri!r}", field="uri"
        )
    if runtime in FILE_RUNTIMES | DIR_RUNTIMES:
        path = _local_path(uri)
        if runtime in FILE_RUNTIMES:
            if not path.is_file():
                raise InvalidInput(f"{runtime} needs a local model file, {uri!r} is not one",
                                   field="uri")
            digest, uri = artifacts.put_file(path)
        else:
            if not path.is_dir():
                raise InvalidInput(f"{runtime} needs a local model folder, {uri!r} is not one",
                                   field="uri")
            digest, uri = artifacts.put_dir(path)
    record = registry.register_version(
        model, runtime=runtime, uri=uri, artifact_digest=digest, config=config,
        metadata=metadata, version=version,
    )
    if alias is not None:
        registry.set_alias(model, alias, record.version)
    return record


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        raise InvalidInput(f"the artifact must be a local path, got {uri!r}", field="uri")
    return Path(uri).expanduser().resolve()
