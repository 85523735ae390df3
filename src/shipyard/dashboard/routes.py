"""Dashboard shell routes: login (with lockout and optional TOTP), logout, project pages."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Annotated, Any

import pyotp
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select, update

from shipyard.core import alerts, audit, auth, projects
from shipyard.core.auth import Role
from shipyard.core.context import Context
from shipyard.core.deps import SESSION_COOKIE, ctx_dependency
from shipyard.core.models import audit_log, login_sessions, users
from shipyard.dashboard.web import (
    LoginRequired,
    PageAccess,
    PageForbidden,
    client_info,
    environment,
    login_redirect_url,
    page_access,
    render,
    verify_csrf,
)

router = APIRouter(include_in_schema=False)
PRE_CSRF_COOKIE = "shipyard_login_csrf"
Viewer = Annotated[PageAccess, Depends(page_access(Role.viewer))]
Admin = Annotated[PageAccess, Depends(page_access(Role.admin))]
CtxDep = Annotated[Context, Depends(ctx_dependency)]


def _secure_cookies(ctx: Context) -> bool:
    return ctx.settings.mode == "production" or ctx.settings.public_url.startswith("https://")


def _safe_next(next_path: str | None) -> str:
    # Only same-site paths: never redirect a fresh login to another origin.
    if next_path and next_path.startswith("/") and not next_path.startswith("//"):
        return next_path
    return "/"


def _login_page(
    request: Request,
    *,
    error: str | None = None,
    next_path: str = "/",
    needs_totp: bool = False,
    email: str = "",
    status: int = 200,
) -> HTMLResponse:
    token = request.cookies.get(PRE_CSRF_COOKIE) or secrets.token_urlsafe(24)
    html = (
        environment()
        .get_template("login.html")
        .render(
            error=error,
            next=next_path,
            csrf_token=token,
            needs_totp=needs_totp,
            email=email,
            access=None,
            project=None,
            nav=[],
            projects=[],
        )
    )
    response = HTMLResponse(html, status_code=status)
    response.set_cookie(PRE_CSRF_COOKIE, token, httponly=True, samesite="strict", max_age=3600)
    return response


@router.get("/login")
async def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return _login_page(request, next_path=_safe_next(next))


@router.post("/login")
async def login(
    request: Request,
    ctx: CtxDep,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1000)],
    csrf_token: Annotated[str, Form(max_length=100)],
    next: Annotated[str, Form(max_length=2000)] = "/",
    totp: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    expected = request.cookies.get(PRE_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, csrf_token):
        return _login_page(request, error="The form expired; please try again.", status=400)
    ip, user_agent = client_info(request)
    settings = ctx.settings
    async with ctx.db.transaction() as conn:
        result = await auth.check_login(
            conn,
            email,
            password,
            max_failures=settings.login_max_failures,
            lockout=timedelta(minutes=settings.login_lockout_minutes),
        )
        if result.error:
            actor = audit.Actor("user", None, ip=ip, user_agent=user_agent, label=email[:200])
            await audit.record(conn, ctx, actor, "auth.login", outcome="failure", details={"reason": result.error})
    if result.error:
        return _login_page(request, error=result.error, next_path=_safe_next(next), email=email, status=401)
    user = result.user
    needs_totp = user.totp_secret is not None
    if needs_totp:
        secret = ctx.box.decrypt(user.totp_secret)
        if not totp:
            return _login_page(
                request,
                next_path=_safe_next(next),
                needs_totp=True,
                email=email,
                status=401,
                error="Enter the code from your authenticator app.",
            )
        if not pyotp.TOTP(secret).verify(totp, valid_window=1):
            return _login_page(
                request,
                next_path=_safe_next(next),
                needs_totp=True,
                email=email,
                status=401,
                error="That code is not valid.",
            )
    must_enroll = False
    if settings.require_totp_for_admins and not needs_totp:
        async with ctx.db.connect() as conn:
            rows = await auth.projects_of(conn, user.id)
        must_enroll = user.is_instance_admin or any(r.role in ("owner", "admin") for r in rows)
    async with ctx.db.transaction() as conn:
        token, _csrf = await auth.create_session(
            conn,
            user.id,
            timedelta(hours=settings.session_ttl_hours),
            mfa_passed=not must_enroll,
            ip=ip,
            user_agent=user_agent,
        )
        await audit.record(
            conn,
            ctx,
            audit.Actor("user", str(user.id), ip=ip, user_agent=user_agent, label=user.email),
            "auth.login",
            details={"totp": needs_totp},
        )
    target = "/account/totp" if must_enroll else _safe_next(next)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=_secure_cookies(ctx),
        max_age=settings.session_ttl_hours * 3600,
    )
    response.delete_cookie(PRE_CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, ctx: CtxDep, csrf_token: Annotated[str, Form(max_length=100)] = "") -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        async with ctx.db.transaction() as conn:
            session = await auth.session_user(conn, token)
            if session is not None and secrets.compare_digest(session.csrf_token, csrf_token):
                await auth.end_session(conn, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/")
async def home(request: Request, ctx: CtxDep) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    async with ctx.db.connect() as conn:
        session = await auth.session_user(conn, token) if token else None
        if session is None or not session.mfa_passed:
            return RedirectResponse("/login", status_code=303)
        rows = await auth.projects_of(conn, session.user_id)
    if not rows:
        raise PageForbidden("you are not a member of any project yet; ask an owner to add you")
    return RedirectResponse(f"/projects/{rows[0].slug}", status_code=303)


# --- TOTP enrolment -------------------------------------------------------------------------


async def _session_any_mfa(request: Request, ctx: Context) -> Any:
    token = request.cookies.get(SESSION_COOKIE)
    async with ctx.db.connect() as conn:
        session = await auth.session_user(conn, token) if token else None
    if session is None:
        raise LoginRequired("/account/totp")
    return session


@router.get("/account/totp")
async def totp_form(request: Request, ctx: CtxDep) -> HTMLResponse:
    session = await _session_any_mfa(request, ctx)
    secret = pyotp.random_base32()
    uri = pyotp.TOTP(secret).provisioning_uri(name=session.email, issuer_name="Shipyard")
    html = (
        environment()
        .get_template("totp.html")
        .render(
            secret=secret,
            uri=uri,
            csrf_token=session.csrf_token,
            error=None,
            access=None,
            project=None,
            nav=[],
            projects=[],
            required=not session.mfa_passed,
        )
    )
    return HTMLResponse(html)


@router.post("/account/totp")
async def totp_enroll(
    request: Request,
    ctx: CtxDep,
    secret: Annotated[str, Form(max_length=64)],
    code: Annotated[str, Form(max_length=10)],
    csrf_token: Annotated[str, Form(max_length=100)],
) -> Response:
    session = await _session_any_mfa(request, ctx)
    if not secrets.compare_digest(session.csrf_token, csrf_token):
        raise PageForbidden("the form expired; reload the page")
    if not pyotp.TOTP(secret).verify(code, valid_window=1):
        uri = pyotp.TOTP(secret).provisioning_uri(name=session.email, issuer_name="Shipyard")
        html = (
            environment()
            .get_template("totp.html")
            .render(
                secret=secret,
                uri=uri,
                csrf_token=session.csrf_token,
                error="That code is not valid; try the next one.",
                access=None,
                project=None,
                nav=[],
                projects=[],
                required=not session.mfa_passed,
            )
        )
        return HTMLResponse(html, status_code=400)
    async with ctx.db.transaction() as conn:
        await conn.execute(
            update(users).where(users.c.id == session.user_id).values(totp_secret=ctx.box.encrypt(secret))
        )
        await conn.execute(
            update(login_sessions).where(login_sessions.c.id_hash == session.id_hash).values(mfa_passed=True)
        )
        await audit.record(
            conn,
            ctx,
            audit.Actor("user", str(session.user_id), label=session.email),
            "auth.totp_enroll",
            resource_type="user",
            resource_id=session.user_id,
        )
    return RedirectResponse("/", status_code=303)


# --- project pages ------------------------------------------------------------------------------


@router.get("/projects/{project}")
async def overview(request: Request, access: Viewer) -> HTMLResponse:
    ctx = access.ctx
    async with ctx.db.connect() as conn:
        described = await projects.describe(conn, access.project, ctx.settings.public_base)
        firing = await alerts.list_alerts(conn, access.project.id, status="firing", limit=10)
        recent = (
            await conn.execute(
                select(audit_log)
                .where(audit_log.c.project_id == access.project.id)
                .order_by(audit_log.c.seq.desc())
                .limit(10)
            )
        ).all()
    return await render(request, access, "overview.html", described=described, firing=firing, recent=recent)


@router.get("/projects/{project}/audit")
async def audit_page(request: Request, access: Viewer, action: str = "", before: int | None = None) -> HTMLResponse:
    ctx = access.ctx
    query = select(audit_log).where(audit_log.c.project_id == access.project.id)
    if action:
        query = query.where(audit_log.c.action.startswith(action))
    if before:
        query = query.where(audit_log.c.seq < before)
    async with ctx.db.connect() as conn:
        rows = (await conn.execute(query.order_by(audit_log.c.seq.desc()).limit(101))).all()
    more = len(rows) > 100
    rows = rows[:100]
    return await render(
        request, access, "audit.html", rows=rows, action=action, next_before=rows[-1].seq if more and rows else None
    )


@router.get("/projects/{project}/alerts")
async def alerts_page(request: Request, access: Viewer, status: str = "") -> HTMLResponse:
    async with access.ctx.db.connect() as conn:
        rows = await alerts.list_alerts(conn, access.project.id, status=status or None, limit=100)
    return await render(request, access, "alerts.html", rows=rows, status=status)


@router.post("/projects/{project}/alerts/{alert_id}/resolve")
async def resolve_alert(request: Request, alert_id: int, access: Admin) -> Response:
    await verify_csrf(request, access)
    ctx = access.ctx
    from shipyard.core.models import alerts as alerts_table

    async with ctx.db.transaction() as conn:
        key = (
            await conn.execute(
                select(alerts_table.c.dedup_key).where(
                    alerts_table.c.id == alert_id, alerts_table.c.project_id == access.project.id
                )
            )
        ).scalar()
        if key is not None and await alerts.resolve_alert(conn, ctx, project_id=access.project.id, dedup_key=key):
            await audit.record(
                conn,
                ctx,
                access.actor,
                "alert.resolve",
                project_id=access.project.id,
                resource_type="alert",
                resource_id=alert_id,
            )
    return RedirectResponse(f"/projects/{access.project.slug}/alerts", status_code=303)


def install(app: FastAPI) -> None:
    """Mount the shell, its static files, and the login redirect / error pages."""
    from pathlib import Path

    from fastapi.responses import JSONResponse

    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static")
    app.include_router(router)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(login_redirect_url(exc.next_path), status_code=303)

    @app.exception_handler(PageForbidden)
    async def _forbidden(request: Request, exc: PageForbidden) -> Response:
        if "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=403)
        html = (
            environment()
            .get_template("error.html")
            .render(message=exc.message, access=None, project=None, nav=[], projects=[])
        )
        return HTMLResponse(html, status_code=403)
