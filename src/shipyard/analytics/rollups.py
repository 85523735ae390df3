"""Rollups maintained incrementally, and the raw-event retention purge.

The rollup job walks the events table by id from a stored watermark and folds each new
range into daily counts per event, daily active users, and first/last seen per user —
the incremental equivalent of the CoachMeld document's materialized views; it also keeps
the per-day sessions rollup (``session_rollup``) up to date. Reads that
need exact numbers add the few events above the watermark (the "tail") to the rollup.

Ids grow monotonically (``AUTOINCREMENT`` on SQLite; a sequence on PostgreSQL). On
PostgreSQL, transactions can commit out of id order, so the job only folds in events
received at least ``analytics_rollup_lag_seconds`` ago.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics import landing, session_rollup
from shipyard.analytics.identity import dialect_insert
from shipyard.analytics.models import aliases, daily_counts, daily_users, events, rollup_state, users
from shipyard.analytics.segment import DAY_MS
from shipyard.analytics.sqlparts import day_of
from shipyard.core.context import Context
from shipyard.core.db import Json, UtcDateTime, utcnow

WATERMARK = "events"
CHUNK = 100_000


async def watermark(conn: AsyncConnection) -> int:
    value = (await conn.execute(select(rollup_state.c.last_event_id).where(rollup_state.c.name == WATERMARK))).scalar()
    return int(value or 0)


async def run_rollup(ctx: Context, *, max_chunks: int = 50) -> int:
    """Fold new events into the rollups; returns how many events were folded in."""
    # Load what any process left in the landing table first (the job is also how rows
    # staged by a process that stopped before loading them reach the events table).
    await landing.loader(ctx).drain(everything=True)
    folded = 0
    for _ in range(max_chunks):
        count = await _rollup_chunk(ctx)
        folded += count
        if count == 0:
            break
    await session_rollup.refresh(ctx, int(time.time() * 1000) // DAY_MS)
    return folded


async def _rollup_chunk(ctx: Context) -> int:
    async with ctx.db.transaction() as conn:
        state_query = select(rollup_state.c.last_event_id).where(rollup_state.c.name == WATERMARK)
        if conn.dialect.name == "postgresql":
            state_query = state_query.with_for_update()  # one rollup at a time across workers
        low = int((await conn.execute(state_query)).scalar() or 0)
        upper_query = select(func.max(events.c.id)).where(events.c.id > low, events.c.id <= low + CHUNK)
        if conn.dialect.name == "postgresql":
            cutoff = int((time.time() - ctx.settings.analytics_rollup_lag_seconds) * 1000)
            upper_query = upper_query.where(events.c.received_ms <= cutoff)
        high = (await conn.execute(upper_query)).scalar()
        if high is None:
            return 0
        high = int(high)
        await _catch_up_links(conn, low, high)
        in_range = and_(events.c.id > low, events.c.id <= high)
        count = int((await conn.execute(select(func.count()).where(in_range))).scalar_one())
        await _fold_counts(conn, in_range)
        await _fold_daily_users(conn, in_range)
        await _fold_users(conn, in_range)
        await session_rollup.mark_new_events(conn, in_range)
        await _set_watermark(conn, high)
    return count


async def _set_watermark(conn: AsyncConnection, value: int) -> None:
    stmt = dialect_insert(conn, rollup_state).values(name=WATERMARK, last_event_id=value, updated_at=utcnow())
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"], set_={"last_event_id": value, "updated_at": stmt.excluded.updated_at}
        )
    )


async def _catch_up_links(conn: AsyncConnection, low: int, high: int) -> None:
    """Events stored under an anonymous id after another process linked it to a user."""
    linked = select(aliases.c.user_key).where(
        aliases.c.project_id == events.c.project_id, aliases.c.alias == events.c.user_key
    )
    await conn.execute(
        update(events)
        .where(events.c.id > low, events.c.id <= high, exists(linked))
        .values(user_key=linked.scalar_subquery())
    )


def _day() -> Any:
    return day_of(events.c.ts_ms)


async def _fold_counts(conn: AsyncConnection, in_range: Any) -> None:
    day = _day()
    source = (
        select(events.c.project_id, day, events.c.event, func.count())
        .where(in_range)
        .group_by(events.c.project_id, day, events.c.event)
    )
    stmt = dialect_insert(conn, daily_counts).from_select(["project_id", "day", "event", "count"], source)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["project_id", "day", "event"],
            set_={"count": daily_counts.c.count + stmt.excluded.count},
        )
    )


async def _fold_daily_users(conn: AsyncConnection, in_range: Any) -> None:
    day = _day()
    source = (
        select(events.c.project_id, day, events.c.user_key, func.count())
        .where(in_range)
        .group_by(events.c.project_id, day, events.c.user_key)
    )
    stmt = dialect_insert(conn, daily_users).from_select(["project_id", "day", "user_key", "events"], source)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["project_id", "day", "user_key"],
            set_={"events": daily_users.c.events + stmt.excluded.events},
        )
    )


async def _fold_users(conn: AsyncConnection, in_range: Any) -> None:
    identified = func.max(case((events.c.user_id.is_not(None), 1), else_=0)) > 0
    source = (
        select(
            events.c.project_id,
            events.c.user_key,
            identified,
            literal({}, Json),
            literal({}, Json),
            func.min(events.c.ts_ms),
            func.max(events.c.ts_ms),
            literal(utcnow(), UtcDateTime()),
        )
        .where(in_range)
        .group_by(events.c.project_id, events.c.user_key)
    )
    columns = [
        "project_id",
        "user_key",
        "identified",
        "traits",
        "device",
        "first_seen_ms",
        "last_seen_ms",
        "updated_at",
    ]
    stmt = dialect_insert(conn, users).from_select(columns, source)
    least, greatest = (func.min, func.max) if conn.dialect.name == "sqlite" else (func.least, func.greatest)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["project_id", "user_key"],
            set_={
                "first_seen_ms": least(
                    func.coalesce(users.c.first_seen_ms, stmt.excluded.first_seen_ms), stmt.excluded.first_seen_ms
                ),
                "last_seen_ms": greatest(
                    func.coalesce(users.c.last_seen_ms, stmt.excluded.last_seen_ms), stmt.excluded.last_seen_ms
                ),
                "identified": users.c.identified | stmt.excluded.identified,
            },
        )
    )


# --- retention purge -------------------------------------------------------------------------------


async def purge_project(ctx: Context, project_id: int, retention_days: int, *, batch: int = 5000) -> int:
    """Delete raw events older than the retention (only ones already folded into rollups,
    so the long-term counts survive the purge). Small transactions keep SQLite responsive."""
    cutoff = int((utcnow() - timedelta(days=retention_days)).timestamp() * 1000)
    deleted = 0
    while True:
        async with ctx.db.transaction() as conn:
            mark = await watermark(conn)
            ids = (
                select(events.c.id)
                .where(events.c.project_id == project_id, events.c.ts_ms < cutoff, events.c.id <= mark)
                .limit(batch)
            )
            result = await conn.execute(delete(events).where(events.c.id.in_(ids.scalar_subquery())))
        removed = int(result.rowcount or 0)
        deleted += removed
        if removed < batch:
            return deleted
