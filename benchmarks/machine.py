"""Machine, versions and commit, recorded beside every benchmark result."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from aiscale.plan.profiling import cpu_model


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_machine(root: Path) -> dict[str, Any]:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=root,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=root,
        ).stdout.strip()
        sha += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "uvicorn": _version("uvicorn"),
        "fastapi": _version("fastapi"),
        "git_sha": sha,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
