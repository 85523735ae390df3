"""The dashboard in a real browser: headless Chromium logs in and renders the overview."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("SHIPYARD_SCREENSHOTS", "screenshots"))


def launch_browser(playwright: Any) -> Any:
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail("Debian's chromium is required under CI")
        pytest.skip("chromium not installed")
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )


@pytest.mark.browser
def test_login_and_overview_in_chromium(live_server: Any) -> None:
    from playwright.sync_api import sync_playwright

    creds = live_server.creds
    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1366, "height": 800})
        blocked: list[str] = []
        page.on("request", lambda r: blocked.append(r.url) if not r.url.startswith(live_server.url) else None)
        page.goto(live_server.url + "/")
        assert "/login" in page.url
        page.fill("input[name=email]", creds["admin_email"])
        page.fill("input[name=password]", "wrong password!!")
        page.click("button[type=submit]")
        assert page.locator(".error").inner_text() == "wrong email or password"
        page.fill("input[name=password]", creds["admin_password"])
        page.click("button[type=submit]")
        page.wait_for_url(f"**/projects/{creds['project_slug']}")
        assert page.locator("h1").inner_text() == "My App"
        assert creds["dsn"] in page.content()
        page.click("text=Audit trail")
        page.wait_for_url("**/audit")
        assert page.locator("td code", has_text="instance.init").count() >= 1
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "dashboard-audit.png"), full_page=True)
        page.click("text=Overview")
        page.screenshot(path=str(SCREENSHOTS / "dashboard-overview.png"), full_page=True)
        page.click("text=Log out")
        page.wait_for_url("**/login")
        browser.close()
    assert blocked == [], f"the dashboard fetched something off the server: {blocked}"
