"""Liveness, readiness and Prometheus metrics.

* ``/healthz`` — the process answers (no dependency checked): restart it when this fails.
* ``/readyz`` — it can do its job: the database answers, Redis answers (when configured),
  the blob store is writable, and a background worker sent a heartbeat recently. 503 with
  the reasons otherwise: take the node out of the load balancer, do not restart it.
* ``/metrics`` — the default ``prometheus_client`` registry (so every feature's metrics
  appear), with the job queue depth refreshed from the database at scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from shipyard import __version__
from shipyard.core import jobs
from shipyard.core.blobs import blob_store
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.deps import get_ctx
from shipyard.core.errors import error_body

router = APIRouter(tags=["health"])

BUILD_INFO = Gauge("shipyard_build_info", "Always 1; the version label says which Shipyard runs", ["version"])
BUILD_INFO.labels(__version__).set(1)
CHECK_TIMEOUT = 3.0


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


async def _check(name: str, probe: Any) -> tuple[str, str | None]:
    """Run one probe with a timeout; returns (name, reason it failed or None)."""
    try:
        result = await asyncio.wait_for(probe, timeout=CHECK_TIMEOUT)
    except TimeoutError:
        return name, f"{name} did not answer within {CHECK_TIMEOUT:.0f} s"
    except Exception as exc:  # noqa: BLE001 — every failure is a reason, never a 500
        return name, f"{name}: {_short(exc)}"
    return name, result if isinstance(result, str) else None


async def _worker_fresh(ctx: Context) -> str | None:
    async with ctx.db.connect() as conn:
        newest = await jobs.newest_heartbeat(conn)
    limit = timedelta(seconds=ctx.settings.worker_heartbeat_timeout_seconds)
    if newest is None:
        return "no background worker has ever sent a heartbeat (run `shipyard worker` or drop --no-worker)"
    age = utcnow() - newest
    if age > limit:
        return f"newest worker heartbeat is {int(age.total_seconds())} s old (limit {int(limit.total_seconds())} s)"
    return None


async def readiness(ctx: Context) -> dict[str, str | None]:
    """Every check by name, with the reason it failed (None when it passed)."""
    probes: list[Any] = [_check("database", ctx.db.ping()), _check("blob_store", blob_store(ctx).check_writable())]
    if ctx.redis is not None:
        probes.append(_check("redis", ctx.redis.ping()))
    if ctx.settings.readyz_require_worker:
        probes.append(_check("worker", _worker_fresh(ctx)))
    results = await asyncio.gather(*probes)
    if results[0][1] is not None:
        # Without the database the heartbeat cannot be read; say so once, plainly.
        results = [(n, r if n != "worker" else "unknown: the database is unreachable") for n, r in results]
    return dict(results)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependencies checked)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready; `error.message` and `checks` say why."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready to serve: database, Redis (if configured), blob store, worker heartbeat."""
    checks = await readiness(get_ctx(request))
    failed = [reason for reason in checks.values() if reason]
    body: dict[str, Any] = {
        "status": "not_ready" if failed else "ready",
        "checks": {name: ("ok" if reason is None else reason) for name, reason in checks.items()},
    }
    if not failed:
        return JSONResponse(body)
    body.update(error_body("not_ready", "; ".join(str(r) for r in failed)))
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


async def _refresh_queue_depth(ctx: Context) -> None:
    async with ctx.db.connect() as conn:
        depth = await jobs.queue_depth(conn)
    for status, count in depth.items():
        jobs.QUEUE_DEPTH.labels(status).set(count)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of every metric in this process."""
    ctx = get_ctx(request)
    token = ctx.settings.metrics_token
    if token:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(sent.encode(), token.encode()):
            return JSONResponse(
                error_body("unauthorized", "metrics need `Authorization: Bearer <SHIPYARD_METRICS_TOKEN>`"),
                status_code=401,
            )
    # Metrics stay scrapeable while the database is away (the gauge keeps its last value).
    with contextlib.suppress(Exception):
        await asyncio.wait_for(_refresh_queue_depth(ctx), timeout=CHECK_TIMEOUT)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
