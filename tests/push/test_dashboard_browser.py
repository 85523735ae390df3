"""The push pages in headless Chromium against a real server delivering to the fake Expo
server: overview with the recent sends, a send's delivery funnel (sent, delivered, opened,
failed with the provider's reason), cancelling a scheduled send, devices (a dead token shown
inactive) and templates with their rules."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.dashboard.test_browser import SCREENSHOTS, launch_browser
from tests.fakes.server import serve_app
from tests.push.fakes import FakeExpo


def _token(name: str) -> str:
    return f"ExponentPushToken[{name}]"


@pytest.mark.browser
@pytest.mark.slow
def test_push_pages_show_the_funnel_and_cancel_a_scheduled_send(tmp_path: Path) -> None:
    fake = FakeExpo()
    fake.ticket_errors[_token("gone")] = "DeviceNotRegistered"
    with serve_app(fake.app) as expo_url:
        server = LiveServer(
            tmp_path / "live",
            {
                "SHIPYARD_SECRET_KEY": "live-" + uuid.uuid4().hex,
                "SHIPYARD_ALLOW_PRIVATE_OUTBOUND": "true",
                "SHIPYARD_JOB_POLL_INTERVAL": "0.1",
                "SHIPYARD_PUSH_EXPO_URL": expo_url,
                "SHIPYARD_PUSH_RECEIPT_DELAY_SECONDS": "0",
            },
        )
        server.data_dir.mkdir(parents=True)
        creds = server.init()
        server.start()
        try:
            _exercise(server, creds, fake)
        finally:
            server.stop()


def _exercise(server: LiveServer, creds: dict[str, Any], fake: FakeExpo) -> None:
    from playwright.sync_api import sync_playwright

    slug = creds["project_slug"]
    base = f"/api/v1/projects/{creds['project_id']}/push"
    admin = {"Authorization": f"Bearer {creds['secret_key']}"}
    app = {"X-Shipyard-Key": creds["public_key"]}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for name, user in (("a", "grower-1"), ("b", "grower-2"), ("gone", "grower-3")):
            r = http.post(
                "/push/v1/devices", json={"token": _token(name), "platform": "ios", "user_id": user}, headers=app
            )
            assert r.status_code == 200, r.text
        assert http.put(f"{base}/categories/community", json={}, headers=admin).status_code == 200
        r = http.put(
            f"{base}/templates/comment",
            json={"texts": {"en": {"title": "New comment", "body": "{who} replied"}}, "category": "community"},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        r = http.put(
            f"{base}/rules/comment-to-author",
            json={"event": "community.comment_created", "template": "comment", "recipient_field": "authorId"},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        r = http.post(
            f"{base}/sends",
            json={
                "to": {"user_ids": ["grower-1", "grower-2", "grower-3"]},
                "notification": {"title": "Water Blue Dream", "body": "Your plant needs water"},
                "campaign": "care",
            },
            headers=admin,
        )
        assert r.status_code == 202, r.text
        send_id = r.json()["id"]
        later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        scheduled = http.post(
            f"{base}/sends",
            json={
                "to": {"user_ids": ["grower-1"]},
                "notification": {"title": "Weekly tips"},
                "schedule": {"trigger": "scheduled", "scheduled_time": later},
            },
            headers=admin,
        ).json()["id"]
        deadline = time.monotonic() + 30
        while True:
            funnel = http.get(f"{base}/sends/{send_id}", headers=admin).json()["funnel"]
            if funnel["delivered"] == 2 and funnel["failed"] == 1:
                break
            assert time.monotonic() < deadline, funnel
            time.sleep(0.2)
        sid = next(m["data"]["_sid"] for m in fake.received if m["to"] == _token("a"))
        assert http.post("/push/v1/engagement", json={"message_id": sid, "event": "opened"}, headers=app).is_success

    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        offsite: list[str] = []
        page.on("request", lambda r: offsite.append(r.url) if not r.url.startswith(server.url) else None)
        page.goto(server.url + "/login")
        page.fill("input[name=email]", creds["admin_email"])
        page.fill("input[name=password]", creds["admin_password"])
        page.click("button[type=submit]")
        page.wait_for_url(f"**/projects/{slug}")
        page.click("nav >> text=Push")
        page.wait_for_url(f"**/projects/{slug}/push")
        assert page.locator("#sends tr", has_text="Water Blue Dream").count() == 1
        assert page.locator("#providers tr", has_text="expo").locator("td", has_text="closed").count() == 1
        assert page.locator("#campaigns tr", has_text="care").locator("td", has_text="50.0 %").count() == 1
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "push-index.png"), full_page=True)

        page.click(f"#sends a:has-text('#{send_id}')")
        page.wait_for_url(f"**/push/sends/{send_id}")
        assert page.locator("#funnel-sent").inner_text() == "2"
        assert page.locator("#funnel-delivered").inner_text() == "2"
        assert page.locator("#funnel-opened").inner_text() == "1"
        assert page.locator("#funnel-failed").inner_text() == "1"
        assert "DeviceNotRegistered" in page.locator("#failures").inner_text()
        assert page.locator("#messages tbody td", has_text="opened").count() == 1
        assert page.locator("#cancel").count() == 0  # already done
        page.screenshot(path=str(SCREENSHOTS / "push-send.png"), full_page=True)

        page.goto(server.url + f"/projects/{slug}/push/sends/{scheduled}")
        assert page.locator("#send-status").inner_text() == "scheduled"
        page.click("#cancel")
        page.wait_for_load_state()
        assert page.locator("#send-status").inner_text() == "cancelled"

        page.click("#push-nav >> text=Messages")
        page.wait_for_url("**/push/messages")
        page.fill("#message-search input[name=user_id]", "grower-1")
        page.click("#message-search button")
        page.wait_for_url("**user_id=grower-1")
        texts = page.locator("#user-messages tbody").inner_text()
        # The cancelled scheduled send never fanned out: only the delivered (and opened) one.
        assert "Water Blue Dream" in texts and "opened" in texts and "Weekly tips" not in texts

        page.click("#push-nav >> text=Devices")
        page.wait_for_url("**/push/devices")
        assert page.locator("#devices tbody tr").count() == 3
        page.fill("#device-search input[name=user_id]", "grower-3")
        page.click("#device-search button")
        page.wait_for_url("**user_id=grower-3")
        row = page.locator("#devices tbody tr")
        assert row.count() == 1 and "inactive" in row.inner_text() and "DeviceNotRegistered" in row.inner_text()

        page.click("#push-nav >> text=Templates")
        page.wait_for_url("**/push/templates")
        assert page.locator("#templates tr", has_text="comment").count() == 1
        assert page.locator("#rules td", has_text="community.comment_created").count() == 1
        page.screenshot(path=str(SCREENSHOTS / "push-templates.png"), full_page=True)
        browser.close()
    assert offsite == [], offsite
