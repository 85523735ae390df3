"""Durable background jobs in the database.

* :func:`enqueue` inserts a job inside the caller's transaction, so the job exists
  exactly when the change that needs it was committed. An idempotency key makes a
  second enqueue of the same work a no-op.
* :class:`Worker` claims due jobs (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite
  has a single writer), holds them under a lease it keeps renewing while the handler
  runs, and records the outcome. A worker that dies loses its lease and another
  worker takes the job over after ``job_lease_seconds``.
* Failures retry with exponential backoff and jitter up to ``max_attempts``, then the
  job is ``dead`` (visible in the API and metrics).
* Recurring schedules (cron expressions) enqueue with the idempotency key
  ``cron:<name>:<fire time>``, so a period fires once however many workers run.

Handlers must be safe to run again after a crash between their side effect and the
commit of ``done`` (at-least-once); those that send something record what they sent in
their own tables and check it first, which makes delivery effectively exactly-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.db import insert_ignore, upsert, utcnow
from shipyard.core.models import job_schedules, jobs, worker_heartbeats

log = logging.getLogger("shipyard.jobs")

JOBS_FINISHED = Counter("shipyard_jobs_finished_total", "Jobs finished, by kind and outcome", ["kind", "outcome"])
JOB_SECONDS = Histogram("shipyard_job_duration_seconds", "Time spent running a job", ["kind"])
QUEUE_DEPTH = Gauge("shipyard_jobs_queue_depth", "Jobs by status (refreshed by workers)", ["status"])


@dataclass(frozen=True)
class JobInfo:
    id: int
    kind: str
    attempts: int
    max_attempts: int
    project_id: int | None


Handler = Callable[[Context, dict[str, Any], JobInfo], Awaitable[None]]
_handlers: dict[str, Handler] = {}
_schedules: dict[str, tuple[str, str, dict[str, Any]]] = {}


class RetryLater(Exception):  # noqa: N818  (a signal, not an error)
    """Raise from a handler to run the job again after ``delay`` seconds without
    counting it as a failure (e.g. a provider's circuit is open)."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class PermanentFailure(Exception):
    """Raise from a handler when retrying cannot help; the job goes straight to dead."""


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register ``async def fn(ctx, payload, job)`` as the handler for ``kind``."""

    def register(fn: Handler) -> Handler:
        _handlers[kind] = fn
        return fn

    return register


def recurring(name: str, cron: str, kind: str, payload: dict[str, Any] | None = None) -> None:
    """Declare a recurring schedule; workers store it and fire it once per period."""
    croniter(cron)  # validates now, not at 3 a.m.
    _schedules[name] = (cron, kind, payload or {})


def registered_kinds() -> list[str]:
    return sorted(_handlers)


async def enqueue(
    conn: AsyncConnection,
    kind: str,
    payload: dict[str, Any],
    *,
    run_at: datetime | None = None,
    priority: int = 100,
    idempotency_key: str | None = None,
    max_attempts: int = 10,
    project_id: int | None = None,
) -> int | None:
    """Insert a job; returns its id, or None when the idempotency key already exists."""
    now = utcnow()
    values = {
        "kind": kind,
        "payload": payload,
        "status": "queued",
        "priority": priority,
        "run_at": run_at or now,
        "idempotency_key": idempotency_key,
        "attempts": 0,
        "max_attempts": max_attempts,
        "project_id": project_id,
        "created_at": now,
    }
    if idempotency_key is None:
        result = await conn.execute(jobs.insert().values(values).returning(jobs.c.id))
        return int(result.scalar_one())
    stmt = insert_ignore(conn, jobs, values, conflict_columns=["idempotency_key"]).returning(jobs.c.id)
    return (await conn.execute(stmt)).scalar()


async def cancel(conn: AsyncConnection, job_id: int) -> bool:
    result = await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == "queued")
        .values(status="cancelled", finished_at=utcnow())
    )
    return bool(result.rowcount)


async def retry_dead(conn: AsyncConnection, job_id: int) -> bool:
    result = await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == "dead")
        .values(status="queued", attempts=0, run_at=utcnow(), last_error=None, finished_at=None)
    )
    return bool(result.rowcount)


async def queue_depth(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(
        select(jobs.c.status, func.count())
        .where(jobs.c.status.in_(["queued", "running", "dead"]))
        .group_by(jobs.c.status)
    )
    depth = {"queued": 0, "running": 0, "dead": 0}
    depth.update({status: count for status, count in rows.all()})
    return depth


def backoff_seconds(attempt: int, base: float = 2.0, cap: float = 3600.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)]."""
    return random.uniform(base / 2, min(cap, base * 2 ** max(0, attempt - 1)))


class Worker:
    """Claims and runs jobs until :meth:`stop` is called."""

    def __init__(self, ctx: Context, *, concurrency: int | None = None, worker_id: str | None = None) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.concurrency = concurrency or settings.job_concurrency
        self.lease = timedelta(seconds=settings.job_lease_seconds)
        self.poll_interval = settings.job_poll_interval
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._last_cron_check = 0.0

    def wake(self) -> None:
        """Look for due jobs now (called after an enqueue in the same process)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self, *, shutdown_grace: float | None = None) -> None:
        """Claim and run jobs until :meth:`stop`; then finish or release what is running
        (``shutdown_grace`` seconds, default ``job_shutdown_grace_seconds``)."""
        if shutdown_grace is None:
            shutdown_grace = float(self.ctx.settings.job_shutdown_grace_seconds)
        await self._register_schedules()
        await self._heartbeat(first=True)
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        try:
            while not self._stopping.is_set():
                try:
                    await self._fire_due_schedules()
                    free = self.concurrency - len(self._running)
                    claimed = await self._claim(free) if free > 0 else []
                except Exception as exc:  # database away: keep the worker alive, retry soon
                    log.warning("worker poll failed: %s", exc)
                    claimed = []
                for job, payload in claimed:
                    task = asyncio.create_task(self._execute(job, payload))
                    self._running[job.id] = task
                    task.add_done_callback(functools.partial(self._forget, job.id))
                if claimed and len(claimed) == free:
                    continue  # more may be due: go again without sleeping
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
        finally:
            heartbeat.cancel()
            await self._shutdown(shutdown_grace)

    def _forget(self, job_id: int, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._wake.set()  # a slot is free: claim the next due job now, not at the next poll

    async def run_until_idle(self, max_rounds: int = 1000) -> int:
        """Run due jobs until none are left (tests and `shipyard jobs run-once`)."""
        await self._register_schedules()
        done = 0
        for _ in range(max_rounds):
            claimed = await self._claim(self.concurrency)
            if not claimed:
                break
            await asyncio.gather(*(self._execute(job, payload) for job, payload in claimed))
            done += len(claimed)
        return done

    async def _shutdown(self, grace: float) -> None:
        if self._running:
            log.info("worker %s stopping: waiting up to %g s for %d running jobs", self.id, grace, len(self._running))
            _done, pending = await asyncio.wait(list(self._running.values()), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        # Whatever did not finish goes back to the queue now rather than after its lease.
        async with self.ctx.db.transaction() as conn:
            released = await conn.execute(
                update(jobs)
                .where(jobs.c.locked_by == self.id, jobs.c.status == "running")
                .values(
                    status="queued", locked_by=None, locked_until=None, run_at=utcnow(), attempts=jobs.c.attempts - 1
                )
            )
            if released.rowcount:
                log.warning("worker %s released %d unfinished jobs back to the queue", self.id, released.rowcount)
            await conn.execute(worker_heartbeats.delete().where(worker_heartbeats.c.worker_id == self.id))

    async def _claim(self, limit: int) -> list[tuple[JobInfo, dict[str, Any]]]:
        """Lease up to ``limit`` due jobs; each with its payload (one round trip, not two)."""
        now = utcnow()
        due = or_(
            and_(jobs.c.status == "queued", jobs.c.run_at <= now),
            and_(jobs.c.status == "running", jobs.c.locked_until < now),
        )
        candidates = select(jobs.c.id).where(due).order_by(jobs.c.priority, jobs.c.run_at).limit(limit)
        if not self.ctx.db.is_sqlite:
            candidates = candidates.with_for_update(skip_locked=True)
        stmt = (
            update(jobs)
            .where(jobs.c.id.in_(candidates.scalar_subquery()))
            .values(status="running", locked_by=self.id, locked_until=now + self.lease, attempts=jobs.c.attempts + 1)
            .returning(jobs.c.id, jobs.c.kind, jobs.c.attempts, jobs.c.max_attempts, jobs.c.project_id, jobs.c.payload)
        )
        async with self.ctx.db.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(JobInfo(r.id, r.kind, r.attempts, r.max_attempts, r.project_id), r.payload) for r in rows]

    async def _execute(self, job: JobInfo, payload: dict[str, Any]) -> None:
        fn = _handlers.get(job.kind)
        renew = asyncio.create_task(self._renew_lease(job.id))
        started = asyncio.get_running_loop().time()
        try:
            if fn is None:
                raise PermanentFailure(f"no handler registered for job kind {job.kind!r}")
            await fn(self.ctx, payload, job)
        except RetryLater as later:
            await self._finish(
                job,
                "queued",
                run_at=utcnow() + timedelta(seconds=later.delay),
                error=later.reason or None,
                refund_attempt=True,
            )
            JOBS_FINISHED.labels(job.kind, "deferred").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            permanent = isinstance(exc, PermanentFailure) or job.attempts >= job.max_attempts
            error = f"{type(exc).__name__}: {exc}"[:4000]
            log.warning("job %s (%s) attempt %s failed: %s", job.id, job.kind, job.attempts, error)
            if permanent:
                await self._finish(job, "dead", error=error)
                JOBS_FINISHED.labels(job.kind, "dead").inc()
            else:
                await self._finish(
                    job, "queued", error=error, run_at=utcnow() + timedelta(seconds=backoff_seconds(job.attempts))
                )
                JOBS_FINISHED.labels(job.kind, "retry").inc()
        else:
            await self._finish(job, "done")
            JOBS_FINISHED.labels(job.kind, "done").inc()
        finally:
            renew.cancel()
            JOB_SECONDS.labels(job.kind).observe(asyncio.get_running_loop().time() - started)

    async def _finish(
        self,
        job: JobInfo,
        status: str,
        *,
        error: str | None = None,
        run_at: datetime | None = None,
        refund_attempt: bool = False,
    ) -> None:
        values: dict[str, Any] = {"status": status, "locked_by": None, "locked_until": None, "last_error": error}
        if status in ("done", "dead"):
            values["finished_at"] = utcnow()
        if run_at is not None:
            values["run_at"] = run_at
        if refund_attempt:
            values["attempts"] = jobs.c.attempts - 1
        async with self.ctx.db.transaction() as conn:
            # Only the lease holder may finish the job: if our lease lapsed and another
            # worker took it over, its outcome wins.
            await conn.execute(update(jobs).where(jobs.c.id == job.id, jobs.c.locked_by == self.id).values(**values))

    async def _renew_lease(self, job_id: int) -> None:
        interval = max(1.0, self.lease.total_seconds() / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.ctx.db.transaction() as conn:
                    await conn.execute(
                        update(jobs)
                        .where(jobs.c.id == job_id, jobs.c.locked_by == self.id)
                        .values(locked_until=utcnow() + self.lease)
                    )
            except Exception as exc:
                log.warning("lease renewal for job %s failed: %s", job_id, exc)

    async def _register_schedules(self) -> None:
        if not _schedules:
            return
        async with self.ctx.db.transaction() as conn:
            for name, (cron, kind, payload) in _schedules.items():
                await conn.execute(
                    upsert(
                        conn,
                        job_schedules,
                        {"name": name, "cron": cron, "kind": kind, "payload": payload, "enabled": True},
                        conflict_columns=["name"],
                        update={"cron": cron, "kind": kind, "payload": payload},
                    )
                )

    async def _fire_due_schedules(self) -> None:
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._last_cron_check < 5:
            return
        self._last_cron_check = loop_time
        now = utcnow()
        async with self.ctx.db.connect() as conn:
            schedules = (await conn.execute(select(job_schedules).where(job_schedules.c.enabled))).all()
        for s in schedules:
            fire_time = croniter(s.cron, now).get_prev(datetime)
            if s.last_fired_at is not None and s.last_fired_at >= fire_time:
                continue
            async with self.ctx.db.transaction() as conn:
                await enqueue(
                    conn,
                    s.kind,
                    dict(s.payload, scheduled_for=fire_time.isoformat()),
                    idempotency_key=f"cron:{s.name}:{fire_time.isoformat()}",
                    priority=50,
                )
                await conn.execute(
                    update(job_schedules).where(job_schedules.c.name == s.name).values(last_fired_at=fire_time)
                )

    async def _heartbeat(self, first: bool = False) -> None:
        now = utcnow()
        async with self.ctx.db.transaction() as conn:
            values = {
                "worker_id": self.id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": now,
                "last_seen_at": now,
            }
            await conn.execute(
                upsert(conn, worker_heartbeats, values, conflict_columns=["worker_id"], update={"last_seen_at": now})
            )
            if first:
                return
            for status, count in (await queue_depth(conn)).items():
                QUEUE_DEPTH.labels(status).set(count)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(10)
            try:
                await self._heartbeat()
            except Exception as exc:
                log.warning("worker heartbeat failed: %s", exc)


async def newest_heartbeat(conn: AsyncConnection) -> datetime | None:
    value = (await conn.execute(select(func.max(worker_heartbeats.c.last_seen_at)))).scalar()
    if isinstance(value, str):  # SQLite aggregate loses the column type
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    return value


async def prune_finished(conn: AsyncConnection, older_than: timedelta) -> int:
    cutoff = utcnow() - older_than
    result = await conn.execute(
        jobs.delete().where(jobs.c.status.in_(["done", "cancelled"]), jobs.c.finished_at < cutoff)
    )
    return int(result.rowcount or 0)


__all__ = ["JobInfo", "PermanentFailure", "RetryLater", "Worker", "enqueue", "handler", "recurring"]
