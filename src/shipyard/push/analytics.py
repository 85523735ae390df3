"""Delivery analytics: the funnel sent → delivered → opened per campaign, category,
template or send, open rate, time to open, failures by reason, opt-out rate, link
engagement, and provider health (circuit state, paused credentials, error rates)."""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.http import outbound
from shipyard.push import links
from shipyard.push.models import credentials, messages, user_categories, users
from shipyard.push.providers import apns, expo, fcm

GROUPS = {"campaign": messages.c.campaign, "category": messages.c.category, "template": messages.c.template}
DESTINATIONS = {"expo": expo.destination, "fcm": fcm.destination, "apns": apns.destination}


def _funnel_columns() -> list[Any]:
    m = messages.c
    return [
        func.count().label("messages"),
        func.count(m.sent_at).label("sent"),
        func.count(m.delivered_at).label("delivered"),
        func.count(m.opened_at).label("opened"),
        func.sum(case((m.status == "failed", 1), else_=0)).label("failed"),
        func.sum(case((m.status == "suppressed", 1), else_=0)).label("suppressed"),
        func.sum(case((m.status == "collapsed", 1), else_=0)).label("collapsed"),
        func.sum(case((m.status.in_(("queued", "scheduled", "deferred", "digesting")), 1), else_=0)).label("pending"),
    ]


def _shape(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: int(getattr(row, k) or 0)
        for k in ("messages", "sent", "delivered", "opened", "failed", "suppressed", "collapsed", "pending")
    }
    base = out["delivered"] or out["sent"]
    out["delivery_rate"] = round(out["delivered"] / out["sent"], 4) if out["sent"] else None
    out["open_rate"] = round(out["opened"] / base, 4) if base else None
    return out


async def _open_times(conn: AsyncConnection, where: list[Any], key: Any | None) -> dict[Any, list[float]]:
    cols = [messages.c.sent_at, messages.c.opened_at] + ([key] if key is not None else [])
    stmt = (
        select(*cols)
        .where(*where, messages.c.opened_at.is_not(None), messages.c.sent_at.is_not(None))
        .order_by(messages.c.opened_at.desc())
        .limit(20000)
    )
    out: dict[Any, list[float]] = {}
    for r in await conn.execute(stmt):
        group = r[2] if key is not None else None
        out.setdefault(group, []).append(max(0.0, (r.opened_at - r.sent_at).total_seconds()))
    return out


def _median(values: list[float] | None) -> float | None:
    return round(statistics.median(values), 1) if values else None


async def _failure_reasons(conn: AsyncConnection, where: list[Any], limit: int = 10) -> list[dict[str, Any]]:
    reason = func.substr(func.coalesce(messages.c.reason, "unknown"), 1, 120)
    rows = await conn.execute(
        select(reason.label("reason"), func.count().label("n"))
        .where(*where, messages.c.status == "failed")
        .group_by(reason)
        .order_by(func.count().desc())
        .limit(limit)
    )
    return [{"reason": r.reason, "count": int(r.n)} for r in rows]


async def funnel(
    conn: AsyncConnection, project_id: int, group_by: str, since: datetime | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """One funnel row per campaign / category / template (most messages first)."""
    key = GROUPS[group_by]
    where: list[Any] = [messages.c.project_id == project_id]
    if since is not None:
        where.append(messages.c.created_at >= since)
    rows = await conn.execute(
        select(key.label("key"), *_funnel_columns())
        .where(*where)
        .group_by(key)
        .order_by(func.count().desc())
        .limit(limit)
    )
    times = await _open_times(conn, where, key)
    link_stats = await links.engagement_stats(conn, project_id, since) if group_by == "campaign" else {}
    opt_outs = await _opt_outs(conn, project_id) if group_by == "category" else {}
    out = []
    for r in rows:
        item = {group_by: r.key, **_shape(r), "median_seconds_to_open": _median(times.get(r.key))}
        if group_by == "campaign":
            item["links"] = link_stats.get(r.key, {"success": 0, "failure": 0, "ignored": 0})
        if group_by == "category":
            item.update(opt_outs.get(r.key, {"opted_out_users": 0, "opt_out_rate": 0.0}))
        out.append(item)
    return out


async def _opt_outs(conn: AsyncConnection, project_id: int) -> dict[str, dict[str, Any]]:
    known = (
        await conn.execute(select(func.count()).select_from(users).where(users.c.project_id == project_id))
    ).scalar() or 0
    rows = await conn.execute(
        select(user_categories.c.category, func.count())
        .where(user_categories.c.project_id == project_id, user_categories.c.enabled.is_(False))
        .group_by(user_categories.c.category)
    )
    return {
        c: {"opted_out_users": int(n), "opt_out_rate": round(int(n) / known, 4) if known else None} for c, n in rows
    }


async def send_funnel(conn: AsyncConnection, project_id: int, send_id: int) -> dict[str, Any]:
    """A send's delivery funnel with the median time to open and its failures by reason."""
    where = [messages.c.project_id == project_id, messages.c.send_id == send_id]
    row = (await conn.execute(select(*_funnel_columns()).where(*where))).one()
    times = await _open_times(conn, where, None)
    return {
        **_shape(row),
        "median_seconds_to_open": _median(times.get(None)),
        "failures": await _failure_reasons(conn, where),
    }


async def overview(conn: AsyncConnection, project_id: int, since: datetime | None = None) -> dict[str, Any]:
    where: list[Any] = [messages.c.project_id == project_id]
    if since is not None:
        where.append(messages.c.created_at >= since)
    row = (await conn.execute(select(*_funnel_columns()).where(*where))).one()
    times = await _open_times(conn, where, None)
    return {
        **_shape(row),
        "median_seconds_to_open": _median(times.get(None)),
        "failures": await _failure_reasons(conn, where),
    }


async def provider_health(
    conn: AsyncConnection, ctx: Context, project_id: int, since: datetime
) -> list[dict[str, Any]]:
    """Per provider: circuit state, whether credentials are configured or paused, and the
    outcome of messages handed to it since ``since``."""
    creds = {
        r.provider: r
        for r in await conn.execute(
            select(credentials.c.provider, credentials.c.paused_reason, credentials.c.paused_at).where(
                credentials.c.project_id == project_id
            )
        )
    }
    counts = {
        r.provider: r
        for r in await conn.execute(
            select(
                messages.c.provider,
                func.count(messages.c.sent_at).label("sent"),
                func.sum(case((messages.c.status == "failed", 1), else_=0)).label("failed"),
            )
            .where(messages.c.project_id == project_id, messages.c.created_at >= since)
            .group_by(messages.c.provider)
        )
    }
    breaker = outbound(ctx).breaker
    out = []
    for provider, destination_of in DESTINATIONS.items():
        destination = destination_of(project_id)
        c = counts.get(provider)
        sent, failed = (int(c.sent or 0), int(c.failed or 0)) if c else (0, 0)
        cred = creds.get(provider)
        out.append(
            {
                "provider": provider,
                # Expo works without an access token unless the project enabled enhanced security.
                "configured": cred is not None or provider == "expo",
                "paused_reason": cred.paused_reason if cred else None,
                "circuit": await breaker.state(destination),
                "sent": sent,
                "failed": failed,
                "error_rate": round(failed / (sent + failed), 4) if sent + failed else None,
            }
        )
    return out
