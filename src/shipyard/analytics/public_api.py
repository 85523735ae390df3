"""Client-facing routes: the Segment HTTP Tracking API, the SDK settings fetch, consent.

Authenticated by the project's write key (its public key). Errors carry Segment's
``{"code", "message"}`` at the top level, which ``segment-analytics-python`` reads, as
well as Shipyard's usual ``{"error": {...}}``.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from shipyard.analytics import consent
from shipyard.analytics.config import config_of
from shipyard.analytics.ingest import ingest_messages
from shipyard.analytics.plan import cached_plan
from shipyard.analytics.segment import MessageError, SegmentError, parse_json_object, parse_time_ms, write_key_from
from shipyard.core.bodies import BodyTooLarge, decode_body
from shipyard.core.context import Context
from shipyard.core.deps import client_ip, client_project, get_ctx
from shipyard.core.errors import ApiError
from shipyard.core.projects import Project, client_urls
from shipyard.core.ratelimit import RateLimited, rate_limiter

router = APIRouter(tags=["analytics (Segment API)"])

BATCH_PATHS = ("/v1/batch", "/v1/b", "/v1/import")
SINGLE_TYPES = ("track", "identify", "screen", "page", "group", "alias")


# --- CORS (web builds of the app call these routes from a browser) ---------------------------------


def _cors_headers(ctx: Context, request: Request) -> dict[str, str]:
    origin = request.headers.get("origin")
    allowed = ctx.settings.cors_origins
    if not origin:
        return {}
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


@router.options("/v1/{path:path}", include_in_schema=False)
async def preflight(request: Request, path: str) -> Response:
    ctx = get_ctx(request)
    headers = _cors_headers(ctx, request)
    if headers:
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
                "Access-Control-Max-Age": "86400",
            }
        )
    return Response(status_code=204, headers=headers)


def _error(ctx: Context, request: Request, exc: ApiError) -> JSONResponse:
    headers = dict(exc.headers or {})
    headers.update(_cors_headers(ctx, request))
    if isinstance(exc, RateLimited):
        headers["X-RateLimit-Reset"] = str(int(time.time()) + exc.decision.reset_after)
    body = {"code": exc.code, "message": exc.message, "error": {"code": exc.code, "message": exc.message}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def _authorised_project(ctx: Context, request: Request, body: dict[str, Any] | None) -> Project:
    key = write_key_from(request.headers.get("authorization"), body)
    if not key:
        raise SegmentError(
            401, "missing_write_key", "send the write key as the HTTP Basic username or as writeKey in the body"
        )
    try:
        return await client_project(ctx, key)
    except ApiError:
        raise SegmentError(401, "invalid_write_key", "unknown or revoked write key") from None


async def _read_body(request: Request, limit: int, what: str) -> dict[str, Any]:
    raw = await request.body()
    try:
        decoded = decode_body(raw, request.headers.get("content-encoding"), limit=limit)
    except BodyTooLarge:
        # Segment answers oversize payloads with 400, and its SDKs treat 400 as final.
        raise SegmentError(400, "payload_too_large", f"{what} is larger than {limit} bytes") from None
    return parse_json_object(decoded, limit, what)


async def _ingest(request: Request, *, batch: bool, forced_type: str | None) -> Response:
    ctx = get_ctx(request)
    settings = ctx.settings
    try:
        limit = settings.analytics_max_batch_bytes if batch else settings.analytics_max_message_bytes
        body = await _read_body(request, limit, "the batch" if batch else "the message")
        project = await _authorised_project(ctx, request, body)
        await rate_limiter(ctx).check(settings.analytics_rate_limit, "analytics", str(project.id))
        if batch:
            messages = body.get("batch")
            if not isinstance(messages, list):
                raise SegmentError(400, "invalid_batch", "batch must be a list of messages")
            if len(messages) > settings.analytics_max_batch_events:
                raise SegmentError(
                    400,
                    "batch_too_large",
                    f"batch has {len(messages)} messages; the limit is {settings.analytics_max_batch_events}",
                )
            batch_context = body.get("context")
            if batch_context is not None and not isinstance(batch_context, dict):
                raise SegmentError(400, "invalid_batch", "context must be an object")
        else:
            messages = [body]
            batch_context = None
        try:
            sent_at = parse_time_ms(body.get("sentAt"), "sentAt") if batch else None
        except MessageError as exc:
            raise SegmentError(400, exc.code, exc.message) from None
        result = await ingest_messages(
            ctx,
            project,
            messages,
            forced_type=forced_type,
            batch_context=batch_context,
            sent_at_ms=sent_at,
            request_ip=client_ip(request),
        )
        if result.rejected and len(result.rejected) == len(messages):
            first = result.rejected[0]
            where = f"message {first['index']}: " if batch else ""
            raise SegmentError(400, first["code"], where + first["message"])
    except ApiError as exc:
        return _error(ctx, request, exc)
    return JSONResponse(result.body(), headers=_cors_headers(ctx, request))


def _batch_route(path: str) -> None:
    async def handler(request: Request) -> Response:
        return await _ingest(request, batch=True, forced_type=None)

    handler.__name__ = "segment_" + path.rsplit("/", 1)[-1]
    handler.__doc__ = (
        f"Segment batch ingest (`{path}`): `{{batch: [...], context?, sentAt?}}`; write key as HTTP Basic "
        "username or `writeKey`. 200 once every stored message is durable."
    )
    router.post(path, summary=f"Segment batch ({path})")(handler)


def _single_route(kind: str) -> None:
    async def handler(request: Request) -> Response:
        return await _ingest(request, batch=False, forced_type=kind)

    handler.__name__ = "segment_" + kind
    handler.__doc__ = f"Segment `{kind}` call; 200 once durable, 400 with a message when invalid."
    router.post(f"/v1/{kind}", summary=f"Segment {kind}")(handler)


for _path in BATCH_PATHS:
    _batch_route(_path)
for _kind in SINGLE_TYPES:
    _single_route(_kind)


# --- the settings the React Native SDK fetches at start -----------------------------------------------


async def _settings(request: Request, write_key: str) -> Response:
    ctx = get_ctx(request)
    try:
        project = await client_project(ctx, write_key)
    except ApiError:
        return _error(ctx, request, SegmentError(404, "not_found", "no project has this write key"))
    urls = client_urls(ctx.settings.public_base, project.id, write_key)
    current_plan = await cached_plan(ctx, project.id)
    cfg = config_of(project)
    track_plan: dict[str, Any] = {"__default": {"enabled": True, "integrations": {}}}
    if cfg.plan_enforcement == "block" and current_plan.active:
        # Unplanned events are dropped by the server anyway; telling the SDK saves the upload.
        track_plan["__default"] = {"enabled": False, "integrations": {}}
        for event in current_plan.schemas:
            track_plan[event] = {"enabled": True, "integrations": {}}
    body = {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": urls["segment_api_host"],
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser", "ios", "android"]},
            }
        },
        "plan": {
            "track": track_plan,
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
        "consentSettings": {"allCategories": [], "hasUnmappedDestinations": False},
    }
    headers = {"Cache-Control": "public, max-age=60", **_cors_headers(ctx, request)}
    return JSONResponse(body, headers=headers)


@router.get("/v1/projects/{write_key}/settings", summary="SDK settings (cdnProxy + /projects/{writeKey}/settings)")
async def sdk_settings(request: Request, write_key: str) -> Response:
    """What `@segment/analytics-react-native` fetches at start from its `cdnProxy`: the
    Segment.io integration pointing the SDK at this server, and the tracking plan."""
    return await _settings(request, write_key)


@router.get("/v1/{write_key}/settings", summary="SDK settings (older SDKs: cdnProxy + /{writeKey}/settings)")
async def sdk_settings_legacy(request: Request, write_key: str) -> Response:
    """Before 2.20.4 the React Native SDK appended `/{writeKey}/settings` to `cdnProxy`."""
    return await _settings(request, write_key)


# --- consent -----------------------------------------------------------------------------------------


def _ids(source: dict[str, Any]) -> tuple[str | None, str | None]:
    user_id = source.get("userId") or source.get("user_id")
    anonymous_id = source.get("anonymousId") or source.get("anonymous_id")
    for name, value in (("userId", user_id), ("anonymousId", anonymous_id)):
        if value is not None and (not isinstance(value, str) or len(value) > 200):
            raise SegmentError(400, "invalid_id", f"{name} must be a string of at most 200 characters")
    if not user_id and not anonymous_id:
        raise SegmentError(400, "no_user_anon_id", "send a userId or an anonymousId")
    return user_id or None, anonymous_id or None


@router.post("/v1/consent", summary="Record a user's consent by purpose")
async def record_consent(request: Request) -> Response:
    """Body: `{userId | anonymousId, purposes: {analytics, crash_reporting, push, marketing: bool}, source?}`.
    Each decision is kept with its history; events are filtered by the `analytics` purpose."""
    ctx = get_ctx(request)
    try:
        body = await _read_body(request, 16 * 1024, "the consent record")
        project = await _authorised_project(ctx, request, body)
        await rate_limiter(ctx).check(ctx.settings.analytics_rate_limit, "analytics", str(project.id))
        user_id, anonymous_id = _ids(body)
        try:
            purposes = consent.validate_purposes(body.get("purposes"))
        except ApiError as exc:
            raise SegmentError(400, "invalid_purposes", exc.message) from None
        source = body.get("source")
        source = source[:100] if isinstance(source, str) else "api"
        async with ctx.db.transaction() as conn:
            key = await consent.canonical_key(conn, project.id, user_id, anonymous_id)
            state = await consent.record_consent(
                conn, ctx, project.id, key, purposes, source=source, ip=client_ip(request)
            )
    except ApiError as exc:
        return _error(ctx, request, exc)
    return JSONResponse({"user": key, "consent": state}, headers=_cors_headers(ctx, request))


@router.get("/v1/consent", summary="A user's current consent")
async def read_consent(request: Request, userId: str | None = None, anonymousId: str | None = None) -> Response:  # noqa: N803
    ctx = get_ctx(request)
    try:
        project = await _authorised_project(ctx, request, None)
        user_id, anonymous_id = _ids({"userId": userId, "anonymousId": anonymousId})
        async with ctx.db.connect() as conn:
            key = await consent.canonical_key(conn, project.id, user_id, anonymous_id)
            state = await consent.current_consent(conn, project.id, key)
    except ApiError as exc:
        return _error(ctx, request, exc)
    return JSONResponse({"user": key, "consent": state}, headers=_cors_headers(ctx, request))
