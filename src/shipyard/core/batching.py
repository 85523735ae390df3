"""Group commit: many requests share one database transaction.

An ingest request hands its rows to a :class:`GroupCommitter` and waits. The committer
collects everything submitted while the previous transaction was committing (up to
``max_batch`` items), writes it in one transaction — rows for the same table as a single
``executemany`` — and then wakes every waiter. Each request is answered only after its
rows are committed (durable), while the database sees one commit per group instead of
one per request (fast).

Work that can be merged (``run_merged``) is handed over as data: every payload of the
same kind in a group goes to one call, so an ingest stream writes each table once per
group rather than once per request.

If a group's transaction fails, its items are retried one by one so that one bad item
fails only its own request.

On PostgreSQL a committer may keep several groups in flight (``parallel``): while one
group waits for its commit to reach the disk, the next is already being written on
another connection. Only work whose writes commute may ask for it — inserts, and upserts
that merge in SQL — since groups in flight commit in any order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.db import Database

log = logging.getLogger("shipyard.batching")

ConnFn = Callable[[AsyncConnection], Awaitable[Any]]
# Writes the payloads of many requests at once; returns one result per payload, in order.
MergedFn = Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]]


@dataclass
class _Item:
    future: asyncio.Future[Any]
    table: Table | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    conflict_columns: list[str] | None = None
    fn: ConnFn | None = None
    merged_fn: MergedFn | None = None
    payload: Any = None


class GroupCommitter:
    def __init__(self, db: Database, *, max_batch: int = 2000, name: str = "default", parallel: int = 1) -> None:
        self.db = db
        self.max_batch = max_batch
        self.name = name
        self._queue: list[_Item] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # SQLite has one writer: a second group in flight would only wait for the lock.
        self._slots = asyncio.Semaphore(1 if db.is_sqlite else max(1, parallel))
        self._in_flight: set[asyncio.Task[None]] = set()

    # --- submitting -------------------------------------------------------------------------

    async def insert(
        self, table: Table, rows: dict[str, Any] | list[dict[str, Any]], *, ignore_conflicts_on: list[str] | None = None
    ) -> None:
        """Insert rows; returns once they are committed. With ``ignore_conflicts_on``,
        rows that collide on those columns are skipped (idempotent ingest)."""
        batch = rows if isinstance(rows, list) else [rows]
        if not batch:
            return
        await self._submit(_Item(self._future(), table=table, rows=batch, conflict_columns=ignore_conflicts_on))

    async def run(self, fn: ConnFn) -> Any:
        """Run ``fn(conn)`` inside a group transaction; returns its result once committed."""
        return await self._submit(_Item(self._future(), fn=fn))

    async def run_merged(self, fn: MergedFn, payload: Any) -> Any:
        """Have ``fn(conn, payloads)`` write ``payload`` together with every other payload
        submitted with the same ``fn`` in the group; returns this payload's result."""
        return await self._submit(_Item(self._future(), merged_fn=fn, payload=payload))

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, item: _Item) -> Any:
        if self._closed:
            raise RuntimeError(f"group committer {self.name} is closed")
        self._queue.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name=f"group-commit-{self.name}")
        self._wake.set()
        return await item.future

    # --- committing -------------------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            while self._queue or not self._closed:
                if not self._queue:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=30)
                    except TimeoutError:
                        if not self._queue:
                            return  # idle: the next submit restarts the loop
                    continue
                # Wait for a free slot first: what arrives meanwhile joins this group.
                await self._slots.acquire()
                group, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                task = asyncio.create_task(self._commit_in_slot(group), name=f"group-commit-{self.name}-write")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        finally:
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _commit_in_slot(self, group: list[_Item]) -> None:
        try:
            await self._commit_group(group)
        finally:
            self._slots.release()

    async def _commit_group(self, group: list[_Item]) -> None:
        try:
            results = await self._write(group)
        except Exception as exc:
            if len(group) == 1:
                self._settle(group[0], exc=exc)
                return
            log.warning("group commit of %d items failed (%s); retrying one by one", len(group), exc)
            for item in group:
                try:
                    (result,) = await self._write([item])
                except Exception as item_exc:
                    self._settle(item, exc=item_exc)
                else:
                    self._settle(item, result=result)
            return
        for item, result in zip(group, results, strict=True):
            self._settle(item, result=result)

    async def _write(self, group: list[_Item]) -> list[Any]:
        results: list[Any] = [None] * len(group)
        async with self.db.transaction() as conn:
            # Rows for the same table (and conflict rule) go out as one executemany.
            merged: dict[tuple[str, tuple[str, ...] | None], tuple[Table, list[dict[str, Any]]]] = {}
            for item in group:
                if item.table is not None:
                    key = (item.table.name, tuple(item.conflict_columns) if item.conflict_columns else None)
                    merged.setdefault(key, (item.table, []))[1].extend(item.rows)
            for (_name, conflict), (table, rows) in merged.items():
                if conflict:
                    await _insert_ignore_many(conn, table, rows, list(conflict))
                else:
                    await conn.execute(table.insert(), rows)
            # Merged work runs where its first item stands, so the group keeps submission order.
            batches: dict[MergedFn, list[int]] = {}
            for index, item in enumerate(group):
                if item.merged_fn is not None:
                    batches.setdefault(item.merged_fn, []).append(index)
            for index, item in enumerate(group):
                if item.fn is not None:
                    results[index] = await item.fn(conn)
                elif item.merged_fn is not None and batches[item.merged_fn][0] == index:
                    indexes = batches[item.merged_fn]
                    outcomes = await item.merged_fn(conn, [group[i].payload for i in indexes])
                    for i, result in zip(indexes, outcomes, strict=True):
                        results[i] = result
        return results

    @staticmethod
    def _settle(item: _Item, *, result: Any = None, exc: BaseException | None = None) -> None:
        if item.future.done():
            return
        if exc is not None:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)

    async def close(self) -> None:
        """Commit what is queued and stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task


async def _insert_ignore_many(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], conflict_columns: list[str]
) -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
    await conn.execute(stmt, rows)


def group_committer(ctx: Context, name: str = "default", *, max_batch: int = 2000, parallel: int = 1) -> GroupCommitter:
    """The process's committer for ``name`` (one per ingest stream keeps groups homogeneous).
    ``parallel`` groups may be in flight at once on PostgreSQL (see the module docstring)."""
    committers: dict[str, GroupCommitter] = ctx.extras.setdefault("group_committers", {})
    committer = committers.get(name)
    if committer is None:
        committer = committers[name] = GroupCommitter(ctx.db, max_batch=max_batch, name=name, parallel=parallel)
    return committer


async def close_all(ctx: Context) -> None:
    for committer in ctx.extras.get("group_committers", {}).values():
        await committer.close()
