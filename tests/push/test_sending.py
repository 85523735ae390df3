"""Sending through the admin API: targets, payload, templates, idempotency, schedules,
cancellation, and the Expo path end to end (tickets, then receipts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from shipyard.core.context import Context
from shipyard.push.models import messages, sends
from tests.push.conftest import admin, expo_token, register, run_jobs, send
from tests.push.fakes import FakeExpo


async def _statuses(ctx: Context, send_id: int) -> list[str]:
    async with ctx.db.connect() as conn:
        rows = await conn.execute(select(messages.c.status).where(messages.c.send_id == send_id))
        return sorted(r[0] for r in rows)


async def test_send_to_a_user_is_delivered_through_expo_with_receipts(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await register(client, project, expo_token("a1"), user_id="grower-1")
    await register(client, project, expo_token("a2"), user_id="grower-1", platform="android")
    await register(client, project, expo_token("b1"), user_id="someone-else")
    body = {
        "to": {"user_ids": ["grower-1"]},
        "notification": {
            "title": "Water Blue Dream",
            "body": "Your plant needs water today",
            "data": {"plantId": "p-42"},
            "badge": 3,
            "sound": "default",
            "deep_link": "canabro://plants/p-42",
            "image": "https://cdn.example.com/p.jpg",
        },
        "campaign": "care-reminders",
    }
    r = await send(client, project, body)
    assert r.status_code == 202, r.text
    send_id = r.json()["id"]

    async def receipts_settled() -> bool:
        return await _statuses(ctx, send_id) == ["delivered", "delivered"]

    await run_jobs(ctx, until=receipts_settled)
    assert sorted(m["to"] for m in expo.received) == [expo_token("a1"), expo_token("a2")]
    msg = expo.received[0]
    assert msg["title"] == "Water Blue Dream" and msg["badge"] == 3 and msg["sound"] == "default"
    assert msg["data"]["plantId"] == "p-42" and msg["data"]["url"] == "canabro://plants/p-42"
    assert msg["richContent"] == {"image": "https://cdn.example.com/p.jpg"} and msg["mutableContent"] is True
    sid = msg["data"]["_sid"]

    detail = (await admin(client, project, "GET", f"/messages/{sid}")).json()
    events = [h["event"] for h in detail["history"]]
    assert events[0] == "queued" and "sent" in events and "delivered" in events
    # The app reports the open with the id carried in the payload.
    r = await client.post(
        "/push/v1/engagement",
        json={"message_id": sid, "event": "opened"},
        headers={"X-Shipyard-Key": project["public_key"]},
    )
    assert r.status_code == 200
    assert (await admin(client, project, "GET", f"/messages/{sid}")).json()["status"] == "opened"
    found = (await admin(client, project, "GET", "/messages", params={"user_id": "grower-1"})).json()["data"]
    assert len(found) == 2
    summary = (await admin(client, project, "GET", f"/sends/{send_id}")).json()
    assert summary["status"] == "done" and summary["recipients"] == 2


async def test_idempotency_key_never_sends_twice(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await register(client, project, expo_token("i1"), user_id="u")
    body = {"to": {"user_ids": ["u"]}, "notification": {"title": "Hi"}, "idempotency_key": "order-1:u"}
    first = await send(client, project, body)
    again = await send(client, project, body)
    assert first.json()["id"] == again.json()["id"] and again.json()["duplicate"] is True
    header_only = {"to": {"user_ids": ["u"]}, "notification": {"title": "Hi"}}
    h1 = await send(client, project, header_only, **{"Idempotency-Key": "k2"})
    h2 = await send(client, project, header_only, **{"Idempotency-Key": "k2"})
    assert h1.json()["id"] == h2.json()["id"]
    conflict = await send(client, project, {**body, "notification": {"title": "Different"}})
    assert conflict.status_code == 409
    await run_jobs(ctx)
    await run_jobs(ctx)
    assert len(expo.received) == 2  # one per distinct key


async def test_bad_sends_are_refused_clearly(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    cases = [
        ({"to": {}, "notification": {"title": "x"}}, 400, "recipients"),
        ({"to": {"user_ids": ["u"]}}, 400, "title or body"),
        ({"to": {"user_ids": ["u"]}, "notification": {"title": "x", "category": "nope"}}, 400, "unknown category"),
        ({"to": {"user_ids": ["u"]}, "template": "missing"}, 404, "template"),
        (
            {"to": {"user_ids": ["u"]}, "notification": {"title": "x"}, "schedule": {"trigger": "scheduled"}},
            400,
            "scheduled_time",
        ),
        (
            {
                "to": {"user_ids": ["u"]},
                "notification": {"title": "x"},
                "schedule": {
                    "trigger": "recurring",
                    "timezone": "Nowhere/X",
                    "recurring_pattern": {"frequency": "daily", "time": "09:00"},
                },
            },
            400,
            "timezone",
        ),
        (
            {
                "to": {"user_ids": ["u"]},
                "notification": {"title": "x"},
                "schedule": {"trigger": "recurring", "recurring_pattern": {"frequency": "weekly", "time": "09:00"}},
            },
            400,
            "days_of_week",
        ),
        ({"to": {"user_ids": ["u"]}, "notification": {"title": "x", "badge": -1}}, 422, "badge"),
        ({"to": {"segment": {"age": {"between": 3}}}, "notification": {"title": "x"}}, 400, "operators"),
        # Valid JSON that no store can keep: an integer beyond 64 bits in free-form data.
        ({"to": {"user_ids": ["u"]}, "notification": {"title": "x", "data": {"n": 2**70}}}, 400, "cannot be stored"),
    ]
    for body, status, needle in cases:
        r = await send(client, project, body)
        assert r.status_code == status, (body, r.text)
        assert needle in r.text, (needle, r.text)
    r = await client.post(
        f"/api/v1/projects/{project['id']}/push/sends", json={"to": {"all": True}, "notification": {"title": "x"}}
    )
    assert r.status_code == 401
    r = await client.post(
        f"/api/v1/projects/{project['id']}/push/sends",
        json={"to": {"all": True}, "notification": {"title": "x"}},
        headers={"Authorization": f"Bearer {project['public_key']}"},
    )
    assert r.status_code == 403


async def test_templates_per_locale_with_variables(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    r = await admin(client, project, "PUT", "/categories/plant_care", json={"description": "Care reminders"})
    assert r.status_code == 200
    r = await admin(
        client,
        project,
        "PUT",
        "/templates/water",
        json={
            "texts": {
                "en": {"title": "Time to water {plant.name}", "body": "{plant.name} was last watered {days} days ago"},
                "de": {"title": "Zeit, {plant.name} zu gießen", "body": "Zuletzt vor {days} Tagen gegossen"},
            },
            "default_locale": "en",
            "category": "plant_care",
        },
    )
    assert r.status_code == 200, r.text
    await register(client, project, expo_token("de"), user_id="u-de", locale="de-AT")
    await register(client, project, expo_token("fr"), user_id="u-fr", locale="fr-FR")
    r = await send(
        client,
        project,
        {"to": {"user_ids": ["u-de", "u-fr"]}, "template": "water", "variables": {"plant": {"name": "Blue Dream"}}},
    )
    assert r.status_code == 400 and "days" in r.json()["error"]["message"]
    r = await send(
        client,
        project,
        {
            "to": {"user_ids": ["u-de", "u-fr"]},
            "template": "water",
            "variables": {"plant": {"name": "Blue Dream"}, "days": 3},
        },
    )
    assert r.status_code == 202 and r.json()["category"] == "plant_care"
    await run_jobs(ctx)
    by_token = {m["to"]: m for m in expo.received}
    assert by_token[expo_token("de")]["title"] == "Zeit, Blue Dream zu gießen"
    assert by_token[expo_token("fr")]["title"] == "Time to water Blue Dream"  # falls back to the default locale
    assert by_token[expo_token("fr")]["body"] == "Blue Dream was last watered 3 days ago"


async def test_targets_topics_segments_devices_tokens(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    d1 = (await register(client, project, expo_token("s1"), user_id="pro-1", topics=["news"])).json()
    await register(client, project, expo_token("s2"), user_id="free-1")
    await register(client, project, expo_token("s3"), user_id="pro-2")
    await admin(client, project, "PUT", "/users/pro-1", json={"properties": {"plan": "pro", "plants": 12}})
    await admin(client, project, "PUT", "/users/pro-2", json={"properties": {"plan": "pro", "plants": 2}})
    await admin(client, project, "PUT", "/users/free-1", json={"properties": {"plan": "free", "plants": 30}})

    async def targets(to: dict[str, Any]) -> list[str]:
        expo.received.clear()
        r = await send(client, project, {"to": to, "notification": {"title": "t"}})
        assert r.status_code == 202, r.text
        await run_jobs(ctx)
        return sorted(m["to"] for m in expo.received)

    assert await targets({"topics": ["news"]}) == [expo_token("s1")]
    assert await targets({"segment": {"plan": "pro", "plants": {"gte": 10}}}) == [expo_token("s1")]
    assert await targets({"segment": {"plan": ["pro", "free"]}}) == [expo_token(f"s{i}") for i in (1, 2, 3)]
    assert await targets({"device_ids": [d1["id"]], "tokens": [expo_token("s3")]}) == [
        expo_token("s1"),
        expo_token("s3"),
    ]
    assert len(await targets({"all": True})) == 3


async def test_scheduled_send_waits_and_can_be_cancelled(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await register(client, project, expo_token("c1"), user_id="u")
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    body = {
        "to": {"user_ids": ["u"]},
        "notification": {"title": "later"},
        "schedule": {"trigger": "scheduled", "scheduled_time": later},
    }
    keep = (await send(client, project, body)).json()
    drop = (await send(client, project, {**body, "campaign": "other"})).json()
    assert keep["status"] == "scheduled"
    listed = (await admin(client, project, "GET", "/sends", params={"status": "scheduled"})).json()["data"]
    assert {s["id"] for s in listed} == {keep["id"], drop["id"]}
    r = await admin(client, project, "DELETE", f"/sends/{drop['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await admin(client, project, "DELETE", f"/sends/{drop['id']}")).status_code == 409
    await run_jobs(ctx)
    assert expo.received == []  # not due yet
    # Time passes: make the fan-out due now.
    from shipyard.core.models import jobs as jobs_table

    async with ctx.db.transaction() as conn:
        await conn.execute(
            update(jobs_table).where(jobs_table.c.kind == "push.fanout").values(run_at=datetime.now(UTC))
        )
    await run_jobs(ctx)
    assert [m["title"] for m in expo.received] == ["later"]
    async with ctx.db.connect() as conn:
        status = dict((await conn.execute(select(sends.c.id, sends.c.status))).tuples().all())
    assert status == {keep["id"]: "done", drop["id"]: "cancelled"}


async def test_sends_over_the_recipient_limit_store_nothing(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    ctx.settings.push_max_recipients = 1
    for n in (1, 2):
        await register(client, project, expo_token(f"lim{n}"), user_id="many-devices", topics=["news"])
    r = await send(client, project, {"to": {"user_ids": ["many-devices"]}, "notification": {"title": "x"}})
    assert r.status_code == 400 and "2 recipients exceed push_max_recipients (1)" in r.text
    assert (await admin(client, project, "GET", "/sends")).json()["data"] == []  # nothing was accepted
    r = await send(client, project, {"to": {"topics": ["news"]}, "notification": {"title": "x"}})
    assert r.status_code == 202  # topics fan out in the background job, which fails the send
    await run_jobs(ctx)
    failed = (await admin(client, project, "GET", f"/sends/{r.json()['id']}")).json()
    assert failed["status"] == "failed" and "exceed push_max_recipients" in failed["error"]
    assert expo.received == []
