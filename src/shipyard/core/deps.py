"""FastAPI dependencies shared by every feature's routes.

* :func:`project_access` guards every admin route under ``/api/v1/projects/{project}``:
  a secret key of that project, or a dashboard session of a member, with at least the
  required role. Public keys never pass.
* :func:`client_project` resolves the project of a client-facing request from its
  public key; features pass in how their protocol carries the key.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shipyard.core import auth, projects
from shipyard.core.audit import Actor
from shipyard.core.auth import Principal, Role
from shipyard.core.context import Context
from shipyard.core.errors import ApiError

SESSION_COOKIE = "shipyard_session"
_bearer = HTTPBearer(auto_error=False, description="A project's secret key: `Bearer sk_…`")


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


Ctx = Annotated[Context, Depends(get_ctx)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def actor_for(request: Request, principal: Principal | None = None) -> Actor:
    headers = request.headers
    request_id = getattr(request.state, "request_id", None) or headers.get("x-request-id")
    if principal is None:
        return Actor(
            type="anonymous", ip=client_ip(request), user_agent=headers.get("user-agent"), request_id=request_id
        )
    return Actor(
        type=principal.kind,
        id=principal.id,
        label=principal.label,
        ip=client_ip(request),
        user_agent=headers.get("user-agent"),
        request_id=request_id,
    )


class Unauthorized(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, "forbidden", message)


@dataclass(frozen=True)
class Access:
    """What an admin route handler gets: the caller, the project, and an audit actor."""

    principal: Principal
    project: projects.Project
    actor: Actor
    ctx: Context


async def authenticate(
    request: Request, ctx: Context, credentials: HTTPAuthorizationCredentials | None
) -> tuple[str, Any]:
    """Identify the caller: ("key", key row) or ("session", session row)."""
    if credentials is not None:
        token = credentials.credentials
        if token.startswith(auth.PUBLIC_PREFIX):
            raise Forbidden("a public key cannot use the admin API; use a secret key (sk_…)")
        if not token.startswith(auth.SECRET_PREFIX):
            raise Unauthorized("unrecognised API key; expected a secret key (sk_…)")
        async with ctx.db.connect() as conn:
            row = await ctx.extras["key_cache"].lookup(conn, "secret", token)
        if row is None:
            raise Unauthorized("invalid, expired or revoked secret key")
        if ctx.extras["key_cache"].should_touch(row.id):
            async with ctx.db.transaction() as conn:
                await auth.touch_key(conn, row.id)
        return "key", row
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        async with ctx.db.connect() as conn:
            session = await auth.session_user(conn, cookie)
        if session is not None:
            # Cookies ride along on cross-site requests; a CSRF token in a header cannot.
            unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
            if unsafe and request.headers.get("x-csrf-token") != session.csrf_token:
                raise Forbidden("missing or wrong X-CSRF-Token header for a cookie-authenticated request")
            return "session", session
    raise Unauthorized("authentication required: send `Authorization: Bearer sk_…` or log in")


def project_access(role: Role = Role.viewer, scope: str | None = None) -> Callable[..., Awaitable[Access]]:
    """Dependency for admin routes on one project, requiring at least ``role``."""

    async def dependency(
        request: Request,
        ctx: Ctx,
        project: Annotated[str, Path(description="Project id or slug", max_length=64)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Access:
        kind, who = await authenticate(request, ctx, credentials)
        async with ctx.db.connect() as conn:
            target = await projects.get_project(conn, project)
            if kind == "key":
                if who.project_id != target.id:
                    raise Forbidden("this key belongs to another project")
                principal = Principal(
                    "key", str(who.id), f"key:{who.display_prefix}", Role[who.role], target.id, tuple(who.scopes)
                )
            else:
                member_role = await auth.role_of(conn, who.user_id, target.id)
                if who.is_instance_admin:
                    member_role = Role.owner
                if member_role is None:
                    raise Forbidden("you are not a member of this project")
                principal = Principal(
                    "user", str(who.user_id), who.email, member_role, target.id, is_instance_admin=who.is_instance_admin
                )
        if principal.role < role:
            raise Forbidden(f"this action needs the {role.name} role or higher; you have {principal.role.name}")
        if not principal.allows_scope(scope):
            raise Forbidden(f"this key is not scoped for {scope}")
        request.state.principal = principal
        return Access(principal, target, actor_for(request, principal), ctx)

    return dependency


async def user_access(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Dependency for admin routes that are not about one project (list/create projects)."""
    kind, who = await authenticate(request, ctx, credentials)
    if kind == "key":
        return Principal(
            "key", str(who.id), f"key:{who.display_prefix}", Role[who.role], who.project_id, tuple(who.scopes)
        )
    return Principal("user", str(who.user_id), who.email, Role.viewer, None, is_instance_admin=who.is_instance_admin)


# Numeric ids in paths: bounded to what a BIGINT column can hold, so a client sending
# 10^30 gets a 422 from validation instead of reaching the database driver.
MAX_ID = 2**63 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Numeric id")]

Viewer = Annotated[Access, Depends(project_access(Role.viewer))]
Developer = Annotated[Access, Depends(project_access(Role.developer))]
Admin = Annotated[Access, Depends(project_access(Role.admin))]
Owner = Annotated[Access, Depends(project_access(Role.owner))]
AnyUser = Annotated[Principal, Depends(user_access)]


async def client_project(ctx: Context, public_key: str | None) -> projects.Project:
    """Resolve the project for a client-facing request from its public key."""
    if not public_key:
        raise Unauthorized("missing public key")
    # Ingest endpoints call this for every request: answer from the caches without
    # opening a connection when both are fresh.
    cached_key = ctx.extras["key_cache"].cached("public", public_key)
    if cached_key is not None:
        hit = ctx.extras.get("project_cache", {}).get(cached_key.project_id)
        if hit is not None and hit[0] >= time.monotonic():
            project: projects.Project = hit[1]
            return project
    async with ctx.db.connect() as conn:
        row = await ctx.extras["key_cache"].lookup(conn, "public", public_key)
        if row is None:
            raise Unauthorized("unknown or revoked public key")
        # Projects change rarely; a short TTL keeps settings edits visible within seconds.
        cache = ctx.extras.setdefault("project_cache", {})
        hit = cache.get(row.project_id)
        now = time.monotonic()
        if hit is None or hit[0] < now:
            hit = (now + 5.0, await projects.get_project(conn, row.project_id))
            cache[row.project_id] = hit
    return hit[1]
