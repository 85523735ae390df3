"""The catalogue of insight kinds (query model + function), CSV export, saved insights."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics import behaviour, funnels, queries, retention
from shipyard.analytics.config import AnalyticsConfig
from shipyard.analytics.models import insights
from shipyard.analytics.sqlparts import DateRange
from shipyard.core.db import utcnow
from shipyard.core.errors import ApiError, BadRequest, NotFound
from shipyard.settings import Settings

Runner = Callable[[AsyncConnection, int, Any, int], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Kind:
    model: type[BaseModel]
    run: Runner
    csv: Callable[[dict[str, Any]], tuple[list[str], list[list[Any]]]]


def _plain(fn: Callable[[AsyncConnection, int, Any], Awaitable[dict[str, Any]]]) -> Runner:
    async def run(conn: AsyncConnection, project_id: int, q: Any, _timeout_ms: int) -> dict[str, Any]:
        return await fn(conn, project_id, q)

    return run


def _trends_csv(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    rows = [
        [s["label"], s["breakdown_value"], bucket, value]
        for s in r["series"]
        for bucket, value in zip(r["buckets"], s["data"], strict=True)
    ]
    return ["series", "breakdown_value", "bucket", "value"], rows


def _active_csv(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    rows = [list(t) for t in zip(r["days"], r["dau"], r["wau"], r["mau"], r["stickiness"], strict=True)]
    return ["day", "dau", "wau", "mau", "stickiness"], rows


def _funnel_csv(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    rows = [
        [
            "(all)",
            s["step"],
            s["label"],
            s["count"],
            s["conversion_from_first"],
            s["conversion_from_previous"],
            s["dropped_from_previous"],
            s["median_seconds_from_previous"],
        ]
        for s in r["steps"]
    ]
    for group in r.get("breakdown", []):
        rows += [[group["value"], s["step"], "", s["count"], "", "", "", ""] for s in group["steps"]]
    headers = [
        "breakdown_value",
        "step",
        "label",
        "users",
        "conversion_from_first",
        "conversion_from_previous",
        "dropped",
        "median_seconds_from_previous",
    ]
    return headers, rows


def _retention_csv(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    rows = [
        [g["breakdown_value"], c["cohort"], c["size"], p["period"], p["users"], p["rate"]]
        for g in r["groups"]
        for c in g["cohorts"]
        for p in c["periods"]
    ]
    return ["breakdown_value", "cohort", "size", "period", "users", "rate"], rows


def _sessions_csv(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    rows = [["series", s["bucket"], s["sessions"], s["average_duration_seconds"], ""] for s in r["series"]]
    rows += [
        ["screen_time", s["screen"], s["views"], s["average_seconds"], s["total_seconds"]] for s in r["screen_time"]
    ]
    return ["table", "bucket_or_screen", "sessions_or_views", "average_seconds", "total_seconds"], rows


def _table(key: str, columns: list[str]) -> Callable[[dict[str, Any]], tuple[list[str], list[list[Any]]]]:
    def convert(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        return columns, [[row.get(c) for c in columns] for row in r[key]]

    return convert


def _paths_csv(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    return ["path", "count"], [[" → ".join(p["path"]), p["count"]] for p in r["paths"]]


def _sessions_runner(conn: AsyncConnection, project_id: int, q: Any, timeout_ms: int) -> Awaitable[dict[str, Any]]:
    return behaviour.sessions(conn, project_id, q, timeout_ms)


def _paths_runner(conn: AsyncConnection, project_id: int, q: Any, timeout_ms: int) -> Awaitable[dict[str, Any]]:
    return behaviour.paths(conn, project_id, q, timeout_ms)


KINDS: dict[str, Kind] = {
    "trends": Kind(queries.TrendsQuery, _plain(queries.trends), _trends_csv),
    "active-users": Kind(queries.ActiveUsersQuery, _plain(queries.active_users), _active_csv),
    "stickiness": Kind(
        queries.StickinessQuery, _plain(queries.stickiness), _table("histogram", ["active_periods", "users"])
    ),
    "top-events": Kind(queries.TopQuery, _plain(queries.top_events), _table("events", ["event", "count", "users"])),
    "top-screens": Kind(queries.TopQuery, _plain(queries.top_screens), _table("screens", ["screen", "views", "users"])),
    "funnel": Kind(funnels.FunnelQuery, _plain(funnels.funnel), _funnel_csv),
    "retention": Kind(retention.RetentionQuery, _plain(retention.retention), _retention_csv),
    "paths": Kind(behaviour.PathsQuery, _paths_runner, _paths_csv),
    "sessions": Kind(behaviour.SessionsQuery, _sessions_runner, _sessions_csv),
    "lifecycle": Kind(
        queries.LifecycleQuery,
        _plain(queries.lifecycle),
        _table("rows", ["bucket", "new", "returning", "resurrecting", "dormant"]),
    ),
    "feature-adoption": Kind(
        queries.AdoptionQuery,
        _plain(queries.feature_adoption),
        _table("rows", ["bucket", "active_users", "adopted_users", "adoption_rate", "used_in_period"]),
    ),
    "feature-areas": Kind(
        queries.DateRange,
        _plain(queries.feature_area_usage),
        _table("areas", ["feature_area", "count", "users", "share_of_active_users"]),
    ),
}


def kind_of(name: str) -> Kind:
    kind = KINDS.get(name)
    if kind is None:
        raise ApiError(404, "not_found", f"unknown insight {name!r}; one of {', '.join(KINDS)}")
    return kind


def parse_query(name: str, raw: Any) -> BaseModel:
    kind = kind_of(name)
    try:
        return kind.model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}" for e in exc.errors()[:5])
        raise ApiError(422, "invalid_query", f"invalid {name} query: {problems}") from None


def check_saved_query(name: str, raw: Any) -> None:
    """Refuse a query to be saved that could never run: invalid fields, or dates that
    contradict each other (a rolling ``date_window`` and fixed dates, a reversed range)."""
    query = parse_query(name, raw)
    if isinstance(query, DateRange):
        query.days()


async def run_insight(
    conn: AsyncConnection, project_id: int, name: str, query: BaseModel, cfg: AnalyticsConfig, settings: Settings
) -> dict[str, Any]:
    return await kind_of(name).run(conn, project_id, query, cfg.session_timeout_ms(settings))


def to_csv(name: str, result: dict[str, Any]) -> str:
    headers, rows = kind_of(name).csv(result)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(headers)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return out.getvalue()


# --- saved insights -------------------------------------------------------------------------------


def insight_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "query": row.query,
        "pinned": bool(row.pinned),
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def create_insight(
    conn: AsyncConnection, project_id: int, name: str, kind: str, query: dict[str, Any], pinned: bool, by: str | None
) -> dict[str, Any]:
    check_saved_query(kind, query)
    now = utcnow()
    new_id = (
        await conn.execute(
            insights.insert()
            .values(
                project_id=project_id,
                name=name,
                kind=kind,
                query=query,
                pinned=pinned,
                created_by=by,
                created_at=now,
                updated_at=now,
            )
            .returning(insights.c.id)
        )
    ).scalar_one()
    return await get_insight(conn, project_id, int(new_id))


# Ids are a 32-bit INTEGER column: a larger id in a URL cannot exist (and PostgreSQL would
# refuse to bind it, turning a plain "not found" into a 500).
MAX_ID = 2**31 - 1


async def get_insight(conn: AsyncConnection, project_id: int, insight_id: int) -> dict[str, Any]:
    if not 0 < insight_id <= MAX_ID:
        raise NotFound("insight")
    row = (
        await conn.execute(select(insights).where(insights.c.project_id == project_id, insights.c.id == insight_id))
    ).first()
    if row is None:
        raise NotFound("insight")
    return insight_dict(row)


async def update_insight(
    conn: AsyncConnection, project_id: int, insight_id: int, changes: dict[str, Any]
) -> dict[str, Any]:
    current = await get_insight(conn, project_id, insight_id)
    if "query" in changes:
        check_saved_query(current["kind"], changes["query"])
    if not changes:
        raise BadRequest("nothing to change; send name, query or pinned")
    await conn.execute(update(insights).where(insights.c.id == insight_id).values(**changes, updated_at=utcnow()))
    return await get_insight(conn, project_id, insight_id)


async def delete_insight(conn: AsyncConnection, project_id: int, insight_id: int) -> bool:
    if not 0 < insight_id <= MAX_ID:
        return False
    result = await conn.execute(
        delete(insights).where(insights.c.project_id == project_id, insights.c.id == insight_id)
    )
    return bool(result.rowcount)


async def list_insights(
    conn: AsyncConnection, project_id: int, *, after_id: int | None, limit: int, pinned: bool | None = None
) -> list[dict[str, Any]]:
    query = select(insights).where(insights.c.project_id == project_id)
    if after_id is not None:
        query = query.where(insights.c.id > after_id)
    if pinned is not None:
        query = query.where(insights.c.pinned == pinned)
    return [insight_dict(r) for r in await conn.execute(query.order_by(insights.c.id).limit(limit))]
