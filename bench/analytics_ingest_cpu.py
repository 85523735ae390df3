"""Benchmark: the server's Python CPU per event of Segment `/v1/batch` ingest, in process.

    python bench/analytics_ingest_cpu.py [--rounds 4] [--repeat 5] [--postgres] [--quick] [--json] [--profile]

No HTTP server and no load generator: this times the pure-Python work the ingest route does
for each batch — body parse (`parse_json_object`), the batch checks and `sentAt`, then
`ingest_messages`: `normalise` of every message, the per-batch config / consent /
suppression / link / plan lookups (warm caches, as in a running server), the `_Batch`
decisions and the row tuples (context and properties JSON-encoded) — on the same 64
template batches of 100 React-Native-SDK messages as `analytics_ingest.py`, every
messageId fresh. The group commit is replaced by a stub that keeps the rows and reports
the links it would have made (so the link cache warms as in a server): no database write
is timed. With `--postgres`, the rows are then staged into a temporary PostgreSQL
database, 8 batches per transaction as a group commit does, by `landing.stage` and by the
unnest INSERT it replaced (this process's CPU only; PostgreSQL's own is not counted).

Baseline, same run and same bodies: `orjson.loads` alone — what any JSON API pays — so
the pipeline's µs per event can be read as "parsing + what Shipyard adds over it".
Figures are CPU time of this process (`time.process_time`, not wall-clock: the machine is
shared), the best of `--repeat` passes (each `--rounds` × 64 batches).

`--profile` runs the pipeline in a loop for py-spy instead of timing it:
`py-spy record --format raw -o ingest.txt -- python bench/analytics_ingest_cpu.py --profile`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import orjson  # noqa: E402
from analytics_ingest import SEQ, templates  # noqa: E402

BATCH_SIZE = 100
GROUP = 8  # batches per transaction when staging on PostgreSQL (--postgres), as a group commit
REQUEST_IP = "203.0.113.77"


class _NoLoader:
    """Stands in for the landing-table loader: nothing is staged, nothing to load."""

    def staged(self, count: int) -> None:
        pass


async def _setup(data_dir: Path, database_url: str | None = None) -> tuple[Any, Any, str]:
    from shipyard.core import auth, migrate, projects
    from shipyard.core.auth import KeyCache
    from shipyard.core.context import Context
    from shipyard.core.deps import client_project
    from shipyard.settings import Settings

    settings = Settings(
        **({"database_url": database_url} if database_url else {}),
        data_dir=data_dir,
        secret_key="bench-" + uuid.uuid4().hex,
        public_url="http://testserver",
        embedded_worker=False,
        log_level="WARNING",
    )
    ctx = Context.create(settings)
    ctx.extras["key_cache"] = KeyCache(ttl=3600)
    await migrate.upgrade(ctx.db)
    async with ctx.db.transaction() as conn:
        created = await projects.create_project(conn, "CPU bench", public_base=settings.public_base)
        await auth.create_user(conn, "bench@example.com", "correct horse battery")
    project = await client_project(ctx, created["public_key"])
    return ctx, project, created["public_key"]


def _stub_commit() -> list[list[tuple[Any, ...]]]:
    """Replace the group commit by a stub that keeps each batch's rows."""
    from shipyard.analytics import ingest, landing

    kept: list[list[tuple[Any, ...]]] = []

    async def commit(self: Any) -> tuple[int, list[tuple[str, str]]]:
        kept.append(self.rows)
        # The links identity.link_many would report (first pair per alias wins), so the
        # process's link cache fills as in a running server and known links are skipped.
        links: dict[str, str] = {}
        for alias, user_key in self.ops.links:
            if alias != user_key:
                links.setdefault(alias, user_key)
        return len(self.rows), list(links.items())

    ingest._Batch.commit = commit  # type: ignore[method-assign]
    loader = _NoLoader()
    landing.loader = lambda ctx: loader  # type: ignore[assignment,return-value]
    return kept


async def _one_batch(ctx: Any, project: Any, raw: bytes) -> Any:
    """What `public_api._ingest` does for a batch, minus HTTP, auth and the rate limiter."""
    from shipyard.analytics.ingest import ingest_messages
    from shipyard.analytics.segment import parse_json_object, parse_time_ms

    settings = ctx.settings
    body = parse_json_object(raw, settings.analytics_max_batch_bytes, "the batch")
    messages = body.get("batch")
    assert isinstance(messages, list) and len(messages) <= settings.analytics_max_batch_events
    batch_context = body.get("context")
    sent_at = parse_time_ms(body.get("sentAt"), "sentAt")
    return await ingest_messages(
        ctx, project, messages, forced_type=None, batch_context=batch_context, sent_at_ms=sent_at, request_ip=REQUEST_IP
    )


def _unnest_sql() -> str:
    """The statement PostgreSQL staging used before it copied: one INSERT … SELECT FROM
    unnest() of 14 arrays (the baseline of ``--postgres``)."""
    from shipyard.analytics.landing import COLUMNS
    from shipyard.analytics.models import incoming

    types = {"project_id": "int", "ts_ms": "bigint", "received_ms": "bigint"}
    arrays = ", ".join(f"${i + 1}::{types.get(c, 'text')}[]" for i, c in enumerate(COLUMNS))
    selected = ", ".join(f"u.{c}::jsonb" if c in ("properties", "context") else f"u.{c}" for c in COLUMNS)
    columns = ", ".join(COLUMNS)
    return f"INSERT INTO {incoming.name} ({columns}) SELECT {selected} FROM unnest({arrays}) AS u({columns})"


async def _postgres_staging(batches: list[list[tuple[Any, ...]]], repeat: int) -> dict[str, float]:
    """Process CPU per row of staging the pipeline's rows on PostgreSQL, GROUP batches per
    transaction as a group commit does: ``landing.stage`` next to the unnest INSERT."""
    from analytics_common import create_pg_database, drop_pg_database

    from shipyard.analytics import landing

    group = [[row for rows in batches[i : i + GROUP] for row in rows] for i in range(0, len(batches), GROUP)]
    name = f"shipyard_bench_cpu_{uuid.uuid4().hex[:8]}"
    url = await create_pg_database(name)
    best = {"stage": float("inf"), "unnest": float("inf")}
    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-bench-cpu-pg-") as tmp:
            ctx, _project, _key = await _setup(Path(tmp) / "data", url)
            sql = _unnest_sql()

            async def unnest(conn: Any, rows: list[tuple[Any, ...]]) -> None:
                await conn.exec_driver_sql(sql, tuple(list(c) for c in zip(*rows, strict=True)))

            try:
                for _ in range(repeat):
                    for what, write in (("unnest", unnest), ("stage", landing.stage)):
                        gc.collect()
                        t0 = time.process_time()
                        for rows in group:
                            async with ctx.db.transaction() as conn:
                                await write(conn, rows)
                        best[what] = min(best[what], time.process_time() - t0)
            finally:
                await ctx.close()
    finally:
        await drop_pg_database(name)
    events = sum(len(rows) for rows in group)
    return {k: v * 1e6 / events for k, v in best.items()}


def _bodies(public_key: str, rounds: int, start: int) -> list[bytes]:
    bodies = templates(public_key, BATCH_SIZE)
    return [bodies[i % len(bodies)].replace(SEQ, str(start + i)).encode() for i in range(rounds * len(bodies))]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from shipyard.core.db import json_dumps

    kept = _stub_commit()
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-cpu-") as tmp:
        ctx, project, public_key = await _setup(Path(tmp) / "data")
        try:
            seq = 0
            # Warm-up: fills the consent / suppression / plan caches and the IP cache.
            for raw in _bodies(public_key, 1, seq):
                await _one_batch(ctx, project, raw)
            seq += 64
            if args.profile:
                deadline = time.monotonic() + args.profile_seconds
                while time.monotonic() < deadline:
                    for raw in _bodies(public_key, args.rounds, seq):
                        await _one_batch(ctx, project, raw)
                    seq += 64 * args.rounds
                    kept.clear()
                return {}
            best = {"parse": float("inf"), "pipeline": float("inf")}
            events = 0
            for _ in range(args.repeat):
                bodies = _bodies(public_key, args.rounds, seq)
                seq += len(bodies)
                events = len(bodies) * BATCH_SIZE
                gc.collect()
                t0 = time.process_time()
                for raw in bodies:
                    orjson.loads(raw)
                best["parse"] = min(best["parse"], time.process_time() - t0)
                kept.clear()
                gc.collect()
                t0 = time.process_time()
                for raw in bodies:
                    result = await _one_batch(ctx, project, raw)
                best["pipeline"] = min(best["pipeline"], time.process_time() - t0)
                assert result.stored == BATCH_SIZE, result.body()
            # A fingerprint of what would be stored, with message ids and the receive time
            # left out (they change per run; the event time is kept relative to it): equal
            # before and after a change means identical rows.
            digest = uuid.uuid5(
                uuid.NAMESPACE_OID,
                json_dumps(sorted([[*r[:1], *r[2:8], r[8] - r[9], *r[10:]] for rows in kept[-64:] for r in rows])),
            ).hex[:12]
            staged = list(kept[-64:])
        finally:
            await ctx.close()
    per_event = {k: v * 1e6 / events for k, v in best.items()}
    if args.postgres:
        per_event.update({f"pg_{k}": v for k, v in (await _postgres_staging(staged, args.repeat)).items()})
    return {
        "events_per_pass": events,
        "repeat": args.repeat,
        "us_per_event": per_event,
        "pipeline_over_parse_us": per_event["pipeline"] - per_event["parse"],
        "rows_fingerprint": digest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="passes over the 64 template batches per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings; the best is reported")
    parser.add_argument("--quick", action="store_true", help="a short run: a smoke test, not a measurement")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also time staging the rows on PostgreSQL (127.0.0.1:5432, a temporary database; BENCH_PG_ADMIN)",
    )
    parser.add_argument("--profile", action="store_true", help="loop the pipeline (for py-spy) instead of timing")
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.repeat = 1, 2
    results = asyncio.run(_run(args))
    if args.profile:
        return
    if args.json:
        print(json.dumps(results, indent=2))
        return
    us = results["us_per_event"]
    print(
        f"/v1/batch ingest, Python CPU in process: {results['events_per_pass']} events per pass "
        f"(64 batches of {BATCH_SIZE}), best of {results['repeat']}"
    )
    print(f"{'baseline: orjson.loads of the bodies':<58}{us['parse']:>8.2f} µs/event")
    print(f"{'pipeline: parse + normalise + decisions + rows':<58}{us['pipeline']:>8.2f} µs/event")
    print(f"{'  of which over the baseline parse':<58}{results['pipeline_over_parse_us']:>8.2f} µs/event")
    if "pg_stage" in us:
        print(f"PostgreSQL staging, {GROUP} batches per transaction (process CPU, not the server's):")
        print(f"{'  baseline: INSERT … SELECT FROM unnest() of 14 arrays':<58}{us['pg_unnest']:>8.2f} µs/event")
        print(f"{'  landing.stage':<58}{us['pg_stage']:>8.2f} µs/event")
    print(f"rows fingerprint (equal before/after a change = identical rows): {results['rows_fingerprint']}")


if __name__ == "__main__":
    main()
