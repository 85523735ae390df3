"""The updates pages in headless Chromium against a real server: channels, a rollout's
health with failed launches, and the admin halt / resume / roll back buttons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard.test_browser import SCREENSHOTS, launch_browser
from tests.updates.helpers import expo_headers, make_export, parse_multipart
from tests.updates.test_cli_live import shipyard


@pytest.mark.browser
@pytest.mark.slow
def test_rollout_pages_and_controls(live_server: Any, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    creds = live_server.creds
    slug = creds["project_slug"]
    shipyard(live_server, "publish", str(make_export(tmp_path, "v1")), "-p", slug, "-c", "production", "-m", "v1")
    rolling = json.loads(
        shipyard(
            live_server,
            "publish",
            str(make_export(tmp_path, "v2")),
            "-p",
            slug,
            "-c",
            "production",
            "-m",
            "new watering UI",
            "--rollout",
            "50",
            "--json",
        ).stdout
    )
    group = rolling["group_id"]
    v2 = next(u["id"] for u in rolling["updates"] if u["platform"] == "ios")
    embedded = str(uuid.uuid4())
    with httpx.Client(timeout=10) as http:
        for n in range(40):
            device = str(uuid.UUID(int=n + 99))
            got = http.get(
                creds["manifest_url"], headers=expo_headers(client_id=device, embedded=embedded, current=embedded)
            )
            manifest = json.loads(parse_multipart(got)["manifest"].body)
            if manifest["id"] == v2:
                failed = n % 3 == 0
                headers = expo_headers(
                    client_id=device,
                    embedded=embedded,
                    current=embedded if failed else v2,
                    failed=[v2] if failed else None,
                    fatal="ReferenceError: Can't find variable: Plant" if failed else None,
                )
                http.get(creds["manifest_url"], headers=headers)
    users = ("users", "create", "viewer@example.com", "--password", "viewer password 123")
    subprocess.run([sys.executable, "-m", "shipyard.cli", *users], env=live_server.env, check=True, capture_output=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "shipyard.cli",
            "users",
            "set-role",
            "viewer@example.com",
            "--project",
            slug,
            "--role",
            "viewer",
        ],
        env=live_server.env,
        check=True,
        capture_output=True,
    )
    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        offsite: list[str] = []
        page.on("request", lambda r: offsite.append(r.url) if not r.url.startswith(live_server.url) else None)
        page.goto(live_server.url + "/login")
        page.fill("input[name=email]", creds["admin_email"])
        page.fill("input[name=password]", creds["admin_password"])
        page.click("button[type=submit]")
        page.wait_for_url(f"**/projects/{slug}")
        page.click("nav >> text=Updates")
        page.wait_for_url(f"**/projects/{slug}/updates")
        assert page.locator("#channels tr", has_text="staging").count() == 1
        assert page.locator("#runtimes td code", has_text="1.0.0").count() == 2
        # Deployment history: version, channel, status, rollout %, devices affected, error rate.
        row = page.locator("#history tr", has_text="new watering UI")
        cells = row.locator("td").all_inner_texts()
        assert (
            cells[1] == "production" and cells[2] == "pending" and cells[3] == "50 %"
        )  # rolling out: pending until 100 %
        assert int(cells[4]) > 0 and cells[5].endswith("%")
        page.click(f"#rollouts a:has-text('{group[:8]}')")
        page.wait_for_url(f"**/updates/rollouts/{group}")
        assert page.locator("#rollout-status").inner_text() == "active"
        page.wait_for_timeout(1500)  # reports are flushed every second
        page.reload()
        assert "Plant" in page.content()  # the top fatal error of the failing launches
        # Adoption chart: cumulative installations that launched the update.
        assert (
            page.locator(
                "svg.chart[aria-label*='launched the update'] polyline, "
                "svg.chart[aria-label*='launched the update'] path"
            ).count()
            >= 1
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "updates-rollout.png"), full_page=True)
        page.fill("input[name=reason]", "checking crash reports")
        page.click("#halt")
        page.wait_for_load_state()
        assert page.locator("#rollout-status").inner_text() == "halted"
        assert page.locator("#rollout-reason").inner_text() == "checking crash reports"
        page.click("#resume")
        page.wait_for_load_state()
        assert page.locator("#rollout-status").inner_text() == "active"
        page.click("#rollback")
        page.wait_for_load_state()
        assert page.locator("#rollout-status").inner_text() == "rolled_back"
        assert page.locator("#events td", has_text="rolled_back").count() >= 1
        page.goto(live_server.url + f"/projects/{slug}/updates")
        assert page.locator("#groups td", has_text="rollback").count() >= 1
        page.screenshot(path=str(SCREENSHOTS / "updates-index.png"), full_page=True)
        # A viewer sees the same rollout page without any control, and cannot post one.
        viewer = browser.new_page(viewport={"width": 1366, "height": 900})
        viewer.goto(live_server.url + "/login")
        viewer.fill("input[name=email]", "viewer@example.com")
        viewer.fill("input[name=password]", "viewer password 123")
        viewer.click("button[type=submit]")
        viewer.wait_for_url(f"**/projects/{slug}")
        viewer.goto(live_server.url + f"/projects/{slug}/updates/rollouts/{group}")
        assert viewer.locator("#rollout-status").inner_text() == "rolled_back"
        assert viewer.locator("form[action*='/rollouts/'] button").count() == 0
        assert viewer.locator("#halt, #resume, #rollback").count() == 0
        cookies = {c["name"]: c["value"] for c in viewer.context.cookies()}
        refused = httpx.post(
            live_server.url + f"/projects/{slug}/updates/rollouts/{group}/resume",
            cookies=cookies,
            data={"csrf_token": "x"},
        )
        assert refused.status_code in (403, 400), refused.status_code
        browser.close()
    assert offsite == [], offsite
    assert os.path.exists(SCREENSHOTS / "updates-rollout.png")
