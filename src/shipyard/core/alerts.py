"""Alerts core: any feature raises and resolves alerts here.

An alert is identified by (project, dedup key) while it is firing: raising it again
bumps its occurrence count instead of notifying again. Every new alert and every
resolution is delivered through the job queue to each enabled channel of the project
whose minimum severity it meets. This issue's channel is a signed generic webhook
following the Standard Webhooks scheme (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, secret ``whsec_…``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import jobs
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.core.models import alert_channels, alert_deliveries, alerts

SEVERITIES = ("info", "warning", "error", "critical")


def severity_rank(severity: str) -> int:
    if severity not in SEVERITIES:
        raise BadRequest(f"unknown severity {severity!r}; expected one of {', '.join(SEVERITIES)}")
    return SEVERITIES.index(severity)


async def raise_alert(
    conn: AsyncConnection,
    ctx: Context,
    *,
    project_id: int,
    source: str,
    dedup_key: str,
    severity: str,
    summary: str,
    details: dict[str, Any] | None = None,
    link: str | None = None,
) -> int:
    """Raise (or re-raise) an alert; returns its id. Delivery happens after commit."""
    severity_rank(severity)
    now = utcnow()
    firing = (
        await conn.execute(
            select(alerts.c.id, alerts.c.severity).where(
                alerts.c.project_id == project_id, alerts.c.dedup_key == dedup_key, alerts.c.status == "firing"
            )
        )
    ).first()
    if firing is not None:
        values: dict[str, Any] = {
            "occurrences": alerts.c.occurrences + 1,
            "last_seen_at": now,
            "summary": summary,
            "details": details or {},
        }
        escalated = severity_rank(severity) > severity_rank(firing.severity)
        if escalated:
            values["severity"] = severity
        await conn.execute(update(alerts).where(alerts.c.id == firing.id).values(**values))
        if escalated:  # a worse state is news: tell the channels again
            await _enqueue_deliveries(conn, project_id, firing.id, "firing", severity)
        return int(firing.id)
    alert_id = (
        await conn.execute(
            alerts.insert()
            .values(
                project_id=project_id,
                dedup_key=dedup_key,
                source=source,
                severity=severity,
                status="firing",
                summary=summary,
                details=details or {},
                link=link,
                occurrences=1,
                first_seen_at=now,
                last_seen_at=now,
            )
            .returning(alerts.c.id)
        )
    ).scalar_one()
    await _enqueue_deliveries(conn, project_id, alert_id, "firing", severity)
    return int(alert_id)


async def resolve_alert(conn: AsyncConnection, ctx: Context, *, project_id: int, dedup_key: str) -> bool:
    """Resolve the firing alert with this key, if any; channels are told."""
    firing = (
        await conn.execute(
            select(alerts.c.id, alerts.c.severity).where(
                alerts.c.project_id == project_id, alerts.c.dedup_key == dedup_key, alerts.c.status == "firing"
            )
        )
    ).first()
    if firing is None:
        return False
    await conn.execute(update(alerts).where(alerts.c.id == firing.id).values(status="resolved", resolved_at=utcnow()))
    await _enqueue_deliveries(conn, project_id, firing.id, "resolved", firing.severity)
    return True


async def _enqueue_deliveries(conn: AsyncConnection, project_id: int, alert_id: int, event: str, severity: str) -> None:
    channels = (
        await conn.execute(
            select(alert_channels.c.id, alert_channels.c.min_severity).where(
                alert_channels.c.project_id == project_id, alert_channels.c.enabled
            )
        )
    ).all()
    for channel in channels:
        if severity_rank(severity) < severity_rank(channel.min_severity):
            continue
        delivery_id = (
            await conn.execute(
                alert_deliveries.insert()
                .values(
                    alert_id=alert_id,
                    channel_id=channel.id,
                    event=event,
                    status="pending",
                    attempts=0,
                    created_at=utcnow(),
                )
                .returning(alert_deliveries.c.id)
            )
        ).scalar_one()
        await jobs.enqueue(
            conn,
            "core.alert.deliver",
            {"delivery_id": delivery_id},
            priority=10,
            project_id=project_id,
            idempotency_key=f"alert-delivery:{delivery_id}",
            max_attempts=12,
        )


# --- channels ---------------------------------------------------------------------------------


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def create_webhook_channel(
    conn: AsyncConnection,
    ctx: Context,
    project_id: int,
    *,
    name: str,
    url: str,
    min_severity: str = "warning",
    secret: str | None = None,
) -> tuple[int, str]:
    """Returns (channel id, signing secret). The secret is stored encrypted and shown once."""
    from shipyard.core.http import BlockedDestination, check_destination

    severity_rank(min_severity)
    try:
        await check_destination(url, allow_private=ctx.settings.allow_private_outbound)
    except BlockedDestination as exc:
        raise BadRequest(str(exc), code="blocked_destination") from None
    secret = secret or new_webhook_secret()
    channel_id = (
        await conn.execute(
            alert_channels.insert()
            .values(
                project_id=project_id,
                kind="webhook",
                name=name,
                url=url,
                secret=ctx.box.encrypt(secret),
                min_severity=min_severity,
                enabled=True,
                created_at=utcnow(),
            )
            .returning(alert_channels.c.id)
        )
    ).scalar_one()
    return int(channel_id), secret


async def delete_channel(conn: AsyncConnection, project_id: int, channel_id: int) -> None:
    result = await conn.execute(
        alert_channels.delete().where(alert_channels.c.id == channel_id, alert_channels.c.project_id == project_id)
    )
    if not result.rowcount:
        raise NotFound("channel")


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks signature header value for one payload."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def alert_payload(alert: Any, event: str, public_base: str) -> dict[str, Any]:
    return {
        "type": f"alert.{event}",
        "timestamp": utcnow().isoformat(),
        "data": {
            "id": alert.id,
            "project_id": alert.project_id,
            "source": alert.source,
            "dedup_key": alert.dedup_key,
            "severity": alert.severity,
            "status": alert.status,
            "summary": alert.summary,
            "details": alert.details,
            "occurrences": alert.occurrences,
            "first_seen_at": alert.first_seen_at.isoformat(),
            "link": alert.link if not alert.link or "://" in alert.link else public_base + alert.link,
        },
    }


@jobs.handler("core.alert.deliver")
async def deliver(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    from shipyard.core.http import CircuitOpen, outbound

    async with ctx.db.connect() as conn:
        row = (
            await conn.execute(
                select(alert_deliveries, alert_channels.c.url, alert_channels.c.secret)
                .join(alert_channels, alert_channels.c.id == alert_deliveries.c.channel_id)
                .where(alert_deliveries.c.id == payload["delivery_id"])
            )
        ).first()
        if row is None or row.status == "delivered":
            return  # channel deleted, or already delivered before a crash
        alert = (await conn.execute(select(alerts).where(alerts.c.id == row.alert_id))).first()
    body = orjson.dumps(alert_payload(alert, row.event, ctx.settings.public_base))
    msg_id = f"msg_alert_{row.id}"
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_webhook(ctx.box.decrypt(row.secret), msg_id, timestamp, body),
        "user-agent": "Shipyard-Webhooks/1",
    }
    status: int | None = None
    error: str | None = None
    try:
        response = await outbound(ctx).request(
            "POST",
            row.url,
            destination=f"webhook:{row.channel_id}",
            content=body,
            headers=headers,
            retries=0,
            check_url=True,
        )
        status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}: {response.text[:200]}"
    except CircuitOpen as exc:
        raise jobs.RetryLater(exc.retry_after, str(exc)) from None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    async with ctx.db.transaction() as conn:
        await conn.execute(
            update(alert_deliveries)
            .where(alert_deliveries.c.id == row.id)
            .values(
                attempts=alert_deliveries.c.attempts + 1,
                response_status=status,
                last_error=error,
                status="delivered" if error is None else ("failed" if job.attempts >= job.max_attempts else "pending"),
                delivered_at=utcnow() if error is None else None,
            )
        )
    if error is not None:
        raise RuntimeError(f"webhook delivery failed: {error}")


async def list_alerts(
    conn: AsyncConnection, project_id: int, *, status: str | None = None, limit: int = 50, before_id: int | None = None
) -> list[Any]:
    query = select(alerts).where(alerts.c.project_id == project_id)
    if status:
        query = query.where(alerts.c.status == status)
    if before_id is not None:
        query = query.where(alerts.c.id < before_id)
    return list((await conn.execute(query.order_by(alerts.c.id.desc()).limit(limit))).all())
