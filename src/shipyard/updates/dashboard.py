"""Dashboard pages for OTA updates: channels and branches, updates per runtime version,
rollouts with their health and controls, adoption."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from shipyard.core.auth import Role
from shipyard.core.errors import ApiError
from shipyard.dashboard.web import PageAccess, page_access, render, verify_csrf
from shipyard.updates import service, telemetry
from shipyard.updates.models import branches
from shipyard.updates.models import updates as updates_table

router = APIRouter(include_in_schema=False)
Viewer = Annotated[PageAccess, Depends(page_access(Role.viewer))]
Admin = Annotated[PageAccess, Depends(page_access(Role.admin))]


@router.get("/projects/{project}/updates")
async def updates_page(request: Request, access: Viewer) -> HTMLResponse:
    project_id = access.project.id
    async with access.ctx.db.transaction() as conn:
        chans = await service.list_channels(conn, project_id, None, 200)
        groups = await service.list_groups(conn, project_id, None, 30)
        runtimes = await service.runtime_versions(conn, project_id)
        live = await service.list_rollouts(conn, project_id, None, 20, "active")
        live += await service.list_rollouts(conn, project_id, None, 20, "halted")
        split = await telemetry.channel_split(conn, project_id)
        fatal = await telemetry.top_fatal_errors(conn, project_id, None, 5)
        history = await service.list_history(conn, project_id, None, 30)
    split_bars = [(f"{s['channel']} · OTA", s["ota"]) for s in split] + [
        (f"{s['channel']} · embedded", s["embedded"]) for s in split
    ]
    return await render(
        request,
        access,
        "updates/index.html",
        channels=chans,
        groups=groups,
        runtimes=runtimes,
        live=live,
        split_bars=split_bars,
        fatal=fatal,
        history=history,
        manifest_url=f"{access.ctx.settings.public_base}/updates/{project_id}/manifest",
    )


@router.get("/projects/{project}/updates/rollouts/{group_id}")
async def rollout_page(request: Request, group_id: str, access: Viewer) -> HTMLResponse:
    project_id = access.project.id
    async with access.ctx.db.connect() as conn:
        rollout = await service.rollout_row(conn, project_id, group_id)
        group = await service.get_group(conn, project_id, group_id)
        members = list(
            await conn.execute(
                select(updates_table.c.id, updates_table.c.platform, updates_table.c.control_update_id).where(
                    updates_table.c.group_id == group_id
                )
            )
        )
        health: list[dict[str, Any]] = []
        adoption: list[tuple[str, float]] = []
        for m in members:
            health.append(
                {
                    "platform": m.platform,
                    "current": await telemetry.update_health(conn, m.id),
                    "control": await telemetry.update_health(conn, m.control_update_id)
                    if m.control_update_id
                    else None,
                    "errors": await telemetry.top_fatal_errors(conn, project_id, m.id, 5),
                }
            )
            for hour, total in await telemetry.adoption_series(conn, m.id):
                adoption.append((f"{m.platform} {hour}", float(total)))
        history = await service.list_history(conn, project_id, None, 200)
        deployment = next((h for h in history if h["group_id"] == group_id), None)
        events = await service.history_events(conn, project_id, deployment["id"]) if deployment else []
    return await render(
        request,
        access,
        "updates/rollout.html",
        rollout=service.describe_rollout(rollout),
        group=group,
        health=health,
        adoption=adoption,
        events=events,
    )


@router.post("/projects/{project}/updates/rollouts/{group_id}/{action}")
async def rollout_action(request: Request, group_id: str, action: str, access: Admin) -> Response:
    form = await verify_csrf(request, access)
    ctx, actor, project_id = access.ctx, access.actor, access.project.id
    reason = str(form.get("reason") or "")[:500]
    try:
        if action == "halt":
            await service.halt_rollout(ctx, actor, project_id, group_id, reason or "halted from the dashboard")
        elif action == "resume":
            await service.resume_rollout(ctx, actor, project_id, group_id)
        elif action == "complete":
            await service.complete_rollout(ctx, actor, project_id, group_id)
        elif action == "percentage":
            await service.edit_rollout(ctx, actor, project_id, group_id, percentage=float(str(form.get("percentage"))))
        elif action == "rollback":
            async with ctx.db.connect() as conn:
                rollout = await service.rollout_row(conn, project_id, group_id)
                branch = await _branch_name(conn, rollout.branch_id)
                names = [
                    c["name"] for c in await service.list_channels(conn, project_id, None, 200) if c["branch"] == branch
                ]
            if not names:
                raise ApiError(409, "conflict", "no channel points at this rollout's branch")
            await service.rollback(
                ctx, actor, project_id, channel=names[0], reason=reason or "rolled back from the dashboard"
            )
        else:
            raise ApiError(404, "not_found", f"unknown action {action!r}")
    except ValueError:
        raise ApiError(400, "bad_request", "percentage must be a number") from None
    return RedirectResponse(f"/projects/{access.project.slug}/updates/rollouts/{group_id}", status_code=303)


async def _branch_name(conn: Any, branch_id: int) -> str:
    return str((await conn.execute(select(branches.c.name).where(branches.c.id == branch_id))).scalar_one())
