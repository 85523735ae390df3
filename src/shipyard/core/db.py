"""Database access: one async engine, SQLAlchemy Core tables, SQLite or PostgreSQL.

Every feature defines its tables on :data:`metadata` in its own ``models.py`` and talks
to the database through ``AsyncConnection`` objects handed out by :class:`Database`.
Core (not the ORM) keeps hot paths cheap and makes the SQL visible.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Integer, MetaData, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import DateTime, TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# A 64-bit id that is still SQLite's rowid alias (INTEGER PRIMARY KEY) so it autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# JSON stored as JSONB on PostgreSQL (indexable), TEXT on SQLite.
Json = JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(sqlite.JSON(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both engines (SQLite stores naive ISO text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def async_url(url: str) -> str:
    """Map the user-facing URL schemes to the async drivers we use."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class DatabaseUnavailable(Exception):
    """The database cannot be reached; answered as 503 with Retry-After."""


class Database:
    """The process-wide engine plus helpers for transactions."""

    def __init__(self, url: str, *, pool_size: int = 10, sqlite_synchronous: str = "NORMAL") -> None:
        self.url = url
        self.dialect_name = "sqlite" if url.startswith("sqlite") else "postgresql"
        kwargs: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_timeout=10)
        self.engine: AsyncEngine = create_async_engine(async_url(url), **kwargs)
        if self.is_sqlite:
            self._install_sqlite_pragmas(sqlite_synchronous)
        # SQLite allows one writer at a time; serialising writers in-process avoids
        # "database is locked" retries and is faster than letting them contend.
        self.write_lock = asyncio.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect_name == "sqlite"

    def _install_sqlite_pragmas(self, synchronous: str) -> None:
        @event.listens_for(self.engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (autocommit-free; nothing is written)."""
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block exits without an exception."""
        if self.is_sqlite:
            async with self.write_lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    async def ping(self) -> float:
        """Round-trip a trivial query; returns seconds taken or raises."""
        from sqlalchemy import text

        started = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return time.perf_counter() - started

    async def dispose(self) -> None:
        await self.engine.dispose()


def insert_ignore(
    conn: AsyncConnection, table: Any, values: dict[str, Any] | list[dict[str, Any]], *, conflict_columns: list[str]
) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` on either engine; returns the statement to execute."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(table).values(values).on_conflict_do_nothing(index_elements=conflict_columns)


def upsert(
    conn: AsyncConnection, table: Any, values: dict[str, Any], *, conflict_columns: list[str], update: dict[str, Any]
) -> Any:
    """``INSERT … ON CONFLICT (…) DO UPDATE SET …`` on either engine."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(table).values(values).on_conflict_do_update(index_elements=conflict_columns, set_=update)
