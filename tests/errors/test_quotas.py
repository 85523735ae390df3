"""Per-project quotas: 429 with headers SDKs understand, per category, and visible drop counts."""

from __future__ import annotations

from typing import Any

import httpx
from sentry_sdk.transport import _parse_rate_limits

from shipyard.core.context import Context
from shipyard.core.db import utcnow
from tests.conftest import admin_headers
from tests.errors.helpers import envelope, error_event, event_envelope, message_event, new_id, post, process


def transaction_event() -> dict[str, Any]:
    now = utcnow().timestamp()
    return {
        "event_id": new_id(),
        "type": "transaction",
        "transaction": "/checkout",
        "start_timestamp": now - 0.25,
        "timestamp": now,
        "contexts": {"trace": {"trace_id": new_id(), "span_id": new_id()[:16], "op": "http.server"}},
    }


async def test_events_over_quota_get_429_with_integer_retry_headers(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    headers = admin_headers(project)
    base = f"/api/v1/projects/{project['id']}/errors"
    changed = await client.put(f"{base}/settings", json={"events_per_minute": 3}, headers=headers)
    assert changed.status_code == 200 and changed.json()["events_per_minute"] == 3
    statuses = []
    limited: httpx.Response | None = None
    for index in range(5):
        event = error_event() if index % 2 else message_event(f"hello {index}")
        response = await post(client, project, event_envelope(event))
        statuses.append(response.status_code)
        if response.status_code == 429:
            limited = response
    assert statuses == [200, 200, 200, 429, 429]
    assert limited is not None
    retry_after = limited.headers["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    header = limited.headers["X-Sentry-Rate-Limits"]
    assert header == f"{retry_after}:default;error:project:quota_exceeded"
    # What sentry-python makes of it: both event categories disabled, for whole seconds.
    assert {category for category, _until in _parse_rate_limits(header)} == {"default", "error"}

    # Transactions have their own quota and still go through.
    response = await post(client, project, event_envelope(transaction_event()))
    assert response.status_code == 200 and "X-Sentry-Rate-Limits" not in response.headers

    # Sessions riding along with a refused event are still counted (they bypass quotas).
    session = {
        "sid": new_id(),
        "init": True,
        "status": "exited",
        "started": utcnow().isoformat(),
        "attrs": {"release": "app@1.0.0+1"},
    }
    event = error_event()
    body = envelope([({"type": "event"}, event), ({"type": "session"}, session)], {"event_id": event["event_id"]})
    assert (await post(client, project, body)).status_code == 429
    await process(ctx)
    health = (await client.get(f"{base}/releases", headers=headers)).json()
    assert health["total"]["sessions"] == 1

    dropped = (await client.get(f"{base}/outcomes", headers=headers)).json()["data"]
    counts = {(d["outcome"], d["category"]): d["quantity"] for d in dropped}
    assert counts[("rate_limited", "error")] + counts.get(("rate_limited", "default"), 0) == 3
    issues = (await client.get(f"{base}/issues", headers=headers)).json()["data"]
    assert sum(i["count"] for i in issues) == 3


async def test_quota_of_zero_means_unlimited_and_settings_are_validated(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    headers = admin_headers(project)
    base = f"/api/v1/projects/{project['id']}/errors"
    assert (
        await client.put(f"{base}/settings", json={"events_per_minute": 0, "events_per_hour": 0}, headers=headers)
    ).status_code == 200
    for _ in range(5):
        assert (await post(client, project, event_envelope(error_event()))).status_code == 200
    bad = await client.put(f"{base}/settings", json={"events_per_minute": -1}, headers=headers)
    assert bad.status_code == 422
