"""``create_app(settings)``: assembles core, every feature, middleware and lifespan."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from shipyard import __version__
from shipyard.core import api_alerts, api_audit, api_jobs, apidocs, health, migrate
from shipyard.core.api import router as core_router
from shipyard.core.auth import KeyCache
from shipyard.core.context import Context
from shipyard.core.errors import install_error_handlers
from shipyard.core.gateway import Gateway, RouteTable
from shipyard.core.jobs import Worker
from shipyard.core.logs import configure_logging
from shipyard.core.routes import flat_routes
from shipyard.dashboard import routes as dashboard
from shipyard.features import job_modules, load_features
from shipyard.settings import Settings

log = logging.getLogger("shipyard")


def _freeze_startup_heap() -> None:
    """Move everything alive after startup out of the garbage collector's reach.

    Profiled under the manifest benchmark: a full (generation 2) collection walked the
    ~245,000 objects of the loaded application and held the event loop for ~145 ms of CPU,
    once every few seconds at thousands of requests a second: every request in flight
    waited, which was the whole of the p99. Frozen, those objects (modules, routes, tables,
    compiled statements: all live for the life of the process) are skipped and a full
    collection costs under 10 ms. Once per process: what is alive at the first startup is
    what a server keeps (a test process starting many apps freezes only the first).
    """
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()


_heap_frozen = False


def create_app(settings: Settings | None = None, *, ctx: Context | None = None) -> FastAPI:
    settings = settings or (ctx.settings if ctx else Settings())
    configure_logging(settings.log_level, settings.log_format)
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
        _freeze_startup_heap()
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

    app.include_router(health.router)
    app.include_router(apidocs.router)
    # Client-facing routes (ingest, manifests, flags…) get CORS and their own rate-limit class.
    # They come before the admin API: routing tries routes in order, and the ~160 admin
    # routes cost more per request than an envelope ingest's own work (none of their
    # paths overlaps a client route's).
    before = len(app.router.routes)
    for feature in features:
        for router in feature.public_routers():
            app.include_router(router)
    client_routes = flat_routes(app.router.routes[before:])
    admin = APIRouter(prefix="/api/v1")
    for core_api in (core_router, api_jobs.router, api_audit.router, api_alerts.router):
        admin.include_router(core_api)
    for feature in features:
        for router in feature.admin_routers():
            admin.include_router(router)
    app.include_router(admin)
    dashboard.install(app)
    for feature in features:
        for router in feature.dashboard_routers():
            app.include_router(router)

    route_table = RouteTable(settings, client_routes, flat_routes(app.router.routes))
    app.add_middleware(Gateway, settings=settings, routes=route_table)
    return app
