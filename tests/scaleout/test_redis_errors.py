"""``aiscale serve`` with an unusable Redis stops at once with one clear line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiscale.config import load_config
from aiscale.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def serve(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "aiscale.cli", "serve", "tests.models:Echo", "--port", "0",
         "--data-dir", str(tmp_path), "--no-capture", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=dict(os.environ),
    )
    return result.returncode, result.stdout + result.stderr


def test_unreachable_redis_stops_serve_with_one_clear_line(tmp_path: Path) -> None:
    """An unreachable Redis: exit status 1, the reason and the field, no server started and
    no traceback (a malformed URL: tests/serving/test_shared_state.py)."""
    code, output = serve(tmp_path, "--redis-url", "redis://127.0.0.1:1/0")
    assert code == 1, output
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in output, output
    assert "[redis_url]" in output
    assert "Traceback" not in output and "serving on" not in output


def test_redis_url_of_the_wrong_scheme_is_refused_from_the_environment() -> None:
    """AISCALE_REDIS_URL sets server.redis_url; anything but redis://, rediss:// or unix://
    rejects the configuration with the dotted path of the field."""
    assert load_config(environ={"AISCALE_REDIS_URL": "redis://h:6379/0"}).server.redis_url == (
        "redis://h:6379/0"
    )
    with pytest.raises(ConfigError, match="must start with redis://") as caught:
        load_config(environ={"AISCALE_REDIS_URL": "http://127.0.0.1:6379"})
    assert caught.value.field == "server.redis_url"
