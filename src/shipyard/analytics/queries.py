"""Insights: trends, active users (DAU/WAU/MAU), stickiness, top events and screens,
lifecycle, feature adoption and feature-area usage.

Each query takes a pydantic model (date range, interval, filters, breakdown) and
returns plain JSON-able data. Counts over "any event" without filters read the rollups
(plus the few events above the rollup watermark, so results are exact); anything
filtered reads raw events through the covering index.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import and_, case, distinct, func, literal, select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics import plan
from shipyard.analytics.models import daily_counts, daily_users, events
from shipyard.analytics.rollups import watermark
from shipyard.analytics.sqlparts import (
    ANY_EVENT,
    NON_ACTIONS,
    Breakdown,
    Buckets,
    DateRange,
    Interval,
    PropertyFilter,
    breakdown_expr,
    breakdown_label,
    day_date,
    day_of,
    event_clause,
    events_from,
    filters_clause,
    needs_users,
    ts_range,
)
from shipyard.core.errors import BadRequest

NOTIFICATION_OPEN_EVENTS = ("Push Notification Tapped", "Push Notification Opened", "notification_opened")
EventName = Field(ANY_EVENT, min_length=1, max_length=200, description="An event name, or $any_event.")


class QueryBase(DateRange):
    interval: Interval = "day"
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)
    breakdown: Breakdown | None = None


# --- shared sources ------------------------------------------------------------------------------------


async def unfolded_activity(
    conn: AsyncConnection, project_id: int, first_day: int, last_day: int
) -> set[tuple[str, int]]:
    """Distinct (user_key, day) pairs of events above the rollup watermark."""
    day = day_of(events.c.ts_ms)
    lo, hi = ts_range(first_day, last_day)
    rows = await conn.execute(
        select(events.c.user_key, day.label("day"))
        .where(
            events.c.project_id == project_id,
            events.c.id > await watermark(conn),
            events.c.ts_ms >= lo,
            events.c.ts_ms < hi,
        )
        .distinct()
    )
    return {(r[0], int(r[1])) for r in rows}


async def activity_pairs(
    conn: AsyncConnection,
    project_id: int,
    first_day: int,
    last_day: int,
    *,
    event: str = ANY_EVENT,
    filters: list[PropertyFilter] | None = None,
) -> list[tuple[str, int]]:
    """Distinct (user, day) pairs of activity: rollups plus tail for plain activity,
    raw events when an event or filters narrow it."""
    filters = filters or []
    if event == ANY_EVENT and not filters:
        mark = await watermark(conn)
        rolled = select(daily_users.c.user_key, daily_users.c.day).where(
            daily_users.c.project_id == project_id, daily_users.c.day >= first_day, daily_users.c.day <= last_day
        )
        day = day_of(events.c.ts_ms)
        lo, hi = ts_range(first_day, last_day)
        tail = select(events.c.user_key, day.label("day")).where(
            events.c.project_id == project_id, events.c.id > mark, events.c.ts_ms >= lo, events.c.ts_ms < hi
        )
        rows = await conn.execute(union(rolled, tail))
        return [(r[0], int(r[1])) for r in rows]
    lo, hi = ts_range(first_day, last_day)
    day = day_of(events.c.ts_ms).label("day")
    stmt = (
        select(events.c.user_key, day)
        .select_from(events_from(needs_users(filters)))
        .where(
            events.c.project_id == project_id,
            event_clause(event),
            events.c.ts_ms >= lo,
            events.c.ts_ms < hi,
            filters_clause(filters, conn.dialect.name),
        )
        .group_by(events.c.user_key, day)
    )
    return [(r[0], int(r[1])) for r in await conn.execute(stmt)]


async def daily_event_counts(
    conn: AsyncConnection, project_id: int, first_day: int, last_day: int
) -> dict[tuple[int, str], int]:
    """Events per (day, event) from the rollup plus the tail above the watermark."""
    counts: dict[tuple[int, str], int] = defaultdict(int)
    rows = await conn.execute(
        select(daily_counts.c.day, daily_counts.c.event, daily_counts.c.count.label("n")).where(
            daily_counts.c.project_id == project_id, daily_counts.c.day >= first_day, daily_counts.c.day <= last_day
        )
    )
    for row in rows:
        counts[(row.day, row.event)] += int(row.n)
    mark = await watermark(conn)
    lo, hi = ts_range(first_day, last_day)
    day = day_of(events.c.ts_ms).label("day")
    tail = await conn.execute(
        select(day, events.c.event, func.count().label("n"))
        .where(events.c.project_id == project_id, events.c.id > mark, events.c.ts_ms >= lo, events.c.ts_ms < hi)
        .group_by(day, events.c.event)
    )
    for row in tail:
        counts[(int(row.day), row.event)] += int(row.n)
    return counts


# --- trends ---------------------------------------------------------------------------------------------


class Series(BaseModel):
    event: str = Field(min_length=1, max_length=200, description="An event name, $screen, or $any_event.")
    screen: str | None = Field(None, max_length=200, description="Only screen/page views of this name.")
    math: Literal["total", "unique_users"] = "total"
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)
    label: str | None = Field(None, max_length=200)


class TrendsQuery(QueryBase):
    series: list[Series] = Field(min_length=1, max_length=10)


async def trends(conn: AsyncConnection, project_id: int, q: TrendsQuery) -> dict[str, Any]:
    first, last = q.days()
    buckets = Buckets(q.interval, first, last)
    keys = buckets.keys
    lo, hi = ts_range(first, last)
    dialect = conn.dialect.name
    out: list[dict[str, Any]] = []
    truncated = False
    for series in q.series:
        filters = [*q.filters, *series.filters]
        bucket = buckets.ts_expr(events.c.ts_ms).label("bucket")
        value = func.count() if series.math == "total" else func.count(distinct(events.c.user_key))
        where = and_(
            events.c.project_id == project_id,
            event_clause(series.event, series.screen),
            events.c.ts_ms >= lo,
            events.c.ts_ms < hi,
            filters_clause(filters, dialect),
        )
        source = events_from(needs_users(filters, q.breakdown))
        label = series.label or (f"{series.event} ({series.screen})" if series.screen else series.event)
        if q.breakdown is None:
            rows = await conn.execute(
                select(bucket, value.label("value")).select_from(source).where(where).group_by(bucket)
            )
            data = dict.fromkeys(keys, 0)
            for row in rows:
                if row.bucket in data:
                    data[row.bucket] = int(row.value)
            total = (
                sum(data.values())
                if series.math == "total"
                else int((await conn.execute(select(value).select_from(source).where(where))).scalar_one())
            )
            out.append(_series(label, series, None, [data[k] for k in keys], total))
            continue
        bd = breakdown_expr(q.breakdown, dialect).label("bd")
        rows = await conn.execute(
            select(bucket, bd, value.label("value")).select_from(source).where(where).group_by(bucket, bd)
        )
        per_value: dict[Any, dict[int, int]] = defaultdict(lambda: dict.fromkeys(keys, 0))
        for row in rows:
            if row.bucket in per_value[row.bd]:
                per_value[row.bd][row.bucket] = int(row.value)
        totals = {v: sum(d.values()) for v, d in per_value.items()}
        if series.math == "unique_users":
            total_rows = await conn.execute(
                select(bd, value.label("value")).select_from(source).where(where).group_by(bd)
            )
            totals = {r.bd: int(r.value) for r in total_rows}
        ranked = sorted(per_value, key=lambda v: (-totals.get(v, 0), breakdown_label(v)))
        truncated = truncated or len(ranked) > q.breakdown.limit
        for v in ranked[: q.breakdown.limit]:
            out.append(_series(label, series, breakdown_label(v), [per_value[v][k] for k in keys], totals.get(v, 0)))
    return {
        "interval": q.interval,
        "buckets": [buckets.label(k) for k in keys],
        "series": out,
        "breakdown_truncated": truncated,
    }


def _series(label: str, series: Series, value: str | None, data: list[int], total: int) -> dict[str, Any]:
    return {
        "label": label if value is None else f"{label} · {value}",
        "event": series.event,
        "math": series.math,
        "breakdown_value": value,
        "data": data,
        "total": total,
    }


# --- active users ------------------------------------------------------------------------------------------


class ActiveUsersQuery(DateRange):
    event: str = EventName
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)


def rolling_active(
    pairs: Iterable[tuple[str, int]], first: int, last: int, windows: Iterable[int]
) -> dict[int, list[int]]:
    """For each window w and each day d in [first, last]: users active in [d-w+1, d].

    Per user, the days a window covers form merged intervals; a difference array over
    those intervals counts each user once per day, in time linear in the pairs.
    """
    by_user: dict[str, set[int]] = defaultdict(set)
    for user, day in pairs:
        by_user[user].add(day)
    size = last - first + 1
    result = {}
    for w in windows:
        diff = [0] * (size + 1)
        for days in by_user.values():
            start = end = None
            for d in sorted(days):
                if end is not None and d <= end + 1:
                    end = d + w - 1
                    continue
                if start is not None and end is not None:
                    _mark(diff, start, end, first, last)
                start, end = d, d + w - 1
            if start is not None and end is not None:
                _mark(diff, start, end, first, last)
        running, series = 0, []
        for i in range(size):
            running += diff[i]
            series.append(running)
        result[w] = series
    return result


def _mark(diff: list[int], start: int, end: int, first: int, last: int) -> None:
    start, end = max(start, first), min(end, last)
    if start <= end:
        diff[start - first] += 1
        diff[end - first + 1] -= 1


async def active_users(conn: AsyncConnection, project_id: int, q: ActiveUsersQuery) -> dict[str, Any]:
    """DAU, WAU (trailing 7 days), MAU (trailing 30 days) and stickiness (DAU/MAU) per day."""
    first, last = q.days()
    pairs = await activity_pairs(conn, project_id, first - 29, last, event=q.event, filters=q.filters)
    rolling = rolling_active(pairs, first, last, (1, 7, 30))
    dau, wau, mau = rolling[1], rolling[7], rolling[30]
    return {
        "days": [day_date(d).isoformat() for d in range(first, last + 1)],
        "dau": dau,
        "wau": wau,
        "mau": mau,
        "stickiness": [round(d / m, 4) if m else None for d, m in zip(dau, mau, strict=True)],
    }


# --- stickiness -------------------------------------------------------------------------------------------------


class StickinessQuery(DateRange):
    event: str = EventName
    interval: Literal["day", "week"] = "day"
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)


async def stickiness(conn: AsyncConnection, project_id: int, q: StickinessQuery) -> dict[str, Any]:
    """How many users were active on exactly 1, 2, … days (or weeks) of the range."""
    first, last = q.days()
    buckets = Buckets(q.interval, first, last)
    pairs = await activity_pairs(conn, project_id, first, last, event=q.event, filters=q.filters)
    per_user: dict[str, set[int]] = defaultdict(set)
    for user, day in pairs:
        per_user[user].add(buckets.key_of_day(day))
    periods = len(buckets.keys)
    histogram = [0] * periods
    for active in per_user.values():
        histogram[len(active) - 1] += 1
    return {
        "interval": q.interval,
        "periods": periods,
        "users": len(per_user),
        "histogram": [{"active_periods": i + 1, "users": n} for i, n in enumerate(histogram)],
    }


# --- top events and screens --------------------------------------------------------------------------------------


class TopQuery(DateRange):
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)
    limit: int = Field(20, ge=1, le=200)


async def top_events(conn: AsyncConnection, project_id: int, q: TopQuery) -> dict[str, Any]:
    first, last = q.days()
    lo, hi = ts_range(first, last)
    rows = await conn.execute(
        select(events.c.event, func.count().label("n"), func.count(distinct(events.c.user_key)).label("users"))
        .select_from(events_from(needs_users(q.filters)))
        .where(
            events.c.project_id == project_id,
            events.c.event.not_in(NON_ACTIONS),
            events.c.ts_ms >= lo,
            events.c.ts_ms < hi,
            filters_clause(q.filters, conn.dialect.name),
        )
        .group_by(events.c.event)
        .order_by(func.count().desc(), events.c.event)
        .limit(q.limit)
    )
    return {"events": [{"event": r.event, "count": int(r.n), "users": int(r.users)} for r in rows]}


async def top_screens(conn: AsyncConnection, project_id: int, q: TopQuery) -> dict[str, Any]:
    first, last = q.days()
    lo, hi = ts_range(first, last)
    rows = await conn.execute(
        select(events.c.screen, func.count().label("n"), func.count(distinct(events.c.user_key)).label("users"))
        .select_from(events_from(needs_users(q.filters)))
        .where(
            events.c.project_id == project_id,
            events.c.event.in_(("$screen", "$pageview")),
            events.c.ts_ms >= lo,
            events.c.ts_ms < hi,
            filters_clause(q.filters, conn.dialect.name),
        )
        .group_by(events.c.screen)
        .order_by(func.count().desc(), events.c.screen)
        .limit(q.limit)
    )
    return {"screens": [{"screen": r.screen or "(unnamed)", "views": int(r.n), "users": int(r.users)} for r in rows]}


# --- lifecycle ------------------------------------------------------------------------------------------------------


class LifecycleQuery(DateRange):
    event: str = EventName
    interval: Literal["day", "week", "month"] = "week"
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)


async def _first_activity(
    conn: AsyncConnection, project_id: int, event: str, filters: list[PropertyFilter], user_keys: set[str]
) -> dict[str, int]:
    """Each user's first-ever active day (for the given event), for the users asked about."""
    found: dict[str, int] = {}
    keys = sorted(user_keys)
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        if event == ANY_EVENT and not filters:
            stmt = (
                select(daily_users.c.user_key, func.min(daily_users.c.day).label("first"))
                .where(daily_users.c.project_id == project_id, daily_users.c.user_key.in_(chunk))
                .group_by(daily_users.c.user_key)
            )
            tail_mark = await watermark(conn)
            tail = (
                select(events.c.user_key, func.min(day_of(events.c.ts_ms)).label("first"))
                .where(events.c.project_id == project_id, events.c.id > tail_mark, events.c.user_key.in_(chunk))
                .group_by(events.c.user_key)
            )
            for query in (stmt, tail):
                for row in await conn.execute(query):
                    day = int(row.first)
                    found[row.user_key] = min(found.get(row.user_key, day), day)
            continue
        stmt = (
            select(events.c.user_key, func.min(day_of(events.c.ts_ms)).label("first"))
            .select_from(events_from(needs_users(filters)))
            .where(
                events.c.project_id == project_id,
                event_clause(event),
                events.c.user_key.in_(chunk),
                filters_clause(filters, conn.dialect.name),
            )
            .group_by(events.c.user_key)
        )
        for row in await conn.execute(stmt):
            found[row.user_key] = int(row.first)
    return found


async def lifecycle(conn: AsyncConnection, project_id: int, q: LifecycleQuery) -> dict[str, Any]:
    """Per interval: new (first activity ever), returning (also active the interval before),
    resurrecting (inactive the interval before, active earlier), dormant (active the
    interval before, not now; reported as a negative number, as PostHog plots it)."""
    first, last = q.days()
    buckets = Buckets(q.interval, first, last)
    keys = buckets.keys
    previous_start = buckets.start_day(keys[0] - 1)
    pairs = await activity_pairs(conn, project_id, previous_start, last, event=q.event, filters=q.filters)
    active: dict[str, set[int]] = defaultdict(set)
    for user, day in pairs:
        active[user].add(buckets.key_of_day(day))
    first_seen = await _first_activity(conn, project_id, q.event, q.filters, set(active))
    rows = []
    for key in keys:
        counts = {"new": 0, "returning": 0, "resurrecting": 0, "dormant": 0}
        for user, periods in active.items():
            now, before = key in periods, key - 1 in periods
            if now:
                first_key = buckets.key_of_day(first_seen.get(user, buckets.start_day(key)))
                if first_key >= key:
                    counts["new"] += 1
                elif before:
                    counts["returning"] += 1
                else:
                    counts["resurrecting"] += 1
            elif before:
                counts["dormant"] -= 1
        rows.append({"bucket": buckets.label(key), **counts})
    return {"interval": q.interval, "rows": rows}


# --- feature adoption and feature areas ----------------------------------------------------------------------------


class AdoptionQuery(DateRange):
    interval: Literal["day", "week", "month"] = "week"
    feature_area: str | None = Field(None, max_length=100)
    events: list[str] = Field(default_factory=list, max_length=50)


async def _feature_events(conn: AsyncConnection, project_id: int, area: str | None, names: list[str]) -> list[str]:
    if names:
        return names
    if not area:
        raise BadRequest("name a feature_area from the tracking plan or list its events")
    areas = await plan.feature_areas(conn, project_id)
    if area not in areas:
        raise BadRequest(f"no feature area {area!r} in the tracking plan; known: {', '.join(sorted(areas)) or 'none'}")
    return areas[area]


async def feature_adoption(conn: AsyncConnection, project_id: int, q: AdoptionQuery) -> dict[str, Any]:
    """Per interval: of the users active in it, how many had used the feature at least once by
    then (adoption), and how many used it in that interval."""
    names = await _feature_events(conn, project_id, q.feature_area, q.events)
    first, last = q.days()
    buckets = Buckets(q.interval, first, last)
    active: dict[int, set[str]] = defaultdict(set)
    for user, day in await activity_pairs(conn, project_id, first, last):
        active[buckets.key_of_day(day)].add(user)
    lo, hi = ts_range(first, last)
    first_use = {
        r.user_key: buckets.key_of_day(int(r.first))
        for r in await conn.execute(
            select(events.c.user_key, func.min(day_of(events.c.ts_ms)).label("first"))
            .where(events.c.project_id == project_id, events.c.event.in_(names), events.c.ts_ms < hi)
            .group_by(events.c.user_key)
        )
    }
    bucket = buckets.ts_expr(events.c.ts_ms).label("bucket")
    used = defaultdict(int)
    for row in await conn.execute(
        select(bucket, func.count(distinct(events.c.user_key)).label("users"))
        .where(events.c.project_id == project_id, events.c.event.in_(names), events.c.ts_ms >= lo, events.c.ts_ms < hi)
        .group_by(bucket)
    ):
        used[int(row.bucket)] = int(row.users)
    rows = []
    for key in buckets.keys:
        users_now = active.get(key, set())
        adopted = sum(1 for u in users_now if first_use.get(u, key + 1) <= key)
        rows.append(
            {
                "bucket": buckets.label(key),
                "active_users": len(users_now),
                "adopted_users": adopted,
                "adoption_rate": round(adopted / len(users_now), 4) if users_now else None,
                "used_in_period": used[key],
            }
        )
    return {"events": names, "interval": q.interval, "rows": rows}


async def feature_area_usage(conn: AsyncConnection, project_id: int, q: DateRange) -> dict[str, Any]:
    """For each feature area of the tracking plan: events, users, share of active users."""
    areas = await plan.feature_areas(conn, project_id)
    first, last = q.days()
    lo, hi = ts_range(first, last)
    active = len({user for user, _day in await activity_pairs(conn, project_id, first, last)})
    result = []
    if areas:
        area_of = case(*[(events.c.event.in_(names), literal(area)) for area, names in areas.items()], else_=None)
        all_events = [name for names in areas.values() for name in names]
        stats = {
            r.area: (int(r.n), int(r.users))
            for r in await conn.execute(
                select(
                    area_of.label("area"),
                    func.count().label("n"),
                    func.count(distinct(events.c.user_key)).label("users"),
                )
                .where(
                    events.c.project_id == project_id,
                    events.c.event.in_(all_events),
                    events.c.ts_ms >= lo,
                    events.c.ts_ms < hi,
                )
                .group_by(area_of)
            )
        }
        for area, names in sorted(areas.items()):
            count, users_n = stats.get(area, (0, 0))
            result.append(
                {
                    "feature_area": area,
                    "events": names,
                    "count": count,
                    "users": users_n,
                    "share_of_active_users": round(users_n / active, 4) if active else None,
                }
            )
    return {"active_users": active, "areas": result}
