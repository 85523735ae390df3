"""Property tests: the funnel and retention engines against straightforward reference
implementations, on hypothesis-generated event streams, on SQLite and PostgreSQL.

The references are written from the definitions (docs/analytics.md), not from the
engine: the funnel one tries every subsequence of a user's events; the retention one
buckets every event in Python.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shipyard.analytics import funnels, retention
from shipyard.analytics.ingest import insert_event_rows
from shipyard.analytics.sqlparts import day_number
from shipyard.core.context import Context
from tests.conftest import _create_pg_database, _drop_pg_database, _unavailable, make_ctx, make_settings

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
BASE_DAY = day_number(date(2024, 1, 1))  # a Monday
BASE_MS = BASE_DAY * DAY_MS
NAMES = ["a", "b", "c"]

# A user's events: distinct times within ~5 weeks, each with an event name. Times are on a
# 12-hour grid (and windows multiples of 12 hours) so that boundaries — an event exactly at
# the window's end, at midnight, on a Monday — come up often.
user_events = st.lists(
    st.tuples(st.integers(0, 35 * 2).map(lambda q: q * 12), st.sampled_from(NAMES)),
    min_size=1,
    max_size=8,
    unique_by=lambda e: e[0],
)
streams = st.dictionaries(st.sampled_from([f"u{i}" for i in range(6)]), user_events, min_size=1, max_size=6)


class Db:
    """A migrated database on a private event loop (hypothesis drives plain functions)."""

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.loop = loop
        self.next_project = 10_000

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def load(self, stream: dict[str, list[tuple[int, str]]]) -> int:
        """Store the stream under a fresh project id; returns it."""
        self.next_project += 1
        pid = self.next_project
        rows = [
            (
                pid,
                uuid.uuid4().hex,
                "track",
                name,
                None,
                user,
                user,
                None,
                BASE_MS + hour * HOUR_MS,
                BASE_MS + hour * HOUR_MS,
                None,
                orjson.dumps({}).decode(),
                "{}",
                None,
            )
            for user, evs in stream.items()
            for hour, name in evs
        ]

        async def write() -> None:
            async with self.ctx.db.transaction() as conn:
                await insert_event_rows(conn, rows)

        self.run(write())
        return pid


def _databases() -> list[str]:
    return ["sqlite", "postgres"]


@pytest.fixture(scope="module", params=_databases())
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Db]:
    loop = asyncio.new_event_loop()
    tmp: Path = tmp_path_factory.mktemp(f"props-{request.param}")
    url = None
    if request.param == "postgres":
        try:
            url = loop.run_until_complete(_create_pg_database())
        except Exception as exc:  # noqa: BLE001 - unreachable server: fail under CI, skip locally
            _unavailable("PostgreSQL", str(exc))
    settings_ = make_settings(tmp, **({"database_url": url} if url else {}))
    ctx = loop.run_until_complete(make_ctx(settings_))
    try:
        yield Db(ctx, loop)
    finally:
        loop.run_until_complete(ctx.close())
        if url:
            loop.run_until_complete(_drop_pg_database(url))
        loop.close()


# --- funnels ----------------------------------------------------------------------------------------


def reference_funnel(
    stream: dict[str, list[tuple[int, str]]], steps: list[str], lo: int, hi: int, window: int
) -> list[int]:
    """Users reaching each step: the longest prefix of the steps matched by some ordered
    subsequence of the user's events whose first event is in [lo, hi) and whose last is
    at most ``window`` after the first."""
    reached = [0] * len(steps)
    for evs in stream.values():
        ordered = sorted((BASE_MS + h * HOUR_MS, name) for h, name in evs)
        best = 0
        for k in range(len(steps), 0, -1):
            for combo in itertools.combinations(ordered, k):
                if not lo <= combo[0][0] < hi or combo[-1][0] - combo[0][0] > window:
                    continue
                if all(event[1] == steps[j] for j, event in enumerate(combo)):
                    best = k
                    break
            if best:
                break
        for j in range(best):
            reached[j] += 1
    return reached


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(stream={"u0": [(0, "a"), (12, "b")]}, steps=["a", "b"], window_hours=12, range_days=(0, 0))
@example(stream={"u0": [(0, "a"), (13, "b")]}, steps=["a", "b"], window_hours=12, range_days=(0, 0))
@example(stream={"u0": [(0, "a"), (12, "a")]}, steps=["a", "a"], window_hours=24, range_days=(0, 0))
@example(stream={"u0": [(23, "a"), (24, "b")], "u1": [(24, "a")]}, steps=["a", "b"], window_hours=2, range_days=(0, 0))
@given(
    stream=streams,
    steps=st.lists(st.sampled_from(NAMES), min_size=2, max_size=3),
    window_hours=st.integers(1, 12).map(lambda q: q * 12),
    range_days=st.tuples(st.integers(0, 20), st.integers(0, 20)),
)
def test_funnel_matches_reference(
    db: Db, stream: dict[str, list[tuple[int, str]]], steps: list[str], window_hours: int, range_days: tuple[int, int]
) -> None:
    pid = db.load(stream)
    start, length = range_days
    first = date(2024, 1, 1) + timedelta(days=start)
    last = first + timedelta(days=length)
    q = funnels.FunnelQuery(
        date_from=first,
        date_to=last,
        steps=[funnels.FunnelStep(event=s) for s in steps],
        window_value=window_hours,
        window_unit="hour",
    )

    async def run() -> dict[str, Any]:
        async with db.ctx.db.connect() as conn:
            return await funnels.funnel(conn, pid, q)

    result = db.run(run())
    lo, hi = day_number(first) * DAY_MS, (day_number(last) + 1) * DAY_MS
    expected = reference_funnel(stream, steps, lo, hi, window_hours * HOUR_MS)
    assert [s["count"] for s in result["steps"]] == expected
    top = expected[0]
    assert result["conversion_rate"] == (round(expected[-1] / top, 4) if top else None)


# --- retention --------------------------------------------------------------------------------------


def _key(day: int, interval: str) -> int:
    return (day + 3) // 7 if interval == "week" else day


def reference_retention(
    stream: dict[str, list[tuple[int, str]]],
    start_event: str,
    return_event: str,
    interval: str,
    first_day: int,
    last_day: int,
    periods: int,
    criterion: str,
) -> list[tuple[int, list[int]]]:
    """Per cohort (first-ever start event's period, inside the range): size, and users
    returning in each later period ("on") or in it or any later shown one ("on_or_after")."""
    keys = range(_key(first_day, interval), _key(last_day, interval) + 1)
    sizes = dict.fromkeys(keys, 0)
    counts = {k: [0] * (periods + 1) for k in keys}
    for evs in stream.values():
        times = [(BASE_MS + h * HOUR_MS, name) for h, name in evs]
        starts = [ts for ts, name in times if name == start_event]
        if not starts:
            continue
        first_ts = min(starts)
        if not first_day * DAY_MS <= first_ts < (last_day + 1) * DAY_MS:
            continue
        cohort = _key(first_ts // DAY_MS, interval)
        sizes[cohort] += 1
        offsets = {_key(ts // DAY_MS, interval) - cohort for ts, name in times if name == return_event}
        offsets = {o for o in offsets if 1 <= o <= periods}
        if criterion == "on":
            for o in offsets:
                counts[cohort][o] += 1
        else:
            for p in range(1, max(offsets, default=0) + 1):
                counts[cohort][p] += 1
    return [(sizes[k], [sizes[k], *counts[k][1:]]) for k in keys]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(
    stream={"u0": [(0, "a"), (24 * 7, "a")], "u1": [(24 * 6, "a"), (24 * 7, "b")], "u2": [(24 * 13, "b")]},
    start_event="a",
    return_event="a",
    interval="week",
    periods=2,
    criterion="on_or_after",
    range_days=(0, 6),
)
@given(
    stream=streams,
    start_event=st.sampled_from(NAMES),
    return_event=st.sampled_from(NAMES),
    interval=st.sampled_from(["day", "week"]),
    periods=st.integers(1, 4),
    criterion=st.sampled_from(["on", "on_or_after"]),
    range_days=st.tuples(st.integers(0, 14), st.integers(0, 14)),
)
def test_retention_matches_reference(
    db: Db,
    stream: dict[str, list[tuple[int, str]]],
    start_event: str,
    return_event: str,
    interval: str,
    periods: int,
    criterion: str,
    range_days: tuple[int, int],
) -> None:
    pid = db.load(stream)
    start, length = range_days
    first = date(2024, 1, 1) + timedelta(days=start)
    last = first + timedelta(days=length)
    q = retention.RetentionQuery(
        date_from=first,
        date_to=last,
        start_event=start_event,
        return_event=return_event,
        interval=interval,  # type: ignore[arg-type]
        periods=periods,
        criterion=criterion,  # type: ignore[arg-type]
    )

    async def run() -> dict[str, Any]:
        async with db.ctx.db.connect() as conn:
            return await retention.retention(conn, pid, q)

    result = db.run(run())
    (group,) = result["groups"]
    got = [(c["size"], [p["users"] for p in c["periods"]]) for c in group["cohorts"]]
    expected = reference_retention(
        stream, start_event, return_event, interval, day_number(first), day_number(last), periods, criterion
    )
    assert got == expected
