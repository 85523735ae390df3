"""Analytics test setup: rollups fold events in at once (no PostgreSQL commit lag)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_rollup_lag(request: pytest.FixtureRequest) -> None:
    for name in ("ctx", "pg_ctx"):
        if name in request.fixturenames:
            request.getfixturevalue(name).settings.analytics_rollup_lag_seconds = 0
