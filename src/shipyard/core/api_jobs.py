"""Jobs admin API: see the queue, the dead letters, retry and cancel.

A project's admins see the jobs enqueued for their project; instance admins (dashboard
session) also see system jobs (audit checkpoints, pruning…) under ``/api/v1/jobs``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from sqlalchemy import select

from shipyard.core import audit, jobs
from shipyard.core.auth import Principal
from shipyard.core.context import Context
from shipyard.core.deps import Admin, AnyUser, Ctx, Forbidden, IdPath, actor_for
from shipyard.core.errors import Conflict, NotFound
from shipyard.core.models import jobs as jobs_table
from shipyard.core.pagination import Page, PageParams, Paging

router = APIRouter(tags=["jobs"])

JobStatus = Literal["queued", "running", "done", "dead", "cancelled"]


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    priority: int
    project_id: int | None
    attempts: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    finished_at: datetime | None
    locked_by: str | None
    last_error: str | None


class JobDetail(JobOut):
    payload: dict[str, Any]


_LIST_COLUMNS = [c for c in jobs_table.c if c.name not in ("payload", "idempotency_key", "locked_until")]


def _filtered(
    project_id: int | None, status: str | None, kind: str | None, after: int | None, limit: int, *, every: bool
) -> Any:
    query = select(*_LIST_COLUMNS)
    if not every:
        query = query.where(jobs_table.c.project_id == project_id)
    if status:
        query = query.where(jobs_table.c.status == status)
    if kind:
        # "push." lists every push job; "push.send" exactly that kind.
        query = query.where(jobs_table.c.kind.startswith(kind) if kind.endswith(".") else jobs_table.c.kind == kind)
    if after is not None:
        query = query.where(jobs_table.c.id < after)
    return query.order_by(jobs_table.c.id.desc()).limit(limit + 1)


async def _list(
    ctx: Context, project_id: int | None, status: str | None, kind: str | None, page: PageParams, *, every: bool
) -> dict[str, Any]:
    async with ctx.db.connect() as conn:
        rows = (
            await conn.execute(_filtered(project_id, status, kind, page.after_int(), page.limit, every=every))
        ).all()
    return page.page([dict(r._mapping) for r in rows], lambda r: r["id"])


async def _get(ctx: Context, job_id: int, project_id: int | None) -> dict[str, Any]:
    query = select(jobs_table).where(jobs_table.c.id == job_id)
    if project_id is not None:
        query = query.where(jobs_table.c.project_id == project_id)
    async with ctx.db.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound("job")
    return dict(row._mapping)


async def _act(ctx: Context, actor: audit.Actor, job_id: int, project_id: int | None, action: str) -> dict[str, Any]:
    """Retry (dead or cancelled → queued) or cancel (queued → cancelled), audited."""
    job = await _get(ctx, job_id, project_id)
    async with ctx.db.transaction() as conn:
        if action == "retry":
            changed = await jobs.retry_dead(conn, job_id)
            rule = "only dead or cancelled jobs can be retried"
        else:
            changed = await jobs.cancel(conn, job_id)
            rule = "only queued jobs can be cancelled"
        if not changed:
            raise Conflict(f"job {job_id} is {job['status']}; {rule}")
        await audit.record(
            conn,
            ctx,
            actor,
            f"job.{action}",
            project_id=job["project_id"],
            resource_type="job",
            resource_id=job_id,
            details={"kind": job["kind"], "previous_status": job["status"]},
        )
    return await _get(ctx, job_id, project_id)


StatusQuery = Annotated[JobStatus | None, Query(description="Only jobs in this state; `dead` lists the dead letters.")]
KindQuery = Annotated[
    str | None, Query(max_length=100, description="A job kind, or a prefix ending in `.` (e.g. `push.`).")
]


@router.get("/projects/{project}/jobs", response_model=Page[JobOut])
async def list_project_jobs(
    access: Admin, page: Paging, status: StatusQuery = None, kind: KindQuery = None
) -> dict[str, Any]:
    """The project's background jobs, newest first."""
    return await _list(access.ctx, access.project.id, status, kind, page, every=False)


@router.get("/projects/{project}/jobs/{job_id}", response_model=JobDetail)
async def get_project_job(job_id: IdPath, access: Admin) -> dict[str, Any]:
    return await _get(access.ctx, job_id, access.project.id)


@router.post("/projects/{project}/jobs/{job_id}/retry", response_model=JobDetail)
async def retry_project_job(job_id: IdPath, access: Admin) -> dict[str, Any]:
    """Queue a dead (or cancelled) job again with a fresh set of attempts."""
    return await _act(access.ctx, access.actor, job_id, access.project.id, "retry")


@router.post("/projects/{project}/jobs/{job_id}/cancel", response_model=JobDetail)
async def cancel_project_job(job_id: IdPath, access: Admin) -> dict[str, Any]:
    """Cancel a job that has not started yet."""
    return await _act(access.ctx, access.actor, job_id, access.project.id, "cancel")


# --- instance-wide (instance admins only) -------------------------------------------------------


def require_instance_admin(principal: Principal) -> None:
    if not principal.is_instance_admin:
        raise Forbidden("only instance admins see instance-wide data (log in to the dashboard as one)")


@router.get("/jobs", response_model=Page[JobOut])
async def list_all_jobs(
    principal: AnyUser,
    ctx: Ctx,
    page: Paging,
    status: StatusQuery = None,
    kind: KindQuery = None,
) -> dict[str, Any]:
    """Every job, system jobs included (instance admins)."""
    require_instance_admin(principal)
    return await _list(ctx, None, status, kind, page, every=True)


@router.post("/jobs/{job_id}/retry", response_model=JobDetail)
async def retry_any_job(job_id: IdPath, request: Request, principal: AnyUser, ctx: Ctx) -> dict[str, Any]:
    require_instance_admin(principal)
    return await _act(ctx, actor_for(request, principal), job_id, None, "retry")


@router.post("/jobs/{job_id}/cancel", response_model=JobDetail)
async def cancel_any_job(job_id: IdPath, request: Request, principal: AnyUser, ctx: Ctx) -> dict[str, Any]:
    require_instance_admin(principal)
    return await _act(ctx, actor_for(request, principal), job_id, None, "cancel")
