"""Consent by purpose (with history), the suppression list, and privacy-mode salts.

Ingest reads consent and suppressions for every batch, so both are cached per process
for a few seconds; the process that records a change updates its own cache at once,
other processes see it within the TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics.config import PURPOSES
from shipyard.analytics.identity import dialect_insert, resolve
from shipyard.analytics.models import consent_history, consents, salts, suppressions
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.errors import BadRequest

CACHE_TTL = 5.0
_MAX_CACHE = 200_000
# Projects with at most this many analytics decisions are cached whole (one query per
# TTL instead of one per batch); larger ones are looked up per id.
_MAX_SNAPSHOT = 50_000


@dataclass
class _Cache:
    consent: dict[tuple[int, str], tuple[float, dict[str, bool]]]
    suppressed: dict[int, tuple[float, frozenset[str]]]
    salts: dict[tuple[int, int], str]
    # project → (expiry, every user's analytics decision, or None when there are too many)
    analytics: dict[int, tuple[float, dict[str, bool] | None]] = field(default_factory=dict)


def _cache(ctx: Context) -> _Cache:
    cache = ctx.extras.get("analytics_consent_cache")
    if cache is None:
        cache = ctx.extras["analytics_consent_cache"] = _Cache({}, {}, {})
    return cache


# --- consent -----------------------------------------------------------------------------------


def validate_purposes(purposes: Any) -> dict[str, bool]:
    if not isinstance(purposes, dict) or not purposes:
        raise BadRequest('purposes must be an object like {"analytics": true, "marketing": false}')
    unknown = [p for p in purposes if p not in PURPOSES]
    if unknown:
        raise BadRequest(f"unknown purpose {unknown[0]!r}; expected any of {', '.join(PURPOSES)}")
    if not all(isinstance(v, bool) for v in purposes.values()):
        raise BadRequest("each purpose must be true or false")
    return dict(purposes)


async def canonical_key(conn: AsyncConnection, project_id: int, user_id: str | None, anonymous_id: str | None) -> str:
    if user_id:
        return user_id
    assert anonymous_id is not None
    return (await resolve(conn, project_id, [anonymous_id])).get(anonymous_id, anonymous_id)


async def record_consent(
    conn: AsyncConnection,
    ctx: Context,
    project_id: int,
    user_key: str,
    purposes: dict[str, bool],
    *,
    source: str | None,
    ip: str | None,
) -> dict[str, bool]:
    """Store the decision for each purpose (current state + an entry in the history)."""
    now = utcnow()
    for purpose, granted in purposes.items():
        stmt = dialect_insert(conn, consents).values(
            project_id=project_id, user_key=user_key, purpose=purpose, granted=granted, updated_at=now, source=source
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["project_id", "user_key", "purpose"],
                set_={"granted": granted, "updated_at": now, "source": source},
            )
        )
        await conn.execute(
            consent_history.insert().values(
                project_id=project_id,
                user_key=user_key,
                purpose=purpose,
                granted=granted,
                recorded_at=now,
                source=source,
                ip=ip,
            )
        )
    state = await current_consent(conn, project_id, user_key)
    cache = _cache(ctx)
    cache.consent[(project_id, user_key)] = (time.monotonic() + CACHE_TTL, state)
    snapshot = cache.analytics.get(project_id)
    if snapshot is not None and snapshot[1] is not None and "analytics" in state:
        snapshot[1][user_key] = state["analytics"]
    return state


async def current_consent(conn: AsyncConnection, project_id: int, user_key: str) -> dict[str, bool]:
    rows = await conn.execute(
        select(consents.c.purpose, consents.c.granted).where(
            consents.c.project_id == project_id, consents.c.user_key == user_key
        )
    )
    return {r.purpose: bool(r.granted) for r in rows}


async def consent_history_of(conn: AsyncConnection, project_id: int, user_key: str) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(consent_history)
        .where(consent_history.c.project_id == project_id, consent_history.c.user_key == user_key)
        .order_by(consent_history.c.id)
    )
    return [
        {"purpose": r.purpose, "granted": r.granted, "recorded_at": r.recorded_at, "source": r.source, "ip": r.ip}
        for r in rows
    ]


async def _analytics_snapshot(ctx: Context, project_id: int) -> dict[str, bool] | None:
    """Every analytics decision of a project (user key → granted), cached for the TTL;
    None when the project has too many to hold."""
    cache = _cache(ctx).analytics
    now = time.monotonic()
    hit = cache.get(project_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    async with ctx.db.connect() as conn:
        rows = (
            await conn.execute(
                select(consents.c.user_key, consents.c.granted)
                .where(consents.c.project_id == project_id, consents.c.purpose == "analytics")
                .limit(_MAX_SNAPSHOT + 1)
            )
        ).all()
    snapshot = None if len(rows) > _MAX_SNAPSHOT else {r.user_key: bool(r.granted) for r in rows}
    cache[project_id] = (now + CACHE_TTL, snapshot)
    return snapshot


async def analytics_decisions(ctx: Context, project_id: int, keys: Callable[[], set[str]]) -> dict[str, bool]:
    """The analytics decision of each id of ``keys()`` that has one (ids without a decision
    are left out), cached briefly; :func:`allowed_by` applies them to a message's ids.

    Most projects hold few decisions, so the whole set is cached and a batch costs no
    query, and no work per id (``keys`` is not even called) when the project holds none."""
    snapshot = await _analytics_snapshot(ctx, project_id)
    if snapshot is not None:
        if not snapshot:
            return {}
        return {key: snapshot[key] for key in snapshot.keys() & keys()}
    states = await consent_states(ctx, project_id, keys())
    return {key: state["analytics"] for key, state in states.items() if "analytics" in state}


async def consent_states(ctx: Context, project_id: int, keys: set[str]) -> dict[str, dict[str, bool]]:
    """Current analytics consent for each id (empty dict: no decision recorded), cached briefly.

    Most projects hold few decisions, so the whole set is cached and a batch costs no
    query at all; with very many, the ids of the batch are looked up."""
    snapshot = await _analytics_snapshot(ctx, project_id)
    if snapshot is not None:
        return {key: {"analytics": snapshot[key]} if key in snapshot else {} for key in keys}
    cache = _cache(ctx).consent
    now = time.monotonic()
    found: dict[str, dict[str, bool]] = {}
    missing: list[str] = []
    for key in keys:
        hit = cache.get((project_id, key))
        if hit is not None and hit[0] > now:
            found[key] = hit[1]
        else:
            missing.append(key)
    if missing:
        fetched: dict[str, dict[str, bool]] = {key: {} for key in missing}
        async with ctx.db.connect() as conn:
            for start in range(0, len(missing), 500):
                chunk = missing[start : start + 500]
                rows = await conn.execute(
                    select(consents.c.user_key, consents.c.purpose, consents.c.granted).where(
                        consents.c.project_id == project_id, consents.c.user_key.in_(chunk)
                    )
                )
                for row in rows:
                    fetched[row.user_key][row.purpose] = bool(row.granted)
        if len(cache) > _MAX_CACHE:
            cache.clear()
        for key, state in fetched.items():
            cache[(project_id, key)] = (now + CACHE_TTL, state)
        found.update(fetched)
    return found


async def has_consent(conn: AsyncConnection, project_id: int, user_key: str, purpose: str) -> bool | None:
    """For other features (crash reporting, push, marketing): True/False when the user
    decided, None when they never did (the caller applies its own default)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown consent purpose {purpose!r}")
    return (await current_consent(conn, project_id, user_key)).get(purpose)


def allowed_by(mode: str, decisions: dict[str, bool], ids: tuple[str | None, ...]) -> bool:
    """Whether an event may be stored as sent, given the analytics consent decisions of
    the ids it carries (None for an id it lacks), from :func:`analytics_decisions`.
    ``opt_in`` needs a yes and no no; ``opt_out`` collects unless someone said no."""
    if mode == "off":
        return True
    if not decisions:
        return mode != "opt_in"
    found = [decisions[i] for i in ids if i and i in decisions]
    if mode == "opt_in":
        return bool(found) and all(found)
    return all(found)


# --- suppression list ------------------------------------------------------------------------


async def suppressed_ids(ctx: Context, project_id: int) -> frozenset[str]:
    cache = _cache(ctx).suppressed
    now = time.monotonic()
    hit = cache.get(project_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    async with ctx.db.connect() as conn:
        rows = await conn.execute(select(suppressions.c.user_key).where(suppressions.c.project_id == project_id))
        ids = frozenset(r.user_key for r in rows)
    cache[project_id] = (now + CACHE_TTL, ids)
    return ids


def forget_suppressions(ctx: Context, project_id: int) -> None:
    _cache(ctx).suppressed.pop(project_id, None)


async def suppress(conn: AsyncConnection, project_id: int, user_key: str, reason: str | None) -> bool:
    result = await conn.execute(
        dialect_insert(conn, suppressions)
        .values(project_id=project_id, user_key=user_key, reason=reason, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["project_id", "user_key"])
    )
    return bool(result.rowcount)


async def unsuppress(conn: AsyncConnection, project_id: int, user_key: str) -> bool:
    result = await conn.execute(
        delete(suppressions).where(suppressions.c.project_id == project_id, suppressions.c.user_key == user_key)
    )
    return bool(result.rowcount)


# --- privacy mode: daily-salted hashes ----------------------------------------------------------


async def daily_salt(ctx: Context, project_id: int, day: int) -> str:
    """The project's random salt for ``day`` (created on first use, deleted after two days)."""
    cache = _cache(ctx).salts
    salt = cache.get((project_id, day))
    if salt is not None:
        return salt
    async with ctx.db.transaction() as conn:
        await conn.execute(
            dialect_insert(conn, salts)
            .values(project_id=project_id, day=day, salt=secrets.token_hex(16))
            .on_conflict_do_nothing(index_elements=["project_id", "day"])
        )
        salt = (
            await conn.execute(select(salts.c.salt).where(salts.c.project_id == project_id, salts.c.day == day))
        ).scalar_one()
    if len(cache) > 1000:
        cache.clear()
    cache[(project_id, day)] = salt
    return salt


def hashed_id(salt: str, project_id: int, identifier: str) -> str:
    """Stable within a day, unlinkable across days once the salt is deleted."""
    digest = hashlib.sha256(f"{salt}|{project_id}|{identifier}".encode()).hexdigest()
    return "h:" + digest[:32]


async def purge_salts(conn: AsyncConnection, before_day: int) -> int:
    result = await conn.execute(delete(salts).where(salts.c.day < before_day))
    return int(result.rowcount or 0)
