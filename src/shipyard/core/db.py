"""Database access: one async engine, SQLAlchemy Core tables, SQLite or PostgreSQL.

Every feature defines its tables on :data:`metadata` in its own ``models.py`` and talks
to the database through ``AsyncConnection`` objects handed out by :class:`Database`.
Core (not the ORM) keeps hot paths cheap and makes the SQL visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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


def json_dumps(value: Any) -> str:
    """JSON text as the engine stores it (orjson; non-string keys allowed)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class DatabaseUnavailable(Exception):
    """The database cannot be reached; answered as 503 with Retry-After."""


# SQLSTATE classes meaning "the server or the connection is gone", not "your query is wrong":
# 08 connection exceptions, 57P admin shutdown / cannot connect now, 53 insufficient resources.
_OUTAGE_SQLSTATES = ("08", "57P", "53")


def is_outage(exc: BaseException, *, connecting: bool = False) -> bool:
    """Whether ``exc`` means the database is unreachable (as opposed to a bad query).

    While *connecting*, any OS-level error (refused, reset, timed out) counts; inside a
    transaction only errors that SQLAlchemy or the driver attribute to the connection do,
    so an unrelated ``OSError`` in a handler is not mistaken for an outage.
    """
    from sqlalchemy import exc as sa_exc

    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, DatabaseUnavailable | sa_exc.TimeoutError):
            return True
        if isinstance(seen, sa_exc.DBAPIError):
            if seen.connection_invalidated:
                return True
            sqlstate = getattr(seen.orig, "sqlstate", None) or getattr(seen.orig, "pgcode", None)
            if isinstance(sqlstate, str) and sqlstate.startswith(_OUTAGE_SQLSTATES):
                return True
            if "database is locked" in str(seen.orig):
                return True
            seen = seen.orig
            continue
        if connecting and isinstance(seen, OSError):
            return True
        module = type(seen).__module__
        if module.startswith("asyncpg") and type(seen).__name__ in (
            "ConnectionDoesNotExistError",
            "ConnectionFailureError",
            "CannotConnectNowError",
            "AdminShutdownError",
            "ConnectionRejectionError",
            "InternalClientError",
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# SQLite connections kept per process, as a multiple of ``db_pool_size``.
SQLITE_POOL_FACTOR = 4
# Page cache of the SQLite writer connection, in KiB (the default is 2,000).
WRITER_CACHE_KIB = 65_536


class Database:
    """The process-wide engine plus helpers for transactions."""

    def __init__(
        self, url: str, *, pool_size: int = 10, sqlite_synchronous: str = "NORMAL", connect_timeout: float = 5.0
    ) -> None:
        self.url = url
        self.dialect_name = "sqlite" if url.startswith("sqlite") else "postgresql"
        kwargs: dict[str, Any] = {"json_serializer": json_dumps, "json_deserializer": orjson.loads}
        if self.is_sqlite:
            # Opening a SQLite connection costs a thread (aiosqlite), a file open and four
            # pragmas; SQLAlchemy's default pool keeps only 5 and opens and closes the rest
            # per checkout, which the core benchmark showed under 32 concurrent requests.
            # Idle connections cost next to nothing, so keep enough for a busy process.
            kwargs.update(
                connect_args={"timeout": 30},
                pool_size=pool_size * SQLITE_POOL_FACTOR,
                max_overflow=pool_size * SQLITE_POOL_FACTOR,
            )
        else:
            # pre_ping replaces connections that died while the database was away, so the
            # process recovers by itself once it is back.
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_timeout=10,
                connect_args={"timeout": connect_timeout},
            )
        self.engine: AsyncEngine = create_async_engine(async_url(url), **kwargs)
        # The engine transactions use. On SQLite it is one connection, kept open: writers take
        # turns anyway (``write_lock``), and a connection's page cache is dropped whenever
        # another connection commits, so a single writer is the only one whose cache of the
        # index pages it keeps updating survives from one transaction to the next.
        self.write_engine = self.engine
        if self.is_sqlite:
            kwargs.update(pool_size=1, max_overflow=0)
            self.write_engine = create_async_engine(async_url(url), **kwargs)
            self._install_sqlite_pragmas(self.engine, sqlite_synchronous)
            self._install_sqlite_pragmas(self.write_engine, sqlite_synchronous, cache_kib=WRITER_CACHE_KIB)
            self._skip_idle_rollbacks(self.engine)
            self._skip_idle_rollbacks(self.write_engine)
        # SQLite allows one writer at a time; serialising writers in-process avoids
        # "database is locked" retries and is faster than letting them contend.
        self.write_lock = asyncio.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect_name == "sqlite"

    @staticmethod
    def _install_sqlite_pragmas(engine: AsyncEngine, synchronous: str, cache_kib: int | None = None) -> None:
        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            if cache_kib is not None:
                cursor.execute(f"PRAGMA cache_size=-{cache_kib}")
            cursor.close()

    @staticmethod
    def _skip_idle_rollbacks(engine: AsyncEngine) -> None:
        """Roll back only a connection that has a transaction open.

        SQLAlchemy rolls back every connection it closes (its autobegun transaction, or the
        pool's reset on return). The sqlite3 module opens a transaction only before a write,
        so after reads alone there is nothing to undo, yet each rollback is a round trip to
        the connection's aiosqlite thread: on a one-SELECT admin read it was one of five.
        """
        dialect = engine.sync_engine.dialect
        rollback = dialect.do_rollback

        def do_rollback(dbapi_connection: Any) -> None:
            driver = getattr(dbapi_connection, "driver_connection", None)  # aiosqlite.Connection
            raw = getattr(driver, "_conn", None)  # its sqlite3.Connection, idle while we ask
            if raw is not None and not raw.in_transaction:
                return
            rollback(dbapi_connection)

        dialect.do_rollback = do_rollback  # type: ignore[method-assign]

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (autocommit-free; nothing is written)."""
        conn = await self._open()
        try:
            yield conn
        except Exception as exc:
            if is_outage(exc):
                raise DatabaseUnavailable(str(exc)) from exc
            raise
        finally:
            await _close_quietly(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block exits without an exception."""
        if self.is_sqlite:
            async with self.write_lock, self._begin() as conn:
                yield conn
        else:
            async with self._begin() as conn:
                yield conn

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        conn = await self._open(self.write_engine)
        try:
            async with conn.begin():
                yield conn
        except Exception as exc:
            if is_outage(exc):
                raise DatabaseUnavailable(str(exc)) from exc
            raise
        finally:
            await _close_quietly(conn)

    async def _open(self, engine: AsyncEngine | None = None) -> AsyncConnection:
        conn = (engine or self.engine).connect()
        try:
            await conn.start()
        except Exception as exc:
            if is_outage(exc, connecting=True):
                raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
            raise
        return conn

    async def ping(self) -> float:
        """Round-trip a trivial query; returns seconds taken or raises."""
        from sqlalchemy import text

        started = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return time.perf_counter() - started

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.write_engine is not self.engine:
            await self.write_engine.dispose()


async def _close_quietly(conn: AsyncConnection) -> None:
    # Closing a connection whose server went away must not mask the original error.
    try:
        await conn.close()
    except Exception:  # noqa: BLE001
        with contextlib.suppress(Exception):
            await conn.invalidate()


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


@functools.cache
def prepared_upsert(
    dialect_name: str,
    table: Any,
    conflict_columns: tuple[str, ...],
    update_columns: tuple[str, ...],
    returning: bool = False,
) -> Any:
    """:func:`upsert` built once per dialect, table and column set: ``INSERT … ON CONFLICT
    (…) DO UPDATE SET`` each of ``update_columns`` to its value in the new row. Execute it
    with the row as parameters.

    For hot paths: building :func:`upsert` with literal values (each one coerced into a bind
    parameter, for the insert and again for the update) cost a device registration more CPU
    than running it.
    """
    dialect_insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    statement = dialect_insert(table)
    updates = {name: statement.excluded[name] for name in update_columns}
    statement = statement.on_conflict_do_update(index_elements=list(conflict_columns), set_=updates)
    return statement.returning(*table.c) if returning else statement
