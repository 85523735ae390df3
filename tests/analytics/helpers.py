"""Helpers shared by the analytics tests."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from shipyard.analytics import landing
from shipyard.analytics.models import events
from shipyard.core.context import Context


def basic(write_key: str) -> dict[str, str]:
    """HTTP Basic with the write key as username and an empty password, as the SDKs send it."""
    return {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track(event: str, user_id: str | None = "u1", *, anonymous_id: str | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": event, "messageId": str(uuid.uuid4())}
    if user_id is not None:
        message["userId"] = user_id
    if anonymous_id is not None:
        message["anonymousId"] = anonymous_id
    message.update(extra)
    return message


def at(days: float = 0, hours: float = 0, base: datetime | None = None) -> str:
    start = base or datetime.now(UTC) - timedelta(days=10)
    return iso(start + timedelta(days=days, hours=hours))


async def stored(ctx: Context, project_id: int) -> list[Any]:
    """The project's events, after loading what the landing table holds (as every read does)."""
    await landing.make_visible(ctx)
    async with ctx.db.connect() as conn:
        rows = await conn.execute(select(events).where(events.c.project_id == project_id).order_by(events.c.id))
        return list(rows)


async def insert(ctx: Context, project_id: int, rows: list[tuple[Any, ...]]) -> None:
    """Store events directly: (user, event, ts_ms[, properties[, screen[, session_id]]])."""
    import orjson

    from shipyard.analytics.ingest import insert_event_rows

    tuples = []
    for row in rows:
        user, event, ts_ms = row[0], row[1], row[2]
        properties = row[3] if len(row) > 3 else {}
        screen = row[4] if len(row) > 4 else None
        session_id = row[5] if len(row) > 5 else None
        kind = "screen" if event == "$screen" else "track"
        tuples.append(
            (
                project_id,
                uuid.uuid4().hex,
                kind,
                event,
                screen,
                user,
                user,
                None,
                ts_ms,
                ts_ms,
                session_id,
                orjson.dumps(properties).decode(),
                "{}",
                None,
            )
        )
    async with ctx.db.transaction() as conn:
        await insert_event_rows(conn, tuples)
