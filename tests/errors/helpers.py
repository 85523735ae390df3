"""Building Sentry envelopes and events the way SDKs do, for the errors tests."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson

from shipyard.core.context import Context
from shipyard.errors import digest


def new_id() -> str:
    return uuid.uuid4().hex


def frame(function: str, module: str = "app.views", lineno: int = 10, in_app: bool = True, **extra: Any) -> dict:
    return {
        "function": function,
        "module": module,
        "filename": module.replace(".", "/") + ".py",
        "lineno": lineno,
        "in_app": in_app,
        **extra,
    }


def error_event(
    *,
    exc_type: str = "ValueError",
    value: str = "bad value",
    frames: list[dict[str, Any]] | None = None,
    release: str | None = "app@1.0.0+1",
    environment: str = "production",
    user: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    handled: bool | None = True,
    level: str = "error",
    **extra: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": new_id(),
        "timestamp": "2030-01-01T00:00:00Z",  # future: clamped to the receive time
        "platform": "python",
        "level": level,
        "environment": environment,
        "exception": {
            "values": [
                {
                    "type": exc_type,
                    "value": value,
                    "stacktrace": {
                        "frames": frames
                        if frames is not None
                        else [frame("main", "app.main", 3), frame("handler", "app.views", 42)]
                    },
                    **({"mechanism": {"type": "generic", "handled": handled}} if handled is not None else {}),
                }
            ]
        },
    }
    if release:
        event["release"] = release
    if user:
        event["user"] = user
    if tags:
        event["tags"] = tags
    event.update(extra)
    return event


def message_event(message: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": new_id(), "platform": "python", "level": "info", "message": message, **extra}


def envelope(items: list[tuple[dict[str, Any], Any]], headers: dict[str, Any] | None = None) -> bytes:
    """``items`` are (item headers, payload); dict payloads are JSON-encoded, with explicit lengths."""
    lines = [orjson.dumps(headers or {})]
    for item_headers, payload in items:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        lines.append(orjson.dumps({**item_headers, "length": len(body)}))
        lines.append(body)
    return b"\n".join(lines) + b"\n"


def event_envelope(event: dict[str, Any], *extra_items: tuple[dict[str, Any], Any], **headers: Any) -> bytes:
    kind = "transaction" if event.get("type") == "transaction" else "event"
    return envelope([({"type": kind}, event), *extra_items], {"event_id": event["event_id"], **headers})


def auth_header(public_key: str) -> dict[str, str]:
    return {"X-Sentry-Auth": f"Sentry sentry_version=7, sentry_client=test/1.0, sentry_key={public_key}"}


async def post(client: httpx.AsyncClient, project: dict[str, Any], body: bytes, **kwargs: Any) -> httpx.Response:
    headers = {
        **auth_header(project["public_key"]),
        "Content-Type": "application/x-sentry-envelope",
        **kwargs.pop("headers", {}),
    }
    return await client.post(f"/api/{project['id']}/envelope/", content=body, headers=headers, **kwargs)


async def send_events(client: httpx.AsyncClient, project: dict[str, Any], *events: dict[str, Any]) -> None:
    for event in events:
        response = await post(client, project, event_envelope(event))
        assert response.status_code == 200, response.text


async def process(ctx: Context) -> int:
    """Run the digester until the queue is empty (after the job enqueues ingest started)."""
    await asyncio.gather(*digest.digester(ctx).tasks)
    return await digest.drain(ctx, idle_seconds=0)
