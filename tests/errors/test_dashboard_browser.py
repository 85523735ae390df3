"""The errors pages in headless Chromium against a real server fed by Sentry envelopes: the
issue list and its filters, an issue's stack trace (in-app frames highlighted, source context),
breadcrumbs, contexts, OTA update, feedback and events chart, moving between events, the
resolve / ignore / assign buttons, release health, and a viewer who sees no button and whose
post is refused. Nothing leaves the server's origin (no CDN)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.dashboard.test_browser import SCREENSHOTS, launch_browser
from tests.errors.helpers import auth_header, envelope, error_event, event_envelope
from tests.errors.test_dashboard import UPDATE_ID, crash_event
from tests.errors.test_release_health import session


def _post(http: httpx.Client, creds: dict[str, Any], body: bytes) -> None:
    headers = {**auth_header(creds["public_key"]), "Content-Type": "application/x-sentry-envelope"}
    response = http.post(f"/api/{creds['project_id']}/envelope/", content=body, headers=headers)
    assert response.status_code == 200, response.text


def _feed(http: httpx.Client, creds: dict[str, Any]) -> dict[str, Any]:
    first = crash_event("Cannot read property 'id' of undefined")
    latest = crash_event("Cannot read property 'id' of undefined")
    latest["contexts"]["os"]["version"] = "17.5"
    _post(http, creds, event_envelope(first))
    _post(http, creds, event_envelope(latest))
    _post(http, creds, event_envelope(error_event(exc_type="SlowRender", value="took 900 ms", level="warning")))
    feedback = {"event_id": latest["event_id"], "name": "Ann", "comments": "The app closed when I saved my plant"}
    _post(http, creds, envelope([({"type": "user_report"}, feedback)]))
    release = "com.example.grow@2.1.0+41#production:" + UPDATE_ID
    sessions = [session(release) for _ in range(19)] + [session(release, "crashed")]
    _post(http, creds, envelope([({"type": "session"}, s) for s in sessions]))
    admin = {"Authorization": f"Bearer {creds['secret_key']}"}
    base = f"/api/v1/projects/{creds['project_id']}/errors"
    deadline = time.monotonic() + 60
    while True:  # the server's digester groups the events in the background
        issues = http.get(f"{base}/issues", headers=admin).json()["data"]
        sessions_seen = http.get(f"{base}/releases", headers=admin).json()["total"]["sessions"]
        if sum(i["count"] for i in issues) == 3 and sessions_seen == 20:
            break
        assert time.monotonic() < deadline, (issues, sessions_seen)
        time.sleep(0.2)
    return {"first": first, "latest": latest}


def _cli(server: Any, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "shipyard.cli", *args], env=server.env, check=True, capture_output=True)


def _login(browser: Any, url: str, email: str, password: str, slug: str) -> Any:
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(url + "/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"**/projects/{slug}")
    return page


@pytest.mark.browser
@pytest.mark.slow
def test_issue_pages_and_actions_in_a_browser(live_server: Any) -> None:
    from playwright.sync_api import sync_playwright

    creds = live_server.creds
    slug = creds["project_slug"]
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        seeded = _feed(http, creds)
    _cli(live_server, "users", "create", "viewer@example.com", "--password", "viewer password 123")
    _cli(live_server, "users", "set-role", "viewer@example.com", "--project", slug, "--role", "viewer")

    with sync_playwright() as p:
        browser = launch_browser(p)
        page = _login(browser, live_server.url, creds["admin_email"], creds["admin_password"], slug)
        offsite: list[str] = []
        page.on("request", lambda r: offsite.append(r.url) if not r.url.startswith(live_server.url) else None)
        page.click("nav >> text=Issues")
        page.wait_for_url(f"**/projects/{slug}/errors")
        assert page.locator("nav.sidebar a.active").inner_text() == "Issues"
        rows = page.locator("#issues tbody tr")
        assert rows.count() == 2
        # Filters are a plain GET form: level=warning leaves the slow render only.
        page.select_option("#issue-filters select[name=level]", "warning")
        page.click("#issue-filters button")
        page.wait_for_url("**level=warning**")
        assert page.locator("#issues .issue-title").all_inner_texts() == ["SlowRender: took 900 ms"]
        page.select_option("#issue-filters select[name=level]", "")
        page.select_option("#issue-filters select[name=sort]", "impact")
        page.click("#issue-filters button")
        page.wait_for_url("**sort=impact**")
        titles = page.locator("#issues .issue-title").all_inner_texts()
        assert titles[0].startswith("TypeError") and len(titles) == 2
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "errors-issues.png"), full_page=True)

        page.click("#issues a.issue-title:has-text('TypeError')")
        page.wait_for_url("**/errors/issues/*")
        assert page.locator("#event-id").inner_text() == seeded["latest"]["event_id"]
        in_app = page.locator("#stacktrace .frame.in-app")
        assert in_app.count() == 1 and "onSave" in in_app.inner_text()
        assert page.locator("#stacktrace .frame.system").count() == 1
        # The in-app frame stands out: a coloured left border the system frame does not have.
        border = in_app.evaluate("e => getComputedStyle(e).borderLeftWidth")
        assert border == "4px", border
        assert page.locator("#stacktrace .context .current").inner_text().strip().startswith("88")
        assert page.locator("#breadcrumbs tbody tr").count() == 2
        assert "iPhone15,2" in page.locator("#contexts [data-context=device]").inner_text()
        assert page.locator("#event-update").inner_text() == UPDATE_ID
        assert page.locator("#event-channel").inner_text() == "production"
        assert "The app closed when I saved my plant" in page.locator("#feedback").inner_text()
        assert page.locator("svg.chart[aria-label='Events per hour of this issue'] polyline").count() == 1
        page.screenshot(path=str(SCREENSHOTS / "errors-issue.png"), full_page=True)
        page.click("#older-event")
        page.wait_for_url("**event=*")
        assert page.locator("#event-id").inner_text() == seeded["first"]["event_id"]
        assert "17.4" in page.locator("#contexts [data-context=os]").inner_text()
        page.click("#latest-event")
        page.wait_for_load_state()
        assert page.locator("#event-id").inner_text() == seeded["latest"]["event_id"]

        page.click("#resolve-next")
        page.wait_for_load_state()
        assert page.locator("#issue-status").inner_text() == "resolved"
        assert "in_next_release" in page.locator("#issue-resolution").inner_text()
        page.click("#unresolve")
        page.wait_for_load_state()
        page.fill("#ignore-count-form input[name=count]", "50")
        page.click("#ignore-count")
        page.wait_for_load_state()
        assert page.locator("#issue-status").inner_text() == "ignored"
        assert page.locator("#issue-ignore").inner_text().startswith("events until 52")
        page.click("#assign")
        page.wait_for_load_state()
        assert page.locator("#issue-assignee").inner_text() == creds["admin_email"]
        assert page.locator("#activity li").count() == 4  # resolve, unresolve, ignore, assign
        issue_url = page.url.split("?")[0]

        page.click("#errors-nav >> text=Release health")
        page.wait_for_url("**/errors/releases")
        assert page.locator("nav.sidebar a.active").inner_text() == "Release health"
        assert page.locator("#total-crash-free-sessions").inner_text() == "95.0 %"
        row = page.locator("#updates tbody tr", has_text=UPDATE_ID[:8])
        assert row.locator(".crash-free-sessions").inner_text() == "95.0 %"
        page.screenshot(path=str(SCREENSHOTS / "errors-releases.png"), full_page=True)

        viewer = _login(browser, live_server.url, "viewer@example.com", "viewer password 123", slug)
        viewer.goto(issue_url)
        assert viewer.locator("#issue-status").inner_text() == "ignored"
        assert viewer.locator("#actions, form[action*='/errors/issues/'] button").count() == 0
        cookies = {c["name"]: c["value"] for c in viewer.context.cookies()}
        token = viewer.locator("input[name=csrf_token]").first.get_attribute("value")
        refused = httpx.post(issue_url + "/unresolve", cookies=cookies, data={"csrf_token": token or ""})
        assert refused.status_code == 403
        browser.close()
    assert offsite == [], offsite
