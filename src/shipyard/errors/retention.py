"""Retention: events, transactions, feedback and attachments older than the project's
retention (default 90 days), or beyond its event cap, are deleted in small transactions.
Issues keep their counts, first/last seen and tag distributions; only the event bodies go.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select

from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.models import projects as projects_table
from shipyard.errors import health
from shipyard.errors.config import project_config
from shipyard.errors.models import attachments, event_data, events, feedback, spans, transactions

CHUNK = 2000


async def _delete_ids(ctx: Context, table: Any, ids: list[int]) -> None:
    async with ctx.db.transaction() as conn:
        if table is events:
            await conn.execute(delete(event_data).where(event_data.c.event_pk.in_(ids)))
        if table is transactions:
            await conn.execute(delete(spans).where(spans.c.transaction_pk.in_(ids)))
        await conn.execute(delete(table).where(table.c.id.in_(ids)))


async def _purge_where(ctx: Context, table: Any, *conds: Any) -> int:
    total = 0
    while True:
        async with ctx.db.connect() as conn:
            ids = list((await conn.execute(select(table.c.id).where(*conds).limit(CHUNK))).scalars())
        if not ids:
            return total
        await _delete_ids(ctx, table, ids)
        total += len(ids)


async def purge_project(ctx: Context, project_id: int, settings: dict[str, Any], now: datetime) -> dict[str, int]:
    cfg = project_config(ctx.settings, settings)
    cutoff = now - timedelta(days=cfg.retention_days)
    purged = {
        "events": await _purge_where(ctx, events, events.c.project_id == project_id, events.c.received_at < cutoff),
        "transactions": await _purge_where(
            ctx, transactions, transactions.c.project_id == project_id, transactions.c.received_at < cutoff
        ),
        "feedback": await _purge_where(
            ctx, feedback, feedback.c.project_id == project_id, feedback.c.created_at < cutoff
        ),
        "attachments": await _purge_where(
            ctx, attachments, attachments.c.project_id == project_id, attachments.c.created_at < cutoff
        ),
    }
    async with ctx.db.connect() as conn:
        stored = int(
            (
                await conn.execute(select(func.count()).select_from(events).where(events.c.project_id == project_id))
            ).scalar_one()
        )
        threshold = None
        if stored > cfg.max_events:
            threshold = (
                await conn.execute(
                    select(events.c.id)
                    .where(events.c.project_id == project_id)
                    .order_by(events.c.id.desc())
                    .offset(cfg.max_events)
                    .limit(1)
                )
            ).scalar()
    if threshold is not None:
        purged["events"] += await _purge_where(ctx, events, events.c.project_id == project_id, events.c.id <= threshold)
    return purged


async def purge(ctx: Context, now: datetime | None = None) -> dict[str, int]:
    now = now or utcnow()
    async with ctx.db.connect() as conn:
        rows = (await conn.execute(select(projects_table.c.id, projects_table.c.settings))).all()
    totals: dict[str, int] = {"events": 0, "transactions": 0, "feedback": 0, "attachments": 0, "sessions": 0}
    for row in rows:
        for key, value in (await purge_project(ctx, row.id, dict(row.settings or {}), now)).items():
            totals[key] += value
    async with ctx.db.transaction() as conn:
        totals["sessions"] = await health.purge_state(conn, now)
    return totals
