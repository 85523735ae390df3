"""Benchmark: core on its own — the gateway and auth on an admin read and a client write,
and the durable job queue — each next to a baseline measured in the same run.

    python bench/core_gateway.py [--quick] [--seconds 15] [--connections 32] [--jobs 5000]
                                 [--db sqlite,postgres] [--postgres-admin URL] [--json]

(a) ``GET /api/v1/projects`` with a secret key: key hashing and cache, authentication,
    the per-key and per-IP rate-limit checks, request id, JSON access log (on, as in
    production), metrics, one project query, pagination. Baseline: a minimal ASGI app under
    the same uvicorn that compares the bearer token and runs the same project query on the
    same SQLite file with aiosqlite, answering the same JSON.
(b) ``POST /push/v1/devices`` with the public key (``X-Shipyard-Key``) and a fresh push
    token per request: public-key lookup, CORS/guard, body parse and validation, one write
    transaction (upsert, read back, topics). Baseline: a minimal ASGI app that parses the
    same body and does the same upsert + read back in one transaction on the same file.
(c) the job queue on SQLite and PostgreSQL: jobs enqueued per second (one job per
    transaction, 8 concurrent producers, as features enqueue next to their own change)
    vs raw driver inserts of the same rows into the same table; a backlog drained by one
    real ``shipyard worker`` process (no-op handler, default concurrency); and jobs
    enqueued while that worker runs: completed/s and enqueue-to-done latency.

The server and the worker are pinned to CPU 0, wrk and the job producers to CPU 1 when
there are two. Server CPU time per request (from /proc) is printed next to the figures:
it is what to compare on a loaded machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.updates_manifest import LUA_DONE, free_port, pin, run_wrk, wait_up  # noqa: E402

LUA_GET = r"""
local headers = {["Authorization"] = "Bearer %(key)s", ["Accept"] = "application/json"}
request = function() return wrk.format("GET", "%(path)s", headers) end
%(done)s
"""

LUA_DEVICE = r"""
local headers = {["X-Shipyard-Key"] = "%(key)s", ["Content-Type"] = "application/json",
                 ["User-Agent"] = "CanaBro/2.4.1 CFNetwork/1494.0.7 Darwin/23.4.0"}
local counter = 0
setup = function(thread) counter = counter + 1; thread:set("seed", os.time() * 100 + counter) end
init = function(args) math.randomseed(seed or os.time()) end
local random = math.random
request = function()
  local token = string.format("ExponentPushToken[%%08x%%08x%%06x]", random(0, 0x7fffffff),
    random(0, 0x7fffffff), random(0, 0xffffff))
  local body = '{"token": "' .. token .. '", "platform": "ios", "app_version": "2.4.1", '
    .. '"locale": "en-US", "permission": "granted"}'
  return wrk.format("POST", "%(path)s", headers, body)
end
%(done)s
"""

BASELINE_APP = r"""
import asyncio
import json
import os
from datetime import UTC, datetime, timedelta

import aiosqlite

DB = os.environ["BENCH_DB"]
PROJECT_ID = int(os.environ["BENCH_PROJECT_ID"])
SECRET = ("Bearer " + os.environ["BENCH_SECRET"]).encode()
PUBLIC = os.environ["BENCH_PUBLIC"].encode()
state = {}


async def connection():
    if "db" not in state:
        db = await aiosqlite.connect(DB, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA busy_timeout=30000")
        await db.execute(
            "CREATE TABLE IF NOT EXISTS bench_devices (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL, "
            "token TEXT NOT NULL, provider TEXT, platform TEXT, app_version TEXT, locale TEXT, "
            "permission TEXT, active BOOLEAN, created_at TEXT, updated_at TEXT, last_seen_at TEXT, "
            "UNIQUE (project_id, token))"
        )
        state["db"] = db
        state["lock"] = asyncio.Lock()
    return state["db"], state["lock"]


async def answer(send, status, payload):
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    db, lock = await connection()
    if scope["method"] == "GET":
        if headers.get(b"authorization") != SECRET:
            await answer(send, 401, {"error": {"code": "unauthorized", "message": "no"}})
            return
        async with db.execute("SELECT id, slug, name FROM projects WHERE id = ?", (PROJECT_ID,)) as cursor:
            row = await cursor.fetchone()
        item = {"id": row[0], "slug": row[1], "name": row[2], "role": "admin"}
        await answer(send, 200, {"data": [item], "next_cursor": None})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if headers.get(b"x-shipyard-key") != PUBLIC:
        await answer(send, 401, {"error": {"code": "unauthorized", "message": "no"}})
        return
    data = json.loads(body)
    now = str(datetime.now(UTC).replace(tzinfo=None))
    async with lock:
        await db.execute("BEGIN")
        await db.execute(
            "INSERT INTO bench_devices (project_id, token, provider, platform, app_version, locale, permission, "
            "active, created_at, updated_at, last_seen_at) VALUES (?, ?, 'expo', ?, ?, ?, ?, 1, ?, ?, ?) "
            "ON CONFLICT (project_id, token) DO UPDATE SET updated_at = excluded.updated_at, "
            "last_seen_at = excluded.last_seen_at, active = 1",
            (PROJECT_ID, data["token"], data["platform"], data.get("app_version"), data.get("locale"),
             data.get("permission"), now, now, now),
        )
        async with db.execute(
            "SELECT id, token, platform, active FROM bench_devices WHERE project_id = ? AND token = ?",
            (PROJECT_ID, data["token"]),
        ) as cursor:
            row = await cursor.fetchone()
        await db.execute("COMMIT")
    await answer(send, 200, {"id": row[0], "token": row[1], "platform": row[2], "active": bool(row[3]),
                             "provider": "expo", "topics": []})
"""

WORKER_PROBE = """
import sys
from shipyard.core import jobs


@jobs.handler("bench.noop")
async def noop(ctx, payload, job):
    return None


if __name__ == "__main__":
    from shipyard.cli import main

    main(["worker", *sys.argv[1:]])
"""

DEVICE_BODY = {"platform": "ios", "app_version": "2.4.1", "locale": "en-US", "permission": "granted"}


# --- helpers ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), so costs compare on a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_wrk(
    proc: subprocess.Popen[bytes], url: str, script: str, seconds: int, connections: int, work: Path, name: str
) -> dict[str, Any]:
    run_wrk(url, script, 2, connections, work, f"warm-{name}")
    before = cpu_seconds(proc.pid)
    result = run_wrk(url, script, seconds, connections, work, name)
    result["cpu_us_per_request"] = (cpu_seconds(proc.pid) - before) / max(1, result["requests"]) * 1e6
    return result


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A real `shipyard worker` process with the no-op handler loaded, on the server's CPU."""
    return subprocess.Popen(
        [*pin(0), sys.executable, "-m", "core_bench_probe"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def base_env(work: Path, port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(work)]),
        "SHIPYARD_DATA_DIR": str(work / "data"),
        "SHIPYARD_PUBLIC_URL": url,
        "SHIPYARD_PORT": str(port),
        "SHIPYARD_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "SHIPYARD_LOG_LEVEL": "INFO",
        "SHIPYARD_RATE_LIMIT_PER_IP": "100000000/minute",
        "SHIPYARD_RATE_LIMIT_PER_KEY": "100000000/minute",
    }


# --- (a) and (b): the gateway -------------------------------------------------------------------


def bench_gateway(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(work, port)
    creds = json.loads(
        subprocess.run(
            [sys.executable, "-m", "shipyard.cli", "init", "--json"], env=env, capture_output=True, check=True
        ).stdout
    )
    # The access log is on (it is in production); it goes to a file, not a terminal.
    log_file = (work / "server.log").open("wb")
    server = subprocess.Popen(
        [*pin(0), sys.executable, "-m", "shipyard.cli", "serve"], env=env, stdout=log_file, stderr=log_file
    )
    try:
        wait_up(url + "/healthz", server)
        admin_path = "/api/v1/projects"
        probe = httpx.get(url + admin_path, headers={"Authorization": f"Bearer {creds['secret_key']}"})
        probe.raise_for_status()
        device_path = "/push/v1/devices"
        first = httpx.post(
            url + device_path,
            headers={"X-Shipyard-Key": creds["public_key"]},
            json={"token": "ExponentPushToken[probe]", **DEVICE_BODY},
        )
        first.raise_for_status()
        admin_script = LUA_GET % {"key": creds["secret_key"], "path": admin_path, "done": LUA_DONE}
        device_script = LUA_DEVICE % {"key": creds["public_key"], "path": device_path, "done": LUA_DONE}
        admin = measured_wrk(server, url, admin_script, args.seconds, args.connections, work, "admin")
        device = measured_wrk(server, url, device_script, args.seconds, args.connections, work, "device")
    finally:
        stop(server)
        log_file.close()
    access_lines = sum(1 for _ in (work / "server.log").open("rb"))

    (work / "baseline_app.py").write_text(textwrap.dedent(BASELINE_APP))
    base_port = free_port()
    baseline = subprocess.Popen(
        [
            *pin(0),
            sys.executable,
            "-m",
            "uvicorn",
            "baseline_app:app",
            "--port",
            str(base_port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--no-server-header",
        ],
        cwd=work,
        env={
            **env,
            "BENCH_DB": str(work / "data" / "shipyard.db"),
            "BENCH_PROJECT_ID": str(creds["project_id"]),
            "BENCH_SECRET": creds["secret_key"],
            "BENCH_PUBLIC": creds["public_key"],
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{base_port}"
    try:
        wait_up(base_url + "/", baseline)
        check = httpx.get(base_url + admin_path, headers={"Authorization": f"Bearer {creds['secret_key']}"})
        check.raise_for_status()
        base_admin = measured_wrk(baseline, base_url, admin_script, args.seconds, args.connections, work, "b-admin")
        base_device = measured_wrk(baseline, base_url, device_script, args.seconds, args.connections, work, "b-device")
    finally:
        stop(baseline)
    return {
        "admin_read": {"shipyard": admin, "baseline": base_admin},
        "client_write": {"shipyard": device, "baseline": base_device},
        "access_log_lines": access_lines,
        "body_bytes": {"admin": len(probe.content), "baseline_admin": len(check.content)},
    }


# --- (c): the job queue -------------------------------------------------------------------------


async def _create_pg_database(admin_url: str) -> tuple[str, str]:
    import asyncpg

    name = "bench_core_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


async def _drop_pg_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _timed_concurrently(count: int, concurrency: int, op: Any) -> tuple[float, list[float]]:
    """Run ``op(i)`` for i in range(count) on ``concurrency`` tasks; wall time and latencies (ms)."""
    latencies: list[float] = []
    counter = iter(range(count))

    async def producer() -> None:
        for i in counter:
            started = time.perf_counter()
            await op(i)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def _rate(count: int, seconds: float, latencies: list[float]) -> dict[str, Any]:
    return {
        "jobs": count,
        "seconds": round(seconds, 3),
        "per_s": count / seconds if seconds else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def _raw_inserts(url: str, count: int, concurrency: int) -> dict[str, Any]:
    """The same job rows, one per transaction, straight through the driver (no SQLAlchemy)."""
    payload = json.dumps({"n": 0, "bench": "raw"})
    if url.startswith("sqlite"):
        import aiosqlite

        db = await aiosqlite.connect(url.split("///", 1)[1], isolation_level=None)
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA busy_timeout=30000")
        lock = asyncio.Lock()

        async def insert(i: int) -> None:
            now = str(datetime.now(UTC).replace(tzinfo=None))
            async with lock:  # one writer, as Shipyard's write lock does
                await db.execute("BEGIN")
                await db.execute(
                    "INSERT INTO jobs (kind, payload, status, priority, run_at, attempts, max_attempts, created_at)"
                    " VALUES ('bench.raw', ?, 'queued', 100, ?, 0, 10, ?)",
                    (payload, now, now),
                )
                await db.execute("COMMIT")

        try:
            seconds, latencies = await _timed_concurrently(count, concurrency, insert)
            await db.execute("DELETE FROM jobs WHERE kind = 'bench.raw'")
        finally:
            await db.close()
        return _rate(count, seconds, latencies)

    import asyncpg

    pool = await asyncpg.create_pool(url.replace("postgresql+asyncpg://", "postgresql://"), min_size=concurrency)

    async def insert_pg(i: int) -> None:
        now = datetime.now(UTC)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO jobs (kind, payload, status, priority, run_at, attempts, max_attempts, created_at)"
                " VALUES ('bench.raw', $1::json, 'queued', 100, $2, 0, 10, $2)",
                payload,
                now,
            )

    try:
        seconds, latencies = await _timed_concurrently(count, concurrency, insert_pg)
        await pool.execute("DELETE FROM jobs WHERE kind = 'bench.raw'")
    finally:
        await pool.close()
    return _rate(count, seconds, latencies)


async def _done_times(db: Any, since_id: int) -> list[tuple[datetime, datetime]]:
    from sqlalchemy import select

    from shipyard.core.models import jobs

    async with db.connect() as conn:
        rows = await conn.execute(
            select(jobs.c.created_at, jobs.c.finished_at).where(
                jobs.c.kind == "bench.noop", jobs.c.status == "done", jobs.c.id > since_id
            )
        )
        return [(r.created_at, r.finished_at) for r in rows]


async def _wait_done(db: Any, since_id: int, count: int, worker: subprocess.Popen[bytes]) -> None:
    from sqlalchemy import func, select

    from shipyard.core.models import jobs

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"worker exited with {worker.returncode}")
        async with db.connect() as conn:
            done = (
                await conn.execute(
                    select(func.count()).where(
                        jobs.c.kind == "bench.noop", jobs.c.status == "done", jobs.c.id > since_id
                    )
                )
            ).scalar_one()
        if done >= count:
            return
        await asyncio.sleep(0.05)
    raise SystemExit("the worker did not finish the jobs in 10 minutes")


async def _wait_ready(db: Any, worker: subprocess.Popen[bytes]) -> None:
    """Until the worker has written its first heartbeat (imports and start-up done)."""
    from sqlalchemy import func, select

    from shipyard.core.models import worker_heartbeats

    for _ in range(1200):
        if worker.poll() is not None:
            raise SystemExit(f"worker exited with {worker.returncode}")
        async with db.connect() as conn:
            if (await conn.execute(select(func.count()).select_from(worker_heartbeats))).scalar_one():
                return
        await asyncio.sleep(0.05)
    raise SystemExit("the worker did not start in 60 s")


async def _make_due(db: Any, since_id: int) -> None:
    from sqlalchemy import update

    from shipyard.core.models import jobs

    async with db.transaction() as conn:
        await conn.execute(
            update(jobs).where(jobs.c.kind == "bench.noop", jobs.c.id > since_id).values(run_at=datetime.now(UTC))
        )


async def _max_job_id(db: Any) -> int:
    from sqlalchemy import func, select

    from shipyard.core.models import jobs

    async with db.connect() as conn:
        return int((await conn.execute(select(func.coalesce(func.max(jobs.c.id), 0)))).scalar_one())


async def bench_jobs_async(url: str, env: dict[str, str], count: int, seconds: int) -> dict[str, Any]:
    from shipyard.core import jobs
    from shipyard.core.db import Database

    db = Database(url)
    concurrency = 8

    async def enqueue_one(i: int, run_at: datetime | None = None) -> None:
        async with db.transaction() as conn:
            await jobs.enqueue(conn, "bench.noop", {"n": i, "bench": "queue"}, run_at=run_at)

    try:
        raw = await _raw_inserts(url, count, concurrency)
        # The worker starts first (its start-up is not a per-job cost) and idles: the jobs
        # enqueued now are due in an hour, then all become due at once — a backlog.
        worker = start_worker(env)
        try:
            await _wait_ready(db, worker)
            start_id = await _max_job_id(db)
            later = datetime.now(UTC) + timedelta(hours=1)
            enq_seconds, enq_lat = await _timed_concurrently(count, concurrency, lambda i: enqueue_one(i, later))
            enqueue = _rate(count, enq_seconds, enq_lat)
            cpu_before = cpu_seconds(worker.pid)
            await _make_due(db, start_id)
            await _wait_done(db, start_id, count, worker)
            drain_cpu = cpu_seconds(worker.pid) - cpu_before
            times = await _done_times(db, start_id)
            finished = sorted(f for _c, f in times)
            drain_span = (finished[-1] - finished[0]).total_seconds()
            drain = {
                "jobs": count,
                "per_s": (count - 1) / drain_span if drain_span else 0.0,
                "worker_cpu_us_per_job": drain_cpu / count * 1e6,
            }

            # Live: producers enqueue at full speed for `seconds` while the worker runs.
            live_start = await _max_job_id(db)
            produced = 0
            stop_at = time.perf_counter() + seconds
            live_lat: list[float] = []

            async def live_producer() -> None:
                nonlocal produced
                while time.perf_counter() < stop_at:
                    started = time.perf_counter()
                    await enqueue_one(produced)
                    produced += 1
                    live_lat.append((time.perf_counter() - started) * 1000)

            cpu_before = cpu_seconds(worker.pid)
            t0 = time.perf_counter()
            await asyncio.gather(*(live_producer() for _ in range(concurrency)))
            enqueue_span = time.perf_counter() - t0
            await _wait_done(db, live_start, produced, worker)
            live_cpu = cpu_seconds(worker.pid) - cpu_before
            times = await _done_times(db, live_start)
            spans = [(f - c).total_seconds() * 1000 for c, f in times]
            first_created = min(c for c, _f in times)
            last_finished = max(f for _c, f in times)
            live = {
                "jobs": produced,
                "enqueued_per_s": produced / enqueue_span,
                "enqueue_p50_ms": percentile(live_lat, 50),
                "enqueue_p99_ms": percentile(live_lat, 99),
                "completed_per_s": produced / (last_finished - first_created).total_seconds(),
                "enqueue_to_done_p50_ms": percentile(spans, 50),
                "enqueue_to_done_p99_ms": percentile(spans, 99),
                "worker_cpu_us_per_job": live_cpu / produced * 1e6,
            }
        finally:
            stop(worker)
    finally:
        await db.dispose()
    return {"enqueue": enqueue, "raw_insert": raw, "drain": drain, "live": live}


def bench_jobs(args: argparse.Namespace, work: Path, backend: str) -> dict[str, Any]:
    job_work = work / f"jobs-{backend}"
    job_work.mkdir()
    (job_work / "core_bench_probe.py").write_text(textwrap.dedent(WORKER_PROBE))
    env = base_env(job_work, free_port())
    pg_name = None
    if backend == "postgres":
        pg_name, url = asyncio.run(_create_pg_database(args.postgres_admin))
        env["SHIPYARD_DATABASE_URL"] = url
    else:
        url = f"sqlite:///{job_work / 'data' / 'shipyard.db'}"
    try:
        subprocess.run([sys.executable, "-m", "shipyard.cli", "migrate"], env=env, capture_output=True, check=True)
        return asyncio.run(bench_jobs_async(url, env, args.jobs, args.seconds))
    finally:
        if pg_name:
            asyncio.run(_drop_pg_database(args.postgres_admin, pg_name))


# --- report -------------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    print(f"load average at start: {results['loadavg_start']}, at end: {results['loadavg_end']}")
    gw = results.get("gateway")
    if gw:
        print(
            f"\n(a)/(b) gateway, SQLite, {results['connections']} connections, {results['seconds']} s each, "
            f"access log on ({gw['access_log_lines']} JSON lines written)"
        )
        print(f"{'':<44}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}{'errors':>8}")
        rows = (
            ("shipyard GET /api/v1/projects (secret key)", gw["admin_read"]["shipyard"]),
            ("baseline: bearer check + same SELECT", gw["admin_read"]["baseline"]),
            ("shipyard POST /push/v1/devices (public key)", gw["client_write"]["shipyard"]),
            ("baseline: parse + same upsert/read, commit", gw["client_write"]["baseline"]),
        )
        for name, r in rows:
            print(
                f"{name:<44}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                f"{r['cpu_us_per_request']:>12.0f}{r['errors']:>8}"
            )
        for label, key in (("admin read", "admin_read"), ("client write", "client_write")):
            pair = gw[key]
            print(f"ratio shipyard/baseline, {label}: {pair['shipyard']['rps'] / pair['baseline']['rps']:.2f}")
    for backend, jr in results.get("jobs", {}).items():
        e, raw, d, live = jr["enqueue"], jr["raw_insert"], jr["drain"], jr["live"]
        print(f"\n(c) job queue on {backend}, {e['jobs']} jobs, 8 producers, one job per transaction")
        print(f"{'':<44}{'jobs/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
        print(f"{'shipyard enqueue()':<44}{e['per_s']:>9.0f}{e['p50_ms']:>9.2f}{e['p99_ms']:>9.2f}")
        print(f"{'baseline: raw driver INSERT':<44}{raw['per_s']:>9.0f}{raw['p50_ms']:>9.2f}{raw['p99_ms']:>9.2f}")
        print(
            f"backlog drained by one `shipyard worker`: {d['per_s']:.0f} jobs/s claimed+completed, "
            f"{d['worker_cpu_us_per_job']:.0f} µs worker CPU per job"
        )
        print(
            f"live ({results['seconds']} s of producers with the worker running): {live['jobs']} jobs, "
            f"enqueued {live['enqueued_per_s']:.0f}/s (p50 {live['enqueue_p50_ms']:.2f} ms, "
            f"p99 {live['enqueue_p99_ms']:.2f} ms), completed {live['completed_per_s']:.0f}/s, "
            f"enqueue→done p50 {live['enqueue_to_done_p50_ms']:.0f} ms, p99 {live['enqueue_to_done_p99_ms']:.0f} ms, "
            f"{live['worker_cpu_us_per_job']:.0f} µs worker CPU per job"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per queue measurement")
    parser.add_argument("--db", default="sqlite,postgres", help="job-queue backends: sqlite,postgres")
    parser.add_argument(
        "--postgres-admin",
        default=os.environ.get("SHIPYARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL database to connect to while creating and dropping a scratch database",
    )
    parser.add_argument("--only", choices=["gateway", "jobs"], help="run one half only")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test, not a measurement")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.jobs = 3, 500
    if not shutil.which("wrk") and args.only != "jobs":
        raise SystemExit("wrk is required: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-core-"))
    results: dict[str, Any] = {
        "seconds": args.seconds,
        "connections": args.connections,
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    try:
        if args.only != "jobs":
            results["gateway"] = bench_gateway(args, work)
        if args.only != "gateway":
            if len(pin(1)) and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {1})  # the producers run here, away from the worker's CPU
            results["jobs"] = {backend: bench_jobs(args, work, backend) for backend in args.db.split(",") if backend}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print_report(results)


if __name__ == "__main__":
    main()
