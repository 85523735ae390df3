"""Alerts admin API: list and resolve alerts; manage the channels they are delivered to.

A webhook channel's signing secret (``whsec_…``) is returned once, when the channel is
created or its secret rotated; afterwards it exists only encrypted at rest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select, update

from shipyard.core import alerts, audit
from shipyard.core.deps import Admin, Developer, IdPath, Viewer
from shipyard.core.errors import BadRequest, Conflict, NotFound
from shipyard.core.models import alert_channels, alert_deliveries
from shipyard.core.models import alerts as alerts_table
from shipyard.core.pagination import Page, Paging

router = APIRouter(tags=["alerts"])

Severity = Literal["info", "warning", "error", "critical"]


class AlertOut(BaseModel):
    id: int
    dedup_key: str
    source: str
    severity: str
    status: str
    summary: str
    details: dict[str, Any]
    link: str | None
    occurrences: int
    first_seen_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None


class ChannelCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=8, max_length=2000, pattern=r"^https?://", description="Webhook endpoint (POST).")
    min_severity: Severity = "warning"


class ChannelUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    url: str | None = Field(None, min_length=8, max_length=2000, pattern=r"^https?://")
    min_severity: Severity | None = None
    enabled: bool | None = None


class ChannelOut(BaseModel):
    id: int
    kind: str
    name: str
    url: str
    min_severity: str
    enabled: bool
    created_at: datetime


class ChannelCreated(ChannelOut):
    secret: str = Field(description="Standard Webhooks signing secret (`whsec_…`). Shown once; store it now.")


class DeliveryOut(BaseModel):
    id: int
    alert_id: int
    event: str
    status: str
    attempts: int
    response_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


# --- alerts ------------------------------------------------------------------------------------


@router.get("/projects/{project}/alerts", response_model=Page[AlertOut])
async def list_alerts(
    access: Viewer,
    page: Paging,
    status: Annotated[Literal["firing", "resolved"] | None, Query()] = None,
    source: Annotated[str | None, Query(max_length=64)] = None,
    severity: Annotated[Severity | None, Query(description="Only alerts of this severity or worse.")] = None,
) -> dict[str, Any]:
    """The project's alerts, newest first."""
    query = select(alerts_table).where(alerts_table.c.project_id == access.project.id)
    if status:
        query = query.where(alerts_table.c.status == status)
    if source:
        query = query.where(alerts_table.c.source == source)
    if severity:
        query = query.where(alerts_table.c.severity.in_(alerts.SEVERITIES[alerts.severity_rank(severity) :]))
    after = page.after_int()
    if after is not None:
        query = query.where(alerts_table.c.id < after)
    async with access.ctx.db.connect() as conn:
        rows = (await conn.execute(query.order_by(alerts_table.c.id.desc()).limit(page.limit + 1))).all()
    return page.page([dict(r._mapping) for r in rows], lambda r: r["id"])


async def _alert(conn: Any, project_id: int, alert_id: int) -> Any:
    row = (
        await conn.execute(
            select(alerts_table).where(alerts_table.c.id == alert_id, alerts_table.c.project_id == project_id)
        )
    ).first()
    if row is None:
        raise NotFound("alert")
    return row


@router.get("/projects/{project}/alerts/{alert_id}/deliveries", response_model=Page[DeliveryOut])
async def list_deliveries(alert_id: IdPath, access: Viewer, page: Paging) -> dict[str, Any]:
    """Where an alert was sent and how each delivery went."""
    query = select(alert_deliveries).where(alert_deliveries.c.alert_id == alert_id)
    after = page.after_int()
    if after is not None:
        query = query.where(alert_deliveries.c.id > after)
    async with access.ctx.db.connect() as conn:
        await _alert(conn, access.project.id, alert_id)
        rows = (await conn.execute(query.order_by(alert_deliveries.c.id).limit(page.limit + 1))).all()
    return page.page([dict(r._mapping) for r in rows], lambda r: r["id"])


@router.post("/projects/{project}/alerts/{alert_id}/resolve", response_model=AlertOut)
async def resolve(alert_id: IdPath, access: Developer) -> dict[str, Any]:
    """Resolve a firing alert; channels are told."""
    ctx = access.ctx
    async with ctx.db.transaction() as conn:
        alert = await _alert(conn, access.project.id, alert_id)
        if alert.status != "firing":
            raise Conflict(f"alert {alert_id} is already {alert.status}")
        await alerts.resolve_alert(conn, ctx, project_id=access.project.id, dedup_key=alert.dedup_key)
        await audit.record(
            conn,
            ctx,
            access.actor,
            "alert.resolve",
            project_id=access.project.id,
            resource_type="alert",
            resource_id=alert_id,
            details={"dedup_key": alert.dedup_key},
        )
        return dict((await _alert(conn, access.project.id, alert_id))._mapping)


# --- channels ----------------------------------------------------------------------------------

_CHANNEL_COLUMNS = [c for c in alert_channels.c if c.name != "secret"]


async def _channel(conn: Any, project_id: int, channel_id: int) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(*_CHANNEL_COLUMNS).where(
                alert_channels.c.id == channel_id, alert_channels.c.project_id == project_id
            )
        )
    ).first()
    if row is None:
        raise NotFound("channel")
    return dict(row._mapping)


@router.get("/projects/{project}/alert-channels", response_model=Page[ChannelOut])
async def list_channels(access: Viewer, page: Paging) -> dict[str, Any]:
    """Where the project's alerts go (secrets are never shown again)."""
    query = select(*_CHANNEL_COLUMNS).where(alert_channels.c.project_id == access.project.id)
    after = page.after_int()
    if after is not None:
        query = query.where(alert_channels.c.id > after)
    async with access.ctx.db.connect() as conn:
        rows = (await conn.execute(query.order_by(alert_channels.c.id).limit(page.limit + 1))).all()
    return page.page([dict(r._mapping) for r in rows], lambda r: r["id"])


@router.post("/projects/{project}/alert-channels", response_model=ChannelCreated, status_code=201)
async def create_channel(body: ChannelCreate, access: Admin) -> dict[str, Any]:
    """Add a signed webhook channel; the response carries its signing secret, once."""
    ctx = access.ctx
    async with ctx.db.transaction() as conn:
        channel_id, secret = await alerts.create_webhook_channel(
            conn, ctx, access.project.id, name=body.name, url=body.url, min_severity=body.min_severity
        )
        await audit.record(
            conn,
            ctx,
            access.actor,
            "alert_channel.create",
            project_id=access.project.id,
            resource_type="alert_channel",
            resource_id=channel_id,
            details={"name": body.name, "url": body.url, "min_severity": body.min_severity},
        )
        return {**await _channel(conn, access.project.id, channel_id), "secret": secret}


@router.get("/projects/{project}/alert-channels/{channel_id}", response_model=ChannelOut)
async def get_channel(channel_id: IdPath, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return await _channel(conn, access.project.id, channel_id)


@router.patch("/projects/{project}/alert-channels/{channel_id}", response_model=ChannelOut)
async def update_channel(channel_id: IdPath, body: ChannelUpdate, access: Admin) -> dict[str, Any]:
    """Rename, re-point, change the severity threshold, or pause a channel."""
    from shipyard.core.http import BlockedDestination, check_destination

    ctx = access.ctx
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise BadRequest("nothing to change: send name, url, min_severity or enabled")
    if "url" in changes:
        try:
            await check_destination(changes["url"], allow_private=ctx.settings.allow_private_outbound)
        except BlockedDestination as exc:
            raise BadRequest(str(exc), code="blocked_destination") from None
    async with ctx.db.transaction() as conn:
        await _channel(conn, access.project.id, channel_id)
        await conn.execute(update(alert_channels).where(alert_channels.c.id == channel_id).values(**changes))
        await audit.record(
            conn,
            ctx,
            access.actor,
            "alert_channel.update",
            project_id=access.project.id,
            resource_type="alert_channel",
            resource_id=channel_id,
            details=changes,
        )
        return await _channel(conn, access.project.id, channel_id)


@router.post("/projects/{project}/alert-channels/{channel_id}/rotate-secret", response_model=ChannelCreated)
async def rotate_channel_secret(channel_id: IdPath, access: Admin) -> dict[str, Any]:
    """Replace the signing secret (returned once); deliveries sign with the new one at once."""
    ctx = access.ctx
    secret = alerts.new_webhook_secret()
    async with ctx.db.transaction() as conn:
        await _channel(conn, access.project.id, channel_id)
        await conn.execute(
            update(alert_channels).where(alert_channels.c.id == channel_id).values(secret=ctx.box.encrypt(secret))
        )
        await audit.record(
            conn,
            ctx,
            access.actor,
            "alert_channel.rotate_secret",
            project_id=access.project.id,
            resource_type="alert_channel",
            resource_id=channel_id,
        )
        return {**await _channel(conn, access.project.id, channel_id), "secret": secret}


@router.delete("/projects/{project}/alert-channels/{channel_id}", status_code=204)
async def delete_channel(channel_id: IdPath, access: Admin) -> None:
    ctx = access.ctx
    async with ctx.db.transaction() as conn:
        await alerts.delete_channel(conn, access.project.id, channel_id)
        await audit.record(
            conn,
            ctx,
            access.actor,
            "alert_channel.delete",
            project_id=access.project.id,
            resource_type="alert_channel",
            resource_id=channel_id,
        )
