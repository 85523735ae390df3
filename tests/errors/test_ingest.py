"""Sentry ingest protocol: endpoints, auth forms, compression, limits, malformed input, CORS."""

from __future__ import annotations

import base64
import gzip
import zlib
from typing import Any

import brotli
import httpx
import orjson
import pytest
import zstandard
from sqlalchemy import func, select

from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.errors.models import envelopes, events, issues
from tests.conftest import admin_headers
from tests.errors.helpers import (
    auth_header,
    envelope,
    error_event,
    event_envelope,
    message_event,
    new_id,
    post,
    process,
)

NOW = utcnow().isoformat()


async def _count(ctx: Context, table: Any) -> int:
    async with ctx.db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_envelope_is_stored_answered_with_its_id_and_grouped(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    event = error_event()
    response = await post(client, project, event_envelope(event))
    assert response.status_code == 200
    assert response.json() == {"id": event["event_id"]}
    assert await _count(ctx, envelopes) == 1  # durable before the answer, processed later
    assert await process(ctx) == 1
    assert await _count(ctx, envelopes) == 0
    listed = (
        await client.get(f"/api/v1/projects/{project['id']}/errors/issues", headers=admin_headers(project))
    ).json()
    assert [i["title"] for i in listed["data"]] == ["ValueError: bad value"]
    assert listed["data"][0]["count"] == 1 and listed["data"][0]["status"] == "unresolved"


@pytest.mark.parametrize("how", ["header", "query", "dsn", "authorization"])
async def test_every_auth_form_is_accepted(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], how: str
) -> None:
    event = error_event()
    url = f"/api/{project['id']}/envelope/"
    headers: dict[str, str] = {}
    env_headers: dict[str, Any] = {"event_id": event["event_id"]}
    if how == "header":
        headers = auth_header(project["public_key"])
    elif how == "query":
        url += f"?sentry_version=7&sentry_key={project['public_key']}&sentry_client=sentry.javascript.react-native/6.0"
    elif how == "authorization":
        headers = {"Authorization": f"Sentry sentry_key={project['public_key']}, sentry_version=7"}
    else:
        env_headers["dsn"] = project["dsn"]
    body = envelope([({"type": "event"}, event)], env_headers)
    response = await client.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == event["event_id"]


async def test_auth_failures_are_403_with_a_reason(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    body = event_envelope(error_event())
    url = f"/api/{project['id']}/envelope/"
    missing = await client.post(url, content=body)
    assert missing.status_code == 403 and "missing authentication" in missing.json()["error"]["message"]
    unknown = await client.post(url, content=body, headers=auth_header("pk_doesnotexist"))
    assert unknown.status_code == 403 and "unknown" in unknown.json()["error"]["message"]
    assert unknown.headers["X-Sentry-Error"]
    wrong_project = await client.post(
        f"/api/{project['id'] + 1000}/envelope/", content=body, headers=auth_header(project["public_key"])
    )
    assert wrong_project.status_code == 403 and "belongs to project" in wrong_project.json()["error"]["message"]
    conflicting = await client.post(
        url + "?sentry_key=pk_other", content=body, headers=auth_header(project["public_key"])
    )
    assert conflicting.status_code == 403
    other_dsn = event_envelope(error_event(), dsn="http://pk_other@testserver/1")
    mismatch = await client.post(url, content=other_dsn, headers=auth_header(project["public_key"]))
    assert mismatch.status_code == 403 and "dsn" in mismatch.json()["error"]["message"]
    secret = await client.post(url, content=body, headers=auth_header(project["secret_key"]))
    assert secret.status_code == 403
    not_numeric = await client.post("/api/abc/envelope/", content=body, headers=auth_header(project["public_key"]))
    assert not_numeric.status_code == 400


@pytest.mark.parametrize(
    "encoding,encode",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("zstd", zstandard.ZstdCompressor().compress),
    ],
)
async def test_compressed_bodies(
    client: httpx.AsyncClient, project: dict[str, Any], encoding: str, encode: Any
) -> None:
    event = error_event()
    response = await post(client, project, encode(event_envelope(event)), headers={"Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == event["event_id"]


async def test_size_limits_answer_413(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    # An event item over the 1 MB protocol limit.
    big = error_event(extra={"blob": "x" * (1024 * 1024 + 10)})
    response = await post(client, project, event_envelope(big))
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]
    # A compression bomb: 2 GB of zeros would inflate past the decompressed cap.
    ctx.settings.errors_max_envelope_bytes = 5 * 1024 * 1024
    bomb = zlib.compress(b"\0" * (50 * 1024 * 1024), 9)
    response = await post(client, project, bomb, headers={"Content-Encoding": "deflate"})
    assert response.status_code == 413
    # A request body over the compressed cap is refused from its Content-Length.
    ctx.settings.errors_max_request_bytes = 1000
    response = await post(client, project, b"{}\n" + b" " * 5000)
    assert response.status_code == 413
    # Too many sessions in one envelope.
    ctx.settings.errors_max_request_bytes = 20 * 1024 * 1024
    sessions = [({"type": "session"}, {"sid": new_id(), "init": True, "attrs": {"release": "a@1"}})] * 101
    response = await post(client, project, envelope(sessions))
    assert response.status_code == 413


@pytest.mark.parametrize(
    "body,message",
    [
        (b"", "empty envelope"),
        (b"not json\n", "envelope header is not valid JSON"),
        (b"[1,2]\n", "must be a JSON object"),
        (b'{}\n{"length": 2}\n{}\n', 'has no "type"'),
        (b'{}\n{"type":"event","length":500}\n{"event_id":"' + b"a" * 32 + b'"}', "runs past the end"),
        (b'{}\n{"type":"event","length":-1}\n{}', "non-negative integer"),
        (b'{}\n{"type":"event","length":2}\n{}XX\n', "expected a newline"),
        (b'{}\n{"type":"event"}\n{"no": "id"}\n', "without an event_id"),
        (b'{"event_id": "nothex"}\n', "not 32 hex"),
        (b'{}\n{"type":"event"}\nnot json\n', "payload is not valid JSON"),
        (b'{}\n{"type":"session"}\n{"sid":"x"}\n', "attrs.release is required"),
    ],
)
async def test_malformed_envelopes_say_what_is_wrong(
    client: httpx.AsyncClient, project: dict[str, Any], body: bytes, message: str
) -> None:
    response = await post(client, project, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


async def test_bad_compression_is_400_and_unknown_encoding_415(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    garbage = await post(client, project, b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"})
    assert garbage.status_code == 400
    unknown = await post(client, project, b"{}", headers={"Content-Encoding": "compress"})
    assert unknown.status_code == 415


async def test_every_item_type_is_accepted_and_unknown_ones_skipped(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    event = error_event()
    body = envelope(
        [
            ({"type": "event"}, event),
            (
                {
                    "type": "attachment",
                    "filename": "screenshot.png",
                    "content_type": "image/png",
                    "attachment_type": "event.attachment",
                },
                b"\x89PNG\r\n\x1a\n fake\n bytes",
            ),
            (
                {"type": "session"},
                {"sid": new_id(), "init": True, "status": "ok", "started": NOW, "attrs": {"release": "app@1.0.0+1"}},
            ),
            (
                {"type": "sessions"},
                {"aggregates": [{"started": NOW, "exited": 3}], "attrs": {"release": "app@1.0.0+1"}},
            ),
            (
                {"type": "user_report"},
                {
                    "event_id": event["event_id"],
                    "name": "Ann",
                    "email": "ann@example.com",
                    "comments": "It crashed when I tapped save",
                },
            ),
            (
                {"type": "client_report"},
                {
                    "timestamp": 1700000000,
                    "discarded_events": [{"reason": "queue_overflow", "category": "error", "quantity": 4}],
                },
            ),
            ({"type": "replay_recording"}, b"binary replay"),
            ({"type": "profile"}, {"whatever": True}),
            ({"type": "brand_new_type"}, b"???"),
        ],
        {"event_id": event["event_id"], "sent_at": "2024-01-01T00:00:00Z", "sdk": {"name": "sentry.python"}},
    )
    response = await post(client, project, body)
    assert response.status_code == 200, response.text
    await process(ctx)
    headers = admin_headers(project)
    base = f"/api/v1/projects/{project['id']}/errors"
    detail = (await client.get(f"{base}/events/{event['event_id']}", headers=headers)).json()
    assert detail["attachments"][0]["filename"] == "screenshot.png"
    feedback = (await client.get(f"{base}/feedback", headers=headers)).json()["data"]
    assert feedback[0]["comments"] == "It crashed when I tapped save" and feedback[0]["issue_id"] == detail["issue_id"]
    dropped = (await client.get(f"{base}/outcomes", headers=headers)).json()["data"]
    assert {"outcome": "client_discard", "reason": "queue_overflow", "category": "error", "quantity": 4} in dropped
    health = (await client.get(f"{base}/releases", headers=headers)).json()
    assert health["total"]["sessions"] == 4


async def test_legacy_store_endpoint(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    event = message_event("legacy hello")
    url = f"/api/{project['id']}/store/"
    response = await client.post(url, content=orjson.dumps(event), headers=auth_header(project["public_key"]))
    assert response.status_code == 200 and response.json() == {"id": event["event_id"]}
    # Very old SDKs: base64(zlib(json)); and an event without an id gets one.
    old = message_event("ancient hello")
    del old["event_id"]
    encoded = base64.b64encode(zlib.compress(orjson.dumps(old)))
    response = await client.post(url + f"?sentry_key={project['public_key']}", content=encoded)
    assert response.status_code == 200 and len(response.json()["id"]) == 32
    bad = await client.post(url, content=b"[]", headers=auth_header(project["public_key"]))
    assert bad.status_code == 400
    await process(ctx)
    async with ctx.db.connect() as conn:
        titles = set((await conn.execute(select(issues.c.title))).scalars())
    assert titles == {"legacy hello", "ancient hello"}


async def test_cors_for_browser_sdks(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    url = f"/api/{project['id']}/envelope/"
    preflight = await client.options(
        url,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-sentry-auth",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "x-sentry-auth" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    event = error_event()
    response = await client.post(
        url + f"?sentry_key={project['public_key']}",
        content=event_envelope(event),
        headers={"Origin": "https://app.example", "Content-Type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
    failed = await client.post(url, content=b"garbage", headers={"Origin": "https://app.example"})
    assert failed.status_code == 400 and failed.headers["Access-Control-Allow-Origin"] == "*"


async def test_duplicate_event_ids_are_stored_once(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    event = error_event()
    for _ in range(3):  # an SDK retrying after a timeout
        assert (await post(client, project, event_envelope(event))).status_code == 200
    await process(ctx)
    assert await _count(ctx, events) == 1
    async with ctx.db.connect() as conn:
        assert (await conn.execute(select(issues.c.times_seen))).scalar_one() == 1


async def test_envelope_header_id_wins_over_the_payload_id(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    event = error_event()
    header_id = new_id()
    body = envelope([({"type": "event"}, event)], {"event_id": header_id})
    assert (await post(client, project, body)).json() == {"id": header_id}
    await process(ctx)
    async with ctx.db.connect() as conn:
        assert (await conn.execute(select(events.c.event_id))).scalar_one() == header_id


async def test_ingest_answers_carry_request_ids_and_other_methods_get_405(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    """The ingest POSTs bypass FastAPI's routing for speed; the gateway's request ids and the
    router's method handling must be what every other route gets."""
    ok = await post(client, project, event_envelope(error_event()), headers={"X-Request-Id": "sdk-req-1"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "sdk-req-1"
    bad = await post(client, project, b"{not json")
    assert bad.status_code == 400 and bad.headers["x-request-id"]
    store = await client.post(
        f"/api/{project['id']}/store/", content=orjson.dumps(error_event()), headers=auth_header(project["public_key"])
    )
    assert store.status_code == 200 and store.headers["x-request-id"]
    for path in (f"/api/{project['id']}/envelope/", f"/api/{project['id']}/store/"):
        wrong = await client.get(path, headers=auth_header(project["public_key"]))
        assert wrong.status_code == 405
        preflight = await client.options(
            path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 200
