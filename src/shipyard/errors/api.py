"""HTTP surface: the Sentry ingest endpoints (public key) and the admin API (secret key / session)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.routing import Route

from shipyard.core import audit
from shipyard.core.auth import Role
from shipyard.core.blobs import BlobNotFound, blob_store
from shipyard.core.bodies import decode_body
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.deps import Access, client_ip, get_ctx, project_access
from shipyard.core.errors import ApiError, BadRequest, NotFound, error_body
from shipyard.core.pagination import Paging
from shipyard.errors import alerting, health, issues, outcomes, service, trends
from shipyard.errors.config import ProjectConfigUpdate
from shipyard.errors.ingest import (
    REJECTED,
    IngestForbidden,
    decode_store_body,
    dsn_key,
    ingest,
    parse_envelope,
    read_body,
    request_key,
    resolve_project,
    store_as_envelope,
)

# --- ingest (client-facing) -----------------------------------------------------------------------

public = APIRouter(tags=["sentry ingest"])

_ALLOW_HEADERS = (
    "Content-Type, Content-Encoding, X-Sentry-Auth, Authorization, sentry-trace, baggage, X-Requested-With, "
    "Accept, Origin"
)


def _cors(request: Request, ctx: Context) -> dict[str, str]:
    """Browser SDKs post cross-origin; the allowed origins come from ``cors_origins``."""
    origins = ctx.settings.cors_origins
    origin = request.headers.get("origin")
    if "*" in origins:
        allow = "*"
    elif origin and origin in origins:
        allow = origin
    else:
        return {}
    return {
        "Access-Control-Allow-Origin": allow,
        "Access-Control-Expose-Headers": "X-Sentry-Error, X-Sentry-Rate-Limits, Retry-After",
        "Vary": "Origin",
    }


def _json(body: Any, status: int, headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _header_text(text: str) -> str:
    """``text`` as a header value can carry it: the message may quote the client's bytes
    (any Unicode), and a header is latin-1 without control characters."""
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)


def _error(request: Request, ctx: Context, exc: ApiError) -> Response:
    REJECTED.labels(str(exc.status)).inc()
    headers = {**_cors(request, ctx), **(exc.headers or {}), "X-Sentry-Error": _header_text(exc.message[:400])}
    return _json(error_body(exc.code, exc.message), exc.status, headers)


def _preflight(request: Request) -> Response:
    ctx = get_ctx(request)
    headers = {
        **_cors(request, ctx),
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": _ALLOW_HEADERS,
        "Access-Control-Max-Age": "86400",
    }
    return Response(status_code=200, headers=headers)


async def _accept(request: Request, project_id: str, *, legacy_store: bool) -> Response:
    ctx = get_ctx(request)
    settings = ctx.settings
    try:
        key = request_key(request)
        project = await resolve_project(ctx, project_id, key) if key else None  # refuse before reading the body
        raw = await read_body(request, settings.errors_max_request_bytes)
        data = decode_body(raw, request.headers.get("content-encoding"), limit=settings.errors_max_envelope_bytes)
        if legacy_store:
            parsed = store_as_envelope(ctx, decode_store_body(data, settings.errors_max_envelope_bytes))
        else:
            parsed = parse_envelope(ctx, data)
            envelope_key = dsn_key(parsed.headers.get("dsn"))
            if key and envelope_key and envelope_key != key:
                raise IngestForbidden("the envelope's dsn header names another key than the request")
            if project is None:
                project = await resolve_project(ctx, project_id, envelope_key)
        if project is None:  # the legacy store endpoint has no envelope header to fall back on
            project = await resolve_project(ctx, project_id, None)
        result = await ingest(ctx, project, parsed, client_ip(request))
    except ApiError as exc:
        return _error(request, ctx, exc)
    headers = _cors(request, ctx)
    if result.rate_limits:
        headers["X-Sentry-Rate-Limits"] = result.rate_limits
    if result.limited:
        headers["Retry-After"] = str(result.retry_after)
        message = f"project quota exceeded; retry in {result.retry_after} s"
        return _json(error_body("rate_limited", message), 429, {**headers, "X-Sentry-Error": message})
    return _json({"id": result.event_id}, 200, headers)


@public.post("/api/{project_id}/envelope/", summary="Sentry envelope ingest (what current SDKs call)")
async def envelope_endpoint(request: Request, project_id: str) -> Response:
    return await _accept(request, project_id, legacy_store=False)


@public.post("/api/{project_id}/store/", summary="Legacy Sentry store endpoint (one event JSON)")
async def store_endpoint(request: Request, project_id: str) -> Response:
    return await _accept(request, project_id, legacy_store=True)


async def _fast_envelope(request: Request) -> Response:
    return await _accept(request, request.path_params["project_id"], legacy_store=False)


async def _fast_store(request: Request) -> Response:
    return await _accept(request, request.path_params["project_id"], legacy_store=True)


# The same two endpoints as plain Starlette routes, put ahead of every other route at startup
# (see shipyard.errors._on_startup). FastAPI's routing and dependency solving cost about a
# quarter of an ingest request's CPU (py-spy), and these endpoints use neither: they read the
# request themselves. The middleware (gateway: CORS class, rate limits, request ids, body
# limits) wraps the router, so it applies exactly as before. OPTIONS falls through to the
# FastAPI preflight routes below. The FastAPI routes above stay for the OpenAPI document.
fast_ingest_routes = [
    Route("/api/{project_id}/envelope/", _fast_envelope, methods=["POST"]),
    Route("/api/{project_id}/store/", _fast_store, methods=["POST"]),
]


@public.options("/api/{project_id}/envelope/", include_in_schema=False)
async def envelope_preflight(request: Request, project_id: str) -> Response:
    return _preflight(request)


@public.options("/api/{project_id}/store/", include_in_schema=False)
async def store_preflight(request: Request, project_id: str) -> Response:
    return _preflight(request)


# --- admin API ------------------------------------------------------------------------------------

admin = APIRouter(prefix="/projects/{project}/errors", tags=["errors"])
Viewer = Annotated[Access, Depends(project_access(Role.viewer))]
Developer = Annotated[Access, Depends(project_access(Role.developer))]
AdminRole = Annotated[Access, Depends(project_access(Role.admin))]
# A coroutine dependency: a class in Depends() would run in FastAPI's thread pool.
Page = Paging


def _since(hours: int) -> datetime:
    if not 1 <= hours <= 24 * 400:
        raise BadRequest("hours must be between 1 and 9600")
    return utcnow() - timedelta(hours=hours)


class ResolveBody(BaseModel):
    resolution: Literal["now", "in_next_release", "in_release"] = Field(
        "now", description="`now`, `in_next_release` (after the project's newest release) or `in_release`."
    )
    release: str | None = Field(None, max_length=250, description="The fixing release, for `in_release`.")


class IgnoreBody(BaseModel):
    mode: Literal["forever", "until", "events", "users"] = "forever"
    minutes: int | None = Field(None, ge=1, le=60 * 24 * 365, description="For `until`: how long.")
    count: int | None = Field(None, ge=1, le=10_000_000, description="For `events`/`users`: how many more.")


class AssignBody(BaseModel):
    assignee: str | None = Field(None, max_length=320, description="A member's email or user id; null unassigns.")


class RuleBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["event_frequency", "user_frequency", "spike", "crash_free"]
    threshold: float = Field(gt=0, description="Events / users / spike factor, or a crash-free rate like 0.99.")
    window_minutes: int = Field(60, ge=1, le=43200)
    interval_minutes: int = Field(60, ge=1, le=43200, description="At most one alert per issue/release this often.")
    min_count: int = Field(0, ge=0, description="Spike: minimum events; crash_free: minimum sessions.")
    environment: str | None = Field(None, max_length=64)
    severity: Literal["info", "warning", "error", "critical"] = "warning"


class RuleChange(BaseModel):
    """The fields to change; the kind of a rule is fixed (add another rule instead)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    threshold: float | None = Field(None, gt=0)
    window_minutes: int | None = Field(None, ge=1, le=43200)
    interval_minutes: int | None = Field(None, ge=1, le=43200)
    min_count: int | None = Field(None, ge=0)
    environment: str | None = Field(None, max_length=64, description="An empty string clears the filter.")
    severity: Literal["info", "warning", "error", "critical"] | None = None
    enabled: bool | None = None


async def _issue_out(conn: Any, row: Any) -> dict[str, Any]:
    return await issues.describe_issue(conn, row)


@admin.get("/issues", summary="List issues (filters: status, release, environment, level, q, assignee)")
async def list_issues(
    access: Viewer,
    page: Page,
    status: str | None = Query(None, max_length=16),
    release: str | None = Query(None, max_length=250),
    environment: str | None = Query(None, max_length=64),
    level: str | None = Query(None, max_length=16),
    update_id: str | None = Query(None, max_length=64),
    q: str | None = Query(None, max_length=200),
    assignee: str | None = Query(None, max_length=320),
    sort: str = Query("last_seen", max_length=16, description="last_seen, first_seen, events, users or impact"),
) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        active = await health.active_users(conn, access.project.id, _since(24)) if sort == "impact" else 0
        rows, cursor = await issues.list_issues(
            conn,
            access.project.id,
            status=status,
            release=release,
            environment=environment,
            level=level,
            update_id=update_id,
            query=q,
            assignee=assignee,
            sort=sort,
            limit=page.limit,
            after=page.after(),
            active_users=active,
        )
        data = [await _issue_out(conn, r) for r in rows]
    next_cursor = base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=") if cursor else None
    return {"data": data, "next_cursor": next_cursor}


@admin.get("/issues/{issue_id}", summary="An issue with its latest event, trend, impact and top tags")
async def get_issue(access: Viewer, issue_id: int, hours: int = Query(24, ge=1, le=2160)) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        row = await issues.get_issue(conn, access.project.id, issue_id)
        out = await _issue_out(conn, row)
        latest = await issues.latest_event(conn, issue_id)
        out["latest_event"] = issues.describe_event(*latest) if latest else None
        out["tags"] = await issues.tag_distribution(conn, issue_id, top=5)
        out.update(await trends.issue_trend(conn, access.project.id, row, period_hours=hours))
        out["feedback_count"] = len(await service.list_feedback(conn, access.project.id, issue_id=issue_id, limit=1000))
    return out


async def _act(access: Access, fn: Any, issue_id: int, **kwargs: Any) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        result: dict[str, Any] = await fn(conn, access.ctx, access.actor, access.project.id, issue_id, **kwargs)
        return result


@admin.post("/issues/{issue_id}/resolve", summary="Resolve now, in the next release or in a given release")
async def resolve_issue(access: Developer, issue_id: int, body: ResolveBody) -> dict[str, Any]:
    return await _act(access, issues.resolve, issue_id, mode=body.resolution, release=body.release)


@admin.post("/issues/{issue_id}/ignore", summary="Ignore forever, for a time, or until N more events / users")
async def ignore_issue(access: Developer, issue_id: int, body: IgnoreBody) -> dict[str, Any]:
    return await _act(access, issues.ignore, issue_id, mode=body.mode, minutes=body.minutes, count=body.count)


@admin.post("/issues/{issue_id}/unresolve", summary="Reopen a resolved or ignored issue")
async def unresolve_issue(access: Developer, issue_id: int) -> dict[str, Any]:
    return await _act(access, issues.unresolve, issue_id)


@admin.post("/issues/{issue_id}/assign", summary="Assign to a project member (or unassign)")
async def assign_issue(access: Developer, issue_id: int, body: AssignBody) -> dict[str, Any]:
    return await _act(access, issues.assign, issue_id, assignee=body.assignee)


@admin.get("/issues/{issue_id}/events", summary="An issue's events, newest first")
async def issue_events(access: Viewer, issue_id: int, page: Page) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        await issues.get_issue(conn, access.project.id, issue_id)
        rows = await issues.issue_events(conn, issue_id, limit=page.limit, before_id=page.after_int())
    result = page.page(rows, lambda r: r.id)
    result["data"] = [issues.describe_event(r) for r in result["data"]]
    return result


@admin.get("/issues/{issue_id}/tags", summary="Tag value distribution of an issue")
async def issue_tags(access: Viewer, issue_id: int, key: str | None = Query(None, max_length=64)) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        await issues.get_issue(conn, access.project.id, issue_id)
        return {"data": await issues.tag_distribution(conn, issue_id, key=key, top=20)}


@admin.get("/issues/{issue_id}/activity", summary="An issue's timeline: state changes, regressions, assignment")
async def issue_activity(access: Viewer, issue_id: int) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        await issues.get_issue(conn, access.project.id, issue_id)
        return {"data": await issues.activity(conn, issue_id)}


@admin.get("/issues/{issue_id}/series", summary="Events per hour of an issue")
async def issue_series(access: Viewer, issue_id: int, hours: int = Query(72, ge=1, le=2160)) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        await issues.get_issue(conn, access.project.id, issue_id)
        points = await issues.hourly_series(conn, issue_id, _since(hours))
    return {"data": [{"hour": h, "events": n} for h, n in points]}


@admin.get("/issues/{issue_id}/feedback", summary="User feedback attached to an issue's events")
async def issue_feedback(access: Viewer, issue_id: int) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        await issues.get_issue(conn, access.project.id, issue_id)
        return {"data": await service.list_feedback(conn, access.project.id, issue_id=issue_id)}


@admin.get("/events/{event_id}", summary="One event in full (scrubbed), with its attachments")
async def get_event(access: Viewer, event_id: str) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        row, data = await issues.get_event(conn, access.project.id, event_id[:36])
        out = issues.describe_event(row, data)
        out["attachments"] = await service.event_attachments(conn, access.project.id, row.event_id)
    return out


@admin.get("/attachments/{attachment_id}", summary="Download an attachment", response_class=Response)
async def download_attachment(access: Developer, attachment_id: int) -> Response:
    async with access.ctx.db.connect() as conn:
        row = await service.get_attachment(conn, access.project.id, attachment_id)
    try:
        content = await blob_store(access.ctx).get(row.blob_key)
    except (BlobNotFound, FileNotFoundError):
        raise NotFound("attachment content") from None
    safe_name = "".join(c for c in row.filename if c.isalnum() or c in "._-")[:100] or "attachment"
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{safe_name}"'},
    )


@admin.get("/trends", summary="ErrorTrend per active issue: count, users, trend and impact, top first")
async def error_trends(
    access: Viewer, hours: int = Query(24, ge=1, le=2160), limit: int = Query(50, ge=1, le=500)
) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return {"data": await trends.error_trends(conn, access.project.id, period_hours=hours, limit=limit)}


@admin.get("/breakdowns", summary="Events and users by release, OTA update, OS, device, app version …")
async def breakdowns(
    access: Viewer,
    by: str = Query("release", max_length=16),
    issue_id: int | None = None,
    hours: int = Query(24 * 14, ge=1, le=9600),
) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        if issue_id is not None:
            await issues.get_issue(conn, access.project.id, issue_id)
        data = await trends.breakdown(conn, access.project.id, by, since=_since(hours), issue_id=issue_id)
    return {"by": by, "data": data}


@admin.get("/releases", summary="Release health: crash-free sessions and users, adoption, per release (and update)")
async def release_health(
    access: Viewer,
    hours: int = Query(24 * 14, ge=1, le=9600),
    environment: str | None = Query(None, max_length=64),
    per_update: bool = False,
) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await health.by_release(
            conn, access.project.id, _since(hours), environment=environment, per_update=per_update
        )
        total = await health.totals(conn, access.project.id, _since(hours), environment=environment)
    return {"data": rows, "total": total}


@admin.get("/releases/series", summary="Crash-free sessions per hour (optionally of one release or OTA update)")
async def release_series(
    access: Viewer,
    hours: int = Query(72, ge=1, le=9600),
    release: str | None = Query(None, max_length=250),
    update_id: str | None = Query(None, max_length=64),
    environment: str | None = Query(None, max_length=64),
) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        data = await health.series(
            conn,
            access.project.id,
            _since(hours),
            release=release,
            update_id=update_id.lower() if update_id else None,
            environment=environment,
        )
    return {"data": data}


@admin.get("/outcomes", summary="What was dropped and why (quotas, SDK client reports)")
async def list_outcomes(access: Viewer, hours: int = Query(24, ge=1, le=9600)) -> dict[str, Any]:
    await outcomes.buffer(access.ctx).flush()
    async with access.ctx.db.connect() as conn:
        return {"data": await outcomes.summary(conn, access.project.id, _since(hours))}


@admin.get("/settings", summary="The project's errors settings (quotas, scrubbing, IP storage, retention)")
async def get_settings(access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return (await service.get_config(conn, access.ctx.settings, access.project.id)).as_dict()


@admin.put("/settings", summary="Change the project's errors settings")
async def put_settings(access: AdminRole, body: ProjectConfigUpdate) -> dict[str, Any]:
    changes = body.model_dump(exclude_none=True)
    async with access.ctx.db.transaction() as conn:
        config = await service.update_config(conn, access.ctx.settings, access.project.id, changes)
        await audit.record(
            conn,
            access.ctx,
            access.actor,
            "errors.settings.update",
            project_id=access.project.id,
            resource_type="project",
            resource_id=access.project.id,
            details={"changes": changes},
        )
    access.ctx.extras.get("errors_key_cache", {}).clear()  # quotas apply at once on this process
    access.ctx.extras.get("project_cache", {}).pop(access.project.id, None)
    return config.as_dict()


@admin.get("/alert-rules", summary="Alert rules of the project")
async def list_rules(access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return {"data": await alerting.list_rules(conn, access.project.id)}


@admin.post("/alert-rules", status_code=201, summary="Add an alert rule")
async def create_rule(access: AdminRole, body: RuleBody) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        rule = await alerting.create_rule(conn, access.project.id, body.model_dump())
        await audit.record(
            conn,
            access.ctx,
            access.actor,
            "errors.alert_rule.create",
            project_id=access.project.id,
            resource_type="errors_alert_rule",
            resource_id=rule["id"],
            details=body.model_dump(),
        )
    return rule


@admin.patch("/alert-rules/{rule_id}", summary="Change an alert rule (threshold, window, interval, enabled …)")
async def update_rule(access: AdminRole, rule_id: int, body: RuleChange) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("environment") == "":
        changes["environment"] = None
    for name in ("name", "threshold", "window_minutes", "interval_minutes", "min_count", "severity", "enabled"):
        if name in changes and changes[name] is None:
            raise BadRequest(f"{name} cannot be null")
    async with access.ctx.db.transaction() as conn:
        rule = await alerting.update_rule(conn, access.project.id, rule_id, changes)
        await audit.record(
            conn,
            access.ctx,
            access.actor,
            "errors.alert_rule.update",
            project_id=access.project.id,
            resource_type="errors_alert_rule",
            resource_id=rule_id,
            details=changes,
        )
    return rule


@admin.delete("/alert-rules/{rule_id}", status_code=204, response_class=Response)
async def delete_rule(access: AdminRole, rule_id: int) -> Response:
    async with access.ctx.db.transaction() as conn:
        await alerting.delete_rule(conn, access.project.id, rule_id)
        await audit.record(
            conn,
            access.ctx,
            access.actor,
            "errors.alert_rule.delete",
            project_id=access.project.id,
            resource_type="errors_alert_rule",
            resource_id=rule_id,
        )
    return Response(status_code=204)


@admin.get("/transactions", summary="Transactions (performance events), newest first")
async def list_transactions(
    access: Viewer, page: Page, name: str | None = Query(None, max_length=500)
) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await service.list_transactions(
            conn, access.project.id, name=name, limit=page.limit + 1, before_id=page.after_int()
        )
    result = page.page(rows, lambda r: r.id)
    result["data"] = [service.describe_transaction(r) for r in result["data"]]
    return result


@admin.get("/transactions/{event_id}", summary="One transaction with its spans and measurements")
async def get_transaction(access: Viewer, event_id: str) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return await service.get_transaction(conn, access.project.id, event_id[:36])


@admin.get("/feedback", summary="User feedback, newest first")
async def list_feedback(access: Viewer, page: Page) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await service.list_feedback(conn, access.project.id, limit=page.limit + 1, before_id=page.after_int())
    return page.page(rows, lambda r: r["id"])


@admin.get("/ingest", summary="Ingest queue: envelopes waiting, failed ones and why")
async def ingest_status(access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return await service.queue_status(conn, access.project.id)


@admin.post("/ingest/retry-failed", summary="Queue failed envelopes for processing again")
async def retry_failed(access: AdminRole) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        count = await service.retry_failed(conn, access.project.id)
        await audit.record(
            conn,
            access.ctx,
            access.actor,
            "errors.ingest.retry_failed",
            project_id=access.project.id,
            resource_type="project",
            resource_id=access.project.id,
            details={"envelopes": count},
        )
    from shipyard.errors import digest

    digest.kick(access.ctx)
    return {"requeued": count}
