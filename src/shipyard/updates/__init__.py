"""Over-the-air updates: an Expo Updates protocol server (v0 and v1) with channels,
branches, signed manifests, staged rollouts, launch-health policies and rollback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.features import Feature, NavEntry


def _admin_routers() -> list[Any]:
    from shipyard.updates.api import router

    return [router]


def _public_routers() -> list[Any]:
    from shipyard.updates.public import router

    return [router]


def _dashboard_routers() -> list[Any]:
    from shipyard.updates.dashboard import router

    return [router]


def _cli() -> Any:
    from shipyard.updates.cli import updates_group

    return updates_group


def _on_startup(app: Any) -> None:
    from shipyard.updates import policy  # noqa: F401  (registers the failed_launch_rate signal)
    from shipyard.updates.public import fast_manifest_route
    from shipyard.updates.resolver import resolver
    from shipyard.updates.telemetry import reports

    ctx = app.state.ctx
    resolver(ctx)
    reports(ctx).start()
    if fast_manifest_route not in app.router.routes:
        app.router.routes.insert(0, fast_manifest_route)


feature = Feature(
    name="updates",
    admin_routers=_admin_routers,
    public_routers=_public_routers,
    dashboard_routers=_dashboard_routers,
    job_modules=["shipyard.updates.jobs"],
    cli=_cli,
    migrations=Path(__file__).parent / "migrations",
    nav=[NavEntry("Updates", "updates")],
    on_startup=_on_startup,
)
