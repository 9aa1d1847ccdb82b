"""/docs and /redoc work without internet: Swagger UI and ReDoc come from the
fastapi-offline wheel, served by the API itself (backend/main.py), never from a CDN.

The browser tests open the pages in Chromium with every request to anything but
127.0.0.1 aborted (tests/browser.py) and check the operations render and nothing outside
was asked for."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser import Browser
from tests.support import Api

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture
def anonymous(api: Api) -> Iterator[httpx.Client]:
    with api.client(token=None) as c:
        yield c


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_load_every_asset_from_the_api_itself(
    anonymous: httpx.Client, path: str
) -> None:
    page = anonymous.get(path)
    assert page.status_code == 200, page.text[:300]
    assets = ASSET.findall(page.text)
    assert assets, page.text
    for asset in assets:
        assert asset.startswith("/"), f"{path} loads {asset} from elsewhere"
        got = anonymous.get(asset)
        assert got.status_code == 200, asset
        assert got.content, asset
    assert "cdn" not in page.text.lower()
    assert "fonts.googleapis" not in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy


def test_swagger_ui_renders_the_operations_with_nothing_but_localhost(
    api: Api, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page
    page.goto(f"{api.base_url}/docs")
    tasks = page.locator(".opblock-summary-path[data-path='/api/tasks']")
    tasks.first.wait_for(state="visible")
    assert tasks.count() >= 2  # GET (list) and POST (submit)
    assert page.locator(".opblock").count() >= 20
    assert page.locator(".opblock-summary-path[data-path='/api/tasks/{task_id}']").count() >= 2
    page.screenshot(path=tmp_path / "docs.png", full_page=True)
    assert not [e for e in browser.console_errors if "Content Security Policy" in e]
    assert (tmp_path / "docs.png").stat().st_size > 10_000
    assert browser.blocked == [], browser.blocked


def test_redoc_renders_the_operations_with_nothing_but_localhost(
    api: Api, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page
    page.goto(f"{api.base_url}/redoc")
    page.locator("[data-section-id='operation/tasks-list_tasks']").first.wait_for(state="attached")
    assert page.locator("[data-section-id^='operation/']").count() >= 20
    page.screenshot(path=tmp_path / "redoc.png")
    # Its one outside fetch, the sidebar's logo from cdn.redoc.ly, the policy refuses
    # before any request is made (backend/dashboard).
    refused = [e for e in browser.console_errors if "Content Security Policy" in e]
    assert all("cdn.redoc.ly" in e for e in refused), refused
    assert browser.blocked == [], browser.blocked
