"""Headless Debian Chromium driven by Playwright, for the dashboard's browser tests.

Playwright is pointed at the system browser (``/usr/bin/chromium``); it never downloads its own.
Every page records console errors and uncaught exceptions so that a test can assert the page
ran cleanly.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class PageErrors:
    """What went wrong in the page: console messages of type error and uncaught exceptions."""

    console: list[str] = field(default_factory=list)
    uncaught: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return [*self.console, *self.uncaught]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module; skipped where Debian's chromium is not installed."""
    if not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts() -> Path:
    """``test-artifacts/`` at the repository root, where screenshots are kept."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
