"""The recurring jobs: rollups every minute, the raw-event retention purge and the
privacy-mode salt purge once a day."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from shipyard.analytics import jobs as analytics_jobs
from shipyard.analytics import service
from shipyard.analytics.models import daily_counts, salts
from shipyard.analytics.segment import DAY_MS
from shipyard.core import jobs, projects
from shipyard.core.context import Context
from tests.analytics.helpers import insert, stored


def test_schedules_are_registered() -> None:
    assert {"analytics.rollup", "analytics.purge"} <= set(jobs.registered_kinds())
    assert analytics_jobs.rollup is not None


async def test_purge_applies_each_projects_retention_and_keeps_rollups(ctx: Context, project: dict[str, Any]) -> None:
    pid = project["id"]
    now = int(time.time() * 1000)
    await insert(ctx, pid, [("u1", "app_opened", now - 40 * DAY_MS), ("u1", "app_opened", now - DAY_MS)])
    async with ctx.db.transaction() as conn:
        other = (await projects.create_project(conn, "Other", public_base=ctx.settings.public_base))["id"]
    await insert(ctx, other, [("u9", "app_opened", now - 40 * DAY_MS)])  # default retention: 395 days
    async with ctx.db.transaction() as conn:
        await service.update_config(conn, ctx, pid, {"raw_retention_days": 30})
        today = now // DAY_MS
        for day in (today - 3, today - 1, today):
            await conn.execute(salts.insert().values(project_id=pid, day=day, salt=f"s{day}"))
    await analytics_jobs.purge(ctx, {}, jobs.JobInfo(1, "analytics.purge", 1, 1, None))
    assert [r.ts_ms for r in await stored(ctx, pid)] == [now - DAY_MS]
    assert len(await stored(ctx, other)) == 1
    async with ctx.db.connect() as conn:
        # The purged event still counts in the daily rollup.
        counted = (await conn.execute(select(daily_counts.c.count).where(daily_counts.c.project_id == pid))).all()
        assert sum(r[0] for r in counted) == 2
        kept = sorted(r[0] for r in await conn.execute(select(salts.c.day).where(salts.c.project_id == pid)))
        assert kept == [today - 1, today]
