"""Dashboard pages for push: overview (funnel, provider health, recent sends, campaigns),
a send's delivery funnel and messages (with cancel), devices, and templates with the
categories, event rules and deep-link routes they use."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select

from shipyard.core import audit
from shipyard.core.auth import Role
from shipyard.core.db import utcnow
from shipyard.dashboard.web import PageAccess, page_access, render, verify_csrf
from shipyard.push import analytics, history, links, prefs, rules, sending, texts
from shipyard.push import devices as devices_svc
from shipyard.push.models import devices, messages, sends

router = APIRouter(include_in_schema=False)
Viewer = Annotated[PageAccess, Depends(page_access(Role.viewer))]
Developer = Annotated[PageAccess, Depends(page_access(Role.developer))]


@router.get("/projects/{project}/push")
async def push_page(request: Request, access: Viewer) -> HTMLResponse:
    project_id = access.project.id
    async with access.ctx.db.connect() as conn:
        total = await analytics.overview(conn, project_id)
        health = await analytics.provider_health(conn, access.ctx, project_id, utcnow() - timedelta(hours=24))
        campaigns = await analytics.funnel(conn, project_id, "campaign", limit=20)
        by_category = await analytics.funnel(conn, project_id, "category", limit=50)
        recent = [
            dict(r._mapping)
            for r in await conn.execute(
                select(sends).where(sends.c.project_id == project_id).order_by(sends.c.id.desc()).limit(30)
            )
        ]
        device_count = (
            await conn.execute(
                select(func.count()).select_from(devices).where(devices.c.project_id == project_id, devices.c.active)
            )
        ).scalar()
    funnel_bars = [(k, float(total[k])) for k in ("messages", "sent", "delivered", "opened", "failed")]
    return await render(
        request,
        access,
        "push/index.html",
        total=total,
        funnel_bars=funnel_bars,
        health=health,
        campaigns=campaigns,
        by_category=by_category,
        sends=recent,
        device_count=device_count,
    )


@router.get("/projects/{project}/push/sends/{send_id}")
async def send_page(
    request: Request, send_id: int, access: Viewer, status: Annotated[str | None, Query(max_length=16)] = None
) -> HTMLResponse:
    project_id = access.project.id
    async with access.ctx.db.connect() as conn:
        send = await sending.get_send(conn, project_id, send_id)
        funnel = await analytics.send_funnel(conn, project_id, send_id)
        stmt = select(messages).where(messages.c.project_id == project_id, messages.c.send_id == send_id)
        if status:
            stmt = stmt.where(messages.c.status == status)
        rows = [
            history.message_view(dict(r._mapping))
            for r in await conn.execute(stmt.order_by(messages.c.created_at.desc()).limit(200))
        ]
    funnel_bars = [(k, float(funnel[k])) for k in ("messages", "sent", "delivered", "opened", "failed", "suppressed")]
    return await render(
        request,
        access,
        "push/send.html",
        send=send,
        funnel=funnel,
        funnel_bars=funnel_bars,
        rows=rows,
        status=status,
        can_cancel=access.can(Role.developer) and send["status"] in ("queued", "scheduled", "recurring"),
    )


@router.post("/projects/{project}/push/sends/{send_id}/cancel")
async def cancel_send(request: Request, send_id: int, access: Developer) -> Response:
    await verify_csrf(request, access)
    ctx = access.ctx
    async with ctx.db.transaction() as conn:
        _send, dropped = await sending.cancel_send(conn, access.project.id, send_id)
        await audit.record(
            conn,
            ctx,
            access.actor,
            "push.send.cancel",
            project_id=access.project.id,
            resource_type="push_send",
            resource_id=send_id,
            details={"dropped_messages": dropped, "via": "dashboard"},
        )
    return RedirectResponse(f"/projects/{access.project.slug}/push/sends/{send_id}", status_code=303)


@router.get("/projects/{project}/push/messages")
async def messages_page(
    request: Request, access: Viewer, user_id: Annotated[str | None, Query(max_length=200)] = None
) -> HTMLResponse:
    """Message search by user: every notification a user was sent, with its status and reason."""
    rows = []
    if user_id:
        stmt = (
            select(messages)
            .where(messages.c.project_id == access.project.id, messages.c.user_id == user_id)
            .order_by(messages.c.created_at.desc())
            .limit(200)
        )
        async with access.ctx.db.connect() as conn:
            rows = [history.message_view(dict(r._mapping)) for r in await conn.execute(stmt)]
    return await render(request, access, "push/messages.html", rows=rows, user_id=user_id or "")


@router.get("/projects/{project}/push/devices")
async def devices_page(
    request: Request, access: Viewer, user_id: Annotated[str | None, Query(max_length=200)] = None
) -> HTMLResponse:
    project_id = access.project.id
    stmt = select(devices).where(devices.c.project_id == project_id)
    if user_id:
        stmt = stmt.where(devices.c.user_id == user_id)
    async with access.ctx.db.connect() as conn:
        rows = [
            devices_svc.public_view(dict(r._mapping))
            for r in await conn.execute(stmt.order_by(devices.c.id.desc()).limit(200))
        ]
        by_state: dict[str, int] = dict(
            (
                await conn.execute(
                    select(devices.c.permission, func.count())
                    .where(devices.c.project_id == project_id, devices.c.active)
                    .group_by(devices.c.permission)
                )
            )
            .tuples()
            .all()
        )
    return await render(
        request,
        access,
        "push/devices.html",
        devices=rows,
        user_id=user_id or "",
        permission_bars=[(k, float(v)) for k, v in sorted(by_state.items())],
    )


@router.get("/projects/{project}/push/templates")
async def templates_page(request: Request, access: Viewer) -> HTMLResponse:
    project_id = access.project.id
    async with access.ctx.db.connect() as conn:
        templates = await texts.list_templates(conn, project_id)
        categories = await prefs.list_categories(conn, project_id)
        rule_rows = await rules.list_rules(conn, project_id)
        routes = await links.list_routes(conn, project_id)
    return await render(
        request,
        access,
        "push/templates.html",
        templates=templates,
        categories=categories,
        rules=rule_rows,
        routes=routes,
    )
