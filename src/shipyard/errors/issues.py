"""The issue workflow: states, transitions, regression detection, assignment, queries.

States
    ``unresolved`` (substatus ``new`` for its first 7 days, then ``ongoing``; ``regressed``
    after a regression, ``escalating`` after an ignore ran out), ``resolved`` (resolution
    ``now``, ``in_next_release`` or ``in_release``), ``ignored`` (``forever``, ``until`` a
    time, until N more ``events`` or N more ``users``).

Regression
    An event for a resolved issue reopens it as ``regressed`` when
    * it was resolved ``now``: any new event;
    * it was resolved ``in_release`` R: the event's release is R or later;
    * it was resolved ``in_next_release`` (R = the project's newest release at that moment):
      the event's release is later than R.
    Events without a release never regress a release-based resolution.

Every transition writes an activity row (the issue's timeline) and an audit record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import audit, auth
from shipyard.core.audit import Actor
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.core.models import users as users_table
from shipyard.errors import releases
from shipyard.errors.models import event_data, events, issue_activity, issue_hourly, issue_tags, issues

STATUSES = ("unresolved", "resolved", "ignored")
RESOLUTIONS = ("now", "in_next_release", "in_release")
IGNORE_MODES = ("forever", "until", "events", "users")
NEW_FOR = timedelta(days=7)
LEVEL_RANK = {"debug": 0, "info": 1, "warning": 2, "error": 3, "fatal": 4}


# --- the per-event state machine (pure) ---------------------------------------------------------


@dataclass
class IssueView:
    """The fields of an issue the digester changes, plus the transitions it made."""

    id: int
    project_id: int
    title: str
    status: str
    substatus: str | None
    resolution: str | None
    resolved_in: str | None
    resolved_at: datetime | None
    verified_at: datetime | None
    opened_at: datetime
    ignore_mode: str | None
    ignore_until: datetime | None
    ignore_target: int | None
    times_seen: int
    users_seen: int
    first_seen: datetime
    last_seen: datetime
    first_release: str | None
    last_release: str | None
    regressed_at: datetime | None
    regression_count: int
    level: str
    is_crash: bool
    last_event_id: str | None
    culprit: str | None
    is_new: bool = False
    transitions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    FIELDS = (
        "status",
        "substatus",
        "resolution",
        "resolved_in",
        "resolved_at",
        "verified_at",
        "opened_at",
        "ignore_mode",
        "ignore_until",
        "ignore_target",
        "times_seen",
        "users_seen",
        "last_seen",
        "first_seen",
        "first_release",
        "last_release",
        "regressed_at",
        "regression_count",
        "level",
        "is_crash",
        "last_event_id",
        "culprit",
    )

    @classmethod
    def from_row(cls, row: Any, *, is_new: bool = False) -> IssueView:
        return cls(
            id=row.id,
            project_id=row.project_id,
            title=row.title,
            is_new=is_new,
            **{name: getattr(row, name) for name in cls.FIELDS},
        )

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}


def is_regression(view: IssueView, release: str | None, first_seen: dict[str, datetime]) -> bool:
    if view.status != "resolved":
        return False
    if view.resolution in (None, "now"):
        return True
    if release is None:
        return False
    if view.resolution == "in_release":
        return view.resolved_in is None or releases.at_or_after(release, view.resolved_in, first_seen)
    # in_next_release: any release after the one that was current when it was resolved
    return view.resolved_in is None or releases.newer(release, view.resolved_in, first_seen)


def _clear_resolution(view: IssueView) -> None:
    view.resolution = view.resolved_in = None
    view.resolved_at = view.verified_at = None


def _clear_ignore(view: IssueView) -> None:
    view.ignore_mode = None
    view.ignore_until = None
    view.ignore_target = None


def ignore_expired(view: IssueView, now: datetime) -> bool:
    if view.status != "ignored":
        return False
    if view.ignore_mode == "until":
        return view.ignore_until is not None and now >= view.ignore_until
    if view.ignore_mode == "events":
        return view.ignore_target is not None and view.times_seen >= view.ignore_target
    if view.ignore_mode == "users":
        return view.ignore_target is not None and view.users_seen >= view.ignore_target
    return False


def apply_event(
    view: IssueView,
    *,
    event_id: str,
    level: str,
    is_crash: bool,
    release: str | None,
    culprit: str | None,
    seen_at: datetime,
    first_seen: dict[str, datetime],
) -> None:
    """Fold one new event into the issue (counts, last seen, regression, ignore expiry)."""
    if is_regression(view, release, first_seen):
        view.transitions.append(
            (
                "regressed",
                {
                    "event_id": event_id,
                    "release": release,
                    "resolution": view.resolution,
                    "resolved_in": view.resolved_in,
                },
            )
        )
        _clear_resolution(view)
        view.status = "unresolved"
        view.substatus = "regressed"
        view.regressed_at = seen_at
        view.regression_count += 1
        view.opened_at = seen_at
    view.times_seen += 1
    view.last_seen = max(view.last_seen, seen_at)
    view.last_event_id = event_id
    if LEVEL_RANK.get(level, 3) > LEVEL_RANK.get(view.level, 3):
        view.level = level
    view.is_crash = view.is_crash or is_crash
    if culprit:
        view.culprit = culprit
    if release:
        view.first_release = view.first_release or release
        view.last_release = release
    check_ignore(view, seen_at)


def check_ignore(view: IssueView, now: datetime) -> bool:
    if not ignore_expired(view, now):
        return False
    view.transitions.append(
        (
            "unignored",
            {
                "mode": view.ignore_mode,
                "target": view.ignore_target,
                "times_seen": view.times_seen,
                "users_seen": view.users_seen,
            },
        )
    )
    _clear_ignore(view)
    view.status = "unresolved"
    view.substatus = "escalating"
    return True


# --- admin actions -------------------------------------------------------------------------------


async def _load(conn: AsyncConnection, project_id: int, issue_id: int) -> Any:
    row = (await conn.execute(select(issues).where(issues.c.id == issue_id, issues.c.project_id == project_id))).first()
    if row is None:
        raise NotFound("issue")
    return row


async def add_activity(
    conn: AsyncConnection, issue_id: int, project_id: int, kind: str, actor: str | None, details: dict[str, Any]
) -> None:
    await conn.execute(
        issue_activity.insert().values(
            issue_id=issue_id, project_id=project_id, kind=kind, actor=actor, details=details, created_at=utcnow()
        )
    )


async def _transition(
    conn: AsyncConnection,
    ctx: Context,
    actor: Actor,
    row: Any,
    kind: str,
    values: dict[str, Any],
    details: dict[str, Any],
) -> dict[str, Any]:
    await conn.execute(update(issues).where(issues.c.id == row.id).values(**values))
    who = actor.label or actor.id or actor.type
    await add_activity(conn, row.id, row.project_id, kind, who, details)
    await audit.record(
        conn,
        ctx,
        actor,
        f"errors.issue.{kind}",
        project_id=row.project_id,
        resource_type="issue",
        resource_id=row.id,
        details={"title": row.title[:200], **details},
    )
    return dict(await describe_issue(conn, await _load(conn, row.project_id, row.id)))


async def resolve(
    conn: AsyncConnection,
    ctx: Context,
    actor: Actor,
    project_id: int,
    issue_id: int,
    *,
    mode: str = "now",
    release: str | None = None,
) -> dict[str, Any]:
    if mode not in RESOLUTIONS:
        raise BadRequest(f"unknown resolution {mode!r}; expected one of {', '.join(RESOLUTIONS)}")
    row = await _load(conn, project_id, issue_id)
    if row.status == "resolved":
        raise BadRequest("the issue is already resolved", code="already_resolved")
    now = utcnow()
    resolved_in: str | None = None
    if mode == "in_release":
        if not release:
            raise BadRequest("resolving in a release needs the release")
        resolved_in = release[:250]
    elif mode == "in_next_release":
        resolved_in = await releases.newest_release(conn, project_id) or row.last_release
    seconds = max(0.0, (now - row.opened_at).total_seconds())
    values = {
        "status": "resolved",
        "substatus": None,
        "resolution": mode,
        "resolved_in": resolved_in,
        "resolved_at": now,
        "resolved_by": actor.label or actor.id,
        "verified_at": None,
        "ignore_mode": None,
        "ignore_until": None,
        "ignore_target": None,
        "resolve_count": issues.c.resolve_count + 1,
        "total_resolve_seconds": issues.c.total_resolve_seconds + seconds,
    }
    details = {"resolution": mode, "release": resolved_in, "time_to_resolve_seconds": round(seconds)}
    return await _transition(conn, ctx, actor, row, "resolve", values, details)


async def ignore(
    conn: AsyncConnection,
    ctx: Context,
    actor: Actor,
    project_id: int,
    issue_id: int,
    *,
    mode: str = "forever",
    minutes: int | None = None,
    count: int | None = None,
) -> dict[str, Any]:
    if mode not in IGNORE_MODES:
        raise BadRequest(f"unknown ignore mode {mode!r}; expected one of {', '.join(IGNORE_MODES)}")
    row = await _load(conn, project_id, issue_id)
    until: datetime | None = None
    target: int | None = None
    if mode == "until":
        if not minutes or minutes <= 0:
            raise BadRequest("ignoring for a time needs minutes > 0")
        until = utcnow() + timedelta(minutes=minutes)
    elif mode in ("events", "users"):
        if not count or count <= 0:
            raise BadRequest(f"ignoring until more {mode} needs count > 0")
        target = (row.times_seen if mode == "events" else row.users_seen) + count
    values = {
        "status": "ignored",
        "substatus": None,
        "ignore_mode": mode,
        "ignore_until": until,
        "ignore_target": target,
        "resolution": None,
        "resolved_in": None,
        "resolved_at": None,
        "verified_at": None,
    }
    details = {"mode": mode, "until": until.isoformat() if until else None, "count": count, "target": target}
    return await _transition(conn, ctx, actor, row, "ignore", values, details)


async def unresolve(
    conn: AsyncConnection, ctx: Context, actor: Actor, project_id: int, issue_id: int
) -> dict[str, Any]:
    row = await _load(conn, project_id, issue_id)
    if row.status == "unresolved":
        raise BadRequest("the issue is already unresolved", code="already_unresolved")
    values = {
        "status": "unresolved",
        "substatus": "ongoing",
        "resolution": None,
        "resolved_in": None,
        "resolved_at": None,
        "verified_at": None,
        "ignore_mode": None,
        "ignore_until": None,
        "ignore_target": None,
        "opened_at": utcnow(),
    }
    return await _transition(conn, ctx, actor, row, "unresolve", values, {"previous": row.status})


async def assign(
    conn: AsyncConnection, ctx: Context, actor: Actor, project_id: int, issue_id: int, assignee: str | None
) -> dict[str, Any]:
    """Assign to a project member (email or user id), or unassign with None."""
    row = await _load(conn, project_id, issue_id)
    user_id: int | None = None
    email: str | None = None
    if assignee:
        cond = users_table.c.email == assignee.strip().lower()
        if assignee.isdecimal():
            cond = or_(cond, users_table.c.id == int(assignee))
        user = (await conn.execute(select(users_table.c.id, users_table.c.email).where(cond))).first()
        if user is None:
            raise BadRequest(f"no user {assignee!r}", code="unknown_user")
        role = await auth.role_of(conn, user.id, project_id)
        if role is None and not await _is_instance_admin(conn, user.id):
            raise BadRequest(f"{user.email} is not a member of this project", code="not_a_member")
        user_id, email = user.id, user.email
    values = {"assignee_id": user_id, "assignee_email": email}
    details = {"assignee": email, "previous": row.assignee_email}
    return await _transition(conn, ctx, actor, row, "assign" if email else "unassign", values, details)


async def _is_instance_admin(conn: AsyncConnection, user_id: int) -> bool:
    return bool(
        (await conn.execute(select(users_table.c.is_instance_admin).where(users_table.c.id == user_id))).scalar()
    )


# --- reads ---------------------------------------------------------------------------------------


def display_substatus(row: Any, now: datetime) -> str | None:
    if row.status != "unresolved":
        return None
    if row.substatus in ("regressed", "escalating"):
        return str(row.substatus)
    return "new" if now - row.first_seen < NEW_FOR else "ongoing"


async def describe_issue(conn: AsyncConnection, row: Any) -> dict[str, Any]:
    now = utcnow()
    average = row.total_resolve_seconds / row.resolve_count if row.resolve_count else None
    return {
        "id": row.id,
        "fingerprint": row.fingerprint,
        "title": row.title,
        "culprit": row.culprit,
        "type": row.error_type,
        "level": row.level,
        "platform": row.platform,
        "is_crash": row.is_crash,
        "status": row.status,
        "substatus": display_substatus(row, now),
        "resolution": row.resolution,
        "resolved_in": row.resolved_in,
        "resolved_at": row.resolved_at,
        "resolved_by": row.resolved_by,
        "fix_verified": row.verified_at is not None,
        "verified_at": row.verified_at,
        "ignore": None
        if row.status != "ignored"
        else {"mode": row.ignore_mode, "until": row.ignore_until, "target": row.ignore_target},
        "assignee": row.assignee_email,
        "first_seen": row.first_seen,
        "last_seen": row.last_seen,
        "count": row.times_seen,
        "user_count": row.users_seen,
        "first_release": row.first_release,
        "last_release": row.last_release,
        "regressed_at": row.regressed_at,
        "regression_count": row.regression_count,
        "times_resolved": row.resolve_count,
        "average_time_to_resolve_seconds": None if average is None else round(average),
        "last_event_id": row.last_event_id,
        "grouping": row.grouping,
    }


SORTS = {
    "last_seen": issues.c.last_seen,
    "first_seen": issues.c.first_seen,
    "events": issues.c.times_seen,
    "users": issues.c.users_seen,
}
# ``impact`` sorts by the impact rule of ``trends`` (critical first) over the issue's lifetime
# users and events, then users, then events; its pages are numbered (the rank is computed).
SORT_NAMES = (*SORTS, "impact")


def impact_rank(active_users: int) -> Any:
    """SQL for the rank of :func:`shipyard.errors.trends.impact_of` (3 = critical … 0 = low),
    from the issue's lifetime users and events against ``active_users`` (users with sessions)."""
    users, crash = issues.c.users_seen, issues.c.is_crash
    severe = issues.c.level.in_(("error", "fatal"))

    def at_least(count: int, share: float) -> Any:
        # users >= count, or users / active_users >= share when the app sends sessions
        return or_(users >= count, users >= share * active_users) if active_users else users >= count

    return case(
        (and_(crash, at_least(100, 0.05)), 3),
        (or_(and_(crash, at_least(10, 0.01)), and_(severe, at_least(100, 0.05))), 2),
        (or_(crash, and_(severe, or_(users >= 10, issues.c.times_seen >= 100))), 1),
        else_=0,
    )


def _tag_filter(key: str, value: str) -> Any:
    return exists().where(issue_tags.c.issue_id == issues.c.id, issue_tags.c.key == key, issue_tags.c.value == value)


async def list_issues(
    conn: AsyncConnection,
    project_id: int,
    *,
    status: str | None = None,
    release: str | None = None,
    environment: str | None = None,
    level: str | None = None,
    query: str | None = None,
    assignee: str | None = None,
    update_id: str | None = None,
    sort: str = "last_seen",
    limit: int = 50,
    after: str | None = None,
    active_users: int = 0,
) -> tuple[list[Any], str | None]:
    """Issues, newest activity first by default; ``after`` is the previous page's cursor.
    ``active_users`` (users with sessions lately) feeds the ``impact`` sort's share rule."""
    if sort not in SORT_NAMES:
        raise BadRequest(f"unknown sort {sort!r}; expected one of {', '.join(SORT_NAMES)}")
    stmt = select(issues).where(issues.c.project_id == project_id)
    if status:
        if status not in STATUSES:
            raise BadRequest(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        stmt = stmt.where(issues.c.status == status)
    if level:
        stmt = stmt.where(issues.c.level == level)
    if release:
        stmt = stmt.where(_tag_filter("release", release))
    if environment:
        stmt = stmt.where(_tag_filter("environment", environment))
    if update_id:
        stmt = stmt.where(_tag_filter("expo.updates.update_id", update_id))
    if assignee:
        stmt = (
            stmt.where(issues.c.assignee_email == assignee)
            if assignee != "none"
            else stmt.where(issues.c.assignee_id.is_(None))
        )
    if query:
        like = f"%{query.strip()[:200]}%"
        stmt = stmt.where(or_(issues.c.title.ilike(like), issues.c.culprit.ilike(like), issues.c.fingerprint == query))
    if sort == "impact":
        return await _list_by_impact(conn, stmt, active_users, limit, after)
    column = SORTS[sort]
    if after:
        value, _, last_id = after.rpartition("|")
        try:  # a cursor is opaque to clients, but one they altered is their mistake, not ours
            position: Any = datetime.fromisoformat(value) if sort in ("last_seen", "first_seen") else int(value)
            before_id = int(last_id)
        except ValueError:
            raise BadRequest("invalid cursor") from None
        stmt = stmt.where(or_(column < position, and_(column == position, issues.c.id < before_id)))
    rows = list((await conn.execute(stmt.order_by(column.desc(), issues.c.id.desc()).limit(limit + 1))).all())
    cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        value = getattr(last, {"events": "times_seen", "users": "users_seen"}.get(sort, sort))
        cursor = f"{value.isoformat() if isinstance(value, datetime) else value}|{last.id}"
    return rows, cursor


async def _list_by_impact(
    conn: AsyncConnection, stmt: Any, active_users: int, limit: int, after: str | None
) -> tuple[list[Any], str | None]:
    if after is not None and not (after.isascii() and after.isdecimal()):
        raise BadRequest("invalid cursor")
    offset = int(after or 0)
    rank = impact_rank(active_users)
    ordered = stmt.order_by(rank.desc(), issues.c.users_seen.desc(), issues.c.times_seen.desc(), issues.c.id.desc())
    rows = list((await conn.execute(ordered.offset(offset).limit(limit + 1))).all())
    if len(rows) > limit:
        return rows[:limit], str(offset + limit)
    return rows, None


async def get_issue(conn: AsyncConnection, project_id: int, issue_id: int) -> Any:
    return await _load(conn, project_id, issue_id)


def describe_event(row: Any, data: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {
        "event_id": row.event_id,
        "issue_id": row.issue_id,
        "received_at": row.received_at,
        "timestamp": row.timestamp,
        "level": row.level,
        "title": row.title,
        "handled": row.handled,
        "platform": row.platform,
        "release": row.release,
        "dist": row.dist,
        "environment": row.environment,
        "ota": {"update_id": row.update_id, "channel": row.channel, "runtime_version": row.runtime_version},
        "os": {"name": row.os_name, "version": row.os_version},
        "device_model": row.device_model,
        "app_version": row.app_version,
        "user": row.user_ident,
    }
    if data is not None:
        out["data"] = data
    return out


async def issue_events(
    conn: AsyncConnection, issue_id: int, *, limit: int = 50, before_id: int | None = None
) -> list[Any]:
    stmt = select(events).where(events.c.issue_id == issue_id)
    if before_id is not None:
        stmt = stmt.where(events.c.id < before_id)
    return list((await conn.execute(stmt.order_by(events.c.id.desc()).limit(limit + 1))).all())


async def get_event(conn: AsyncConnection, project_id: int, event_id: str) -> tuple[Any, dict[str, Any]]:
    event_id = event_id.replace("-", "").lower()
    row = (
        await conn.execute(select(events).where(events.c.project_id == project_id, events.c.event_id == event_id))
    ).first()
    if row is None:
        raise NotFound("event")
    data = (await conn.execute(select(event_data.c.data).where(event_data.c.event_pk == row.id))).scalar()
    return row, data or {}


async def event_neighbours(conn: AsyncConnection, issue_id: int, event_pk: int) -> tuple[str | None, str | None]:
    """The event ids just older and just newer than one event of an issue (event navigation)."""
    older = (
        await conn.execute(
            select(events.c.event_id)
            .where(events.c.issue_id == issue_id, events.c.id < event_pk)
            .order_by(events.c.id.desc())
            .limit(1)
        )
    ).scalar()
    newer = (
        await conn.execute(
            select(events.c.event_id)
            .where(events.c.issue_id == issue_id, events.c.id > event_pk)
            .order_by(events.c.id)
            .limit(1)
        )
    ).scalar()
    return older, newer


async def latest_event(conn: AsyncConnection, issue_id: int) -> tuple[Any, dict[str, Any]] | None:
    row = (
        await conn.execute(select(events).where(events.c.issue_id == issue_id).order_by(events.c.id.desc()).limit(1))
    ).first()
    if row is None:
        return None
    data = (await conn.execute(select(event_data.c.data).where(event_data.c.event_pk == row.id))).scalar()
    return row, data or {}


async def tag_distribution(
    conn: AsyncConnection, issue_id: int, *, key: str | None = None, top: int = 10
) -> dict[str, list[dict[str, Any]]]:
    stmt = select(issue_tags.c.key, issue_tags.c.value, issue_tags.c.count).where(issue_tags.c.issue_id == issue_id)
    if key:
        stmt = stmt.where(issue_tags.c.key == key)
    rows = (await conn.execute(stmt.order_by(issue_tags.c.key, issue_tags.c.count.desc()))).all()
    out: dict[str, list[dict[str, Any]]] = {}
    totals: dict[str, int] = {}
    for r in rows:
        totals[r.key] = totals.get(r.key, 0) + int(r._mapping["count"])
    for r in rows:
        values = out.setdefault(r.key, [])
        if len(values) < top:
            share = int(r._mapping["count"]) / totals[r.key] if totals[r.key] else 0.0
            values.append({"value": r.value, "count": int(r._mapping["count"]), "share": round(share, 4)})
    return out


async def activity(conn: AsyncConnection, issue_id: int, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(issue_activity)
        .where(issue_activity.c.issue_id == issue_id)
        .order_by(issue_activity.c.id.desc())
        .limit(limit)
    )
    return [{"kind": r.kind, "actor": r.actor, "details": r.details, "at": r.created_at} for r in rows]


async def hourly_series(conn: AsyncConnection, issue_id: int, since: datetime) -> list[tuple[datetime, int]]:
    rows = await conn.execute(
        select(issue_hourly.c.hour, issue_hourly.c.events)
        .where(issue_hourly.c.issue_id == issue_id, issue_hourly.c.hour >= since)
        .order_by(issue_hourly.c.hour)
    )
    return [(r.hour, int(r.events)) for r in rows]


async def events_in_window(conn: AsyncConnection, issue_id: int, since: datetime) -> int:
    return int(
        (
            await conn.execute(
                select(func.count())
                .select_from(events)
                .where(events.c.issue_id == issue_id, events.c.received_at >= since)
            )
        ).scalar_one()
    )
