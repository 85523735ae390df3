"""Product analytics: a Segment-compatible ingest with identities, consent, sessions,
funnels, retention, paths, a tracking plan, rollups and dashboards."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.features import Feature, NavEntry

if TYPE_CHECKING:
    import click
    from fastapi import APIRouter, FastAPI


def _admin_routers() -> list[APIRouter]:
    from shipyard.analytics import api

    return [api.admin_router]


def _public_routers() -> list[APIRouter]:
    from shipyard.analytics import api

    return [api.public_router]


def _dashboard_routers() -> list[APIRouter]:
    from shipyard.analytics import api

    return [api.dashboard_router]


def _on_startup(app: FastAPI) -> None:
    from shipyard.analytics import landing

    landing.loader(app.state.ctx).start()


def _cli() -> click.Command:
    from shipyard.analytics import cli

    return cli.analytics_group


feature = Feature(
    name="analytics",
    admin_routers=_admin_routers,
    public_routers=_public_routers,
    dashboard_routers=_dashboard_routers,
    job_modules=["shipyard.analytics.jobs"],
    cli=_cli,
    on_startup=_on_startup,
    migrations=Path(__file__).parent / "migrations",
    nav=[NavEntry("Analytics", "analytics")],
)
