"""Per-message status and history (seed NotificationLog), and opens reported by the app."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.db import utcnow
from shipyard.core.errors import NotFound
from shipyard.push.models import devices, message_events, messages

VIEW_KEYS = (
    "id",
    "send_id",
    "occurrence",
    "device_id",
    "user_id",
    "provider",
    "category",
    "campaign",
    "template",
    "title",
    "body",
    "status",
    "reason",
    "due_at",
    "digest_count",
    "digest_of",
    "ticket_id",
    "attempts",
    "created_at",
    "sent_at",
    "delivered_at",
    "failed_at",
    "opened_at",
)


def message_view(m: dict[str, Any]) -> dict[str, Any]:
    view = {k: m.get(k) for k in VIEW_KEYS}
    view["deep_link"] = (m.get("payload") or {}).get("deep_link")
    return view


async def status_counts(conn: AsyncConnection, send_id: int) -> dict[str, int]:
    rows = await conn.execute(
        select(messages.c.status, func.count()).where(messages.c.send_id == send_id).group_by(messages.c.status)
    )
    return {s: n for s, n in rows}


async def message_with_history(conn: AsyncConnection, project_id: int, message_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(select(messages).where(messages.c.project_id == project_id, messages.c.id == message_id))
    ).first()
    if row is None:
        raise NotFound("message")
    m = dict(row._mapping)
    timeline: list[dict[str, Any]] = [{"ts": m["created_at"], "event": "queued", "details": {}}]
    for stamp, event in (("sent_at", "sent"), ("delivered_at", "delivered"), ("opened_at", "opened")):
        if m[stamp] is not None:
            timeline.append({"ts": m[stamp], "event": event, "details": {}})
    for e in await conn.execute(
        select(message_events).where(message_events.c.message_id == message_id).order_by(message_events.c.id)
    ):
        if e.event in ("delivered", "opened") and any(t["event"] == e.event for t in timeline):
            continue
        timeline.append({"ts": e.ts, "event": e.event, "details": e.details})
    timeline.sort(key=lambda t: t["ts"])
    return {**message_view(m), "payload": m["payload"], "history": timeline}


async def record_engagement(conn: AsyncConnection, project_id: int, message_id: str, event: str) -> dict[str, Any]:
    """The app reports a notification as delivered (received on the device) or opened."""
    row = (
        await conn.execute(
            select(messages.c.id, messages.c.status, messages.c.device_id, messages.c.sent_at).where(
                messages.c.project_id == project_id, messages.c.id == message_id
            )
        )
    ).first()
    if row is None:
        raise NotFound("message")
    now = utcnow()
    values: dict[str, Any] = {}
    if event == "opened":
        values = {"status": "opened", "opened_at": func.coalesce(messages.c.opened_at, now)}
        if row.status == "sent":
            values["delivered_at"] = now  # an opened notification was delivered
    elif row.status == "sent":
        values = {"status": "delivered", "delivered_at": now}
    if values:
        await conn.execute(update(messages).where(messages.c.id == message_id).values(**values))
    await conn.execute(
        message_events.insert().values(
            message_id=message_id, project_id=project_id, ts=now, event=event, details={"reported_by": "app"}
        )
    )
    # A device that reports engagement is alive: keep it away from stale pruning.
    await conn.execute(update(devices).where(devices.c.id == row.device_id).values(last_seen_at=now))
    return {"id": message_id, "event": event}
