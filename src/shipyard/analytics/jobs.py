"""Background jobs: rollups every minute, the raw-event retention purge and the
privacy-mode salt purge once a day."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from shipyard.analytics import consent, rollups
from shipyard.analytics.config import AnalyticsConfig
from shipyard.analytics.segment import DAY_MS
from shipyard.core import jobs
from shipyard.core.context import Context
from shipyard.core.models import projects

jobs.recurring("analytics-rollups", "* * * * *", "analytics.rollup")
jobs.recurring("analytics-retention", "17 3 * * *", "analytics.purge")


@jobs.handler("analytics.rollup")
async def rollup(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    """Fold events received since the last run into the daily counts and active users."""
    await rollups.run_rollup(ctx)


async def purge_all(ctx: Context) -> dict[int, int]:
    """Apply every project's raw-event retention; returns deleted rows per project.
    Also deletes privacy-mode salts older than two days (their hashes become unlinkable)."""
    async with ctx.db.connect() as conn:
        rows = list(await conn.execute(select(projects.c.id, projects.c.settings)))
    deleted: dict[int, int] = {}
    for row in rows:
        raw = (row.settings or {}).get("analytics") or {}
        try:
            cfg = AnalyticsConfig.model_validate(raw)
        except ValueError:
            cfg = AnalyticsConfig()
        deleted[row.id] = await rollups.purge_project(ctx, row.id, cfg.retention_days(ctx.settings))
    today = int(time.time() * 1000) // DAY_MS
    async with ctx.db.transaction() as conn:
        await consent.purge_salts(conn, today - 1)
    return deleted


@jobs.handler("analytics.purge")
async def purge(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    # The purge only deletes events already folded into rollups: fold first.
    await rollups.run_rollup(ctx)
    await purge_all(ctx)
