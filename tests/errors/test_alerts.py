"""Error alerts end to end: events through the real ingest and digester raise each alert
(new issue, regression, N events / N users in a window, a spike against the issue's own
baseline, a release's crash-free rate under a threshold), each delivered once to a signed
webhook on a local fake server; a storm sends one alert per interval, not one per event.
Rules are managed per project through the admin API."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook

from shipyard.core import jobs
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.errors import alerting
from shipyard.errors.models import alert_fires, events
from tests.conftest import admin_headers
from tests.core.test_alerts_http import Receiver
from tests.errors.helpers import error_event, frame, process, send_events
from tests.errors.test_release_health import send_sessions, session
from tests.fakes.server import serve_app


class Hook:
    """The project's webhook channel and what reached it (verified signatures)."""

    def __init__(self, receiver: Receiver, secret: str) -> None:
        self.receiver, self.secret = receiver, secret

    def payloads(self) -> list[dict[str, Any]]:
        return [dict(Webhook(self.secret).verify(body, headers)) for headers, body in self.receiver.calls]

    def summaries(self, event: str = "alert.firing") -> list[str]:
        return [p["data"]["summary"] for p in self.payloads() if p["type"] == event]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_app(r.app) as url:
        yield r, url + "/hook"


@pytest.fixture
async def hook(client: httpx.AsyncClient, project: dict[str, Any], receiver: tuple[Receiver, str]) -> Hook:
    r, url = receiver
    created = await client.post(
        f"/api/v1/projects/{project['id']}/alert-channels",
        json={"name": "ops", "url": url, "min_severity": "info"},
        headers=admin_headers(project),
    )
    assert created.status_code == 201, created.text
    return Hook(r, created.json()["secret"])


def rules_url(project: dict[str, Any]) -> str:
    return f"/api/v1/projects/{project['id']}/errors/alert-rules"


async def add_rule(client: httpx.AsyncClient, project: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = await client.post(rules_url(project), json=body, headers=admin_headers(project))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def deliver(ctx: Context) -> None:
    """Digest what was received, then run the queue (alert deliveries)."""
    await process(ctx)
    await jobs.Worker(ctx).run_until_idle()


def crash(value: str = "boom", **kwargs: Any) -> dict[str, Any]:
    return error_event(exc_type="KeyError", value=value, frames=[frame("load_plant", "app.plants")], **kwargs)


async def test_new_issue_and_regression_alerts_are_delivered_once(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], hook: Hook
) -> None:
    await send_events(client, project, crash(), crash(), crash())
    await deliver(ctx)
    assert hook.summaries() == ["New issue: KeyError: boom"]
    payload = hook.payloads()[0]["data"]
    assert payload["link"].startswith("http://testserver/projects/") and "/errors/issues/" in payload["link"]
    await send_events(client, project, crash())  # an old issue again: nothing new to say
    await deliver(ctx)
    assert len(hook.receiver.calls) == 1

    issue_id = payload["details"]["issue_id"]
    base = f"/api/v1/projects/{project['id']}/errors/issues/{issue_id}"
    assert (await client.post(f"{base}/resolve", json={}, headers=admin_headers(project))).status_code == 200
    await send_events(client, project, crash(), crash())
    await deliver(ctx)
    assert hook.summaries() == ["New issue: KeyError: boom", "Regression: KeyError: boom"]


async def test_builtin_alerts_can_be_switched_off_per_project(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], hook: Hook
) -> None:
    settings = f"/api/v1/projects/{project['id']}/errors/settings"
    changed = await client.put(settings, json={"alert_new_issue": False}, headers=admin_headers(project))
    assert changed.status_code == 200, changed.text
    await send_events(client, project, crash())
    await deliver(ctx)
    assert hook.receiver.calls == []


async def test_event_frequency_storm_sends_one_alert_per_interval(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], hook: Hook
) -> None:
    await client.put(
        f"/api/v1/projects/{project['id']}/errors/settings",
        json={"alert_new_issue": False},
        headers=admin_headers(project),
    )
    rule = await add_rule(
        client, project, name="busy", kind="event_frequency", threshold=10, window_minutes=60, interval_minutes=30
    )
    await send_events(client, project, *[crash() for _ in range(10)])
    await deliver(ctx)
    assert hook.receiver.calls == []  # 10 is not more than 10
    for _ in range(4):  # a storm, digested in several batches
        await send_events(client, project, *[crash() for _ in range(25)])
        await deliver(ctx)
    (first,) = hook.summaries()
    assert re.fullmatch(r"(\d+) events in 60 min: KeyError: boom", first) and int(first.split()[0]) > 10
    # Once the interval has passed, a storm still raging is news again: one more alert.
    async with ctx.db.transaction() as conn:
        await conn.execute(update(alert_fires).values(fired_at=utcnow() - timedelta(minutes=31)))
    await send_events(client, project, *[crash() for _ in range(5)])
    await deliver(ctx)
    await send_events(client, project, *[crash() for _ in range(5)])
    await deliver(ctx)
    summaries = hook.summaries()
    assert len(summaries) == 2 and summaries[1] == "115 events in 60 min: KeyError: boom"
    details = hook.payloads()[1]["data"]["details"]
    assert details["rule"] == "busy" and details["kind"] == "event_frequency" and rule["id"]


async def test_user_frequency_counts_distinct_users(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], hook: Hook
) -> None:
    await client.put(
        f"/api/v1/projects/{project['id']}/errors/settings",
        json={"alert_new_issue": False},
        headers=admin_headers(project),
    )
    await add_rule(client, project, name="many users", kind="user_frequency", threshold=3, severity="error")
    same_user = [crash(user={"id": "grower-1"}) for _ in range(20)]
    await send_events(client, project, *same_user)
    await deliver(ctx)
    assert hook.receiver.calls == []  # twenty events, one user
    await send_events(client, project, *[crash(user={"id": f"grower-{n}"}) for n in range(2, 6)])
    await deliver(ctx)
    assert hook.summaries() == ["5 users in 60 min: KeyError: boom"]
    assert hook.payloads()[0]["data"]["severity"] == "error"


async def test_a_spike_against_the_issues_own_baseline(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], hook: Hook
) -> None:
    await client.put(
        f"/api/v1/projects/{project['id']}/errors/settings",
        json={"alert_new_issue": False},
        headers=admin_headers(project),
    )
    # A steady issue: two events an hour for the last day (received back then).
    now = utcnow()
    steady = []
    for hours_ago in range(2, 26):
        for _ in range(2):
            steady.append(crash(timestamp=(now - timedelta(hours=hours_ago)).isoformat()))
    await send_events(client, project, *steady)
    await process(ctx)
    async with ctx.db.transaction() as conn:
        await conn.execute(update(events).values(received_at=events.c.timestamp))
    await add_rule(
        client, project, name="spike", kind="spike", threshold=3, window_minutes=60, min_count=5, severity="critical"
    )
    # Its usual rate, and then some, is not a spike.
    await send_events(client, project, *[crash() for _ in range(5)])
    await deliver(ctx)
    assert hook.receiver.calls == []
    # Four times its usual rate is.
    await send_events(client, project, *[crash() for _ in range(3)])
    await deliver(ctx)
    (spike,) = hook.summaries()
    found = re.fullmatch(r"Spike: 8 events in 60 min \(baseline ([\d.]+)\): KeyError: boom", spike)
    assert found and 1.5 <= float(found.group(1)) <= 2.0, spike
    # Another issue, new, with no baseline: its first events are a spike from nothing only
    # once they reach the rule's minimum.
    other = [error_event(exc_type="OSError", value="disk", frames=[frame("save", "app.disk")]) for _ in range(4)]
    await send_events(client, project, *other)
    await deliver(ctx)
    assert len(hook.summaries()) == 1
    await send_events(
        client, project, error_event(exc_type="OSError", value="disk", frames=[frame("save", "app.disk")])
    )
    await deliver(ctx)
    assert hook.summaries()[1].startswith("Spike: 5 events in 60 min (baseline 0.0): OSError")


async def test_crash_free_rate_under_threshold_alerts_once_and_resolves(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], hook: Hook
) -> None:
    await add_rule(
        client,
        project,
        name="crash-free",
        kind="crash_free",
        threshold=0.95,
        window_minutes=1440,
        min_count=10,
        severity="critical",
    )
    release = "app@3.0.0+1"
    await send_sessions(client, project, [session(release) for _ in range(8)] + [session(release, "crashed")])
    await process(ctx)
    assert await alerting.evaluate_crash_free(ctx) == 0  # 9 sessions: under the minimum
    await send_sessions(client, project, [session(release, "crashed")])
    await process(ctx)
    assert await alerting.evaluate_crash_free(ctx) == 1  # 80 % over 10 sessions
    assert await alerting.evaluate_crash_free(ctx) == 0  # still bad, within the interval
    await jobs.Worker(ctx).run_until_idle()
    assert hook.summaries() == ["Crash-free sessions of app@3.0.0+1 at 80.00 % (under 95.00 %)"]
    assert hook.payloads()[0]["data"]["link"].endswith("/errors/releases")
    # Recovery resolves it, and the channel hears so.
    await send_sessions(client, project, [session(release) for _ in range(40)])
    await process(ctx)
    await alerting.evaluate_crash_free(ctx)
    await jobs.Worker(ctx).run_until_idle()
    assert hook.summaries("alert.resolved") == ["Crash-free sessions of app@3.0.0+1 at 80.00 % (under 95.00 %)"]


async def test_rules_are_managed_through_the_admin_api(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    url = rules_url(project)
    headers = admin_headers(project)
    rule = await add_rule(client, project, name="busy", kind="event_frequency", threshold=100)
    assert rule["window_minutes"] == 60 and rule["interval_minutes"] == 60 and rule["enabled"] is True
    listed = (await client.get(url, headers=headers)).json()["data"]
    assert [r["name"] for r in listed] == ["busy"]
    patched = await client.patch(
        f"{url}/{rule['id']}", json={"enabled": False, "threshold": 50, "interval_minutes": 5}, headers=headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["enabled"] is False and patched.json()["threshold"] == 50
    assert patched.json()["interval_minutes"] == 5
    for bad in (
        {"name": "x", "kind": "loudness", "threshold": 1},
        {"name": "x", "kind": "crash_free", "threshold": 1.5},
        {"name": "x", "kind": "spike", "threshold": 0},
        {"name": "x", "kind": "spike", "threshold": 2, "window_minutes": 0},
    ):
        response = await client.post(url, content=orjson.dumps(bad), headers=headers)
        assert response.status_code in (400, 422), (bad, response.text)
        assert "error" in response.json()
    bad_patch = await client.patch(f"{url}/{rule['id']}", json={"threshold": -1}, headers=headers)
    assert bad_patch.status_code in (400, 422)
    assert (await client.patch(f"{url}/999999", json={"enabled": True}, headers=headers)).status_code == 404
    assert (await client.delete(f"{url}/{rule['id']}", headers=headers)).status_code == 204
    assert (await client.get(url, headers=headers)).json()["data"] == []
    assert (await client.delete(f"{url}/{rule['id']}", headers=headers)).status_code == 404


async def test_a_disabled_rule_stays_quiet(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], hook: Hook
) -> None:
    await client.put(
        f"/api/v1/projects/{project['id']}/errors/settings",
        json={"alert_new_issue": False},
        headers=admin_headers(project),
    )
    rule = await add_rule(client, project, name="busy", kind="event_frequency", threshold=2)
    await client.patch(f"{rules_url(project)}/{rule['id']}", json={"enabled": False}, headers=admin_headers(project))
    await send_events(client, project, *[crash() for _ in range(5)])
    await deliver(ctx)
    assert hook.receiver.calls == []
