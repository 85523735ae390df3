"""Fixtures for core tests: an app assembled with an extra (fake) feature and custom settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard import features
from shipyard.app import create_app
from tests.conftest import make_ctx, make_settings

FAKE = "tests.core.fake_feature"


@pytest.fixture
def with_fake_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    """Assemble the app with one more feature package, as a feature engineer would add it."""
    monkeypatch.setattr(features, "FEATURE_PACKAGES", [*features.FEATURE_PACKAGES, FAKE])


AppClient = Callable[..., Any]


@pytest.fixture
def app_client(tmp_path: Path, with_fake_feature: None) -> AppClient:
    """``async with app_client(**settings) as (client, ctx):`` — a fresh app with these settings."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
        ctx = await make_ctx(make_settings(tmp_path, **overrides))
        app = create_app(ctx=ctx)
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                    yield client, ctx
        finally:
            await ctx.close()

    return factory
