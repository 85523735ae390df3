"""The sessions rollup: its figures equal the raw computation, and stay equal as events
arrive late, extend yesterday's sessions across midnight, or a user is erased."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from shipyard.analytics import behaviour, overview, rollups, service, session_rollup
from shipyard.analytics.session_rollup import session_days
from shipyard.core.context import Context
from shipyard.core.models import projects
from tests.analytics.helpers import insert

T0 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
M = 60_000
H = 60 * M
D = 24 * H
DAY0 = T0 // D
TIMEOUT = 30 * M
TODAY = DAY0 + 100  # every test day is in the past


def random_history(seed: int, users: int = 12, days: int = 5) -> list[tuple[Any, ...]]:
    """Bursts of activity per user and day, some running across midnight."""
    rng = random.Random(seed)
    rows: list[tuple[Any, ...]] = []
    for u in range(users):
        for day in range(days):
            for _burst in range(rng.randint(0, 3)):
                ts = T0 + day * D + rng.randint(0, D - 1)
                for _ in range(rng.randint(1, 6)):
                    if rng.random() < 0.4:
                        rows.append((f"u{u}", "$screen", ts, {}, rng.choice(["Garden", "Plant", "Feed"])))
                    else:
                        rows.append((f"u{u}", rng.choice(["plant_created", "post_liked"]), ts))
                    ts += rng.randint(0, 40 * M)
    return rows


async def raw_summary(ctx: Context, pid: int, first: int, last: int) -> dict[str, Any]:
    async with ctx.db.connect() as conn:
        figures = await session_rollup.compute_days(conn, pid, range(first, last + 1), TIMEOUT)
    total = session_rollup.DayFigures()
    for f in figures.values():
        total.add(f)
    return total.summary()


async def summary(ctx: Context, pid: int, first: int, last: int) -> dict[str, Any]:
    async with ctx.db.connect() as conn:
        mark = await rollups.watermark(conn)
        return await session_rollup.sessions_summary(conn, pid, first, last, TIMEOUT, today=TODAY, watermark=mark)


async def fresh_days(ctx: Context, pid: int) -> set[int]:
    async with ctx.db.connect() as conn:
        rows = await conn.execute(
            select(session_days.c.day).where(session_days.c.project_id == pid, session_days.c.stale.is_(False))
        )
        return {int(r.day) for r in rows}


async def test_rollup_equals_raw_sessions(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(ctx, pid, random_history(1))
    await rollups.run_rollup(ctx)
    assert await fresh_days(ctx, pid) >= set(range(DAY0, DAY0 + 5))  # read from the rollup, not raw

    # The same figures as computing from raw events, for every range of days.
    for first, last in [(DAY0, DAY0 + 4), (DAY0 + 1, DAY0 + 3), (DAY0 + 2, DAY0 + 2)]:
        assert await summary(ctx, pid, first, last) == await raw_summary(ctx, pid, first, last)

    # And the same as the sessions insight over the whole history (no earlier events).
    week = behaviour.SessionsQuery(
        date_from=datetime.fromtimestamp(T0 / 1000, UTC).date(),
        date_to=datetime.fromtimestamp((T0 + 6 * D) / 1000, UTC).date(),
    )
    async with ctx.db.connect() as conn:
        insight = (await behaviour.sessions(conn, pid, week, TIMEOUT))["summary"]
    rolled = await summary(ctx, pid, DAY0, DAY0 + 6)
    assert rolled["sessions"] == insight["sessions"] > 0
    for key in ("average_duration_seconds", "average_events_per_session", "bounce_rate"):
        assert rolled[key] == insight[key]


async def test_session_across_midnight_counts_once_on_its_first_day(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(ctx, pid, [("u1", "app_opened", T0 + D - 10 * M), ("u1", "plant_created", T0 + D - 2 * M)])
    await rollups.run_rollup(ctx)
    before = await summary(ctx, pid, DAY0, DAY0 + 1)
    assert before["sessions"] == 1 and before["average_duration_seconds"] == 480.0

    # Arriving later: events just after midnight continue that session.
    await insert(ctx, pid, [("u1", "post_liked", T0 + D + 20 * M), ("u1", "post_liked", T0 + D + 45 * M)])
    await rollups.run_rollup(ctx)
    assert {DAY0, DAY0 + 1} <= await fresh_days(ctx, pid)
    after = await summary(ctx, pid, DAY0, DAY0 + 1)
    assert after == await raw_summary(ctx, pid, DAY0, DAY0 + 1)
    assert after["sessions"] == 1
    assert after["average_duration_seconds"] == 55 * 60.0
    assert after["average_events_per_session"] == 4


async def test_late_events_and_unfolded_tail_are_counted(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(ctx, pid, random_history(2, users=5, days=3))
    await rollups.run_rollup(ctx)
    # Not folded in yet: read raw for their days until the next rollup run.
    await insert(ctx, pid, [("late", "plant_created", T0 + H), ("late", "plant_created", T0 + 2 * D + H)])
    expected = await raw_summary(ctx, pid, DAY0, DAY0 + 2)
    assert await summary(ctx, pid, DAY0, DAY0 + 2) == expected
    await rollups.run_rollup(ctx)
    assert await summary(ctx, pid, DAY0, DAY0 + 2) == expected
    assert await fresh_days(ctx, pid) >= {DAY0, DAY0 + 1, DAY0 + 2}


async def test_erasing_a_user_removes_their_sessions(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(ctx, pid, [("a", "app_opened", T0 + H), ("b", "app_opened", T0 + H), ("b", "post_liked", T0 + D)])
    await rollups.run_rollup(ctx)
    assert (await summary(ctx, pid, DAY0, DAY0 + 1))["sessions"] == 3
    async with ctx.db.transaction() as conn:
        await service.erase_user(conn, pid, "b")
    assert (await summary(ctx, pid, DAY0, DAY0 + 1))["sessions"] == 1  # stale days are read raw
    await rollups.run_rollup(ctx)
    assert (await summary(ctx, pid, DAY0, DAY0 + 1))["sessions"] == 1
    assert await fresh_days(ctx, pid) >= {DAY0, DAY0 + 1}


async def test_a_new_session_timeout_recomputes_the_rollup(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    await insert(ctx, pid, [("u1", "app_opened", T0 + H), ("u1", "post_liked", T0 + H + 20 * M)])
    await rollups.run_rollup(ctx)
    assert (await summary(ctx, pid, DAY0, DAY0))["sessions"] == 1
    async with ctx.db.transaction() as conn:
        await conn.execute(
            projects.update()
            .where(projects.c.id == pid)
            .values(settings={"analytics": {"session_timeout_minutes": 10}})
        )
    await rollups.run_rollup(ctx)
    async with ctx.db.connect() as conn:
        mark = await rollups.watermark(conn)
        ten = await session_rollup.sessions_summary(conn, pid, DAY0, DAY0, 10 * M, today=TODAY, watermark=mark)
        stored = (await conn.execute(select(session_days.c.timeout_ms).where(session_days.c.day == DAY0))).scalar()
    assert ten["sessions"] == 2
    assert stored == 10 * M  # recomputed in the rollup, not only read raw


async def test_overview_active_users_count_events_not_folded_in_yet(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    today = datetime.now(UTC).date()
    start = int(datetime.combine(today, datetime.min.time(), UTC).timestamp() * 1000) + 1
    await insert(ctx, pid, [("a", "app_opened", start - 3 * D), ("b", "app_opened", start - 3 * D)])
    await rollups.run_rollup(ctx)
    # Above the watermark: a new day for a, a known day for b, new users c (month) and d (today).
    await insert(
        ctx,
        pid,
        [
            ("a", "app_opened", start),
            ("b", "post_liked", start - 3 * D + M),
            ("c", "app_opened", start - 10 * D),
            ("d", "app_opened", start),
        ],
    )
    async with ctx.db.connect() as conn:
        with_tail = await overview._active_users(conn, pid, today)
    await rollups.run_rollup(ctx)
    async with ctx.db.connect() as conn:
        folded = await overview._active_users(conn, pid, today)
    assert with_tail == folded
    assert folded["today"] == {"dau": 2, "wau": 3, "mau": 4, "stickiness": 0.5}
    series = dict(folded["dau_series"])
    assert series[(today - timedelta(days=3)).isoformat()] == 2
    assert series[(today - timedelta(days=10)).isoformat()] == 1
