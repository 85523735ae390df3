"""``create_app(settings)``: assembles core, every feature, middleware and lifespan."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from shipyard import __version__
from shipyard.core import migrate
from shipyard.core.api import router as core_router
from shipyard.core.auth import KeyCache
from shipyard.core.context import Context
from shipyard.core.errors import install_error_handlers
from shipyard.core.jobs import Worker
from shipyard.dashboard import routes as dashboard
from shipyard.features import job_modules, load_features
from shipyard.settings import Settings

log = logging.getLogger("shipyard")


def create_app(settings: Settings | None = None, *, ctx: Context | None = None) -> FastAPI:
    settings = settings or (ctx.settings if ctx else Settings())
    features = load_features()
    for module in job_modules():
        importlib.import_module(module)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = ctx or Context.create(settings)
        context.extras.setdefault("key_cache", KeyCache())
        app.state.ctx = context
        if settings.auto_migrate:
            await migrate.upgrade(context.db)
        for feature in features:
            if feature.on_startup is not None:
                result = feature.on_startup(app)
                if asyncio.iscoroutine(result):
                    await result
        worker_task = None
        if settings.embedded_worker:
            worker = Worker(context)
            context.extras["worker"] = worker
            worker_task = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            if worker_task is not None:
                context.extras["worker"].stop()
                await worker_task
            if ctx is None:
                await context.close()

    app = FastAPI(
        title="Shipyard",
        version=__version__,
        description="Self-hosted production infrastructure for Expo / React Native apps.",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    install_error_handlers(app)

    admin = APIRouter(prefix="/api/v1")
    admin.include_router(core_router)
    for feature in features:
        for router in feature.admin_routers():
            admin.include_router(router)
    app.include_router(admin)
    for feature in features:
        for router in feature.public_routers():
            app.include_router(router)
    dashboard.install(app)
    for feature in features:
        for router in feature.dashboard_routers():
            app.include_router(router)

    @app.get("/healthz", tags=["health"], include_in_schema=True)
    async def healthz() -> dict[str, str]:
        """The process is alive (no dependencies checked)."""
        return {"status": "ok"}

    return app
