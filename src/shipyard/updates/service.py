"""OTA domain logic: channels and branches, publishing, rollouts, rollback, promotion,
deployment history. No HTTP here; routes and the CLI call these functions.

Rules the client imposes (see docs/updates.md):
* every publish, republish, rollback and promotion creates new update ids and a
  server-side ``createdAt``, strictly later than anything before it on the branch, because
  expo-updates only switches to an update whose ``createdAt`` is later than the running one;
* an update becomes visible in one transaction, only once every file it names is stored.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import brotli
from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import audit, projects
from shipyard.core.audit import Actor
from shipyard.core.blobs import BlobNotFound, S3BlobStore, blob_store, valid_key
from shipyard.core.context import Context
from shipyard.core.db import insert_ignore, utcnow
from shipyard.core.errors import ApiError, BadRequest, Conflict, NotFound
from shipyard.updates import cache, telemetry
from shipyard.updates.models import (
    assets,
    blobs,
    branches,
    channels,
    deployment_events,
    deployments,
    device_updates,
    devices,
    groups,
    rollouts,
    update_assets,
    updates,
)
from shipyard.updates.protocol import PLATFORMS

DEFAULT_CHANNELS = ("production", "staging", "development")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")
_COMPRESSIBLE_PREFIXES = ("text/", "application/javascript", "application/json", "image/svg+xml", "application/xml")
ACTIVE_ROLLOUT = ("active", "halted")


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name or ""):
        raise BadRequest(f"{kind} name must be 1–100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def file_hash(blob_key: str) -> str:
    """The manifest's ``hash``: base64url (no padding) of the SHA-256 the blob key spells in hex."""
    return b64url(bytes.fromhex(blob_key))


def storage_key(content_type: str, blob_key: str) -> str:
    """EAS's storage key: one served object per (bytes, content type)."""
    return b64url(hashlib.sha256(content_type.encode() + b"\x00" + file_hash(blob_key).encode()).digest())


def now_ms() -> datetime:
    value = utcnow()
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


# --- channels and branches ----------------------------------------------------------------------


async def ensure_defaults(conn: AsyncConnection, project_id: int) -> None:
    """Channels production, staging and development, each on the branch of the same name."""
    existing = {r.name for r in await conn.execute(select(channels.c.name).where(channels.c.project_id == project_id))}
    for name in DEFAULT_CHANNELS:
        if name not in existing:
            branch_id = await _ensure_branch(conn, project_id, name)
            now = utcnow()
            await conn.execute(
                insert_ignore(
                    conn,
                    channels,
                    {
                        "project_id": project_id,
                        "name": name,
                        "branch_id": branch_id,
                        "created_at": now,
                        "updated_at": now,
                    },
                    conflict_columns=["project_id", "name"],
                )
            )


async def _ensure_branch(conn: AsyncConnection, project_id: int, name: str) -> int:
    check_name("branch", name)
    await conn.execute(
        insert_ignore(
            conn,
            branches,
            {"project_id": project_id, "name": name, "created_at": utcnow()},
            conflict_columns=["project_id", "name"],
        )
    )
    return int(
        (
            await conn.execute(
                select(branches.c.id).where(branches.c.project_id == project_id, branches.c.name == name)
            )
        ).scalar_one()
    )


async def create_branch(
    conn: AsyncConnection, ctx: Context, actor: Actor, project_id: int, name: str
) -> dict[str, Any]:
    check_name("branch", name)
    if (
        await conn.execute(select(branches.c.id).where(branches.c.project_id == project_id, branches.c.name == name))
    ).first():
        raise Conflict(f"branch {name!r} exists")
    branch_id = await _ensure_branch(conn, project_id, name)
    await audit.record(
        conn,
        ctx,
        actor,
        "updates.branch.create",
        project_id=project_id,
        resource_type="branch",
        resource_id=branch_id,
        details={"name": name},
    )
    return {"id": branch_id, "name": name}


async def list_branches(conn: AsyncConnection, project_id: int, after: int | None, limit: int) -> list[dict[str, Any]]:
    await ensure_defaults(conn, project_id)
    query = select(branches).where(branches.c.project_id == project_id)
    if after is not None:
        query = query.where(branches.c.id > after)
    rows = await conn.execute(query.order_by(branches.c.id).limit(limit))
    return [{"id": r.id, "name": r.name, "created_at": r.created_at} for r in rows]


async def channel_row(conn: AsyncConnection, project_id: int, name: str) -> Any:
    row = (
        await conn.execute(
            select(channels.c.id, channels.c.name, channels.c.branch_id, branches.c.name.label("branch"))
            .join(branches, branches.c.id == channels.c.branch_id)
            .where(channels.c.project_id == project_id, channels.c.name == name)
        )
    ).first()
    if row is None:
        raise NotFound(f"channel {name!r}")
    return row


async def list_channels(conn: AsyncConnection, project_id: int, after: int | None, limit: int) -> list[dict[str, Any]]:
    await ensure_defaults(conn, project_id)
    query = (
        select(channels.c.id, channels.c.name, branches.c.name.label("branch"), channels.c.updated_at)
        .join(branches, branches.c.id == channels.c.branch_id)
        .where(channels.c.project_id == project_id)
    )
    if after is not None:
        query = query.where(channels.c.id > after)
    rows = await conn.execute(query.order_by(channels.c.id).limit(limit))
    return [dict(r._mapping) for r in rows]


async def create_channel(
    conn: AsyncConnection, ctx: Context, actor: Actor, project_id: int, name: str, branch: str | None
) -> dict[str, Any]:
    await ensure_defaults(conn, project_id)
    check_name("channel", name)
    if (
        await conn.execute(select(channels.c.id).where(channels.c.project_id == project_id, channels.c.name == name))
    ).first():
        raise Conflict(f"channel {name!r} exists")
    branch_id = await _ensure_branch(conn, project_id, branch or name)
    now = utcnow()
    channel_id = (
        await conn.execute(
            channels.insert()
            .values(project_id=project_id, name=name, branch_id=branch_id, created_at=now, updated_at=now)
            .returning(channels.c.id)
        )
    ).scalar_one()
    await audit.record(
        conn,
        ctx,
        actor,
        "updates.channel.create",
        project_id=project_id,
        resource_type="channel",
        resource_id=channel_id,
        details={"name": name, "branch": branch or name},
    )
    return {"id": channel_id, "name": name, "branch": branch or name}


async def point_channel(
    conn: AsyncConnection, ctx: Context, actor: Actor, project_id: int, name: str, branch: str
) -> dict[str, Any]:
    """Remap a channel to another branch (EAS ``channel:edit --branch``)."""
    await ensure_defaults(conn, project_id)
    row = await channel_row(conn, project_id, name)
    if await active_rollouts_on_branch(conn, row.branch_id):
        raise Conflict(f"channel {name!r} has an active rollout on branch {row.branch!r}; end it before remapping")
    branch_id = await _ensure_branch(conn, project_id, branch)
    await conn.execute(update(channels).where(channels.c.id == row.id).values(branch_id=branch_id, updated_at=utcnow()))
    await audit.record(
        conn,
        ctx,
        actor,
        "updates.channel.remap",
        project_id=project_id,
        resource_type="channel",
        resource_id=row.id,
        details={"name": name, "from_branch": row.branch, "to_branch": branch},
    )
    return {"id": row.id, "name": name, "branch": branch}


async def set_default_channel(
    conn: AsyncConnection, ctx: Context, actor: Actor, project_id: int, name: str
) -> dict[str, Any]:
    """The channel used when a request sends no ``expo-channel-name`` header."""
    await ensure_defaults(conn, project_id)
    await channel_row(conn, project_id, name)
    await projects.update_settings(conn, project_id, {"updates_default_channel": name})
    await audit.record(
        conn,
        ctx,
        actor,
        "updates.settings.update",
        project_id=project_id,
        resource_type="project",
        resource_id=project_id,
        details={"default_channel": name},
    )
    return {"default_channel": name}


# --- files ---------------------------------------------------------------------------------------


async def missing_blobs(conn: AsyncConnection, project_id: int, keys: list[str]) -> list[str]:
    """Which of these SHA-256 hex keys this project has not uploaded yet (order kept)."""
    wanted = []
    for key in keys:
        key = key.lower()
        if not valid_key(key):
            raise BadRequest(f"{key[:80]!r} is not a SHA-256 hex digest")
        wanted.append(key)
    have: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = await conn.execute(
            select(blobs.c.blob_key).where(blobs.c.project_id == project_id, blobs.c.blob_key.in_(chunk))
        )
        have.update(r.blob_key for r in rows)
    return list(dict.fromkeys(k for k in wanted if k not in have))


async def store_blob(ctx: Context, project_id: int, key: str, data: bytes) -> bool:
    """Store uploaded bytes under their SHA-256; returns False when they were already there."""
    key = key.lower()
    if not valid_key(key):
        raise BadRequest("the upload path must end with the file's SHA-256 in hex")
    if len(data) > ctx.settings.updates_max_asset_bytes:
        raise ApiError(413, "payload_too_large", f"files are limited to {ctx.settings.updates_max_asset_bytes} bytes")
    actual = hashlib.sha256(data).hexdigest()
    if actual != key:
        raise BadRequest(f"the body's SHA-256 is {actual}, not {key}: the upload was corrupted", code="hash_mismatch")
    await blob_store(ctx).put(data)
    async with ctx.db.transaction() as conn:
        result = await conn.execute(
            insert_ignore(
                conn,
                blobs,
                {
                    "project_id": project_id,
                    "blob_key": key,
                    "size": len(data),
                    "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
                    "created_at": utcnow(),
                },
                conflict_columns=["project_id", "blob_key"],
            )
        )
    return bool(result.rowcount)


ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
_ENCODING_SUFFIX = {None: "", "br": ".br", "gzip": ".gz"}


def cdn_store(ctx: Context) -> S3BlobStore | None:
    """The S3 store when assets are handed out as CDN / public-bucket URLs."""
    store = blob_store(ctx)
    return store if isinstance(store, S3BlobStore) and store.cdn_base_url else None


async def ensure_served_copy(
    ctx: Context, asset: Any, encoding: str | None, data: bytes | None = None, *, known_absent: bool = False
) -> str | None:
    """Make sure the CDN serves this asset (in this encoding) with its content type, encoding
    and immutable caching: a CDN returns an object with the metadata it was stored with, and
    content-addressed blobs carry none. Returns the URL, or None when not in CDN mode."""
    store = cdn_store(ctx)
    if store is None:
        return None
    name = asset.storage_key + _ENCODING_SUFFIX[encoding]
    if known_absent or not await store.has_served_copy(name):
        if data is None:
            key = {None: asset.blob_key, "br": asset.br_key, "gzip": asset.gzip_key}[encoding]
            data = await store.get(key)
        headers = {"content-type": asset.content_type, "cache-control": ASSET_CACHE_CONTROL}
        if encoding:
            headers["content-encoding"] = encoding
        await store.put_served_copy(name, data, headers)
    return store.served_copy_url(name)


def _compressible(content_type: str) -> bool:
    return content_type.startswith(_COMPRESSIBLE_PREFIXES)


def _compress(data: bytes) -> tuple[bytes, bytes]:
    return gzip.compress(data, compresslevel=9, mtime=0), brotli.compress(data, quality=11)


async def _register_assets(
    ctx: Context, project_id: int, files: list[FileRef]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Make sure every (bytes, content type) is a served asset; returns their descriptions.

    Runs before the publish transaction: it only adds immutable rows and blobs, so a publish
    that fails later leaves nothing visible (unreferenced assets are harmless)."""
    wanted = {(f.blob_key, f.content_type) for f in files}
    keys = sorted({k for k, _ in wanted})
    async with ctx.db.connect() as conn:
        known = {
            r.blob_key: r
            for r in await conn.execute(
                select(blobs).where(blobs.c.project_id == project_id, blobs.c.blob_key.in_(keys))
            )
        }
        missing = [k for k in keys if k not in known]
        if missing:
            raise ApiError(
                409,
                "missing_assets",
                f"{len(missing)} file(s) have not been uploaded; upload them before committing the publish",
                details={"missing": missing},
            )
        skeys = [storage_key(ct, k) for k, ct in wanted]
        served = {
            r.storage_key: r
            for r in await conn.execute(
                select(assets).where(assets.c.project_id == project_id, assets.c.storage_key.in_(skeys))
            )
        }
    store = blob_store(ctx)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for blob_key, content_type in sorted(wanted):
        skey = storage_key(content_type, blob_key)
        row = served.get(skey)
        if row is None:
            try:
                data = await store.get(blob_key)
            except BlobNotFound:
                raise ApiError(
                    409,
                    "missing_assets",
                    f"file {blob_key} is recorded but absent from storage",
                    details={"missing": [blob_key]},
                ) from None
            gzip_key = br_key = None
            if _compressible(content_type) and len(data) > 256:
                gz, br = await asyncio.to_thread(_compress, data)
                if len(gz) < len(data) * 0.9:
                    gzip_key = await store.put(gz)
                if len(br) < len(data) * 0.9:
                    br_key = await store.put(br)
            values = {
                "project_id": project_id,
                "storage_key": skey,
                "blob_key": blob_key,
                "content_type": content_type,
                "hash": file_hash(blob_key),
                "size": len(data),
                "gzip_key": gzip_key,
                "br_key": br_key,
                "created_at": utcnow(),
            }
            if cdn_store(ctx) is not None:
                # Before the row exists: once an update references the asset, the CDN has it.
                row_like = SimpleNamespace(**values)
                await ensure_served_copy(ctx, row_like, None, data)
                if gzip_key:
                    await ensure_served_copy(ctx, row_like, "gzip", gz)
                if br_key:
                    await ensure_served_copy(ctx, row_like, "br", br)
            async with ctx.db.transaction() as conn:
                await conn.execute(insert_ignore(conn, assets, values, conflict_columns=["project_id", "storage_key"]))
        out[(blob_key, content_type)] = {
            "storage_key": skey,
            "hash": file_hash(blob_key),
            "key": known[blob_key].md5,
            "contentType": content_type,
        }
    return out


# --- publishing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRef:
    blob_key: str
    content_type: str
    file_extension: str | None = None


@dataclass(frozen=True)
class PlatformBundle:
    runtime_version: str
    launch_asset: FileRef
    assets: list[FileRef] = field(default_factory=list)


@dataclass(frozen=True)
class RolloutPlan:
    percentage: float
    increment: float | None = None
    interval_minutes: int | None = None
    max_percentage: float | None = None

    def check(self) -> None:
        if not 0 < self.percentage <= 100:
            raise BadRequest("rollout percentage must be in (0, 100]")
        if (self.increment is None) != (self.interval_minutes is None):
            raise BadRequest("a rollout plan needs both an increment and an interval")
        if self.increment is not None and not 0 < self.increment <= 100:
            raise BadRequest("rollout increment must be in (0, 100]")
        if self.interval_minutes is not None and not 1 <= self.interval_minutes <= 60 * 24 * 30:
            raise BadRequest("rollout interval must be between 1 minute and 30 days")
        if self.max_percentage is not None and not self.percentage <= self.max_percentage <= 100:
            raise BadRequest("rollout maximum must be between the initial percentage and 100")


@dataclass(frozen=True)
class PublishSpec:
    platforms: dict[str, PlatformBundle]
    channel: str | None = None
    branch: str | None = None
    message: str = ""
    expo_config: dict[str, Any] | None = None
    rollout: RolloutPlan | None = None
    critical: bool = False
    min_app_version: str | None = None
    on_active_rollout: str | None = None  # None (refuse) | "end" | "supersede"


@dataclass
class _NewUpdate:
    platform: str
    runtime_version: str
    body: dict[str, Any]  # launchAsset, assets, metadata, extra (no id/createdAt/urls)
    storage_keys: list[tuple[str, bool]]  # (storage key, is launch asset)
    kind: str = "update"


async def publish(ctx: Context, actor: Actor, project_id: int, spec: PublishSpec) -> dict[str, Any]:
    """Commit an update group whose files were uploaded; nothing is served before the commit."""
    if not spec.platforms:
        raise BadRequest("a publish needs at least one platform (ios, android)")
    for platform, bundle in spec.platforms.items():
        if platform not in PLATFORMS:
            raise BadRequest(f"unknown platform {platform!r}; expected ios or android")
        if not bundle.runtime_version or len(bundle.runtime_version) > 255:
            raise BadRequest(f"{platform}: a runtime version (1–255 characters) is required")
    if spec.on_active_rollout not in (None, "end", "supersede"):
        raise BadRequest("on_active_rollout must be 'end' or 'supersede'")
    if spec.rollout is not None:
        spec.rollout.check()
    if len(spec.message) > 2000:
        raise BadRequest("message is limited to 2,000 characters")
    files = [f for b in spec.platforms.values() for f in [b.launch_asset, *b.assets]]
    for f in files:
        if not valid_key(f.blob_key.lower()):
            raise BadRequest(f"{f.blob_key[:80]!r} is not a SHA-256 hex digest")
        if not f.content_type or len(f.content_type) > 100 or "/" not in f.content_type:
            raise BadRequest(f"invalid content type {f.content_type[:100]!r}")
    described = await _register_assets(ctx, project_id, files)
    new_updates: list[_NewUpdate] = []
    for platform, bundle in sorted(spec.platforms.items()):
        launch = dict(described[(bundle.launch_asset.blob_key, bundle.launch_asset.content_type)])
        asset_list = []
        keys = [(launch["storage_key"], True)]
        seen = {launch["storage_key"]}
        for ref in bundle.assets:
            entry = dict(described[(ref.blob_key, ref.content_type)])
            if ref.file_extension:
                ext = ref.file_extension if ref.file_extension.startswith(".") else "." + ref.file_extension
                entry["fileExtension"] = ext[:20]
            if entry["storage_key"] in seen:
                continue
            seen.add(entry["storage_key"])
            asset_list.append(entry)
            keys.append((entry["storage_key"], False))
        new_updates.append(
            _NewUpdate(platform, bundle.runtime_version, {"launchAsset": launch, "assets": asset_list}, keys)
        )
    async with ctx.db.transaction() as conn:
        await ensure_defaults(conn, project_id)
        branch_id, branch_name, channel_name = await _target(conn, project_id, spec.channel, spec.branch)
        result = await _create_group(
            conn,
            ctx,
            actor,
            project_id,
            branch_id=branch_id,
            branch_name=branch_name,
            channel_name=channel_name,
            kind="publish",
            message=spec.message,
            new_updates=new_updates,
            expo_config=spec.expo_config,
            rollout=spec.rollout,
            critical=spec.critical,
            min_app_version=spec.min_app_version,
            on_active_rollout=spec.on_active_rollout,
        )
    cache.invalidate(ctx, project_id)
    return result


async def _target(
    conn: AsyncConnection, project_id: int, channel: str | None, branch: str | None
) -> tuple[int, str, str]:
    """(branch id, branch name, channel name for history) from a channel or a branch name."""
    if channel:
        row = await channel_row(conn, project_id, channel)
        return int(row.branch_id), str(row.branch), channel
    if branch:
        branch_id = await _ensure_branch(conn, project_id, branch)
        name = (
            await conn.execute(
                select(channels.c.name).where(channels.c.branch_id == branch_id).order_by(channels.c.id).limit(1)
            )
        ).scalar()
        return branch_id, branch, name or branch
    raise BadRequest("say where to publish: a channel or a branch")


async def active_rollouts_on_branch(conn: AsyncConnection, branch_id: int) -> list[Any]:
    rows = await conn.execute(
        select(rollouts).where(rollouts.c.branch_id == branch_id, rollouts.c.status.in_(ACTIVE_ROLLOUT))
    )
    return list(rows)


async def _latest_row(conn: AsyncConnection, branch_id: int, runtime_version: str, platform: str) -> Any:
    return (
        await conn.execute(
            select(updates, groups.c.status.label("group_status"))
            .join(groups, groups.c.id == updates.c.group_id)
            .where(
                updates.c.branch_id == branch_id,
                updates.c.runtime_version == runtime_version,
                updates.c.platform == platform,
            )
            .order_by(updates.c.created_at.desc())
            .limit(1)
        )
    ).first()


async def _next_created_at(conn: AsyncConnection, branch_id: int) -> datetime:
    """Now, or 1 ms after the newest update on the branch if the clock went backwards."""
    newest = (
        await conn.execute(select(func.max(updates.c.created_at)).where(updates.c.branch_id == branch_id))
    ).scalar()
    candidate = now_ms()
    if newest is not None:
        if newest.tzinfo is None:  # aggregate results bypass the column type on SQLite
            newest = datetime.fromisoformat(str(newest)).replace(tzinfo=UTC)
        if candidate <= newest:
            candidate = newest + timedelta(milliseconds=1)
    return candidate


def _extra(
    expo_config: dict[str, Any] | None,
    critical_index: int,
    critical: bool,
    message: str,
    group_id: str,
    min_app_version: str | None,
) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "shipyard": {
            "updateGroup": group_id,
            "criticalIndex": critical_index,
            "critical": critical,
            "message": message,
        }
    }
    if min_app_version:
        extra["shipyard"]["minAppVersion"] = min_app_version
    if expo_config is not None:
        config = dict(expo_config)
        # Expo's documented critical-update pattern reads expoClient.extra.criticalIndex.
        config["extra"] = {**(config.get("extra") or {}), "criticalIndex": critical_index}
        extra["expoClient"] = config
        project_uuid = ((expo_config.get("extra") or {}).get("eas") or {}).get("projectId")
        if isinstance(project_uuid, str):
            extra["eas"] = {"projectId": project_uuid}
    return extra


async def _create_group(
    conn: AsyncConnection,
    ctx: Context,
    actor: Actor,
    project_id: int,
    *,
    branch_id: int,
    branch_name: str,
    channel_name: str,
    kind: str,
    message: str,
    new_updates: list[_NewUpdate],
    expo_config: dict[str, Any] | None,
    rollout: RolloutPlan | None,
    critical: bool,
    min_app_version: str | None,
    on_active_rollout: str | None,
    source_group_id: str | None = None,
    history_status: str | None = None,
    audit_action: str = "updates.publish",
    audit_details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Insert a group with its updates, rollout and history inside the caller's transaction."""
    active = await active_rollouts_on_branch(conn, branch_id)
    inherited_controls: dict[tuple[str, str], str | None] = {}
    salt = uuid.uuid4().hex
    if active:
        current = active[0]
        if on_active_rollout is None:
            raise ApiError(
                409,
                "rollout_active",
                f"update group {current.group_id} is rolling out on branch {branch_name!r} "
                f"({current.status}, {current.percentage:g} %). Say what happens to it: end it "
                "(--end-rollout: its update stops being offered) or supersede it (--supersede-rollout: "
                "this update takes over its devices, percentage and plan).",
                details={"group_id": current.group_id, "status": current.status, "percentage": current.percentage},
            )
        # Devices outside the new rollout keep getting what the old rollout's outsiders got.
        for row in await conn.execute(
            select(updates.c.platform, updates.c.runtime_version, updates.c.control_update_id).where(
                updates.c.group_id == current.group_id
            )
        ):
            inherited_controls[(row.platform, row.runtime_version)] = row.control_update_id
        if on_active_rollout == "supersede":
            salt = current.salt
            if rollout is None:
                rollout = RolloutPlan(
                    current.percentage, current.increment, current.interval_minutes, current.max_percentage
                )
        ended_status = "superseded" if on_active_rollout == "supersede" else "ended"
        await _end_rollout(conn, ctx, actor, project_id, current, ended_status, reason=f"new publish ({kind})")
    created_at = await _next_created_at(conn, branch_id)
    group_id = str(uuid.uuid4())
    last_index = (
        await conn.execute(
            select(func.coalesce(func.max(groups.c.critical_index), 0)).where(groups.c.branch_id == branch_id)
        )
    ).scalar_one()
    critical_index = int(last_index) + (1 if critical else 0)
    await conn.execute(
        groups.insert().values(
            id=group_id,
            project_id=project_id,
            branch_id=branch_id,
            kind=kind,
            message=message,
            source_group_id=source_group_id,
            critical=critical,
            critical_index=critical_index,
            min_app_version=min_app_version,
            actor=actor.label or actor.id,
            status="active",
            created_at=created_at,
        )
    )
    staged = rollout is not None and rollout.percentage < 100
    created: list[dict[str, Any]] = []
    for new in new_updates:
        update_id = str(uuid.uuid4())
        control_id: str | None = None
        if staged:
            if (new.platform, new.runtime_version) in inherited_controls:
                control_id = inherited_controls[(new.platform, new.runtime_version)]
            else:
                previous = await _latest_row(conn, branch_id, new.runtime_version, new.platform)
                control_id = previous.id if previous is not None else None
        body = dict(new.body)
        if new.kind == "update":
            body["metadata"] = {"branch": branch_name}
            body["extra"] = _extra(expo_config, critical_index, critical, message, group_id, min_app_version)
        await conn.execute(
            updates.insert().values(
                id=update_id,
                group_id=group_id,
                project_id=project_id,
                branch_id=branch_id,
                platform=new.platform,
                runtime_version=new.runtime_version,
                created_at=created_at,
                kind=new.kind,
                manifest=body,
                control_update_id=control_id,
                min_app_version=min_app_version,
                critical_index=critical_index,
            )
        )
        if new.storage_keys:
            await conn.execute(
                update_assets.insert(),
                [
                    {"update_id": update_id, "storage_key": k, "project_id": project_id, "is_launch": launch}
                    for k, launch in new.storage_keys
                ],
            )
        created.append(
            {
                "id": update_id,
                "platform": new.platform,
                "runtime_version": new.runtime_version,
                "control_update_id": control_id,
                "kind": new.kind,
            }
        )
    percentage = 100.0
    if staged and rollout is not None:
        percentage = rollout.percentage
        now = utcnow()
        await conn.execute(
            rollouts.insert().values(
                project_id=project_id,
                group_id=group_id,
                branch_id=branch_id,
                status="active",
                percentage=rollout.percentage,
                salt=salt,
                increment=rollout.increment,
                interval_minutes=rollout.interval_minutes,
                max_percentage=rollout.max_percentage,
                next_step_at=now + timedelta(minutes=rollout.interval_minutes) if rollout.interval_minutes else None,
                started_at=now,
                updated_at=now,
            )
        )
    status = history_status or ("pending" if staged else "active")
    await _record_deployment(
        conn,
        actor,
        project_id,
        group_id,
        channel_name,
        branch_name,
        new_updates,
        status,
        percentage,
        message,
        {"kind": kind, "source_group_id": source_group_id, "critical": critical, "critical_index": critical_index},
    )
    result = {
        "group_id": group_id,
        "kind": kind,
        "branch": branch_name,
        "channel": channel_name,
        "created_at": created_at,
        "critical_index": critical_index,
        "rollout_percentage": percentage,
        "updates": created,
    }
    await audit.record(
        conn,
        ctx,
        actor,
        audit_action,
        project_id=project_id,
        resource_type="update_group",
        resource_id=group_id,
        details={
            "branch": branch_name,
            "channel": channel_name,
            "message": message[:200],
            "rollout_percentage": percentage,
            "critical": critical,
            "updates": [u["id"] for u in created],
            **(audit_details or {}),
        },
    )
    return result


# --- deployment history --------------------------------------------------------------------------


async def _record_deployment(
    conn: AsyncConnection,
    actor: Actor,
    project_id: int,
    group_id: str,
    channel: str,
    branch: str,
    new_updates: list[_NewUpdate],
    status: str,
    percentage: float,
    message: str,
    meta: dict[str, Any],
) -> int:
    now = utcnow()
    runtimes = sorted({u.runtime_version for u in new_updates})
    version = message.strip().splitlines()[0][:200] if message.strip() else group_id[:8]
    deployment_id = (
        await conn.execute(
            deployments.insert()
            .values(
                project_id=project_id,
                group_id=group_id,
                version=version,
                channel=channel,
                branch=branch,
                runtime_versions=runtimes,
                status=status,
                rollout_percentage=percentage,
                devices_affected=0,
                error_rate=None,
                metadata=meta,
                deployed_at=now,
                updated_at=now,
            )
            .returning(deployments.c.id)
        )
    ).scalar_one()
    await _event(conn, actor, project_id, int(deployment_id), meta.get("kind", "published"), status, percentage, meta)
    return int(deployment_id)


async def _event(
    conn: AsyncConnection,
    actor: Actor,
    project_id: int,
    deployment_id: int,
    kind: str,
    status: str,
    percentage: float,
    details: dict[str, Any],
) -> None:
    await conn.execute(
        deployment_events.insert().values(
            deployment_id=deployment_id,
            project_id=project_id,
            kind=kind,
            status=status,
            rollout_percentage=percentage,
            details=details,
            actor=actor.label or actor.id,
            at=utcnow(),
        )
    )


async def update_history(
    conn: AsyncConnection,
    actor: Actor,
    project_id: int,
    group_id: str,
    kind: str,
    details: dict[str, Any],
    *,
    status: str | None = None,
    percentage: float | None = None,
    rolled_back: bool = False,
    devices_affected: int | None = None,
    error_rate: float | None = None,
) -> None:
    """Change a group's deployment rows and log the event on each."""
    rows = list(
        await conn.execute(
            select(deployments).where(deployments.c.project_id == project_id, deployments.c.group_id == group_id)
        )
    )
    for row in rows:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if status is not None:
            values["status"] = status
        if percentage is not None:
            values["rollout_percentage"] = percentage
        if rolled_back:
            values["rolled_back_at"] = utcnow()
        if devices_affected is not None:
            values["devices_affected"] = devices_affected
        if error_rate is not None:
            values["error_rate"] = error_rate
        await conn.execute(update(deployments).where(deployments.c.id == row.id).values(**values))
        await _event(
            conn,
            actor,
            project_id,
            row.id,
            kind,
            values.get("status", row.status),
            values.get("rollout_percentage", row.rollout_percentage),
            details,
        )


async def list_history(
    conn: AsyncConnection, project_id: int, after: int | None, limit: int, channel: str | None = None
) -> list[dict[str, Any]]:
    query = select(deployments).where(deployments.c.project_id == project_id)
    if channel:
        query = query.where(deployments.c.channel == channel)
    if after is not None:
        query = query.where(deployments.c.id < after)
    rows = [dict(r._mapping) for r in await conn.execute(query.order_by(deployments.c.id.desc()).limit(limit))]
    # Devices affected and error rate are read live from what devices reported, so a plain
    # publish shows them too; a figure frozen by the policy is kept if it is larger.
    live = await telemetry.groups_health(conn, [r["group_id"] for r in rows])
    for r in rows:
        health = live.get(r["group_id"])
        if health is not None:
            r["devices_affected"] = max(int(r["devices_affected"] or 0), health["devices"])
            if health["error_rate"] is not None:
                r["error_rate"] = health["error_rate"]
    return rows


async def history_events(conn: AsyncConnection, project_id: int, deployment_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(deployment_events)
        .where(deployment_events.c.project_id == project_id, deployment_events.c.deployment_id == deployment_id)
        .order_by(deployment_events.c.id)
    )
    return [dict(r._mapping) for r in rows]


# --- rollouts ------------------------------------------------------------------------------------


async def rollout_row(conn: AsyncConnection, project_id: int, group_id: str) -> Any:
    row = (
        await conn.execute(select(rollouts).where(rollouts.c.project_id == project_id, rollouts.c.group_id == group_id))
    ).first()
    if row is None:
        raise NotFound(f"rollout of update group {group_id}")
    return row


def describe_rollout(row: Any) -> dict[str, Any]:
    return {
        "group_id": row.group_id,
        "status": row.status,
        "percentage": row.percentage,
        "increment": row.increment,
        "interval_minutes": row.interval_minutes,
        "max_percentage": row.max_percentage,
        "next_step_at": row.next_step_at,
        "reason": row.reason,
        "started_at": row.started_at,
        "updated_at": row.updated_at,
        "ended_at": row.ended_at,
    }


async def list_rollouts(
    conn: AsyncConnection, project_id: int, after: int | None, limit: int, status: str | None = None
) -> list[dict[str, Any]]:
    query = select(rollouts, branches.c.name.label("branch")).join(branches, branches.c.id == rollouts.c.branch_id)
    query = query.where(rollouts.c.project_id == project_id)
    if status:
        query = query.where(rollouts.c.status == status)
    if after is not None:
        query = query.where(rollouts.c.id < after)
    rows = await conn.execute(query.order_by(rollouts.c.id.desc()).limit(limit))
    return [{"id": r.id, "branch": r.branch, **describe_rollout(r)} for r in rows]


async def _end_rollout(
    conn: AsyncConnection, ctx: Context, actor: Actor, project_id: int, row: Any, status: str, *, reason: str
) -> None:
    now = utcnow()
    await conn.execute(
        update(rollouts)
        .where(rollouts.c.id == row.id)
        .values(status=status, reason=reason, next_step_at=None, updated_at=now, ended_at=now)
    )
    await update_history(conn, actor, project_id, row.group_id, f"rollout_{status}", {"reason": reason})
    await audit.record(
        conn,
        ctx,
        actor,
        f"updates.rollout.{status}",
        project_id=project_id,
        resource_type="update_group",
        resource_id=row.group_id,
        details={"reason": reason, "percentage": row.percentage},
    )


async def edit_rollout(
    ctx: Context,
    actor: Actor,
    project_id: int,
    group_id: str,
    *,
    percentage: float | None = None,
    increment: float | None = None,
    interval_minutes: int | None = None,
    max_percentage: float | None = None,
) -> dict[str, Any]:
    async with ctx.db.transaction() as conn:
        row = await rollout_row(conn, project_id, group_id)
        if row.status not in ACTIVE_ROLLOUT:
            raise Conflict(f"the rollout is {row.status}; only an active or halted rollout can be edited")
        plan = RolloutPlan(
            percentage if percentage is not None else row.percentage,
            increment if increment is not None else row.increment,
            interval_minutes if interval_minutes is not None else row.interval_minutes,
            max_percentage if max_percentage is not None else row.max_percentage,
        )
        plan.check()
        if plan.percentage >= 100:
            return await _complete(conn, ctx, actor, project_id, row, reason="percentage raised to 100")
        now = utcnow()
        values: dict[str, Any] = {
            "percentage": plan.percentage,
            "increment": plan.increment,
            "interval_minutes": plan.interval_minutes,
            "max_percentage": plan.max_percentage,
            "updated_at": now,
        }
        if (
            plan.interval_minutes
            and row.status == "active"
            and (interval_minutes is not None or row.next_step_at is None)
        ):
            values["next_step_at"] = now + timedelta(minutes=plan.interval_minutes)
        await conn.execute(update(rollouts).where(rollouts.c.id == row.id).values(**values))
        await update_history(
            conn,
            actor,
            project_id,
            group_id,
            "rollout_changed",
            {"from": row.percentage, "to": plan.percentage},
            percentage=plan.percentage,
        )
        await audit.record(
            conn,
            ctx,
            actor,
            "updates.rollout.edit",
            project_id=project_id,
            resource_type="update_group",
            resource_id=group_id,
            details={"from": row.percentage, **{k: v for k, v in values.items() if k != "updated_at"}},
        )
        result = describe_rollout(await rollout_row(conn, project_id, group_id))
    cache.invalidate(ctx, project_id)
    return result


async def _complete(
    conn: AsyncConnection, ctx: Context, actor: Actor, project_id: int, row: Any, *, reason: str
) -> dict[str, Any]:
    now = utcnow()
    await conn.execute(
        update(rollouts)
        .where(rollouts.c.id == row.id)
        .values(status="completed", percentage=100.0, next_step_at=None, reason=reason, updated_at=now, ended_at=now)
    )
    await update_history(
        conn,
        actor,
        project_id,
        row.group_id,
        "rollout_completed",
        {"reason": reason},
        status="active",
        percentage=100.0,
    )
    await audit.record(
        conn,
        ctx,
        actor,
        "updates.rollout.complete",
        project_id=project_id,
        resource_type="update_group",
        resource_id=row.group_id,
        details={"reason": reason, "from": row.percentage},
    )
    return describe_rollout(await rollout_row(conn, project_id, row.group_id))


async def complete_rollout(ctx: Context, actor: Actor, project_id: int, group_id: str) -> dict[str, Any]:
    async with ctx.db.transaction() as conn:
        row = await rollout_row(conn, project_id, group_id)
        if row.status not in ACTIVE_ROLLOUT:
            raise Conflict(f"the rollout is already {row.status}")
        result = await _complete(conn, ctx, actor, project_id, row, reason="completed by an operator")
    cache.invalidate(ctx, project_id)
    return result


async def halt_rollout_in(
    conn: AsyncConnection,
    ctx: Context,
    actor: Actor,
    project_id: int,
    row: Any,
    reason: str,
    *,
    history_status: str = "failed",
    audit_action: str = "updates.rollout.halt",
    extra: dict[str, Any] | None = None,
) -> None:
    now = utcnow()
    await conn.execute(
        update(rollouts)
        .where(rollouts.c.id == row.id)
        .values(status="halted", next_step_at=None, reason=reason, updated_at=now)
    )
    await update_history(
        conn, actor, project_id, row.group_id, "halted", {"reason": reason, **(extra or {})}, status=history_status
    )
    await audit.record(
        conn,
        ctx,
        actor,
        audit_action,
        project_id=project_id,
        resource_type="update_group",
        resource_id=row.group_id,
        details={"reason": reason, "percentage": row.percentage, **(extra or {})},
    )


async def halt_rollout(ctx: Context, actor: Actor, project_id: int, group_id: str, reason: str) -> dict[str, Any]:
    async with ctx.db.transaction() as conn:
        row = await rollout_row(conn, project_id, group_id)
        if row.status != "active":
            raise Conflict(f"the rollout is {row.status}, not active")
        await halt_rollout_in(
            conn, ctx, actor, project_id, row, reason or "halted by an operator", history_status="pending"
        )
        result = describe_rollout(await rollout_row(conn, project_id, group_id))
    cache.invalidate(ctx, project_id)
    return result


async def resume_rollout(ctx: Context, actor: Actor, project_id: int, group_id: str) -> dict[str, Any]:
    async with ctx.db.transaction() as conn:
        row = await rollout_row(conn, project_id, group_id)
        if row.status != "halted":
            raise Conflict(f"the rollout is {row.status}, not halted")
        group_status = (await conn.execute(select(groups.c.status).where(groups.c.id == group_id))).scalar()
        if group_status == "rolled_back":
            raise Conflict("this update group was rolled back; publish or republish instead")
        now = utcnow()
        await conn.execute(
            update(rollouts)
            .where(rollouts.c.id == row.id)
            .values(
                status="active",
                reason=None,
                updated_at=now,
                next_step_at=now + timedelta(minutes=row.interval_minutes) if row.interval_minutes else None,
            )
        )
        await update_history(conn, actor, project_id, group_id, "resumed", {}, status="pending")
        await audit.record(
            conn,
            ctx,
            actor,
            "updates.rollout.resume",
            project_id=project_id,
            resource_type="update_group",
            resource_id=group_id,
            details={"percentage": row.percentage},
        )
        result = describe_rollout(await rollout_row(conn, project_id, group_id))
    cache.invalidate(ctx, project_id)
    return result


async def advance_rollouts(ctx: Context) -> int:
    """Apply due plan steps (+increment every interval, up to the maximum); returns steps taken."""
    now = utcnow()
    steps = 0
    touched: set[int] = set()
    async with ctx.db.transaction() as conn:
        due = list(
            await conn.execute(
                select(rollouts).where(
                    rollouts.c.status == "active", rollouts.c.next_step_at.is_not(None), rollouts.c.next_step_at <= now
                )
            )
        )
        actor = Actor.system("updates.rollout-plan")
        for row in due:
            ceiling = row.max_percentage if row.max_percentage is not None else 100.0
            new_pct = min(ceiling, row.percentage + (row.increment or 0))
            touched.add(row.project_id)
            steps += 1
            if new_pct >= 100:
                await _complete(conn, ctx, actor, row.project_id, row, reason="rollout plan reached 100 %")
                continue
            next_at = None if new_pct >= ceiling else now + timedelta(minutes=row.interval_minutes or 60)
            await conn.execute(
                update(rollouts)
                .where(rollouts.c.id == row.id)
                .values(percentage=new_pct, next_step_at=next_at, updated_at=now)
            )
            await update_history(
                conn,
                actor,
                row.project_id,
                row.group_id,
                "rollout_changed",
                {"from": row.percentage, "to": new_pct, "by": "plan"},
                percentage=new_pct,
            )
            await audit.record(
                conn,
                ctx,
                actor,
                "updates.rollout.step",
                project_id=row.project_id,
                resource_type="update_group",
                resource_id=row.group_id,
                details={"from": row.percentage, "to": new_pct},
            )
    for project_id in touched:
        cache.invalidate(ctx, project_id)
    return steps


# --- rollback, republish, promotion --------------------------------------------------------------


async def _copy_updates(conn: AsyncConnection, source_ids: list[str]) -> list[_NewUpdate]:
    out = []
    for source_id in source_ids:
        row = (await conn.execute(select(updates).where(updates.c.id == source_id))).first()
        if row is None:
            raise NotFound(f"update {source_id}")
        keys = [
            (r.storage_key, r.is_launch)
            for r in await conn.execute(
                select(update_assets.c.storage_key, update_assets.c.is_launch).where(
                    update_assets.c.update_id == source_id
                )
            )
        ]
        body = {k: v for k, v in dict(row.manifest).items() if k in ("launchAsset", "assets")}
        out.append(_NewUpdate(row.platform, row.runtime_version, body, keys, kind=row.kind))
    return out


async def _source_extra(conn: AsyncConnection, update_id: str) -> tuple[dict[str, Any] | None, Any]:
    row = (
        await conn.execute(
            select(updates.c.manifest, groups.c.message, groups.c.critical, groups.c.min_app_version)
            .join(groups, groups.c.id == updates.c.group_id)
            .where(updates.c.id == update_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"update {update_id}")
    config = (row.manifest.get("extra") or {}).get("expoClient")
    if isinstance(config, dict) and isinstance(config.get("extra"), dict):
        config = {**config, "extra": {k: v for k, v in config["extra"].items() if k != "criticalIndex"}}
    return config, row


async def rollback(
    ctx: Context,
    actor: Actor,
    project_id: int,
    *,
    channel: str,
    runtime_version: str | None = None,
    platforms: list[str] | None = None,
    to_embedded: bool = False,
    reason: str = "",
) -> dict[str, Any]:
    """Roll a channel back: republish the previous update with a new id and createdAt (so
    devices accept it), or send devices to their embedded update (rollBackToEmbedded)."""
    wanted = platforms or list(PLATFORMS)
    for platform in wanted:
        if platform not in PLATFORMS:
            raise BadRequest(f"unknown platform {platform!r}")
    async with ctx.db.transaction() as conn:
        await ensure_defaults(conn, project_id)
        result = await rollback_in(
            conn,
            ctx,
            actor,
            project_id,
            channel=channel,
            runtime_version=runtime_version,
            platforms=wanted,
            to_embedded=to_embedded,
            reason=reason,
        )
    cache.invalidate(ctx, project_id)
    return result


async def rollback_in(
    conn: AsyncConnection,
    ctx: Context,
    actor: Actor,
    project_id: int,
    *,
    channel: str,
    runtime_version: str | None,
    platforms: list[str],
    to_embedded: bool,
    reason: str,
    only_group: str | None = None,
) -> dict[str, Any]:
    chan = await channel_row(conn, project_id, channel)
    runtimes_query = select(updates.c.runtime_version).distinct().where(updates.c.branch_id == chan.branch_id)
    if runtime_version:
        runtimes_query = runtimes_query.where(updates.c.runtime_version == runtime_version)
    runtimes = sorted(r[0] for r in await conn.execute(runtimes_query))
    if not runtimes:
        raise NotFound(
            f"updates on channel {channel!r}" + (f" for runtime {runtime_version}" if runtime_version else "")
        )
    heads: list[Any] = []
    targets: list[tuple[Any, Any | None]] = []  # (head, target row or None for embedded)
    for rtv in runtimes:
        for platform in platforms:
            head = await _latest_row(conn, chan.branch_id, rtv, platform)
            if head is None or (only_group and head.group_id != only_group):
                continue
            if head.kind == "rollback_to_embedded" and to_embedded:
                continue  # already there
            heads.append(head)
            if to_embedded:
                targets.append((head, None))
                continue
            target = await _previous_good(conn, head)
            if target is None:
                raise Conflict(
                    f"no earlier update to roll back to on channel {channel!r} ({platform}, runtime {rtv}); "
                    "roll back to the embedded update instead"
                )
            targets.append((head, target))
    if not targets:
        raise Conflict(f"nothing to roll back on channel {channel!r}")
    rolled_groups = sorted({h.group_id for h in heads})
    for group_id in rolled_groups:
        await conn.execute(update(groups).where(groups.c.id == group_id).values(status="rolled_back"))
        rollout = (await conn.execute(select(rollouts).where(rollouts.c.group_id == group_id))).first()
        if rollout is not None and rollout.status in ACTIVE_ROLLOUT:
            now = utcnow()
            await conn.execute(
                update(rollouts)
                .where(rollouts.c.id == rollout.id)
                .values(
                    status="rolled_back",
                    next_step_at=None,
                    reason=reason or "rolled back",
                    updated_at=now,
                    ended_at=now,
                )
            )
        await update_history(
            conn,
            actor,
            project_id,
            group_id,
            "rolled_back",
            {"reason": reason, "to_embedded": to_embedded},
            status="rolled_back",
            rolled_back=True,
        )
    if to_embedded:
        new_updates = [
            _NewUpdate(head.platform, head.runtime_version, {}, [], kind="rollback_to_embedded") for head, _ in targets
        ]
        config, message, critical, min_version = None, reason or "roll back to embedded", False, None
        source_group = None
    else:
        chosen = [target for _head, target in targets if target is not None]
        new_updates = await _copy_updates(conn, [target.id for target in chosen])
        config, source = await _source_extra(conn, chosen[0].id)
        message = f"rollback to {source.message or chosen[0].group_id[:8]}"
        critical, min_version = bool(source.critical), source.min_app_version
        source_group = chosen[0].group_id
    result = await _create_group(
        conn,
        ctx,
        actor,
        project_id,
        branch_id=chan.branch_id,
        branch_name=chan.branch,
        channel_name=channel,
        kind="rollback_to_embedded" if to_embedded else "rollback",
        message=message,
        new_updates=new_updates,
        expo_config=config,
        rollout=None,
        critical=critical,
        min_app_version=min_version,
        on_active_rollout="end",
        source_group_id=source_group,
        audit_action="updates.rollback",
        audit_details={"rolled_back_groups": rolled_groups, "to_embedded": to_embedded, "reason": reason},
    )
    result["rolled_back_groups"] = rolled_groups
    return result


async def _previous_good(conn: AsyncConnection, head: Any) -> Any | None:
    """The update a rollback returns to: the rollout's control if ``head`` is rolling out,
    else the newest earlier update whose group was not itself rolled back."""
    if head.control_update_id:
        row = (await conn.execute(select(updates).where(updates.c.id == head.control_update_id))).first()
        if row is not None:
            return row
    excluded = [head.group_id]
    head_group = (
        await conn.execute(select(groups.c.kind, groups.c.source_group_id).where(groups.c.id == head.group_id))
    ).first()
    if head_group is not None and head_group.kind == "rollback" and head_group.source_group_id:
        excluded.append(head_group.source_group_id)  # rolling back a rollback goes further back
    return (
        await conn.execute(
            select(updates)
            .join(groups, groups.c.id == updates.c.group_id)
            .where(
                updates.c.branch_id == head.branch_id,
                updates.c.runtime_version == head.runtime_version,
                updates.c.platform == head.platform,
                updates.c.created_at < head.created_at,
                updates.c.group_id.not_in(excluded),
                groups.c.status == "active",
            )
            .order_by(updates.c.created_at.desc())
            .limit(1)
        )
    ).first()


async def republish(
    ctx: Context,
    actor: Actor,
    project_id: int,
    *,
    group_id: str,
    channel: str,
    kind: str = "republish",
    rollout: RolloutPlan | None = None,
    on_active_rollout: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Copy an update group onto a channel's branch with new ids and createdAt (promotion)."""
    if rollout is not None:
        rollout.check()
    async with ctx.db.transaction() as conn:
        await ensure_defaults(conn, project_id)
        source = (
            await conn.execute(select(groups).where(groups.c.project_id == project_id, groups.c.id == group_id))
        ).first()
        if source is None:
            raise NotFound(f"update group {group_id}")
        chan = await channel_row(conn, project_id, channel)
        ids = [r.id for r in await conn.execute(select(updates.c.id).where(updates.c.group_id == group_id))]
        new_updates = await _copy_updates(conn, ids)
        config, _src = await _source_extra(conn, ids[0])
        result = await _create_group(
            conn,
            ctx,
            actor,
            project_id,
            branch_id=chan.branch_id,
            branch_name=chan.branch,
            channel_name=channel,
            kind=kind,
            message=message if message is not None else source.message,
            new_updates=new_updates,
            expo_config=config,
            rollout=rollout,
            critical=bool(source.critical),
            min_app_version=source.min_app_version,
            on_active_rollout=on_active_rollout,
            source_group_id=group_id,
            audit_action=f"updates.{kind}",
            audit_details={"source_group_id": group_id},
        )
    cache.invalidate(ctx, project_id)
    return result


async def promote(
    ctx: Context,
    actor: Actor,
    project_id: int,
    *,
    from_channel: str,
    to_channel: str,
    group_id: str | None = None,
    rollout: RolloutPlan | None = None,
    on_active_rollout: str | None = None,
) -> dict[str, Any]:
    """Ship exactly what was tested on one channel to another (staging → production)."""
    if from_channel == to_channel:
        raise BadRequest("promote between two different channels")
    async with ctx.db.transaction() as conn:
        await ensure_defaults(conn, project_id)
        if group_id is None:
            chan = await channel_row(conn, project_id, from_channel)
            group_id = (
                await conn.execute(
                    select(groups.c.id)
                    .where(
                        groups.c.branch_id == chan.branch_id,
                        groups.c.status == "active",
                        groups.c.kind != "rollback_to_embedded",
                    )
                    .order_by(groups.c.created_at.desc())
                    .limit(1)
                )
            ).scalar()
            if group_id is None:
                raise NotFound(f"an update on channel {from_channel!r} to promote")
    return await republish(
        ctx,
        actor,
        project_id,
        group_id=group_id,
        channel=to_channel,
        kind="promote",
        rollout=rollout,
        on_active_rollout=on_active_rollout,
    )


# --- reads ---------------------------------------------------------------------------------------


async def list_groups(
    conn: AsyncConnection,
    project_id: int,
    after: str | None,
    limit: int,
    *,
    branch: str | None = None,
    runtime_version: str | None = None,
) -> list[dict[str, Any]]:
    query = (
        select(groups, branches.c.name.label("branch"))
        .join(branches, branches.c.id == groups.c.branch_id)
        .where(groups.c.project_id == project_id)
    )
    if branch:
        query = query.where(branches.c.name == branch)
    if runtime_version:
        query = query.where(
            groups.c.id.in_(select(updates.c.group_id).where(updates.c.runtime_version == runtime_version))
        )
    if after is not None:
        stamp, _, gid = after.partition("|")
        try:
            at = datetime.fromisoformat(stamp)
        except ValueError:
            raise BadRequest("invalid cursor") from None
        query = query.where((groups.c.created_at < at) | and_(groups.c.created_at == at, groups.c.id < gid))
    rows = list(await conn.execute(query.order_by(groups.c.created_at.desc(), groups.c.id.desc()).limit(limit)))
    out = []
    ids = [r.id for r in rows]
    per_group: dict[str, list[dict[str, Any]]] = {}
    if ids:
        for u in await conn.execute(
            select(
                updates.c.id, updates.c.group_id, updates.c.platform, updates.c.runtime_version, updates.c.kind
            ).where(updates.c.group_id.in_(ids))
        ):
            per_group.setdefault(u.group_id, []).append(
                {"id": u.id, "platform": u.platform, "runtime_version": u.runtime_version, "kind": u.kind}
            )
        rollout_rows = {r.group_id: r for r in await conn.execute(select(rollouts).where(rollouts.c.group_id.in_(ids)))}
    else:
        rollout_rows = {}
    for r in rows:
        ro = rollout_rows.get(r.id)
        out.append(
            {
                "id": r.id,
                "kind": r.kind,
                "branch": r.branch,
                "message": r.message,
                "status": r.status,
                "critical": r.critical,
                "critical_index": r.critical_index,
                "min_app_version": r.min_app_version,
                "source_group_id": r.source_group_id,
                "actor": r.actor,
                "created_at": r.created_at,
                "rollout": describe_rollout(ro) if ro is not None else None,
                "updates": sorted(per_group.get(r.id, []), key=lambda u: u["platform"]),
                "cursor": f"{r.created_at.isoformat()}|{r.id}",
            }
        )
    return out


async def get_group(conn: AsyncConnection, project_id: int, group_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(groups.c.created_at).where(groups.c.project_id == project_id, groups.c.id == group_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"update group {group_id}")
    found = [g for g in await list_groups(conn, project_id, None, 1000) if g["id"] == group_id]
    if not found:
        raise NotFound(f"update group {group_id}")
    return found[0]


async def get_update(conn: AsyncConnection, project_id: int, update_id: str) -> Any:
    row = (
        await conn.execute(
            select(updates, branches.c.name.label("branch"))
            .join(branches, branches.c.id == updates.c.branch_id)
            .where(updates.c.project_id == project_id, updates.c.id == update_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"update {update_id}")
    return row


async def runtime_versions(conn: AsyncConnection, project_id: int) -> list[dict[str, Any]]:
    """Per runtime version and platform: how many updates and the newest one's time."""
    rows = await conn.execute(
        select(
            updates.c.runtime_version,
            updates.c.platform,
            func.count().label("updates"),
            func.max(updates.c.created_at).label("latest"),
        )
        .where(updates.c.project_id == project_id)
        .group_by(updates.c.runtime_version, updates.c.platform)
        .order_by(updates.c.runtime_version, updates.c.platform)
    )
    return [dict(r._mapping) for r in rows]


# --- privacy hooks (the installation id is the only per-device identifier we keep) ---------------


async def export_user(conn: AsyncConnection, project_id: int, user_id: str) -> dict[str, Any]:
    """Everything stored about one installation (``user_id`` is its EAS-Client-ID)."""
    device = (
        await conn.execute(select(devices).where(devices.c.project_id == project_id, devices.c.client_id == user_id))
    ).first()
    history = await conn.execute(
        select(device_updates).where(device_updates.c.project_id == project_id, device_updates.c.client_id == user_id)
    )
    return {
        "device": dict(device._mapping) if device is not None else None,
        "updates": [dict(r._mapping) for r in history],
    }


async def erase_user(conn: AsyncConnection, project_id: int, user_id: str) -> int:
    erased = 0
    for table in (devices, device_updates):
        result = await conn.execute(
            table.delete().where(table.c.project_id == project_id, table.c.client_id == user_id)
        )
        erased += result.rowcount or 0
    return erased
