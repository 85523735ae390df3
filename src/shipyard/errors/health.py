"""Release health from ``session`` and ``sessions`` items: crash-free sessions and users per
release, environment and OTA update, over time, and adoption.

Counting (Sentry's session protocol)
    A session is counted once, on its ``init: true`` update. It counts as *errored* once
    when an update reports ``errors > 0`` or a crashed/abnormal status, as *crashed* or
    *abnormal* when it ends so. Terminal sessions (exited, crashed, abnormal) are not
    updated again. Pre-aggregated ``sessions`` buckets add their counts directly.
    crash-free sessions = 1 − crashed / total; crash-free users = 1 − users with a crashed
    session / users (``did``, hashed).

OTA update attribution (sessions carry only ``release``, ``environment``, ``ip_address``
and ``user_agent``), first match wins:
    1. ``attrs.update_id`` (or ``attrs["expo.updates.update_id"]``), for apps that add it;
    2. a UUID inside the release string — EAS update ids are UUIDs, so an app that sets
       ``release: `${version}+${Updates.updateId}` `` (or legacy sentry-expo's
       ``dist = updateId`` folded into the release) is attributed per update;
    3. otherwise the session has no update id ("") and counts only per release.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.db import insert_ignore, upsert
from shipyard.core.signals import SignalReading
from shipyard.errors.models import session_hourly, session_state, session_users
from shipyard.errors.normalize import obj, parse_timestamp

TERMINAL = ("exited", "crashed", "abnormal")
STATUSES = ("ok", *TERMINAL, "errored")
UPDATE_WINDOW = timedelta(days=5)  # the protocol accepts session updates for five days
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def update_id_for(attrs: dict[str, Any], release: str) -> str:
    for key in ("update_id", "expo.updates.update_id", "ota_update_id"):
        value = attrs.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:64].lower()
    match = _UUID.search(release)
    return match.group(0).lower() if match else ""


def hash_did(project_id: int, did: Any) -> str | None:
    if did is None or did == "":
        return None
    return hashlib.sha256(f"{project_id}:{did}".encode()).hexdigest()[:32]


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def day_of(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class SessionUpdate:
    sid: str
    did_hash: str | None
    init: bool
    started: datetime
    status: str
    errors: int
    release: str
    environment: str
    update_id: str
    seq: int


@dataclass
class Aggregate:
    started: datetime
    did_hash: str | None
    exited: int
    errored: int
    abnormal: int
    crashed: int
    release: str
    environment: str
    update_id: str


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def parse_session(project_id: int, payload: dict[str, Any], received_at: datetime) -> SessionUpdate | None:
    attrs = obj(payload.get("attrs"))
    release = str(attrs.get("release") or "")[:250]
    sid = payload.get("sid")
    if not release or not isinstance(sid, str) or not sid:
        return None
    status = str(payload.get("status") or "ok").lower()
    if status not in STATUSES:
        status = "ok"
    return SessionUpdate(
        sid=sid[:36],
        did_hash=hash_did(project_id, payload.get("did")),
        init=payload.get("init") is True,
        started=parse_timestamp(payload.get("started"), received_at),
        status=status,
        errors=_count(payload.get("errors")),
        release=release,
        environment=str(attrs.get("environment") or "production")[:64],
        update_id=update_id_for(attrs, release),
        seq=_count(payload.get("seq")),
    )


def parse_aggregates(project_id: int, payload: dict[str, Any], received_at: datetime) -> list[Aggregate]:
    attrs = obj(payload.get("attrs"))
    release = str(attrs.get("release") or "")[:250]
    if not release:
        return []
    environment = str(attrs.get("environment") or "production")[:64]
    update_id = update_id_for(attrs, release)
    out = []
    for bucket in payload.get("aggregates") or []:
        if not isinstance(bucket, dict):
            continue
        out.append(
            Aggregate(
                started=parse_timestamp(bucket.get("started"), received_at),
                did_hash=hash_did(project_id, bucket.get("did")),
                exited=_count(bucket.get("exited")),
                errored=_count(bucket.get("errored")),
                abnormal=_count(bucket.get("abnormal")),
                crashed=_count(bucket.get("crashed")),
                release=release,
                environment=environment,
                update_id=update_id,
            )
        )
    return out


BucketKey = tuple[datetime, str, str, str]  # hour, release, environment, update id
UserKey = tuple[datetime, str, str, str, str]  # day, release, environment, update id, did hash


class HealthBatch:
    """Counter deltas for one digest batch of one project, written with a few statements."""

    def __init__(self, project_id: int) -> None:
        self.project_id = project_id
        self.buckets: dict[BucketKey, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # total, errored, crashed, abn.
        self.users: dict[UserKey, bool] = {}

    def _user(self, key: UserKey, crashed: bool) -> None:
        self.users[key] = self.users.get(key, False) or crashed

    def add_aggregate(self, agg: Aggregate) -> None:
        counts = self.buckets[(hour_of(agg.started), agg.release, agg.environment, agg.update_id)]
        total = agg.exited + agg.errored + agg.abnormal + agg.crashed
        counts[0] += total
        counts[1] += agg.errored + agg.abnormal + agg.crashed
        counts[2] += agg.crashed
        counts[3] += agg.abnormal
        if agg.did_hash and total:
            key = (day_of(agg.started), agg.release, agg.environment, agg.update_id, agg.did_hash)
            self._user(key, agg.crashed > 0)

    async def apply_updates(self, conn: AsyncConnection, updates: list[SessionUpdate], now: datetime) -> None:
        """Fold session updates into bucket deltas using (and updating) per-session state."""
        if not updates:
            return
        sids = sorted({u.sid for u in updates})
        existing = {
            r.sid: r
            for r in await conn.execute(
                select(session_state).where(
                    session_state.c.project_id == self.project_id, session_state.c.sid.in_(sids)
                )
            )
        }
        state: dict[str, dict[str, Any]] = {sid: dict(row._mapping) for sid, row in existing.items()}
        created: set[str] = set()
        for u in sorted(updates, key=lambda u: (u.seq, u.status in TERMINAL)):
            current = state.get(u.sid)
            if current is None:
                current = state[u.sid] = {
                    "project_id": self.project_id,
                    "sid": u.sid,
                    "started": u.started,
                    "release": u.release,
                    "environment": u.environment,
                    "update_id": u.update_id,
                    "did_hash": u.did_hash,
                    "status": "ok",
                    "counted": False,
                    "errored_counted": False,
                    "updated_at": now,
                }
                created.add(u.sid)
            if current["status"] in TERMINAL:
                continue  # terminal sessions are never updated again
            self._fold(current, u)
            current["updated_at"] = now
        for sid, values in state.items():
            if sid in created:
                await conn.execute(insert_ignore(conn, session_state, values, conflict_columns=["project_id", "sid"]))
            else:
                await conn.execute(
                    update(session_state)
                    .where(session_state.c.project_id == self.project_id, session_state.c.sid == sid)
                    .values(
                        status=values["status"],
                        counted=values["counted"],
                        errored_counted=values["errored_counted"],
                        updated_at=now,
                    )
                )

    def _fold(self, current: dict[str, Any], u: SessionUpdate) -> None:
        # Attributes (release, environment, start) are immutable: the first update's win.
        key = (hour_of(current["started"]), current["release"], current["environment"], current["update_id"])
        counts = self.buckets[key]
        if u.init and not current["counted"]:
            current["counted"] = True
            counts[0] += 1
        if not current["counted"]:
            current["status"] = u.status if u.status in TERMINAL else current["status"]
            return
        errored = u.errors > 0 or u.status in ("crashed", "abnormal", "errored")
        if errored and not current["errored_counted"]:
            current["errored_counted"] = True
            counts[1] += 1
        if u.status == "crashed":
            counts[2] += 1
        elif u.status == "abnormal":
            counts[3] += 1
        if u.status in TERMINAL:
            current["status"] = u.status
        did = current["did_hash"] or u.did_hash
        if did:
            user_key = (
                day_of(current["started"]),
                current["release"],
                current["environment"],
                current["update_id"],
                did,
            )
            self._user(user_key, u.status == "crashed")

    async def write(self, conn: AsyncConnection) -> None:
        for (hour, release, environment, update_id), (total, errored, crashed, abnormal) in self.buckets.items():
            if not (total or errored or crashed or abnormal):
                continue
            values = {
                "project_id": self.project_id,
                "hour": hour,
                "release": release,
                "environment": environment,
                "update_id": update_id,
                "total": total,
                "errored": errored,
                "crashed": crashed,
                "abnormal": abnormal,
            }
            await conn.execute(
                upsert(
                    conn,
                    session_hourly,
                    values,
                    conflict_columns=["project_id", "hour", "release", "environment", "update_id"],
                    update={
                        "total": session_hourly.c.total + total,
                        "errored": session_hourly.c.errored + errored,
                        "crashed": session_hourly.c.crashed + crashed,
                        "abnormal": session_hourly.c.abnormal + abnormal,
                    },
                )
            )
        for (day, release, environment, update_id, did_hash), crashed_flag in self.users.items():
            values = {
                "project_id": self.project_id,
                "day": day,
                "release": release,
                "environment": environment,
                "update_id": update_id,
                "did_hash": did_hash,
                "crashed": crashed_flag,
            }
            conflict = ["project_id", "day", "release", "environment", "update_id", "did_hash"]
            if crashed_flag:
                stmt = upsert(conn, session_users, values, conflict_columns=conflict, update={"crashed": True})
            else:
                stmt = insert_ignore(conn, session_users, values, conflict_columns=conflict)
            await conn.execute(stmt)


# --- queries -------------------------------------------------------------------------------------


def _rate(bad: int, total: int) -> float | None:
    return None if total <= 0 else round(1.0 - bad / total, 6)


def _filters(
    table: Any, project_id: int, environment: str | None, release: str | None, update_id: str | None
) -> list[Any]:
    conds = [table.c.project_id == project_id]
    if environment:
        conds.append(table.c.environment == environment)
    if release:
        conds.append(table.c.release == release)
    if update_id is not None:
        conds.append(table.c.update_id == update_id)
    return conds


async def totals(
    conn: AsyncConnection,
    project_id: int,
    since: datetime,
    *,
    environment: str | None = None,
    release: str | None = None,
    update_id: str | None = None,
) -> dict[str, Any]:
    conds = _filters(session_hourly, project_id, environment, release, update_id)
    row = (
        await conn.execute(
            select(
                func.coalesce(func.sum(session_hourly.c.total), 0),
                func.coalesce(func.sum(session_hourly.c.errored), 0),
                func.coalesce(func.sum(session_hourly.c.crashed), 0),
                func.coalesce(func.sum(session_hourly.c.abnormal), 0),
            ).where(*conds, session_hourly.c.hour >= hour_of(since))
        )
    ).one()
    total, errored, crashed, abnormal = (int(v) for v in row)
    user_conds = _filters(session_users, project_id, environment, release, update_id)
    user_row = (
        await conn.execute(
            select(
                func.count(func.distinct(session_users.c.did_hash)),
                func.count(func.distinct(case((session_users.c.crashed, session_users.c.did_hash)))),
            ).where(*user_conds, session_users.c.day >= day_of(since))
        )
    ).one()
    users, crashed_users = int(user_row[0]), int(user_row[1])
    return {
        "sessions": total,
        "sessions_errored": max(0, errored - crashed - abnormal),
        "sessions_crashed": crashed,
        "sessions_abnormal": abnormal,
        "crash_free_sessions": _rate(crashed, total),
        "users": users,
        "users_crashed": crashed_users,
        "crash_free_users": _rate(crashed_users, users),
    }


async def by_release(
    conn: AsyncConnection,
    project_id: int,
    since: datetime,
    *,
    environment: str | None = None,
    per_update: bool = False,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The release health table: one row per release (and OTA update), with adoption."""
    now = now or datetime.now(UTC)
    dims = [session_hourly.c.release, session_hourly.c.environment]
    if per_update:
        dims.append(session_hourly.c.update_id)
    conds = _filters(session_hourly, project_id, environment, None, None)
    rows = (
        await conn.execute(
            select(
                *dims,
                func.sum(session_hourly.c.total),
                func.sum(session_hourly.c.errored),
                func.sum(session_hourly.c.crashed),
                func.sum(session_hourly.c.abnormal),
                func.max(session_hourly.c.hour),
            )
            .where(*conds, session_hourly.c.hour >= hour_of(since))
            .group_by(*dims)
        )
    ).all()
    user_dims = [session_users.c.release, session_users.c.environment]
    if per_update:
        user_dims.append(session_users.c.update_id)
    user_rows = (
        await conn.execute(
            select(
                *user_dims,
                func.count(func.distinct(session_users.c.did_hash)),
                func.count(func.distinct(case((session_users.c.crashed, session_users.c.did_hash)))),
            )
            .where(*_filters(session_users, project_id, environment, None, None), session_users.c.day >= day_of(since))
            .group_by(*user_dims)
        )
    ).all()
    n = len(dims)
    users = {tuple(r[:n]): (int(r[n]), int(r[n + 1])) for r in user_rows}
    adoption = await _adoption(conn, project_id, environment, per_update, now)
    out = []
    for r in rows:
        key = tuple(r[:n])
        total, errored, crashed, abnormal = (int(v or 0) for v in r[n : n + 4])
        user_total, user_crashed = users.get(key, (0, 0))
        out.append(
            {
                "release": r[0],
                "environment": r[1],
                **({"update_id": r[2] or None} if per_update else {}),
                "sessions": total,
                "sessions_errored": max(0, errored - crashed - abnormal),
                "sessions_crashed": crashed,
                "sessions_abnormal": abnormal,
                "crash_free_sessions": _rate(crashed, total),
                "users": user_total,
                "users_crashed": user_crashed,
                "crash_free_users": _rate(user_crashed, user_total),
                "adoption_sessions_24h": adoption.get(key, (0.0, 0.0))[0],
                "adoption_users_24h": adoption.get(key, (0.0, 0.0))[1],
                "last_session_hour": r[n + 4],
            }
        )
    out.sort(
        key=lambda row: (row["last_session_hour"] or datetime.min.replace(tzinfo=UTC), row["sessions"]), reverse=True
    )
    return out


async def _adoption(
    conn: AsyncConnection, project_id: int, environment: str | None, per_update: bool, now: datetime
) -> dict[tuple[Any, ...], tuple[float, float]]:
    """Share of the last 24 hours' sessions and users that each release (and update) had."""
    since = now - timedelta(hours=24)
    dims = [session_hourly.c.release, session_hourly.c.environment]
    if per_update:
        dims.append(session_hourly.c.update_id)
    rows = (
        await conn.execute(
            select(*dims, func.sum(session_hourly.c.total))
            .where(
                *_filters(session_hourly, project_id, environment, None, None), session_hourly.c.hour >= hour_of(since)
            )
            .group_by(*dims)
        )
    ).all()
    n = len(dims)
    total = sum(int(r[n] or 0) for r in rows)
    user_dims = [session_users.c.release, session_users.c.environment]
    if per_update:
        user_dims.append(session_users.c.update_id)
    user_rows = (
        await conn.execute(
            select(*user_dims, func.count(func.distinct(session_users.c.did_hash)))
            .where(*_filters(session_users, project_id, environment, None, None), session_users.c.day >= day_of(since))
            .group_by(*user_dims)
        )
    ).all()
    all_users = (
        await conn.execute(
            select(func.count(func.distinct(session_users.c.did_hash))).where(
                *_filters(session_users, project_id, environment, None, None), session_users.c.day >= day_of(since)
            )
        )
    ).scalar_one()
    user_share = {tuple(r[:n]): (int(r[n]) / all_users if all_users else 0.0) for r in user_rows}
    return {
        tuple(r[:n]): (round(int(r[n] or 0) / total, 4) if total else 0.0, round(user_share.get(tuple(r[:n]), 0.0), 4))
        for r in rows
    }


async def series(
    conn: AsyncConnection,
    project_id: int,
    since: datetime,
    *,
    environment: str | None = None,
    release: str | None = None,
    update_id: str | None = None,
) -> list[dict[str, Any]]:
    """Crash-free sessions per hour."""
    conds = _filters(session_hourly, project_id, environment, release, update_id)
    rows = await conn.execute(
        select(
            session_hourly.c.hour,
            func.sum(session_hourly.c.total),
            func.sum(session_hourly.c.crashed),
            func.sum(session_hourly.c.errored),
        )
        .where(*conds, session_hourly.c.hour >= hour_of(since))
        .group_by(session_hourly.c.hour)
        .order_by(session_hourly.c.hour)
    )
    return [
        {
            "hour": r[0],
            "sessions": int(r[1] or 0),
            "crashed": int(r[2] or 0),
            "errored": int(r[3] or 0),
            "crash_free_sessions": _rate(int(r[2] or 0), int(r[1] or 0)),
        }
        for r in rows
    ]


async def active_users(conn: AsyncConnection, project_id: int, since: datetime) -> int:
    return int(
        (
            await conn.execute(
                select(func.count(func.distinct(session_users.c.did_hash))).where(
                    session_users.c.project_id == project_id, session_users.c.day >= day_of(since)
                )
            )
        ).scalar_one()
    )


async def purge_state(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(session_state.delete().where(session_state.c.updated_at < now - UPDATE_WINDOW))
    return int(result.rowcount or 0)


# --- the rollout signal ---------------------------------------------------------------------------


async def crash_free_signal(
    ctx: Context, project_id: int, update_id: str, control_update_id: str | None, since: datetime
) -> SignalReading | None:
    """Crash-free sessions of an OTA update (and of its control) since ``since``; None without data."""
    async with ctx.db.connect() as conn:
        subject = await totals(conn, project_id, since, update_id=update_id.lower())
        control = (
            await totals(conn, project_id, since, update_id=control_update_id.lower()) if control_update_id else None
        )
    if subject["sessions"] == 0:
        return None
    value = float(subject["crash_free_sessions"] or 0.0)
    control_value = None if not control or not control["sessions"] else float(control["crash_free_sessions"] or 0.0)
    description = f"crash-free sessions {value * 100:.2f} % over {subject['sessions']} sessions"
    if control_value is not None and control:
        description += f" (control {control_value * 100:.2f} % over {control['sessions']})"
    return SignalReading(
        value=value,
        sample_size=int(subject["sessions"]),
        control_value=control_value,
        control_size=int(control["sessions"]) if control else 0,
        higher_is_better=True,
        description=description,
    )
