"""Analytics domain services other features and the API call: project settings, user
profiles, and the data-subject hooks (``export_user`` / ``erase_user``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics import session_rollup
from shipyard.analytics.config import AnalyticsConfig
from shipyard.analytics.consent import consent_history_of, current_consent, has_consent
from shipyard.analytics.identity import resolve
from shipyard.analytics.models import (
    aliases,
    consent_history,
    consents,
    daily_counts,
    daily_users,
    events,
    group_members,
    suppressions,
    users,
)
from shipyard.analytics.rollups import watermark
from shipyard.analytics.sqlparts import day_of
from shipyard.core import projects
from shipyard.core.context import Context
from shipyard.core.errors import BadRequest, NotFound

__all__ = [
    "canonical_user",
    "erase_user",
    "export_user",
    "get_config",
    "has_consent",
    "update_config",
    "user_profile",
]


# --- per-project settings ----------------------------------------------------------------------


async def get_config(conn: AsyncConnection, project_id: int) -> AnalyticsConfig:
    project = await projects.get_project(conn, project_id)
    try:
        return AnalyticsConfig.model_validate(project.settings.get("analytics") or {})
    except ValueError:
        return AnalyticsConfig()


async def update_config(
    conn: AsyncConnection, ctx: Context, project_id: int, changes: dict[str, Any]
) -> tuple[AnalyticsConfig, dict[str, Any]]:
    """Validate and store changes; returns (new config, {field: [old, new]} actually changed)."""
    current = await get_config(conn, project_id)
    try:
        updated = AnalyticsConfig.model_validate({**current.model_dump(), **changes})
    except ValueError as exc:
        raise BadRequest(f"invalid analytics settings: {exc}") from None
    diff = {
        name: [getattr(current, name), getattr(updated, name)]
        for name in changes
        if getattr(current, name) != getattr(updated, name)
    }
    await projects.update_settings(conn, project_id, {"analytics": updated.model_dump()})
    # Ingest caches projects for a few seconds; this process sees the change at once.
    ctx.extras.get("project_cache", {}).pop(project_id, None)
    return updated, diff


# --- users ----------------------------------------------------------------------------------------


async def canonical_user(conn: AsyncConnection, project_id: int, user_id: str) -> str:
    return (await resolve(conn, project_id, [user_id])).get(user_id, user_id)


def _user_dict(row: Any) -> dict[str, Any]:
    return {
        "user_key": row.user_key,
        "identified": bool(row.identified),
        "traits": row.traits or {},
        "device": row.device or {},
        "first_seen_ms": row.first_seen_ms,
        "last_seen_ms": row.last_seen_ms,
        "updated_at": row.updated_at,
    }


async def list_users(
    conn: AsyncConnection, project_id: int, *, after: str | None, limit: int, identified: bool | None = None
) -> list[dict[str, Any]]:
    query = select(users).where(users.c.project_id == project_id)
    if after is not None:
        query = query.where(users.c.user_key > after)
    if identified is not None:
        query = query.where(users.c.identified == identified)
    rows = await conn.execute(query.order_by(users.c.user_key).limit(limit))
    return [_user_dict(r) for r in rows]


async def user_profile(conn: AsyncConnection, project_id: int, user_id: str) -> dict[str, Any]:
    key = await canonical_user(conn, project_id, user_id)
    row = (await conn.execute(select(users).where(users.c.project_id == project_id, users.c.user_key == key))).first()
    event_count = (
        await conn.execute(select(func.count()).where(events.c.project_id == project_id, events.c.user_key == key))
    ).scalar_one()
    if row is None and not event_count:
        raise NotFound("user")
    alias_rows = await conn.execute(
        select(aliases.c.alias).where(aliases.c.project_id == project_id, aliases.c.user_key == key)
    )
    profile: dict[str, Any] = _user_dict(row) if row is not None else {"user_key": key, "traits": {}, "device": {}}
    profile.update(
        aliases=sorted(r.alias for r in alias_rows),
        consent=await current_consent(conn, project_id, key),
        events=int(event_count),
        suppressed=await _suppressed(conn, project_id, key),
    )
    return profile


async def _suppressed(conn: AsyncConnection, project_id: int, key: str) -> bool:
    row = await conn.execute(
        select(suppressions.c.user_key).where(suppressions.c.project_id == project_id, suppressions.c.user_key == key)
    )
    return row.first() is not None


# --- data-subject hooks ----------------------------------------------------------------------------


async def _keys_of(conn: AsyncConnection, project_id: int, user_id: str) -> tuple[str, list[str]]:
    key = await canonical_user(conn, project_id, user_id)
    alias_rows = await conn.execute(
        select(aliases.c.alias).where(aliases.c.project_id == project_id, aliases.c.user_key == key)
    )
    return key, [key, *(r.alias for r in alias_rows)]


def _event_dict(row: Any) -> dict[str, Any]:
    return {
        "message_id": row.message_id,
        "type": row.type,
        "event": row.event,
        "screen": row.screen,
        "user_id": row.user_id,
        "anonymous_id": row.anonymous_id,
        "ts_ms": row.ts_ms,
        "received_ms": row.received_ms,
        "session_id": row.session_id,
        "properties": row.properties,
        "context": row.context,
        "ip": row.ip,
    }


async def export_user(conn: AsyncConnection, project_id: int, user_id: str) -> dict[str, Any]:
    """Everything analytics stores about ``user_id`` (or the user it was merged into)."""
    key, keys = await _keys_of(conn, project_id, user_id)
    profile = (
        await conn.execute(select(users).where(users.c.project_id == project_id, users.c.user_key == key))
    ).first()
    rows = await conn.execute(
        select(events)
        .where(
            events.c.project_id == project_id,
            or_(events.c.user_key.in_(keys), events.c.user_id.in_(keys), events.c.anonymous_id.in_(keys)),
        )
        .order_by(events.c.ts_ms, events.c.id)
    )
    groups_rows = await conn.execute(
        select(group_members.c.group_id).where(
            group_members.c.project_id == project_id, group_members.c.user_key == key
        )
    )
    return {
        "user_key": key,
        "ids": keys,
        "profile": _user_dict(profile) if profile is not None else None,
        "consent": await current_consent(conn, project_id, key),
        "consent_history": await consent_history_of(conn, project_id, key),
        "groups": [r.group_id for r in groups_rows],
        "suppressed": await _suppressed(conn, project_id, key),
        "events": [_event_dict(r) for r in rows],
    }


async def erase_user(conn: AsyncConnection, project_id: int, user_id: str) -> int:
    """Delete everything stored about the user; returns the number of rows erased.

    Daily counts already rolled up are decremented so aggregates match the raw data.
    A suppression entry, if any, is kept: it is what stops the app from re-collecting.
    """
    key, keys = await _keys_of(conn, project_id, user_id)
    belongs = or_(events.c.user_key.in_(keys), events.c.user_id.in_(keys), events.c.anonymous_id.in_(keys))
    mark = await watermark(conn)
    day = day_of(events.c.ts_ms)
    rolled = await conn.execute(
        select(day.label("day"), events.c.event, func.count().label("n"))
        .where(events.c.project_id == project_id, belongs, events.c.id <= mark)
        .group_by(day, events.c.event)
    )
    rolled_rows = rolled.all()
    # Their sessions are recomputed from the remaining raw events by the next rollup.
    await session_rollup.mark_stale(conn, project_id, [int(row.day) for row in rolled_rows])
    for row in rolled_rows:
        await conn.execute(
            update(daily_counts)
            .where(
                daily_counts.c.project_id == project_id,
                daily_counts.c.day == row.day,
                daily_counts.c.event == row.event,
            )
            .values(count=daily_counts.c.count - row.n)
        )
    erased = 0
    statements = [
        delete(events).where(events.c.project_id == project_id, belongs),
        delete(daily_users).where(daily_users.c.project_id == project_id, daily_users.c.user_key.in_(keys)),
        delete(users).where(users.c.project_id == project_id, users.c.user_key.in_(keys)),
        delete(consents).where(consents.c.project_id == project_id, consents.c.user_key.in_(keys)),
        delete(consent_history).where(consent_history.c.project_id == project_id, consent_history.c.user_key.in_(keys)),
        delete(group_members).where(group_members.c.project_id == project_id, group_members.c.user_key.in_(keys)),
        delete(aliases).where(
            aliases.c.project_id == project_id, or_(aliases.c.user_key.in_(keys), aliases.c.alias.in_(keys))
        ),
    ]
    for statement in statements:
        erased += int((await conn.execute(statement)).rowcount or 0)
    return erased
