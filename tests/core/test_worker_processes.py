"""Real `shipyard worker` processes: a worker killed with SIGKILL mid-job loses nothing, and
two workers on PostgreSQL drain 1,000 jobs with each job run exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from shipyard.core import jobs
from shipyard.core.models import jobs as jobs_table
from shipyard.core.models import worker_heartbeats
from tests.conftest import _create_pg_database, _drop_pg_database, _unavailable, make_ctx, make_settings

ROOT = Path(__file__).resolve().parents[2]


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "tests.core.jobs_probe", "--concurrency", "8"],
        env=env,
        cwd=ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def worker_env(settings: Any) -> dict[str, str]:
    return {
        **os.environ,
        "SHIPYARD_DATA_DIR": str(settings.data_dir),
        "SHIPYARD_DATABASE_URL": settings.resolved_database_url,
        "SHIPYARD_SECRET_KEY": settings.secret_key,
        "SHIPYARD_JOB_LEASE_SECONDS": "2",
        "SHIPYARD_JOB_POLL_INTERVAL": "0.05",
        "SHIPYARD_LOG_LEVEL": "WARNING",
    }


def read_events(path: Path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    return [(e, int(j), int(p)) for e, j, p in (line.split() for line in path.read_text().splitlines())]


async def wait_for(predicate: Any, seconds: float, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return
        for proc in procs:
            assert proc.poll() is None or proc.returncode == -signal.SIGKILL, f"a worker exited ({proc.returncode})"
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Empty (SQLite in the data dir) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield ""
        return
    try:
        url = await _create_pg_database()
    except Exception as exc:  # noqa: BLE001
        _unavailable("PostgreSQL", str(exc))
    try:
        yield url
    finally:
        await _drop_pg_database(url)


async def test_sigkilled_worker_job_is_retried_after_its_lease(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url=database_url)
    ctx = await make_ctx(settings)
    env = worker_env(settings)
    events = tmp_path / "events.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with ctx.db.transaction() as conn:
            job_id = await jobs.enqueue(
                conn, "probe.record", {"log": str(events), "hang_first_attempt": True}, max_attempts=3
            )
        first = start_worker(env, tmp_path / "w1.log")
        procs.append(first)

        async def started() -> bool:
            return any(e == "start" for e, _, _ in read_events(events))

        await wait_for(started, 60, "the first worker to start the job", procs)
        second = start_worker(env, tmp_path / "w2.log")
        procs.append(second)

        async def second_up() -> bool:
            async with ctx.db.connect() as conn:
                return (await conn.execute(select(func.count()).select_from(worker_heartbeats))).scalar_one() == 2

        # While the first worker lives, it keeps renewing its lease: the second leaves the job alone.
        await wait_for(second_up, 60, "the second worker", procs)
        await asyncio.sleep(2.5)
        assert len(read_events(events)) == 1
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

        async def finished() -> bool:
            async with ctx.db.connect() as conn:
                status = (await conn.execute(select(jobs_table.c.status).where(jobs_table.c.id == job_id))).scalar()
            return status == "done"

        await wait_for(finished, 60, "the job to complete on the second worker", procs)
        runs = read_events(events)
        assert [(e, p) for e, _, p in runs] == [("start", first.pid), ("start", second.pid), ("done", second.pid)]
        async with ctx.db.connect() as conn:
            row = (await conn.execute(select(jobs_table).where(jobs_table.c.id == job_id))).one()
        assert row.attempts == 2 and row.locked_by is None
    finally:
        stop(procs)
        await ctx.close()


async def test_two_workers_on_postgresql_run_1000_jobs_exactly_once(tmp_path: Path, pg_url: str) -> None:
    settings = make_settings(tmp_path, database_url=pg_url)
    ctx = await make_ctx(settings)
    env = worker_env(settings)
    env["SHIPYARD_JOB_LEASE_SECONDS"] = "30"
    events = tmp_path / "events.log"
    procs = [start_worker(env, tmp_path / "w1.log"), start_worker(env, tmp_path / "w2.log")]
    try:

        async def both_up() -> bool:
            async with ctx.db.connect() as conn:
                return (await conn.execute(select(func.count()).select_from(worker_heartbeats))).scalar_one() == 2

        await wait_for(both_up, 60, "two worker heartbeats", procs)
        async with ctx.db.transaction() as conn:
            for _ in range(1000):
                await jobs.enqueue(conn, "probe.record", {"log": str(events), "sleep": 0.002})

        async def drained() -> bool:
            async with ctx.db.connect() as conn:
                return (await jobs.queue_depth(conn))["queued"] + (await jobs.queue_depth(conn))["running"] == 0

        await wait_for(drained, 240, "the queue to drain", procs)
        runs = read_events(events)
        done = Counter(j for e, j, _ in runs if e == "done")
        started = Counter(j for e, j, _ in runs if e == "start")
        assert len(done) == 1000 and set(done.values()) == {1} and set(started.values()) == {1}
        assert {p for _, _, p in runs} == {procs[0].pid, procs[1].pid}  # both workers took part
        async with ctx.db.connect() as conn:
            probe = jobs_table.c.kind == "probe.record"
            statuses = dict(
                (await conn.execute(select(jobs_table.c.status, func.count()).where(probe).group_by("status"))).all()
            )
            attempts = (await conn.execute(select(func.max(jobs_table.c.attempts)).where(probe))).scalar_one()
        assert statuses == {"done": 1000} and attempts == 1
    finally:
        stop(procs)
        await ctx.close()


async def test_sigterm_finishes_short_jobs_and_releases_long_ones(tmp_path: Path, database_url: str) -> None:
    """`kill -TERM` a worker running two jobs: the one that ends within the grace period
    completes; the other is cancelled and queued again at once (attempt refunded, no
    lease to wait for), and the next worker runs it to completion."""
    settings = make_settings(tmp_path, database_url=database_url)
    ctx = await make_ctx(settings)
    env = worker_env(settings)
    env["SHIPYARD_JOB_LEASE_SECONDS"] = "600"  # a released job must not wait for its lease
    env["SHIPYARD_JOB_SHUTDOWN_GRACE_SECONDS"] = "3"
    events = tmp_path / "events.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with ctx.db.transaction() as conn:
            short_id = await jobs.enqueue(conn, "probe.record", {"log": str(events), "sleep": 1.0})
            long_id = await jobs.enqueue(
                conn, "probe.record", {"log": str(events), "hang_once_marker": str(tmp_path / "hung")}
            )
        first = start_worker(env, tmp_path / "w1.log")
        procs.append(first)

        async def both_started() -> bool:
            return {j for e, j, _ in read_events(events) if e == "start"} == {short_id, long_id}

        await wait_for(both_started, 60, "the worker to start both jobs", procs)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0  # a clean exit, after at most the grace period

        async with ctx.db.connect() as conn:
            rows = {r.id: r for r in (await conn.execute(select(jobs_table))).all()}
            heartbeats = (await conn.execute(select(func.count()).select_from(worker_heartbeats))).scalar_one()
        assert rows[short_id].status == "done"
        released = rows[long_id]
        assert (released.status, released.locked_by, released.attempts) == ("queued", None, 0)
        assert heartbeats == 0  # the worker signed off: /readyz does not count it any more
        assert ("done", short_id, first.pid) in read_events(events)

        second = start_worker(env, tmp_path / "w2.log")
        procs.append(second)

        async def long_done() -> bool:
            async with ctx.db.connect() as conn:
                status = (await conn.execute(select(jobs_table.c.status).where(jobs_table.c.id == long_id))).scalar()
            return status == "done"

        # Well within the 600 s lease: the job was handed back, not abandoned.
        await wait_for(long_done, 60, "the released job to run on the next worker", [second])
        runs = [(e, j, p) for e, j, p in read_events(events) if j == long_id]
        assert runs == [("start", long_id, first.pid), ("start", long_id, second.pid), ("done", long_id, second.pid)]
    finally:
        stop(procs)
        await ctx.close()
