"""Admin API of the push feature: ``/api/v1/projects/{project}/push/…`` (secret key or session)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from sqlalchemy import and_, or_, select

from shipyard.core import audit
from shipyard.core.auth import Role
from shipyard.core.deps import Access, project_access
from shipyard.core.errors import BadRequest, NotFound
from shipyard.core.pagination import Paging
from shipyard.push import analytics as push_analytics
from shipyard.push import credentials as creds_svc
from shipyard.push import devices as devices_svc
from shipyard.push import history, links, prefs, sending, texts, userauth
from shipyard.push import rules as rules_svc
from shipyard.push.models import config, devices, messages, sends
from shipyard.push.schemas import (
    ApnsCredentials,
    AuthConfigBody,
    CategoryBody,
    EventBody,
    ExpoCredentials,
    FcmCredentials,
    LinkGenerate,
    LinkRouteBody,
    PreferencesBody,
    RuleBody,
    SendRequest,
    TemplateBody,
    UserBody,
)

router = APIRouter(prefix="/projects/{project}/push", tags=["push"])

Viewer = Annotated[Access, Depends(project_access(Role.viewer))]
Developer = Annotated[Access, Depends(project_access(Role.developer))]
Admin = Annotated[Access, Depends(project_access(Role.admin))]


async def _audit(
    access: Access, conn: Any, action: str, rtype: str, rid: Any, details: dict[str, Any] | None = None
) -> None:
    await audit.record(
        conn,
        access.ctx,
        access.actor,
        action,
        project_id=access.project.id,
        resource_type=rtype,
        resource_id=rid,
        details=details or {},
    )


def _cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


# --- devices and topics -------------------------------------------------------------------


@router.get("/devices")
async def list_devices(
    access: Viewer,
    page: Paging,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
    active: bool | None = None,
) -> dict[str, Any]:
    """Devices of the project, newest first; filter by user or active state."""
    stmt = select(devices).where(devices.c.project_id == access.project.id)
    if user_id is not None:
        stmt = stmt.where(devices.c.user_id == user_id)
    if active is not None:
        stmt = stmt.where(devices.c.active == active)
    after = page.after_int()
    if after is not None:
        stmt = stmt.where(devices.c.id < after)
    async with access.ctx.db.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(stmt.order_by(devices.c.id.desc()).limit(page.limit + 1))]
    result = page.page(rows, lambda r: r["id"])
    result["data"] = [devices_svc.public_view(r) for r in result["data"]]
    return result


@router.get("/devices/{device_id}")
async def get_device(device_id: int, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        device = await devices_svc.get(conn, access.project.id, device_id)
        topics = await devices_svc.topics_of(conn, device_id)
    return {**devices_svc.public_view(device), "topics": topics}


@router.delete("/devices/{device_id}")
async def deactivate_device(device_id: int, access: Developer) -> dict[str, Any]:
    """Stop sending to a device (its token stays known; the app re-activates it by registering)."""
    async with access.ctx.db.transaction() as conn:
        await devices_svc.get(conn, access.project.id, device_id)
        await devices_svc.deactivate(conn, [device_id], f"deactivated by {access.actor.label or access.actor.id}")
        await _audit(access, conn, "push.device.deactivate", "push_device", device_id)
        device = await devices_svc.get(conn, access.project.id, device_id)
    return devices_svc.public_view(device)


@router.get("/topics")
async def list_topics(access: Viewer, page: Paging) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await devices_svc.list_topics(conn, access.project.id)
    after = page.after()
    if after:
        rows = [r for r in rows if r["topic"] > after]
    return page.page(rows[: page.limit + 1], lambda r: r["topic"])


# --- users and preferences ----------------------------------------------------------------


@router.put("/users/{user_id}")
async def put_user(user_id: str, body: UserBody, access: Developer) -> dict[str, Any]:
    """Set a user's segment properties, timezone and locale (what the app backend knows)."""
    changes = body.model_dump(exclude_unset=True)
    async with access.ctx.db.transaction() as conn:
        user = await prefs.put_user(conn, access.project.id, user_id, changes)
        await _audit(access, conn, "push.user.update", "push_user", user_id, {"fields": sorted(changes)})
    return user


@router.get("/users/{user_id}/preferences")
async def get_preferences(user_id: str, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return await prefs.get_preferences(conn, access.project.id, user_id)


@router.put("/users/{user_id}/preferences")
async def put_preferences(user_id: str, body: PreferencesBody, access: Developer) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    async with access.ctx.db.transaction() as conn:
        result = await prefs.set_preferences(conn, access.project.id, user_id, changes)
        await _audit(access, conn, "push.preferences.update", "push_user", user_id, changes)
    return result


# --- categories and templates -------------------------------------------------------------


@router.get("/categories")
async def list_categories(access: Viewer, page: Paging) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await prefs.list_categories(conn, access.project.id)
    after = page.after()
    rows = [r for r in rows if not after or r["name"] > after]
    return page.page(rows[: page.limit + 1], lambda r: r["name"])


@router.put("/categories/{name}")
async def put_category(name: str, body: CategoryBody, access: Developer) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        category = await prefs.put_category(conn, access.project.id, name, body.model_dump())
        await _audit(access, conn, "push.category.put", "push_category", name, body.model_dump())
    return category


@router.delete("/categories/{name}", status_code=204)
async def delete_category(name: str, access: Admin) -> None:
    async with access.ctx.db.transaction() as conn:
        if not await prefs.delete_category(conn, access.project.id, name):
            raise NotFound(f"category {name!r}")
        await _audit(access, conn, "push.category.delete", "push_category", name)


@router.get("/templates")
async def list_templates(access: Viewer, page: Paging) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await texts.list_templates(conn, access.project.id)
    after = page.after()
    rows = [r for r in rows if not after or r["name"] > after]
    return page.page(rows[: page.limit + 1], lambda r: r["name"])


@router.put("/templates/{name}")
async def put_template(name: str, body: TemplateBody, access: Developer) -> dict[str, Any]:
    data = body.model_dump(exclude_none=True)
    async with access.ctx.db.transaction() as conn:
        if body.category:
            await prefs.get_category(conn, access.project.id, body.category)
        template = await texts.put_template(conn, access.project.id, name, data)
        await _audit(access, conn, "push.template.put", "push_template", name, {"locales": sorted(body.texts)})
    return template


@router.get("/templates/{name}")
async def get_template(name: str, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return await texts.get_template(conn, access.project.id, name)


@router.delete("/templates/{name}", status_code=204)
async def delete_template(name: str, access: Developer) -> None:
    async with access.ctx.db.transaction() as conn:
        if not await texts.delete_template(conn, access.project.id, name):
            raise NotFound(f"template {name!r}")
        await _audit(access, conn, "push.template.delete", "push_template", name)


# --- credentials and user-token verification ----------------------------------------------------


@router.get("/credentials")
async def list_credentials(access: Viewer) -> dict[str, Any]:
    """Which providers are configured (metadata only; secrets are never returned)."""
    async with access.ctx.db.connect() as conn:
        return {"data": await creds_svc.list_views(conn, access.project.id)}


async def _put_credentials(access: Access, provider: str, body: dict[str, Any]) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        view = await creds_svc.put(conn, access.ctx, access.project.id, provider, body)
        await _audit(access, conn, "push.credentials.put", "push_provider", provider, {"meta": view["meta"]})
        from shipyard.core import alerts

        await alerts.resolve_alert(
            conn, access.ctx, project_id=access.project.id, dedup_key=f"push:credentials:{provider}"
        )
    sending.wake_worker(access.ctx)
    return view


@router.put("/credentials/expo")
async def put_expo_credentials(body: ExpoCredentials, access: Admin) -> dict[str, Any]:
    return await _put_credentials(access, "expo", body.model_dump())


@router.put("/credentials/fcm")
async def put_fcm_credentials(body: FcmCredentials, access: Admin) -> dict[str, Any]:
    return await _put_credentials(access, "fcm", body.model_dump())


@router.put("/credentials/apns")
async def put_apns_credentials(body: ApnsCredentials, access: Admin) -> dict[str, Any]:
    return await _put_credentials(access, "apns", body.model_dump())


@router.delete("/credentials/{provider}", status_code=204)
async def delete_credentials(provider: str, access: Admin) -> None:
    async with access.ctx.db.transaction() as conn:
        await creds_svc.remove(conn, access.project.id, provider)
        await _audit(access, conn, "push.credentials.delete", "push_provider", provider)


@router.get("/auth")
async def get_auth_config(access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        row = (await conn.execute(select(config).where(config.c.project_id == access.project.id))).first()
    if row is None:
        return {"mode": "none", "jwks_url": None, "audience": None, "issuer": None}
    mode = "jwt_secret" if row.jwt_secret else ("jwks" if row.jwks_url else "none")
    return {"mode": mode, "jwks_url": row.jwks_url, "audience": row.jwt_audience, "issuer": row.jwt_issuer}


@router.put("/auth")
async def put_auth_config(body: AuthConfigBody, access: Admin) -> dict[str, Any]:
    """Require a valid app-user JWT (Supabase Auth style) to bind devices and change
    preferences: give the HS256 ``jwt_secret`` or a ``jwks_url``; both empty turns it off."""
    if body.jwt_secret and body.jwks_url:
        raise BadRequest("give jwt_secret or jwks_url, not both")
    if body.jwks_url and not body.jwks_url.startswith(("https://", "http://")):
        raise BadRequest("jwks_url must be an http(s) URL")
    from shipyard.core.db import upsert, utcnow

    values = {
        "project_id": access.project.id,
        "jwt_secret": access.ctx.box.encrypt(body.jwt_secret) if body.jwt_secret else None,
        "jwks_url": body.jwks_url,
        "jwt_audience": body.audience,
        "jwt_issuer": body.issuer,
        "updated_at": utcnow(),
    }
    async with access.ctx.db.transaction() as conn:
        await conn.execute(
            upsert(
                conn,
                config,
                values,
                conflict_columns=["project_id"],
                update={k: v for k, v in values.items() if k != "project_id"},
            )
        )
        await _audit(
            access,
            conn,
            "push.auth.put",
            "push_config",
            access.project.id,
            {
                "mode": "jwt_secret" if body.jwt_secret else ("jwks" if body.jwks_url else "none"),
                "jwks_url": body.jwks_url,
            },
        )
    userauth.forget_config(access.ctx, access.project.id)  # after the commit: no stale re-read
    return await get_auth_config(access)


# --- sending --------------------------------------------------------------------------------


def send_view(send: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "status",
        "source",
        "campaign",
        "category",
        "template",
        "target",
        "payload",
        "variables",
        "schedule",
        "idempotency_key",
        "recipients",
        "occurrences",
        "next_run_at",
        "created_by",
        "created_at",
        "finished_at",
        "cancelled_at",
        "error",
    )
    return {k: send.get(k) for k in keys}


@router.post("/sends", status_code=202)
async def create_send(
    request: Request,
    body: SendRequest,
    access: Developer,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> dict[str, Any]:
    """Accept a notification for users, devices, tokens, topics or a segment — now, at a time,
    at a local time in each user's timezone, or recurring. Durable once answered."""
    if idempotency_key and not body.idempotency_key:
        body = body.model_copy(update={"idempotency_key": idempotency_key})
    if body.to.segment:
        sending.check_segment(body.to.segment)
    ctx = access.ctx
    async with ctx.db.transaction() as conn:
        send, created = await sending.create_send(
            conn, ctx, access.project.id, body, source="api", created_by=access.actor.label or access.actor.id
        )
        if created:
            await _audit(
                access,
                conn,
                "push.send.create",
                "push_send",
                send["id"],
                {"target": send["target"], "schedule": send["schedule"], "campaign": send["campaign"]},
            )
    if created:
        sending.wake_worker(ctx)
    return {**send_view(send), "duplicate": not created}


@router.get("/sends")
async def list_sends(
    access: Viewer,
    page: Paging,
    status: Annotated[str | None, Query(pattern="^(queued|scheduled|recurring|done|cancelled|failed)$")] = None,
) -> dict[str, Any]:
    """Sends, newest first; `status=scheduled` / `recurring` lists what is still to come."""
    stmt = select(sends).where(sends.c.project_id == access.project.id)
    if status:
        stmt = stmt.where(sends.c.status == status)
    after = page.after_int()
    if after is not None:
        stmt = stmt.where(sends.c.id < after)
    async with access.ctx.db.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(stmt.order_by(sends.c.id.desc()).limit(page.limit + 1))]
    result = page.page(rows, lambda r: r["id"])
    result["data"] = [send_view(r) for r in result["data"]]
    return result


@router.get("/sends/{send_id}")
async def get_send(send_id: int, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        send = await sending.get_send(conn, access.project.id, send_id)
        counts = await history.status_counts(conn, send_id)
        funnel = await push_analytics.send_funnel(conn, access.project.id, send_id)
    return {**send_view(send), "messages": counts, "funnel": funnel}


@router.delete("/sends/{send_id}")
async def cancel_send(send_id: int, access: Developer) -> dict[str, Any]:
    """Cancel a scheduled or recurring send; queued messages are dropped (seed cancelNotification)."""
    async with access.ctx.db.transaction() as conn:
        send, dropped = await sending.cancel_send(conn, access.project.id, send_id)
        await _audit(access, conn, "push.send.cancel", "push_send", send_id, {"dropped_messages": dropped})
    return {**send_view(send), "dropped_messages": dropped}


# --- messages -------------------------------------------------------------------------------


@router.get("/messages")
async def list_messages(
    access: Viewer,
    page: Paging,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
    send_id: int | None = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
) -> dict[str, Any]:
    """Message search (by user, send or status), newest first."""
    stmt = select(messages).where(messages.c.project_id == access.project.id)
    if user_id is not None:
        stmt = stmt.where(messages.c.user_id == user_id)
    if send_id is not None:
        stmt = stmt.where(messages.c.send_id == send_id)
    if status:
        stmt = stmt.where(messages.c.status == status)
    after = page.after()
    if after:
        try:
            ts_raw, mid = after.split("|", 1)
            ts = datetime.fromisoformat(ts_raw)
        except ValueError:
            raise BadRequest("invalid cursor") from None
        stmt = stmt.where(or_(messages.c.created_at < ts, and_(messages.c.created_at == ts, messages.c.id < mid)))
    stmt = stmt.order_by(messages.c.created_at.desc(), messages.c.id.desc()).limit(page.limit + 1)
    async with access.ctx.db.connect() as conn:
        rows = [history.message_view(dict(r._mapping)) for r in await conn.execute(stmt)]
    return page.page(rows, lambda r: f"{r['created_at'].isoformat()}|{r['id']}")


@router.get("/messages/{message_id}")
async def get_message(message_id: str, access: Viewer) -> dict[str, Any]:
    """One message with its full history (queued, decisions, provider answers, opens)."""
    async with access.ctx.db.connect() as conn:
        return await history.message_with_history(conn, access.project.id, message_id)


# --- event rules and events -------------------------------------------------------------------


@router.get("/rules")
async def list_rules(access: Viewer, page: Paging) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await rules_svc.list_rules(conn, access.project.id)
    after = page.after()
    rows = [r for r in rows if not after or r["name"] > after]
    return page.page(rows[: page.limit + 1], lambda r: r["name"])


@router.put("/rules/{name}")
async def put_rule(name: Annotated[str, Path(max_length=100)], body: RuleBody, access: Developer) -> dict[str, Any]:
    """A domain event (e.g. ``community.comment_created``) becomes a templated notification to
    the user named by ``recipient_field``, with optional delay, digest window and deep link."""
    async with access.ctx.db.transaction() as conn:
        rule = await rules_svc.put_rule(conn, access.project.id, name, body.model_dump())
        await _audit(access, conn, "push.rule.put", "push_rule", name, body.model_dump())
    return rule


@router.delete("/rules/{name}", status_code=204)
async def delete_rule(name: str, access: Developer) -> None:
    async with access.ctx.db.transaction() as conn:
        await rules_svc.delete_rule(conn, access.project.id, name)
        await _audit(access, conn, "push.rule.delete", "push_rule", name)


@router.post("/events", status_code=202)
async def post_event(
    body: EventBody,
    access: Developer,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> dict[str, Any]:
    """The app backend reports a domain event; matching rules turn it into sends."""
    async with access.ctx.db.transaction() as conn:
        result = await rules_svc.handle_event(
            conn,
            access.ctx,
            access.project.id,
            body.event,
            body.properties,
            body.idempotency_key or idempotency_key,
            created_by=access.actor.label or access.actor.id,
        )
    if result["sends"]:
        sending.wake_worker(access.ctx)
    return result


# --- deep links -------------------------------------------------------------------------------


@router.get("/links/routes")
async def list_link_routes(access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return {"data": await links.list_routes(conn, access.project.id)}


@router.put("/links/routes/{name}")
async def put_link_route(name: str, body: LinkRouteBody, access: Developer) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        route = await links.put_route(conn, access.project.id, name, body.template)
        await _audit(access, conn, "push.link_route.put", "push_link_route", name, {"template": body.template})
    return route


@router.delete("/links/routes/{name}", status_code=204)
async def delete_link_route(name: str, access: Developer) -> None:
    async with access.ctx.db.transaction() as conn:
        await links.delete_route(conn, access.project.id, name)
        await _audit(access, conn, "push.link_route.delete", "push_link_route", name)


@router.post("/links")
async def generate_link(body: LinkGenerate, access: Developer) -> dict[str, Any]:
    """A signed, expiring deep link for a route and its parameters, with tracking parameters."""
    async with access.ctx.db.connect() as conn:
        return await links.generate(
            conn,
            access.ctx,
            access.project.id,
            body.route,
            body.params,
            campaign=body.campaign,
            source=body.source,
            ttl_hours=body.ttl_hours,
        )


# --- analytics ---------------------------------------------------------------------------------


@router.get("/analytics")
async def get_analytics(
    access: Viewer,
    group_by: Annotated[str, Query(pattern="^(campaign|category|template)$")] = "campaign",
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """The funnel sent → delivered → opened per campaign, category or template, with open
    rate, median time to open, opt-outs (categories) and link engagement (campaigns)."""
    if since is not None and since.tzinfo is None:
        raise BadRequest("since needs a timezone offset, e.g. 2026-01-01T00:00:00Z")
    async with access.ctx.db.connect() as conn:
        return {
            "group_by": group_by,
            "total": await push_analytics.overview(conn, access.project.id, since),
            "data": await push_analytics.funnel(conn, access.project.id, group_by, since, limit),
        }


@router.get("/health")
async def get_provider_health(access: Viewer) -> dict[str, Any]:
    """Per provider: circuit state, credentials configured or paused, sent/failed in 24 h."""
    from datetime import timedelta

    from shipyard.core.db import utcnow

    async with access.ctx.db.connect() as conn:
        since = utcnow() - timedelta(hours=24)
        return {"data": await push_analytics.provider_health(conn, access.ctx, access.project.id, since)}
