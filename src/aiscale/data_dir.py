"""The server's data dir (registry, artifacts, captured requests, secrets): its owner's only.

Shared by the CLI and the Python API (``aiscale.serve``) so both create it the same way.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["make_private_data_dir"]


def make_private_data_dir(folder: Path) -> None:
    """Create ``folder`` readable by its owner only: 0700, also when it exists with wider
    permissions (docs/security.md)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)
