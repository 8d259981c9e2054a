"""Engine weights in object storage: fetched once per node into a content-addressed cache,
verified by sha256, loaded from the cache by every replica, refused with a clear cause.

Everything runs against a real S3-compatible server on loopback (moto's server mode) through
the real client stack (fsspec, s3fs, aiobotocore).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aiscale.config import parse_config
from aiscale.engines.llamacpp import LlamaCppBackend
from aiscale.engines.models import check_object_uri, locate_model, model_source
from aiscale.engines.spec import ObjectStoreOptions
from aiscale.engines.weights import CachedWeights, WeightsCache
from aiscale.errors import ConfigError, ModelLoadError
from tests.engines.s3_server import (
    KEY_ENV,
    REGION,
    SECRET_ENV,
    S3Server,
    credentials,
    start_s3_server,
)

#: A stand-in model: GGUF's magic and 3 MiB of fixed pseudo-random bytes.
BLOB = b"GGUF" + random.Random(16).randbytes(3 << 20)
BLOB_SHA256 = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    s3 = start_s3_server()
    yield s3
    s3.stop()


def options_of(s3: S3Server, max_attempts: int = 3) -> ObjectStoreOptions:
    return ObjectStoreOptions(
        endpoint_url=s3.endpoint_url,
        region=REGION,
        access_key_id_env=KEY_ENV,
        secret_access_key_env=SECRET_ENV,
        max_attempts=max_attempts,
    )


def cache_of(folder: Path, s3: S3Server, max_attempts: int = 3) -> WeightsCache:
    return WeightsCache(folder, options=options_of(s3, max_attempts), environ=credentials())


def stored_files(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "sha256").iterdir())


def test_three_concurrent_resolvers_fetch_the_model_once(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """Three resolvers on one node (say, three replicas starting together) asking at the
    same moment: exactly one downloads, the others wait and find its file; the file is the
    object's bytes, read-only, under its digest, and no partial download is left."""
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "models/tiny.gguf", BLOB)
    uri = f"s3://{bucket}/models/tiny.gguf"
    barrier = threading.Barrier(3)
    results: list[CachedWeights] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        cache = cache_of(tmp_path / "node", s3_server)  # one instance each, as replicas
        barrier.wait(10)
        try:
            results.append(cache.fetch(uri))
        except BaseException as exc:  # reported below, with the others' results
            errors.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(r.was_fetched for r in results) == [False, False, True]
    assert {r.path for r in results} == {tmp_path / "node" / "sha256" / BLOB_SHA256}
    path = results[0].path
    assert path.read_bytes() == BLOB
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / "node").stat().st_mode) == 0o700
    assert stored_files(tmp_path / "node") == [BLOB_SHA256, f"{BLOB_SHA256}.ok"]


def test_a_warm_cache_serves_without_the_network(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once cached, a pinned model is found with the object store gone; an unpinned one
    falls back to the digest fetched before (with a warning); a model never fetched cannot
    start without the store, and the error says why."""
    s3 = start_s3_server()
    try:
        bucket = s3.new_bucket()
        s3.put(bucket, "a.gguf", BLOB)
        s3.put(bucket, "never.gguf", b"GGUF other")
        cache = cache_of(tmp_path, s3, max_attempts=1)  # a dead store fails at once
        first = cache.fetch(f"s3://{bucket}/a.gguf", sha256=BLOB_SHA256)
        assert first.was_fetched
    finally:
        s3.stop()  # the endpoint now refuses connections

    pinned = cache.fetch(f"s3://{bucket}/a.gguf", sha256=BLOB_SHA256)
    assert (pinned.path, pinned.was_fetched) == (first.path, False)
    with caplog.at_level(logging.WARNING, logger="aiscale.engines.weights"):
        unpinned = cache.fetch(f"s3://{bucket}/a.gguf")
    assert (unpinned.path, unpinned.was_fetched) == (first.path, False)
    assert "using the digest fetched before" in caplog.text
    with pytest.raises(ModelLoadError, match=r"cannot read s3://.*/never\.gguf\.sha256"):
        cache.fetch(f"s3://{bucket}/never.gguf")


def test_a_tampered_cache_file_is_found_and_fetched_again(
    s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cached file changed in place no longer matches its stamp, is re-hashed, fails its
    digest and is replaced by a fresh download; an intact file whose stamp is lost is
    re-hashed and kept, without downloading."""
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "m.gguf", BLOB)
    uri = f"s3://{bucket}/m.gguf"
    cache = cache_of(tmp_path, s3_server)
    path = cache.fetch(uri).path

    path.chmod(0o600)
    with path.open("r+b") as file:
        file.seek(1000)
        file.write(b"\x00" * 16)
    with caplog.at_level(logging.WARNING, logger="aiscale.engines.weights"):
        again = cache.fetch(uri)
    assert again.was_fetched
    assert "do not match their sha256" in caplog.text
    assert again.path.read_bytes() == BLOB

    (tmp_path / "sha256" / f"{BLOB_SHA256}.ok").unlink()
    kept = cache.fetch(uri)
    assert not kept.was_fetched
    assert (tmp_path / "sha256" / f"{BLOB_SHA256}.ok").exists()


def test_a_download_that_does_not_match_its_digest_is_not_cached(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """An object whose bytes differ from the expected sha256 (a wrong pin, a swapped object)
    is refused with both digests named, and nothing is left in the cache."""
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "m.gguf", BLOB)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ModelLoadError, match=f"expected {wrong}, got {BLOB_SHA256}"):
        cache_of(tmp_path, s3_server).fetch(f"s3://{bucket}/m.gguf", sha256=wrong)
    assert stored_files(tmp_path) == []


@pytest.mark.parametrize(
    ("key", "content", "sidecar", "pin", "message"),
    [
        ("absent.gguf", None, None, None, r"no object s3://.*/absent\.gguf"),
        ("absent.gguf", None, None, BLOB_SHA256, r"no object s3://.*/absent\.gguf"),
        ("bare.gguf", BLOB, None, None, r"no sha256 for s3://.*bare\.gguf: set engine\.model_"),
        ("odd.gguf", BLOB, b"not-a-digest  odd.gguf\n", None, r"odd\.gguf\.sha256 does not start"),
    ],
)
def test_a_model_that_cannot_be_fetched_is_refused_with_its_cause(
    s3_server: S3Server,
    tmp_path: Path,
    key: str,
    content: bytes | None,
    sidecar: bytes | None,
    pin: str | None,
    message: str,
) -> None:
    """A missing object, a model without any digest, or an unreadable digest: a
    ``ModelLoadError`` that names the object and what to do, never a traceback of boto."""
    bucket = s3_server.new_bucket()
    if content is not None:
        s3_server.put(bucket, key, content, sidecar=False)
    if sidecar is not None:
        s3_server.client.put_object(Bucket=bucket, Key=f"{key}.sha256", Body=sidecar)
    with pytest.raises(ModelLoadError, match=message):
        cache_of(tmp_path, s3_server).fetch(f"s3://{bucket}/{key}", sha256=pin)


def test_missing_credentials_are_named(s3_server: S3Server, tmp_path: Path) -> None:
    """Credentials named by environment variable that is not set: the variable is named."""
    cache = WeightsCache(tmp_path, options=options_of(s3_server), environ={})
    with pytest.raises(ModelLoadError, match=f"\\${KEY_ENV}, which is not set"):
        cache.fetch(f"s3://{s3_server.new_bucket()}/m.gguf", sha256=BLOB_SHA256)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://bucket", "not an object URI"),
        ("s3://bucket/", "not an object URI"),
        ("s3://bucket/models/", "not an object URI"),
        ("s3://Bucket/m.gguf", "not an object URI"),
        ("gs://bucket/m.gguf", "object stores supported for weights: s3://"),
    ],
)
def test_a_malformed_object_uri_is_a_config_error(uri: str, message: str) -> None:
    """A URI that cannot name one object in a supported store is refused before any I/O,
    on the config's ``engine.model`` field; ``locate_model`` (local files only) says what an
    object URI is instead of "does not exist"."""
    with pytest.raises(ConfigError, match=message) as caught:
        model_source(uri)
    assert caught.value.field == "engine.model"
    with pytest.raises(ConfigError, match=message):
        check_object_uri(uri)
    with pytest.raises(ConfigError, match="object-store URI, not a local file"):
        locate_model("s3://bucket/m.gguf")


def _deployment(**engine: object) -> dict[str, object]:
    return {"deployments": [{"name": "chat", "model": "chat", "engine": engine}]}


def test_the_config_takes_an_object_store_model_with_its_pin_and_store() -> None:
    """``engine.model: s3://...`` with a sha256 pin, a cache folder and the store's endpoint
    and credential variables becomes the spec the replicas fetch from; those fields on a
    local model, or an object-store model on vLLM, are refused with their dotted path."""
    config = parse_config(_deployment(
        model="s3://weights/smollm2.gguf",
        model_sha256=BLOB_SHA256,
        model_cache_dir="/var/cache/aiscale",
        object_store={"endpoint_url": "http://127.0.0.1:9000", "region": "us-east-1",
                      "access_key_id_env": KEY_ENV, "secret_access_key_env": SECRET_ENV},
    )).deployments[0]  # fmt: skip
    assert config.engine is not None
    spec = config.engine.to_spec("chat", model_cache_dir="/ignored")
    assert (spec.model, spec.model_sha256, spec.model_cache_dir) == (
        "s3://weights/smollm2.gguf", BLOB_SHA256, "/var/cache/aiscale"
    )
    assert spec.object_store.endpoint_url == "http://127.0.0.1:9000"
    assert spec.object_store.access_key_id_env == KEY_ENV
    plain = parse_config(_deployment(model="s3://weights/smollm2.gguf")).deployments[0]
    assert plain.engine is not None
    assert plain.engine.to_spec("chat", model_cache_dir="/data/model-cache").model_cache_dir == (
        "/data/model-cache"
    )

    with pytest.raises(ConfigError, match="only used with an object-store model") as caught:
        parse_config(_deployment(model="smollm2", model_sha256=BLOB_SHA256))
    assert caught.value.field == "deployments.0.engine.model_sha256"
    with pytest.raises(ConfigError, match="kind: llamacpp only") as caught:
        parse_config(_deployment(kind="vllm", model="s3://weights/llama"))
    assert caught.value.field == "deployments.0.engine.model"
    with pytest.raises(ConfigError) as caught:
        parse_config(_deployment(model="s3://weights/m.gguf", model_sha256="ABC"))
    assert caught.value.field == "deployments.0.engine.model_sha256"
    bad = parse_config(_deployment(model="s3://weights")).deployments[0]
    assert bad.engine is not None
    with pytest.raises(ConfigError, match="not an object URI"):
        bad.engine.to_spec("chat")


def test_engine_replicas_load_an_object_store_model_from_the_node_cache(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A llama.cpp deployment whose model is ``s3://...``: the first replica fetches the
    GGUF into the node cache and answers chat; a later replica (a scale-up) loads the very
    same cached file (same inode, nothing downloaded again)."""
    real_model = locate_model("smollm2").read_bytes()
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, "smollm2.gguf", real_model)
    for name, value in credentials().items():
        monkeypatch.setenv(name, value)
    config = parse_config(_deployment(
        model=f"s3://{bucket}/smollm2.gguf", threads=2, parallel=1, context_window=512,
        max_output_tokens=8, model_cache_dir=str(tmp_path / "cache"),
        object_store={"endpoint_url": s3_server.endpoint_url, "region": REGION,
                      "access_key_id_env": KEY_ENV, "secret_access_key_env": SECRET_ENV},
    )).deployments[0]  # fmt: skip
    assert config.engine is not None
    backend = LlamaCppBackend(
        config.engine.to_spec("chat", slot_save_dir=str(tmp_path / "slots"))
    )
    (tmp_path / "slots").mkdir()
    digest = hashlib.sha256(real_model).hexdigest()
    cached = tmp_path / "cache" / "sha256" / digest

    async def start_two() -> tuple[int, int]:
        first, _ = await backend.spawn(0, num_replicas=2, lease=None)
        try:
            inode = cached.stat().st_ino
            second, _ = await backend.spawn(1, num_replicas=2, lease=None)
            try:
                assert cached.stat().st_ino == inode
                async with httpx.AsyncClient(timeout=60) as client:
                    for handle in (first, second):
                        answer = await client.post(f"{handle.url}/v1/chat/completions", json={
                            "model": "chat", "max_tokens": 4, "temperature": 0,
                            "messages": [{"role": "user", "content": "Hi"}],
                        })  # fmt: skip
                        assert answer.status_code == 200, answer.text
            finally:
                await backend.stop(second, 10.0)
        finally:
            await backend.stop(first, 10.0)
        return inode, cached.stat().st_ino

    before, after = asyncio.run(start_two())
    assert before == after
    assert stored_files(tmp_path / "cache") == [digest, f"{digest}.ok"]


def test_a_registered_version_in_object_storage_is_fetched_by_its_digest(tmp_path: Path) -> None:
    """A llama.cpp version registered with an ``s3://`` uri and its artifact digest runs
    that object, pinned to the registry's digest (no sidecar needed); a local version's
    engine is left as it was."""
    from aiscale.registry.store import SqlRegistry
    from aiscale.serving.specs import engine_of_version

    registry = SqlRegistry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        registry.create_model("chat")
        record = registry.register_version(
            "chat", runtime="llamacpp", uri="s3://weights/v2.gguf", artifact_digest=BLOB_SHA256
        )
        config = parse_config(_deployment(model="smollm2")).deployments[0]
        assert config.engine is not None
        engine = config.engine.to_spec("chat")
        spec = engine_of_version(engine, record)
        assert spec is not None
        assert (spec.model, spec.model_sha256) == ("s3://weights/v2.gguf", BLOB_SHA256)
        local = registry.register_version("chat", runtime="llamacpp", uri=engine.model)
        assert engine_of_version(engine, local) is engine
    finally:
        registry.close()
