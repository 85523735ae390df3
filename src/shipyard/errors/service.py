"""The errors feature's service surface for other features, the API, the CLI and the dashboard.

Other features call these functions (never the tables): privacy requests
(:func:`export_user`, :func:`erase_user`), transactions for performance analysis
(:func:`list_transactions`, :func:`get_transaction`), release health (:mod:`health`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import projects
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.errors import NotFound
from shipyard.errors import health
from shipyard.errors.config import SETTINGS_KEY, ProjectConfig, project_config
from shipyard.errors.issues import describe_event
from shipyard.errors.models import (
    attachments,
    envelopes,
    event_data,
    events,
    feedback,
    issue_users,
    session_state,
    session_users,
    spans,
    transactions,
)
from shipyard.settings import Settings

__all__ = ["crash_free_rate", "erase_user", "export_user", "get_transaction", "list_transactions"]


# --- settings -------------------------------------------------------------------------------------


async def get_config(conn: AsyncConnection, settings: Settings, project_id: int) -> ProjectConfig:
    project = await projects.get_project(conn, project_id)
    return project_config(settings, project.settings)


async def update_config(
    conn: AsyncConnection, settings: Settings, project_id: int, changes: dict[str, Any]
) -> ProjectConfig:
    project = await projects.get_project(conn, project_id)
    current = dict(project.settings.get(SETTINGS_KEY) or {})
    current.update({k: v for k, v in changes.items() if v is not None})
    merged = await projects.update_settings(conn, project_id, {SETTINGS_KEY: current})
    return project_config(settings, merged)


# --- privacy ----------------------------------------------------------------------------------------


def _idents(user_id: str) -> list[str]:
    return [f"{prefix}:{user_id}" for prefix in ("id", "email", "username")]


async def export_user(conn: AsyncConnection, project_id: int, user_id: str) -> dict[str, Any]:
    """Everything stored about one app user (by user id, email or username)."""
    idents = _idents(user_id)
    event_rows = (
        await conn.execute(
            select(events, event_data.c.data)
            .join(event_data, event_data.c.event_pk == events.c.id)
            .where(events.c.project_id == project_id, events.c.user_ident.in_(idents))
            .order_by(events.c.id)
        )
    ).all()
    txn_rows = (
        await conn.execute(
            select(transactions).where(transactions.c.project_id == project_id, transactions.c.user_ident.in_(idents))
        )
    ).all()
    feedback_rows = (
        await conn.execute(select(feedback).where(feedback.c.project_id == project_id, feedback.c.email == user_id))
    ).all()
    issue_rows = (
        await conn.execute(
            select(issue_users).where(issue_users.c.project_id == project_id, issue_users.c.user_ident.in_(idents))
        )
    ).all()
    did = health.hash_did(project_id, user_id)
    session_rows = (
        await conn.execute(
            select(session_users).where(session_users.c.project_id == project_id, session_users.c.did_hash == did)
        )
    ).all()
    return {
        "events": [describe_event(r, r.data) for r in event_rows],
        "transactions": [
            {
                "event_id": r.event_id,
                "name": r.name,
                "timestamp": r.timestamp,
                "duration_ms": r.duration_ms,
                "release": r.release,
                "tags": r.tags,
            }
            for r in txn_rows
        ],
        "feedback": [
            {
                "event_id": r.event_id,
                "name": r.name,
                "email": r.email,
                "comments": r.comments,
                "created_at": r.created_at,
            }
            for r in feedback_rows
        ],
        "issues": [{"issue_id": r.issue_id, "first_seen": r.first_seen, "last_seen": r.last_seen} for r in issue_rows],
        "sessions": [
            {"day": r.day, "release": r.release, "environment": r.environment, "crashed": r.crashed}
            for r in session_rows
        ],
    }


async def erase_user(conn: AsyncConnection, project_id: int, user_id: str) -> int:
    """Delete everything stored about one app user; issues keep their (anonymous) counts."""
    idents = _idents(user_id)
    erased = 0
    event_ids = list(
        (
            await conn.execute(
                select(events.c.id).where(events.c.project_id == project_id, events.c.user_ident.in_(idents))
            )
        ).scalars()
    )
    if event_ids:
        await conn.execute(delete(event_data).where(event_data.c.event_pk.in_(event_ids)))
        erased += (await conn.execute(delete(events).where(events.c.id.in_(event_ids)))).rowcount or 0
    txn_ids = list(
        (
            await conn.execute(
                select(transactions.c.id).where(
                    transactions.c.project_id == project_id, transactions.c.user_ident.in_(idents)
                )
            )
        ).scalars()
    )
    if txn_ids:
        await conn.execute(delete(spans).where(spans.c.transaction_pk.in_(txn_ids)))
        erased += (await conn.execute(delete(transactions).where(transactions.c.id.in_(txn_ids)))).rowcount or 0
    erased += (
        await conn.execute(delete(feedback).where(feedback.c.project_id == project_id, feedback.c.email == user_id))
    ).rowcount or 0
    erased += (
        await conn.execute(
            delete(issue_users).where(issue_users.c.project_id == project_id, issue_users.c.user_ident.in_(idents))
        )
    ).rowcount or 0
    did = health.hash_did(project_id, user_id)
    erased += (
        await conn.execute(
            delete(session_users).where(session_users.c.project_id == project_id, session_users.c.did_hash == did)
        )
    ).rowcount or 0
    erased += (
        await conn.execute(
            delete(session_state).where(session_state.c.project_id == project_id, session_state.c.did_hash == did)
        )
    ).rowcount or 0
    return int(erased)


# --- transactions (for performance analysis) --------------------------------------------------------


def describe_transaction(row: Any) -> dict[str, Any]:
    return {
        "event_id": row.event_id,
        "trace_id": row.trace_id,
        "name": row.name,
        "op": row.op,
        "status": row.status,
        "start_timestamp": row.start_timestamp,
        "timestamp": row.timestamp,
        "duration_ms": row.duration_ms,
        "release": row.release,
        "environment": row.environment,
        "update_id": row.update_id,
        "measurements": row.measurements,
        "tags": row.tags,
    }


async def list_transactions(
    conn: AsyncConnection,
    project_id: int,
    *,
    since: datetime | None = None,
    name: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[Any]:
    stmt = select(transactions).where(transactions.c.project_id == project_id)
    if since is not None:
        stmt = stmt.where(transactions.c.timestamp >= since)
    if name:
        stmt = stmt.where(transactions.c.name == name)
    if before_id is not None:
        stmt = stmt.where(transactions.c.id < before_id)
    return list((await conn.execute(stmt.order_by(transactions.c.id.desc()).limit(limit))).all())


async def get_transaction(conn: AsyncConnection, project_id: int, event_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(transactions).where(
                transactions.c.project_id == project_id, transactions.c.event_id == event_id.replace("-", "").lower()
            )
        )
    ).first()
    if row is None:
        raise NotFound("transaction")
    span_rows = (
        await conn.execute(select(spans).where(spans.c.transaction_pk == row.id).order_by(spans.c.start_timestamp))
    ).all()
    return {
        **describe_transaction(row),
        "spans": [
            {
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id,
                "op": s.op,
                "description": s.description,
                "status": s.status,
                "start_timestamp": s.start_timestamp,
                "duration_ms": s.duration_ms,
                "data": s.data,
            }
            for s in span_rows
        ],
    }


# --- feedback, attachments, queue -------------------------------------------------------------------


async def list_feedback(
    conn: AsyncConnection,
    project_id: int,
    *,
    issue_id: int | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Feedback, linked to its event's issue (also when the event arrived after the feedback)."""
    issue_col = func.coalesce(feedback.c.issue_id, events.c.issue_id)
    stmt = (
        select(feedback, issue_col.label("linked_issue"))
        .select_from(
            feedback.outerjoin(
                events, (events.c.project_id == feedback.c.project_id) & (events.c.event_id == feedback.c.event_id)
            )
        )
        .where(feedback.c.project_id == project_id)
    )
    if issue_id is not None:
        stmt = stmt.where(issue_col == issue_id)
    if before_id is not None:
        stmt = stmt.where(feedback.c.id < before_id)
    rows = (await conn.execute(stmt.order_by(feedback.c.id.desc()).limit(limit))).all()
    return [
        {
            "id": r.id,
            "event_id": r.event_id,
            "issue_id": r.linked_issue,
            "name": r.name,
            "email": r.email,
            "comments": r.comments,
            "url": r.url,
            "source": r.source,
            "created_at": r.created_at,
        }
        for r in rows
    ]


async def event_attachments(conn: AsyncConnection, project_id: int, event_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(attachments).where(attachments.c.project_id == project_id, attachments.c.event_id == event_id)
    )
    return [
        {
            "id": r.id,
            "filename": r.filename,
            "content_type": r.content_type,
            "attachment_type": r.attachment_type,
            "size": r.size,
            "sha256": r.blob_key,
        }
        for r in rows
    ]


async def get_attachment(conn: AsyncConnection, project_id: int, attachment_id: int) -> Any:
    row = (
        await conn.execute(
            select(attachments).where(attachments.c.id == attachment_id, attachments.c.project_id == project_id)
        )
    ).first()
    if row is None:
        raise NotFound("attachment")
    return row


async def queue_status(conn: AsyncConnection, project_id: int) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(
                func.count().filter(envelopes.c.failed.is_(False)),
                func.count().filter(envelopes.c.failed.is_(True)),
                func.min(envelopes.c.received_at).filter(envelopes.c.failed.is_(False)),
            ).where(envelopes.c.project_id == project_id)
        )
    ).one()
    failed = (
        await conn.execute(
            select(
                envelopes.c.id, envelopes.c.event_id, envelopes.c.received_at, envelopes.c.error, envelopes.c.attempts
            )
            .where(envelopes.c.project_id == project_id, envelopes.c.failed.is_(True))
            .order_by(envelopes.c.id.desc())
            .limit(50)
        )
    ).all()
    oldest = row[2]
    if isinstance(oldest, str):
        oldest = datetime.fromisoformat(oldest)
    return {
        "pending": int(row[0]),
        "failed": int(row[1]),
        "oldest_pending_seconds": None if oldest is None else round((utcnow() - _aware(oldest)).total_seconds(), 1),
        "failures": [
            {"id": r.id, "event_id": r.event_id, "received_at": r.received_at, "error": r.error, "attempts": r.attempts}
            for r in failed
        ],
    }


def _aware(moment: datetime) -> datetime:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def retry_failed(conn: AsyncConnection, project_id: int) -> int:
    result = await conn.execute(
        update(envelopes)
        .where(envelopes.c.project_id == project_id, envelopes.c.failed.is_(True))
        .values(failed=False, attempts=0, error=None, claimed_by=None, claimed_until=None)
    )
    return int(result.rowcount or 0)


async def known_environments(conn: AsyncConnection, project_id: int) -> list[str]:
    from shipyard.errors.models import issue_tags

    rows = await conn.execute(
        select(issue_tags.c.value)
        .distinct()
        .where(issue_tags.c.project_id == project_id, issue_tags.c.key == "environment")
    )
    return sorted(r[0] for r in rows)


# --- release health for other features --------------------------------------------------------------


async def crash_free_rate(ctx: Context, project_id: int, since: datetime) -> dict[str, Any]:
    """Read-only: crash-free sessions and users since ``since`` (all releases), for dashboards.

    The rates are None when no session was reported in the period.
    """
    async with ctx.db.connect() as conn:
        totals = await health.totals(conn, project_id, since)
    return {
        "crash_free_sessions": totals["crash_free_sessions"],
        "crash_free_users": totals["crash_free_users"],
        "sessions": totals["sessions"],
        "sessions_crashed": totals["sessions_crashed"],
    }
