"""Planner statistics kept by Shipyard itself (the CI PostgreSQL runs with autovacuum off)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from shipyard.analytics import identity
from shipyard.core import jobs, maintenance, pgstats
from shipyard.core.context import Context


async def _stats(ctx: Context, table: str) -> tuple[int, int, int]:
    async with ctx.db.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT analyze_count + autoanalyze_count, vacuum_count + autovacuum_count, n_dead_tup "
                    "FROM pg_stat_user_tables WHERE relname = :t"
                ),
                {"t": table},
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def _until_counted(ctx: Context, table: str, dead_at_least: int) -> None:
    # Backends report table statistics about once a second.
    for _ in range(50):
        if (await _stats(ctx, table))[2] >= dead_at_least:
            return
        await asyncio.sleep(0.1)


async def _alias_probe_plan(ctx: Context) -> str:
    async with ctx.db.connect() as conn:
        rows = await conn.exec_driver_sql(
            "EXPLAIN " + identity._pg_probe("analytics_aliases", "alias", "alias, user_key"), (1, ["anon-5", "anon-7"])
        )
        return "\n".join(r[0] for r in rows)


async def test_young_table_gets_statistics_and_alias_lookups_take_the_key_either_way(pg_ctx: Context) -> None:
    """Unanalyzed, the planner once probed aliases through the (project, user) index and
    filtered every alias of the project per key; the index now leads with user_key, and
    keep_fresh gathers the statistics autovacuum (off on the CI machine) would have."""
    async with pg_ctx.db.transaction() as conn:
        await conn.execute(
            text(
                "INSERT INTO analytics_aliases (project_id, alias, user_key, created_at) "
                "SELECT 1, 'anon-' || g, 'user-' || g, now() FROM generate_series(1, 3000) g"
            )
        )
    assert "pk_analytics_aliases" in await _alias_probe_plan(pg_ctx)
    before = (await _stats(pg_ctx, "analytics_aliases"))[0]
    await asyncio.sleep(1.1)  # let the inserting backend report its row counts

    done = await pgstats.keep_fresh(pg_ctx.db, ["analytics_aliases"])

    assert done == ["ANALYZE (SKIP_LOCKED) analytics_aliases"]
    assert (await _stats(pg_ctx, "analytics_aliases"))[0] == before + 1
    assert "pk_analytics_aliases" in await _alias_probe_plan(pg_ctx)
    async with pg_ctx.db.connect() as conn:
        assert await identity.resolve(conn, 1, ["anon-5", "nobody"]) == {"anon-5": "user-5"}
    # Nothing changed since: nothing to do.
    assert await pgstats.keep_fresh(pg_ctx.db, ["analytics_aliases"]) == []


@pytest.mark.parametrize("analyze", [True, False])
async def test_emptied_table_is_vacuumed(pg_ctx: Context, analyze: bool) -> None:
    async with pg_ctx.db.transaction() as conn:
        await conn.execute(
            text(
                "INSERT INTO analytics_aliases (project_id, alias, user_key, created_at) "
                "SELECT 1, 'anon-' || g, 'user-' || g, now() FROM generate_series(1, 8000) g"
            )
        )
    async with pg_ctx.db.transaction() as conn:
        await conn.execute(text("DELETE FROM analytics_aliases"))
    await asyncio.sleep(1.1)
    await _until_counted(pg_ctx, "analytics_aliases", 8000)
    _, vacuums, _ = await _stats(pg_ctx, "analytics_aliases")

    done = await pgstats.keep_fresh(pg_ctx.db, ["analytics_aliases"], analyze=analyze)

    command = "VACUUM (ANALYZE, SKIP_LOCKED)" if analyze else "VACUUM (SKIP_LOCKED)"
    assert done == [f"{command} analytics_aliases"]
    await asyncio.sleep(1.1)
    assert (await _stats(pg_ctx, "analytics_aliases"))[1] == vacuums + 1


async def test_sqlite_has_nothing_to_do(ctx: Context) -> None:
    assert await pgstats.keep_fresh(ctx.db) == []


def test_the_minute_job_is_scheduled() -> None:
    assert maintenance.refresh_statistics is not None  # importing it declares the schedule
    assert jobs._schedules["core.pgstats"][:2] == ("* * * * *", "core.pgstats")
    assert "core.pgstats" in jobs.registered_kinds()


async def test_the_job_checks_every_table(pg_ctx: Context) -> None:
    async with pg_ctx.db.transaction() as conn:
        await conn.execute(
            text(
                "INSERT INTO analytics_aliases (project_id, alias, user_key, created_at) "
                "SELECT 1, 'anon-' || g, 'user-' || g, now() FROM generate_series(1, 500) g"
            )
        )
    await asyncio.sleep(1.1)
    await maintenance.refresh_statistics(pg_ctx, {}, None)  # type: ignore[arg-type]
    assert (await _stats(pg_ctx, "analytics_aliases"))[0] >= 1
