"""Error monitoring, crash reporting and release health: a Sentry-compatible ingest with
grouping, issue workflow, trends, alerts, and crash-free rates per release and OTA update."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.features import Feature, NavEntry


def _admin_routers() -> list[Any]:
    from shipyard.errors.api import admin

    return [admin]


def _public_routers() -> list[Any]:
    from shipyard.errors.api import public

    return [public]


def _dashboard_routers() -> list[Any]:
    from shipyard.errors.dashboard import router

    return [router]


def _cli() -> Any:
    from shipyard.errors.cli import errors_group

    return errors_group


def _on_startup(app: Any) -> None:
    from shipyard.errors import digest
    from shipyard.errors.api import fast_ingest_routes

    digest.resume(app.state.ctx)

    for route in reversed(fast_ingest_routes):
        if route not in app.router.routes:
            app.router.routes.insert(0, route)


feature = Feature(
    name="errors",
    admin_routers=_admin_routers,
    public_routers=_public_routers,
    dashboard_routers=_dashboard_routers,
    job_modules=["shipyard.errors.jobs"],
    cli=_cli,
    migrations=Path(__file__).parent / "migrations",
    nav=[NavEntry("Issues", "errors"), NavEntry("Release health", "errors/releases")],
    on_startup=_on_startup,
)
