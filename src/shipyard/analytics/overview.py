"""The project overview the dashboard opens on (requirement 3.4), read from the rollups.

Active users and event counts come from the incrementally maintained rollups (plus the
tail above the watermark), so the page stays fast as raw events grow. Crash-free rate
and notification opens belong to other features and are read through their service
functions (``shipyard.errors.service.crash_free_rate`` and
``shipyard.push.service.notification_open_stats``), never their tables. Apps that track
their own ``Push Notification Tapped``/``Opened`` events see those counted as well.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics import plan, queries, session_rollup
from shipyard.analytics.config import config_of
from shipyard.analytics.models import daily_users
from shipyard.analytics.rollups import watermark
from shipyard.analytics.sqlparts import NON_ACTIONS, day_date, day_number
from shipyard.core.context import Context
from shipyard.core.projects import Project

log = logging.getLogger("shipyard.analytics")


async def _optional(ctx: Context, module_name: str, function: str, *args: Any) -> Any:
    """Ask another feature's service, if that feature is installed; never fail the page."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    fn = getattr(module, function, None)
    if fn is None:
        return None
    try:
        return await fn(ctx, *args)
    except Exception as exc:  # noqa: BLE001 — another feature's failure must not break this page
        log.warning("overview: %s.%s failed: %s", module_name, function, exc)
        return None


async def _active_users(conn: AsyncConnection, project_id: int, today: date) -> dict[str, Any]:
    """DAU for each of the last 30 days, and today's DAU, WAU, MAU and stickiness.

    The same definitions as the active-users insight, but only today's WAU and MAU. They are
    counted in SQL on the activity rollup (moving its ≈340,000 (user, day) pairs of 1,000,000
    events into Python took most of the page's cold time), then corrected in Python with
    the few pairs of events not folded in yet."""
    first, last = day_number(today) - 29, day_number(today)
    in_range = and_(daily_users.c.project_id == project_id, daily_users.c.day >= first, daily_users.c.day <= last)
    per_day = Counter(
        {
            int(day): int(n)
            for day, n in await conn.execute(
                select(daily_users.c.day, func.count()).where(in_range).group_by(daily_users.c.day)
            )
        }
    )
    # One pass grouping by user (a hash aggregate on PostgreSQL) instead of two
    # COUNT(DISTINCT …), which sort the 30 days of pairs each.
    latest = (
        select(func.max(daily_users.c.day).label("latest")).where(in_range).group_by(daily_users.c.user_key)
    ).subquery()
    mau_row, wau_row = (
        await conn.execute(select(func.count(), func.sum(case((latest.c.latest > last - 7, 1), else_=0))))
    ).one()
    mau, wau = int(mau_row), int(wau_row or 0)
    tail = await queries.unfolded_activity(conn, project_id, first, last)
    if tail:
        known = await conn.execute(
            select(daily_users.c.user_key, daily_users.c.day).where(
                in_range, daily_users.c.user_key.in_({user for user, _day in tail})
            )
        )
        known_days: dict[str, set[int]] = {}
        for user, day in known:
            known_days.setdefault(user, set()).add(int(day))
        for user, day in tail:
            days = known_days.setdefault(user, set())
            if day not in days:
                per_day[day] += 1
                wau += day > last - 7 and not any(d > last - 7 for d in days)
                mau += not days
                days.add(day)
    dau_series = [(day_date(d).isoformat(), per_day.get(d, 0)) for d in range(first, last + 1)]
    dau = per_day.get(last, 0)
    return {
        "dau_series": dau_series,
        "today": {
            "dau": dau,
            "wau": wau,
            "mau": mau,
            "stickiness": round(dau / mau, 4) if mau else None,
        },
    }


async def overview(conn: AsyncConnection, ctx: Context, project: Project) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    week_start = today - timedelta(days=6)
    active = await _active_users(conn, project.id, today)
    counts = await queries.daily_event_counts(conn, project.id, day_number(week_start), day_number(today))
    per_event: dict[str, int] = {}
    for (_day, event), n in counts.items():
        per_event[event] = per_event.get(event, 0) + n
    top = sorted(
        (
            (e, n)
            for e, n in per_event.items()
            # n is 0 once every such event was erased (the rollups are decremented).
            if n > 0 and e not in NON_ACTIONS and e not in ("$screen", "$pageview")
        ),
        key=lambda item: (-item[1], item[0]),
    )[:10]
    areas = await plan.feature_areas(conn, project.id)
    area_counts = {area: sum(per_event.get(e, 0) for e in names) for area, names in sorted(areas.items())}
    tracked_opens = sum(per_event.get(e, 0) for e in queries.NOTIFICATION_OPEN_EVENTS)
    timeout = config_of(project).session_timeout_ms(ctx.settings)
    # Sessions from the sessions rollup plus today's raw tail: computing the week from raw
    # events took ≈6 s on 1,000,000 events.
    sessions = await session_rollup.sessions_summary(
        conn,
        project.id,
        day_number(week_start),
        day_number(today),
        timeout,
        today=day_number(today),
        watermark=await watermark(conn),
    )
    since = datetime.combine(week_start, datetime.min.time(), UTC)
    crash_free = await _optional(ctx, "shipyard.errors.service", "crash_free_rate", project.id, since)
    push_opens = await _optional(ctx, "shipyard.push.service", "notification_open_stats", project.id, since)
    return {
        "today": today.isoformat(),
        "active_users": active["today"],
        "dau_series": active["dau_series"],
        "events_last_7_days": sum(n for e, n in per_event.items() if e not in NON_ACTIONS),
        "screen_views_last_7_days": per_event.get("$screen", 0) + per_event.get("$pageview", 0),
        "top_events": [{"event": e, "count": n} for e, n in top],
        "feature_areas": [{"feature_area": a, "count": n} for a, n in area_counts.items()],
        "sessions_last_7_days": sessions,
        "notification_opens_last_7_days": _notification_opens(push_opens, tracked_opens),
        "crash_free_rate": crash_free,
    }


def _notification_opens(push_stats: dict[str, Any] | None, tracked_opens: int) -> dict[str, Any]:
    """Opens of notifications Shipyard sent (push service) next to the app's own open events."""
    stats = push_stats or {"sent": 0, "delivered": 0, "opened": 0, "open_rate": None}
    return {**stats, "tracked_open_events": tracked_opens}
