"""Benchmark: the analytics overview page — the dashboard's landing page — over 1,000,000
events from 100,000 users, without and with pinned insights, on a real `shipyard serve`.

    python bench/analytics_dashboard.py [--events 1000000] [--users 100000] [--db sqlite,postgres] [--quick]

Data: the same ten weeks of a CanaBro-like app as `analytics_queries.py`, bulk-inserted
through the ingest's own insert and folded into the rollups. A browser session logs in
through the login form; each page is fetched over HTTP from this process (first = cold,
then best and median of N). Pinned: a 3-step funnel over the ten weeks, an 8-week retention
and a daily trend, saved through the admin API.

Baseline: the core project page (`/projects/{slug}`) — the fixed cost of a logged-in
dashboard page (session, membership, template) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from analytics_common import Server, create_pg_database, drop_pg_database  # noqa: E402
from analytics_queries import load_data  # noqa: E402


def timed_get(client: httpx.Client, path: str, repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        runs.append(time.perf_counter() - started)
        response.raise_for_status()
    return {"cold_s": runs[0], "best_s": min(runs), "median_s": statistics.median(runs)}


def login(client: httpx.Client, creds: dict[str, Any]) -> None:
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token, "login page without a CSRF field"
    data = {"email": creds["admin_email"], "password": creds["admin_password"], "csrf_token": token.group(1)}
    response = client.post("/login", data={**data, "next": "/"})
    if response.status_code != 303:
        raise SystemExit(f"login failed: {response.status_code} {response.text[:200]}")


def pin_insights(server: Server, creds: dict[str, Any], first_day: str, last_day: str) -> None:
    api = f"{server.url}/api/v1/projects/{creds['project_slug']}/analytics/saved-insights"
    headers = {"Authorization": f"Bearer {creds['secret_key']}"}
    steps = [{"event": "app_opened"}, {"event": "plant_created"}, {"event": "care_task_completed"}]
    retention_from = (datetime.fromisoformat(last_day) - timedelta(days=55)).date().isoformat()
    saved = [
        ("Plant onboarding", "funnel", {"date_from": first_day, "date_to": last_day, "steps": steps}),
        (
            "Weekly retention",
            "retention",
            {"date_from": retention_from, "date_to": last_day, "start_event": "app_opened", "periods": 8},
        ),
        (
            "Plants per day",
            "trends",
            {"date_from": first_day, "date_to": last_day, "series": [{"event": "plant_created"}]},
        ),
    ]
    for name, kind, query in saved:
        body = {"name": name, "kind": kind, "query": query, "pinned": True}
        httpx.post(api, json=body, headers=headers, timeout=60).raise_for_status()


def run_db(kind: str, args: Any) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"shipyard-bench-d-{kind}-"))
    pg_name = f"shipyard_bench_{uuid.uuid4().hex[:8]}" if kind == "postgres" else None
    database_url = asyncio.run(create_pg_database(pg_name)) if pg_name else None
    server = Server(work, database_url)
    try:
        creds = server.init()
        last_day = datetime.now(UTC).date() - timedelta(days=1)
        loaded = asyncio.run(load_data(work / "data", database_url, int(creds["project_id"]), args, last_day))
        server.start(cpu=None)
        slug = creds["project_slug"]
        with httpx.Client(base_url=server.url, timeout=600) as client:
            login(client, creds)
            results = {"project page (baseline)": timed_get(client, f"/projects/{slug}", args.repeat)}
            results["analytics overview, nothing pinned"] = timed_get(
                client, f"/projects/{slug}/analytics", args.repeat
            )
            first_day = (last_day - timedelta(days=69)).isoformat()
            pin_insights(server, creds, first_day, last_day.isoformat())
            results["analytics overview, 3 pinned"] = timed_get(client, f"/projects/{slug}/analytics", args.repeat)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        if pg_name:
            asyncio.run(drop_pg_database(pg_name))
    return {"load": loaded, "pages": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100,000 events from 10,000 users, SQLite only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.events, args.users, args.db = 100_000, 10_000, "sqlite"
    out = {kind: run_db(kind, args) for kind in args.db.split(",")}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return
    print(f"{args.events:,} events from {args.users:,} users over 10 weeks; pages over HTTP, logged in")
    for kind, r in out.items():
        print(f"\n[{kind}] bulk insert {r['load']['insert_s']:.1f} s, rollup {r['load']['rollup_s']:.1f} s")
        print(f"{'page':<40}{'cold s':>8}{'best s':>8}{'median s':>10}")
        for name, t in r["pages"].items():
            print(f"{name:<40}{t['cold_s']:>8.3f}{t['best_s']:>8.3f}{t['median_s']:>10.3f}")


if __name__ == "__main__":
    main()
