"""HTTP routes: the client-facing Segment API and the admin API under /api/v1.

Every admin route first loads the messages still in the landing table, so that a query,
an export or an erasure sees everything acknowledged before it (``landing.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from shipyard.analytics import admin_api, dashboard, landing
from shipyard.analytics.public_api import router as public_router
from shipyard.core.deps import Ctx

__all__ = ["admin_router", "dashboard_router", "public_router"]


async def _acknowledged_events_visible(ctx: Ctx) -> None:
    await landing.make_visible(ctx)


admin_router = APIRouter(dependencies=[Depends(_acknowledged_events_visible)])
admin_router.include_router(admin_api.router)
dashboard_router = APIRouter(include_in_schema=False, dependencies=[Depends(_acknowledged_events_visible)])
dashboard_router.include_router(dashboard.router)
