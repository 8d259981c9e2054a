"""The registry commands of the aiscale CLI, driven through Typer's CliRunner."""

from __future__ import annotations

import getpass
import hashlib
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from aiscale.cli import app
from aiscale.registry import SqlRegistry, hash_key


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command of a test shares one data dir, given through AISCALE_DATA_DIR."""
    folder = tmp_path / "data"
    monkeypatch.setenv("AISCALE_DATA_DIR", str(folder))
    monkeypatch.setenv("COLUMNS", "200")
    return folder


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def ok(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output


def assert_clean_failure(result: Result, message: str) -> None:
    """Non-zero exit, the message on one line, and no traceback anywhere."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert message in result.output


def test_register_list_show_alias(data_dir: Path) -> None:
    """A registered python model shows up in list and show; aliases are set and moved."""
    out = ok("models", "register", "echo", "--runtime", "python", "--uri", "tests.models:Echo",
             "--config", '{"max_batch_size": 8}', "--metadata", '{"team": "search"}',
             "--alias", "prod")
    assert "registered echo version 1" in out
    ok("models", "register", "echo", "--runtime", "python", "--uri", "tests.models:Sum")
    listed = ok("models", "list")
    assert re.search(r"echo\s+│\s+2\s+│\s+2\s+│\s+prod->1", listed)
    ok("models", "alias", "echo", "prod", "2")
    shown = ok("models", "show", "echo")
    assert "tests.models:Sum" in shown and "tests.models:Echo" in shown
    assert re.search(r"prod\s+│\s+2", shown)
    with SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}") as registry:
        version = registry.get_version("echo", "1")
    assert version.config == {"max_batch_size": 8}
    assert version.metadata == {"team": "search", "registered_by": f"cli:{getpass.getuser()}"}


def test_file_and_folder_artifacts_are_copied_into_the_store(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sklearn/onnx files and sentence-transformers folders are stored by digest."""
    monkeypatch.chdir(tmp_path)  # the current directory is an allowed source
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"onnx-bytes")
    folder = tmp_path / "st"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "w.bin").write_bytes(b"\x00")
    ok("models", "register", "clf", "--runtime", "onnx", "--uri", str(model_file))
    ok("models", "register", "emb", "--runtime", "sentence-transformers", "--uri", str(folder))
    ok("models", "register", "mini", "--runtime", "minilm")
    with SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}") as registry:
        onnx = registry.get_version("clf", "1")
        st = registry.get_version("emb", "1")
        mini = registry.get_version("mini", "1")
    digest = hashlib.sha256(b"onnx-bytes").hexdigest()
    assert onnx.artifact_digest == digest
    assert onnx.uri == str(data_dir / "artifacts" / "sha256" / digest / "model.onnx")
    assert Path(onnx.uri).read_bytes() == b"onnx-bytes"
    assert st.artifact_digest is not None
    assert (Path(st.uri) / "sub" / "w.bin").read_bytes() == b"\x00"
    assert (mini.uri, mini.artifact_digest) == ("bundled", None)


def test_keys_create_list_revoke(data_dir: Path) -> None:
    """A key's plaintext is printed once by create, never by list; revoke marks it revoked."""
    out = ok("keys", "create", "ci", "--scope", "admin", "--scope", "inference",
             "--rate-limit", "2.5")
    plaintext = re.search(r"ask_[A-Za-z0-9_-]+", out)
    key_id = re.search(r"key id: ([0-9a-f]+)", out)
    assert plaintext is not None and key_id is not None
    listed = ok("keys", "list")
    assert key_id.group(1) in listed and "admin,inference" in listed and "2.5" in listed
    assert plaintext.group(0) not in listed
    ok("keys", "revoke", key_id.group(1))
    with SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}") as registry:
        key = registry.get_key_by_hash(hash_key(plaintext.group(0)))
        assert key.revoked_at is not None and registry.active_keys() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("models", "show", "nope"), "unknown model 'nope'"),
        (("models", "alias", "nope", "prod", "1"), "unknown model 'nope'"),
        (("models", "register", "m", "--runtime", "python", "--uri", "a:B", "--config", "{bad"),
         "--config is not valid JSON"),
        (("models", "register", "m", "--runtime", "python", "--uri", "a:B", "--metadata", "[1]"),
         "--metadata must be a JSON object"),
        (("models", "register", "Bad Name", "--runtime", "python", "--uri", "a:B"),
         "invalid model 'Bad Name'"),
        (("models", "register", "m", "--runtime", "python", "--uri", "not a path"),
         "python runtime needs uri"),
        (("models", "register", "m", "--runtime", "onnx", "--uri", "/no/such.onnx"),
         "needs a local model file"),
        (("models", "register", "m", "--runtime", "sklearn"), "--uri is required"),
        (("models", "register", "m", "--runtime", "tensorflow", "--uri", "x"),
         "Invalid value for '--runtime'"),
        (("keys", "create", "k", "--scope", "root"), "scopes must be a non-empty subset"),
        (("keys", "create", "k", "--scope", "inference", "--rate-limit", "-1"),
         "rate limit must be > 0"),
        (("keys", "revoke", "nosuchkey"), "unknown key id 'nosuchkey'"),
    ],
)
def test_bad_input_fails_with_a_message(
    data_dir: Path, args: tuple[str, ...], message: str
) -> None:
    """Bad input exits non-zero with a clear message and no traceback."""
    assert_clean_failure(run(*args), message)


def test_versions_are_immutable_from_the_cli(data_dir: Path) -> None:
    """Registering an existing version again is refused and leaves the first one intact."""
    ok("models", "register", "m", "--runtime", "python", "--uri", "a:B", "--version", "v1")
    assert_clean_failure(
        run("models", "register", "m", "--runtime", "python", "--uri", "a:C", "--version", "v1"),
        "versions are immutable",
    )
    assert "a:B" in ok("models", "show", "m")


def test_registry_url_overrides_the_data_dir_database(data_dir: Path, tmp_path: Path) -> None:
    """--registry-url points the commands at another database."""
    other = tmp_path / "other.db"
    ok("models", "register", "m", "--runtime", "python", "--uri", "a:B",
       "--registry-url", f"sqlite:///{other}")
    assert "m" in ok("models", "list", "--registry-url", f"sqlite:///{other}")
    assert "│ m " not in ok("models", "list")


def test_detect_command(tmp_path: Path) -> None:
    """`aiscale detect` writes one scored row per input row; a missing file is a one-line error."""
    source = tmp_path / "series.csv"
    rows = [f"2024-01-01 00:{m:02d}:00,{10 + (50 if m == 40 else 0)}" for m in range(60)]
    source.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    out = tmp_path / "scored.csv"
    result = run("detect", str(source), "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score" and len(lines) == 61
    missing = run("detect", str(tmp_path / "none.csv"), "--out", str(out))
    assert missing.exit_code == 1 and "Traceback" not in missing.output


def test_registering_a_file_outside_the_allowed_folders_is_refused(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``file:///etc/shadow`` or a ``../..`` path is refused with one line and nothing is
    copied; from the current directory it is stored, not readable by others, and
    --allow-any-path takes a file from anywhere."""
    work = tmp_path / "work" / "project"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    outside = tmp_path / "secret.onnx"
    outside.write_bytes(b"private")
    for uri in ("file:///etc/shadow", "../../secret.onnx", str(outside)):
        result = run("models", "register", "leak", "--runtime", "onnx", "--uri", uri)
        assert_clean_failure(result, "outside the allowed folders")
    assert not (data_dir / "artifacts" / "sha256").exists() or not any(
        (data_dir / "artifacts" / "sha256").iterdir()
    )
    inside = work / "model.onnx"
    inside.write_bytes(b"onnx")
    inside.chmod(0o644)
    ok("models", "register", "ok", "--runtime", "onnx", "--uri", "model.onnx")
    ok("models", "register", "any", "--runtime", "onnx", "--uri", str(outside), "--allow-any-path")
    with SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}") as registry:
        stored = registry.get_version("ok", "1")
        assert registry.get_version("any", "1").artifact_digest is not None
    assert Path(stored.uri).stat().st_mode & 0o777 == 0o600
    assert Path(stored.uri).parent.stat().st_mode & 0o777 == 0o700
    assert stored.metadata["registered_by"].startswith("cli:")
    assert stored.artifact_digest == hashlib.sha256(b"onnx").hexdigest()


def test_pickles_need_an_explicit_allowance(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An sklearn (joblib pickle) artifact is refused without --allow-pickle, and registered
    with it after a warning that loading it runs its code; a read-only source stays so."""
    monkeypatch.chdir(tmp_path)
    pickle_file = tmp_path / "clf.joblib"
    pickle_file.write_bytes(b"not really a pickle")
    pickle_file.chmod(0o400)
    refused = run("models", "register", "clf", "--runtime", "sklearn", "--uri", "clf.joblib")
    assert_clean_failure(refused, "--allow-pickle")
    out = ok("models", "register", "clf", "--runtime", "sklearn", "--uri", "clf.joblib",
             "--allow-pickle")  # fmt: skip
    assert "runs any code" in out
    with SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}") as registry:
        stored = registry.get_version("clf", "1")
    assert Path(stored.uri).stat().st_mode & 0o777 == 0o400
