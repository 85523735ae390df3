"""The Segment HTTP Tracking API: auth, endpoints, de-duplication, clock skew, bodies, limits."""

from __future__ import annotations

import gzip
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from shipyard.analytics.models import ingest_counters
from shipyard.core.context import Context
from tests.analytics.helpers import basic, iso, stored, track


async def test_batch_with_basic_auth_is_stored(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    batch = [
        track("plant_created", properties={"plant_id": "p1", "strain": "Blue Dream"}),
        {"type": "screen", "name": "Garden", "userId": "u1", "messageId": "m-screen", "properties": {"tab": 1}},
    ]
    r = await client.post("/v1/batch", json={"batch": batch}, headers=basic(project["write_key"]))
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True
    rows = await stored(ctx, project["id"])
    assert [(row.type, row.event, row.screen, row.user_key) for row in rows] == [
        ("track", "plant_created", None, "u1"),
        ("screen", "$screen", "Garden", "u1"),
    ]
    assert rows[0].properties == {"plant_id": "p1", "strain": "Blue Dream"}
    assert rows[1].message_id == "m-screen"


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b", "/v1/import"])
async def test_write_key_in_body_on_every_batch_path(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], path: str
) -> None:
    r = await client.post(path, json={"batch": [track("post_liked")], "writeKey": project["write_key"]})
    assert r.status_code == 200, r.text
    assert [row.event for row in await stored(ctx, project["id"])] == ["post_liked"]


async def test_single_message_endpoints(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    headers = basic(project["write_key"])
    calls = {
        "identify": {"userId": "u9", "traits": {"plan": "pro"}},
        "track": {"userId": "u9", "event": "strain_viewed", "properties": {"strain_id": "s1"}},
        "screen": {"userId": "u9", "name": "Strain"},
        "page": {"userId": "u9", "name": "Pricing"},
        "group": {"userId": "u9", "groupId": "g1", "traits": {"name": "Grow club"}},
        "alias": {"userId": "u9", "previousId": "old-u9"},
    }
    for kind, body in calls.items():
        r = await client.post(f"/v1/{kind}", json=body, headers=headers)
        assert r.status_code == 200, (kind, r.text)
    rows = await stored(ctx, project["id"])
    assert [row.type for row in rows] == list(calls)
    assert [row.event for row in rows] == ["$identify", "strain_viewed", "$screen", "$pageview", "$group", "$alias"]
    assert rows[3].screen == "Pricing"


async def test_missing_and_wrong_write_keys_answer_401_in_segment_shape(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    r = await client.post("/v1/batch", json={"batch": [track("x")]})
    assert r.status_code == 401
    assert r.json()["code"] == "missing_write_key"
    assert r.json()["error"]["code"] == "missing_write_key"
    r = await client.post("/v1/batch", json={"batch": [track("x")]}, headers=basic("pk_nope"))
    assert r.status_code == 401
    assert r.json()["message"] == "unknown or revoked write key"
    r = await client.post("/v1/batch", json={"batch": [track("x")]}, headers={"Authorization": "Basic !!!"})
    assert r.status_code == 401


async def test_message_id_deduplicates_per_project(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    batch = [track("post_created", messageId="dup-1"), track("post_created", messageId="dup-2")]
    headers = basic(project["write_key"])
    assert (await client.post("/v1/batch", json={"batch": batch}, headers=headers)).status_code == 200
    # The SDK retries after a timeout: same messageIds again, plus one new message.
    r = await client.post("/v1/batch", json={"batch": [*batch, track("post_created")]}, headers=headers)
    assert r.status_code == 200
    assert r.json() == {"success": True}  # duplicates are dropped (and counted) when loaded
    assert len(await stored(ctx, project["id"])) == 3
    async with ctx.db.connect() as conn:
        counted = (
            await conn.execute(
                select(ingest_counters.c.count).where(
                    ingest_counters.c.project_id == project["id"], ingest_counters.c.outcome == "duplicate"
                )
            )
        ).scalar()
    assert counted == 2


async def test_clock_skew_is_corrected_from_sent_at(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    # The device clock is 3 hours fast; the event happened 5 minutes before the upload.
    device_now = datetime.now(UTC) + timedelta(hours=3)
    message = track("calendar_viewed", timestamp=iso(device_now - timedelta(minutes=5)))
    before = datetime.now(UTC)
    r = await client.post(
        "/v1/batch", json={"batch": [message], "sentAt": iso(device_now)}, headers=basic(project["write_key"])
    )
    after = datetime.now(UTC)
    assert r.status_code == 200
    (row,) = await stored(ctx, project["id"])
    expected_low = (before - timedelta(minutes=5)).timestamp() * 1000 - 5
    expected_high = (after - timedelta(minutes=5)).timestamp() * 1000 + 5
    assert expected_low <= row.ts_ms <= expected_high
    # Without sentAt the timestamp is taken as sent (historical imports).
    old = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    r = await client.post(
        "/v1/import", json={"batch": [track("x", timestamp=iso(old))]}, headers=basic(project["write_key"])
    )
    assert r.status_code == 200
    assert (await stored(ctx, project["id"]))[-1].ts_ms == int(old.timestamp() * 1000)


async def test_text_plain_and_gzip_bodies(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    body = orjson.dumps({"batch": [track("post_liked")], "writeKey": project["write_key"]})
    r = await client.post("/v1/b", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/batch",
        content=gzip.compress(orjson.dumps({"batch": [track("post_liked")]})),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json", **basic(project["write_key"])},
    )
    assert r.status_code == 200, r.text
    assert len(await stored(ctx, project["id"])) == 2


async def test_size_limits_answer_400_with_a_message(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    headers = basic(project["write_key"])
    big = track("plant_created", properties={"notes": "x" * 33_000})
    r = await client.post("/v1/track", json=big, headers=headers)
    assert r.status_code == 400
    assert "larger than 32768 bytes" in r.json()["message"]
    r = await client.post("/v1/batch", json={"batch": [track("ok"), big]}, headers=headers)
    assert r.status_code == 200  # the good message is kept, the bad one is reported
    assert r.json()["rejected"][0]["code"] == "message_too_large"
    huge = {"batch": [track("x", properties={"n": "y" * 30_000}) for _ in range(20)]}
    r = await client.post("/v1/batch", json=huge, headers=headers)
    assert r.status_code == 400
    assert "512000 bytes" in r.json()["message"]
    bomb = gzip.compress(b'{"batch": [' + b" " * 2_000_000 + b"]}")
    r = await client.post("/v1/batch", content=bomb, headers={"Content-Encoding": "gzip", **headers})
    assert r.status_code == 400
    assert r.json()["code"] == "payload_too_large"


async def test_bad_input_is_a_clear_400(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    headers = basic(project["write_key"])
    cases = [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"batch": {"a": 1}}', "invalid_batch"),
        (b'{"batch": [{"type": "track", "event": "x"}]}', "no_user_anon_id"),
        (b'{"batch": [{"type": "bogus", "userId": "u"}]}', "invalid_type"),
        (b'{"batch": [{"type": "track", "userId": "u"}]}', "missing_event"),
        (b'{"batch": [{"type": "track", "userId": "u", "event": "x", "timestamp": "yesterday"}]}', "invalid_timestamp"),
        (b'{"batch": [{"type": "alias", "userId": "u"}]}', "missing_previousId"),
    ]
    for body, code in cases:
        r = await client.post("/v1/batch", content=body, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 400, body
        assert r.json()["code"] == code, (body, r.json())
    r = await client.post("/v1/track", json={"event": "x"}, headers=headers)
    assert r.status_code == 400
    assert r.json()["message"] == "every message needs a userId or an anonymousId"
    too_many = {"batch": [track("x") for _ in range(2501)]}
    r = await client.post("/v1/batch", json=too_many, headers=headers)
    assert r.status_code == 400
    assert await stored(ctx, project["id"]) == []


async def test_partially_invalid_batch_keeps_the_good_messages(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    r = await client.post(
        "/v1/batch",
        json={"batch": [track("good"), {"type": "track", "event": "bad", "messageId": "m-bad"}]},
        headers=basic(project["write_key"]),
    )
    assert r.status_code == 200
    assert r.json()["rejected"] == [
        {
            "index": 1,
            "messageId": "m-bad",
            "code": "no_user_anon_id",
            "message": "every message needs a userId or an anonymousId",
        }
    ]
    assert r.json()["not_stored"] == {"invalid": 1}
    assert [row.event for row in await stored(ctx, project["id"])] == ["good"]


async def test_batch_context_is_merged_and_ip_truncated(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    body = {
        "batch": [track("x", context={"os": {"name": "iOS"}, "ip": "203.0.113.77", "traits": {"email": "a@b.c"}})],
        "context": {"app": {"version": "1.2.0"}, "os": {"name": "Android"}},
    }
    assert (await client.post("/v1/batch", json=body, headers=basic(project["write_key"]))).status_code == 200
    (row,) = await stored(ctx, project["id"])
    assert row.context == {"app": {"version": "1.2.0"}, "os": {"name": "iOS"}}  # traits and ip are not kept here
    assert row.ip == "203.0.113.0"


async def test_settings_endpoint_points_the_sdk_here(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    for path in (f"/v1/projects/{project['write_key']}/settings", f"/v1/{project['write_key']}/settings"):
        r = await client.get(path)
        assert r.status_code == 200
        segment = r.json()["integrations"]["Segment.io"]
        assert segment["apiKey"] == project["write_key"]
        assert segment["apiHost"] == "testserver/v1"
        assert r.json()["plan"]["track"]["__default"]["enabled"] is True
    r = await client.get("/v1/projects/pk_unknown/settings")
    assert r.status_code == 404


async def test_cors_preflight_and_headers(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    r = await client.options(
        "/v1/batch",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = await client.post(
        "/v1/batch",
        json={"batch": [track("x")]},
        headers={"Origin": "https://app.example", **basic(project["write_key"])},
    )
    assert r.headers["access-control-allow-origin"] == "*"


async def test_rate_limit_answers_429_with_retry_after(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    ctx.settings.analytics_rate_limit = "2/minute"
    headers = basic(project["write_key"])
    statuses = [(await client.post("/v1/track", json=track("x"), headers=headers)) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["retry-after"]) >= 1
    assert "x-ratelimit-reset" in statuses[2].headers
    assert statuses[2].json()["code"] == "rate_limited"


async def test_numbers_as_ids_and_missing_message_id(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    r = await client.post(
        "/v1/track",
        json={"userId": 42, "event": "x", "anonymousId": str(uuid.uuid4())},
        headers=basic(project["write_key"]),
    )
    assert r.status_code == 200
    (row,) = await stored(ctx, project["id"])
    assert row.user_key == "42"
    assert row.message_id.startswith("srv-")
