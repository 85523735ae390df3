"""Adoption and launch health from the protocol itself.

Every manifest request tells which update the device runs (``expo-current-update-id``),
which one it has embedded, which updates recently failed to launch
(``expo-recent-failed-update-ids``) and the last fatal error. Requests only add to an
in-memory buffer; a background task writes the buffer in one transaction every
``updates_report_flush_seconds`` (and at shutdown), so the hot path never waits on the
database. Failed launches reported for an update under rollout trigger a policy
evaluation right after the flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import and_, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import jobs
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.signals import SignalReading
from shipyard.updates.models import device_updates, devices, fatal_errors, updates
from shipyard.updates.protocol import ManifestRequest

log = logging.getLogger("shipyard.updates")

MANIFEST_REQUESTS = Counter(
    "shipyard_updates_manifest_requests_total",
    "Manifest requests answered, by project, platform and outcome",
    ["project", "platform", "outcome"],
)
FAILED_LAUNCH_REPORTS = Counter(
    "shipyard_updates_failed_launch_reports_total", "Failed-launch reports received (device, update pairs)", ["project"]
)
DEVICES_RUNNING = Gauge(
    "shipyard_updates_devices_running", "Installations that last reported running an update", ["project", "update"]
)
FAILED_LAUNCHES = Gauge(
    "shipyard_updates_failed_launch_devices",
    "Installations that reported an update failed to launch",
    ["project", "update"],
)
FAILED_LAUNCH_RATE = Gauge(
    "shipyard_updates_failed_launch_rate", "Failed launches / installations that tried an update", ["project", "update"]
)
DEVICES_BY_SOURCE = Gauge(
    "shipyard_updates_channel_devices",
    "Installations per channel running embedded or OTA code",
    ["project", "channel", "source"],
)
ROLLOUT_PERCENTAGE = Gauge(
    "shipyard_updates_rollout_percentage", "Current percentage of active or halted rollouts", ["project", "group"]
)

_counter_cache: dict[tuple[int, str, str], Any] = {}
SEEN_LIMIT = 500_000  # per-process memory of what was already written (about 100 MB at the cap)


def count_request(project_id: int, platform: str, outcome: str) -> None:
    key = (project_id, platform, outcome)
    child = _counter_cache.get(key)
    if child is None:
        child = _counter_cache[key] = MANIFEST_REQUESTS.labels(str(project_id), platform, outcome)
    child.inc()


def fingerprint(message: str) -> str:
    return hashlib.sha1(message.encode(), usedforsecurity=False).hexdigest()


class _Clock:
    """The current time as a datetime and as the value the driver stores, formatted at most
    once per 10 ms: thousands of reports a second share a few formatted stamps, and a
    last-seen time 10 ms early changes nothing anyone reads."""

    def __init__(self, sqlite_text: bool) -> None:
        self._sqlite_text = sqlite_text
        self._tick = -1
        self._value: tuple[datetime, Any] = (utcnow(), None)

    def now(self) -> tuple[datetime, Any]:
        tick = int(time.time() * 100)
        if tick != self._tick:
            now = utcnow()
            # What UtcDateTime binds: naive UTC text on SQLite, an aware datetime on PostgreSQL.
            self._value = (now, now.strftime("%Y-%m-%d %H:%M:%S.%f") if self._sqlite_text else now)
            self._tick = tick
        return self._value


@dataclass
class ReportBuffer:
    # (project, client id) -> the updates_devices row in column order, times as driver values
    devices: dict[tuple[int, str], tuple[Any, ...]] = field(default_factory=dict)
    # (update id, client id) -> [project, served_at, ran_at, failed_at]; earliest time wins
    marks: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    fatal: dict[tuple[int, str, str], list[Any]] = field(default_factory=dict)
    failure_projects: set[int] = field(default_factory=set)

    def empty(self) -> bool:
        return not (self.devices or self.marks or self.fatal)


class Reports:
    """The process's buffer of device reports and the task that flushes it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.buffer = ReportBuffer()
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self._seen: dict[tuple[int, str], tuple[Any, ...]] = {}
        self._marked: set[tuple[str, str, int]] = set()
        self._clock = _Clock(ctx.db.is_sqlite)

    def record(self, project_id: int, channel: str, req: ManifestRequest, served_update_id: str | None) -> None:
        client = req.client_id
        if client is None:
            return  # nothing stable to count devices by
        # A device checks on every launch; rewrite its row only when its state changed or its
        # last_seen is a minute old, so steady traffic costs the database almost nothing.
        state = (channel, req.runtime_version, req.current_update_id, req.embedded_update_id, int(time.time() // 60))
        key = (project_id, client)
        if (
            self._seen.get(key) == state
            and not req.failed_update_ids
            and not req.fatal_error
            and (served_update_id is None or (served_update_id, client, 1) in self._marked)
        ):
            return
        if len(self._seen) > SEEN_LIMIT:
            self._seen.clear()
        self._seen[key] = state
        now, stamp = self._clock.now()
        buf = self.buffer
        # The row as the driver takes it (column order of the table): the flush hands these
        # tuples straight to executemany without per-row work on the event loop.
        buf.devices[key] = (
            project_id,
            client,
            req.platform,
            req.runtime_version,
            channel,
            req.current_update_id,
            req.embedded_update_id,
            stamp,
            stamp,
        )
        if served_update_id is not None:
            self._mark(project_id, served_update_id, client, 1, stamp)
        if req.current_update_id is not None and req.current_update_id != req.embedded_update_id:
            self._mark(project_id, req.current_update_id, client, 2, stamp)
        for failed in req.failed_update_ids:
            self._mark(project_id, failed, client, 3, stamp)
        if req.failed_update_ids:
            buf.failure_projects.add(project_id)
        if req.fatal_error:
            update_id = req.failed_update_ids[0] if req.failed_update_ids else (req.current_update_id or "")
            fatal_key = (project_id, update_id, fingerprint(req.fatal_error))
            entry = buf.fatal.get(fatal_key)
            if entry is None:
                buf.fatal[fatal_key] = [req.fatal_error, 1, now]
            else:
                entry[1] += 1
                entry[2] = now
        self.start()

    def _mark(self, project_id: int, update_id: str, client: str, slot: int, now: Any) -> None:
        if (update_id, client, slot) in self._marked:
            return  # the earliest time is what is stored; it is already on its way
        if len(self._marked) > SEEN_LIMIT:
            self._marked.clear()
        self._marked.add((update_id, client, slot))
        entry = self.buffer.marks.get((update_id, client))
        if entry is None:
            entry = self.buffer.marks[(update_id, client)] = [project_id, None, None, None]
        if entry[slot] is None:
            entry[slot] = now

    def start(self) -> None:
        if self._task is None and not self._closed:
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._loop(), name="updates-report-flush")

    async def _loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.ctx.settings.updates_report_flush_seconds)
            try:
                await self.flush()
            except Exception as exc:  # the next round retries with what is still buffered
                log.warning("flushing device reports failed: %s", exc)

    async def flush(self) -> int:
        """Write everything buffered so far in one transaction; returns rows written."""
        async with self._flush_lock:
            buf, self.buffer = self.buffer, ReportBuffer()
            if buf.empty():
                return 0
            try:
                async with self.ctx.db.transaction() as conn:
                    written = await _write(conn, buf)
            except Exception:
                self._merge_back(buf)
                self._seen.clear()  # the retry must not be skipped as "already written"
                self._marked.clear()
                raise
        return written

    def _merge_back(self, old: ReportBuffer) -> None:
        """Keep a failed flush's reports (newer reports for the same device win)."""
        new = self.buffer
        for key, value in old.devices.items():
            new.devices.setdefault(key, value)
        for mark_key, marks in old.marks.items():
            current = new.marks.get(mark_key)
            if current is None:
                new.marks[mark_key] = marks
            else:
                for slot in (1, 2, 3):
                    if marks[slot] is not None and (current[slot] is None or marks[slot] < current[slot]):
                        current[slot] = marks[slot]
        for fatal_key, fatal in old.fatal.items():
            seen = new.fatal.get(fatal_key)
            if seen is None:
                new.fatal[fatal_key] = fatal
            else:
                seen[1] += fatal[1]
        new.failure_projects |= old.failure_projects

    async def close(self) -> None:
        """Stop the loop and write what is left (called when the context closes)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()


ROWS_PER_STEP = 1000  # rows per statement: bounds how long one flush step holds the event loop


_statements: dict[tuple[str, str], str] = {}


def _driver_statement(conn: AsyncConnection, name: str, build: Any) -> str:
    """An upsert compiled once per dialect to driver SQL taking rows in table column order.

    A flush writes thousands of rows a second under load (every new installation is one
    device row and one served mark). SQLAlchemy's per-row parameter processing ran on the
    event loop and stalled the manifest endpoint (p99 over 100 ms); tuples built when the
    report arrives go straight to the driver's executemany (aiosqlite's thread, asyncpg's
    C encoder) with no per-row Python work on the loop.
    """
    key = (conn.dialect.name, name)
    found = _statements.get(key)
    if found is None:
        table = {"devices": devices, "device_updates": device_updates}[name]
        compiled = build(_insert(conn, table)).compile(dialect=conn.dialect)
        if tuple(compiled.positiontup or ()) != tuple(c.name for c in table.c):
            raise RuntimeError(f"{table.name} upsert does not take its columns in table order")
        found = _statements[key] = compiled.string
    return found


def _devices_upsert(stmt: Any) -> Any:
    return stmt.on_conflict_do_update(
        index_elements=["project_id", "client_id"],
        set_={
            c: stmt.excluded[c]
            for c in ("platform", "runtime_version", "channel", "current_update_id", "embedded_update_id", "last_seen")
        },
    )


def _marks_upsert(stmt: Any) -> Any:
    return stmt.on_conflict_do_update(
        index_elements=["update_id", "client_id"],
        set_={
            col: func.coalesce(device_updates.c[col], stmt.excluded[col])
            for col in ("served_at", "ran_at", "failed_at")
        },
    )


async def _write_rows(conn: AsyncConnection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), ROWS_PER_STEP):
        await conn.exec_driver_sql(sql, rows[start : start + ROWS_PER_STEP])
        await asyncio.sleep(0)  # let waiting requests run between steps


def _insert(conn: AsyncConnection, table: Any) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


async def _write(conn: AsyncConnection, buf: ReportBuffer) -> int:
    written = 0
    if buf.devices:
        await _write_rows(conn, _driver_statement(conn, "devices", _devices_upsert), list(buf.devices.values()))
        written += len(buf.devices)
    if buf.marks:
        # Only ids of this server's updates: embedded ids and other servers' ids are not ours.
        ids = sorted({update_id for update_id, _ in buf.marks})
        known: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            for row in await conn.execute(
                select(updates.c.id, updates.c.project_id).where(updates.c.id.in_(ids[start : start + 500]))
            ):
                known[row.id] = row.project_id
        rows = [(u, c, m[0], m[1], m[2], m[3]) for (u, c), m in buf.marks.items() if known.get(u) == m[0]]
        if rows:
            await _write_rows(conn, _driver_statement(conn, "device_updates", _marks_upsert), rows)
            written += len(rows)
            by_project: dict[int, int] = {}
            for _, _, row_project, _, _, failed_at in rows:
                if failed_at is not None:
                    by_project[row_project] = by_project.get(row_project, 0) + 1
            for project_id, count in by_project.items():
                FAILED_LAUNCH_REPORTS.labels(str(project_id)).inc(count)
                # Evaluate the rollout policy soon instead of waiting for the next minute.
                window = int(time.time() // 10)
                await jobs.enqueue(
                    conn,
                    "updates.evaluate_policies",
                    {"project_id": project_id},
                    idempotency_key=f"updates-eval:{project_id}:{window}",
                    priority=20,
                    project_id=project_id,
                )
    if buf.fatal:
        stmt = _insert(conn, fatal_errors)
        stmt = stmt.on_conflict_do_update(
            index_elements=["project_id", "update_id", "fingerprint"],
            set_={"count": fatal_errors.c.count + stmt.excluded["count"], "last_seen": stmt.excluded["last_seen"]},
        )
        await conn.execute(
            stmt,
            [
                {
                    "project_id": pid,
                    "update_id": uid,
                    "fingerprint": fp,
                    "message": v[0],
                    "count": v[1],
                    "first_seen": v[2],
                    "last_seen": v[2],
                }
                for (pid, uid, fp), v in buf.fatal.items()
            ],
        )
        written += len(buf.fatal)
    return written


def reports(ctx: Context) -> Reports:
    found = ctx.extras.get("updates_reports")
    if found is None:
        found = ctx.extras["updates_reports"] = Reports(ctx)
        # Context.close() closes every registered group committer before the engine goes
        # away; registering here makes the buffer's last reports land on shutdown too.
        ctx.extras.setdefault("group_committers", {})["updates_reports"] = found
    return found


# --- insights ------------------------------------------------------------------------------------


async def update_health(conn: AsyncConnection, update_id: str) -> dict[str, Any]:
    """Devices offered the update, running it, failed launches and the failure rate."""
    row = (
        await conn.execute(
            select(
                func.count(device_updates.c.served_at).label("checked"),
                func.count(device_updates.c.ran_at).label("ran"),
                func.count(device_updates.c.failed_at).label("failed"),
                func.sum(
                    case(
                        (and_(device_updates.c.ran_at.is_not(None)) | device_updates.c.failed_at.is_not(None), 1),
                        else_=0,
                    )
                ).label("attempted"),
            ).where(device_updates.c.update_id == update_id)
        )
    ).first()
    running = (
        await conn.execute(select(func.count()).select_from(devices).where(devices.c.current_update_id == update_id))
    ).scalar_one()
    attempted = int(row.attempted or 0) if row is not None else 0
    failed = int(row.failed or 0) if row is not None else 0
    return {
        "update_id": update_id,
        "devices_checked": int(row.checked or 0) if row is not None else 0,
        "devices_launched": int(row.ran or 0) if row is not None else 0,
        "devices_running": int(running),
        "failed_launches": failed,
        "devices_attempted": attempted,
        "failure_rate": (failed / attempted) if attempted else None,
    }


async def groups_health(conn: AsyncConnection, group_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per update group (all its platforms): installations offered or running one of its
    updates, and the failed-launch rate among those that tried to launch it. The deployment
    history shows these live, so they are right for every deployment, not only rollouts."""
    if not group_ids:
        return {}
    attempted = case(
        (device_updates.c.ran_at.is_not(None) | device_updates.c.failed_at.is_not(None), 1),
        else_=0,
    )
    rows = await conn.execute(
        select(
            updates.c.group_id,
            func.count().label("devices"),
            func.count(device_updates.c.failed_at).label("failed"),
            func.sum(attempted).label("attempted"),
        )
        .select_from(device_updates.join(updates, updates.c.id == device_updates.c.update_id))
        .where(updates.c.group_id.in_(sorted(set(group_ids))))
        .group_by(updates.c.group_id)
    )
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        tried = int(r.attempted or 0)
        out[r.group_id] = {
            "devices": int(r.devices or 0),
            "error_rate": (int(r.failed or 0) / tried) if tried else None,
        }
    return out


async def top_fatal_errors(
    conn: AsyncConnection, project_id: int, update_id: str | None, limit: int = 10
) -> list[dict[str, Any]]:
    query = select(fatal_errors).where(fatal_errors.c.project_id == project_id)
    if update_id is not None:
        query = query.where(fatal_errors.c.update_id == update_id)
    rows = await conn.execute(query.order_by(fatal_errors.c.count.desc(), fatal_errors.c.last_seen.desc()).limit(limit))
    return [
        {
            "update_id": r.update_id or None,
            "message": r.message,
            "count": r.count,
            "first_seen": r.first_seen,
            "last_seen": r.last_seen,
        }
        for r in rows
    ]


async def channel_split(conn: AsyncConnection, project_id: int) -> list[dict[str, Any]]:
    """Per channel: installations running embedded code vs an OTA update."""
    is_embedded = (devices.c.current_update_id.is_(None)) | (
        devices.c.current_update_id == devices.c.embedded_update_id
    )
    rows = await conn.execute(
        select(
            devices.c.channel,
            func.sum(case((is_embedded, 1), else_=0)).label("embedded"),
            func.sum(case((is_embedded, 0), else_=1)).label("ota"),
        )
        .where(devices.c.project_id == project_id)
        .group_by(devices.c.channel)
        .order_by(devices.c.channel)
    )
    return [{"channel": r.channel, "embedded": int(r.embedded or 0), "ota": int(r.ota or 0)} for r in rows]


async def adoption_series(conn: AsyncConnection, update_id: str) -> list[tuple[str, int]]:
    """Cumulative installations that launched the update, per hour since the first one."""
    rows = await conn.execute(
        select(device_updates.c.ran_at).where(
            device_updates.c.update_id == update_id, device_updates.c.ran_at.is_not(None)
        )
    )
    hours: dict[str, int] = {}
    for (ran_at,) in rows:
        label = ran_at.strftime("%m-%d %H:00")
        hours[label] = hours.get(label, 0) + 1
    total = 0
    series = []
    for label in sorted(hours):
        total += hours[label]
        series.append((label, total))
    return series


# --- the health signal the rollout policy reads ------------------------------------------------


async def failed_launch_signal(
    ctx: Context, project_id: int, update_id: str, control_update_id: str | None, since: datetime
) -> SignalReading | None:
    async with ctx.db.connect() as conn:
        health = await update_health(conn, update_id)
        control = await update_health(conn, control_update_id) if control_update_id else None
    if health["devices_attempted"] == 0:
        return None
    return SignalReading(
        value=health["failure_rate"] or 0.0,
        sample_size=health["devices_attempted"],
        control_value=control["failure_rate"] if control else None,
        control_size=control["devices_attempted"] if control else 0,
        higher_is_better=False,
        description=f"{health['failed_launches']} of {health['devices_attempted']} installations failed to launch "
        "the update (expo-recent-failed-update-ids)",
    )
