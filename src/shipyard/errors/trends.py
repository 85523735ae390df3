"""Trends and impact (the seed's ``ErrorTrend``), top issues and breakdowns.

Trend (per issue, over a period P, default 24 h): compare events in the last P with the P before.
    * ``increasing`` — at least 5 more events than before and at least 1.5 × as many;
    * ``decreasing`` — at least 5 fewer events than before and at most 2/3 as many;
    * ``stable`` — otherwise (including too few events to say).

Impact (per issue, over P): with ``u`` users affected in P, ``share`` = u / users with
sessions in P (when the app sends sessions), ``crash`` = the issue has unhandled or fatal events.
    * ``critical`` — a crash affecting ≥ 100 users or ≥ 5 % of active users;
    * ``high`` — a crash affecting ≥ 10 users or ≥ 1 %; or an error affecting ≥ 100 users or ≥ 5 %;
    * ``medium`` — any crash; or an error/fatal-level issue affecting ≥ 10 users or with ≥ 100 events;
    * ``low`` — everything else (warnings, info, few users).
Top issues sort by impact, then users, then events.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.db import utcnow
from shipyard.core.errors import BadRequest
from shipyard.errors import health
from shipyard.errors.models import events, issue_hourly, issue_users, issues

IMPACT_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
BREAKDOWNS = {
    "release": events.c.release,
    "update_id": events.c.update_id,
    "channel": events.c.channel,
    "os": events.c.os_name,
    "os_version": events.c.os_version,
    "device": events.c.device_model,
    "app_version": events.c.app_version,
    "environment": events.c.environment,
    "level": events.c.level,
}


def trend_of(current: int, previous: int) -> str:
    if current - previous >= 5 and current >= 1.5 * previous:
        return "increasing"
    if previous - current >= 5 and current <= previous * 2 / 3:
        return "decreasing"
    return "stable"


def impact_of(*, users: int, events_count: int, is_crash: bool, level: str, active_users: int) -> str:
    share = users / active_users if active_users else 0.0
    severe = level in ("error", "fatal")
    if is_crash and (users >= 100 or share >= 0.05):
        return "critical"
    if (is_crash and (users >= 10 or share >= 0.01)) or (severe and (users >= 100 or share >= 0.05)):
        return "high"
    if is_crash or (severe and (users >= 10 or events_count >= 100)):
        return "medium"
    return "low"


async def error_trends(
    conn: AsyncConnection, project_id: int, *, period_hours: int = 24, limit: int = 50, now: datetime | None = None
) -> list[dict[str, Any]]:
    """ErrorTrend for every issue seen in the period, most impactful first."""
    if not 1 <= period_hours <= 24 * 90:
        raise BadRequest("period_hours must be between 1 and 2160")
    now = now or utcnow()
    period = timedelta(hours=period_hours)
    start, previous_start = now - period, now - 2 * period
    counts = {
        r.issue_id: (int(r.current or 0), int(r.previous or 0))
        for r in await conn.execute(
            select(
                issue_hourly.c.issue_id,
                func.sum(case((issue_hourly.c.hour >= health.hour_of(start), issue_hourly.c.events), else_=0)).label(
                    "current"
                ),
                func.sum(case((issue_hourly.c.hour < health.hour_of(start), issue_hourly.c.events), else_=0)).label(
                    "previous"
                ),
            )
            .where(issue_hourly.c.project_id == project_id, issue_hourly.c.hour >= health.hour_of(previous_start))
            .group_by(issue_hourly.c.issue_id)
        )
    }
    active_ids = [issue_id for issue_id, (current, _) in counts.items() if current > 0]
    if not active_ids:
        return []
    users = {
        r[0]: int(r[1])
        for r in await conn.execute(
            select(issue_users.c.issue_id, func.count())
            .where(issue_users.c.issue_id.in_(active_ids), issue_users.c.last_seen >= start)
            .group_by(issue_users.c.issue_id)
        )
    }
    active_users = await health.active_users(conn, project_id, start)
    rows = (await conn.execute(select(issues).where(issues.c.id.in_(active_ids)))).all()
    out = []
    for row in rows:
        current, previous = counts[row.id]
        affected = users.get(row.id, 0)
        out.append(
            {
                "issue_id": row.id,
                "errorType": row.error_type or row.title,
                "title": row.title,
                "count": current,
                "previousCount": previous,
                "totalCount": row.times_seen,
                "affectedUsers": affected,
                "firstSeen": row.first_seen,
                "lastSeen": row.last_seen,
                "trend": trend_of(current, previous),
                "impact": impact_of(
                    users=affected,
                    events_count=current,
                    is_crash=row.is_crash,
                    level=row.level,
                    active_users=active_users,
                ),
                "status": row.status,
                "level": row.level,
                "is_crash": row.is_crash,
            }
        )
    out.sort(key=lambda t: (IMPACT_RANK[t["impact"]], t["affectedUsers"], t["count"]), reverse=True)
    return out[:limit]


async def issue_trend(
    conn: AsyncConnection, project_id: int, row: Any, *, period_hours: int = 24, now: datetime | None = None
) -> dict[str, Any]:
    """Trend and impact of one issue over the period (same rules as :func:`error_trends`)."""
    now = now or utcnow()
    start = now - timedelta(hours=period_hours)
    previous_start = start - timedelta(hours=period_hours)
    current, previous = (
        await conn.execute(
            select(
                func.coalesce(
                    func.sum(case((issue_hourly.c.hour >= health.hour_of(start), issue_hourly.c.events), else_=0)), 0
                ),
                func.coalesce(
                    func.sum(case((issue_hourly.c.hour < health.hour_of(start), issue_hourly.c.events), else_=0)), 0
                ),
            ).where(issue_hourly.c.issue_id == row.id, issue_hourly.c.hour >= health.hour_of(previous_start))
        )
    ).one()
    affected = int(
        (
            await conn.execute(
                select(func.count())
                .select_from(issue_users)
                .where(issue_users.c.issue_id == row.id, issue_users.c.last_seen >= start)
            )
        ).scalar_one()
    )
    active_users = await health.active_users(conn, project_id, start)
    return {
        "period_hours": period_hours,
        "period_events": int(current),
        "previous_period_events": int(previous),
        "period_users": affected,
        "trend": trend_of(int(current), int(previous)),
        "impact": impact_of(
            users=affected, events_count=int(current), is_crash=row.is_crash, level=row.level, active_users=active_users
        ),
    }


async def breakdown(
    conn: AsyncConnection,
    project_id: int,
    by: str,
    *,
    since: datetime,
    issue_id: int | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Events and affected users per value of a dimension (stored events within retention)."""
    column = BREAKDOWNS.get(by)
    if column is None:
        raise BadRequest(f"unknown breakdown {by!r}; expected one of {', '.join(BREAKDOWNS)}")
    conds = [events.c.project_id == project_id, events.c.received_at >= since]
    if issue_id is not None:
        conds.append(events.c.issue_id == issue_id)
    rows = (
        await conn.execute(
            select(
                column,
                func.count(),
                func.count(func.distinct(events.c.user_ident)),
                func.count(func.distinct(events.c.issue_id)),
            )
            .where(*conds)
            .group_by(column)
            .order_by(func.count().desc())
            .limit(limit)
        )
    ).all()
    total = sum(int(r[1]) for r in rows) or 1
    return [
        {
            "value": r[0],
            "events": int(r[1]),
            "users": int(r[2]),
            "issues": int(r[3]),
            "share": round(int(r[1]) / total, 4),
        }
        for r in rows
    ]
