"""load_model: runtime names, unknown runtimes and config keys, and cheap imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aiscale.errors import ConfigError, InvalidInput
from aiscale.model import Model
from aiscale.runtimes import RUNTIMES, load_model


def test_every_listed_runtime_builds_a_model_without_loading_it() -> None:
    """Each name in RUNTIMES gives a Model; building one reads no file (load() does)."""
    uris = {
        "python": "tests.models:Echo",
        "sklearn": "/nonexistent/model.joblib",
        "onnx": "/nonexistent/model.onnx",
        "sentence-transformers": "/nonexistent/folder",
        "minilm": "bundled",
    }
    assert set(RUNTIMES) == set(uris)
    for runtime in RUNTIMES:
        assert isinstance(load_model(runtime, uris[runtime]), Model)


def test_unknown_runtime_is_invalid_input_naming_the_field() -> None:
    """An unknown runtime name is rejected with field ``runtime`` and the known names."""
    with pytest.raises(InvalidInput) as caught:
        load_model("tensorflow", "model.pb")
    assert caught.value.field == "runtime"
    assert "minilm" in caught.value.message


@pytest.mark.parametrize(
    ("runtime", "config", "field"),
    [
        ("minilm", {"num_thread": 2}, "config.num_thread"),
        ("minilm", {"num_threads": 0}, "config.num_threads"),
        ("minilm", {"num_threads": "2"}, "config.num_threads"),
        ("onnx", {"threads": 1}, "config.threads"),
        ("onnx", {"num_threads": True}, "config.num_threads"),
        ("sentence-transformers", {"normalize": False}, "config.normalize"),
        ("sklearn", {"method": "decision_function"}, "config.method"),
        ("sklearn", {"methods": "predict"}, "config.methods"),
    ],
)
def test_bad_runtime_config_is_a_config_error_naming_the_key(
    runtime: str, config: dict[str, object], field: str
) -> None:
    """A typo or a bad value in a runtime's config is refused, never silently ignored."""
    with pytest.raises(ConfigError) as caught:
        load_model(runtime, "x", config)
    assert caught.value.field == field


def test_importing_runtimes_and_building_models_imports_no_heavy_library() -> None:
    """The gateway may import this package: torch, transformers, scikit-learn and
    onnxruntime are imported only inside load(), in the replica."""
    code = (
        "import sys\n"
        "from aiscale.runtimes import RUNTIMES, load_model\n"
        "load_model('minilm', 'bundled'); load_model('sklearn', 'm.joblib')\n"
        "load_model('onnx', 'm.onnx'); load_model('sentence-transformers', 'f')\n"
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'sklearn', 'onnxruntime'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
