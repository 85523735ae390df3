"""Admin API under ``/api/v1/projects/{project}/analytics``.

Viewers read (events, users, insights, the tracking plan and its violations),
developers change the tracking plan and saved insights, admins change collection and
privacy settings, the suppression list, and export or erase a user. Every change is
written to the audit trail.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from shipyard.analytics import consent, insights, plan, rollups, service
from shipyard.analytics.config import AnalyticsConfig
from shipyard.analytics.models import events, ingest_counters, suppressions
from shipyard.analytics.sqlparts import DateRange, day_date
from shipyard.core import audit
from shipyard.core.auth import Role
from shipyard.core.deps import Access, project_access
from shipyard.core.errors import NotFound
from shipyard.core.pagination import Paging

router = APIRouter(prefix="/projects/{project}/analytics", tags=["analytics"])

Viewer = Annotated[Access, Depends(project_access(Role.viewer))]
Developer = Annotated[Access, Depends(project_access(Role.developer))]
Admin = Annotated[Access, Depends(project_access(Role.admin))]
UserId = Annotated[str, Query(min_length=1, max_length=200)]


async def _record(access: Access, conn: Any, action: str, resource_type: str, resource_id: Any, **details: Any) -> None:
    await audit.record(
        conn,
        access.ctx,
        access.actor,
        action,
        project_id=access.project.id,
        resource_type=resource_type,
        resource_id=resource_id,
        details=details,
    )


# --- settings ----------------------------------------------------------------------------------------


class SettingsPatch(BaseModel):
    consent_mode: Literal["off", "opt_out", "opt_in"] | None = None
    consent_action: Literal["drop", "anonymise"] | None = None
    ip_mode: Literal["full", "truncate", "none"] | None = None
    privacy_mode: bool | None = None
    session_timeout_minutes: int | None = Field(None, ge=1, le=24 * 60)
    raw_retention_days: int | None = Field(None, ge=1, le=3650)
    plan_enforcement: Literal["off", "record", "block"] | None = None


@router.get("/settings", response_model=AnalyticsConfig, summary="Collection, privacy and plan settings")
async def get_settings(access: Viewer) -> AnalyticsConfig:
    async with access.ctx.db.connect() as conn:
        return await service.get_config(conn, access.project.id)


@router.patch("/settings", response_model=AnalyticsConfig, summary="Change collection and privacy settings")
async def patch_settings(body: SettingsPatch, access: Admin) -> AnalyticsConfig:
    changes = body.model_dump(exclude_unset=True)
    async with access.ctx.db.transaction() as conn:
        updated, diff = await service.update_config(conn, access.ctx, access.project.id, changes)
        await _record(access, conn, "analytics.settings.update", "project", access.project.id, changes=diff)
    return updated


# --- raw events and ingest statistics ------------------------------------------------------------------


@router.get("/events", summary="Raw events, newest first")
async def list_events(
    access: Viewer,
    page: Paging,
    event: Annotated[str | None, Query(max_length=200)] = None,
    user: Annotated[str | None, Query(max_length=200, description="A user id or anonymous id")] = None,
) -> dict[str, Any]:
    query = select(events).where(events.c.project_id == access.project.id)
    after = page.after_int()
    if after is not None:
        query = query.where(events.c.id < after)
    if event:
        query = query.where(events.c.event == event)
    async with access.ctx.db.connect() as conn:
        if user:
            query = query.where(events.c.user_key == await service.canonical_user(conn, access.project.id, user))
        rows = (await conn.execute(query.order_by(events.c.id.desc()).limit(page.limit + 1))).all()
    data = [{"id": r.id, "user_key": r.user_key, **service._event_dict(r)} for r in rows]
    return page.page(data, lambda r: r["id"])


@router.get("/ingest-stats", summary="Messages not stored as sent, by reason and day")
async def ingest_stats(access: Viewer, range_: Annotated[DateRange, Depends()]) -> dict[str, Any]:
    first, last = range_.days()
    async with access.ctx.db.connect() as conn:
        rows = await conn.execute(
            select(ingest_counters.c.day, ingest_counters.c.outcome, ingest_counters.c.count.label("n"))
            .where(
                ingest_counters.c.project_id == access.project.id,
                ingest_counters.c.day >= first,
                ingest_counters.c.day <= last,
            )
            .order_by(ingest_counters.c.day, ingest_counters.c.outcome)
        )
        totals: dict[str, int] = {}
        days = []
        for r in rows:
            totals[r.outcome] = totals.get(r.outcome, 0) + int(r.n)
            days.append({"day": day_date(r.day).isoformat(), "outcome": r.outcome, "count": int(r.n)})
        stored = (
            await conn.execute(
                select(func.count()).where(
                    events.c.project_id == access.project.id,
                    events.c.received_ms >= first * 86_400_000,
                    events.c.received_ms < (last + 1) * 86_400_000,
                )
            )
        ).scalar_one()
    return {"stored": int(stored), "not_stored": totals, "by_day": days}


# --- users, consent, suppressions, data-subject requests ----------------------------------------------


@router.get("/users", summary="People (identified and anonymous), by user key")
async def list_users(access: Viewer, page: Paging, identified: bool | None = None) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await service.list_users(
            conn, access.project.id, after=page.after(), limit=page.limit + 1, identified=identified
        )
    return page.page(rows, lambda r: r["user_key"])


@router.get("/users/profile", summary="One user's properties, device, aliases, consent")
async def user_profile(access: Viewer, user_id: UserId) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return await service.user_profile(conn, access.project.id, user_id)


@router.get("/users/consent", summary="A user's consent by purpose, with its history")
async def user_consent(access: Viewer, user_id: UserId) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        key = await service.canonical_user(conn, access.project.id, user_id)
        return {
            "user_key": key,
            "consent": await consent.current_consent(conn, access.project.id, key),
            "history": await consent.consent_history_of(conn, access.project.id, key),
        }


@router.get("/users/export", summary="Everything stored about a user (data-subject access)")
async def export_user(access: Admin, user_id: UserId) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        exported = await service.export_user(conn, access.project.id, user_id)
        await _record(
            access,
            conn,
            "analytics.user.export",
            "analytics_user",
            exported["user_key"],
            events=len(exported["events"]),
        )
    return exported


@router.delete("/users", summary="Erase everything stored about a user (data-subject erasure)")
async def erase_user(access: Admin, user_id: UserId) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        key = await service.canonical_user(conn, access.project.id, user_id)
        erased = await service.erase_user(conn, access.project.id, user_id)
        await _record(access, conn, "analytics.user.erase", "analytics_user", key, rows=erased)
    access.ctx.extras.get("analytics_link_cache", {}).clear()
    return {"user_key": key, "rows_erased": erased}


class SuppressionIn(BaseModel):
    user_id: str = Field(min_length=1, max_length=200, description="A user id or anonymous id")
    reason: str | None = Field(None, max_length=200)


@router.get("/suppressions", summary="Ids whose events are not collected")
async def list_suppressions(access: Viewer, page: Paging) -> dict[str, Any]:
    query = select(suppressions).where(suppressions.c.project_id == access.project.id)
    after = page.after()
    if after is not None:
        query = query.where(suppressions.c.user_key > after)
    async with access.ctx.db.connect() as conn:
        rows = await conn.execute(query.order_by(suppressions.c.user_key).limit(page.limit + 1))
        data = [{"user_id": r.user_key, "reason": r.reason, "created_at": r.created_at} for r in rows]
    return page.page(data, lambda r: r["user_id"])


@router.post("/suppressions", status_code=201, summary="Stop collecting events for an id")
async def add_suppression(body: SuppressionIn, access: Admin) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        added = await consent.suppress(conn, access.project.id, body.user_id, body.reason)
        if added:
            await _record(access, conn, "analytics.suppression.add", "analytics_user", body.user_id, reason=body.reason)
    consent.forget_suppressions(access.ctx, access.project.id)
    return {"user_id": body.user_id, "reason": body.reason, "created": added}


@router.delete("/suppressions", status_code=204, summary="Collect events for an id again")
async def remove_suppression(access: Admin, user_id: UserId) -> Response:
    async with access.ctx.db.transaction() as conn:
        if not await consent.unsuppress(conn, access.project.id, user_id):
            raise NotFound("suppression")
        await _record(access, conn, "analytics.suppression.remove", "analytics_user", user_id)
    consent.forget_suppressions(access.ctx, access.project.id)
    return Response(status_code=204)


# --- tracking plan --------------------------------------------------------------------------------------


class PropertySchema(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    type: Literal["string", "number", "integer", "boolean", "object", "array", "any"] = "any"
    required: bool = False
    description: str = Field("", max_length=500)


class EventSchemaIn(BaseModel):
    description: str = Field("", max_length=2000)
    feature_area: str | None = Field(None, max_length=100)
    properties: list[PropertySchema] = Field(default_factory=list, max_length=200)
    allow_additional: bool = True


@router.get("/tracking-plan", summary="Event schemas of the tracking plan")
async def list_plan(access: Viewer, page: Paging) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await plan.list_schemas(conn, access.project.id, after_id=page.after_int(), limit=page.limit + 1)
    return page.page(rows, lambda r: r["id"])


@router.put("/tracking-plan/events/{event}", summary="Create or replace an event schema")
async def put_schema(event: str, body: EventSchemaIn, access: Developer) -> JSONResponse:
    async with access.ctx.db.transaction() as conn:
        schema, created = await plan.put_schema(
            conn,
            access.project.id,
            event,
            description=body.description,
            feature_area=body.feature_area,
            properties=[p.model_dump() for p in body.properties],
            allow_additional=body.allow_additional,
        )
        action = "analytics.plan.schema.create" if created else "analytics.plan.schema.update"
        await _record(access, conn, action, "event_schema", event, feature_area=body.feature_area)
    plan.forget_plan(access.ctx, access.project.id)
    return JSONResponse(jsonable(schema), status_code=201 if created else 200)


@router.delete("/tracking-plan/events/{event}", status_code=204, summary="Remove an event schema")
async def delete_schema(event: str, access: Developer) -> Response:
    async with access.ctx.db.transaction() as conn:
        if not await plan.delete_schema(conn, access.project.id, event):
            raise NotFound("event schema")
        await _record(access, conn, "analytics.plan.schema.delete", "event_schema", event)
    plan.forget_plan(access.ctx, access.project.id)
    return Response(status_code=204)


@router.post("/tracking-plan/install-default", summary="Add the CanaBro default plan (missing events only)")
async def install_default(access: Developer) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        added = await plan.install_default_plan(conn, access.project.id)
        await _record(access, conn, "analytics.plan.install_default", "tracking_plan", "canabro", added=added)
    plan.forget_plan(access.ctx, access.project.id)
    return {"added": added}


@router.get("/tracking-plan/violations", summary="Events that broke the plan, by event, kind and property")
async def violations(access: Viewer, range_: Annotated[DateRange, Depends()]) -> dict[str, Any]:
    first, last = range_.days()
    async with access.ctx.db.connect() as conn:
        return {"data": await plan.violations_report(conn, access.project.id, from_day=first, to_day=last)}


# --- insights ---------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(value)


async def _run(access: Access, name: str, raw: Any, fmt: str) -> Response:
    query = insights.parse_query(name, raw)
    ctx = access.ctx
    async with ctx.db.connect() as conn:
        cfg = await service.get_config(conn, access.project.id)
        result = await insights.run_insight(conn, access.project.id, name, query, cfg, ctx.settings)
    if fmt == "csv":
        filename = f"{access.project.slug}-{name}.csv"
        return Response(
            insights.to_csv(name, result),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return JSONResponse(jsonable(result))


def _insight_route(name: str, model: type[BaseModel]) -> None:
    async def handler(body: Any, access: Viewer, format: Literal["json", "csv"] = "json") -> Response:  # noqa: A002
        return await _run(access, name, body.model_dump(mode="json"), format)

    handler.__annotations__ = {"body": model, "access": Viewer, "format": Literal["json", "csv"], "return": Response}
    handler.__name__ = "insight_" + name.replace("-", "_")
    handler.__doc__ = f"Run a {name} query (`?format=csv` downloads it)."
    router.post(f"/insights/{name}", summary=f"Insight: {name}")(handler)


for _name, _kind in insights.KINDS.items():
    _insight_route(_name, _kind.model)


@router.get("/overview", summary="Dashboard overview: active users, sessions, top events, feature areas")
async def overview(access: Viewer) -> dict[str, Any]:
    from shipyard.analytics import overview as overview_module

    async with access.ctx.db.connect() as conn:
        return jsonable(await overview_module.overview(conn, access.ctx, access.project))


# --- saved insights ---------------------------------------------------------------------------------------


class InsightIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(description="One of the insight kinds, e.g. trends, funnel, retention")
    query: dict[str, Any] = Field(default_factory=dict)
    pinned: bool = False


class InsightPatch(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    query: dict[str, Any] | None = None
    pinned: bool | None = None


@router.get("/saved-insights", summary="Saved insights (pinned ones appear on the overview)")
async def list_saved(access: Viewer, page: Paging, pinned: bool | None = None) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        rows = await insights.list_insights(
            conn, access.project.id, after_id=page.after_int(), limit=page.limit + 1, pinned=pinned
        )
    return jsonable(page.page(rows, lambda r: r["id"]))


@router.post("/saved-insights", status_code=201, summary="Save an insight")
async def create_saved(body: InsightIn, access: Developer) -> dict[str, Any]:
    async with access.ctx.db.transaction() as conn:
        created = await insights.create_insight(
            conn, access.project.id, body.name, body.kind, body.query, body.pinned, access.actor.label
        )
        await _record(
            access, conn, "analytics.insight.create", "insight", created["id"], name=body.name, kind=body.kind
        )
    return jsonable(created)


@router.get("/saved-insights/{insight_id}", summary="A saved insight")
async def get_saved(insight_id: int, access: Viewer) -> dict[str, Any]:
    async with access.ctx.db.connect() as conn:
        return jsonable(await insights.get_insight(conn, access.project.id, insight_id))


@router.patch("/saved-insights/{insight_id}", summary="Rename, change the query, pin or unpin")
async def patch_saved(insight_id: int, body: InsightPatch, access: Developer) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    async with access.ctx.db.transaction() as conn:
        updated = await insights.update_insight(conn, access.project.id, insight_id, changes)
        await _record(access, conn, "analytics.insight.update", "insight", insight_id, fields=sorted(changes))
    return jsonable(updated)


@router.delete("/saved-insights/{insight_id}", status_code=204, summary="Delete a saved insight")
async def delete_saved(insight_id: int, access: Developer) -> Response:
    async with access.ctx.db.transaction() as conn:
        if not await insights.delete_insight(conn, access.project.id, insight_id):
            raise NotFound("insight")
        await _record(access, conn, "analytics.insight.delete", "insight", insight_id)
    return Response(status_code=204)


@router.get("/saved-insights/{insight_id}/result", summary="Run a saved insight (`?format=csv` downloads it)")
async def run_saved(insight_id: int, access: Viewer, format: Literal["json", "csv"] = "json") -> Response:  # noqa: A002
    async with access.ctx.db.connect() as conn:
        saved = await insights.get_insight(conn, access.project.id, insight_id)
    return await _run(access, saved["kind"], saved["query"], format)


# --- maintenance --------------------------------------------------------------------------------------------


@router.post("/rollups/run", summary="Fold new events into the rollups now (the job does it every minute)")
async def run_rollups(access: Developer) -> dict[str, Any]:
    folded = await rollups.run_rollup(access.ctx)
    async with access.ctx.db.transaction() as conn:
        await _record(access, conn, "analytics.rollup.run", "rollup", "events", folded=folded)
    return {"folded": folded}
