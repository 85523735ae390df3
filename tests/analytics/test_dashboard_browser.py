"""The analytics pages in headless Chromium against a real server: overview, trends,
funnel and retention built from events sent through the Segment API, CSV downloads, a
bad query shown as an error, and no request leaving the server."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.dashboard.test_browser import SCREENSHOTS, launch_browser


def _events(start: datetime) -> list[dict[str, Any]]:
    def track(user: str, event: str, at: datetime, **props: Any) -> dict[str, Any]:
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "type": "track",
            "event": event,
            "userId": user,
            "messageId": str(uuid.uuid4()),
            "timestamp": stamp,
            "properties": props,
        }

    batch = []
    # g1 converts fully, g2 stops after plant_created, g3 only opens the app; g1 comes back a day later.
    batch += [track("g1", "app_opened", start), track("g1", "plant_created", start + timedelta(minutes=3))]
    batch += [track("g1", "care_task_completed", start + timedelta(hours=1), task_type="watering")]
    batch += [track("g1", "app_opened", start + timedelta(days=1))]
    batch += [track("g2", "app_opened", start), track("g2", "plant_created", start + timedelta(minutes=10))]
    batch += [track("g3", "app_opened", start)]
    return batch


@pytest.mark.browser
@pytest.mark.slow
def test_analytics_pages(live_server: Any) -> None:
    from playwright.sync_api import sync_playwright

    creds = live_server.creds
    slug = creds["project_slug"]
    start = (datetime.now(UTC) - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)
    auth = "Basic " + base64.b64encode(f"{creds['write_key']}:".encode()).decode()
    sent = httpx.post(
        live_server.url + "/v1/batch", json={"batch": _events(start)}, headers={"Authorization": auth}, timeout=10
    )
    assert sent.status_code == 200, sent.text
    day = start.date().isoformat()
    base = f"{live_server.url}/projects/{slug}/analytics"
    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
        offsite: list[str] = []
        page.on("request", lambda r: offsite.append(r.url) if not r.url.startswith(live_server.url) else None)
        page.goto(live_server.url + "/login")
        page.fill("input[name=email]", creds["admin_email"])
        page.fill("input[name=password]", creds["admin_password"])
        page.click("button[type=submit]")
        page.wait_for_url(f"**/projects/{slug}")
        page.click("nav >> text=Analytics")
        page.wait_for_url(f"**/projects/{slug}/analytics")
        assert page.locator("#mau").inner_text() == "3"
        assert page.locator("#top-events svg text", has_text="app_opened").count() == 1
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "analytics-overview.png"), full_page=True)

        page.click("#analytics-nav >> text=Funnel")
        page.fill("input[name=steps]", "app_opened, plant_created, care_task_completed")
        page.fill("input[name=window_value]", "1")
        page.fill("input[name=date_from]", day)
        page.fill("input[name=date_to]", day)
        page.click("#funnel-form button[type=submit]")
        page.wait_for_load_state()
        assert page.locator("#funnel-steps td.count").all_inner_texts() == ["3", "2", "1"]
        assert page.locator("svg rect").count() >= 3  # the chart drew in the page
        with page.expect_download() as download:
            page.click("#csv")
        csv = download.value.path().read_text()
        assert csv.splitlines()[0].startswith("breakdown_value,step,label,users")
        assert "(all),3,care_task_completed,1" in csv
        page.screenshot(path=str(SCREENSHOTS / "analytics-funnel.png"), full_page=True)

        page.goto(f"{base}/trends?events=app_opened&interval=day&date_from={day}&date_to={day}")
        assert page.locator("#trends-table tbody td").all_inner_texts() == ["app_opened", "3", "3"]
        early = (start - timedelta(days=100)).date().isoformat()
        page.goto(f"{base}/trends?events=app_opened&math=unique_users&interval=hour&date_from={early}&date_to={day}")
        assert page.locator("#query-error").inner_text().startswith("hourly intervals are limited")

        page.click("#analytics-nav >> text=Retention")
        page.fill("input[name=start_event]", "app_opened")
        page.fill("input[name=return_event]", "app_opened")
        page.select_option("select[name=interval]", "day")
        page.fill("input[name=periods]", "1")
        page.fill("input[name=date_from]", day)
        page.fill("input[name=date_to]", day)
        page.click("#retention-form button[type=submit]")
        page.wait_for_load_state()
        row = page.locator("#retention-table tbody tr").first
        assert row.locator("td.size").inner_text() == "3"
        assert row.locator("td").all_inner_texts()[2:] == ["100 %", "33 %"]
        page.screenshot(path=str(SCREENSHOTS / "analytics-retention.png"), full_page=True)
        browser.close()
    assert offsite == [], offsite
