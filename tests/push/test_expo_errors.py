"""Expo error paths (notes §1.5, §7) and the token cleanup each one causes; batching and
gzip; and the outage test: Expo fails every request for a while, then recovers."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from shipyard.core.context import Context
from shipyard.core.http import outbound
from shipyard.core.models import alerts, audit_log
from shipyard.push import delivery
from shipyard.push.models import devices, message_events, messages
from tests.push.conftest import admin, expo_token, register, run_jobs, send
from tests.push.fakes import FakeExpo


async def _message(ctx: Context, token: str) -> dict[str, Any]:
    async with ctx.db.connect() as conn:
        row = (
            await conn.execute(
                select(messages).join(devices, devices.c.id == messages.c.device_id).where(devices.c.token == token)
            )
        ).first()
    assert row is not None
    return dict(row._mapping)


async def _device_active(ctx: Context, token: str) -> bool:
    async with ctx.db.connect() as conn:
        return bool((await conn.execute(select(devices.c.active).where(devices.c.token == token))).scalar())


async def _send_to(client: httpx.AsyncClient, project: dict[str, Any], tokens: list[str], **payload: Any) -> int:
    for t in tokens:
        await register(client, project, t)
    r = await send(client, project, {"to": {"tokens": tokens}, "notification": {"title": "t", **payload}})
    assert r.status_code == 202, r.text
    return int(r.json()["id"])


async def test_ticket_device_not_registered_deactivates_the_device(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    dead, alive = expo_token("dead"), expo_token("alive")
    expo.ticket_errors[dead] = "DeviceNotRegistered"
    await _send_to(client, project, [dead, alive])
    await run_jobs(ctx, until=lambda: _settled(ctx, 2))
    m = await _message(ctx, dead)
    assert m["status"] == "failed" and "DeviceNotRegistered" in m["reason"]
    assert not await _device_active(ctx, dead) and await _device_active(ctx, alive)
    async with ctx.db.connect() as conn:
        actions = [r[0] for r in await conn.execute(select(audit_log.c.action))]
    assert "push.device.deactivate" in actions
    # A deactivated device is not targeted again.
    expo.received.clear()
    await send(client, project, {"to": {"tokens": [dead, alive]}, "notification": {"title": "again"}})
    await run_jobs(ctx)
    assert [m["to"] for m in expo.received] == [alive]


async def _settled(ctx: Context, count: int) -> bool:
    async with ctx.db.connect() as conn:
        rows = await conn.execute(select(messages.c.status))
        final = [r[0] for r in rows if r[0] in ("delivered", "failed", "suppressed", "opened")]
    return len(final) >= count


async def test_receipt_device_not_registered_deactivates_the_device(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    token = expo_token("uninstalled")
    expo.receipt_errors[token] = "DeviceNotRegistered"
    await _send_to(client, project, [token])
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    m = await _message(ctx, token)
    assert m["status"] == "failed" and m["sent_at"] is not None and "DeviceNotRegistered" in m["reason"]
    assert not await _device_active(ctx, token)


async def test_message_too_big_fails_permanently_with_the_reason(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    token = expo_token("big")
    await _send_to(client, project, [token], data={"blob": "x" * 5000})
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    m = await _message(ctx, token)
    assert m["status"] == "failed" and "MessageTooBig" in m["reason"] and m["attempts"] == 1
    assert await _device_active(ctx, token)  # the device is fine; the message was not
    assert expo.gzip_requests >= 1  # bodies over 1 KiB go out gzipped


async def test_message_rate_exceeded_is_retried_and_delivered_once(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    token = expo_token("busy")
    expo.rate_limit_once.add(token)
    await _send_to(client, project, [token])
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    m = await _message(ctx, token)
    assert m["status"] == "delivered" and m["attempts"] == 2
    assert [r["to"] for r in expo.received] == [token]
    async with ctx.db.connect() as conn:
        events = [
            r[0]
            for r in await conn.execute(select(message_events.c.event).where(message_events.c.message_id == m["id"]))
        ]
    assert events == ["retry"]


async def test_too_many_requests_honours_retry_after(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    expo.request_error = (429, "TOO_MANY_REQUESTS", {"Retry-After": "1"})
    token = expo_token("r")
    await _send_to(client, project, [token])
    await run_jobs(ctx)
    m = await _message(ctx, token)
    assert m["status"] == "queued" and m["due_at"].timestamp() > time.time() + 0.5
    expo.request_error = None
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    assert (await _message(ctx, token))["status"] == "delivered"


async def test_invalid_credentials_pause_the_provider_and_alert(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "PAUSED_RETRY_SECONDS", 0.2)
    expo.required_token = "expo-access-token-123"
    token = expo_token("c")
    await _send_to(client, project, [token])
    await run_jobs(ctx)
    assert (await _message(ctx, token))["status"] == "queued"  # kept, not lost
    creds = (await admin(client, project, "GET", "/credentials")).json()["data"]
    assert creds[0]["provider"] == "expo" and creds[0]["paused"] is True
    async with ctx.db.connect() as conn:
        alert = (await conn.execute(select(alerts).where(alerts.c.dedup_key == "push:credentials:expo"))).first()
    assert alert is not None and alert.status == "firing" and alert.severity == "critical"

    r = await admin(client, project, "PUT", "/credentials/expo", json={"access_token": "expo-access-token-123"})
    assert r.status_code == 200 and "expo-access-token-123" not in r.text and r.json()["paused"] is False
    await run_jobs(ctx, until=lambda: _settled(ctx, 1))
    assert (await _message(ctx, token))["status"] == "delivered"
    async with ctx.db.connect() as conn:
        status = (
            await conn.execute(select(alerts.c.status).where(alerts.c.dedup_key == "push:credentials:expo"))
        ).scalar()
    assert status == "resolved"


async def test_invalid_credentials_receipt_requeues_and_alerts(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "PAUSED_RETRY_SECONDS", 0.2)
    token = expo_token("apns-key-revoked")
    expo.receipt_errors[token] = "InvalidCredentials"
    await _send_to(client, project, [token])
    await run_jobs(ctx)
    await run_jobs(ctx)
    m = await _message(ctx, token)
    assert m["status"] in ("queued", "sent") and await _device_active(ctx, token)
    async with ctx.db.connect() as conn:
        assert (await conn.execute(select(alerts.c.id).where(alerts.c.dedup_key == "push:credentials:expo"))).first()


async def test_batches_of_at_most_100(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    tokens = [expo_token(f"n{i}") for i in range(230)]
    for t in tokens:
        await register(client, project, t, user_id="many")
    await send(client, project, {"to": {"user_ids": ["many"]}, "notification": {"title": "hello"}})
    await run_jobs(ctx)
    assert expo.max_batch == 100 and len(expo.received) == 230 and expo.send_requests == 3


async def test_outage_delays_but_never_loses_or_duplicates(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo, caplog: pytest.LogCaptureFixture
) -> None:
    """Expo fails every request for a few seconds, then recovers: every notification is
    delivered exactly once afterwards, and the circuit opened and closed again."""
    ctx.settings.push_batch_size = 5
    tokens = [expo_token(f"o{i}") for i in range(30)]
    expo.fail_until = time.monotonic() + 2.5
    await _send_to(client, project, tokens)

    async def all_delivered() -> bool:
        return await _settled(ctx, 30)

    await run_jobs(ctx, until=all_delivered, max_seconds=60)
    async with ctx.db.connect() as conn:
        rows = (await conn.execute(select(messages.c.id, messages.c.status))).all()
    assert {s for _, s in rows} == {"delivered"}
    assert expo.failed_requests >= 5
    counts = expo.delivered_ids()
    assert set(counts) == {mid for mid, _ in rows} and set(counts.values()) == {1}
    # The breaker itself says it opened (whether a retry then met it open or half-open
    # depends on how the retries' backoff falls against the cool-down).
    opened = [r for r in caplog.records if r.getMessage() == f"circuit for push:expo:{project['id']} opened"]
    assert opened, "the circuit never opened"
    assert await outbound(ctx).breaker.state(f"push:expo:{project['id']}") == "closed"
