"""The dashboard in a real browser: headless Chromium logs in, renders the overview, switches
project, opens every section of the navigation and logs out, fetching nothing off the server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shipyard.dashboard.web import nav_entries
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
        subprocess.run(
            [sys.executable, "-m", "shipyard.cli", "projects", "create", "Second App", "--json"],
            env=live_server.env,
            capture_output=True,
            check=True,
            timeout=120,
        )
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
        # The project switcher: a second project is one choice away, with the same sections.
        page.select_option("#project-switcher", "second-app")
        page.wait_for_url("**/projects/second-app")
        assert page.locator("h1").inner_text() == "Second App"
        # A navigation entry for every loaded feature, and each one opens a page (no 404s).
        links = page.locator("nav.sidebar a")
        titles = [links.nth(i).inner_text() for i in range(links.count())]
        hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
        assert {entry.title for entry in nav_entries()} <= set(titles)
        for href in hrefs:
            response = page.goto(live_server.url + str(href))
            assert response is not None and response.status == 200, href
        page.click("text=Log out")
        page.wait_for_url("**/login")
        browser.close()
    assert blocked == [], f"the dashboard fetched something off the server: {blocked}"
