"""Benchmark: a 3-step funnel and an 8-week retention over 1,000,000 events from 100,000
users, on SQLite and on PostgreSQL, asked through the admin API of a real `shipyard serve`.

    python bench/analytics_queries.py [--events 1000000] [--users 100000] [--db sqlite,postgres] [--quick]

Data: `shipyard init` creates the project; this process then bulk-inserts the events
through the ingest's own insert (`insert_event_rows`, 10,000 rows per transaction) — ten
weeks of a CanaBro-like app: every user opens the app on their first day, then screens,
app opens, plant_created, care_task_completed and post_liked with decaying activity —
and runs the rollup job once, as the server's worker would. Then the server starts and
each query is timed from this process over HTTP (first run = cold, then best of N).

Baseline: `SELECT count(*)` over the same events table through the same API stack is not
available as a route, so the baseline printed is the time of the cheapest insight (a
daily trend of one event) — the fixed cost of the HTTP + auth + query path on the data set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from analytics_common import Server, create_pg_database, drop_pg_database  # noqa: E402

TARGET_SECONDS = 2.0
DAY_MS = 86_400_000
CONTEXT = json.dumps(
    {
        "app": {"name": "CanaBro", "version": "2.4.1", "build": "241"},
        "device": {"manufacturer": "Apple", "model": "iPhone15,2", "type": "ios"},
        "os": {"name": "iOS", "version": "17.4"},
        "library": {"name": "@segment/analytics-react-native", "version": "2.20.3"},
        "locale": "en-US",
        "timezone": "Europe/Berlin",
    }
)
EVENTS = ["app_opened", "$screen", "plant_created", "care_task_completed", "post_liked"]
WEIGHTS = [0.25, 0.4, 0.1, 0.15, 0.1]
SCREENS = ["Home", "PlantList", "PlantDetail", "Community", "Calendar"]


def generate(project_id: int, n_events: int, n_users: int, last_day: date, rng: random.Random) -> Any:
    """Yield chunks of event tuples in ``EVENT_COLUMNS`` order."""
    end_ms = int(datetime(last_day.year, last_day.month, last_day.day, tzinfo=UTC).timestamp() * 1000) + DAY_MS
    start_ms = end_ms - 70 * DAY_MS
    per_user = n_events // n_users
    chunk: list[tuple[Any, ...]] = []
    seq = 0
    for u in range(n_users):
        user = f"user-{u:06d}"
        first = start_ms + int(rng.random() ** 1.3 * 63 * DAY_MS)
        times = [first]
        span = end_ms - first - 1
        for _ in range(per_user - 1):
            offset = int(min(span, rng.expovariate(1 / (12 * DAY_MS))))
            times.append(first + offset)
        names = ["app_opened", *rng.choices(EVENTS, WEIGHTS, k=per_user - 1)]
        for ts, name in zip(times, names, strict=True):
            seq += 1
            screen = rng.choice(SCREENS) if name == "$screen" else None
            kind = "screen" if screen else "track"
            props = f'{{"plant_id": "p{seq}"}}' if name in ("plant_created", "care_task_completed") else "{}"
            chunk.append(
                (project_id, f"m{seq}", kind, name, screen, user, user, None, ts, ts, None, props, CONTEXT, None)
            )
            if len(chunk) >= 10_000:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


async def load_data(
    data_dir: Path, database_url: str | None, project_id: int, args: Any, last_day: date
) -> dict[str, float]:
    from shipyard.analytics.ingest import insert_event_rows
    from shipyard.analytics.rollups import run_rollup
    from shipyard.core.context import Context
    from shipyard.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        secret_key="bench",
        analytics_rollup_lag_seconds=0,
        **({"database_url": database_url} if database_url else {}),
    )
    ctx = Context.create(settings)
    try:
        started = time.perf_counter()
        for rows in generate(project_id, args.events, args.users, last_day, random.Random(7)):
            async with ctx.db.transaction() as conn:
                await insert_event_rows(conn, rows)
        inserted = time.perf_counter() - started
        started = time.perf_counter()
        await run_rollup(ctx, max_chunks=10_000)
        rolled = time.perf_counter() - started
        if ctx.db.is_sqlite:
            async with ctx.db.transaction() as conn:
                await conn.exec_driver_sql("ANALYZE")
        else:
            async with ctx.db.connect() as conn:
                await conn.exec_driver_sql("COMMIT")
                # What autovacuum does within a minute of a bulk load on a live server; without
                # it the rollup tables have no statistics or visibility map after the load.
                for table in (
                    "analytics_events",
                    "analytics_daily_users",
                    "analytics_daily_counts",
                    "analytics_session_days",
                ):
                    await conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
    finally:
        await ctx.close()
    return {"insert_s": inserted, "insert_rows_per_s": args.events / inserted, "rollup_s": rolled}


def timed(client: httpx.Client, path: str, body: dict[str, Any], repeat: int) -> dict[str, Any]:
    runs = []
    result: Any = None
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.post(path, json=body)
        runs.append(time.perf_counter() - started)
        response.raise_for_status()
        result = response.json()
    return {"cold_s": runs[0], "best_s": min(runs), "median_s": statistics.median(runs), "result": result}


def run_db(kind: str, args: Any) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"shipyard-bench-q-{kind}-"))
    pg_name = f"shipyard_bench_{uuid.uuid4().hex[:8]}" if kind == "postgres" else None
    database_url = asyncio.run(create_pg_database(pg_name)) if pg_name else None
    server = Server(work, database_url)
    try:
        creds = server.init()
        last_day = datetime.now(UTC).date() - timedelta(days=1)
        loaded = asyncio.run(load_data(work / "data", database_url, int(creds["project_id"]), args, last_day))
        server.start(cpu=None)
        base = f"/api/v1/projects/{creds['project_slug']}/analytics/insights"
        headers = {"Authorization": f"Bearer {creds['secret_key']}"}
        first_day = last_day - timedelta(days=69)
        funnel = {
            "date_from": first_day.isoformat(),
            "date_to": last_day.isoformat(),
            "steps": [{"event": "app_opened"}, {"event": "plant_created"}, {"event": "care_task_completed"}],
            "window_value": 14,
            "window_unit": "day",
        }
        retention_from = last_day - timedelta(days=55)
        retention = {
            "date_from": retention_from.isoformat(),
            "date_to": last_day.isoformat(),
            "start_event": "app_opened",
            "return_event": "app_opened",
            "interval": "week",
            "periods": 8,
        }
        trend = {
            "date_from": first_day.isoformat(),
            "date_to": last_day.isoformat(),
            "series": [{"event": "plant_created"}],
            "interval": "day",
        }
        with httpx.Client(base_url=server.url, headers=headers, timeout=600) as client:
            results = {
                "funnel": timed(client, base + "/funnel", funnel, args.repeat),
                "retention": timed(client, base + "/retention", retention, args.repeat),
                "trend (baseline)": timed(client, base + "/trends", trend, args.repeat),
            }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        if pg_name:
            asyncio.run(drop_pg_database(pg_name))
    return {"load": loaded, "queries": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100,000 events from 10,000 users")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.events, args.users = 100_000, 10_000
    out: dict[str, Any] = {}
    for kind in args.db.split(","):
        out[kind] = run_db(kind, args)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return
    print(
        f"{args.events:,} events from {args.users:,} users over 10 weeks; times over HTTP, target < {TARGET_SECONDS} s"
    )
    for kind, r in out.items():
        load = r["load"]
        print(
            f"\n[{kind}] bulk insert {load['insert_rows_per_s']:,.0f} rows/s ({load['insert_s']:.1f} s), "
            f"rollup {load['rollup_s']:.1f} s"
        )
        print(f"{'query':<34}{'cold s':>8}{'best s':>8}{'median s':>10}")
        for name, q in r["queries"].items():
            print(f"{name:<34}{q['cold_s']:>8.2f}{q['best_s']:>8.2f}{q['median_s']:>10.2f}")
        steps = r["queries"]["funnel"]["result"]["steps"]
        print("  funnel steps:", ", ".join(f"{s['label']} {s['count']}" for s in steps))
        group = r["queries"]["retention"]["result"]["groups"][0]
        sizes = sum(c["size"] for c in group["cohorts"])
        print(f"  retention: {len(group['cohorts'])} weekly cohorts, {sizes} users, average by week {group['average']}")


if __name__ == "__main__":
    main()
