"""Benchmark: Segment `/v1/batch` ingest of a real `shipyard serve`, next to raw inserts of
the same rows into the same database in the same run.

    python bench/analytics_ingest.py [--batches 1500] [--concurrency 16] [--postgres] [--quick]

Load: this process (pinned to CPU 1) posts pre-built batches of 100 realistic messages
(React Native SDK shape: screens, tracks with properties, a few identifies, full mobile
`context`) from `--concurrency` concurrent asyncio httpx clients to `/v1/batch` of a
`shipyard serve` subprocess (pinned to CPU 0). A 200 means the batch is committed; after
the run the rows in the database are counted and must equal the acknowledged messages.

Baseline: the same rows (fresh messageIds), inserted by this process straight into the same
database through the same engine and the same INSERT statement the server uses, one
committed transaction per batch of 100 — the database's own ceiling for this write without
HTTP, JSON parsing, validation, identity, consent or plan checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from analytics_common import Server, batch_body, create_pg_database, drop_pg_database, percentiles  # noqa: E402

TARGET_EVENTS_PER_S = 20_000


async def load(url: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    for body in bodies:  # counted up front: parsing 100 messages per request here would slow the client
        queue.put_nowait((body, len(json.loads(body)["batch"])))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    acknowledged = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal acknowledged
            while True:
                try:
                    body, count = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                response = await client.post(
                    "/v1/batch",
                    content=body,
                    headers={"Content-Type": "application/json", "User-Agent": "bench/1"},
                )
                latencies.append(time.perf_counter() - started)
                if response.status_code == 200:
                    acknowledged += count
                else:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "events": acknowledged,
        "seconds": elapsed,
        "events_per_s": acknowledged / elapsed,
        "errors": errors,
        **percentiles(latencies),
    }


async def stored_events(database_url: str | None, data_dir: Path) -> int:
    from sqlalchemy import func, select

    from shipyard.analytics.models import events
    from shipyard.core.db import Database
    from shipyard.settings import Settings

    settings = Settings(data_dir=data_dir, **({"database_url": database_url} if database_url else {}))
    db = Database(settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        async with db.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(events))).scalar_one())
    finally:
        await db.dispose()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (Linux /proc), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rows_of(body: bytes, project_id: int) -> list[tuple[Any, ...]]:
    """The tuples the server would store for a batch (fresh messageIds so none dedupe)."""
    from shipyard.analytics.ingest import _json
    from shipyard.analytics.segment import normalise, stored_context

    now = int(time.time() * 1000)
    rows = []
    for raw in json.loads(body)["batch"]:
        raw["messageId"] = str(uuid.uuid4())
        m = normalise(
            raw,
            forced_type=None,
            batch_context=None,
            sent_at_ms=None,
            received_ms=now,
            request_ip="127.0.0.1",
            max_message_bytes=32 * 1024,
            max_future_ms=300_000,
        )
        rows.append(
            (
                project_id,
                m.message_id,
                m.type,
                m.event,
                m.screen,
                m.user_id or m.anonymous_id,
                m.user_id,
                m.anonymous_id,
                m.ts_ms,
                m.received_ms,
                m.session_id,
                _json(m.properties),
                _json(stored_context(m.context, anonymised=False)),
                "127.0.0.0",
            )
        )
    return rows


async def raw_inserts(database_url: str | None, data_dir: Path, batches: list[list[tuple[Any, ...]]]) -> dict[str, Any]:
    from shipyard.analytics.ingest import insert_event_rows
    from shipyard.core.db import Database
    from shipyard.settings import Settings

    settings = Settings(data_dir=data_dir, **({"database_url": database_url} if database_url else {}))
    db = Database(settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous)
    latencies = []
    inserted = 0
    try:
        started = time.perf_counter()
        for rows in batches:
            t0 = time.perf_counter()
            async with db.transaction() as conn:
                inserted += await insert_event_rows(conn, rows)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    finally:
        await db.dispose()
    return {"events": inserted, "seconds": elapsed, "events_per_s": inserted / elapsed, **percentiles(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1500, help="batches of 100 messages to send")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="`shipyard serve --workers`")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL on 127.0.0.1:5432 instead of SQLite")
    parser.add_argument("--quick", action="store_true", help="a short run (150 batches)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.batches = 150
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-ingest-"))
    pg_name = f"shipyard_bench_{uuid.uuid4().hex[:8]}" if args.postgres else None
    database_url = asyncio.run(create_pg_database(pg_name)) if pg_name else None
    server = Server(work, database_url)
    try:
        creds = server.init()
        rng = random.Random(42)
        bodies = [batch_body(rng, args.batch_size, creds["write_key"]) for _ in range(args.batches)]
        warm = [batch_body(rng, args.batch_size, creds["write_key"]) for _ in range(20)]
        server.start("--workers", str(args.workers), cpu=0 if args.workers == 1 else None)
        if (os.cpu_count() or 1) >= 2 and args.workers == 1:
            os.sched_setaffinity(0, {1})
        asyncio.run(load(server.url, warm, 4))
        before = asyncio.run(stored_events(database_url, work / "data"))
        cpu_before = process_cpu_seconds(server.proc.pid) if server.proc else 0.0
        http = asyncio.run(load(server.url, bodies, args.concurrency))
        cpu_used = (process_cpu_seconds(server.proc.pid) if server.proc else 0.0) - cpu_before
        # Server CPU per event holds on a loaded machine where wall-clock throughput does not.
        http["server_cpu_ms_per_1000_events"] = cpu_used * 1e6 / max(http["events"], 1)
        server.stop()
        after = asyncio.run(stored_events(database_url, work / "data"))
        http["stored"] = after - before
        rows = [rows_of(body, int(creds["project_id"])) for body in bodies]
        raw = asyncio.run(raw_inserts(database_url, work / "data", rows))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        if pg_name:
            asyncio.run(drop_pg_database(pg_name))
    results = {
        "database": "postgresql" if args.postgres else "sqlite",
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "http": http,
        "raw_inserts": raw,
        "target_events_per_s": TARGET_EVENTS_PER_S,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"/v1/batch ingest on {results['database']}: {args.batches} batches of {args.batch_size} messages, "
        f"{args.concurrency} concurrent clients, serve --workers {args.workers}"
    )
    print(f"{'':<38}{'events/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}  per")
    print(
        f"{'shipyard POST /v1/batch':<38}{http['events_per_s']:>10.0f}{http['p50_ms']:>9.1f}"
        f"{http['p95_ms']:>9.1f}{http['p99_ms']:>9.1f}  request"
    )
    print(
        f"{'baseline raw INSERT, 1 commit/100 rows':<38}{raw['events_per_s']:>10.0f}{raw['p50_ms']:>9.1f}"
        f"{raw['p95_ms']:>9.1f}{raw['p99_ms']:>9.1f}  commit"
    )
    print(f"server CPU: {http['server_cpu_ms_per_1000_events']:.0f} ms per 1,000 events (user + system, all threads)")
    print(
        f"acknowledged {http['events']} events, {http['stored']} rows stored"
        f" ({'all durable' if http['stored'] == http['events'] else 'MISMATCH'}); errors {http['errors'] or 'none'}"
    )
    print(
        f"ratio shipyard/raw: {http['events_per_s'] / raw['events_per_s']:.2f}; target {TARGET_EVENTS_PER_S} events/s"
    )


if __name__ == "__main__":
    main()
