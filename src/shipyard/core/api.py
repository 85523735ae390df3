"""Core admin API: projects, keys, members."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from shipyard.core import audit, auth, projects
from shipyard.core.auth import Role
from shipyard.core.db import utcnow
from shipyard.core.deps import Admin, AnyUser, Ctx, Forbidden, IdPath, Owner, Viewer
from shipyard.core.errors import NotFound
from shipyard.core.models import memberships, users
from shipyard.core.pagination import Page, Paging

router = APIRouter(tags=["projects"])


class ProjectCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(None, max_length=64)


class ProjectOut(BaseModel):
    id: int
    slug: str
    name: str
    environments: list[str] = []
    public_key: str
    dsn: str
    write_key: str
    manifest_url: str


class ProjectCreated(ProjectOut):
    secret_key: str = Field(description="Shown once; store it now.")


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: str = Field("admin", pattern="^(viewer|developer|admin)$")
    scopes: list[str] = Field(default_factory=list, max_length=20)


class KeyOut(BaseModel):
    id: int
    kind: str
    name: str
    prefix: str
    role: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    public_key: str | None


class KeyCreated(BaseModel):
    id: int
    secret_key: str = Field(description="Shown once; store it now.")


class MemberSet(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    role: str = Field(pattern="^(viewer|developer|admin|owner)$")


class ProjectSummary(BaseModel):
    id: int
    slug: str
    name: str
    role: str


class MemberOut(BaseModel):
    user_id: int
    email: str
    role: str


@router.get("/projects", response_model=Page[ProjectSummary])
async def list_projects(principal: AnyUser, ctx: Ctx, page: Paging) -> dict[str, Any]:
    """Projects the caller can see: a key sees its own project, a user their memberships."""
    after = page.after_int()
    async with ctx.db.connect() as conn:
        if principal.kind == "key":
            project = await projects.get_project(conn, principal.project_id or 0)
            found = [(project.id, project.slug, project.name, principal.role.name)]
            found = [f for f in found if after is None or f[0] > after]
        else:
            rows = await auth.projects_of(conn, int(principal.id), after_id=after, limit=page.limit + 1)
            found = [(r.id, r.slug, r.name, r.role or "owner") for r in rows]
    listed = [{"id": i, "slug": slug, "name": name, "role": role} for i, slug, name, role in found]
    return page.page(listed, lambda r: r["id"])


@router.post("/projects", response_model=ProjectCreated, status_code=201)
async def create_project(body: ProjectCreate, principal: AnyUser, ctx: Ctx) -> dict[str, Any]:
    if not principal.is_instance_admin:
        raise Forbidden("only instance admins create projects")
    async with ctx.db.transaction() as conn:
        created = await projects.create_project(conn, body.name, slug=body.slug, public_base=ctx.settings.public_base)
        await auth.set_role(conn, int(principal.id), created["id"], Role.owner)
        await audit.record(
            conn,
            ctx,
            audit.Actor("user", principal.id, label=principal.label),
            "project.create",
            project_id=created["id"],
            resource_type="project",
            resource_id=created["id"],
            details={"name": body.name, "slug": created["slug"]},
        )
        created["environments"] = list(projects.DEFAULT_ENVIRONMENTS)
    return created


@router.get("/projects/{project}", response_model=ProjectOut)
async def get_project(access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return await projects.describe(conn, access.project, access.ctx.settings.public_base)


@router.get("/projects/{project}/keys", response_model=Page[KeyOut])
async def list_keys(access: Admin, page: Paging) -> dict[str, Any]:
    """The project's keys; secret keys by prefix only (their value was shown once)."""
    async with access.ctx.db.connect() as conn:
        rows = await auth.list_keys(conn, access.project.id, after_id=page.after_int(), limit=page.limit + 1)
    return page.page(rows, lambda r: r["id"])


@router.post("/projects/{project}/keys", response_model=KeyCreated, status_code=201)
async def create_key(body: KeyCreate, access: Admin) -> dict[str, Any]:
    ctx = access.ctx
    async with ctx.db.transaction() as conn:
        key_id, value = await auth.create_secret_key(
            conn, access.project.id, body.name, role=Role.parse(body.role), scopes=body.scopes
        )
        await audit.record(
            conn,
            ctx,
            access.actor,
            "key.create",
            project_id=access.project.id,
            resource_type="api_key",
            resource_id=key_id,
            details={"name": body.name, "role": body.role, "scopes": body.scopes},
        )
    return {"id": key_id, "secret_key": value}


@router.post("/projects/{project}/keys/{key_id}/rotate", response_model=KeyCreated, status_code=201)
async def rotate_key(key_id: IdPath, access: Admin) -> dict[str, Any]:
    ctx = access.ctx
    overlap = timedelta(hours=ctx.settings.key_rotation_overlap_hours)
    async with ctx.db.transaction() as conn:
        new_id, value = await auth.rotate_secret_key(conn, access.project.id, key_id, overlap)
        await audit.record(
            conn,
            ctx,
            access.actor,
            "key.rotate",
            project_id=access.project.id,
            resource_type="api_key",
            resource_id=key_id,
            details={"replacement_id": new_id, "overlap_hours": ctx.settings.key_rotation_overlap_hours},
        )
    ctx.extras["key_cache"].clear()
    return {"id": new_id, "secret_key": value}


@router.delete("/projects/{project}/keys/{key_id}", status_code=204)
async def revoke_key(key_id: IdPath, access: Admin) -> None:
    ctx = access.ctx
    async with ctx.db.transaction() as conn:
        if not await auth.revoke_key(conn, access.project.id, key_id):
            raise NotFound("key")
        await audit.record(
            conn,
            ctx,
            access.actor,
            "key.revoke",
            project_id=access.project.id,
            resource_type="api_key",
            resource_id=key_id,
        )
    ctx.extras["key_cache"].clear()


@router.get("/projects/{project}/members", response_model=Page[MemberOut])
async def list_members(access: Viewer, page: Paging) -> dict[str, Any]:
    """People with a role on the project."""
    query = (
        select(users.c.id, users.c.email, memberships.c.role)
        .join(memberships, memberships.c.user_id == users.c.id)
        .where(memberships.c.project_id == access.project.id)
    )
    after = page.after_int()
    if after is not None:
        query = query.where(users.c.id > after)
    async with access.ctx.db.connect() as conn:
        rows = (await conn.execute(query.order_by(users.c.id).limit(page.limit + 1))).all()
    return page.page([{"user_id": r.id, "email": r.email, "role": r.role} for r in rows], lambda r: r["user_id"])


@router.put("/projects/{project}/members", status_code=204)
async def set_member(body: MemberSet, access: Owner) -> None:
    ctx = access.ctx
    async with ctx.db.transaction() as conn:
        user = await auth.get_user_by_email(conn, body.email)
        if user is None:
            raise NotFound("user")
        await auth.set_role(conn, user.id, access.project.id, Role.parse(body.role))
        await audit.record(
            conn,
            ctx,
            access.actor,
            "member.set_role",
            project_id=access.project.id,
            resource_type="user",
            resource_id=user.id,
            details={"email": user.email, "role": body.role},
        )


class UserOut(BaseModel):
    id: int
    email: str
    is_instance_admin: bool
    totp_enabled: bool
    locked: bool
    created_at: datetime
    last_login_at: datetime | None


@router.get("/users", response_model=Page[UserOut], tags=["users"])
async def list_users(principal: AnyUser, ctx: Ctx, page: Paging) -> dict[str, Any]:
    """Every dashboard user (instance admins only)."""
    if not principal.is_instance_admin:
        raise Forbidden("only instance admins list users (log in to the dashboard as one)")
    query = select(users)
    after = page.after_int()
    if after is not None:
        query = query.where(users.c.id > after)
    async with ctx.db.connect() as conn:
        rows = (await conn.execute(query.order_by(users.c.id).limit(page.limit + 1))).all()
    now = utcnow()
    listed = [
        {
            "id": r.id,
            "email": r.email,
            "is_instance_admin": r.is_instance_admin,
            "totp_enabled": r.totp_secret is not None,
            "locked": r.locked_until is not None and r.locked_until > now,
            "created_at": r.created_at,
            "last_login_at": r.last_login_at,
        }
        for r in rows
    ]
    return page.page(listed, lambda r: r["id"])
