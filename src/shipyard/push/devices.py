"""Devices (push tokens) and topics: registration from the app, pruning, deactivation."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.db import insert_ignore, prepared_upsert, utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.push.models import devices, topic_subscriptions
from shipyard.push.timing import TimingError, check_zone

PROVIDERS = ("expo", "fcm", "apns")
PLATFORMS = ("ios", "android", "web")
PERMISSIONS = ("granted", "denied", "provisional", "not_asked")
_EXPO = re.compile(
    r"^(ExponentPushToken|ExpoPushToken)\[[^\]\s]{1,200}\]$|^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)
_APNS = re.compile(r"^[0-9a-fA-F]{64,200}$")
_FCM = re.compile(r"^[A-Za-z0-9_:\-.]{20,4096}$")
_TOPIC = re.compile(r"^[A-Za-z0-9_.~%\-]{1,100}$")


def is_expo_token(token: str) -> bool:
    return bool(_EXPO.match(token))


def infer_provider(token: str, platform: str, provider: str | None) -> str:
    """Which service the token belongs to, checking that its format fits."""
    if provider is None:
        if is_expo_token(token):
            provider = "expo"
        elif platform == "ios" and _APNS.match(token):
            provider = "apns"
        else:
            provider = "fcm"
    if provider not in PROVIDERS:
        raise BadRequest(f"provider must be one of {', '.join(PROVIDERS)}")
    checks = {"expo": _EXPO, "apns": _APNS, "fcm": _FCM}
    if not checks[provider].match(token):
        raise BadRequest(f"token is not a valid {provider} push token", code="invalid_token")
    return provider


def check_topic(topic: str) -> str:
    if not _TOPIC.match(topic):
        raise BadRequest("topic names are 1–100 characters of letters, digits and -_.~%")
    return topic


# What registering again overwrites: everything but the row's identity and first creation.
_REREGISTERED = (
    "provider",
    "platform",
    "user_id",
    "app_version",
    "locale",
    "timezone",
    "permission",
    "environment",
    "active",
    "deactivated_reason",
    "deactivated_at",
    "updated_at",
    "last_seen_at",
)


async def register(conn: AsyncConnection, project_id: int, body: dict[str, Any], user_id: str | None) -> dict[str, Any]:
    """Create or update the device holding ``body['token']`` (re-registering re-activates it)."""
    token = str(body["token"]).strip()
    platform = body["platform"]
    if platform not in PLATFORMS:
        raise BadRequest(f"platform must be one of {', '.join(PLATFORMS)}")
    provider = infer_provider(token, platform, body.get("provider"))
    permission = body.get("permission") or "granted"
    if permission not in PERMISSIONS:
        raise BadRequest(f"permission must be one of {', '.join(PERMISSIONS)}")
    timezone = body.get("timezone")
    if timezone:
        try:
            check_zone(timezone)
        except TimingError as exc:
            raise BadRequest(str(exc)) from None
    environment = body.get("environment") or "production"
    if environment not in ("production", "development"):
        raise BadRequest("environment must be production or development (APNs sandbox)")
    now = utcnow()
    values = {
        "project_id": project_id,
        "token": token,
        "provider": provider,
        "platform": platform,
        "user_id": user_id,
        "app_version": body.get("app_version"),
        "locale": body.get("locale"),
        "timezone": timezone,
        "permission": permission,
        "environment": environment,
        "active": True,
        "deactivated_reason": None,
        "deactivated_at": None,
        "created_at": now,
        "updated_at": now,
        "last_seen_at": now,
    }
    # RETURNING hands back the row as stored (new or updated) in the same statement.
    statement = prepared_upsert(conn.dialect.name, devices, ("project_id", "token"), _REREGISTERED, returning=True)
    device = dict((await conn.execute(statement, values)).one()._mapping)
    for topic in body.get("topics") or []:
        await subscribe(conn, project_id, device["id"], topic)
    return device


def created_now(device: dict[str, Any]) -> bool:
    """Whether :func:`register` inserted this device (an update keeps the first ``created_at``)."""
    return bool(device["created_at"] == device["updated_at"])


async def get_by_token(conn: AsyncConnection, project_id: int, token: str) -> dict[str, Any]:
    row = (
        await conn.execute(select(devices).where(devices.c.project_id == project_id, devices.c.token == token))
    ).first()
    if row is None:
        raise NotFound("device")
    return dict(row._mapping)


async def get(conn: AsyncConnection, project_id: int, device_id: int) -> dict[str, Any]:
    row = (
        await conn.execute(select(devices).where(devices.c.project_id == project_id, devices.c.id == device_id))
    ).first()
    if row is None:
        raise NotFound("device")
    return dict(row._mapping)


async def unregister(conn: AsyncConnection, project_id: int, token: str) -> dict[str, Any]:
    """The app turned push off or logged out for good: the token is never used again."""
    device = await get_by_token(conn, project_id, token)
    await deactivate(conn, [device["id"]], "unregistered by the app")
    await conn.execute(delete(topic_subscriptions).where(topic_subscriptions.c.device_id == device["id"]))
    return device


async def deactivate(conn: AsyncConnection, device_ids: list[int], reason: str) -> int:
    if not device_ids:
        return 0
    result = await conn.execute(
        update(devices)
        .where(devices.c.id.in_(device_ids), devices.c.active)
        .values(active=False, deactivated_reason=reason[:300], deactivated_at=utcnow())
    )
    return int(result.rowcount or 0)


async def subscribe(conn: AsyncConnection, project_id: int, device_id: int, topic: str) -> None:
    await conn.execute(
        insert_ignore(
            conn,
            topic_subscriptions,
            {"device_id": device_id, "topic": check_topic(topic), "project_id": project_id, "created_at": utcnow()},
            conflict_columns=["device_id", "topic"],
        )
    )


async def unsubscribe(conn: AsyncConnection, device_id: int, topic: str) -> bool:
    result = await conn.execute(
        delete(topic_subscriptions).where(
            topic_subscriptions.c.device_id == device_id, topic_subscriptions.c.topic == topic
        )
    )
    return bool(result.rowcount)


async def topics_of(conn: AsyncConnection, device_id: int) -> list[str]:
    rows = await conn.execute(
        select(topic_subscriptions.c.topic)
        .where(topic_subscriptions.c.device_id == device_id)
        .order_by(topic_subscriptions.c.topic)
    )
    return [r[0] for r in rows]


async def list_topics(conn: AsyncConnection, project_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(topic_subscriptions.c.topic, func.count())
        .where(topic_subscriptions.c.project_id == project_id)
        .group_by(topic_subscriptions.c.topic)
        .order_by(topic_subscriptions.c.topic)
    )
    return [{"topic": t, "devices": n} for t, n in rows]


async def prune_stale(conn: AsyncConnection, older_than: timedelta) -> list[tuple[int, int]]:
    """Deactivate devices not seen since ``older_than``; returns (project_id, device_id) pairs."""
    cutoff = utcnow() - older_than
    stale = (
        await conn.execute(
            select(devices.c.project_id, devices.c.id).where(and_(devices.c.active, devices.c.last_seen_at < cutoff))
        )
    ).all()
    await deactivate(conn, [r.id for r in stale], f"not seen for {older_than.days} days")
    return [(r.project_id, r.id) for r in stale]


def public_view(device: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a device (the token is the app's own; admins see it too)."""
    keys = (
        "id",
        "token",
        "provider",
        "platform",
        "user_id",
        "app_version",
        "locale",
        "timezone",
        "permission",
        "environment",
        "active",
        "deactivated_reason",
        "created_at",
        "updated_at",
        "last_seen_at",
    )
    return {k: device.get(k) for k in keys}
