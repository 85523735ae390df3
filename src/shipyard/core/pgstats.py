"""PostgreSQL: keep planner statistics fresh, and churned tables vacuumed, ourselves.

PostgreSQL picks indexes from table statistics that autovacuum gathers. Where autovacuum
is off (it is on the CI machine), or behind a table that grew from nothing a minute ago,
the planner plans for the table it last saw: on a young alias table it probed
``(project_id, user_key)`` and filtered 1,600 rows per key instead of using the primary
key, and analytics ingest fell from 15,000 to 4,000 events/s. A table that is emptied as
fast as it is filled (the analytics landing table) also needs its dead rows vacuumed, or
every scan of it reads all the rows ever deleted.

So the code that changes a table fast calls :func:`keep_fresh` now and then, and a job
does it for every table each minute. The thresholds are autovacuum's defaults scaled up,
so where autovacuum is keeping up this finds nothing to do. ``SKIP_LOCKED`` leaves a table
that autovacuum (or another process) is already working on alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from shipyard.core.db import Database

log = logging.getLogger("shipyard.pgstats")

# ANALYZE when this many rows changed since the last one, plus this share of the table…
ANALYZE_BASE, ANALYZE_SCALE = 1_000, 0.2
# …or, for a table never analyzed, as soon as this many rows arrived (it is small: cheap).
FIRST_ANALYZE = 100
# …VACUUM when this many dead rows wait, plus this share of the live ones.
VACUUM_BASE, VACUUM_SCALE = 5_000, 0.2

_STATS_SQL = (
    "SELECT relname, n_live_tup, n_dead_tup, n_mod_since_analyze, "
    "last_analyze IS NULL AND last_autoanalyze IS NULL FROM pg_stat_user_tables "
    "WHERE schemaname = current_schema() AND ($1::text[] IS NULL OR relname = ANY($1::text[]))"
)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def keep_fresh(db: Database, tables: Sequence[str] | None = None, *, analyze: bool = True) -> list[str]:
    """ANALYZE (and VACUUM, when dead rows pile up) the given tables — every table when
    None — that changed enough since PostgreSQL last did. ``analyze=False`` only vacuums
    (a queue table, whose plans do not depend on its statistics). Returns what it ran;
    nothing on SQLite, which plans without gathered statistics."""
    if db.is_sqlite:
        return []
    done: list[str] = []
    async with db.engine.connect() as conn:
        # VACUUM cannot run inside a transaction block.
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        rows = await auto.exec_driver_sql(_STATS_SQL, (list(tables) if tables is not None else None,))
        for relname, live, dead, modified, never in (tuple(row) for row in rows.all()):
            command = None
            if dead > VACUUM_BASE + VACUUM_SCALE * live:
                command = "VACUUM (ANALYZE, SKIP_LOCKED)" if analyze else "VACUUM (SKIP_LOCKED)"
            elif analyze and modified >= (FIRST_ANALYZE if never else ANALYZE_BASE + ANALYZE_SCALE * live):
                command = "ANALYZE (SKIP_LOCKED)"
            if command is None:
                continue
            started = time.perf_counter()
            await auto.exec_driver_sql(f"{command} {_quoted(relname)}")
            log.debug("%s %s took %.0f ms", command, relname, (time.perf_counter() - started) * 1000)
            done.append(f"{command} {relname}")
    return done
