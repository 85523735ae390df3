"""Core housekeeping jobs: audit checkpoints, pruning finished jobs and expired sessions,
and PostgreSQL planner statistics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shipyard.core import audit, jobs, pgstats
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.models import login_sessions

jobs.recurring("core.audit.checkpoint", "0 * * * *", "core.audit.checkpoint")
jobs.recurring("core.jobs.prune", "17 3 * * *", "core.jobs.prune")
jobs.recurring("core.pgstats", "* * * * *", "core.pgstats")


@jobs.handler("core.audit.checkpoint")
async def audit_checkpoint(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    """Sign the chain head so a truncated or rewritten tail is detectable later."""
    await audit.checkpoint(ctx)


@jobs.handler("core.jobs.prune")
async def prune(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    """Drop finished jobs after a week and expired dashboard sessions."""
    async with ctx.db.transaction() as conn:
        await jobs.prune_finished(conn, timedelta(days=7))
        await conn.execute(login_sessions.delete().where(login_sessions.c.expires_at < utcnow()))


@jobs.handler("core.pgstats")
async def refresh_statistics(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    """ANALYZE / VACUUM tables that changed a lot, where autovacuum has not (PostgreSQL)."""
    await pgstats.keep_fresh(ctx.db)
