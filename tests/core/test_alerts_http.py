"""Alerts reach a webhook signed per Standard Webhooks; outbound calls retry and trip a breaker."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from shipyard.core import alerts, jobs
from shipyard.core.http import BlockedDestination, CircuitOpen, check_destination, outbound
from shipyard.core.models import alert_deliveries
from tests.fakes.server import serve_app


class Receiver:
    """A webhook endpoint that fails the first ``fail_first`` calls."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.app = FastAPI()

        @self.app.post("/hook")
        async def hook(request: Request) -> Response:
            self.calls.append((dict(request.headers), await request.body()))
            if len(self.calls) <= self.fail_first:
                return Response(status_code=503, headers={"Retry-After": "0"})
            return Response(status_code=204)


async def test_alert_is_delivered_signed_deduplicated_and_resolved(ctx: Any, project: dict[str, Any]) -> None:
    receiver = Receiver()
    with serve_app(receiver.app) as url:
        async with ctx.db.transaction() as conn:
            _cid, secret = await alerts.create_webhook_channel(
                conn, ctx, project["id"], name="ops", url=url + "/hook", min_severity="warning"
            )
            first = await alerts.raise_alert(
                conn,
                ctx,
                project_id=project["id"],
                source="updates",
                dedup_key="rollout:7",
                severity="error",
                summary="rollout halted",
            )
            again = await alerts.raise_alert(
                conn,
                ctx,
                project_id=project["id"],
                source="updates",
                dedup_key="rollout:7",
                severity="error",
                summary="rollout halted",
            )
            await alerts.raise_alert(
                conn,
                ctx,
                project_id=project["id"],
                source="updates",
                dedup_key="fyi",
                severity="info",
                summary="below the channel's minimum",
            )
        assert first == again
        await jobs.Worker(ctx).run_until_idle()
        assert len(receiver.calls) == 1
        headers, body = receiver.calls[0]
        payload = Webhook(secret).verify(body, headers)  # raises on a bad signature
        assert payload["type"] == "alert.firing" and payload["data"]["summary"] == "rollout halted"

        async with ctx.db.transaction() as conn:
            assert await alerts.resolve_alert(conn, ctx, project_id=project["id"], dedup_key="rollout:7")
        await jobs.Worker(ctx).run_until_idle()
        assert Webhook(secret).verify(receiver.calls[1][1], receiver.calls[1][0])["type"] == "alert.resolved"


async def test_failed_delivery_is_retried_by_the_queue(ctx: Any, project: dict[str, Any]) -> None:
    receiver = Receiver(fail_first=1)
    with serve_app(receiver.app) as url:
        async with ctx.db.transaction() as conn:
            await alerts.create_webhook_channel(conn, ctx, project["id"], name="ops", url=url + "/hook")
            await alerts.raise_alert(
                conn, ctx, project_id=project["id"], source="test", dedup_key="x", severity="critical", summary="down"
            )
        worker = jobs.Worker(ctx)
        await worker.run_until_idle()
        async with ctx.db.transaction() as conn:  # make the backed-off retry due now
            from shipyard.core.db import utcnow
            from shipyard.core.models import jobs as jobs_table

            await conn.execute(jobs_table.update().where(jobs_table.c.status == "queued").values(run_at=utcnow()))
        await worker.run_until_idle()
        async with ctx.db.connect() as conn:
            delivery = (await conn.execute(select(alert_deliveries))).first()
    assert len(receiver.calls) == 2
    assert delivery.status == "delivered" and delivery.attempts == 2


async def test_private_destinations_are_blocked_unless_allowed() -> None:
    for url in (
        "http://127.0.0.1/x",
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://169.254.169.254/latest",
        "file:///etc/passwd",
    ):
        with pytest.raises(BlockedDestination):
            await check_destination(url, allow_private=False)
    await check_destination("http://127.0.0.1/x", allow_private=True)


async def _breaker_opens_and_recovers(ctx: Any) -> None:
    state = {"fail": True, "calls": 0}
    app = FastAPI()

    @app.post("/p")
    async def p() -> Response:
        state["calls"] += 1
        return Response(status_code=503 if state["fail"] else 200)

    client = outbound(ctx)
    destination = f"test:{id(state)}"
    client.breaker.policies[destination] = type(client.breaker.policy(destination))(
        failure_threshold=3, window=60, cooldown=0.3
    )
    with serve_app(app) as url:
        for _ in range(3):
            r = await client.request("POST", url + "/p", destination=destination, retries=0)
            assert r.status_code == 503
        with pytest.raises(CircuitOpen):
            await client.request("POST", url + "/p", destination=destination, retries=0)
        assert state["calls"] == 3  # the open circuit sent nothing
        assert await client.breaker.state(destination) == "open"
        import asyncio

        await asyncio.sleep(0.35)
        state["fail"] = False
        r = await client.request("POST", url + "/p", destination=destination, retries=0)
        assert r.status_code == 200
        assert await client.breaker.state(destination) == "closed"


async def test_circuit_breaker_in_memory(ctx: Any) -> None:
    await _breaker_opens_and_recovers(ctx)


async def test_circuit_breaker_shared_through_redis(tmp_path: Any, redis_url: str) -> None:
    from tests.conftest import make_ctx, make_settings

    ctx = await make_ctx(make_settings(tmp_path, redis_url=redis_url))
    try:
        await _breaker_opens_and_recovers(ctx)
    finally:
        await ctx.close()


async def test_retry_after_is_honoured(ctx: Any) -> None:
    calls: list[int] = []
    app = FastAPI()

    @app.get("/r")
    async def r() -> Response:
        calls.append(1)
        if len(calls) == 1:
            return Response(status_code=429, headers={"Retry-After": "0"})
        return Response(status_code=200)

    with serve_app(app) as url:
        response = await outbound(ctx).request("GET", url + "/r", destination="test:retry", retries=2)
    assert response.status_code == 200 and len(calls) == 2
    assert isinstance(response, httpx.Response)
