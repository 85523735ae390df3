"""Dashboard pages for analytics: the overview (active users, sessions, top events, feature
areas, pinned insights) and the trends, funnel and retention pages. Charts are SVG rendered
on the server (no network access in the page); every result downloads as CSV."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from shipyard.analytics import insights, service
from shipyard.analytics import overview as overview_module
from shipyard.core.auth import Role
from shipyard.core.errors import ApiError
from shipyard.dashboard.web import PageAccess, page_access, render

router = APIRouter(include_in_schema=False)
Viewer = Annotated[PageAccess, Depends(page_access(Role.viewer))]


@router.get("/projects/{project}/analytics")
async def analytics_page(request: Request, access: Viewer) -> HTMLResponse:
    async with access.ctx.db.connect() as conn:
        data = await overview_module.overview(conn, access.ctx, access.project)
        pinned = await insights.list_insights(conn, access.project.id, after_id=None, limit=20, pinned=True)
    return await render(
        request,
        access,
        "analytics/index.html",
        data=data,
        pinned=pinned,
        dau=[(day, float(n)) for day, n in data["dau_series"]],
        top=[(e["event"], float(e["count"])) for e in data["top_events"]],
        areas=[(a["feature_area"], float(a["count"])) for a in data["feature_areas"]],
    )


def _default_range(params: dict[str, str]) -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {
        "date_from": params.get("date_from") or (today - timedelta(days=29)).isoformat(),
        "date_to": params.get("date_to") or today.isoformat(),
    }


def _trends_query(p: dict[str, str]) -> dict[str, Any]:
    events = [e.strip() for e in (p.get("events") or "$any_event").split(",") if e.strip()]
    query: dict[str, Any] = {
        **_default_range(p),
        "interval": p.get("interval") or "day",
        "series": [{"event": e, "math": p.get("math") or "total"} for e in events],
    }
    if p.get("breakdown"):
        query["breakdown"] = {"property": p["breakdown"]}
    return query


def _funnel_query(p: dict[str, str]) -> dict[str, Any]:
    steps = [e.strip() for e in (p.get("steps") or "").split(",") if e.strip()]
    return {
        **_default_range(p),
        "steps": [{"event": e} for e in steps],
        "window_value": p.get("window_value") or 14,
        "window_unit": p.get("window_unit") or "day",
    }


def _retention_query(p: dict[str, str]) -> dict[str, Any]:
    return {
        **_default_range(p),
        "start_event": p.get("start_event") or "$any_event",
        "return_event": p.get("return_event") or "$any_event",
        "interval": p.get("interval") or "week",
        "periods": p.get("periods") or 8,
        "criterion": p.get("criterion") or "on",
    }


def _charts(kind: str, result: dict[str, Any]) -> list[Any]:
    """What the page's SVG charts draw, from an insight result."""
    if kind == "trends":
        return [(s, list(zip(result["buckets"], s["data"], strict=True))) for s in result["series"]]
    if kind == "funnel":
        return [(s["label"], float(s["count"])) for s in result["steps"]]
    return [
        (g, [(f"{result['interval']} {p}", round((v or 0.0) * 100, 1)) for p, v in enumerate(g["average"])])
        for g in result["groups"]
    ]


PAGES = {"trends": _trends_query, "funnel": _funnel_query, "retention": _retention_query}


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


async def _insight_page(request: Request, access: PageAccess, kind: str) -> Response:
    params = {k: v for k, v in request.query_params.items() if isinstance(v, str)}
    raw = PAGES[kind](params)
    result: dict[str, Any] | None = None
    error: str | None = None
    submitted = kind != "funnel" or bool(params.get("steps"))
    if submitted:
        try:
            query = insights.parse_query(kind, raw)
            async with access.ctx.db.connect() as conn:
                cfg = await service.get_config(conn, access.project.id)
                result = await insights.run_insight(conn, access.project.id, kind, query, cfg, access.ctx.settings)
        except ValidationError as exc:
            error = _errors(exc)
        except ApiError as exc:
            error = exc.message
    if result is not None and params.get("format") == "csv":
        return Response(
            insights.to_csv(kind, result),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{access.project.slug}-{kind}.csv"'},
        )
    csv_url = str(request.url.include_query_params(format="csv")) if result is not None else None
    charts = _charts(kind, result) if result is not None else []
    return await render(
        request,
        access,
        f"analytics/{kind}.html",
        status_code=400 if error else 200,
        params={**params, **{k: v for k, v in raw.items() if isinstance(v, str | int)}},
        result=result,
        error=error,
        csv_url=csv_url,
        charts=charts,
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
