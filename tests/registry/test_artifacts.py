"""FsspecArtifactStore: content addressing, dedup, local and memory:// roots."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from aiscale.errors import Conflict, InvalidInput, NotFound
from aiscale.registry import FsspecArtifactStore


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh memory:// root (the memory filesystem is shared by the process), removed after."""
    root = f"memory://artifacts-{uuid.uuid4().hex}"
    yield root
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _tree(base: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return base


def _stored_files(root: Path) -> list[Path]:
    """Artifact files under a local root, manifests (sha256/<digest>.json) left out."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "sha256")


def test_same_file_content_is_stored_once(tmp_path: Path) -> None:
    """Two puts of equal bytes give one digest and one stored copy, under sha256/<digest>/."""
    store = FsspecArtifactStore(tmp_path / "store")
    first = _tree(tmp_path / "a", {"model.onnx": b"weights"}) / "model.onnx"
    again = _tree(tmp_path / "b", {"copy.onnx": b"weights"}) / "copy.onnx"
    digest, uri = store.put_file(first)
    assert store.put_file(again) == (digest, uri)
    assert uri == f"{tmp_path / 'store'}/sha256/{digest}/model.onnx"
    assert _stored_files(tmp_path / "store") == [Path(uri)]
    assert store.exists(digest)
    assert store.get_local(uri).read_bytes() == b"weights"
    assert store.get_local(digest) == Path(uri)
    other, _ = store.put_file(_tree(tmp_path / "c", {"x.onnx": b"other"}) / "x.onnx")
    assert other != digest


def test_directory_digest_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    """A directory's digest depends on its files' paths and bytes, not on creation order."""
    store = FsspecArtifactStore(tmp_path / "store")
    files = {"config.json": b"{}", "sub/weights.bin": b"\x00\x01", "tok/vocab.txt": b"a\nb"}
    one = _tree(tmp_path / "one", files)
    two = _tree(tmp_path / "two", dict(reversed(list(files.items()))))
    digest, uri = store.put_dir(one)
    assert store.put_dir(two) == (digest, uri)
    assert len(_stored_files(tmp_path / "store")) == 3
    local = store.get_local(uri)
    assert (local / "sub" / "weights.bin").read_bytes() == b"\x00\x01"
    changed = _tree(tmp_path / "three", {**files, "sub/weights.bin": b"\x00\x02"})
    renamed = _tree(tmp_path / "four", {**files, "sub/weights.bin": b""} | {"w.bin": b"\x00\x01"})
    assert store.put_dir(changed)[0] != digest
    assert store.put_dir(renamed)[0] != digest


def test_memory_root_downloads_to_the_cache(tmp_path: Path, memory_root: str) -> None:
    """With a remote root, get_local downloads once into the cache and returns local paths."""
    store = FsspecArtifactStore(memory_root, cache_dir=tmp_path / "cache")
    file_digest, file_uri = store.put_file(_tree(tmp_path / "f", {"m.pkl": b"pickle"}) / "m.pkl")
    dir_digest, dir_uri = store.put_dir(_tree(tmp_path / "d", {"a.txt": b"A", "b/c.txt": b"C"}))
    assert file_uri.startswith("memory://") and f"/sha256/{file_digest}/m.pkl" in file_uri
    assert store.put_file(tmp_path / "f" / "m.pkl") == (file_digest, file_uri)
    local_file = store.get_local(file_uri)
    assert local_file == tmp_path / "cache" / file_digest / "m.pkl"
    assert local_file.read_bytes() == b"pickle"
    local_dir = store.get_local(dir_digest)
    assert (local_dir / "b" / "c.txt").read_bytes() == b"C"
    assert store.get_local(dir_uri) == local_dir
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [file_digest, dir_digest]
    )


def test_corrupt_remote_artifact_is_refused(tmp_path: Path, memory_root: str) -> None:
    """A stored file whose bytes no longer match the manifest is not handed to a runtime."""
    store = FsspecArtifactStore(memory_root, cache_dir=tmp_path / "cache")
    digest, uri = store.put_file(_tree(tmp_path / "f", {"m.bin": b"good"}) / "m.bin")
    fs, path = fsspec.core.url_to_fs(uri)
    fs.pipe_file(path, b"evil")
    with pytest.raises(Conflict):
        store.get_local(uri)
    assert not (tmp_path / "cache" / digest).exists()


def test_unknown_or_foreign_artifacts_are_refused(tmp_path: Path) -> None:
    """get_local names what is wrong: an unknown digest, a uri outside the store, a missing file."""
    store = FsspecArtifactStore(tmp_path / "store")
    with pytest.raises(NotFound):
        store.get_local("0" * 64)
    with pytest.raises(InvalidInput):
        store.get_local("/etc/passwd")
    with pytest.raises(InvalidInput):
        store.put_file(tmp_path / "missing.onnx")
    with pytest.raises(InvalidInput):
        store.put_dir(tmp_path / "missing")
    assert not store.exists("0" * 64) and not store.exists("not-a-digest")
