"""The sessions rollup: per project and UTC day, the sessions that started that day.

Computing a week of sessions from raw events means reading and ordering every event of
the week per user (≈6 s on 1,000,000 events); the overview reads these per-day sums
instead and computes only days not rolled up yet from raw events (the "tail").

Definition (the same for the rollup and the tail, so they always agree): a day's
sessions are found by splitting each user's events from the day before to the day after
(``behaviour.split_sessions``), keeping the sessions that start on the day. A session
crossing midnight therefore counts once, on the day it started, with its full length.

Maintenance: the rollup job marks every day that receives events ``stale``, and also the
day before when a new event could extend one of that day's sessions (it lies within the
session timeout of the latest session end stored for the day). Stale days before today
are recomputed from raw events; today is always read raw. Erasing a user marks their
days stale. Days computed with another session timeout than the project's current one
are read raw, and recomputed by the next rollup run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Integer, Table, and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics.behaviour import split_sessions
from shipyard.analytics.config import AnalyticsConfig
from shipyard.analytics.identity import dialect_insert
from shipyard.analytics.models import events
from shipyard.analytics.segment import DAY_MS
from shipyard.analytics.sqlparts import NON_ACTIONS, day_of, ts_range
from shipyard.core.context import Context
from shipyard.core.db import UtcDateTime, metadata, utcnow
from shipyard.core.models import projects

# Days recomputed per read of raw events: bounds memory (the window is this plus two days).
DAYS_PER_READ = 7

session_days = Table(
    "analytics_session_days",
    metadata,
    Column("project_id", Integer, primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("stale", Boolean, nullable=False),
    Column("timeout_ms", BigInteger, nullable=True),
    Column("sessions", BigInteger, nullable=False),
    Column("duration_ms", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("screens", BigInteger, nullable=False),
    Column("bounces", BigInteger, nullable=False),
    Column("last_end_ms", BigInteger, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
)


@dataclass
class DayFigures:
    sessions: int = 0
    duration_ms: int = 0
    events: int = 0
    screens: int = 0
    bounces: int = 0
    last_end_ms: int | None = None

    def add(self, other: DayFigures) -> None:
        self.sessions += other.sessions
        self.duration_ms += other.duration_ms
        self.events += other.events
        self.screens += other.screens
        self.bounces += other.bounces

    def summary(self) -> dict[str, Any]:
        """The same figures and rounding as ``behaviour.sessions``' summary."""
        n = self.sessions
        return {
            "sessions": n,
            "average_duration_seconds": round(self.duration_ms / n / 1000, 3) if n else None,
            "average_events_per_session": round(self.events / n, 2) if n else None,
            "average_screens_per_session": round(self.screens / n, 2) if n else None,
            "bounce_rate": round(self.bounces / n, 4) if n else None,
        }


def _runs(days: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted days as (first, last) runs of consecutive days, at most DAYS_PER_READ long."""
    runs: list[tuple[int, int]] = []
    for day in sorted(set(days)):
        if runs and day == runs[-1][1] + 1 and day - runs[-1][0] < DAYS_PER_READ:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


async def compute_days(
    conn: AsyncConnection, project_id: int, days: Iterable[int], timeout_ms: int
) -> dict[int, DayFigures]:
    """Sessions starting on each of ``days``, from raw events (see the module docstring)."""
    figures: dict[int, DayFigures] = {}
    for first, last in _runs(days):
        for day in range(first, last + 1):
            figures[day] = DayFigures()
        async for user, rows in _streams_of_users_active(conn, project_id, first, last):
            for session in split_sessions(user, rows, timeout_ms):
                day = session.start_ms // DAY_MS
                if not first <= day <= last:
                    continue
                f = figures[day]
                f.sessions += 1
                f.duration_ms += session.duration_ms
                f.events += session.events
                f.screens += session.screens
                f.bounces += session.events == 1
                f.last_end_ms = max(f.last_end_ms or session.end_ms, session.end_ms)
    return figures


async def _streams_of_users_active(
    conn: AsyncConnection, project_id: int, first: int, last: int
) -> AsyncIterator[tuple[str, list[tuple[int, int, str, str | None, str | None]]]]:
    """Events from the day before ``first`` to the day after ``last`` of the users active
    from ``first`` to ``last`` (only they can have sessions starting then): today's tail
    must not read all of yesterday's users."""
    day_lo, day_hi = ts_range(first, last)
    active = select(events.c.user_key).where(
        events.c.project_id == project_id,
        events.c.ts_ms >= day_lo,
        events.c.ts_ms < day_hi,
        events.c.event.not_in(NON_ACTIONS),
    )
    if (await conn.execute(active.limit(1))).first() is None:
        return
    lo, hi = ts_range(first - 1, last + 1)
    stmt = select(
        events.c.user_key, events.c.ts_ms, events.c.id, events.c.event, events.c.screen, events.c.session_id
    ).where(
        events.c.project_id == project_id,
        events.c.ts_ms >= lo,
        events.c.ts_ms < hi,
        events.c.event.not_in(NON_ACTIONS),
        events.c.user_key.in_(active.distinct()),
    )
    per_user: dict[str, list[tuple[int, int, str, str | None, str | None]]] = defaultdict(list)
    result = await conn.stream(stmt)
    async for partition in result.partitions(20_000):
        for row in partition:
            per_user[row[0]].append((row[1], row[2], row[3], row[4], row[5]))
    for user, rows in per_user.items():
        yield user, rows


# --- maintenance (called by the rollup job) ----------------------------------------------------------


async def mark_stale(conn: AsyncConnection, project_id: int, days: Iterable[int]) -> None:
    for day in set(days):
        stmt = dialect_insert(conn, session_days).values(
            project_id=project_id,
            day=day,
            stale=True,
            sessions=0,
            duration_ms=0,
            events=0,
            screens=0,
            bounces=0,
            updated_at=utcnow(),
        )
        await conn.execute(stmt.on_conflict_do_update(index_elements=["project_id", "day"], set_={"stale": True}))


async def mark_new_events(conn: AsyncConnection, in_range: Any) -> None:
    """Mark the days of a range of newly folded events stale, and each previous day
    whose sessions one of the new events may extend."""
    day = day_of(events.c.ts_ms)
    rows = (
        await conn.execute(
            select(events.c.project_id, day, func.min(events.c.ts_ms))
            .where(in_range)
            .group_by(events.c.project_id, day)
        )
    ).all()
    for project_id, event_day, first_ts in rows:
        days = [int(event_day)]
        before = (
            await conn.execute(
                select(session_days.c.stale, session_days.c.timeout_ms, session_days.c.last_end_ms).where(
                    session_days.c.project_id == project_id, session_days.c.day == int(event_day) - 1
                )
            )
        ).first()
        extends_before = (
            before is not None
            and not before.stale
            and before.last_end_ms is not None
            and int(first_ts) - int(before.timeout_ms or 0) <= int(before.last_end_ms)
        )
        if extends_before:
            days.append(int(event_day) - 1)
        await mark_stale(conn, int(project_id), days)


async def _timeouts(conn: AsyncConnection, ctx: Context, project_ids: set[int]) -> dict[int, int]:
    rows = await conn.execute(select(projects.c.id, projects.c.settings).where(projects.c.id.in_(project_ids)))
    timeouts: dict[int, int] = {}
    for row in rows:
        try:
            cfg = AnalyticsConfig.model_validate((row.settings or {}).get("analytics") or {})
        except ValueError:
            cfg = AnalyticsConfig()
        timeouts[row.id] = cfg.session_timeout_ms(ctx.settings)
    return timeouts


async def refresh(ctx: Context, today: int) -> int:
    """Recompute stale days before ``today``; returns how many days were recomputed."""
    await _mark_changed_timeouts(ctx)
    async with ctx.db.connect() as conn:
        stale = (
            await conn.execute(
                select(session_days.c.project_id, session_days.c.day).where(
                    session_days.c.stale.is_(True), session_days.c.day < today
                )
            )
        ).all()
        timeouts = await _timeouts(conn, ctx, {int(r.project_id) for r in stale})
    per_project: dict[int, list[int]] = {}
    for row in stale:
        per_project.setdefault(int(row.project_id), []).append(int(row.day))
    done = 0
    for project_id, days in per_project.items():
        timeout = timeouts.get(project_id)
        if timeout is None:  # the project was deleted
            continue
        for first, last in _runs(days):
            # One transaction per run: a day marked stale again meanwhile stays stale
            # only if the marking commits after this read, which the next run redoes.
            async with ctx.db.transaction() as conn:
                figures = await compute_days(conn, project_id, range(first, last + 1), timeout)
                for day in days:
                    if first <= day <= last:
                        await _store(conn, project_id, day, timeout, figures[day])
                        done += 1
    return done


async def _mark_changed_timeouts(ctx: Context) -> None:
    """Days computed with a session timeout the project no longer uses are recomputed."""
    async with ctx.db.transaction() as conn:
        used = (await conn.execute(select(session_days.c.project_id, session_days.c.timeout_ms).distinct())).all()
        timeouts = await _timeouts(conn, ctx, {int(r.project_id) for r in used})
        for project_id, timeout_ms in used:
            current = timeouts.get(int(project_id))
            if timeout_ms is not None and current is not None and int(timeout_ms) != current:
                await conn.execute(
                    update(session_days)
                    .where(session_days.c.project_id == project_id, session_days.c.timeout_ms == timeout_ms)
                    .values(stale=True)
                )


async def _store(conn: AsyncConnection, project_id: int, day: int, timeout_ms: int, f: DayFigures) -> None:
    await conn.execute(
        update(session_days)
        .where(session_days.c.project_id == project_id, session_days.c.day == day)
        .values(
            stale=False,
            timeout_ms=timeout_ms,
            sessions=f.sessions,
            duration_ms=f.duration_ms,
            events=f.events,
            screens=f.screens,
            bounces=f.bounces,
            last_end_ms=f.last_end_ms,
            updated_at=utcnow(),
        )
    )


# --- reads -------------------------------------------------------------------------------------------


async def sessions_summary(
    conn: AsyncConnection, project_id: int, first: int, last: int, timeout_ms: int, *, today: int, watermark: int
) -> dict[str, Any]:
    """Sessions starting from day ``first`` to ``last``: fresh days from the rollup, the
    rest (today, stale days, days with events not folded in yet) from raw events."""
    rows = await conn.execute(
        select(session_days).where(
            session_days.c.project_id == project_id, session_days.c.day >= first, session_days.c.day <= last
        )
    )
    rolled: dict[int, Any] = {}
    missing = {d for d in range(first, last + 1) if d >= today}
    for row in rows:
        if row.day < today and not row.stale and row.timeout_ms == timeout_ms:
            rolled[int(row.day)] = row
        else:
            missing.add(int(row.day))
    lo, hi = (first - 1) * DAY_MS, (last + 2) * DAY_MS
    unfolded_day = day_of(events.c.ts_ms)
    unfolded = {
        int(d)
        for (d,) in await conn.execute(
            select(unfolded_day)
            .where(
                and_(events.c.project_id + 0 == project_id, events.c.id > watermark),
                # "+ 0": keep the planner on the id range (a minute of events), not the
                # time index (nine days of them).
                events.c.ts_ms + 0 >= lo,
                events.c.ts_ms + 0 < hi,
            )
            .distinct()
        )
    }
    for day in unfolded:  # a new event changes its own day's sessions and may extend the day before's
        for changed in (day, day - 1):
            if first <= changed <= last:
                rolled.pop(changed, None)
                missing.add(changed)
    # A day without a row never received an event: no session started on it.
    total = DayFigures()
    for row in rolled.values():
        total.add(DayFigures(row.sessions, row.duration_ms, row.events, row.screens, row.bounces))
    for figures in (await compute_days(conn, project_id, missing, timeout_ms)).values():
        total.add(figures)
    return total.summary()
