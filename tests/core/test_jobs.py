"""Durable jobs: run once, retry with backoff, dead-letter, idempotency, schedules."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from shipyard.core import jobs
from shipyard.core.models import jobs as jobs_table

RUNS: list[Any] = []


@jobs.handler("test.record")
async def _record(ctx: Any, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    RUNS.append(payload["n"])


@jobs.handler("test.fail")
async def _fail(ctx: Any, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    raise RuntimeError("provider said no")


async def test_job_runs_once_and_idempotency_key_dedupes(ctx: Any) -> None:
    RUNS.clear()
    async with ctx.db.transaction() as conn:
        first = await jobs.enqueue(conn, "test.record", {"n": 1}, idempotency_key="k1")
        second = await jobs.enqueue(conn, "test.record", {"n": 1}, idempotency_key="k1")
    assert first is not None and second is None
    worker = jobs.Worker(ctx)
    assert await worker.run_until_idle() == 1
    assert await worker.run_until_idle() == 0
    assert RUNS == [1]


async def test_failing_job_retries_then_goes_dead(ctx: Any) -> None:
    async with ctx.db.transaction() as conn:
        job_id = await jobs.enqueue(conn, "test.fail", {}, max_attempts=2)
    worker = jobs.Worker(ctx)
    await worker.run_until_idle()
    async with ctx.db.connect() as conn:
        row = (await conn.execute(select(jobs_table).where(jobs_table.c.id == job_id))).first()
    assert row.status == "queued" and row.attempts == 1 and "provider said no" in row.last_error
    assert row.run_at > row.created_at  # backed off
    async with ctx.db.transaction() as conn:
        await conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(run_at=row.created_at))
    await worker.run_until_idle()
    async with ctx.db.connect() as conn:
        row = (await conn.execute(select(jobs_table).where(jobs_table.c.id == job_id))).first()
        assert row.status == "dead"
        assert (await jobs.queue_depth(conn))["dead"] == 1


async def test_expired_lease_is_taken_over(ctx: Any) -> None:
    from datetime import timedelta

    from shipyard.core.db import utcnow

    RUNS.clear()
    async with ctx.db.transaction() as conn:
        job_id = await jobs.enqueue(conn, "test.record", {"n": 7})
        # A worker that died mid-job: running, lease already expired.
        await conn.execute(
            jobs_table.update()
            .where(jobs_table.c.id == job_id)
            .values(status="running", locked_by="dead-worker", locked_until=utcnow() - timedelta(seconds=1), attempts=1)
        )
    await jobs.Worker(ctx).run_until_idle()
    assert RUNS == [7]
