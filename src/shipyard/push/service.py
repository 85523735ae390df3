"""The push feature's service surface for other features and the privacy hooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.http import BreakerPolicy, outbound
from shipyard.push.models import devices, message_events, messages, user_categories, users


def configure_breaker(ctx: Context) -> None:
    """Provider circuits follow the push settings (seed: 5 failures in 60 s opens it)."""
    settings = ctx.settings
    outbound(ctx).breaker.policies["push"] = BreakerPolicy(
        failure_threshold=settings.push_circuit_failures,
        window=settings.push_circuit_window_seconds,
        cooldown=settings.push_circuit_cooldown_seconds,
    )


async def export_user(conn: AsyncConnection, project_id: int, user_id: str) -> dict[str, Any]:
    """Everything push stores about an app user (GDPR/CCPA access request)."""
    user = (
        await conn.execute(select(users).where(users.c.project_id == project_id, users.c.user_id == user_id))
    ).first()
    prefs = await conn.execute(
        select(user_categories.c.category, user_categories.c.enabled).where(
            user_categories.c.project_id == project_id, user_categories.c.user_id == user_id
        )
    )
    device_rows = await conn.execute(
        select(devices).where(devices.c.project_id == project_id, devices.c.user_id == user_id)
    )
    message_rows = await conn.execute(
        select(messages).where(messages.c.project_id == project_id, messages.c.user_id == user_id)
    )
    return {
        "user": dict(user._mapping) if user else None,
        "category_preferences": {c: e for c, e in prefs},
        "devices": [dict(r._mapping) for r in device_rows],
        "messages": [dict(r._mapping) for r in message_rows],
    }


async def erase_user(conn: AsyncConnection, project_id: int, user_id: str) -> int:
    """Delete the user's push data: profile, preferences, devices (and their messages)."""
    erased = 0
    mine = select(messages.c.id).where(messages.c.project_id == project_id, messages.c.user_id == user_id)
    erased += (await conn.execute(delete(message_events).where(message_events.c.message_id.in_(mine)))).rowcount or 0
    erased += (
        await conn.execute(delete(messages).where(messages.c.project_id == project_id, messages.c.user_id == user_id))
    ).rowcount or 0
    erased += (
        await conn.execute(delete(devices).where(devices.c.project_id == project_id, devices.c.user_id == user_id))
    ).rowcount or 0
    erased += (
        await conn.execute(
            delete(user_categories).where(
                user_categories.c.project_id == project_id, user_categories.c.user_id == user_id
            )
        )
    ).rowcount or 0
    erased += (
        await conn.execute(delete(users).where(users.c.project_id == project_id, users.c.user_id == user_id))
    ).rowcount or 0
    return int(erased)


async def notification_open_stats(ctx: Context, project_id: int, since: datetime) -> dict[str, Any]:
    """Read-only: push messages sent since ``since`` and how many of them were opened.

    For the analytics overview; counts messages created since ``since`` (index on
    project and creation time), with the open rate over those delivered (or sent).
    """
    m = messages.c
    stmt = select(func.count(m.sent_at), func.count(m.delivered_at), func.count(m.opened_at)).where(
        m.project_id == project_id, m.created_at >= since
    )
    async with ctx.db.connect() as conn:
        sent, delivered, opened = (int(v or 0) for v in (await conn.execute(stmt)).one())
    base = delivered or sent
    return {
        "sent": sent,
        "delivered": delivered,
        "opened": opened,
        "open_rate": round(opened / base, 4) if base else None,
    }
