"""Benchmark: Segment `/v1/batch` ingest of a real `shipyard serve`, next to raw inserts of
the same rows into the same database in the same run.

    python bench/analytics_ingest.py [--seconds 10] [--connections 16] [--postgres] [--quick]

Load: `wrk` (one thread, `--connections` keep-alive connections) posts batches of 100
realistic messages (React Native SDK shape: screens, tracks with properties, a few
identifies, the full mobile `context`) to `/v1/batch`. The bodies are 64 pre-built batches
whose messageIds get a per-request sequence number spliced in by the Lua script, so every
message is new and none is de-duplicated away. A 200 means the batch is durable; after the
run the rows in the database are counted and must equal the acknowledged messages.

Cores: the server is not pinned. The target is what this 2-core machine ingests, and the
server uses both cores (SQLite and PostgreSQL do their writes outside Python's GIL);
wrk costs little (its CPU time is reported next to the server's).

Baseline: rows of the same shape (fresh messageIds), inserted by this process straight into
the same database through the same engine and the INSERT the ingest used to do itself, one
committed transaction per batch of 100 — the database's own ceiling for writing these rows
with their indexes as they arrive, without HTTP, parsing, validation, identity, consent or
plan checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from analytics_common import Server, batch_body, create_pg_database, drop_pg_database, percentiles  # noqa: E402

TARGET_EVENTS_PER_S = 20_000
TEMPLATES = 64
SEQ = "SEQ"  # replaced by the request's sequence number in every messageId of a template

LUA = r"""
local templates = {}
local counter = 0
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "%(auth)s"}

init = function(args)
  for line in io.lines("%(templates)s") do templates[#templates + 1] = line end
end

request = function()
  counter = counter + 1
  local body = string.gsub(templates[(counter %% #templates) + 1], "%(seq)s", tostring(counter))
  return wrk.format("POST", "/v1/batch", headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  local fmt = "RESULT {\"requests\": %%d, \"seconds\": %%.3f, \"non_2xx\": %%d, \"socket_errors\": %%d, "
    .. "\"p50_ms\": %%.3f, \"p95_ms\": %%.3f, \"p99_ms\": %%.3f, \"max_ms\": %%.3f}\n"
  io.write(string.format(fmt, summary.requests, summary.duration / 1e6, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def templates(write_key: str, size: int) -> list[str]:
    """Realistic batches whose messageIds end in SEQ (one JSON document per line)."""
    rng = random.Random(42)
    out = []
    for t in range(TEMPLATES):
        body = json.loads(batch_body(rng, size, write_key))
        for j, message in enumerate(body["batch"]):
            message["messageId"] = f"{t}-{j}-{SEQ}"
        out.append(json.dumps(body, separators=(",", ":")))
    return out


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    done = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    match = re.search(r"RESULT (\{.*\})", done.stdout)
    if not match:
        raise SystemExit("wrk printed no result:\n" + done.stdout + done.stderr)
    result: dict[str, Any] = json.loads(match.group(1))
    result["wrk_cpu_seconds"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


async def stored_rows(database_url: str | None, data_dir: Path) -> tuple[int, int]:
    """(rows in analytics_events, rows still in the landing table)."""
    from sqlalchemy import func, select

    from shipyard.analytics.models import events, incoming
    from shipyard.core.db import Database
    from shipyard.settings import Settings

    settings = Settings(data_dir=data_dir, **({"database_url": database_url} if database_url else {}))
    db = Database(settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        async with db.connect() as conn:
            loaded = int((await conn.execute(select(func.count()).select_from(events))).scalar_one())
            staged = int((await conn.execute(select(func.count()).select_from(incoming))).scalar_one())
            return loaded, staged
    finally:
        await db.dispose()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (Linux /proc), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL server process on this machine (its backends do the
    database's share of the work, outside the Shipyard process)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() not in ("postgres", "postmaster"):
                continue
        except OSError:
            continue
        total += process_cpu_seconds(int(proc.name))
    return total


def rows_of(body: str, project_id: int) -> list[tuple[Any, ...]]:
    """The tuples the server stores for a batch (fresh messageIds so none dedupe)."""
    from shipyard.analytics.segment import normalise, stored_context
    from shipyard.core.db import json_dumps

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
                json_dumps(m.properties),
                json_dumps(stored_context(m.context, anonymised=False)),
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
    parser.add_argument("--seconds", type=int, default=10, help="how long wrk posts batches")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--connections", type=int, default=16, help="concurrent clients (wrk connections)")
    parser.add_argument("--baseline-batches", type=int, default=1000, help="batches of the raw-insert baseline")
    parser.add_argument("--workers", type=int, default=1, help="`shipyard serve --workers`")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL on 127.0.0.1:5432 instead of SQLite")
    parser.add_argument("--quick", action="store_true", help="a short run: a smoke test, not a measurement")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database (to inspect it)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.baseline_batches = 2, 100
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-ingest-"))
    pg_name = f"shipyard_bench_{uuid.uuid4().hex[:8]}" if args.postgres else None
    database_url = asyncio.run(create_pg_database(pg_name)) if pg_name else None
    server = Server(work, database_url)
    try:
        creds = server.init()
        bodies = templates(creds["write_key"], args.batch_size)
        (work / "templates.txt").write_text("\n".join(bodies) + "\n")
        import base64

        auth = "Basic " + base64.b64encode(f"{creds['write_key']}:".encode()).decode()
        script = work / "ingest.lua"
        script.write_text(LUA % {"auth": auth, "templates": work / "templates.txt", "seq": SEQ})
        warm = work / "warm.lua"  # the same load under another prefix, so no warm-up message collides
        warm.write_text(
            (LUA % {"auth": auth, "templates": work / "templates.txt", "seq": SEQ}).replace(
                "tostring(counter)", '"w" .. tostring(counter)'
            )
        )
        server.start("--workers", str(args.workers), cpu=None)
        run_wrk(server.url, warm, 1, 4)
        loaded_before, staged_before = asyncio.run(stored_rows(database_url, work / "data"))
        pid = server.proc.pid if server.proc else 0
        cpu_before, pg_before = process_cpu_seconds(pid), postgres_cpu_seconds()
        http = run_wrk(server.url, script, args.seconds, args.connections)
        cpu_used, pg_used = process_cpu_seconds(pid) - cpu_before, postgres_cpu_seconds() - pg_before
        acknowledged = (http["requests"] - http["non_2xx"]) * args.batch_size
        http["events"] = acknowledged
        http["events_per_s"] = acknowledged / http["seconds"]
        # Server CPU per event holds on a loaded machine where wall-clock throughput does not.
        http["server_cpu_ms_per_1000_events"] = cpu_used * 1e6 / max(acknowledged, 1)
        http["postgres_cpu_ms_per_1000_events"] = pg_used * 1e6 / max(acknowledged, 1) if args.postgres else None
        http["wrk_cpu_ms_per_1000_events"] = http["wrk_cpu_seconds"] * 1e6 / max(acknowledged, 1)
        server.stop()  # a clean stop loads what is staged
        loaded, staged = asyncio.run(stored_rows(database_url, work / "data"))
        http["stored"] = (loaded + staged) - (loaded_before + staged_before)
        http["still_staged"] = staged
        rng_rows = [rows_of(bodies[i % len(bodies)], int(creds["project_id"])) for i in range(args.baseline_batches)]
        raw = asyncio.run(raw_inserts(database_url, work / "data", rng_rows))
        raw["table_rows_before"] = loaded
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        if pg_name and not args.keep:
            asyncio.run(drop_pg_database(pg_name))
        elif pg_name:
            print(f"kept database {pg_name}", file=sys.stderr)
    results = {
        "database": "postgresql" if args.postgres else "sqlite",
        "batch_size": args.batch_size,
        "connections": args.connections,
        "http": http,
        "raw_inserts": raw,
        "target_events_per_s": TARGET_EVENTS_PER_S,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"/v1/batch ingest on {results['database']}: batches of {args.batch_size} messages for {args.seconds} s, "
        f"{args.connections} connections (wrk), serve --workers {args.workers}"
    )
    print(f"{'':<44}{'events/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}  per")
    print(
        f"{'shipyard POST /v1/batch':<44}{http['events_per_s']:>10.0f}{http['p50_ms']:>9.1f}"
        f"{http['p95_ms']:>9.1f}{http['p99_ms']:>9.1f}  request"
    )
    print(
        f"{'baseline raw INSERT into events, 1 commit/100':<44}{raw['events_per_s']:>10.0f}{raw['p50_ms']:>9.1f}"
        f"{raw['p95_ms']:>9.1f}{raw['p99_ms']:>9.1f}  commit"
    )
    print(
        f"server CPU: {http['server_cpu_ms_per_1000_events']:.0f} ms per 1,000 events (user + system, all threads);"
        f" wrk: {http['wrk_cpu_ms_per_1000_events']:.0f} ms"
        + (f"; PostgreSQL: {http['postgres_cpu_ms_per_1000_events']:.0f} ms" if args.postgres else "")
    )
    # wrk counts only the requests answered before it stopped; those in flight then were
    # stored too, so every acknowledged message must be there and a few more may be.
    durable = "all durable" if http["stored"] >= acknowledged else "MISMATCH: acknowledged messages are missing"
    print(
        f"acknowledged {acknowledged} events, {http['stored']} rows stored ({durable}; "
        f"{http['stored'] - acknowledged} from requests in flight when wrk stopped, {staged} left in the landing"
        f" table); non-2xx {http['non_2xx']}, socket errors {http['socket_errors']}"
    )
    print(
        f"baseline: {args.baseline_batches} batches into a table already holding {loaded} rows;"
        f" ratio shipyard/raw {http['events_per_s'] / raw['events_per_s']:.2f}; target {TARGET_EVENTS_PER_S} events/s"
    )


if __name__ == "__main__":
    main()
