"""Dashboard pages for analytics: the overview (active users, sessions, top events, feature
areas, notification opens, crash-free rate, pinned insights as charts), the trends, funnel
and retention pages (property filters, breakdown, a rolling or fixed date range — see
``forms``) with "Save as insight", the saved-insights list, and the tracking-plan editor.
Charts are SVG rendered on the server (no network access in the page); every result
downloads as CSV. Viewers read; developers save insights and edit the plan; admins
switch the plan's enforcement (as in the admin API)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from cachetools import TTLCache
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError

from shipyard.analytics import forms, insights, plan, queries, service
from shipyard.analytics import overview as overview_module
from shipyard.analytics.sqlparts import DATE_WINDOWS, DateRange
from shipyard.core import audit
from shipyard.core.auth import Role
from shipyard.core.errors import ApiError, BadRequest, NotFound
from shipyard.dashboard.web import PageAccess, page_access, render, verify_csrf

router = APIRouter(include_in_schema=False)
Viewer = Annotated[PageAccess, Depends(page_access(Role.viewer))]
Developer = Annotated[PageAccess, Depends(page_access(Role.developer))]
Admin = Annotated[PageAccess, Depends(page_access(Role.admin))]

PINNED_ON_OVERVIEW = 12
# Pinned insights run full queries over raw events (a 10-week funnel over a million events
# takes about a second); the overview reuses a result for this long, for every viewer of the
# project in this process, and shows when it was computed. Opening the insight runs it afresh.
PINNED_RESULT_SECONDS = 60
# The overview's own figures (active users, sessions, top events, opens, crash-free rate)
# are reused this long per project, so a team reloading the landing page costs one run.
OVERVIEW_SECONDS = 30
# The CanaBro feature areas (seed task 3.3), offered when editing a schema.
DEFAULT_AREAS = sorted({str(s["feature_area"]) for s in plan.CANABRO_PLAN})
BLANK_PROPERTY_ROWS = 3


async def _audit(
    access: PageAccess, conn: Any, action: str, resource_type: str, resource_id: Any, **details: Any
) -> None:
    await audit.record(
        conn,
        access.ctx,
        access.actor,
        action,
        project_id=access.project.id,
        resource_type=resource_type,
        resource_id=resource_id,
        details={**details, "via": "dashboard"},
    )


def _base(access: PageAccess) -> str:
    return f"/projects/{access.project.slug}/analytics"


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _back(access: PageAccess, form: dict[str, Any], fallback: str) -> RedirectResponse:
    """Back to the page the form was on; only pages of this project's analytics section."""
    target = str(form.get("next") or "")
    return _redirect(target if target.startswith(_base(access) + "/") or target == _base(access) else fallback)


# --- overview ------------------------------------------------------------------------------------------


@router.get("/projects/{project}/analytics")
async def analytics_page(request: Request, access: Viewer) -> HTMLResponse:
    cache: TTLCache[int, dict[str, Any]] = access.ctx.extras.setdefault(
        "analytics_overview", TTLCache(maxsize=256, ttl=OVERVIEW_SECONDS)
    )
    async with access.ctx.db.connect() as conn:
        data = cache.get(access.project.id)
        if data is None:
            data = {
                **await overview_module.overview(conn, access.ctx, access.project),
                "computed_at": datetime.now(UTC),
            }
            cache[access.project.id] = data
        pinned = await insights.list_insights(
            conn, access.project.id, after_id=None, limit=PINNED_ON_OVERVIEW, pinned=True
        )
        pinned_views = [await _pinned_view(conn, access, saved) for saved in pinned]
    return await render(
        request,
        access,
        "analytics/index.html",
        data=data,
        overview_seconds=OVERVIEW_SECONDS,
        pinned=pinned_views,
        dau=[(day, float(n)) for day, n in data["dau_series"]],
        top=[(e["event"], float(e["count"])) for e in data["top_events"]],
        areas=[(a["feature_area"], float(a["count"])) for a in data["feature_areas"]],
    )


# --- trends, funnel, retention ---------------------------------------------------------------------------


def _charts(kind: str, result: dict[str, Any]) -> list[Any]:
    """What the page's SVG charts draw, from an insight result."""
    if kind == "trends":
        return [(s, list(zip(result["buckets"], s["data"], strict=True))) for s in result["series"]]
    if kind == "funnel":
        return [(s["label"], float(s["count"])) for s in result["steps"]]
    if kind == "retention":
        return [
            (g, [(f"{result['interval']} {p}", round((v or 0.0) * 100, 1)) for p, v in enumerate(g["average"])])
            for g in result["groups"]
        ]
    return []


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def _csv_response(access: PageAccess, kind: str, result: dict[str, Any], name: str | None = None) -> Response:
    filename = f"{access.project.slug}-{name or kind}.csv".replace('"', "")
    return Response(
        insights.to_csv(kind, result),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _form_context(kind: str, params: dict[str, str]) -> dict[str, Any]:
    """What every query form's template needs besides the result."""
    return {
        "filter_groups": [
            (prefix, heading, forms.filter_rows(params, prefix))
            for prefix, _field, heading in forms.FILTER_GROUPS[kind]
        ],
        "filter_scopes": forms.SCOPES,
        "filter_operators": forms.OPERATORS,
        "date_windows": DATE_WINDOWS,
    }


async def _insight_page(request: Request, access: PageAccess, kind: str) -> Response:
    params = {k: v for k, v in request.query_params.items() if isinstance(v, str)}
    raw: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    error: str | None = None
    query: BaseModel | None = None
    submitted = kind != "funnel" or bool(params.get("steps"))
    try:
        raw = forms.PAGES[kind](params)
        if submitted:
            query = insights.parse_query(kind, raw)
            async with access.ctx.db.connect() as conn:
                cfg = await service.get_config(conn, access.project.id)
                result = await insights.run_insight(conn, access.project.id, kind, query, cfg, access.ctx.settings)
    except ValidationError as exc:
        error = _errors(exc)
    except ApiError as exc:
        error = exc.message
    if result is not None and params.get("format") == "csv":
        return _csv_response(access, kind, result)
    csv_url = str(request.url.include_query_params(format="csv")) if result is not None else None
    shown = {**params, **{k: v for k, v in raw.items() if isinstance(v, str | int)}}
    if raw:  # the query was understood: show the window chosen and the dates it covers today
        shown.update(date_window=forms.range_to_params(raw)["date_window"], **forms.shown_dates(raw))
    return await render(
        request,
        access,
        f"analytics/{kind}.html",
        status_code=400 if error else 200,
        params=shown,
        kind=kind,
        result=result,
        error=error,
        csv_url=csv_url,
        charts=_charts(kind, result) if result is not None else [],
        save_query=json.dumps(query.model_dump(mode="json")) if result is not None and query else None,
        save_window=raw.get("date_window") or "fixed",
        **_form_context(kind, params),
    )


@router.get("/projects/{project}/analytics/trends")
async def trends_page(request: Request, access: Viewer) -> Response:
    return await _insight_page(request, access, "trends")


@router.get("/projects/{project}/analytics/funnel")
async def funnel_page(request: Request, access: Viewer) -> Response:
    return await _insight_page(request, access, "funnel")


@router.get("/projects/{project}/analytics/retention")
async def retention_page(request: Request, access: Viewer) -> Response:
    return await _insight_page(request, access, "retention")


# --- saved insights ----------------------------------------------------------------------------------------


async def _run_saved(conn: Any, access: PageAccess, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved insight with its result and charts, or the reason it cannot run now."""
    view: dict[str, Any] = {
        **saved,
        "result": None,
        "charts": [],
        "error": None,
        "range": forms.range_label(saved["query"]),
    }
    try:
        query = insights.parse_query(saved["kind"], saved["query"])
        cfg = await service.get_config(conn, access.project.id)
        view["result"] = await insights.run_insight(
            conn, access.project.id, saved["kind"], query, cfg, access.ctx.settings
        )
    except ApiError as exc:
        view["error"] = exc.message
    else:
        view["charts"] = _charts(saved["kind"], view["result"])
    return view


async def _pinned_view(conn: Any, access: PageAccess, saved: dict[str, Any]) -> dict[str, Any]:
    """A pinned insight's result for the overview, from the short-lived cache when fresh.

    The key holds the insight's last change (a new query or name is a new entry) and the
    day (a rolling window resolves to new dates each day)."""
    cache: TTLCache[tuple[Any, ...], dict[str, Any]] = access.ctx.extras.setdefault(
        "analytics_pinned_results", TTLCache(maxsize=512, ttl=PINNED_RESULT_SECONDS)
    )
    now = datetime.now(UTC)
    key = (access.project.id, saved["id"], str(saved["updated_at"]), now.date())
    view = cache.get(key)
    if view is None:
        view = {**await _run_saved(conn, access, saved), "computed_at": now}
        cache[key] = view
    return {**view, "pinned": saved["pinned"]}


def _form_text(form: dict[str, Any], name: str, *, max_length: int = 200, required: bool = True) -> str:
    value = str(form.get(name) or "").strip()
    if required and not value:
        raise BadRequest(f"{name} is required")
    if len(value) > max_length:
        raise BadRequest(f"{name} is longer than {max_length} characters")
    return value


def _query_from_form(form: dict[str, Any]) -> dict[str, Any]:
    try:
        query = json.loads(str(form.get("query") or ""))
    except ValueError:
        raise BadRequest("the query is not valid JSON; run the insight again and save it") from None
    if not isinstance(query, dict):
        raise BadRequest("the query must be a JSON object")
    # The older form's "Keep it current" box meant the 30 days up to the day it is viewed.
    window = str(form.get("date_window") or ("last_30_days" if form.get("rolling") else ""))
    return _with_window(query, window) if window else query


def _with_window(query: dict[str, Any], window: str) -> dict[str, Any]:
    """The query with its dates replaced: a rolling window, or ``fixed`` (the dates it covers today)."""
    if window == "fixed":
        try:
            start, end = DateRange.model_validate(query).dates()
        except ValidationError as exc:
            raise BadRequest(_errors(exc)) from None
        return {**query, "date_window": None, "date_from": start.isoformat(), "date_to": end.isoformat()}
    if window not in DATE_WINDOWS:
        raise BadRequest(f"unknown date range {window[:40]!r}; one of {', '.join([*DATE_WINDOWS, 'fixed'])}")
    return {**query, "date_window": window, "date_from": None, "date_to": None}


@router.post("/projects/{project}/analytics/insights")
async def save_insight(request: Request, access: Developer) -> Response:
    form = await verify_csrf(request, access)
    name = _form_text(form, "name")
    kind = _form_text(form, "kind", max_length=50)
    query = _query_from_form(form)
    async with access.ctx.db.transaction() as conn:
        created = await insights.create_insight(
            conn, access.project.id, name, kind, query, bool(form.get("pinned")), access.actor.label
        )
        await _audit(access, conn, "analytics.insight.create", "insight", created["id"], name=name, kind=kind)
    return _redirect(f"{_base(access)}/insights/{created['id']}")


@router.get("/projects/{project}/analytics/insights")
async def saved_insights_page(request: Request, access: Viewer) -> HTMLResponse:
    async with access.ctx.db.connect() as conn:
        saved = await insights.list_insights(conn, access.project.id, after_id=None, limit=500)
    for item in saved:
        item["params"] = forms.page_params(item["kind"], item["query"])
        item["range"] = forms.range_label(item["query"])
    return await render(request, access, "analytics/insights.html", saved=saved)


@router.get("/projects/{project}/analytics/insights/{insight_id}")
async def saved_insight_page(
    request: Request,
    insight_id: int,
    access: Viewer,
    format: Annotated[str | None, Query()] = None,  # noqa: A002
) -> Response:
    async with access.ctx.db.connect() as conn:
        view = await _run_saved(conn, access, await insights.get_insight(conn, access.project.id, insight_id))
    if format == "csv" and view["result"] is not None:
        return _csv_response(access, view["kind"], view["result"], name=f"insight-{insight_id}")
    return await render(
        request,
        access,
        "analytics/insight.html",
        insight=view,
        kind=view["kind"],
        result=view["result"],
        charts=view["charts"],
        editor_params=forms.page_params(view["kind"], view["query"]),
        range_label=forms.range_label(view["query"]),
        filter_summary=forms.describe_filters(view["query"]),
        shown_range=forms.shown_dates(view["query"]),
        date_windows=DATE_WINDOWS,
        current_window=view["query"].get("date_window") or ("" if _has_dates(view["query"]) else "last_30_days"),
    )


@router.post("/projects/{project}/analytics/insights/{insight_id}/pin")
async def pin_insight(request: Request, insight_id: int, access: Developer) -> Response:
    form = await verify_csrf(request, access)
    pinned = str(form.get("pinned", "")) == "true"
    async with access.ctx.db.transaction() as conn:
        await insights.update_insight(conn, access.project.id, insight_id, {"pinned": pinned})
        await _audit(access, conn, "analytics.insight.update", "insight", insight_id, fields=["pinned"], pinned=pinned)
    return _back(access, form, f"{_base(access)}/insights")


@router.post("/projects/{project}/analytics/insights/{insight_id}/rename")
async def rename_insight(request: Request, insight_id: int, access: Developer) -> Response:
    form = await verify_csrf(request, access)
    name = _form_text(form, "name")
    async with access.ctx.db.transaction() as conn:
        await insights.update_insight(conn, access.project.id, insight_id, {"name": name})
        await _audit(access, conn, "analytics.insight.update", "insight", insight_id, fields=["name"], name=name)
    return _back(access, form, f"{_base(access)}/insights")


def _has_dates(query: dict[str, Any]) -> bool:
    return bool(query.get("date_from") or query.get("date_to"))


@router.post("/projects/{project}/analytics/insights/{insight_id}/range")
async def change_insight_range(request: Request, insight_id: int, access: Developer) -> Response:
    """A saved insight's dates: a rolling window, or custom fixed dates."""
    form = await verify_csrf(request, access)
    window = _form_text(form, "date_window", max_length=50)
    async with access.ctx.db.transaction() as conn:
        saved = await insights.get_insight(conn, access.project.id, insight_id)
        if window == forms.CUSTOM:
            dates = {k: _form_text(form, k, max_length=10) for k in ("date_from", "date_to")}
            query = {**saved["query"], "date_window": None, **dates}
        else:
            query = _with_window(saved["query"], window)
        await insights.update_insight(conn, access.project.id, insight_id, {"query": query})
        await _audit(
            access, conn, "analytics.insight.update", "insight", insight_id, fields=["query"], date_window=window
        )
    return _back(access, form, f"{_base(access)}/insights/{insight_id}")


@router.post("/projects/{project}/analytics/insights/{insight_id}/delete")
async def delete_insight(request: Request, insight_id: int, access: Developer) -> Response:
    await verify_csrf(request, access)
    async with access.ctx.db.transaction() as conn:
        if not await insights.delete_insight(conn, access.project.id, insight_id):
            raise NotFound("insight")
        await _audit(access, conn, "analytics.insight.delete", "insight", insight_id)
    return _redirect(f"{_base(access)}/insights")


# --- tracking plan ----------------------------------------------------------------------------------------


def _last_30_days() -> DateRange:
    today = datetime.now(UTC).date()
    return DateRange(date_from=today - timedelta(days=29), date_to=today)


async def _violations_by_event(conn: Any, project_id: int) -> dict[str, list[dict[str, Any]]]:
    first, last = _last_30_days().days()
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in await plan.violations_report(conn, project_id, from_day=first, to_day=last):
        row["last_seen"] = datetime.fromtimestamp(row["last_seen_ms"] / 1000, UTC)
        grouped.setdefault(row["event"], []).append(row)
    return grouped


@router.get("/projects/{project}/analytics/plan")
async def plan_page(request: Request, access: Viewer) -> HTMLResponse:
    project_id = access.project.id
    window = _last_30_days()
    first, last = window.days()
    async with access.ctx.db.connect() as conn:
        schemas = await plan.list_schemas(conn, project_id)
        usage = await queries.feature_area_usage(conn, project_id, window)
        counts = await queries.daily_event_counts(conn, project_id, first, last)
        violations = await _violations_by_event(conn, project_id)
        cfg = await service.get_config(conn, project_id)
    per_event: dict[str, int] = {}
    for (_day, event), n in counts.items():
        per_event[event] = per_event.get(event, 0) + n
    by_area: dict[str, list[dict[str, Any]]] = {}
    for schema in sorted(schemas, key=lambda s: s["event"]):
        schema["count"] = per_event.get(schema["event"], 0)
        by_area.setdefault(schema["feature_area"] or "", []).append(schema)
    planned = {s["event"] for s in schemas}
    return await render(
        request,
        access,
        "analytics/plan.html",
        by_area=sorted(by_area.items(), key=lambda item: (item[0] == "", item[0])),
        usage=usage,
        area_bars=[(a["feature_area"], float(a["count"])) for a in usage["areas"]],
        violations=violations,
        unplanned={event: rows for event, rows in violations.items() if event not in planned},
        enforcement=cfg.plan_enforcement,
        window=window,
    )


@router.get("/projects/{project}/analytics/plan/edit")
async def edit_schema_page(
    request: Request, access: Viewer, event: Annotated[str | None, Query(max_length=200)] = None
) -> HTMLResponse:
    schema: dict[str, Any] | None = None
    async with access.ctx.db.connect() as conn:
        if event:
            schema = next((s for s in await plan.list_schemas(conn, access.project.id) if s["event"] == event), None)
        violations = (await _violations_by_event(conn, access.project.id)).get(event or "", [])
        areas = await plan.feature_areas(conn, access.project.id)
    all_areas = sorted(set(areas) | set(DEFAULT_AREAS))
    return await _render_editor(request, access, schema, event or "", violations, all_areas)


async def _render_editor(
    request: Request,
    access: PageAccess,
    schema: dict[str, Any] | None,
    event: str,
    violations: list[dict[str, Any]],
    areas: list[str],
    error: str | None = None,
) -> HTMLResponse:
    blank: dict[str, Any] = {
        "event": event,
        "description": "",
        "feature_area": "",
        "properties": [],
        "allow_additional": True,
    }
    values = schema or blank
    rows = list(values["properties"]) + [
        {"name": "", "type": "any", "required": False, "description": ""} for _ in range(BLANK_PROPERTY_ROWS)
    ]
    return await render(
        request,
        access,
        "analytics/plan_edit.html",
        status_code=400 if error else 200,
        schema=values,
        existing=schema is not None and error is None,
        rows=rows,
        types=plan.PROPERTY_TYPES,
        areas=areas,
        violations=violations,
        error=error,
    )


def _properties_from_form(form: dict[str, Any]) -> list[dict[str, Any]]:
    """Property rows ``prop_name_N``, ``prop_type_N``, ``prop_required_N``, ``prop_description_N``;
    rows without a name are ignored (the blank rows the form offers)."""
    indexes = sorted(int(k.rsplit("_", 1)[1]) for k in form if k.startswith("prop_name_") and k[10:].isdecimal())
    rows = []
    for i in indexes:
        name = str(form.get(f"prop_name_{i}") or "").strip()
        if not name:
            continue
        if len(name) > 200:
            raise BadRequest(f"property name {name[:40]}… is longer than 200 characters")
        rows.append(
            {
                "name": name,
                "type": str(form.get(f"prop_type_{i}") or "any"),
                "required": bool(form.get(f"prop_required_{i}")),
                "description": str(form.get(f"prop_description_{i}") or "").strip(),
            }
        )
    return plan.validate_properties(rows)


@router.post("/projects/{project}/analytics/plan/save")
async def save_schema(request: Request, access: Developer) -> Response:
    form = await verify_csrf(request, access)
    event = str(form.get("event") or "").strip()
    description = str(form.get("description") or "").strip()[:2000]
    feature_area = str(form.get("feature_area") or "").strip()[:100] or None
    allow_additional = bool(form.get("allow_additional"))
    properties: list[dict[str, Any]] = []
    try:
        properties = _properties_from_form(form)
        async with access.ctx.db.transaction() as conn:
            _schema, created = await plan.put_schema(
                conn,
                access.project.id,
                event,
                description=description,
                feature_area=feature_area,
                properties=properties,
                allow_additional=allow_additional,
            )
            action = "analytics.plan.schema.create" if created else "analytics.plan.schema.update"
            await _audit(access, conn, action, "event_schema", event, feature_area=feature_area)
    except BadRequest as exc:
        # Show the form again with what was typed, and say what is wrong.
        submitted = {
            "event": event,
            "description": description,
            "feature_area": feature_area,
            "allow_additional": allow_additional,
            "properties": properties,
        }
        areas = sorted(set(DEFAULT_AREAS) | ({feature_area} if feature_area else set()))
        return await _render_editor(request, access, submitted, event, [], areas, error=exc.message)
    plan.forget_plan(access.ctx, access.project.id)
    return _redirect(f"{_base(access)}/plan")


@router.post("/projects/{project}/analytics/plan/delete")
async def delete_schema(request: Request, access: Developer) -> Response:
    form = await verify_csrf(request, access)
    event = _form_text(form, "event")
    async with access.ctx.db.transaction() as conn:
        if not await plan.delete_schema(conn, access.project.id, event):
            raise NotFound("event schema")
        await _audit(access, conn, "analytics.plan.schema.delete", "event_schema", event)
    plan.forget_plan(access.ctx, access.project.id)
    return _redirect(f"{_base(access)}/plan")


@router.post("/projects/{project}/analytics/plan/install-default")
async def install_default_plan(request: Request, access: Developer) -> Response:
    await verify_csrf(request, access)
    async with access.ctx.db.transaction() as conn:
        added = await plan.install_default_plan(conn, access.project.id)
        await _audit(access, conn, "analytics.plan.install_default", "tracking_plan", "canabro", added=added)
    plan.forget_plan(access.ctx, access.project.id)
    return _redirect(f"{_base(access)}/plan")


@router.post("/projects/{project}/analytics/plan/enforcement")
async def set_enforcement(request: Request, access: Admin) -> Response:
    form = await verify_csrf(request, access)
    mode = str(form.get("plan_enforcement") or "")
    if mode not in ("off", "record", "block"):
        raise BadRequest("plan_enforcement must be off, record or block")
    async with access.ctx.db.transaction() as conn:
        _cfg, diff = await service.update_config(conn, access.ctx, access.project.id, {"plan_enforcement": mode})
        await _audit(access, conn, "analytics.settings.update", "project", access.project.id, changes=diff)
    plan.forget_plan(access.ctx, access.project.id)
    return _redirect(f"{_base(access)}/plan")
