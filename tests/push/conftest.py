"""Fixtures for push tests: fake providers wired into the context, helpers to register
devices, send and drive the job queue."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shipyard.core.context import Context
from shipyard.core.jobs import Worker
from shipyard.push.service import configure_breaker
from tests.conftest import admin_headers
from tests.fakes.server import serve_app
from tests.push.fakes import FakeExpo


def tune(ctx: Context) -> None:
    """Fast timings for tests: receipts right away, short circuit cool-down."""
    ctx.settings.push_receipt_delay_seconds = 0
    ctx.settings.push_circuit_cooldown_seconds = 0.5
    configure_breaker(ctx)


@pytest.fixture
def expo(ctx: Context) -> Iterator[FakeExpo]:
    fake = FakeExpo()
    with serve_app(fake.app) as url:
        ctx.settings.push_expo_url = url
        tune(ctx)
        yield fake


def expo_token(n: int | str) -> str:
    return f"ExponentPushToken[{n}]"


async def register(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    token: str,
    *,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    body = {"token": token, "platform": fields.pop("platform", "ios"), **fields}
    return await client.post(
        "/push/v1/devices", json=body, headers={"X-Shipyard-Key": project["public_key"], **(headers or {})}
    )


async def send(
    client: httpx.AsyncClient, project: dict[str, Any], body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(
        f"/api/v1/projects/{project['id']}/push/sends", json=body, headers={**admin_headers(project), **headers}
    )


async def run_jobs(ctx: Context, *, until: Any = None, max_seconds: float = 20.0) -> None:
    """Run due jobs; with ``until`` keep going (sleeping a little) until it returns true."""
    worker = Worker(ctx, concurrency=8)
    deadline = asyncio.get_running_loop().time() + max_seconds
    while True:
        await worker.run_until_idle()
        if until is None or await until():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached before timeout")
        await asyncio.sleep(0.05)


async def admin(
    client: httpx.AsyncClient, project: dict[str, Any], method: str, path: str, **kw: Any
) -> httpx.Response:
    return await client.request(
        method, f"/api/v1/projects/{project['id']}/push{path}", headers=admin_headers(project), **kw
    )
