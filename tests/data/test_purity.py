"""The drift and quality modules stay pure: importing them loads no server or storage stack."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("starlette", "sqlalchemy", "redis", "ray", "uvicorn")


def test_importing_drift_and_quality_loads_no_server_or_storage_package() -> None:
    """A fresh interpreter that imports aiscale.data.drift and aiscale.data.quality has none
    of starlette, sqlalchemy, redis, ray or uvicorn in sys.modules."""
    code = (
        "import sys, aiscale.data.drift, aiscale.data.quality\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
