"""Sessions, screen time and paths, derived from the raw event stream.

A session is a run of one user's events without a gap longer than the project's session
timeout (30 minutes by default, as PostHog and Segment's mobile plugins do); a change
of client-sent session id also starts one, and no session lasts more than 24 hours.
Screen time is the time from a screen view to the user's next screen view in the same
session (or to the session's last event).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics.models import events
from shipyard.analytics.sqlparts import (
    NON_ACTIONS,
    Buckets,
    DateRange,
    PropertyFilter,
    events_from,
    filters_clause,
    needs_users,
    ts_range,
)

MAX_SESSION_MS = 24 * 3_600_000
SCREEN_EVENTS = ("$screen", "$pageview")


@dataclass
class Session:
    user_key: str
    start_ms: int
    end_ms: int
    events: int = 0
    screens: int = 0
    screen_times: list[tuple[str, int]] = field(default_factory=list)

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


def split_sessions(
    user_key: str, rows: list[tuple[int, int, str, str | None, str | None]], timeout_ms: int
) -> list[Session]:
    """One user's sessions from (ts, id, event, screen, client session id) rows."""
    rows.sort(key=lambda r: (r[0], r[1]))
    sessions: list[Session] = []
    current: Session | None = None
    current_sid: str | None = None
    open_screen: tuple[str, int] | None = None

    def close() -> None:
        if current is not None and open_screen is not None:
            current.screen_times.append((open_screen[0], current.end_ms - open_screen[1]))

    for ts, _id, event, screen, sid in rows:
        new = (
            current is None
            or ts - current.end_ms > timeout_ms
            or ts - current.start_ms > MAX_SESSION_MS
            or (sid is not None and current_sid is not None and sid != current_sid)
        )
        if new:
            close()
            current = Session(user_key, ts, ts)
            sessions.append(current)
            open_screen = None
        assert current is not None
        current.end_ms = ts
        current.events += 1
        current_sid = sid if new else (sid or current_sid)
        if event in SCREEN_EVENTS:
            current.screens += 1
            if open_screen is not None:
                current.screen_times.append((open_screen[0], ts - open_screen[1]))
            open_screen = (screen or "(unnamed)", ts)
    close()
    return sessions


async def _user_streams(
    conn: AsyncConnection, project_id: int, first: int, last: int, filters: list[PropertyFilter]
) -> AsyncIterator[tuple[str, list[tuple[int, int, str, str | None, str | None]]]]:
    lo, hi = ts_range(first, last)
    stmt = (
        select(events.c.user_key, events.c.ts_ms, events.c.id, events.c.event, events.c.screen, events.c.session_id)
        .select_from(events_from(needs_users(filters)))
        .where(
            events.c.project_id == project_id,
            events.c.ts_ms >= lo,
            events.c.ts_ms < hi,
            events.c.event.not_in(NON_ACTIONS),
            filters_clause(filters, conn.dialect.name),
        )
    )
    per_user: dict[str, list[tuple[int, int, str, str | None, str | None]]] = defaultdict(list)
    result = await conn.stream(stmt)
    async for partition in result.partitions(20_000):
        for row in partition:
            per_user[row[0]].append((row[1], row[2], row[3], row[4], row[5]))
    for user, rows in per_user.items():
        yield user, rows


class SessionsQuery(DateRange):
    interval: Literal["day", "week", "month"] = "day"
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)


def _median(values: list[int]) -> float | None:
    return statistics.median(values) / 1000 if values else None


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values) / 1000, 3) if values else None


async def sessions(conn: AsyncConnection, project_id: int, q: SessionsQuery, timeout_ms: int) -> dict[str, Any]:
    """Sessions, durations, events and screens per session, and time per screen."""
    first, last = q.days()
    buckets = Buckets(q.interval, first, last)
    all_sessions: list[Session] = []
    async for user, rows in _user_streams(conn, project_id, first, last, q.filters):
        all_sessions.extend(split_sessions(user, rows, timeout_ms))
    per_bucket: dict[int, list[Session]] = defaultdict(list)
    screen_time: dict[str, list[int]] = defaultdict(list)
    for session in all_sessions:
        per_bucket[buckets.key_of_ts(session.start_ms)].append(session)
        for screen, spent in session.screen_times:
            screen_time[screen].append(spent)
    durations = [s.duration_ms for s in all_sessions]
    series = []
    for key in buckets.keys:
        chunk = per_bucket.get(key, [])
        series.append(
            {
                "bucket": buckets.label(key),
                "sessions": len(chunk),
                "average_duration_seconds": _mean([s.duration_ms for s in chunk]),
            }
        )
    screens = sorted(screen_time.items(), key=lambda item: -sum(item[1]))
    return {
        "timeout_minutes": timeout_ms // 60_000,
        "summary": {
            "sessions": len(all_sessions),
            "users": len({s.user_key for s in all_sessions}),
            "median_duration_seconds": _median(durations),
            "average_duration_seconds": _mean(durations),
            "average_events_per_session": round(sum(s.events for s in all_sessions) / len(all_sessions), 2)
            if all_sessions
            else None,
            "average_screens_per_session": round(sum(s.screens for s in all_sessions) / len(all_sessions), 2)
            if all_sessions
            else None,
            "bounce_rate": round(sum(1 for s in all_sessions if s.events == 1) / len(all_sessions), 4)
            if all_sessions
            else None,
        },
        "series": series,
        "screen_time": [
            {
                "screen": screen,
                "views": len(spent),
                "total_seconds": round(sum(spent) / 1000, 3),
                "average_seconds": _mean(spent),
                "median_seconds": _median(spent),
            }
            for screen, spent in screens[:100]
        ],
    }


class PathsQuery(DateRange):
    anchor: str = Field(min_length=1, max_length=200, description="Screen name or event name to start from.")
    direction: Literal["next", "previous"] = "next"
    steps: int = Field(3, ge=1, le=5)
    kind: Literal["all", "screens", "events"] = "all"
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)
    limit: int = Field(50, ge=1, le=200)


def _item(event: str, screen: str | None) -> str:
    return (screen or "(unnamed)") if event in SCREEN_EVENTS else event


async def paths(conn: AsyncConnection, project_id: int, q: PathsQuery, timeout_ms: int) -> dict[str, Any]:
    """The most common screens/events right after (or before) the anchor, and the most
    common paths of up to ``steps`` items, within one session (like PostHog, events more
    than the session timeout apart start a new path)."""
    first, last = q.days()
    edges: Counter[tuple[int, str, str]] = Counter()
    sequences: Counter[tuple[str, ...]] = Counter()
    anchors = 0
    async for _user, rows in _user_streams(conn, project_id, first, last, q.filters):
        rows.sort(key=lambda r: (r[0], r[1]))
        items: list[tuple[int, str]] = []
        for ts, _id, event, screen, _sid in rows:
            is_screen = event in SCREEN_EVENTS
            if (q.kind == "screens" and not is_screen) or (q.kind == "events" and is_screen):
                continue
            items.append((ts, _item(event, screen)))
        for i, (_ts, name) in enumerate(items):
            if name != q.anchor:
                continue
            anchors += 1
            path = [name]
            j = i
            for _ in range(q.steps):
                k = j + 1 if q.direction == "next" else j - 1
                if k < 0 or k >= len(items) or abs(items[k][0] - items[j][0]) > timeout_ms:
                    break
                edges[(len(path), path[-1], items[k][1])] += 1
                path.append(items[k][1])
                j = k
            if len(path) > 1:
                sequences[tuple(path)] += 1
    first_step = Counter({to: n for (depth, _src, to), n in edges.items() if depth == 1})
    return {
        "anchor": q.anchor,
        "direction": q.direction,
        "occurrences": anchors,
        "top": [
            {"item": item, "count": n, "share": round(n / anchors, 4) if anchors else None}
            for item, n in first_step.most_common(q.limit)
        ],
        "paths": [{"path": list(path), "count": n} for path, n in sequences.most_common(q.limit)],
        "edges": [
            {"depth": depth, "from": src, "to": to, "count": n}
            for (depth, src, to), n in sorted(edges.items(), key=lambda e: (e[0][0], -e[1]))[: q.limit * q.steps]
        ],
    }
