"""Releases: which came after which.

Releases are ordered by semantic version when both parse as one (``pkg@1.2.3+45`` with the
same package, or bare ``1.2.3``; the build number after ``+`` breaks ties, numerically), and
otherwise by when Shipyard first saw them. That order decides "resolved in next release"
and whether an event for a resolved issue is a regression.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.db import insert_ignore
from shipyard.errors.models import releases

_SEMVER = re.compile(
    r"^(?:(?P<package>[^@]+)@)?v?(?P<major>\d+)(?:\.(?P<minor>\d+))?(?:\.(?P<patch>\d+))?"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+(?P<build>[0-9A-Za-z.-]+))?$"
)


def semver_key(version: str) -> tuple[str, tuple[Any, ...]] | None:
    match = _SEMVER.match(version.strip())
    if not match:
        return None
    pre = match.group("pre")
    build = match.group("build") or ""
    build_key: tuple[int, Any] = (0, int(build)) if build.isdecimal() else (1, build)
    key = (
        int(match.group("major")),
        int(match.group("minor") or 0),
        int(match.group("patch") or 0),
        # A pre-release sorts before its release.
        (0, pre) if pre else (1, ""),
        build_key,
    )
    return match.group("package") or "", key


def newer(a: str, b: str, first_seen: dict[str, datetime]) -> bool:
    """Is release ``a`` after release ``b``?"""
    if a == b:
        return False
    ka, kb = semver_key(a), semver_key(b)
    if ka is not None and kb is not None and ka[0] == kb[0]:
        return ka[1] > kb[1]
    seen_a, seen_b = first_seen.get(a), first_seen.get(b)
    if seen_a is None or seen_b is None:
        return seen_b is not None  # a release we have never seen is the newest one
    return seen_a > seen_b


def at_or_after(a: str, b: str, first_seen: dict[str, datetime]) -> bool:
    return a == b or newer(a, b, first_seen)


def newest(versions: Iterable[str], first_seen: dict[str, datetime]) -> str | None:
    best: str | None = None
    for version in versions:
        if best is None or newer(version, best, first_seen):
            best = version
    return best


async def record(conn: AsyncConnection, project_id: int, versions: Iterable[str], now: datetime) -> None:
    """Remember releases (first seen now if new; last seen bumped)."""
    unique = sorted({v for v in versions if v})
    if not unique:
        return
    rows = [{"project_id": project_id, "version": v, "first_seen": now, "last_seen": now} for v in unique]
    await conn.execute(insert_ignore(conn, releases, rows, conflict_columns=["project_id", "version"]))
    await conn.execute(
        update(releases)
        .where(releases.c.project_id == project_id, releases.c.version.in_(unique), releases.c.last_seen < now)
        .values(last_seen=now)
    )


async def first_seen_map(conn: AsyncConnection, project_id: int, versions: Iterable[str]) -> dict[str, datetime]:
    unique = sorted({v for v in versions if v})
    if not unique:
        return {}
    rows = await conn.execute(
        select(releases.c.version, releases.c.first_seen).where(
            releases.c.project_id == project_id, releases.c.version.in_(unique)
        )
    )
    return {r.version: r.first_seen for r in rows}


async def newest_release(conn: AsyncConnection, project_id: int) -> str | None:
    """The project's newest release by the order above (looking at the 500 most recent)."""
    rows = (
        await conn.execute(
            select(releases.c.version, releases.c.first_seen)
            .where(releases.c.project_id == project_id)
            .order_by(releases.c.first_seen.desc())
            .limit(500)
        )
    ).all()
    seen = {r.version: r.first_seen for r in rows}
    return newest(seen, seen)


async def list_releases(conn: AsyncConnection, project_id: int, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(releases).where(releases.c.project_id == project_id).order_by(releases.c.last_seen.desc()).limit(limit)
    )
    return [{"version": r.version, "first_seen": r.first_seen, "last_seen": r.last_seen} for r in rows]
