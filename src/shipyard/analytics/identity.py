"""Identities: traits from identify, anonymous→identified links, alias, and merges.

A person is a ``user_key``. When an anonymous id (or an alias's ``previousId``) is linked
to a user, everything stored under the old key moves to the user — raw events, daily
activity, traits, consent, group memberships — so every query sees one history without
resolving identities at query time. Links are first-wins: once an anonymous id belongs
to a user, a later login of someone else on the same device does not move it again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Text, and_, bindparam, delete, func, literal_column, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.analytics.models import (
    aliases,
    consent_history,
    consents,
    daily_users,
    events,
    group_members,
    groups,
    users,
)
from shipyard.core.db import json_dumps, utcnow


def dialect_insert(conn: AsyncConnection, table: Any) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def in_list(conn: AsyncConnection, column: Any, values: list[str]) -> ColumnElement[bool]:
    """``column IN (values)`` as ONE bound parameter (a PostgreSQL array, a JSON array read
    by SQLite's json_each): a plain IN list renders a parameter per value on every call,
    which cost more than the query itself for the hundreds of ids a group commit checks."""
    members: Any
    if conn.dialect.name == "postgresql":
        # IN (SELECT unnest(...)), not = ANY(...): on a table whose statistics are not yet
        # gathered the planner filtered every row of the project against the whole array
        # (0.5 s for 1,400 ids over 10,000 aliases) where this form joins (2 ms).
        members = select(func.unnest(bindparam(None, values, type_=postgresql.ARRAY(Text))))
    else:
        array: Any = bindparam(None, orjson.dumps(values).decode())
        members = select(literal_column("value")).select_from(func.json_each(array))
    found: ColumnElement[bool] = column.in_(members)
    return found


def _pg_probe(table: str, key_column: str, returned: str) -> str:
    """PostgreSQL: look each key of the ``$2`` array up by index, one probe per key.

    ``IN (SELECT unnest(...))`` lets the planner pick a hash semi-join that reads every
    row of the project; it does so on a young table whose statistics still say "2 rows",
    and each group commit then cost time in proportion to the table (28 ms per 100
    events at 20,000 events stored, measured). A LATERAL subquery with LIMIT cannot be
    flattened into a join, so it stays an index lookup per key whatever the statistics."""
    columns = ", ".join(f"t.{c.strip()}" for c in returned.split(","))
    return (
        f"SELECT {columns} FROM unnest($2::text[]) AS k(key) CROSS JOIN LATERAL "
        f"(SELECT {returned} FROM {table} WHERE project_id = $1 AND {key_column} = k.key LIMIT 1) AS t"
    )


async def resolve(conn: AsyncConnection, project_id: int, ids: list[str]) -> dict[str, str]:
    """The user each id has been linked to (ids without a link are absent)."""
    if not ids:
        return {}
    if conn.dialect.name == "postgresql":
        found: Any = await conn.exec_driver_sql(_pg_probe(aliases.name, "alias", "alias, user_key"), (project_id, ids))
        return {row[0]: row[1] for row in found}
    rows = await conn.execute(
        select(aliases.c.alias, aliases.c.user_key).where(
            aliases.c.project_id == project_id, in_list(conn, aliases.c.alias, ids)
        )
    )
    return {r.alias: r.user_key for r in rows}


async def link(conn: AsyncConnection, project_id: int, alias: str, user_key: str) -> tuple[str | None, bool]:
    """Link ``alias`` to ``user_key`` and merge its history.

    Returns (the user ``alias`` now belongs to, whether this call merged it); an alias
    that already belonged to someone stays with them (first link wins)."""
    if alias == user_key:
        return None, False
    existing = await resolve(conn, project_id, [alias, user_key])
    if alias in existing:
        return existing[alias], False
    target = existing.get(user_key, user_key)  # the user may itself be an alias (alias chains)
    if target == alias:
        return None, False
    inserted = await conn.execute(
        dialect_insert(conn, aliases)
        .values(project_id=project_id, alias=alias, user_key=target, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["project_id", "alias"])
    )
    if not inserted.rowcount:  # another process linked it first
        return (await resolve(conn, project_id, [alias])).get(alias), False
    # Anything that pointed at the alias now points at the final user.
    await conn.execute(
        update(aliases).where(aliases.c.project_id == project_id, aliases.c.user_key == alias).values(user_key=target)
    )
    await merge(conn, project_id, alias, target)
    return target, True


_HISTORY_TABLES = (events, daily_users, users, consents, consent_history, group_members)
# The history tables with an index leading with (project_id, user_key).
_PROBED_TABLES = (events, daily_users, users, consents, consent_history)


async def _keys_with_history(conn: AsyncConnection, project_id: int, keys: list[str]) -> set[str]:
    """Which of ``keys`` have anything stored under them (an alias pointing at them included)."""
    if not keys:
        return set()
    if conn.dialect.name == "postgresql":
        # Per-key index probes where an index leads with (project_id, user_key); group
        # members (keyed by group first) keep the semi-join.
        probes = " UNION ALL ".join(
            _pg_probe(table.name, "user_key", "user_key") for table in (*_PROBED_TABLES, aliases)
        )
        found = {r[0] for r in await conn.exec_driver_sql(probes, (project_id, keys))}
        members = await conn.execute(
            select(group_members.c.user_key).where(
                group_members.c.project_id == project_id, in_list(conn, group_members.c.user_key, keys)
            )
        )
        return found | {r[0] for r in members}
    # One statement (a UNION over the tables) rather than one per table.
    query = union_all(
        *(
            select(table.c.user_key).where(table.c.project_id == project_id, in_list(conn, table.c.user_key, keys))
            for table in (*_HISTORY_TABLES, aliases)
        )
    )
    return {r[0] for r in await conn.execute(query)}


async def link_many(conn: AsyncConnection, project_id: int, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``link`` for many (alias, user) pairs at once, with the same first-wins semantics.

    The common case at ingest — a device's first messages after login, carrying both
    ids, with nothing stored under the anonymous id yet — costs a handful of statements
    per batch instead of a dozen per pair; only aliases with a history are merged one
    by one. Returns (alias, the user it belongs to) for every pair that has a link now."""
    wanted: dict[str, str] = {}
    for alias, user_key in pairs:
        if alias != user_key and alias not in wanted:
            wanted[alias] = user_key
    if not wanted:
        return []
    if set(wanted) & set(wanted.values()):
        # Chains inside one batch (a→b and b→c): order matters, link one by one.
        linked = []
        for alias, user_key in wanted.items():
            target, _merged = await link(conn, project_id, alias, user_key)
            if target is not None:
                linked.append((alias, target))
        return linked
    existing = await resolve(conn, project_id, sorted(set(wanted) | set(wanted.values())))
    result: list[tuple[str, str]] = []
    new: dict[str, str] = {}
    for alias, user_key in wanted.items():
        if alias in existing:
            result.append((alias, existing[alias]))
            continue
        target = existing.get(user_key, user_key)
        if target != alias:
            new[alias] = target
    if not new:
        return result
    inserted = await _insert_aliases(conn, project_id, new)
    # Another process may have linked some of them first: theirs wins, nothing to merge.
    owners = new if inserted == len(new) else await resolve(conn, project_id, list(new))
    mine = {a: t for a, t in new.items() if owners.get(a) == t}
    result.extend((a, owners[a]) for a in new if a in owners)
    for alias in await _keys_with_history(conn, project_id, list(mine)):
        target = mine[alias]
        await conn.execute(
            update(aliases)
            .where(aliases.c.project_id == project_id, aliases.c.user_key == alias)
            .values(user_key=target)
        )
        await merge(conn, project_id, alias, target)
    return result


async def _insert_aliases(conn: AsyncConnection, project_id: int, links: dict[str, str]) -> int:
    """Insert (alias → user) rows, skipping aliases already linked; how many were inserted.

    Straight to the driver (``executemany`` on SQLite, one ``unnest`` insert on
    PostgreSQL) like the event rows: at ingest nearly every new device brings a link,
    and Core's per-row bind processing of the dicts cost as much as the insert itself."""
    now = utcnow()
    table = aliases.name
    conflict = "ON CONFLICT (project_id, alias) DO NOTHING"
    links = dict(sorted(links.items()))  # one lock order for concurrent group commits
    if conn.dialect.name == "postgresql":
        sql = (
            f"INSERT INTO {table} (project_id, alias, user_key, created_at) "
            f"SELECT $1::int, u.alias, u.user_key, $2::timestamptz FROM unnest($3::text[], $4::text[]) "
            f"AS u(alias, user_key) {conflict}"
        )
        result = await conn.exec_driver_sql(sql, (project_id, now, list(links), list(links.values())))
    else:
        # What UtcDateTime binds on SQLite: naive UTC text.
        created = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        sql = f"INSERT INTO {table} (project_id, alias, user_key, created_at) VALUES (?, ?, ?, ?) {conflict}"
        result = await conn.exec_driver_sql(sql, [(project_id, a, t, created) for a, t in links.items()])
    return int(result.rowcount or 0)


async def merge(conn: AsyncConnection, project_id: int, source: str, target: str) -> None:
    """Move everything stored under ``source`` to ``target``."""
    await conn.execute(
        update(events).where(events.c.project_id == project_id, events.c.user_key == source).values(user_key=target)
    )
    await _merge_daily_users(conn, project_id, source, target)
    await _merge_user_rows(conn, project_id, source, target)
    await _merge_consents(conn, project_id, source, target)
    await _merge_group_members(conn, project_id, source, target)


async def _merge_daily_users(conn: AsyncConnection, project_id: int, source: str, target: str) -> None:
    rows = (
        await conn.execute(
            select(daily_users.c.day, daily_users.c.events).where(
                daily_users.c.project_id == project_id, daily_users.c.user_key == source
            )
        )
    ).all()
    for row in rows:
        stmt = dialect_insert(conn, daily_users).values(
            project_id=project_id, day=row.day, user_key=target, events=row.events
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["project_id", "day", "user_key"],
                set_={"events": daily_users.c.events + stmt.excluded.events},
            )
        )
    if rows:
        await conn.execute(
            delete(daily_users).where(daily_users.c.project_id == project_id, daily_users.c.user_key == source)
        )


async def _user_row(conn: AsyncConnection, project_id: int, user_key: str) -> Any:
    query = select(users).where(users.c.project_id == project_id, users.c.user_key == user_key)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await conn.execute(query)).first()


async def _merge_user_rows(conn: AsyncConnection, project_id: int, source: str, target: str) -> None:
    old = await _user_row(conn, project_id, source)
    if old is None:
        return
    new = await _user_row(conn, project_id, target)
    if new is None:
        await conn.execute(
            update(users)
            .where(users.c.project_id == project_id, users.c.user_key == source)
            .values(user_key=target, updated_at=utcnow())
        )
        return
    # The identified user's traits win; the anonymous profile only fills gaps.
    values = {
        "traits": {**(old.traits or {}), **(new.traits or {})},
        "device": new.device or old.device or {},
        "identified": bool(new.identified or old.identified),
        "first_seen_ms": _min(old.first_seen_ms, new.first_seen_ms),
        "last_seen_ms": _max(old.last_seen_ms, new.last_seen_ms),
        "updated_at": utcnow(),
    }
    await conn.execute(
        update(users).where(users.c.project_id == project_id, users.c.user_key == target).values(**values)
    )
    await conn.execute(delete(users).where(users.c.project_id == project_id, users.c.user_key == source))


async def _merge_consents(conn: AsyncConnection, project_id: int, source: str, target: str) -> None:
    # Consent given before login carries over unless the user has decided since.
    rows = (
        await conn.execute(select(consents).where(consents.c.project_id == project_id, consents.c.user_key == source))
    ).all()
    for row in rows:
        await conn.execute(
            dialect_insert(conn, consents)
            .values(
                project_id=project_id,
                user_key=target,
                purpose=row.purpose,
                granted=row.granted,
                updated_at=row.updated_at,
                source=row.source,
            )
            .on_conflict_do_nothing(index_elements=["project_id", "user_key", "purpose"])
        )
    if rows:
        await conn.execute(delete(consents).where(consents.c.project_id == project_id, consents.c.user_key == source))
    await conn.execute(
        update(consent_history)
        .where(consent_history.c.project_id == project_id, consent_history.c.user_key == source)
        .values(user_key=target)
    )


async def _merge_group_members(conn: AsyncConnection, project_id: int, source: str, target: str) -> None:
    rows = (
        await conn.execute(
            select(group_members.c.group_id, group_members.c.joined_at).where(
                group_members.c.project_id == project_id, group_members.c.user_key == source
            )
        )
    ).all()
    for row in rows:
        await conn.execute(
            dialect_insert(conn, group_members)
            .values(project_id=project_id, group_id=row.group_id, user_key=target, joined_at=row.joined_at)
            .on_conflict_do_nothing(index_elements=["project_id", "group_id", "user_key"])
        )
    if rows:
        await conn.execute(
            delete(group_members).where(group_members.c.project_id == project_id, group_members.c.user_key == source)
        )


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


async def set_traits(
    conn: AsyncConnection,
    project_id: int,
    user_key: str,
    traits: dict[str, Any],
    *,
    device: dict[str, Any] | None,
    seen_ms: int,
    identified: bool,
) -> None:
    """Apply identify traits (later calls overwrite earlier keys) and the latest device info."""
    row = await _user_row(conn, project_id, user_key)
    now = utcnow()
    if row is None:
        stmt = dialect_insert(conn, users).values(
            project_id=project_id,
            user_key=user_key,
            identified=identified,
            traits=traits,
            device=device or {},
            first_seen_ms=seen_ms,
            last_seen_ms=seen_ms,
            updated_at=now,
        )
        result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=["project_id", "user_key"]))
        if result.rowcount:
            return
        row = await _user_row(conn, project_id, user_key)
    await conn.execute(
        update(users)
        .where(users.c.project_id == project_id, users.c.user_key == user_key)
        .values(
            traits={**(row.traits or {}), **traits},
            device=device or row.device or {},
            identified=bool(row.identified or identified),
            first_seen_ms=_min(row.first_seen_ms, seen_ms),
            last_seen_ms=_max(row.last_seen_ms, seen_ms),
            updated_at=now,
        )
    )


TraitsOp = tuple[str, dict[str, Any], dict[str, Any], int, bool]


async def set_traits_many(conn: AsyncConnection, project_id: int, ops: list[TraitsOp]) -> None:
    """``set_traits`` for many identify calls (user key, traits, device, seen ms, identified)
    at once, with the same outcome as applying them in order: a few statements per group
    commit instead of two or three per identify."""
    folded: dict[str, dict[str, Any]] = {}
    for user_key, traits, device, seen_ms, identified in ops:
        entry = folded.get(user_key)
        if entry is None:
            folded[user_key] = {
                "traits": dict(traits),
                "device": device or {},
                "identified": identified,
                "first_seen_ms": seen_ms,
                "last_seen_ms": seen_ms,
            }
            continue
        entry["traits"].update(traits)
        entry["device"] = device or entry["device"]
        entry["identified"] = entry["identified"] or identified
        entry["first_seen_ms"] = min(entry["first_seen_ms"], seen_ms)
        entry["last_seen_ms"] = max(entry["last_seen_ms"], seen_ms)
    if conn.dialect.name == "postgresql":
        await _upsert_users_pg(conn, project_id, folded)
        return
    rows = await conn.execute(
        select(users).where(users.c.project_id == project_id, in_list(conn, users.c.user_key, list(folded)))
    )
    existing: dict[str, Any] = {row.user_key: row for row in rows}
    now = utcnow()
    new = [
        {"project_id": project_id, "user_key": key, "updated_at": now, **entry}
        for key, entry in folded.items()
        if key not in existing
    ]
    if new:
        # RETURNING says which rows went in: asyncpg's executemany reports no rowcount, and
        # comparing it sent every identify of a group down the one-by-one path on PostgreSQL.
        inserted = await conn.execute(
            dialect_insert(conn, users)
            .on_conflict_do_nothing(index_elements=["project_id", "user_key"])
            .returning(users.c.user_key),
            new,
        )
        created = {r[0] for r in inserted}
        for row in new:
            if row["user_key"] not in created:  # another process created it first
                await set_traits(
                    conn,
                    project_id,
                    row["user_key"],
                    row["traits"],
                    device=row["device"],
                    seen_ms=row["first_seen_ms"],
                    identified=row["identified"],
                )
    changes = []
    for key, row in existing.items():
        entry = folded[key]
        changes.append(
            {
                "p": project_id,
                "k": key,
                "v_traits": {**(row.traits or {}), **entry["traits"]},
                "v_device": entry["device"] or row.device or {},
                "v_identified": bool(row.identified or entry["identified"]),
                "v_first_seen_ms": _min(row.first_seen_ms, entry["first_seen_ms"]),
                "v_last_seen_ms": _max(row.last_seen_ms, entry["last_seen_ms"]),
                "v_updated_at": now,
            }
        )
    if changes:
        await conn.execute(
            update(users)
            .where(users.c.project_id == bindparam("p"), users.c.user_key == bindparam("k"))
            .values(
                {
                    name: bindparam(f"v_{name}")
                    for name in ("traits", "device", "identified", "first_seen_ms", "last_seen_ms", "updated_at")
                }
            ),
            changes,
        )


# The same fold as set_traits_many, done by PostgreSQL row by row under the row lock: two
# group commits in flight at once (ingest runs up to three on PostgreSQL) then cannot lose
# each other's traits, as a read-then-write of the merged dict would. Keys go in sorted
# order so that concurrent transactions lock rows in the same order (no deadlock).
_PG_UPSERT_USERS = (
    f"INSERT INTO {users.name} AS u "
    "(project_id, user_key, identified, traits, device, first_seen_ms, last_seen_ms, updated_at) "
    "SELECT $1::int, n.key, n.identified, n.traits::jsonb, n.device::jsonb, n.first_seen, n.last_seen, "
    "$2::timestamptz FROM unnest($3::text[], $4::bool[], $5::text[], $6::text[], $7::bigint[], $8::bigint[]) "
    "AS n(key, identified, traits, device, first_seen, last_seen) ORDER BY n.key "
    "ON CONFLICT (project_id, user_key) DO UPDATE SET "
    "traits = u.traits || excluded.traits, "
    "device = CASE WHEN excluded.device = '{}'::jsonb THEN u.device ELSE excluded.device END, "
    "identified = u.identified OR excluded.identified, "
    "first_seen_ms = LEAST(u.first_seen_ms, excluded.first_seen_ms), "
    "last_seen_ms = GREATEST(u.last_seen_ms, excluded.last_seen_ms), "
    "updated_at = excluded.updated_at"
)


async def _upsert_users_pg(conn: AsyncConnection, project_id: int, folded: dict[str, dict[str, Any]]) -> None:
    keys = sorted(folded)
    entries = [folded[k] for k in keys]
    await conn.exec_driver_sql(
        _PG_UPSERT_USERS,
        (
            project_id,
            utcnow(),
            keys,
            [e["identified"] for e in entries],
            [json_dumps(e["traits"]) for e in entries],
            [json_dumps(e["device"] or {}) for e in entries],
            [e["first_seen_ms"] for e in entries],
            [e["last_seen_ms"] for e in entries],
        ),
    )


async def set_group(
    conn: AsyncConnection, project_id: int, group_id: str, traits: dict[str, Any], user_key: str | None
) -> None:
    now = utcnow()
    if conn.dialect.name == "postgresql":
        await _upsert_group_pg(conn, project_id, group_id, traits, now)
    else:
        current = (
            await conn.execute(
                select(groups.c.traits).where(groups.c.project_id == project_id, groups.c.group_id == group_id)
            )
        ).first()
        if current is None:
            await conn.execute(
                dialect_insert(conn, groups)
                .values(project_id=project_id, group_id=group_id, traits=traits, updated_at=now)
                .on_conflict_do_nothing(index_elements=["project_id", "group_id"])
            )
        else:
            await conn.execute(
                update(groups)
                .where(and_(groups.c.project_id == project_id, groups.c.group_id == group_id))
                .values(traits={**(current.traits or {}), **traits}, updated_at=now)
            )
    if user_key is not None:
        await conn.execute(
            dialect_insert(conn, group_members)
            .values(project_id=project_id, group_id=group_id, user_key=user_key, joined_at=now)
            .on_conflict_do_nothing(index_elements=["project_id", "group_id", "user_key"])
        )


async def _upsert_group_pg(
    conn: AsyncConnection, project_id: int, group_id: str, traits: dict[str, Any], now: datetime
) -> None:
    """Merge group traits in SQL (``||``), so concurrent group commits cannot lose any."""
    stmt = postgresql.insert(groups).values(project_id=project_id, group_id=group_id, traits=traits, updated_at=now)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["project_id", "group_id"],
            set_={"traits": groups.c.traits.op("||")(stmt.excluded.traits), "updated_at": now},
        )
    )
