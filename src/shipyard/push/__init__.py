"""Push notifications: devices, preferences, sending, scheduling, digests, delivery over
Expo, FCM and APNs, an Expo-compatible ingress, deep links and delivery analytics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.features import Feature, NavEntry


def _admin_routers() -> list[Any]:
    from shipyard.push import api

    return [api.router]


def _public_routers() -> list[Any]:
    from shipyard.push import client_api, expo_ingress

    return [client_api.router, expo_ingress.router]


def _dashboard_routers() -> list[Any]:
    from shipyard.push.dashboard import router

    return [router]


def _on_startup(app: Any) -> None:
    from shipyard.push.service import configure_breaker

    configure_breaker(app.state.ctx)


def _cli() -> Any:
    from shipyard.push.cli import command

    return command()


feature = Feature(
    name="push",
    admin_routers=_admin_routers,
    public_routers=_public_routers,
    dashboard_routers=_dashboard_routers,
    job_modules=["shipyard.push.jobs"],
    cli=_cli,
    migrations=Path(__file__).parent / "migrations",
    nav=[NavEntry("Push", "push")],
    on_startup=_on_startup,
)
