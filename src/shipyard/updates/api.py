"""Admin API for OTA updates under ``/api/v1/projects/{project}/updates``.

Viewers read; developers publish, upload and steer rollouts; admins roll back, promote,
remap channels, set policies and manage the signing key (production actions).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from shipyard.core.bodies import decode_body
from shipyard.core.deps import Admin, Developer, Viewer
from shipyard.core.errors import ApiError, NotFound
from shipyard.core.pagination import Paging
from shipyard.core.signals import signal_names
from shipyard.updates import policy as policy_mod
from shipyard.updates import service, signing, telemetry
from shipyard.updates.models import updates as updates_table

router = APIRouter(prefix="/projects/{project}/updates", tags=["updates"])
# A coroutine dependency: a class in Depends() would run in FastAPI's thread pool.
Page = Paging


# --- schemas -------------------------------------------------------------------------------------


class ChannelCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    branch: str | None = Field(None, max_length=100, description="Branch to point at (default: same name).")


class ChannelEdit(BaseModel):
    branch: str = Field(min_length=1, max_length=100)


class BranchCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class UpdateSettings(BaseModel):
    default_channel: str = Field(min_length=1, max_length=100)


class MissingQuery(BaseModel):
    blobs: list[str] = Field(max_length=10_000, description="SHA-256 hex digests of the files to publish.")


class FileIn(BaseModel):
    sha256: str = Field(min_length=64, max_length=64, description="SHA-256 hex of the file (uploaded before).")
    content_type: str = Field(min_length=3, max_length=100)
    file_extension: str | None = Field(None, max_length=20)


class PlatformIn(BaseModel):
    runtime_version: str = Field(min_length=1, max_length=255)
    launch_asset: FileIn
    assets: list[FileIn] = Field(default_factory=list, max_length=5000)


class RolloutIn(BaseModel):
    percentage: float = Field(gt=0, le=100)
    increment: float | None = Field(None, gt=0, le=100)
    interval_minutes: int | None = Field(None, ge=1, le=60 * 24 * 30)
    max_percentage: float | None = Field(None, gt=0, le=100)

    def plan(self) -> service.RolloutPlan:
        return service.RolloutPlan(self.percentage, self.increment, self.interval_minutes, self.max_percentage)


class PublishIn(BaseModel):
    channel: str | None = Field(None, max_length=100)
    branch: str | None = Field(None, max_length=100)
    message: str = Field("", max_length=2000)
    platforms: dict[Literal["ios", "android"], PlatformIn]
    expo_config: dict[str, Any] | None = Field(None, description="The public app config (becomes extra.expoClient).")
    rollout: RolloutIn | None = None
    critical: bool = False
    min_app_version: str | None = Field(None, max_length=50, pattern=r"^\d+(\.\d+){0,3}$")
    on_active_rollout: Literal["end", "supersede"] | None = Field(
        None, description="Required when the branch has an active rollout: end it, or let this update supersede it."
    )


class RolloutEdit(BaseModel):
    percentage: float | None = Field(None, gt=0, le=100)
    increment: float | None = Field(None, gt=0, le=100)
    interval_minutes: int | None = Field(None, ge=1, le=60 * 24 * 30)
    max_percentage: float | None = Field(None, gt=0, le=100)


class HaltIn(BaseModel):
    reason: str = Field("", max_length=500)


class RollbackIn(BaseModel):
    channel: str = Field(min_length=1, max_length=100)
    runtime_version: str | None = Field(None, max_length=255)
    platforms: list[Literal["ios", "android"]] | None = None
    to_embedded: bool = False
    reason: str = Field("", max_length=500)


class PromoteIn(BaseModel):
    from_channel: str = Field(min_length=1, max_length=100)
    to_channel: str = Field(min_length=1, max_length=100)
    group_id: str | None = Field(None, max_length=36)
    rollout: RolloutIn | None = None
    on_active_rollout: Literal["end", "supersede"] | None = None


class PolicyIn(BaseModel):
    enabled: bool = True
    min_devices: int = Field(50, ge=1, le=10_000_000)
    max_failed_launch_rate: float | None = Field(0.02, ge=0, le=1)
    max_margin_over_control: float | None = Field(None, ge=0, le=1)
    rules: dict[str, dict[str, float]] = Field(default_factory=dict)
    action: Literal["halt", "rollback"] = "halt"


class SigningGenerate(BaseModel):
    keyid: str = Field("main", min_length=1, max_length=100)
    common_name: str | None = Field(None, max_length=64)
    validity_years: int = Field(10, ge=1, le=30)


class SigningImport(BaseModel):
    keyid: str = Field("main", min_length=1, max_length=100)
    private_key_pem: str = Field(min_length=100, max_length=20_000)
    certificate_pem: str = Field(min_length=100, max_length=20_000)
    certificate_chain_pem: str | None = Field(None, max_length=100_000)


# --- channels, branches, settings ----------------------------------------------------------------


@router.get("/channels")
async def list_channels(access: Viewer, page: Page) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        rows = await service.list_channels(conn, access.project.id, page.after_int(), page.limit + 1)
    return page.page(rows, lambda r: r["id"])


@router.post("/channels", status_code=201)
async def create_channel(body: ChannelCreate, access: Developer) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        result = await service.create_channel(conn, access.ctx, access.actor, access.project.id, body.name, body.branch)
    service.cache.invalidate(access.ctx, access.project.id)
    return result


@router.patch("/channels/{channel}")
async def edit_channel(channel: str, body: ChannelEdit, access: Admin) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        result = await service.point_channel(conn, access.ctx, access.actor, access.project.id, channel, body.branch)
    service.cache.invalidate(access.ctx, access.project.id)
    return result


@router.get("/branches")
async def list_branches(access: Viewer, page: Page) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        rows = await service.list_branches(conn, access.project.id, page.after_int(), page.limit + 1)
    return page.page(rows, lambda r: r["id"])


@router.post("/branches", status_code=201)
async def create_branch(body: BranchCreate, access: Developer) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        return await service.create_branch(conn, access.ctx, access.actor, access.project.id, body.name)


@router.put("/settings")
async def put_settings(body: UpdateSettings, access: Admin) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        result = await service.set_default_channel(
            conn, access.ctx, access.actor, access.project.id, body.default_channel
        )
    service.cache.invalidate(access.ctx, access.project.id)
    return result


@router.get("/runtime-versions")
async def runtime_versions(access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return {"data": await service.runtime_versions(conn, access.project.id)}


# --- publishing ----------------------------------------------------------------------------------


@router.post("/assets/missing", summary="Which files still need uploading")
async def missing_assets(body: MissingQuery, access: Developer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return {"missing": await service.missing_blobs(conn, access.project.id, body.blobs)}


@router.put("/blobs/{sha256}", summary="Upload one file (raw body), addressed by its SHA-256 hex")
async def upload_blob(sha256: str, request: Request, access: Developer) -> dict[str, Any]:
    limit = access.ctx.settings.updates_max_asset_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdecimal() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"files are limited to {limit} bytes")
    raw = await request.body()
    data = decode_body(raw, request.headers.get("content-encoding"), limit=limit)
    created = await service.store_blob(access.ctx, access.project.id, sha256, data)
    return {"sha256": sha256.lower(), "size": len(data), "created": created}


@router.post("/publish", status_code=201, summary="Commit a publish whose files are uploaded")
async def publish(body: PublishIn, access: Developer) -> dict[str, Any]:
    spec = service.PublishSpec(
        platforms={
            name: service.PlatformBundle(
                runtime_version=p.runtime_version,
                launch_asset=service.FileRef(p.launch_asset.sha256.lower(), p.launch_asset.content_type),
                assets=[service.FileRef(a.sha256.lower(), a.content_type, a.file_extension) for a in p.assets],
            )
            for name, p in body.platforms.items()
        },
        channel=body.channel,
        branch=body.branch,
        message=body.message,
        expo_config=body.expo_config,
        rollout=body.rollout.plan() if body.rollout else None,
        critical=body.critical,
        min_app_version=body.min_app_version,
        on_active_rollout=body.on_active_rollout,
    )
    return await service.publish(access.ctx, access.actor, access.project.id, spec)


@router.get("/groups")
async def list_groups(
    access: Viewer,
    page: Page,
    branch: str | None = Query(None, max_length=100),
    runtime_version: str | None = Query(None, max_length=255),
) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await service.list_groups(
            conn, access.project.id, page.after(), page.limit + 1, branch=branch, runtime_version=runtime_version
        )
    return page.page(rows, lambda r: r["cursor"])


@router.get("/groups/{group_id}")
async def get_group(group_id: str, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return await service.get_group(conn, access.project.id, group_id)


@router.get("/updates/{update_id}", summary="One update with its manifest body and launch health")
async def get_update(update_id: str, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        row = await service.get_update(conn, access.project.id, update_id)
        health = await telemetry.update_health(conn, update_id)
        errors = await telemetry.top_fatal_errors(conn, access.project.id, update_id)
    return {
        "id": row.id,
        "group_id": row.group_id,
        "branch": row.branch,
        "platform": row.platform,
        "runtime_version": row.runtime_version,
        "kind": row.kind,
        "created_at": row.created_at,
        "control_update_id": row.control_update_id,
        "critical_index": row.critical_index,
        "min_app_version": row.min_app_version,
        "manifest": row.manifest,
        "health": health,
        "top_fatal_errors": errors,
    }


# --- rollouts ------------------------------------------------------------------------------------


@router.get("/rollouts")
async def list_rollouts(
    access: Viewer,
    page: Page,
    status: str | None = Query(None, pattern="^(active|halted|completed|rolled_back|superseded|ended)$"),
) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await service.list_rollouts(conn, access.project.id, page.after_int(), page.limit + 1, status)
    return page.page(rows, lambda r: r["id"])


@router.get("/rollouts/{group_id}", summary="A rollout with per-platform health")
async def get_rollout(group_id: str, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        row = await service.rollout_row(conn, access.project.id, group_id)
        members = list(
            await conn.execute(
                select(updates_table.c.id, updates_table.c.platform, updates_table.c.control_update_id).where(
                    updates_table.c.group_id == group_id
                )
            )
        )
        health = []
        for m in members:
            health.append(
                {
                    "platform": m.platform,
                    "update": await telemetry.update_health(conn, m.id),
                    "control": await telemetry.update_health(conn, m.control_update_id)
                    if m.control_update_id
                    else None,
                }
            )
    return {**service.describe_rollout(row), "health": health}


@router.patch("/rollouts/{group_id}")
async def edit_rollout(group_id: str, body: RolloutEdit, access: Developer) -> dict[str, Any]:
    return await service.edit_rollout(
        access.ctx,
        access.actor,
        access.project.id,
        group_id,
        percentage=body.percentage,
        increment=body.increment,
        interval_minutes=body.interval_minutes,
        max_percentage=body.max_percentage,
    )


@router.post("/rollouts/{group_id}/halt")
async def halt_rollout(group_id: str, body: HaltIn, access: Developer) -> dict[str, Any]:
    return await service.halt_rollout(access.ctx, access.actor, access.project.id, group_id, body.reason)


@router.post("/rollouts/{group_id}/resume")
async def resume_rollout(group_id: str, access: Admin) -> dict[str, Any]:
    return await service.resume_rollout(access.ctx, access.actor, access.project.id, group_id)


@router.post("/rollouts/{group_id}/complete")
async def complete_rollout(group_id: str, access: Admin) -> dict[str, Any]:
    return await service.complete_rollout(access.ctx, access.actor, access.project.id, group_id)


# --- rollback, promotion, history ----------------------------------------------------------------


@router.post("/rollback", status_code=201)
async def rollback(body: RollbackIn, access: Admin) -> dict[str, Any]:
    return await service.rollback(
        access.ctx,
        access.actor,
        access.project.id,
        channel=body.channel,
        runtime_version=body.runtime_version,
        platforms=list(body.platforms) if body.platforms else None,
        to_embedded=body.to_embedded,
        reason=body.reason,
    )


@router.post("/promote", status_code=201)
async def promote(body: PromoteIn, access: Admin) -> dict[str, Any]:
    return await service.promote(
        access.ctx,
        access.actor,
        access.project.id,
        from_channel=body.from_channel,
        to_channel=body.to_channel,
        group_id=body.group_id,
        rollout=body.rollout.plan() if body.rollout else None,
        on_active_rollout=body.on_active_rollout,
    )


@router.get("/history")
async def history(access: Viewer, page: Page, channel: str | None = Query(None, max_length=100)) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await service.list_history(conn, access.project.id, page.after_int(), page.limit + 1, channel)
    return page.page(rows, lambda r: r["id"])


@router.get("/history/{deployment_id}/events")
async def history_events(deployment_id: int, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return {"data": await service.history_events(conn, access.project.id, deployment_id)}


# --- insights and policies -----------------------------------------------------------------------


@router.get("/insights/channels", summary="Installations per channel running embedded vs OTA code")
async def channel_insights(access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return {
            "data": await telemetry.channel_split(conn, access.project.id),
            "top_fatal_errors": await telemetry.top_fatal_errors(conn, access.project.id, None),
        }


@router.get("/insights/updates/{update_id}")
async def update_insights(update_id: str, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        await service.get_update(conn, access.project.id, update_id)
        return {
            **await telemetry.update_health(conn, update_id),
            "top_fatal_errors": await telemetry.top_fatal_errors(conn, access.project.id, update_id),
            "adoption": [{"hour": h, "devices": n} for h, n in await telemetry.adoption_series(conn, update_id)],
        }


@router.get("/signals", summary="Health signals a rollout policy can set thresholds on")
async def policy_signals(access: Viewer) -> dict[str, Any]:
    return {"data": signal_names()}


@router.get("/policies/{channel}")
async def get_policy(channel: str, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        await service.ensure_defaults(conn, access.project.id)
        chan = await service.channel_row(conn, access.project.id, channel)
        current, configured = await policy_mod.get_policy(conn, access.ctx, chan.id)
    return {"channel": channel, "configured": configured, **asdict(current)}


@router.put("/policies/{channel}")
async def put_policy(channel: str, body: PolicyIn, access: Admin) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        return await policy_mod.set_policy(
            conn, access.ctx, access.actor, access.project.id, channel, policy_mod.Policy(**body.model_dump())
        )


# --- code signing --------------------------------------------------------------------------------


@router.get("/signing")
async def get_signing(access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return await signing.active_key_info(conn, access.project.id)


@router.post("/signing/generate", status_code=201, summary="Generate a key pair; returns the certificate to embed")
async def generate_signing(body: SigningGenerate, access: Admin) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        result = await signing.generate(
            conn,
            access.ctx,
            access.project.id,
            keyid=body.keyid,
            common_name=body.common_name or f"Shipyard {access.project.slug}",
            years=body.validity_years,
        )
        await _audit_signing(conn, access, "updates.signing.generate", result)
    service.cache.invalidate(access.ctx, access.project.id)
    return result


@router.post("/signing/import", status_code=201)
async def import_signing(body: SigningImport, access: Admin) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        result = await signing.store_key(
            conn,
            access.ctx,
            access.project.id,
            keyid=body.keyid,
            key_pem=body.private_key_pem,
            cert_pem=body.certificate_pem,
            chain_pem=body.certificate_chain_pem,
        )
        await _audit_signing(conn, access, "updates.signing.import", result)
    service.cache.invalidate(access.ctx, access.project.id)
    return result


@router.delete("/signing", status_code=204)
async def delete_signing(access: Admin) -> None:
    async with access.ctx.db.transaction() as conn:
        removed = await signing.remove_key(conn, access.project.id)
        if not removed:
            raise NotFound("signing key")
        await service.audit.record(
            conn,
            access.ctx,
            access.actor,
            "updates.signing.remove",
            project_id=access.project.id,
            resource_type="signing_key",
        )
    service.cache.invalidate(access.ctx, access.project.id)


async def _audit_signing(conn: Any, access: Any, action: str, result: dict[str, Any]) -> None:
    await service.audit.record(
        conn,
        access.ctx,
        access.actor,
        action,
        project_id=access.project.id,
        resource_type="signing_key",
        resource_id=result["id"],
        details={"keyid": result["keyid"], "fingerprint_sha256": result["fingerprint_sha256"]},
    )
