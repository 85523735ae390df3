"""Expo-compatible ingress: ``POST /--/api/v2/push/send`` and ``/--/api/v2/push/getReceipts``.

Backends that already use ``expo-server-sdk`` (Node, ``EXPO_BASE_URL``) or
``exponent_server_sdk`` (Python, ``PushClient(host=…)``) point at Shipyard and keep their
code: the project's secret key is the bearer token (Expo's "enhanced push security"
access token), requests and answers are Expo's (tickets, receipts, ``errors``). Each
notification becomes a tracked message that goes through preferences, quiet hours, caps
and digests like any other send, then is relayed to Expo (or, for native tokens,
delivered directly). The ticket id is Shipyard's message id.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from shipyard.core.auth import Role
from shipyard.core.bodies import decode_body
from shipyard.core.context import Context
from shipyard.core.db import insert_ignore, utcnow
from shipyard.core.deps import get_ctx
from shipyard.core.errors import ApiError
from shipyard.push import prefs
from shipyard.push.devices import is_expo_token
from shipyard.push.models import devices, messages, sends
from shipyard.push.sending import message_id, wake_worker, write_messages

router = APIRouter(tags=["push (Expo-compatible)"])

MAX_BODY = 2 * 1024 * 1024
MAX_NOTIFICATIONS = 100
MAX_RECEIPT_IDS = 1000
DEAD_MARKERS = (
    "DeviceNotRegistered",
    "UNREGISTERED",
    "SENDER_ID_MISMATCH",
    "Unregistered",
    "BadDeviceToken",
    "device inactive",
)
EXPO_ERRORS = ("DeviceNotRegistered", "MessageTooBig", "MessageRateExceeded", "InvalidCredentials", "MismatchSenderId")


def expo_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status)


async def _authenticate(ctx: Context, request: Request) -> int | JSONResponse:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return expo_error(401, "UNAUTHORIZED", "send the project's secret key as `Authorization: Bearer sk_…`")
    async with ctx.db.connect() as conn:
        row = await ctx.extras["key_cache"].lookup(conn, "secret", header[7:].strip())
    if row is None:
        return expo_error(401, "UNAUTHORIZED", "the bearer token is not a valid secret key of any project")
    if Role[row.role] < Role.developer:
        return expo_error(403, "UNAUTHORIZED", "this key's role may not send notifications (developer or higher)")
    return int(row.project_id)


async def _json(request: Request) -> Any:
    raw = decode_body(await request.body(), request.headers.get("content-encoding"), limit=MAX_BODY)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "API_ERROR", "the request body is not valid JSON") from None


def to_payload(msg: dict[str, Any], categories: set[str]) -> dict[str, Any]:
    """An Expo message's fields in Shipyard's provider-neutral payload."""
    payload: dict[str, Any] = {"data": msg.get("data") or {}}
    for theirs, ours in (
        ("title", "title"),
        ("body", "body"),
        ("subtitle", "subtitle"),
        ("sound", "sound"),
        ("badge", "badge"),
        ("ttl", "ttl"),
        ("channelId", "channel_id"),
        ("categoryId", "ios_category"),
        ("collapseId", "collapse_id"),
    ):
        if msg.get(theirs) is not None:
            payload[ours] = msg[theirs]
    if msg.get("priority") in ("default", "normal", "high"):
        payload["priority"] = msg["priority"]
    if msg.get("ttl") is None and isinstance(msg.get("expiration"), int | float):
        payload["ttl"] = max(0, int(msg["expiration"] - utcnow().timestamp()))
    image = (msg.get("richContent") or {}).get("image") if isinstance(msg.get("richContent"), dict) else None
    if image:
        payload["image"] = image
    # A categoryId that names one of the project's categories also selects its preferences.
    category = msg.get("categoryId") or (msg.get("data") or {}).get("category")
    if isinstance(category, str) and category in categories:
        payload["category"] = category
    return payload


def _validate(body: Any) -> list[tuple[str, dict[str, Any]]] | JSONResponse:
    items = body if isinstance(body, list) else [body]
    expanded: list[tuple[str, dict[str, Any]]] = []
    for index, msg in enumerate(items):
        if not isinstance(msg, dict):
            return expo_error(400, "API_ERROR", f'"[{index}]" must be an object')
        to = msg.get("to")
        tokens = to if isinstance(to, list) else [to]
        if not to or not all(isinstance(t, str) and t for t in tokens):
            return expo_error(
                400, "API_ERROR", f'child "to" fails because ["to" must be a string or an array of strings] ([{index}])'
            )
        if msg.get("data") is not None and not isinstance(msg["data"], dict):
            return expo_error(400, "API_ERROR", f'child "data" fails because ["data" must be an object] ([{index}])')
        if msg.get("badge") is not None and not isinstance(msg["badge"], int):
            return expo_error(400, "API_ERROR", f'child "badge" fails because ["badge" must be a number] ([{index}])')
        expanded.extend((str(t), msg) for t in tokens)
    if len(expanded) > MAX_NOTIFICATIONS:
        return expo_error(
            400,
            "PUSH_TOO_MANY_NOTIFICATIONS",
            f"You are trying to send {len(expanded)} push notifications in one request; the limit is 100",
        )
    return expanded


@router.post("/--/api/v2/push/send")
async def expo_send(request: Request) -> JSONResponse:
    """Expo's send endpoint: up to 100 notifications, one ticket each, in order."""
    ctx = get_ctx(request)
    project_id = await _authenticate(ctx, request)
    if isinstance(project_id, JSONResponse):
        return project_id
    try:
        expanded = _validate(await _json(request))
    except ApiError as exc:
        return expo_error(exc.status, exc.code if exc.status != 413 else "PAYLOAD_TOO_LARGE", exc.message)
    if isinstance(expanded, JSONResponse):
        return expanded
    tickets = await ingest(ctx, project_id, expanded)
    wake_worker(ctx)
    return JSONResponse({"data": tickets})


async def ingest(ctx: Context, project_id: int, expanded: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Store each notification as a message (registering unknown Expo tokens anonymously)."""
    now = utcnow()
    tokens = sorted({t for t, _ in expanded if is_expo_token(t)})
    async with ctx.db.transaction() as conn:
        categories = set(await prefs.category_map(conn, project_id))
        known = await _devices(conn, project_id, tokens)
        new = [
            {
                "project_id": project_id,
                "token": t,
                "provider": "expo",
                "platform": "unknown",
                "permission": "granted",
                "environment": "production",
                "active": True,
                "created_at": now,
                "updated_at": now,
                "last_seen_at": now,
            }
            for t in tokens
            if t not in known
        ]
        if new:
            await conn.execute(insert_ignore(conn, devices, new, conflict_columns=["project_id", "token"]))
            known = await _devices(conn, project_id, tokens)
        send_id = (
            await conn.execute(
                sends.insert()
                .values(
                    project_id=project_id,
                    source="expo",
                    target={"tokens": tokens[:1000]},
                    payload={},
                    variables={},
                    schedule={"kind": "immediate"},
                    status="done",
                    recipients=len(expanded),
                    occurrences=1,
                    created_by="expo-ingress",
                    created_at=now,
                    finished_at=now,
                )
                .returning(sends.c.id)
            )
        ).scalar_one()
        tickets: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for index, (token, msg) in enumerate(expanded):
            device = known.get(token)
            if device is None or not device.active:
                tickets.append(
                    {
                        "status": "error",
                        "message": f'"{token}" is not a registered push notification recipient',
                        "details": {"error": "DeviceNotRegistered", "expoPushToken": token},
                    }
                )
                continue
            mid = message_id(send_id, str(index), device.id)
            payload = to_payload(msg, categories)
            payload["data"] = {**payload["data"], "_sid": mid}
            rows.append(
                {
                    "id": mid,
                    "project_id": project_id,
                    "send_id": send_id,
                    "occurrence": str(index),
                    "device_id": device.id,
                    "user_id": device.user_id,
                    "provider": device.provider,
                    "category": payload.get("category"),
                    "campaign": None,
                    "template": None,
                    "title": payload.get("title"),
                    "body": payload.get("body"),
                    "payload": payload,
                    "status": "queued",
                    "reason": None,
                    "due_at": now,
                    "digest_key": None,
                    "digest_count": 1,
                    "digest_of": None,
                    "ticket_id": None,
                    "attempts": 0,
                    "created_at": now,
                }
            )
            tickets.append({"status": "ok", "id": mid})
        await write_messages(conn, ctx, project_id, rows)
    return tickets


async def _devices(conn: Any, project_id: int, tokens: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for start in range(0, len(tokens), 500):
        rows = await conn.execute(
            select(devices.c.id, devices.c.token, devices.c.user_id, devices.c.provider, devices.c.active).where(
                devices.c.project_id == project_id, devices.c.token.in_(tokens[start : start + 500])
            )
        )
        found.update({r.token: r for r in rows})
    return found


def receipt_for(status: str, reason: str | None) -> dict[str, Any] | None:
    """Expo's receipt for one of our messages, or None while it has none yet."""
    if status in ("delivered", "opened"):
        return {"status": "ok"}
    if status == "failed":
        text = reason or "delivery failed"
        error = next((e for e in EXPO_ERRORS if e in text), None)
        if error is None:
            error = "DeviceNotRegistered" if any(m in text for m in DEAD_MARKERS) else "ProviderError"
        return {"status": "error", "message": text, "details": {"error": error}}
    if status in ("suppressed", "cancelled"):
        # Not an Expo error name on purpose: SDKs surface it as a generic ticket error.
        return {"status": "error", "message": f"not sent: {reason}", "details": {"error": "NotSent"}}
    return None  # queued, scheduled, deferred, in a digest, or handed to Expo without a receipt yet


@router.post("/--/api/v2/push/getReceipts")
async def expo_receipts(request: Request) -> JSONResponse:
    """Expo's receipts endpoint: ``{"ids": [...]}`` (≤1000) → ``{"data": {id: receipt}}``."""
    ctx = get_ctx(request)
    project_id = await _authenticate(ctx, request)
    if isinstance(project_id, JSONResponse):
        return project_id
    try:
        body = await _json(request)
    except ApiError as exc:
        return expo_error(exc.status, exc.code, exc.message)
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return expo_error(400, "API_ERROR", 'child "ids" fails because ["ids" must be an array of strings]')
    if len(ids) > MAX_RECEIPT_IDS:
        return expo_error(
            400, "PUSH_TOO_MANY_RECEIPTS", f"You are trying to get {len(ids)} receipts; the limit is 1000"
        )
    data: dict[str, Any] = {}
    async with ctx.db.connect() as conn:
        for start in range(0, len(ids), 500):
            rows = await conn.execute(
                select(messages.c.id, messages.c.status, messages.c.reason).where(
                    messages.c.project_id == project_id, messages.c.id.in_(ids[start : start + 500])
                )
            )
            for r in rows:
                receipt = receipt_for(r.status, r.reason)
                if receipt is not None:
                    data[r.id] = receipt
    return JSONResponse({"data": data})
