"""Audit trail admin API: filtered, paginated listing and JSON / CSV export.

Exports stream the whole filtered trail in keyset pages, so a year of records does not sit
in memory. Each export is itself recorded (who took a copy of the trail, and which part).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select

from shipyard.core import audit
from shipyard.core.context import Context
from shipyard.core.deps import Admin
from shipyard.core.models import audit_log
from shipyard.core.pagination import Page, Paging

router = APIRouter(tags=["audit"])

EXPORT_COLUMNS = [
    "seq",
    "ts",
    "actor_type",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "ip",
    "user_agent",
    "request_id",
    "details",
    "prev_hash",
    "hash",
]
_EXPORT_PAGE = 1000


class AuditRecord(BaseModel):
    seq: int
    ts: datetime
    project_id: int | None
    actor_type: str
    actor_id: str | None
    action: str
    resource_type: str | None
    resource_id: str | None
    outcome: str
    ip: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditFilters:
    """Query parameters shared by the listing and the export (see :func:`audit_filters`)."""

    action: str | None = None
    actor: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Any) -> Any:
        c = audit_log.c
        if self.action:
            query = query.where(
                c.action.startswith(self.action) if self.action.endswith(".") else c.action == self.action
            )
        if self.actor:
            query = query.where(c.actor_id == self.actor)
        if self.resource_type:
            query = query.where(c.resource_type == self.resource_type)
        if self.resource_id:
            query = query.where(c.resource_id == self.resource_id)
        if self.outcome:
            query = query.where(c.outcome == self.outcome)
        if self.since:
            query = query.where(c.ts >= _aware(self.since))
        if self.until:
            query = query.where(c.ts < _aware(self.until))
        return query

    def describe(self) -> dict[str, str]:
        return {k: str(v) for k, v in vars(self).items() if v is not None}


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def audit_filters(
    action: Annotated[
        str | None, Query(max_length=100, description="Exact action, or a prefix ending in `.` (`key.`).")
    ] = None,
    actor: Annotated[str | None, Query(max_length=200, description="Actor id or label (email, key:…).")] = None,
    resource_type: Annotated[str | None, Query(max_length=64)] = None,
    resource_id: Annotated[str | None, Query(max_length=200)] = None,
    outcome: Annotated[Literal["success", "failure"] | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601; records at or after this time.")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; records before this time.")] = None,
) -> AuditFilters:
    """The same parameters as ``Depends(AuditFilters)``, resolved on the event loop (FastAPI
    runs a class dependency in its thread pool)."""
    return AuditFilters(action, actor, resource_type, resource_id, outcome, since, until)


Filters = Annotated[AuditFilters, Depends(audit_filters)]


@router.get("/projects/{project}/audit", response_model=Page[AuditRecord])
async def list_audit(access: Admin, filters: Filters, page: Paging) -> dict[str, Any]:
    """The project's audit records, newest first."""
    query = filters.apply(select(audit_log).where(audit_log.c.project_id == access.project.id))
    after = page.after_int()
    if after is not None:
        query = query.where(audit_log.c.seq < after)
    async with access.ctx.db.connect() as conn:
        rows = (await conn.execute(query.order_by(audit_log.c.seq.desc()).limit(page.limit + 1))).all()
    return page.page([dict(r._mapping) for r in rows], lambda r: r["seq"])


@router.get(
    "/projects/{project}/audit/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
async def export_audit(
    access: Admin, filters: Filters, format: Annotated[Literal["json", "csv"], Query()] = "json"
) -> StreamingResponse:
    """The filtered trail, oldest first: newline-delimited JSON (one record a line) or CSV."""
    ctx = access.ctx
    async with ctx.db.transaction() as conn:
        await audit.record(
            conn,
            ctx,
            access.actor,
            "audit.export",
            project_id=access.project.id,
            resource_type="audit_log",
            details={"format": format, "filters": filters.describe()},
        )
    rows = _stream_rows(ctx, access.project.id, filters)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"audit-{access.project.slug}-{stamp}.{'ndjson' if format == 'json' else 'csv'}"
    body = _as_ndjson(rows) if format == "json" else _as_csv(rows)
    return StreamingResponse(
        body,
        media_type="application/x-ndjson" if format == "json" else "text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def _stream_rows(ctx: Context, project_id: int, filters: AuditFilters) -> AsyncIterator[dict[str, Any]]:
    after = 0
    while True:
        query = filters.apply(
            select(audit_log).where(audit_log.c.project_id == project_id, audit_log.c.seq > after)
        ).order_by(audit_log.c.seq)
        async with ctx.db.connect() as conn:
            rows = (await conn.execute(query.limit(_EXPORT_PAGE))).all()
        for row in rows:
            yield audit.as_dict(row)
        if len(rows) < _EXPORT_PAGE:
            return
        after = rows[-1].seq


async def _as_ndjson(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for row in rows:
        yield orjson.dumps({k: row[k] for k in ["project_id", *EXPORT_COLUMNS]}) + b"\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
    # A spreadsheet would run a cell starting with = + - @ as a formula (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


async def _as_csv(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    async for row in rows:
        writer.writerow([_cell(row[c]) for c in EXPORT_COLUMNS])
        if buffer.tell() > 64_000:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()
