"""App users, notification categories and each user's preferences.

Preferences are read again when a notification is about to go out, so a change made
after it was queued still applies (requirement 2.5).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.db import upsert, utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.push.models import categories, user_categories, users
from shipyard.push.timing import TimingError, check_zone, parse_hhmm

SYSTEM = "system"  # the one category a user cannot turn off
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")


def _bad(exc: TimingError) -> BadRequest:
    return BadRequest(str(exc))


# --- categories ---------------------------------------------------------------------------


async def put_category(conn: AsyncConnection, project_id: int, name: str, body: dict[str, Any]) -> dict[str, Any]:
    if not _NAME.match(name):
        raise BadRequest("category names are lower-case letters, digits, '_', '.', '-' (max 64)")
    window = body.get("digest_window_seconds")
    if window is not None and not 10 <= int(window) <= 7 * 86400:
        raise BadRequest("digest_window_seconds must be between 10 s and 7 days")
    now = utcnow()
    values = {
        "project_id": project_id,
        "name": name,
        "description": body.get("description") or "",
        "critical": bool(body.get("critical", False)),
        "default_enabled": bool(body.get("default_enabled", True)),
        "daily_cap": body.get("daily_cap"),
        "hourly_cap": body.get("hourly_cap"),
        "digest_window_seconds": window,
        "digest_title": body.get("digest_title"),
        "digest_body": body.get("digest_body"),
        "channel_id": body.get("channel_id"),
        "created_at": now,
        "updated_at": now,
    }
    changes = {k: v for k, v in values.items() if k not in ("project_id", "name", "created_at")}
    await conn.execute(upsert(conn, categories, values, conflict_columns=["project_id", "name"], update=changes))
    return await get_category(conn, project_id, name)


async def get_category(conn: AsyncConnection, project_id: int, name: str) -> dict[str, Any]:
    row = (
        await conn.execute(select(categories).where(categories.c.project_id == project_id, categories.c.name == name))
    ).first()
    if row is None:
        raise NotFound(f"category {name!r}")
    return dict(row._mapping)


async def list_categories(conn: AsyncConnection, project_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(categories).where(categories.c.project_id == project_id).order_by(categories.c.name)
    )
    return [dict(r._mapping) for r in rows]


async def category_map(conn: AsyncConnection, project_id: int) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in await list_categories(conn, project_id)}


async def delete_category(conn: AsyncConnection, project_id: int, name: str) -> bool:
    result = await conn.execute(
        delete(categories).where(categories.c.project_id == project_id, categories.c.name == name)
    )
    return bool(result.rowcount)


# --- users and preferences -----------------------------------------------------------------


async def get_user(conn: AsyncConnection, project_id: int, user_id: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(select(users).where(users.c.project_id == project_id, users.c.user_id == user_id))
    ).first()
    return dict(row._mapping) if row else None


async def put_user(conn: AsyncConnection, project_id: int, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Create the user row if needed and apply ``changes`` (only the keys given)."""
    if not user_id or len(user_id) > 200:
        raise BadRequest("user_id must be 1–200 characters")
    if changes.get("timezone"):
        try:
            check_zone(changes["timezone"])
        except TimingError as exc:
            raise _bad(exc) from None
    now = utcnow()
    existing = await get_user(conn, project_id, user_id)
    if existing is None:
        values = {
            "project_id": project_id,
            "user_id": user_id,
            "properties": {},
            "created_at": now,
            "updated_at": now,
            **changes,
        }
        await conn.execute(
            upsert(
                conn, users, values, conflict_columns=["project_id", "user_id"], update={**changes, "updated_at": now}
            )
        )
    elif changes:
        await conn.execute(
            users.update()
            .where(users.c.project_id == project_id, users.c.user_id == user_id)
            .values(**changes, updated_at=now)
        )
    user = await get_user(conn, project_id, user_id)
    assert user is not None
    return user


async def get_preferences(conn: AsyncConnection, project_id: int, user_id: str) -> dict[str, Any]:
    user = await get_user(conn, project_id, user_id) or {}
    overrides = {
        r.category: r.enabled
        for r in await conn.execute(
            select(user_categories.c.category, user_categories.c.enabled).where(
                user_categories.c.project_id == project_id, user_categories.c.user_id == user_id
            )
        )
    }
    cats = await list_categories(conn, project_id)
    quiet = None
    if user.get("quiet_start") and user.get("quiet_end"):
        quiet = {"start": user["quiet_start"], "end": user["quiet_end"], "timezone": user.get("quiet_timezone")}
    return {
        "user_id": user_id,
        "categories": {
            c["name"]: {
                "enabled": True if c["name"] == SYSTEM else overrides.get(c["name"], c["default_enabled"]),
                "critical": c["critical"],
                "description": c["description"],
            }
            for c in cats
        },
        "quiet_hours": quiet,
        "daily_cap": user.get("daily_cap"),
        "hourly_cap": user.get("hourly_cap"),
        "category_caps": user.get("category_caps") or {},
        "timezone": user.get("timezone"),
    }


async def set_preferences(conn: AsyncConnection, project_id: int, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Apply a partial preferences update: ``categories`` {name: bool}, ``quiet_hours``
    ({start, end, timezone} or null to clear), ``daily_cap`` / ``hourly_cap`` (int or null),
    ``category_caps`` ({name: int or null}, merged into the stored ones), ``timezone``."""
    known = await category_map(conn, project_id)
    changes: dict[str, Any] = {}
    if "quiet_hours" in body:
        quiet = body["quiet_hours"]
        if quiet is None:
            changes.update(quiet_start=None, quiet_end=None, quiet_timezone=None)
        else:
            try:
                start, end = quiet.get("start"), quiet.get("end")
                parse_hhmm(start)
                parse_hhmm(end)
                tz = quiet.get("timezone")
                if tz:
                    check_zone(tz)
            except TimingError as exc:
                raise _bad(exc) from None
            changes.update(quiet_start=start, quiet_end=end, quiet_timezone=tz)
    if "daily_cap" in body:
        cap = body["daily_cap"]
        if cap is not None and (not isinstance(cap, int) or cap < 0 or cap > 10_000):
            raise BadRequest("daily_cap must be null or an integer 0 … 10000")
        changes["daily_cap"] = cap
    if "hourly_cap" in body:
        cap = body["hourly_cap"]
        if cap is not None and (not isinstance(cap, int) or cap < 1 or cap > 10_000):
            raise BadRequest("hourly_cap must be null or an integer 1 … 10000")
        changes["hourly_cap"] = cap
    if body.get("category_caps"):
        changes["category_caps"] = await _merged_category_caps(conn, project_id, user_id, body["category_caps"], known)
    if body.get("timezone"):
        changes["timezone"] = body["timezone"]
    await put_user(conn, project_id, user_id, changes)
    now = utcnow()
    for name, enabled in (body.get("categories") or {}).items():
        if name not in known:
            raise BadRequest(f"unknown category {name!r}; the project defines: {', '.join(sorted(known)) or 'none'}")
        if not isinstance(enabled, bool):
            raise BadRequest(f"categories.{name} must be true or false")
        if name == SYSTEM and not enabled:
            raise BadRequest("system notifications cannot be turned off")
        await conn.execute(
            upsert(
                conn,
                user_categories,
                {"project_id": project_id, "user_id": user_id, "category": name, "enabled": enabled, "updated_at": now},
                conflict_columns=["project_id", "user_id", "category"],
                update={"enabled": enabled, "updated_at": now},
            )
        )
    return await get_preferences(conn, project_id, user_id)


async def _merged_category_caps(
    conn: AsyncConnection,
    project_id: int,
    user_id: str,
    caps: dict[str, Any],
    known: dict[str, dict[str, Any]],
) -> dict[str, int]:
    merged = dict((await get_user(conn, project_id, user_id) or {}).get("category_caps") or {})
    for name, cap in caps.items():
        if name not in known:
            raise BadRequest(f"unknown category {name!r}; the project defines: {', '.join(sorted(known)) or 'none'}")
        if cap is None:
            merged.pop(name, None)
        elif not isinstance(cap, int) or isinstance(cap, bool) or not 0 <= cap <= 10_000:
            raise BadRequest(f"category_caps.{name} must be null or an integer 0 … 10000")
        else:
            merged[name] = cap
    return merged


async def opt_out_counts(conn: AsyncConnection, project_id: int) -> dict[str, int]:
    """Users who turned each category off (for the opt-out rate)."""
    from sqlalchemy import func

    rows = await conn.execute(
        select(user_categories.c.category, func.count())
        .where(user_categories.c.project_id == project_id, user_categories.c.enabled.is_(False))
        .group_by(user_categories.c.category)
    )
    return {c: n for c, n in rows}
