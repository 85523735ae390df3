"""Analytics test setup: rollups fold events in at once (no PostgreSQL commit lag), and
``any_ctx`` / ``any_client`` / ``any_project`` run a test on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shipyard.app import create_app
from shipyard.core import auth, projects
from shipyard.core.auth import Role
from shipyard.core.context import Context


@pytest.fixture(autouse=True)
def _no_rollup_lag(request: pytest.FixtureRequest) -> None:
    for name in ("ctx", "pg_ctx"):
        if name in request.fixturenames:
            request.getfixturevalue(name).settings.analytics_rollup_lag_seconds = 0


@pytest.fixture(params=["sqlite", "postgres"])
def any_ctx(request: pytest.FixtureRequest) -> Context:
    ctx: Context = request.getfixturevalue("ctx" if request.param == "sqlite" else "pg_ctx")
    ctx.settings.analytics_rollup_lag_seconds = 0
    return ctx


@pytest.fixture
async def any_client(any_ctx: Context) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(ctx=any_ctx)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
async def any_project(any_ctx: Context) -> dict[str, Any]:
    async with any_ctx.db.transaction() as conn:
        created = await projects.create_project(
            conn, "Any App " + uuid.uuid4().hex[:6], public_base=any_ctx.settings.public_base
        )
        user_id = await auth.create_user(conn, f"o-{uuid.uuid4().hex[:6]}@example.com", "correct horse battery")
        await auth.set_role(conn, user_id, created["id"], Role.owner)
    return created
