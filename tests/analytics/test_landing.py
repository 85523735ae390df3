"""The landing table: an acknowledged message is durable there, reaches the events table by
itself, is visible to the next read, lands under the user its anonymous id was linked to
in the meantime, and survives the process being killed — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from shipyard.analytics import landing, rollups
from shipyard.analytics.models import events, incoming
from shipyard.app import create_app
from shipyard.core.context import Context
from tests.analytics.helpers import basic, track
from tests.conftest import LiveServer


async def _count(ctx: Context, table: Any, project_id: int) -> int:
    async with ctx.db.connect() as conn:
        query = select(func.count()).select_from(table).where(table.c.project_id == project_id)
        return int((await conn.execute(query)).scalar_one())


async def _count_when(ctx: Context, table: Any, project_id: int, expected: int, seconds: float = 10) -> int:
    """The count once it reaches ``expected``, or whatever it is after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        count = await _count(ctx, table, project_id)
        if count >= expected:
            return count
        await asyncio.sleep(0.05)
    return await _count(ctx, table, project_id)


def _row(project_id: int, user_key: str, *, anonymous_id: str | None = None, message_id: str = "") -> tuple[Any, ...]:
    now = int(time.time() * 1000)
    user_id = None if anonymous_id else user_key
    return (
        project_id,
        message_id or uuid.uuid4().hex,
        "track",
        "plant_created",
        None,
        user_key,
        user_id,
        anonymous_id,
        now,
        now,
        None,
        "{}",
        "{}",
        None,
    )


async def test_acknowledged_messages_reach_the_events_table_without_any_read(
    any_client: httpx.AsyncClient, any_ctx: Context, any_project: dict[str, Any]
) -> None:
    batch = [track("plant_created", f"u{i}") for i in range(30)]
    r = await any_client.post("/v1/batch", json={"batch": batch}, headers=basic(any_project["write_key"]))
    assert r.status_code == 200
    assert await _count_when(any_ctx, events, any_project["id"], 30) == 30
    assert await _count(any_ctx, incoming, any_project["id"]) == 0


async def test_a_query_right_after_the_answer_sees_the_messages(
    any_client: httpx.AsyncClient, any_ctx: Context, any_project: dict[str, Any]
) -> None:
    headers = basic(any_project["write_key"])
    admin = {"Authorization": f"Bearer {any_project['secret_key']}"}
    for round_ in range(3):
        batch = [track("post_created", f"u{round_}-{i}") for i in range(5)]
        assert (await any_client.post("/v1/batch", json={"batch": batch}, headers=headers)).status_code == 200
        r = await any_client.post(
            f"/api/v1/projects/{any_project['id']}/analytics/insights/top-events", json={}, headers=admin
        )
        assert r.status_code == 200, r.text
        assert r.json()["events"][0] == {"event": "post_created", "count": 5 * (round_ + 1), "users": 5 * (round_ + 1)}


async def test_a_message_staged_before_its_anonymous_id_was_linked_lands_under_the_user(
    any_client: httpx.AsyncClient, any_ctx: Context, any_project: dict[str, Any]
) -> None:
    project_id = any_project["id"]
    # An anonymous screen view still in the landing table when the user logs in…
    async with any_ctx.db.transaction() as conn:
        await landing.stage(conn, [_row(project_id, "anon-7", anonymous_id="anon-7")])
    login = {"type": "identify", "userId": "user-7", "anonymousId": "anon-7", "traits": {"plan": "pro"}}
    r = await any_client.post("/v1/batch", json={"batch": [login]}, headers=basic(any_project["write_key"]))
    assert r.status_code == 200
    await landing.loader(any_ctx).drain(everything=True)
    async with any_ctx.db.connect() as conn:
        keys = {
            r.user_key for r in await conn.execute(select(events.c.user_key).where(events.c.project_id == project_id))
        }
    # …is stored under the user, like the events the merge rewrote.
    assert keys == {"user-7"}


async def test_rows_a_stopped_process_left_staged_are_loaded_by_the_rollup_job(
    any_ctx: Context, any_project: dict[str, Any]
) -> None:
    project_id = any_project["id"]
    rows = [_row(project_id, f"u{i}") for i in range(25)]
    rows.append(_row(project_id, "u0", message_id=rows[0][1]))  # a retried message, staged twice
    async with any_ctx.db.transaction() as conn:
        await landing.stage(conn, rows)
    # This process staged nothing itself: a plain read-side drain has nothing to do…
    landing.loader(any_ctx).pending = 0
    assert await landing.loader(any_ctx).drain() == 0
    # …and the minute's rollup job loads what is there, once per messageId.
    await rollups.run_rollup(any_ctx)
    assert await _count(any_ctx, events, project_id) == 25
    assert await _count(any_ctx, incoming, project_id) == 0


async def test_a_new_process_loads_what_the_previous_one_left_staged(
    any_ctx: Context, any_project: dict[str, Any]
) -> None:
    project_id = any_project["id"]
    async with any_ctx.db.transaction() as conn:
        await landing.stage(conn, [_row(project_id, f"u{i}") for i in range(12)])
    application = create_app(ctx=any_ctx)
    async with application.router.lifespan_context(application):
        assert await _count_when(any_ctx, events, project_id, 12) == 12


def test_sigkill_during_a_flood_loses_no_acknowledged_message(tmp_path: Path) -> None:
    server = LiveServer(
        tmp_path / "live",
        {
            "SHIPYARD_SECRET_KEY": "live-" + uuid.uuid4().hex,
            "SHIPYARD_ANALYTICS_RATE_LIMIT": "1000000/minute",
            "SHIPYARD_RATE_LIMIT_PER_IP": "1000000/minute",
            "SHIPYARD_RATE_LIMIT_PER_KEY": "1000000/minute",
        },
    )
    server.data_dir.mkdir(parents=True)
    creds = server.init()
    server.start()
    acknowledged: list[str] = []
    stop = threading.Event()

    async def sender(n: int) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not stop.is_set():
                batch = [track("care_task_completed", f"u{n}-{i}") for i in range(50)]
                try:
                    r = await client.post(
                        f"{server.url}/v1/batch", json={"batch": batch}, headers=basic(creds["write_key"])
                    )
                except httpx.HTTPError:
                    continue  # the server is gone: never acknowledged
                if r.status_code == 200:
                    acknowledged.extend(m["messageId"] for m in batch)

    thread = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(_all(sender, 8), 120)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged) < 3000 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill(signal.SIGKILL)  # mid-flood: requests in flight, a load likely under way
        stop.set()
        thread.join(timeout=30)
        assert len(acknowledged) >= 3000
        server.start()  # its loader takes over what the killed process left staged
        deadline = time.monotonic() + 60
        while _left_staged(server.data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop()
        with sqlite3.connect(server.data_dir / "shipyard.db") as db:
            kept = {row[0] for row in db.execute("SELECT message_id FROM analytics_events")}
            assert db.execute("SELECT count(*) FROM analytics_incoming").fetchone()[0] == 0
        missing = set(acknowledged) - kept
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged messages are missing"
    finally:
        stop.set()
        thread.join(timeout=30)
        server.stop()


async def _all(sender: Any, count: int) -> None:
    await asyncio.gather(*(sender(n) for n in range(count)))


def _left_staged(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "shipyard.db", timeout=30) as db:
        return int(db.execute("SELECT count(*) FROM analytics_incoming").fetchone()[0])
