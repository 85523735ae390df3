"""The landing table and its loader: how an acknowledged message reaches ``analytics_events``.

An ingest request commits its rows to ``analytics_incoming`` (an append to one b-tree, no
secondary index) and is answered; the 200 means they are durable. The :class:`Loader` then
moves staged rows into the events table in chunks of thousands, in one statement per
project that de-duplicates on ``messageId`` and maps each ``user_key`` through the alias
table, and deletes them from the landing table in the same transaction. The events
table's four indexes are thus updated once per chunk, not once per request: on the 2-core
box a chunk of 10,000 rows cost about a quarter of the same rows written 100 per commit.

Reads see every message acknowledged before them: the analytics admin API, the dashboard,
exports and the rollup job call :func:`make_visible` first, which loads what is staged
(nothing to do, and no query, when this process has nothing pending). A process that
stopped with rows staged leaves them durable; the next drain of any process loads them.

Loads are serialised (one at a time per process; on PostgreSQL a transaction-scoped
advisory lock makes them one at a time across processes), so event ids are assigned and
committed in order — the rollup job's watermark never skips a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from functools import cache
from typing import Any, cast

from prometheus_client import Counter as PromCounter
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics.identity import dialect_insert
from shipyard.analytics.models import aliases, events, incoming, ingest_counters, users
from shipyard.analytics.segment import DAY_MS
from shipyard.core import pgstats
from shipyard.core.context import Context

log = logging.getLogger("shipyard.analytics.landing")

EVENTS_TOTAL = PromCounter(
    "shipyard_analytics_events_total",
    "Analytics messages received, by outcome (stored, duplicate, invalid, suppressed, consent_dropped, "
    "consent_anonymised, plan_blocked)",
    ["outcome"],
)

# Rows moved per transaction. Bigger chunks amortise the index writes further (on SQLite a
# chunk rewrites most index pages it touches once, however many rows land on them) but
# hold the write lock longer, which ingest requests wait behind: on the 2-core box 40,000
# rows take ≈0.6 s on SQLite. PostgreSQL logs rows, not pages, and gains little from more.
LOAD_CHUNK = {"sqlite": 40_000, "postgresql": 10_000}
# The loader starts as soon as this many rows are staged…
LOAD_BATCH = 20_000
# …or when the oldest staged row has waited this long.
LOAD_DELAY_SECONDS = 1.0
# PostgreSQL work_mem of a load's transaction.
LOAD_WORK_MEM = "64MB"
# PostgreSQL: how often the loader checks the statistics of the tables whose plans ingest
# depends on (the alias and user probes), and vacuums the landing table, which it empties
# as fast as ingest fills it. The events table is left to the minute job: ingest only
# writes it, and an ANALYZE of its JSON columns cost ≈1 s at 100,000 rows.
STATS_EVERY_SECONDS = 1.0
PROBED_TABLES = (aliases.name, users.name)

COLUMNS = tuple(c.name for c in incoming.columns if c.name != "id")
# Advisory lock key (any constant bigint) serialising loads across PostgreSQL clients.
_PG_LOCK_KEY = 0x5348_4950_414E  # "SHIPAN"


# The INSERT of event tuples (in ``COLUMNS`` order) into the landing table on SQLite;
# PostgreSQL copies them (``_copy_rows``).
_SQLITE_STAGE_SQL = f"INSERT INTO {incoming.name} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


async def stage(conn: AsyncConnection, rows: list[tuple[object, ...]]) -> None:
    """Append event tuples to the landing table (inside the caller's transaction). The
    tuples go to the driver as they are: ``executemany`` on SQLite, a binary ``COPY`` on
    PostgreSQL — Core's per-row bind processing cost as much as the insert itself."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await _copy_rows(conn, rows)
    else:
        await conn.exec_driver_sql(_SQLITE_STAGE_SQL, rows)


_COPY_SQL = f"COPY {incoming.name} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT binary)"


async def _copy_rows(conn: AsyncConnection, rows: list[tuple[object, ...]]) -> None:
    """The rows by asyncpg's ``copy_records_to_table``, in the caller's transaction.

    It replaced ``INSERT … SELECT FROM unnest()`` of 14 arrays: asyncpg checks every array
    element for nested arrays (several ``isinstance`` against ABCs each), which cost the
    Shipyard process ≈9 µs per row on the 2-core box; the COPY costs ≈3.5, and less
    PostgreSQL CPU too. The rows stored are the same: the JSON columns go through the
    engine's jsonb codec either way, and ids are assigned in row order."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    if not driver.is_in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN with a transaction's first statement; a
        # COPY sent to the driver before that would commit on its own.
        await conn.exec_driver_sql("SELECT 1")
    try:
        await driver.copy_records_to_table(incoming.name, records=rows, columns=COLUMNS)
    except Exception as exc:
        error, invalidated = _as_sqlalchemy_error(conn, raw.dbapi_connection, exc)
        if invalidated:
            await conn.invalidate(error)
        raise error from exc


def _as_sqlalchemy_error(conn: AsyncConnection, dbapi_connection: Any, exc: Exception) -> tuple[Exception, bool]:
    """``exc`` (from asyncpg) wrapped as SQLAlchemy wraps a failed statement's — the
    adapter's DBAPI exception inside a ``DBAPIError``, marked when the connection is
    gone — so callers (``is_outage``, the group committer) see what an
    ``exec_driver_sql`` failure looks like. Returns (error, connection invalidated)."""
    try:
        dbapi_connection._handle_exception(exc)  # raises the DBAPI-level translation
    except Exception as translated:
        invalidated = bool(conn.dialect.is_disconnect(cast(Any, translated), dbapi_connection, None))
        wrapped = sa_exc.DBAPIError.instance(
            _COPY_SQL,
            None,
            translated,
            conn.dialect.loaded_dbapi.Error,
            connection_invalidated=invalidated,
            dialect=conn.dialect,
        )
        return wrapped, invalidated
    return exc, False


# --- loading ---------------------------------------------------------------------------------------


def _mapped_columns(source: str, alias_key: str) -> str:
    """The selected columns, with ``user_key`` replaced by the user it was merged into
    (an anonymous id linked, or a ``previousId`` aliased, after the row was staged)."""
    mapped = f"COALESCE({alias_key}, {source}.user_key)"
    return ", ".join(mapped if c == "user_key" else f"{source}.{c}" for c in COLUMNS)


@cache
def _sqlite_load_sql() -> str:
    # The alias lookup is a primary-key probe per row, done by SQLite in C: an event staged
    # before its anonymous id was linked still lands under the user (merges rewrite only
    # what is already in the events table).
    alias_key = f"(SELECT a.user_key FROM {aliases.name} a WHERE a.project_id = i.project_id AND a.alias = i.user_key)"
    return (
        f"INSERT INTO {events.name} ({', '.join(COLUMNS)}) "
        f"SELECT {_mapped_columns('i', alias_key)} FROM {incoming.name} i "
        "WHERE i.id <= ? AND i.project_id = ? ORDER BY i.id "
        "ON CONFLICT (project_id, message_id) DO NOTHING"
    )


@cache
def _pg_load_sql() -> str:
    # One statement: take the oldest staged rows, insert them (ids in staged order), and
    # report per project how many were taken and how many were new. The alias lookup is a
    # LATERAL probe: as a plain join the planner hashes the whole alias table per chunk.
    return (
        f"WITH moved AS (DELETE FROM {incoming.name} WHERE id IN "
        f"(SELECT id FROM {incoming.name} ORDER BY id LIMIT $1) RETURNING *), "
        f"inserted AS (INSERT INTO {events.name} ({', '.join(COLUMNS)}) "
        f"SELECT {_mapped_columns('m', 'a.user_key')} FROM moved m "
        f"LEFT JOIN LATERAL (SELECT user_key FROM {aliases.name} WHERE project_id = m.project_id "
        "AND alias = m.user_key LIMIT 1) a ON true ORDER BY m.id "
        "ON CONFLICT (project_id, message_id) DO NOTHING RETURNING project_id) "
        "SELECT project_id, count(*), 0 FROM moved GROUP BY project_id "
        "UNION ALL SELECT project_id, 0, count(*) FROM inserted GROUP BY project_id"
    )


async def load_chunk(conn: AsyncConnection, limit: int | None = None) -> tuple[int, Counter[int]]:
    """Move up to ``limit`` of the oldest staged rows into the events table (inside the
    caller's transaction). Returns (rows moved, duplicates skipped per project)."""
    limit = limit or LOAD_CHUNK[conn.dialect.name]
    duplicates: Counter[int] = Counter()
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql("SELECT pg_advisory_xact_lock($1)", (_PG_LOCK_KEY,))
        # Ordering a chunk's rows (≈1 KB each) by staged id spilled to disk under the default
        # 4 MB work_mem (an external merge of ≈8 MB per 10,000 rows); in memory it is cheap.
        await conn.exec_driver_sql(f"SET LOCAL work_mem = '{LOAD_WORK_MEM}'")
        moved = 0
        for row in await conn.exec_driver_sql(_pg_load_sql(), (limit,)):
            project_id, taken, new = tuple(row)
            moved += taken
            duplicates[project_id] += taken - new
        return moved, +duplicates
    # A chunk updates the same index pages many times over; the writer connection's page
    # cache (``core.db.WRITER_CACHE_KIB``) keeps them from one chunk to the next.
    return await _load_sqlite_chunk(conn, limit)


async def _load_sqlite_chunk(conn: AsyncConnection, limit: int) -> tuple[int, Counter[int]]:
    duplicates: Counter[int] = Counter()
    bounds = await conn.exec_driver_sql(
        f"SELECT max(id), count(*) FROM (SELECT id FROM {incoming.name} ORDER BY id LIMIT ?)", (limit,)
    )
    high, count = tuple(bounds.one())
    if not count:
        return 0, duplicates
    per_project = await conn.exec_driver_sql(
        f"SELECT project_id, count(*) FROM {incoming.name} WHERE id <= ? GROUP BY project_id", (high,)
    )
    for row in per_project.all():
        project_id, taken = tuple(row)
        inserted = await conn.exec_driver_sql(_sqlite_load_sql(), (high, project_id))
        duplicates[project_id] += taken - int(inserted.rowcount or 0)
    await conn.exec_driver_sql(f"DELETE FROM {incoming.name} WHERE id <= ?", (high,))
    return int(count), +duplicates


class Loader:
    """One per process: moves staged rows into the events table, in the background as rows
    are staged, and at once when a reader asks (:meth:`drain`)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # Rows this process staged and no load has moved yet; None until the first drain
        # has looked at the table (rows a stopped process left behind).
        self.pending: int | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._stats_checked = 0.0

    def staged(self, count: int) -> None:
        """Called after an ingest commit staged ``count`` rows."""
        if count <= 0:
            return
        self.pending = (self.pending or 0) + count
        if self.pending >= LOAD_BATCH:
            self._full.set()
        self._wake.set()
        self._ensure_task()

    def start(self) -> None:
        """Load, in the background, whatever a previous process left staged."""
        self._full.set()
        self._wake.set()
        self._ensure_task()

    def _ensure_task(self) -> None:
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="analytics-loader")

    async def drain(self, *, everything: bool = False) -> int:
        """Load what is staged now; returns rows moved. Without ``everything`` it does
        nothing (no query) when this process has nothing pending: rows another process
        staged are its loader's to move, within ``LOAD_DELAY_SECONDS``."""
        if self.pending == 0 and not everything:
            return 0
        moved = 0
        async with self._lock:
            while True:
                async with self.ctx.db.transaction() as conn:
                    count, duplicates = await load_chunk(conn)
                    if duplicates:
                        await _count_duplicates(conn, duplicates)
                moved += count
                self.pending = max(0, (self.pending or 0) - count)
                if count < LOAD_CHUNK[self.ctx.db.dialect_name]:
                    break
            if moved == 0:
                self.pending = 0
        return moved

    async def _run(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=30)
            except TimeoutError:
                if not self.pending:
                    return  # idle: the next staged() restarts the task
                continue
            if (self.pending or 0) < LOAD_BATCH:
                with contextlib.suppress(TimeoutError):  # let a chunk gather, unless enough arrives first
                    await asyncio.wait_for(self._full.wait(), timeout=LOAD_DELAY_SECONDS)
            self._wake.clear()
            self._full.clear()
            try:
                await self.drain()
                await self._keep_statistics()
            except Exception:  # the rows stay staged (durable); the next wake retries
                log.exception("loading staged analytics events failed")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _keep_statistics(self) -> None:
        now = time.monotonic()
        if now - self._stats_checked >= STATS_EVERY_SECONDS:
            self._stats_checked = now
            await pgstats.keep_fresh(self.ctx.db, PROBED_TABLES)
            await pgstats.keep_fresh(self.ctx.db, [incoming.name], analyze=False)

    async def close(self) -> None:
        """Stop the background task and load what is staged (best effort: staged rows are
        durable, and the next process start or rollup loads anything left)."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.drain()
        except Exception as exc:
            log.warning("staged analytics events not loaded at shutdown (%s); the next start loads them", exc)


async def add_counters(conn: AsyncConnection, project_id: int, day: int, counts: Counter[str]) -> None:
    """Add to the per-day tallies of messages not stored as sent (duplicate, suppressed, …)."""
    for outcome, count in sorted(counts.items()):  # one lock order for concurrent writers
        if not count:
            continue
        stmt = dialect_insert(conn, ingest_counters).values(
            project_id=project_id, day=day, outcome=outcome, count=count
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["project_id", "day", "outcome"],
                set_={"count": ingest_counters.c.count + stmt.excluded.count},
            )
        )


async def _count_duplicates(conn: AsyncConnection, duplicates: Counter[int]) -> None:
    day = int(time.time() * 1000) // DAY_MS
    for project_id, count in duplicates.items():
        EVENTS_TOTAL.labels("duplicate").inc(count)
        await add_counters(conn, project_id, day, Counter({"duplicate": count}))


def loader(ctx: Context) -> Loader:
    """The process's loader."""
    found: Loader | None = ctx.extras.get("analytics_loader")
    if found is None:
        found = ctx.extras["analytics_loader"] = Loader(ctx)
        ctx.extras.setdefault("close_hooks", []).append(found.close)
    return found


async def make_visible(ctx: Context) -> None:
    """Load staged rows so that a read sees every message acknowledged before it."""
    await loader(ctx).drain()
