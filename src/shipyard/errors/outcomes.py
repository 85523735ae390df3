"""Outcomes: counts of what was dropped and why, per project, hour, category and reason.

Drops decided at ingest (quotas) happen at request rate, so they are summed in memory and
written every couple of seconds instead of once per request; client reports from SDKs
arrive in envelopes and are counted by the digester inside its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter as Tally
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.db import upsert, utcnow
from shipyard.errors.models import outcomes

log = logging.getLogger("shipyard.errors.outcomes")

DROPPED = Counter(
    "shipyard_errors_dropped_total",
    "Items dropped, by outcome, reason and data category",
    ["outcome", "reason", "category"],
)

Key = tuple[int, datetime, str, str, str]  # project, hour, outcome, reason, category


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def add(conn: AsyncConnection, counts: dict[Key, int]) -> None:
    """Add counts inside the caller's transaction."""
    for (project_id, hour, outcome, reason, category), quantity in counts.items():
        if quantity <= 0:
            continue
        values = {
            "project_id": project_id,
            "hour": hour,
            "outcome": outcome,
            "reason": reason[:64],
            "category": category[:32],
            "quantity": quantity,
        }
        await conn.execute(
            upsert(
                conn,
                outcomes,
                values,
                conflict_columns=["project_id", "hour", "outcome", "reason", "category"],
                update={"quantity": outcomes.c.quantity + quantity},
            )
        )


class OutcomeBuffer:
    """Per-process tally of ingest-time drops, flushed to the database in the background."""

    def __init__(self, ctx: Context, interval: float = 2.0) -> None:
        self.ctx = ctx
        self.interval = interval
        self.pending: Tally[Key] = Tally()
        self._task: asyncio.Task[None] | None = None

    def record(self, project_id: int, outcome: str, reason: str, category: str, quantity: int = 1) -> None:
        DROPPED.labels(outcome, reason, category).inc(quantity)
        self.pending[(project_id, hour_of(utcnow()), outcome, reason, category)] += quantity
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.interval)
        with contextlib.suppress(Exception):
            await self.flush()

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, Tally()
        try:
            async with self.ctx.db.transaction() as conn:
                await add(conn, dict(batch))
        except Exception as exc:
            log.warning("could not write %d outcome counters: %s", len(batch), exc)
            self.pending.update(batch)  # keep them for the next flush


def buffer(ctx: Context) -> OutcomeBuffer:
    existing = ctx.extras.get("errors_outcomes")
    if existing is None:
        existing = ctx.extras["errors_outcomes"] = OutcomeBuffer(ctx)
    return existing


async def summary(conn: AsyncConnection, project_id: int, since: datetime) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(outcomes.c.outcome, outcomes.c.reason, outcomes.c.category, func.sum(outcomes.c.quantity))
        .where(outcomes.c.project_id == project_id, outcomes.c.hour >= hour_of(since))
        .group_by(outcomes.c.outcome, outcomes.c.reason, outcomes.c.category)
        .order_by(func.sum(outcomes.c.quantity).desc())
    )
    return [{"outcome": r[0], "reason": r[1], "category": r[2], "quantity": int(r[3] or 0)} for r in rows]
