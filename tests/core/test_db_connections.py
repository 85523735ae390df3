"""Connections handed back to the pool leave nothing behind: an uncommitted write made on a
read connection is undone, so the next request neither sees it nor waits on its lock."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, Table, func, select

from shipyard.core.db import Database

_metadata = MetaData()
notes = Table("notes", _metadata, Column("id", Integer, primary_key=True))


async def test_uncommitted_write_on_a_read_connection_is_rolled_back(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}", pool_size=1)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_metadata.create_all)
        async with db.connect() as conn:
            await conn.execute(notes.insert().values(id=1))  # never committed
        async with db.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(notes))).scalar_one() == 0
        # The abandoned write's lock is gone: a writer gets through at once.
        async with db.transaction() as conn:
            await conn.execute(notes.insert().values(id=2))
        async with db.connect() as conn:
            assert (await conn.execute(select(notes.c.id))).scalars().all() == [2]
    finally:
        await db.dispose()


async def test_reads_leave_connections_reusable(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}", pool_size=1)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_metadata.create_all)
        for _ in range(3):
            async with db.connect() as conn:
                await conn.execute(select(notes.c.id))
        async with db.transaction() as conn:
            await conn.execute(notes.insert().values(id=7))
        async with db.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(notes))).scalar_one() == 1
    finally:
        await db.dispose()
