"""Direct delivery: FCM HTTP v1 (OAuth token from a service account, data-only payloads
for expo-notifications) and APNs over HTTP/2 (ES256 provider token, Apple's headers),
each error path and the token cleanup it causes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from shipyard.core.context import Context
from shipyard.core.http import outbound
from shipyard.core.models import alerts
from shipyard.push import delivery
from shipyard.push.models import devices, messages
from tests.fakes.server import serve_app
from tests.push.conftest import admin, register, run_jobs, send, tune
from tests.push.fakes import FakeApns, FakeFcm, apns_key, serve_http2, service_account


def fcm_token(name: str) -> str:
    return f"{name}:APA91b" + "F" * 140


@pytest.fixture
def fcm(ctx: Context) -> Iterator[FakeFcm]:
    fake = FakeFcm()
    with serve_app(fake.app) as url:
        account, public = service_account(f"{url}/token")
        fake.public_key, fake.client_email = public, account["client_email"]
        fake.account = account  # type: ignore[attr-defined]
        ctx.settings.push_fcm_url = url
        tune(ctx)
        yield fake


@pytest.fixture
async def apns(ctx: Context) -> AsyncIterator[FakeApns]:
    pem, public = apns_key()
    fake = FakeApns(public, key_id="ABC123DEFG", team_id="TEAM123456", bundle_id="com.canabro.app")
    fake.pem = pem  # type: ignore[attr-defined]
    with serve_http2(fake.app) as (url, client_ssl):
        ctx.settings.push_apns_url = url
        tune(ctx)
        out = outbound(ctx)
        await out.client.aclose()
        out.client = httpx.AsyncClient(http2=True, verify=client_ssl)  # trust the fake's self-signed cert
        yield fake
        await out.client.aclose()  # close our HTTP/2 connection before the server shuts down


async def _status(ctx: Context, token: str) -> tuple[str, str | None, bool]:
    async with ctx.db.connect() as conn:
        row = (
            await conn.execute(
                select(messages.c.status, messages.c.reason, devices.c.active)
                .join(devices, devices.c.id == messages.c.device_id)
                .where(devices.c.token == token)
                .order_by(messages.c.created_at.desc())
            )
        ).first()
    assert row is not None, token
    return row[0], row[1], bool(row[2])


async def _settled(ctx: Context, n: int) -> bool:
    async with ctx.db.connect() as conn:
        statuses = [r[0] for r in await conn.execute(select(messages.c.status))]
    return sum(s in ("delivered", "failed") for s in statuses) >= n


# --- FCM ---------------------------------------------------------------------------------------


async def test_fcm_delivers_data_only_messages_with_a_cached_oauth_token(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], fcm: FakeFcm
) -> None:
    r = await admin(client, project, "PUT", "/credentials/fcm", json={"service_account": fcm.account})  # type: ignore[attr-defined]
    assert r.status_code == 200 and "PRIVATE KEY" not in r.text and r.json()["meta"]["project_id"] == "canabro-test"
    tokens = [fcm_token(f"ok{i}") for i in range(3)]
    for t in tokens:
        await register(client, project, t, platform="android", user_id="a")
    body = {
        "to": {"user_ids": ["a"]},
        "notification": {"title": "Hi", "body": "There", "data": {"k": 1}, "channel_id": "care"},
    }
    await send(client, project, body)
    await run_jobs(ctx, until=lambda: _settled(ctx, 3))
    await send(client, project, {**body, "campaign": "second"})
    await run_jobs(ctx, until=lambda: _settled(ctx, 6))
    assert fcm.tokens_minted == 1  # cached, not minted per request
    msg = fcm.received[0]
    assert "notification" not in msg  # data-only, or expo-notifications never sees it
    assert msg["data"]["title"] == "Hi" and msg["data"]["message"] == "There" and msg["data"]["channelId"] == "care"
    assert json.loads(msg["data"]["body"])["k"] == 1 and msg["android"]["priority"] == "HIGH"
    assert (await _status(ctx, tokens[0]))[0] == "delivered"


@pytest.mark.parametrize(
    ("status", "code", "text", "expect_status", "expect_active"),
    [
        (404, "UNREGISTERED", "Requested entity was not found.", "failed", False),
        (403, "SENDER_ID_MISMATCH", "SenderId mismatch", "failed", False),
        (400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", "failed", False),
        (400, "INVALID_ARGUMENT", "Message is too big", "failed", True),
    ],
)
async def test_fcm_error_paths(
    ctx: Context,
    client: httpx.AsyncClient,
    project: dict[str, Any],
    fcm: FakeFcm,
    status: int,
    code: str,
    text: str,
    expect_status: str,
    expect_active: bool,
) -> None:
    await admin(client, project, "PUT", "/credentials/fcm", json={"service_account": fcm.account})  # type: ignore[attr-defined]
    token = fcm_token("bad")
    fcm.errors[token] = (status, code, text)
    await register(client, project, token, platform="android")
    await send(client, project, {"to": {"tokens": [token]}, "notification": {"title": "x"}})
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    got_status, reason, active = await _status(ctx, token)
    assert (got_status, active) == (expect_status, expect_active) and code in (reason or "")


async def test_fcm_quota_exceeded_is_retried(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], fcm: FakeFcm
) -> None:
    await admin(client, project, "PUT", "/credentials/fcm", json={"service_account": fcm.account})  # type: ignore[attr-defined]
    token = fcm_token("quota")
    fcm.errors[token] = (429, "QUOTA_EXCEEDED", "Quota exceeded")
    fcm.once.add(token)
    await register(client, project, token, platform="android")
    await send(client, project, {"to": {"tokens": [token]}, "notification": {"title": "x"}})
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    assert (await _status(ctx, token))[0] == "delivered" and len(fcm.received) == 1


async def test_fcm_third_party_auth_error_pauses_and_alerts(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], fcm: FakeFcm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "PAUSED_RETRY_SECONDS", 0.2)
    await admin(client, project, "PUT", "/credentials/fcm", json={"service_account": fcm.account})  # type: ignore[attr-defined]
    token = fcm_token("ios-via-fcm")
    fcm.errors[token] = (401, "THIRD_PARTY_AUTH_ERROR", "APNs certificate invalid")
    await register(client, project, token, platform="android")
    await send(client, project, {"to": {"tokens": [token]}, "notification": {"title": "x"}})
    await run_jobs(ctx)
    assert (await _status(ctx, token))[0] == "queued"
    async with ctx.db.connect() as conn:
        assert (await conn.execute(select(alerts.c.id).where(alerts.c.dedup_key == "push:credentials:fcm"))).first()
    fcm.errors.clear()
    await admin(client, project, "PUT", "/credentials/fcm", json={"service_account": fcm.account})  # type: ignore[attr-defined]
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    assert (await _status(ctx, token))[0] == "delivered"


async def test_fcm_without_credentials_waits_for_them(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], fcm: FakeFcm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "PAUSED_RETRY_SECONDS", 0.2)
    token = fcm_token("early")
    await register(client, project, token, platform="android")
    await send(client, project, {"to": {"tokens": [token]}, "notification": {"title": "x"}})
    await run_jobs(ctx)
    assert (await _status(ctx, token))[0] == "queued"
    r = await admin(client, project, "PUT", "/credentials/fcm", json={"service_account": {"project_id": "x"}})
    assert r.status_code == 400
    await admin(client, project, "PUT", "/credentials/fcm", json={"service_account": fcm.account})  # type: ignore[attr-defined]
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    assert (await _status(ctx, token))[0] == "delivered"


# --- APNs --------------------------------------------------------------------------------------


async def _apns_creds(
    client: httpx.AsyncClient, project: dict[str, Any], fake: FakeApns, pem: str | None = None
) -> None:
    body = {"key_p8": pem or fake.pem, "key_id": fake.key_id, "team_id": fake.team_id, "bundle_id": fake.bundle_id}  # type: ignore[attr-defined]
    r = await admin(client, project, "PUT", "/credentials/apns", json=body)
    assert r.status_code == 200, r.text
    assert "PRIVATE KEY" not in r.text


async def test_apns_over_http2_with_a_provider_token(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], apns: FakeApns
) -> None:
    await _apns_creds(client, project, apns)
    tokens = ["ab" * 32, "cd" * 32]
    for t in tokens:
        await register(client, project, t, platform="ios", user_id="i")
    await send(
        client,
        project,
        {
            "to": {"user_ids": ["i"]},
            "notification": {
                "title": "Hi",
                "body": "B",
                "badge": 2,
                "sound": "default",
                "data": {"p": 1},
                "collapse_id": "c1",
            },
        },
    )
    await run_jobs(ctx, until=lambda: _settled(ctx, 2))
    assert apns.http_versions == {"2"}
    assert len(apns.provider_tokens) == 1  # one reused JWT, not one per request
    got = apns.received[0]
    assert got["payload"]["aps"]["alert"] == {"title": "Hi", "body": "B"} and got["payload"]["aps"]["badge"] == 2
    assert got["payload"]["body"]["p"] == 1 and got["payload"]["body"]["_sid"]
    headers = got["headers"]
    assert headers["apns-push-type"] == "alert" and headers["apns-priority"] == "10"
    assert headers["apns-topic"] == "com.canabro.app" and headers["apns-collapse-id"] == "c1"
    assert (await _status(ctx, tokens[0]))[0] == "delivered"


@pytest.mark.parametrize(
    ("status", "reason", "expect_active"),
    [
        (410, "Unregistered", False),
        (400, "BadDeviceToken", False),
        (400, "DeviceTokenNotForTopic", False),
        (413, "PayloadTooLarge", True),
        (400, "BadCollapseId", True),
    ],
)
async def test_apns_error_paths(
    ctx: Context,
    client: httpx.AsyncClient,
    project: dict[str, Any],
    apns: FakeApns,
    status: int,
    reason: str,
    expect_active: bool,
) -> None:
    await _apns_creds(client, project, apns)
    token = "ef" * 32
    apns.errors[token] = (status, reason)
    await register(client, project, token, platform="ios")
    await send(client, project, {"to": {"tokens": [token]}, "notification": {"title": "x"}})
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    got_status, got_reason, active = await _status(ctx, token)
    assert got_status == "failed" and reason in (got_reason or "") and active is expect_active


async def test_apns_unregistered_before_reregistration_keeps_the_device(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], apns: FakeApns
) -> None:
    await _apns_creds(client, project, apns)
    token = "0a" * 32
    apns.errors[token] = (410, "Unregistered")
    apns.timestamps[token] = int((time.time() - 3600) * 1000)  # invalid since an hour ago…
    await register(client, project, token, platform="ios")  # …but the app registered it again just now
    await send(client, project, {"to": {"tokens": [token]}, "notification": {"title": "x"}})
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    assert (await _status(ctx, token))[2] is True


async def test_apns_too_many_requests_is_retried(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], apns: FakeApns
) -> None:
    await _apns_creds(client, project, apns)
    token = "1b" * 32
    apns.errors[token] = (429, "TooManyRequests")
    await register(client, project, token, platform="ios")
    await send(client, project, {"to": {"tokens": [token]}, "notification": {"title": "x"}})
    await run_jobs(ctx)
    assert (await _status(ctx, token))[0] == "queued"
    apns.errors.clear()
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    assert (await _status(ctx, token))[0] == "delivered"


async def test_apns_invalid_provider_token_pauses_and_alerts(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], apns: FakeApns
) -> None:
    other_pem, _ = apns_key()
    await _apns_creds(client, project, apns, pem=other_pem)  # signed with a key Apple does not know
    token = "2c" * 32
    await register(client, project, token, platform="ios")
    await send(client, project, {"to": {"tokens": [token]}, "notification": {"title": "x"}})
    await run_jobs(ctx)
    assert (await _status(ctx, token))[0] == "queued"
    creds = {c["provider"]: c for c in (await admin(client, project, "GET", "/credentials")).json()["data"]}
    assert creds["apns"]["paused"] and "InvalidProviderToken" in creds["apns"]["paused_reason"]
    async with ctx.db.connect() as conn:
        assert (await conn.execute(select(alerts.c.id).where(alerts.c.dedup_key == "push:credentials:apns"))).first()
