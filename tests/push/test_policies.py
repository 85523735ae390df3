"""Delivery-time decisions, each visible in the message's history: quiet hours defer (not
drop), digests collapse, daily caps suppress, preference changes apply to queued messages,
critical and system categories, and recurring schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from shipyard.core.context import Context
from shipyard.core.models import jobs as jobs_table
from shipyard.push.models import messages, sends
from tests.push.conftest import admin, expo_token, register, run_jobs, send
from tests.push.fakes import FakeExpo


async def time_passes(ctx: Context) -> None:
    """Make everything that is waiting due now (instead of sleeping through it)."""
    now = datetime.now(UTC)
    async with ctx.db.transaction() as conn:
        await conn.execute(
            update(messages).where(messages.c.status.in_(["deferred", "digesting", "scheduled"])).values(due_at=now)
        )
        await conn.execute(update(jobs_table).where(jobs_table.c.status == "queued").values(run_at=now))


async def _history(client: httpx.AsyncClient, project: dict[str, Any], message_id: str) -> list[dict[str, Any]]:
    return (await admin(client, project, "GET", f"/messages/{message_id}")).json()["history"]


async def _messages(ctx: Context) -> list[dict[str, Any]]:
    async with ctx.db.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(messages).order_by(messages.c.created_at))]


def _quiet_now() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=1)).strftime("%H:%M"),
        "timezone": "UTC",
    }


async def test_quiet_hours_defer_to_their_end_and_critical_bypasses(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await admin(client, project, "PUT", "/categories/community", json={})
    await admin(client, project, "PUT", "/categories/security", json={"critical": True})
    await register(client, project, expo_token("q"), user_id="sleeper")
    r = await admin(client, project, "PUT", "/users/sleeper/preferences", json={"quiet_hours": _quiet_now()})
    assert r.status_code == 200 and r.json()["quiet_hours"]["timezone"] == "UTC"
    await send(
        client,
        project,
        {"to": {"user_ids": ["sleeper"]}, "notification": {"title": "New comment", "category": "community"}},
    )
    await send(
        client,
        project,
        {"to": {"user_ids": ["sleeper"]}, "notification": {"title": "New login", "category": "security"}},
    )
    await run_jobs(ctx)
    assert [m["title"] for m in expo.received] == ["New login"]  # critical: not held back
    held = next(m for m in await _messages(ctx) if m["title"] == "New comment")
    assert held["status"] == "deferred" and "quiet hours" in held["reason"]
    assert held["due_at"] > datetime.now(UTC) + timedelta(minutes=50)
    deferred = [h for h in await _history(client, project, held["id"]) if h["event"] == "deferred"]
    assert deferred and deferred[0]["details"]["until"]

    # The night ends: the deferred message goes out (it was not dropped).
    await admin(client, project, "PUT", "/users/sleeper/preferences", json={"quiet_hours": None})
    await time_passes(ctx)
    await run_jobs(ctx)
    assert sorted(m["title"] for m in expo.received) == ["New comment", "New login"]


async def test_preference_change_applies_to_already_queued_messages(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await admin(client, project, "PUT", "/categories/marketing", json={})
    await admin(client, project, "PUT", "/categories/system", json={"critical": True})
    await register(client, project, expo_token("p"), user_id="changer")
    await admin(client, project, "PUT", "/users/changer/preferences", json={"quiet_hours": _quiet_now()})
    for title, category in (("Sale", "marketing"), ("Terms changed", "system")):
        await send(
            client, project, {"to": {"user_ids": ["changer"]}, "notification": {"title": title, "category": category}}
        )
    await run_jobs(ctx)  # the sale waits for the end of the quiet hours; system goes out
    assert [m["title"] for m in expo.received] == ["Terms changed"]
    await admin(client, project, "PUT", "/users/changer/preferences", json={"quiet_hours": None})
    await time_passes(ctx)
    # The user opts out of marketing from the app while the notification is queued.
    r = await client.put(
        "/push/v1/preferences",
        params={"user_id": "changer"},
        json={"categories": {"marketing": False}},
        headers={"X-Shipyard-Key": project["public_key"]},
    )
    assert r.status_code == 200 and r.json()["categories"]["marketing"]["enabled"] is False
    r = await client.put(
        "/push/v1/preferences",
        params={"user_id": "changer"},
        json={"categories": {"system": False}},
        headers={"X-Shipyard-Key": project["public_key"]},
    )
    assert r.status_code == 400  # system notifications cannot be turned off
    await run_jobs(ctx)
    assert [m["title"] for m in expo.received] == ["Terms changed"]
    sale = next(m for m in await _messages(ctx) if m["title"] == "Sale")
    assert sale["status"] == "suppressed" and "turned off 'marketing'" in sale["reason"]
    assert [h["event"] for h in await _history(client, project, sale["id"])][-1] == "suppressed"


async def test_digest_collapses_a_category_into_one_notification(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await admin(
        client,
        project,
        "PUT",
        "/categories/community",
        json={
            "digest_window_seconds": 600,
            "digest_title": "Grow log",
            "digest_body": "{count} new comments on your grow log",
        },
    )
    await register(client, project, expo_token("d"), user_id="author")
    for i in range(5):
        await send(
            client,
            project,
            {"to": {"user_ids": ["author"]}, "notification": {"title": f"Comment {i}", "category": "community"}},
        )
    await run_jobs(ctx)
    assert expo.received == []  # held for the digest window
    rows = await _messages(ctx)
    assert sorted(m["status"] for m in rows) == ["collapsed"] * 4 + ["digesting"]
    await time_passes(ctx)
    await run_jobs(ctx)
    assert [(m["title"], m["body"]) for m in expo.received] == [("Grow log", "5 new comments on your grow log")]
    collapsed = next(m for m in rows if m["status"] == "collapsed")
    assert [h["event"] for h in await _history(client, project, collapsed["id"])] == ["queued", "collapsed"]


async def test_daily_caps_per_user_and_per_category(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await admin(client, project, "PUT", "/categories/tips", json={"daily_cap": 1})
    await register(client, project, expo_token("cap1"), user_id="capped")
    await register(client, project, expo_token("cap2"), user_id="capped")  # two devices, one user
    await admin(client, project, "PUT", "/users/capped/preferences", json={"daily_cap": 2})
    for title, category in (("tip 1", "tips"), ("tip 2", "tips"), ("news 1", None), ("news 2", None)):
        notification = {"title": title, **({"category": category} if category else {})}
        await send(client, project, {"to": {"user_ids": ["capped"]}, "notification": notification})
        await run_jobs(ctx)
    titles = sorted({m["title"] for m in expo.received})
    assert titles == ["news 1", "tip 1"]  # tip 2: category cap; news 2: user cap of 2 reached
    assert len(expo.received) == 4  # both devices got each delivered notification (counted once)
    reasons = {m["title"]: m["reason"] for m in await _messages(ctx) if m["status"] == "suppressed"}
    assert "daily cap of 1 'tips'" in reasons["tip 2"] and "daily cap of 2" in reasons["news 2"]


async def test_denied_permission_and_cancelled_sends(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await register(client, project, expo_token("den"), user_id="denier", permission="denied")
    await send(client, project, {"to": {"user_ids": ["denier"]}, "notification": {"title": "x"}})
    await run_jobs(ctx)
    assert expo.received == []
    (row,) = await _messages(ctx)
    assert row["status"] == "suppressed" and "permission denied" in row["reason"]


async def test_recurring_weekly_in_each_users_timezone_until_the_end_date(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await register(client, project, expo_token("tokyo"), user_id="u-tokyo", timezone="Asia/Tokyo")
    await register(client, project, expo_token("ny"), user_id="u-ny", timezone="America/New_York")
    today = datetime.now(UTC).date()
    end = today + timedelta(days=14)
    body = {
        "to": {"user_ids": ["u-tokyo", "u-ny"]},
        "notification": {"title": "Weekly check"},
        "schedule": {
            "trigger": "recurring",
            "timezone": "user",
            "recurring_pattern": {
                "frequency": "weekly",
                "days_of_week": [0, 3],
                "time": "09:00",
                "end_date": end.isoformat(),
            },
        },
    }
    created = (await send(client, project, body)).json()
    assert created["status"] == "recurring"
    expected = [d for d in (today + timedelta(days=i) for i in range(15)) if d.weekday() in (0, 3)]
    occurrences: list[str] = []
    for _ in range(10):
        await time_passes(ctx)
        await run_jobs(ctx)
        async with ctx.db.connect() as conn:
            status, count = (
                await conn.execute(select(sends.c.status, sends.c.occurrences).where(sends.c.id == created["id"]))
            ).one()
        if status == "done":
            break
    async with ctx.db.connect() as conn:
        rows = (await conn.execute(select(messages.c.occurrence, messages.c.due_at, messages.c.user_id))).all()
    occurrences = sorted({r.occurrence for r in rows})
    # The first occurrence may be today's if 09:00 has not yet come anywhere on Earth.
    assert occurrences == [d.isoformat() for d in expected if d.isoformat() >= occurrences[0]]
    assert status == "done" and count == len(occurrences)
    for r in rows:  # each user at 09:00 on their own clock
        from zoneinfo import ZoneInfo

        tz = ZoneInfo("Asia/Tokyo" if r.user_id == "u-tokyo" else "America/New_York")
        assert r.due_at.astimezone(tz).strftime("%H:%M") == "09:00" or r.due_at <= datetime.now(UTC)


async def test_cancelling_a_recurring_send_stops_future_occurrences(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await register(client, project, expo_token("r"), user_id="r")
    body = {
        "to": {"user_ids": ["r"]},
        "notification": {"title": "Daily"},
        "schedule": {
            "trigger": "recurring",
            "timezone": "Europe/Berlin",
            "recurring_pattern": {"frequency": "daily", "time": "09:00"},
        },
    }
    created = (await send(client, project, body)).json()
    for _ in range(2):  # the fan-out, then the delivery at 09:00 Berlin time
        await time_passes(ctx)
        await run_jobs(ctx)
    assert len(expo.received) == 1
    r = await admin(client, project, "DELETE", f"/sends/{created['id']}")
    assert r.status_code == 200
    await time_passes(ctx)
    await run_jobs(ctx)
    assert len(expo.received) == 1


async def test_hourly_caps_defer_to_the_next_free_slot_and_user_caps_per_category(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await admin(client, project, "PUT", "/categories/community", json={"hourly_cap": 2})
    await admin(client, project, "PUT", "/categories/tips", json={})
    await register(client, project, expo_token("h1"), user_id="busy")
    r = await admin(
        client, project, "PUT", "/users/busy/preferences", json={"hourly_cap": 3, "category_caps": {"tips": 1}}
    )
    assert r.status_code == 200
    assert r.json()["hourly_cap"] == 3 and r.json()["category_caps"] == {"tips": 1}
    for title, category in (
        ("comment 1", "community"),
        ("comment 2", "community"),
        ("comment 3", "community"),  # category's hourly cap of 2: waits
        ("tip 1", "tips"),
        ("tip 2", "tips"),  # the user's own cap of 1 tip a day: suppressed
        ("news 1", None),  # the user's hourly cap of 3 (2 comments + tip 1): waits
    ):
        notification = {"title": title, **({"category": category} if category else {})}
        await send(client, project, {"to": {"user_ids": ["busy"]}, "notification": notification})
        await run_jobs(ctx)
    assert [m["title"] for m in expo.received] == ["comment 1", "comment 2", "tip 1"]
    rows = {m["title"]: m for m in await _messages(ctx)}
    first_sent = rows["comment 1"]["sent_at"]
    assert rows["comment 3"]["status"] == "deferred"
    assert rows["comment 3"]["reason"] == "hourly cap of 2 'community' notifications reached for this user"
    assert rows["comment 3"]["due_at"] == first_sent + timedelta(hours=1)  # when comment 1 leaves the window
    assert rows["news 1"]["status"] == "deferred" and rows["news 1"]["reason"].startswith("hourly cap of 3")
    assert rows["tip 2"]["status"] == "suppressed"
    assert rows["tip 2"]["reason"] == "the user's own daily cap of 1 'tips' notifications reached"
    history = await _history(client, project, rows["comment 3"]["id"])
    assert [h["event"] for h in history] == ["queued", "deferred"]
    assert history[1]["details"]["until"] == (first_sent + timedelta(hours=1)).isoformat()

    # An hour later the window has room again: the deferred notifications go out.
    async with ctx.db.transaction() as conn:
        await conn.execute(
            update(messages).where(messages.c.sent_at.is_not(None)).values(sent_at=first_sent - timedelta(hours=1))
        )
    await time_passes(ctx)
    await run_jobs(ctx)
    assert sorted(m["title"] for m in expo.received[3:]) == ["comment 3", "news 1"]


async def test_cap_preferences_are_validated(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    await admin(client, project, "PUT", "/categories/tips", json={})
    for body, expected in (
        ({"hourly_cap": 0}, "hourly_cap"),
        ({"category_caps": {"nope": 1}}, "unknown category 'nope'"),
        ({"category_caps": {"tips": -1}}, "category_caps.tips"),
    ):
        r = await admin(client, project, "PUT", "/users/u1/preferences", json=body)
        assert r.status_code in (400, 422), body  # schema errors are 422, the rest 400
        assert expected in r.text
    r = await admin(client, project, "PUT", "/users/u1/preferences", json={"category_caps": {"tips": 2}})
    assert r.json()["category_caps"] == {"tips": 2}
    r = await admin(client, project, "PUT", "/users/u1/preferences", json={"category_caps": {"tips": None}})
    assert r.json()["category_caps"] == {}
    r = await admin(client, project, "PUT", "/categories/tips", json={"hourly_cap": 0})
    assert r.status_code == 422 and "hourly_cap" in r.text
