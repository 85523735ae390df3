"""The real `segment-analytics-python` client (`host=` Shipyard, the project's write key)
against a live `shipyard serve`: events, identities and a funnel built from them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from segment.analytics import Client

from tests.conftest import LiveServer


def _client(server: LiveServer, write_key: str, errors: list[Any], **options: Any) -> Client:
    return Client(
        write_key,
        host=server.url,
        on_error=lambda error, batch: errors.append((error, len(batch))),
        max_retries=1,
        upload_size=50,
        **options,
    )


def test_python_client_events_identities_and_funnel(live_server: LiveServer) -> None:
    creds = live_server.creds
    admin = httpx.Client(
        base_url=f"{live_server.url}/api/v1/projects/{creds['project_slug']}/analytics",
        headers={"Authorization": f"Bearer {creds['secret_key']}"},
        timeout=30,
    )
    errors: list[Any] = []
    client = _client(live_server, creds["write_key"], errors, gzip=True)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    context = {"app": {"name": "CanaBro", "version": "2.4.1"}, "os": {"name": "iOS", "version": "17.4"}}
    # Three growers: one converts fully (anonymous before login), one stops after step 2,
    # one only opens the app.
    client.track(anonymous_id="device-1", event="app_opened", timestamp=start, context=context)
    client.identify(
        user_id="grower-1",
        anonymous_id="device-1",
        traits={"growingExperience": "beginner", "subscriptionTier": "pro", "plantCount": 2},
        context=context,
        timestamp=start + timedelta(minutes=1),
    )
    client.track(
        user_id="grower-1",
        event="plant_created",
        properties={"plant_id": "p1", "strain": "Blue Dream"},
        timestamp=start + timedelta(minutes=5),
    )
    client.track(
        user_id="grower-1",
        event="care_task_completed",
        properties={"plant_id": "p1", "task_type": "watering"},
        timestamp=start + timedelta(hours=2),
    )
    client.screen(user_id="grower-1", name="PlantDetail", timestamp=start + timedelta(hours=2, minutes=1))
    client.track(user_id="grower-2", event="app_opened", timestamp=start)
    client.track(user_id="grower-2", event="plant_created", properties={"plant_id": "p2"}, timestamp=start)
    client.track(user_id="grower-3", event="app_opened", timestamp=start + timedelta(days=1))
    client.alias(previous_id="grower-3", user_id="grower-3-new", timestamp=start + timedelta(days=1))
    client.flush()
    client.shutdown()
    assert errors == []

    events = admin.get("/events", params={"limit": 100}).json()["data"]
    assert sorted(e["event"] for e in events) == sorted(
        [
            "app_opened",
            "$identify",
            "plant_created",
            "care_task_completed",
            "$screen",
            "app_opened",
            "plant_created",
            "app_opened",
            "$alias",
        ]
    )
    created = next(e for e in events if e["event"] == "plant_created" and e["user_id"] == "grower-1")
    assert created["properties"] == {"plant_id": "p1", "strain": "Blue Dream"}
    assert created["context"]["library"]["name"] == "analytics-python"
    # Corrected for clock skew from sentAt (receivedAt - (sentAt - timestamp)): off by the upload latency only.
    assert abs(created["ts_ms"] - int((start + timedelta(minutes=5)).timestamp() * 1000)) < 5_000

    # The anonymous app open joined grower-1's history; traits and device came from identify.
    profile = admin.get("/users/profile", params={"user_id": "device-1"}).json()
    assert profile["user_key"] == "grower-1"
    assert profile["aliases"] == ["device-1"]
    assert profile["traits"] == {"growingExperience": "beginner", "subscriptionTier": "pro", "plantCount": 2}
    assert profile["device"]["os"] == {"name": "iOS", "version": "17.4"}
    assert profile["events"] == 5
    assert admin.get("/users/profile", params={"user_id": "grower-3"}).json()["user_key"] == "grower-3-new"

    funnel = admin.post(
        "/insights/funnel",
        json={
            "date_from": (date.today() - timedelta(days=7)).isoformat(),
            "date_to": date.today().isoformat(),
            "steps": [{"event": "app_opened"}, {"event": "plant_created"}, {"event": "care_task_completed"}],
            "window_value": 1,
            "window_unit": "day",
        },
    )
    assert funnel.status_code == 200, funnel.text
    body = funnel.json()
    assert [s["count"] for s in body["steps"]] == [3, 2, 1]
    assert abs(body["steps"][2]["median_seconds_from_previous"] - 115 * 60) < 5


def test_python_client_sees_a_wrong_write_key_as_an_error(live_server: LiveServer) -> None:
    errors: list[Any] = []
    client = _client(live_server, "not-a-write-key", errors)
    client.track(user_id="u1", event="app_opened")
    client.flush()
    client.shutdown()
    assert len(errors) == 1
    error, size = errors[0]
    assert size == 1
    assert error.status == 401
    assert error.code == "invalid_write_key"
