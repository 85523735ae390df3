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


def _login(page: Any, live_server: Any) -> None:
    creds = live_server.creds
    page.goto(live_server.url + "/login")
    page.fill("input[name=email]", creds["admin_email"])
    page.fill("input[name=password]", creds["admin_password"])
    page.click("button[type=submit]")
    page.wait_for_url(f"**/projects/{creds['project_slug']}")


@pytest.mark.browser
@pytest.mark.slow
def test_saved_insights_and_tracking_plan_editor(live_server: Any) -> None:
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
        page.on("dialog", lambda d: d.accept())
        _login(page, live_server)

        # Save a funnel from its page, pinned, and find it drawn on the overview.
        steps = "app_opened, plant_created, care_task_completed"
        page.goto(f"{base}/funnel?steps={steps}&window_value=1&window_unit=day&date_from={day}&date_to={day}")
        page.fill("#save-insight input[name=name]", "Plant onboarding")
        page.check("#save-insight input[name=pinned]")
        page.click("#save-insight button[type=submit]")
        page.wait_for_url("**/analytics/insights/*")
        assert page.locator("#insight-name").inner_text().startswith("Plant onboarding")
        assert page.locator("#funnel-steps td.count").all_inner_texts() == ["3", "2", "1"]
        with page.expect_download() as download:
            page.click("#csv")
        assert "(all),3,care_task_completed,1" in download.value.path().read_text()
        page.click("#edit-query")
        page.wait_for_url("**/analytics/funnel?*")
        assert page.locator("input[name=steps]").input_value() == steps

        # A trend saved unpinned, then pinned from the list.
        page.goto(f"{base}/trends?events=app_opened&interval=day&date_from={day}&date_to={day}")
        page.fill("#save-insight input[name=name]", "App opens")
        page.click("#save-insight button[type=submit]")
        page.wait_for_url("**/analytics/insights/*")
        page.click("#analytics-nav >> text=Saved insights")
        row = page.locator("#saved-insights tr", has_text="App opens")
        assert row.locator("td.pinned").inner_text() == "no"
        row.locator("button.pin").click()
        page.wait_for_load_state()
        row = page.locator("#saved-insights tr", has_text="App opens")
        assert row.locator("td.pinned").inner_text() == "yes"
        row.locator("input[name=name]").fill("Daily app opens")
        row.locator("form.rename button").click()
        page.wait_for_load_state()
        assert page.locator("#saved-insights td.name").all_inner_texts() == ["Plant onboarding", "Daily app opens"]

        page.click("#analytics-nav >> text=Overview")
        page.wait_for_url(f"**/projects/{slug}/analytics")
        cards = page.locator("#pinned .pinned-insight")
        assert cards.count() == 2
        assert cards.nth(0).locator("svg rect").count() == 3  # the funnel's bars, drawn in the page
        assert cards.nth(1).locator("svg polyline").count() == 1  # the trend's line
        page.screenshot(path=str(SCREENSHOTS / "analytics-pinned.png"), full_page=True)

        page.click("#analytics-nav >> text=Saved insights")
        page.locator("#saved-insights tr", has_text="Daily app opens").locator("button.delete").click()
        page.wait_for_load_state()
        assert page.locator("#saved-insights td.name").all_inner_texts() == ["Plant onboarding"]

        # The tracking plan: install the CanaBro plan, edit a schema, block violations.
        page.click("#analytics-nav >> text=Tracking plan")
        assert page.locator("#empty-plan").count() == 1
        page.click("#install-default button")
        page.wait_for_load_state()
        areas = page.locator("section.plan-area").evaluate_all("els => els.map(e => e.dataset.area)")
        assert areas == ["calendar_reminders", "community", "diagnosis", "plant_management", "strain_database"]
        usage = page.locator("#area-usage tr[data-area=plant_management]")
        assert usage.locator("td.count").inner_text() == "3" and usage.locator("td.users").inner_text() == "2"
        page.locator("tr[data-event=care_task_completed] a").click()
        page.wait_for_url("**/plan/edit?event=care_task_completed")
        page.fill("input[name=prop_name_3]", "duration_minutes")
        page.select_option("select[name=prop_type_3]", "integer")
        page.check("input[name=prop_required_3]")
        page.click("#schema-form button[type=submit]")
        page.wait_for_url("**/analytics/plan")
        props = page.locator("tr[data-event=care_task_completed] td.properties").inner_text()
        assert "duration_minutes: integer (required)" in props
        page.select_option("#enforcement-form select", "block")
        page.click("#enforcement-form button")
        page.wait_for_load_state()
        assert page.locator("#enforcement-mode").inner_text() == "recorded and not stored"

        violating = {**_events(start)[2], "messageId": str(uuid.uuid4())}  # care_task_completed, no duration
        blocked = httpx.post(
            live_server.url + "/v1/batch", json={"batch": [violating]}, headers={"Authorization": auth}, timeout=10
        )
        assert blocked.status_code == 200
        page.reload()
        assert page.locator("tr[data-event=care_task_completed] td.violations").inner_text() != "0"
        section = page.locator("#violations")
        assert section.locator("h3[data-event=care_task_completed]").count() == 1
        assert "missing_property" in section.inner_text() and "duration_minutes" in section.inner_text()
        page.screenshot(path=str(SCREENSHOTS / "analytics-plan.png"), full_page=True)

        page.goto(f"{base}/plan/edit")
        page.fill("input[name=event]", "photo_uploaded")
        page.fill("input[name=prop_name_0]", "size")
        page.fill("input[name=prop_name_1]", "size")
        page.click("#schema-form button[type=submit]")
        assert "listed twice" in page.locator("#plan-error").inner_text()
        page.fill("input[name=prop_name_1]", "")
        page.fill("input[name=feature_area]", "diagnosis")
        page.click("#schema-form button[type=submit]")
        page.wait_for_url("**/analytics/plan")
        page.locator("tr[data-event=photo_uploaded] a").click()
        page.wait_for_url("**/plan/edit?event=photo_uploaded")
        page.click("#delete-schema button")
        page.wait_for_url("**/analytics/plan")
        assert page.locator("tr[data-event=photo_uploaded]").count() == 0
        browser.close()
    assert offsite == [], offsite


@pytest.mark.browser
@pytest.mark.slow
def test_filter_a_trend_save_it_as_last_7_days_and_pin_it(live_server: Any) -> None:
    from playwright.sync_api import sync_playwright

    creds = live_server.creds
    slug = creds["project_slug"]
    yesterday = (datetime.now(UTC) - timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    old = yesterday - timedelta(days=20)  # inside the default 30 days, outside "last 7 days"

    def opened(user: str, plan: str, at: datetime) -> dict[str, Any]:
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        props = {"plan": plan}
        return {
            "type": "track",
            "event": "app_opened",
            "userId": user,
            "messageId": str(uuid.uuid4()),
            "timestamp": stamp,
            "properties": props,
        }

    batch = [opened("p1", "pro", yesterday), opened("p1", "pro", old)]
    batch += [opened(f"f{i}", "free", yesterday + timedelta(minutes=i)) for i in range(3)]
    auth = "Basic " + base64.b64encode(f"{creds['write_key']}:".encode()).decode()
    sent = httpx.post(live_server.url + "/v1/batch", json={"batch": batch}, headers={"Authorization": auth}, timeout=10)
    assert sent.status_code == 200, sent.text
    base = f"{live_server.url}/projects/{slug}/analytics"
    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        offsite: list[str] = []
        page.on("request", lambda r: offsite.append(r.url) if not r.url.startswith(live_server.url) else None)
        _login(page, live_server)

        page.goto(f"{base}/trends")
        page.fill("input[name=events]", "app_opened")
        page.click("#trends-form button[type=submit]")
        page.wait_for_load_state()
        total = page.locator("#trends-table tbody td").last
        assert total.inner_text() == "5"
        chart_before = page.locator("section.series svg").inner_html()
        assert "max 4" in chart_before  # yesterday's four opens top the line

        # One filter row is offered; "Add filter" adds a second, left blank (it is ignored).
        page.fill("input[name=f0_prop]", "plan")
        page.select_option("select[name=f0_scope]", "event")
        page.select_option("select[name=f0_op]", "eq")
        page.fill("input[name=f0_value]", "pro")
        page.click("#f-filters button.add-filter")
        assert page.locator("#f-filters .filter-row").count() == 2
        assert page.locator("input[name=f1_prop]").input_value() == ""
        page.click("#trends-form button[type=submit]")
        page.wait_for_url("**/trends?*f0_value=pro*")
        assert "date_from" not in page.url  # a rolling window: the link stays current when shared
        assert page.locator("#trends-table tbody td").last.inner_text() == "2"
        chart_after = page.locator("section.series svg").inner_html()
        assert chart_after != chart_before and "max 1" in chart_after
        assert page.locator("input[name=f0_value]").input_value() == "pro"  # the form kept the filter
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "analytics-trends-filtered.png"), full_page=True)

        # A bad filter is an error on the page, not a crash.
        page.select_option("select[name=f0_op]", "gt")
        page.fill("input[name=f0_value]", "")
        page.click("#trends-form button[type=submit]")
        page.wait_for_load_state()
        assert "greater than needs a value" in page.locator("#query-error").inner_text()
        page.select_option("select[name=f0_op]", "eq")
        page.fill("input[name=f0_value]", "pro")
        page.click("#trends-form button[type=submit]")
        page.wait_for_load_state()

        # Saved as "last 7 days": the 20-day-old open drops out; then pinned from its page.
        page.fill("#save-insight input[name=name]", "Pro opens this week")
        page.select_option("#save-insight select[name=date_window]", "last_7_days")
        page.click("#save-insight button[type=submit]")
        page.wait_for_url("**/analytics/insights/*")
        assert "the last 7 days" in page.locator("#insight-range").inner_text()
        assert "plan (event property) equals pro" in page.locator("#insight-filters").inner_text()
        assert page.locator("#trends-table tbody td").last.inner_text() == "1"
        page.click("button.pin")
        page.wait_for_load_state()
        assert "pinned" in page.locator("#insight-name").inner_text()
        page.screenshot(path=str(SCREENSHOTS / "analytics-insight-filtered.png"), full_page=True)

        page.click("#analytics-nav >> text=Overview")
        page.wait_for_url(f"**/projects/{slug}/analytics")
        card = page.locator("#pinned .pinned-insight", has_text="Pro opens this week")
        assert card.count() == 1
        assert card.locator("svg polyline").count() == 1
        assert "the last 7 days" in card.locator(".range").inner_text()
        page.screenshot(path=str(SCREENSHOTS / "analytics-pinned-filtered.png"), full_page=True)

        # "Edit the query" brings the filter and the window back into the form.
        card.locator("h3 a").click()
        page.wait_for_url("**/analytics/insights/*")
        page.click("#edit-query")
        page.wait_for_url("**/analytics/trends?*")
        assert page.locator("input[name=f0_prop]").input_value() == "plan"
        assert page.locator("select.date-window").input_value() == "last_7_days"
        assert page.locator("#trends-table tbody td").last.inner_text() == "1"
        browser.close()
    assert offsite == [], offsite
