"""A real browser for the tests: Debian's Chromium (``/usr/bin/chromium``, installed by
scripts/test.sh through apt-get) driven by Playwright for Python. Playwright's own browser
downloads are never used (``playwright install`` is never run): the machine has no
internet, and neither may the page.

Every request the page makes to anything but 127.0.0.1 is aborted and recorded in
``Browser.blocked``; a test asserts that list is empty, i.e. the page needed nothing
from outside. Each browser has a fresh profile (user-data-dir) under the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Route

CHROMIUM = Path(os.environ.get("SYNCQ_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1"}
LOCAL_SCHEMES = {"data", "blob", "about"}


def unavailable() -> str | None:
    """Why there is no browser to test with, or None when there is."""
    if not CHROMIUM.exists() and not shutil.which(str(CHROMIUM)):
        return f"{CHROMIUM} is not installed (scripts/test.sh installs it with apt-get as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or parts.hostname in LOCAL_HOSTS


@dataclass
class Browser:
    context: BrowserContext
    page: Page
    blocked: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)  # every URL asked for, in order
    console_errors: list[str] = field(default_factory=list)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A headless Chromium with a fresh profile, one page open, and every request that
    does not go to 127.0.0.1 aborted (and listed in ``.blocked``)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        blocked: list[str] = []
        requested: list[str] = []

        def guard(route: Route) -> None:
            url = route.request.url
            requested.append(url)
            if is_local(url):
                route.continue_()
            else:
                blocked.append(url)
                route.abort("internetdisconnected")

        context.route("**/*", guard)
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(15_000)
        b = Browser(context, page, blocked, requested)
        page.on(
            "console",
            lambda message: (
                b.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        try:
            yield b
        finally:
            context.close()
