"""Registering a model version together with its artifact.

Decides, per runtime, whether the artifact is copied into the content-addressed artifact store
(scikit-learn and ONNX files, sentence-transformers folders) or the uri is kept as given
(``python`` import paths, the ``minilm`` bundled model), then writes the immutable version.
It never loads a model; the runtimes do that from the recorded uri.

Two guards, because registering is how code and files get into a server: a local artifact
must lie under one of the caller's ``allowed_roots`` (the CLI gives the current directory and
the data dir), so ``--uri file:///etc/shadow`` or ``../../`` cannot copy a secret into the
store; and a runtime whose artifact is a pickle (:data:`PICKLE_RUNTIMES`: loading it runs
whatever code it holds) is registered only when the caller says it trusts it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiscale.errors import InvalidInput
from aiscale.registry.artifacts import ArtifactStore
from aiscale.registry.records import VersionRecord
from aiscale.registry.store import SqlRegistry, validate_name

logger = logging.getLogger(__name__)

#: Runtimes whose artifact is one local file, copied into the artifact store.
FILE_RUNTIMES: frozenset[str] = frozenset({"sklearn", "onnx"})
#: Runtimes whose artifact is one local folder, copied into the artifact store.
DIR_RUNTIMES: frozenset[str] = frozenset({"sentence-transformers"})
#: Runtimes whose uri is kept as given (an import path, or a bundled model).
KEPT_URI_RUNTIMES: frozenset[str] = frozenset({"python", "minilm"})
RUNTIMES: frozenset[str] = FILE_RUNTIMES | DIR_RUNTIMES | KEPT_URI_RUNTIMES
#: Runtimes whose artifact is a pickle (joblib): loading one runs the code inside it.
PICKLE_RUNTIMES: frozenset[str] = frozenset({"sklearn"})

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
    allowed_roots: Sequence[Path] | None = None,
    is_pickle_allowed: bool = False,
    registered_by: str | None = None,
) -> VersionRecord:
    """Store the artifact if the runtime has one, register the version, then move ``alias``.

    ``allowed_roots``: a local artifact must resolve (links followed) inside one of these
    folders; ``None`` allows any path (callers that chose the path themselves). A
    :data:`PICKLE_RUNTIMES` runtime needs ``is_pickle_allowed``. ``registered_by`` is kept
    in the version's metadata, beside the artifact's sha256 (``artifact_digest``).

    Raises InvalidInput for an unknown runtime, a malformed ``pkg.module:Class`` path, a
    missing local file/folder, a path outside the roots or a pickle not allowed;
    NotFound/Conflict/InvalidInput from the registry otherwise.
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
    if runtime in PICKLE_RUNTIMES:
        if not is_pickle_allowed:
            raise InvalidInput(
                f"{runtime} artifacts are pickles, and loading one runs any code inside it; "
                "register only files you trust, with --allow-pickle (admins)",
                field="runtime",
            )
        logger.warning("registering a %s pickle from %s: loading it runs its code", runtime, uri)
    if runtime in FILE_RUNTIMES | DIR_RUNTIMES:
        path = _local_path(uri)
        if runtime in FILE_RUNTIMES:
            if not path.is_file():
                raise InvalidInput(f"{runtime} needs a local model file, {uri!r} is not one",
                                   field="uri")
        elif not path.is_dir():
            raise InvalidInput(f"{runtime} needs a local model folder, {uri!r} is not one",
                               field="uri")
        if allowed_roots is not None:
            _check_inside(path, allowed_roots, uri)
        if runtime in FILE_RUNTIMES:
            digest, uri = artifacts.put_file(path)
        else:
            digest, uri = artifacts.put_dir(path)
    if registered_by is not None:
        metadata = {**(metadata or {}), "registered_by": registered_by}
    record = registry.register_version(
        model, runtime=runtime, uri=uri, artifact_digest=digest, config=config,
        metadata=metadata, version=version,
    )
    if alias is not None:
        registry.set_alias(model, alias, record.version)
    return record


def _check_inside(path: Path, roots: Sequence[Path], uri: str) -> None:
    """``InvalidInput`` unless the resolved ``path`` lies inside one of ``roots``."""
    for root in roots:
        if path.is_relative_to(root.expanduser().resolve()):
            return
    allowed = ", ".join(str(r) for r in roots)
    raise InvalidInput(
        f"{uri!r} is outside the allowed folders ({allowed}); copy it there or pass "
        "--allow-any-path",
        field="uri",
    )


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        raise InvalidInput(f"the artifact must be a local path, got {uri!r}", field="uri")
    return Path(uri).expanduser().resolve()
