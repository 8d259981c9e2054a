"""The rollout policies are pure: importing them loads no web, database or cluster library."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("starlette", "sqlalchemy", "redis", "ray", "uvicorn")


def test_policy_modules_import_no_io_libraries() -> None:
    """A fresh interpreter importing analysis, split and histogram loads none of the forbidden
    packages."""
    code = (
        "import sys\n"
        "import aiscale.rollout.analysis, aiscale.contracts.split, aiscale.contracts.histogram\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""
