"""HTTP routes: the client-facing Segment API and the admin API under /api/v1."""

from __future__ import annotations

from shipyard.analytics.admin_api import router as admin_router
from shipyard.analytics.public_api import router as public_router

__all__ = ["admin_router", "public_router"]
