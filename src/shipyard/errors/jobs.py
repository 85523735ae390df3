"""Background jobs of the errors feature.

* ``errors.digest`` (on demand + every minute): process stored envelopes (see ``digest``).
* ``errors.housekeeping`` (every 5 minutes): end time-based ignores, mark fixes verified,
  evaluate crash-free-rate alert rules.
* ``errors.retention`` (daily): purge old events beyond retention and the per-project cap.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from shipyard.core import audit, jobs
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.models import projects as projects_table
from shipyard.core.signals import register_signal
from shipyard.errors import alerting, digest, health, retention  # noqa: F401  (digest registers its job)
from shipyard.errors.config import project_config
from shipyard.errors.issues import IssueView, add_activity, check_ignore
from shipyard.errors.models import issues

SYSTEM = audit.Actor.system("errors.housekeeping")

jobs.recurring("errors.housekeeping", "*/5 * * * *", "errors.housekeeping")
jobs.recurring("errors.retention", "23 4 * * *", "errors.retention")
register_signal("crash_free_sessions", health.crash_free_signal)


async def end_expired_ignores(ctx: Context) -> int:
    now = utcnow()
    async with ctx.db.connect() as conn:
        rows = (
            await conn.execute(
                select(issues).where(
                    issues.c.status == "ignored", issues.c.ignore_mode == "until", issues.c.ignore_until <= now
                )
            )
        ).all()
    for row in rows:
        view = IssueView.from_row(row)
        if not check_ignore(view, now):
            continue
        async with ctx.db.transaction() as conn:
            await conn.execute(
                update(issues).where(issues.c.id == row.id, issues.c.status == "ignored").values(**view.values())
            )
            for kind, details in view.transitions:
                await add_activity(conn, row.id, row.project_id, kind, "system", details)
                await audit.record(
                    conn,
                    ctx,
                    SYSTEM,
                    f"errors.issue.{kind}",
                    project_id=row.project_id,
                    resource_type="issue",
                    resource_id=row.id,
                    details=details,
                )
    return len(rows)


async def verify_fixes(ctx: Context) -> int:
    """Resolved issues that stayed resolved (no regression) for the verification period."""
    now = utcnow()
    verified = 0
    async with ctx.db.connect() as conn:
        settings = {r.id: dict(r.settings or {}) for r in await conn.execute(select(projects_table))}
        rows = (
            await conn.execute(
                select(
                    issues.c.id,
                    issues.c.project_id,
                    issues.c.resolved_at,
                    issues.c.resolution,
                    issues.c.resolved_in,
                    issues.c.title,
                ).where(issues.c.status == "resolved", issues.c.verified_at.is_(None))
            )
        ).all()
    for row in rows:
        days = project_config(ctx.settings, settings.get(row.project_id, {})).fix_verification_days
        if row.resolved_at is None or row.resolved_at > now - timedelta(days=days):
            continue
        details = {"resolution": row.resolution, "release": row.resolved_in, "days_without_regression": days}
        async with ctx.db.transaction() as conn:
            result = await conn.execute(
                update(issues)
                .where(issues.c.id == row.id, issues.c.status == "resolved", issues.c.verified_at.is_(None))
                .values(verified_at=now)
            )
            if not result.rowcount:
                continue
            await add_activity(conn, row.id, row.project_id, "verified", "system", details)
            await audit.record(
                conn,
                ctx,
                SYSTEM,
                "errors.issue.verified",
                project_id=row.project_id,
                resource_type="issue",
                resource_id=row.id,
                details={"title": row.title[:200], **details},
            )
        verified += 1
    return verified


@jobs.handler("errors.housekeeping")
async def housekeeping(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    await end_expired_ignores(ctx)
    await verify_fixes(ctx)
    await alerting.evaluate_crash_free(ctx)


@jobs.handler("errors.retention")
async def retention_job(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    await retention.purge(ctx)
