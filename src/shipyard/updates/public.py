"""Client-facing routes that expo-updates calls: the manifest and the assets it names.

The manifest URL (``updates.url`` in the app config) is ``/updates/{project_id}/manifest``;
like EAS's ``u.expo.dev/<project>``, it is public: it serves only what a published app
already contains.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.routing import Route

from shipyard.core.blobs import BlobNotFound, blob_store
from shipyard.core.context import Context
from shipyard.core.deps import get_ctx
from shipyard.core.errors import ApiError, NotFound
from shipyard.updates import service
from shipyard.updates.models import assets
from shipyard.updates.protocol import parse_request
from shipyard.updates.resolver import resolver
from shipyard.updates.telemetry import count_request, reports

router = APIRouter(tags=["updates (client)"])
_STORAGE_KEY = re.compile(r"^[A-Za-z0-9_-]{43}$")
IMMUTABLE = "public, max-age=31536000, immutable"


async def serve_manifest(request: Request) -> Response:
    """The hot path: header dict, cached resolution, cached signed bytes, buffered report."""
    ctx: Context = request.app.state.ctx
    project_id = int(request.path_params["project_id"])
    # ASGI header names are lower-case already; one dict beats repeated scans of the list.
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
    req = parse_request(headers)
    try:
        answer = await resolver(ctx).answer(project_id, req)
    except ApiError as exc:
        count_request(project_id, req.platform, f"error_{exc.status}")
        raise
    reports(ctx).record(project_id, answer.channel, req, answer.served_update_id)
    count_request(project_id, req.platform, answer.outcome)
    return Response(answer.body, status_code=answer.status, headers=answer.headers, media_type=answer.content_type)


# Routed ahead of every other route at startup (see shipyard.updates._on_startup): matching
# it first keeps the router's walk over the admin API off the hot path.
fast_manifest_route = Route("/updates/{project_id:int}/manifest", serve_manifest, methods=["GET"])


@router.get(
    "/updates/{project_id}/manifest",
    summary="Expo Updates manifest (protocol v0 and v1)",
    responses={
        200: {"description": "multipart/mixed (manifest + extensions, or a directive) or a JSON manifest"},
        204: {"description": "No update for a client that accepts JSON only"},
    },
)
async def manifest(project_id: int, request: Request) -> Response:
    """``updates.url`` for expo-updates. Send the headers expo-updates sends: ``expo-platform``,
    ``expo-runtime-version``, ``expo-protocol-version``, ``expo-channel-name``, ``eas-client-id``,
    ``expo-current-update-id``, ``expo-embedded-update-id``, ``expo-recent-failed-update-ids``,
    ``expo-fatal-error``, ``expo-expect-signature`` and ``accept``."""
    return await serve_manifest(request)


BYTES_CACHE_LIMIT = 64 * 1024 * 1024  # bytes of small assets kept in memory per process
BYTES_CACHE_ITEM = 2 * 1024 * 1024  # larger files are streamed from the blob store each time


class AssetCache:
    """Asset rows and blobs are immutable, so lookups are cached for the life of the process,
    and the bytes of small assets (bundles are a few MB at most once compressed) are kept in
    a bounded least-recently-used map: a rollout makes every device download the same few
    files, which then cost no disk read or object-store round trip."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, str], Any] = {}
        self.missing: dict[tuple[int, str], float] = {}
        self.served: dict[tuple[str, str | None], str] = {}  # CDN URLs of served copies
        self.blobs: OrderedDict[str, bytes] = OrderedDict()
        self.blob_bytes = 0

    def get_bytes(self, key: str) -> bytes | None:
        data = self.blobs.get(key)
        if data is not None:
            self.blobs.move_to_end(key)
        return data

    def put_bytes(self, key: str, data: bytes) -> None:
        if len(data) > BYTES_CACHE_ITEM or key in self.blobs:
            return
        self.blobs[key] = data
        self.blob_bytes += len(data)
        while self.blob_bytes > BYTES_CACHE_LIMIT and self.blobs:
            _old, dropped = self.blobs.popitem(last=False)
            self.blob_bytes -= len(dropped)


def _asset_cache(ctx: Context) -> AssetCache:
    found = ctx.extras.get("updates_asset_cache")
    if found is None:
        found = ctx.extras["updates_asset_cache"] = AssetCache()
    return found


def _accepts(accept_encoding: str, coding: str) -> bool:
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() == coding:
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


@router.head("/updates/{project_id}/assets/{storage_key}", include_in_schema=False)
@router.get(
    "/updates/{project_id}/assets/{storage_key}",
    summary="An update asset (immutable, content-addressed); HEAD answers the same headers",
)
async def asset(project_id: int, storage_key: str, request: Request) -> Response:
    ctx = get_ctx(request)
    # Only a 43-character base64url key ever reaches a lookup; the blob path comes from the
    # database row (a SHA-256 hex), never from anything the client sent.
    if not _STORAGE_KEY.match(storage_key):
        raise NotFound("asset")
    cache = _asset_cache(ctx)
    key = (project_id, storage_key)
    row = cache.rows.get(key)
    if row is None:
        if cache.missing.get(key, 0) > time.monotonic():
            raise NotFound("asset")
        async with ctx.db.connect() as conn:
            row = (
                await conn.execute(
                    select(assets).where(assets.c.project_id == project_id, assets.c.storage_key == storage_key)
                )
            ).first()
        if row is None:
            if len(cache.missing) > 10_000:
                cache.missing.clear()
            cache.missing[key] = time.monotonic() + 5
            raise NotFound("asset")
        cache.rows[key] = row
    store = blob_store(ctx)
    accept_encoding = request.headers.get("accept-encoding", "")
    blob_key, encoding = row.blob_key, None
    if row.br_key and _accepts(accept_encoding, "br"):
        blob_key, encoding = row.br_key, "br"
    elif row.gzip_key and _accepts(accept_encoding, "gzip"):
        blob_key, encoding = row.gzip_key, "gzip"
    if ctx.settings.updates_asset_redirect:
        redirect = {"cache-control": "public, max-age=300", "vary": "accept-encoding"}
        if store.signs_response_headers:
            # Presigned S3: the bucket answers with the headers signed into the URL, so the
            # compressed variant can be sent with its content-encoding and the asset's type.
            wanted = {"content-type": row.content_type, "cache-control": IMMUTABLE}
            if encoding:
                wanted["content-encoding"] = encoding
            url = store.public_url(blob_key, wanted)
        elif service.cdn_store(ctx) is not None:
            # A CDN (or a public bucket) serves objects with the metadata they were stored
            # with: point at the served copy of this asset in the chosen encoding, written at
            # publish (or now, for assets published before served copies existed).
            name = (row.storage_key, encoding)
            try:
                url = (
                    await service.ensure_served_copy(ctx, row, encoding, known_absent=False)
                    if name not in cache.served
                    else cache.served[name]
                )
            except BlobNotFound:
                raise ApiError(503, "unavailable", "the asset is recorded but its bytes are unavailable") from None
            if url:
                cache.served[name] = url
        else:
            url = store.public_url(row.blob_key)
        if url:
            return RedirectResponse(url, status_code=302, headers=redirect)
    headers = {"cache-control": IMMUTABLE, "vary": "accept-encoding", "etag": f'"{row.hash}"'}
    if encoding:
        headers["content-encoding"] = encoding
    if request.headers.get("if-none-match") == headers["etag"]:
        return Response(status_code=304, headers=headers)
    data = cache.get_bytes(blob_key)
    if data is None:
        path = store.local_path(blob_key)
        if path is not None and path.stat().st_size > BYTES_CACHE_ITEM:
            return FileResponse(path, headers=headers, media_type=row.content_type)
        try:
            data = await store.get(blob_key)
        except BlobNotFound:
            raise ApiError(503, "unavailable", "the asset is recorded but its bytes are unavailable") from None
        cache.put_bytes(blob_key, data)
    # The server drops the body of a HEAD response but keeps its content-length.
    return Response(data, headers=headers, media_type=row.content_type)
