"""Client-facing push routes used by the app with the project's public key.

The public key travels in ``X-Shipyard-Key`` (or ``?key=``), leaving ``Authorization``
for the app user's own token (a Supabase Auth JWT) when the project requires one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request

from shipyard.core import audit
from shipyard.core.context import Context
from shipyard.core.deps import actor_for, client_project, ctx_dependency, get_ctx
from shipyard.core.errors import BadRequest
from shipyard.core.projects import Project
from shipyard.push import devices as devices_svc
from shipyard.push import history, links, prefs
from shipyard.push.schemas import (
    DeviceRegister,
    Engagement,
    LinkEngagement,
    LinkValidate,
    PreferencesBody,
    TopicBody,
)
from shipyard.push.userauth import resolve_user

router = APIRouter(prefix="/push/v1", tags=["push (app)"])


async def app_project(
    request: Request,
    x_shipyard_key: Annotated[str | None, Header(max_length=100)] = None,
    key: Annotated[str | None, Query(max_length=100)] = None,
) -> Project:
    return await client_project(get_ctx(request), x_shipyard_key or key)


AppProject = Annotated[Project, Depends(app_project)]
CtxDep = Annotated[Context, Depends(ctx_dependency)]


@router.post("/devices")
async def register_device(
    body: DeviceRegister,
    project: AppProject,
    ctx: CtxDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Register or update this device's push token (re-registering re-activates it).

    With a user token (required when the project verifies them) the device is bound to
    that user; without one it is anonymous."""
    user_id = await resolve_user(ctx, project.id, authorization, body.user_id)
    async with ctx.db.transaction() as conn:
        device = await devices_svc.register(conn, project.id, body.model_dump(), user_id)
        if user_id and (body.timezone or body.locale):
            changes = {k: v for k, v in (("timezone", body.timezone), ("locale", body.locale)) if v}
            await prefs.put_user(conn, project.id, user_id, changes)
        if devices_svc.created_now(device):  # a new device has only the topics it just asked for
            topics = sorted(set(body.topics or []))
        else:
            topics = await devices_svc.topics_of(conn, device["id"])
    return {**devices_svc.public_view(device), "topics": topics}


@router.delete("/devices")
async def unregister_device(
    request: Request,
    project: AppProject,
    ctx: CtxDep,
    token: Annotated[str, Query(min_length=1, max_length=512)],
) -> dict[str, Any]:
    """The app stops receiving push on this device (possession of the token is the proof)."""
    async with ctx.db.transaction() as conn:
        device = await devices_svc.unregister(conn, project.id, token)
        await audit.record(
            conn,
            ctx,
            actor_for(request),
            "push.device.unregister",
            project_id=project.id,
            resource_type="push_device",
            resource_id=device["id"],
        )
    return {"id": device["id"], "active": False}


@router.post("/topics/subscribe")
async def subscribe(body: TopicBody, project: AppProject, ctx: CtxDep) -> dict[str, Any]:
    async with ctx.db.transaction() as conn:
        device = await devices_svc.get_by_token(conn, project.id, body.token)
        await devices_svc.subscribe(conn, project.id, device["id"], body.topic)
        return {"device_id": device["id"], "topics": await devices_svc.topics_of(conn, device["id"])}


@router.post("/topics/unsubscribe")
async def unsubscribe(body: TopicBody, project: AppProject, ctx: CtxDep) -> dict[str, Any]:
    async with ctx.db.transaction() as conn:
        device = await devices_svc.get_by_token(conn, project.id, body.token)
        await devices_svc.unsubscribe(conn, device["id"], body.topic)
        return {"device_id": device["id"], "topics": await devices_svc.topics_of(conn, device["id"])}


async def _acting_user(ctx: Context, project: Project, authorization: str | None, user_id: str | None) -> str:
    resolved = await resolve_user(ctx, project.id, authorization, user_id)
    if not resolved:
        raise BadRequest("say which user: a user token, or user_id when the project does not require tokens")
    return resolved


@router.get("/preferences")
async def get_preferences(
    project: AppProject,
    ctx: CtxDep,
    authorization: Annotated[str | None, Header()] = None,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    uid = await _acting_user(ctx, project, authorization, user_id)
    async with ctx.db.connect() as conn:
        return await prefs.get_preferences(conn, project.id, uid)


@router.put("/preferences")
async def put_preferences(
    request: Request,
    body: PreferencesBody,
    project: AppProject,
    ctx: CtxDep,
    authorization: Annotated[str | None, Header()] = None,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """The user changes their preferences; queued notifications are re-checked when due."""
    uid = await _acting_user(ctx, project, authorization, user_id)
    changes = body.model_dump(exclude_unset=True)
    async with ctx.db.transaction() as conn:
        result = await prefs.set_preferences(conn, project.id, uid, changes)
        await audit.record(
            conn,
            ctx,
            audit.Actor(type="app_user", id=uid, ip=actor_for(request).ip),
            "push.preferences.update",
            project_id=project.id,
            resource_type="push_user",
            resource_id=uid,
            details=changes,
        )
    return result


@router.post("/engagement")
async def report_engagement(body: Engagement, project: AppProject, ctx: CtxDep) -> dict[str, Any]:
    """The app reports a notification received or opened, with the id from ``data._sid``."""
    async with ctx.db.transaction() as conn:
        return await history.record_engagement(conn, project.id, body.message_id, body.event)


@router.post("/links/validate")
async def validate_link(body: LinkValidate, project: AppProject, ctx: CtxDep) -> dict[str, Any]:
    """Whether a deep link is authentic (signed by this server for this project), unexpired
    and points at a registered route; with the route's parameters when it is."""
    async with ctx.db.connect() as conn:
        return await links.validate(conn, ctx, project.id, body.url)


@router.post("/links/engagement")
async def link_engagement(body: LinkEngagement, project: AppProject, ctx: CtxDep) -> dict[str, Any]:
    """The app reports what happened when it followed a link: success, failure or ignored."""
    async with ctx.db.transaction() as conn:
        return await links.record_engagement(conn, ctx, project.id, body.url, body.outcome, body.source, body.user_id)
