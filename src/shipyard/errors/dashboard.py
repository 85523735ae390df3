"""Dashboard pages of the errors feature: the issue list (search, filters, sorting, pages), an
issue's page (stack trace of the latest or any chosen event, breadcrumbs, contexts, tags,
feedback, events chart, trend and impact, and the workflow actions), and release health.

Charts are SVG drawn on the server (no script, no network). Actions are plain forms with the
session's CSRF token; they need the developer role, like the admin API's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from shipyard.core.auth import Role
from shipyard.core.db import utcnow
from shipyard.core.errors import ApiError, NotFound
from shipyard.dashboard.web import PageAccess, page_access, render, verify_csrf
from shipyard.errors import health, issues, releases, service, trends
from shipyard.errors.health import hour_of

router = APIRouter(include_in_schema=False)
Viewer = Annotated[PageAccess, Depends(page_access(Role.viewer))]
Developer = Annotated[PageAccess, Depends(page_access(Role.developer))]

PAGE_SIZE = 25
SORT_LABELS = {
    "last_seen": "Last seen",
    "first_seen": "First seen",
    "events": "Events",
    "users": "Users",
    "impact": "Impact",
}
CHART_HOURS = {"24": 24, "72": 72, "336": 336}
IGNORE_MINUTES = {"60": "1 hour", "360": "6 hours", "1440": "1 day", "10080": "1 week"}


def _base(access: PageAccess) -> str:
    return f"/projects/{access.project.slug}/errors"


# --- issue list ----------------------------------------------------------------------------------


@router.get("/projects/{project}/errors")
async def issues_page(
    request: Request,
    access: Viewer,
    q: Annotated[str, Query(max_length=200)] = "",
    status: Annotated[str, Query(max_length=16)] = "unresolved",
    release: Annotated[str, Query(max_length=250)] = "",
    environment: Annotated[str, Query(max_length=64)] = "",
    level: Annotated[str, Query(max_length=16)] = "",
    update_id: Annotated[str, Query(max_length=64)] = "",
    sort: Annotated[str, Query(max_length=16)] = "last_seen",
    after: Annotated[str, Query(max_length=300)] = "",
) -> HTMLResponse:
    """``status=all`` lists every state; the default is what needs attention (unresolved)."""
    project_id = access.project.id
    error: str | None = None
    rows: list[Any] = []
    cursor: str | None = None
    async with access.ctx.db.connect() as conn:
        active = await health.active_users(conn, project_id, utcnow() - timedelta(hours=24))
        try:
            rows, cursor = await issues.list_issues(
                conn,
                project_id,
                status=None if status == "all" else status or None,
                release=release or None,
                environment=environment or None,
                level=level or None,
                update_id=update_id.strip().lower() or None,
                query=q or None,
                sort=sort,
                limit=PAGE_SIZE,
                after=after or None,
                active_users=active,
            )
        except ApiError as exc:
            error = exc.message
        known_releases = [r["version"] for r in await releases.list_releases(conn, project_id, limit=100)]
        environments = await service.known_environments(conn, project_id)
    listed = [
        {
            "row": r,
            "substatus": issues.display_substatus(r, utcnow()),
            "impact": trends.impact_of(
                users=r.users_seen, events_count=r.times_seen, is_crash=r.is_crash, level=r.level, active_users=active
            ),
        }
        for r in rows
    ]
    params = {
        "q": q,
        "status": status,
        "release": release,
        "environment": environment,
        "level": level,
        "update_id": update_id,
        "sort": sort,
    }
    next_url = str(request.url.include_query_params(after=cursor)) if cursor else None
    return await render(
        request,
        access,
        "errors/issues.html",
        status_code=400 if error else 200,
        issues=listed,
        params=params,
        error=error,
        next_url=next_url,
        first_url=str(request.url.remove_query_params("after")) if after else None,
        releases=known_releases,
        environments=environments,
        statuses=("unresolved", "resolved", "ignored", "all"),
        levels=tuple(issues.LEVEL_RANK),
        sorts=SORT_LABELS,
    )


# --- issue page ----------------------------------------------------------------------------------


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _context_lines(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """The source around a frame's line, when the SDK sent it (``pre_context`` …)."""
    line = frame.get("context_line")
    if not isinstance(line, str):
        return []
    pre = [x for x in frame.get("pre_context") or [] if isinstance(x, str)]
    post = [x for x in frame.get("post_context") or [] if isinstance(x, str)]
    lineno = frame.get("lineno") if isinstance(frame.get("lineno"), int) else None
    out = []
    for offset, text in enumerate([*pre, line, *post], start=-len(pre)):
        out.append({"lineno": None if lineno is None else lineno + offset, "text": text, "current": offset == 0})
    return out


def _frames(stacktrace: Any) -> list[dict[str, Any]]:
    """Frames newest first (SDKs send them oldest first), with their context lines."""
    frames = stacktrace.get("frames") if isinstance(stacktrace, dict) else None
    if not isinstance(frames, list):
        return []
    out = []
    for f in reversed([f for f in frames if isinstance(f, dict)]):
        out.append(
            {
                "where": f.get("filename") or f.get("abs_path") or f.get("module") or "?",
                "module": f.get("module"),
                "function": f.get("function") or "?",
                "lineno": f.get("lineno"),
                "colno": f.get("colno"),
                "in_app": f.get("in_app") is True,
                "context": _context_lines(f),
                "vars": f.get("vars") if isinstance(f.get("vars"), dict) else None,
            }
        )
    return out


def stack_view(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The exceptions of an event (the raised one first, then what caused it), or the stack
    of its crashed / current thread when it has no exception."""
    exceptions = (data.get("exception") or {}).get("values") or []
    out = []
    for exc in reversed([e for e in exceptions if isinstance(e, dict)]):
        mechanism = _mapping(exc.get("mechanism"))
        out.append(
            {
                "type": exc.get("type") or "Error",
                "value": exc.get("value") or "",
                "mechanism": mechanism.get("type"),
                "handled": mechanism.get("handled"),
                "frames": _frames(exc.get("stacktrace")),
            }
        )
    if out:
        return out
    for thread in (data.get("threads") or {}).get("values") or []:
        if isinstance(thread, dict) and (thread.get("crashed") or thread.get("current")) and thread.get("stacktrace"):
            name = thread.get("name") or thread.get("id") or "thread"
            return [
                {
                    "type": f"Thread {name}",
                    "value": "",
                    "mechanism": None,
                    "handled": None,
                    "frames": _frames(thread["stacktrace"]),
                }
            ]
    return []


def _when(value: Any) -> str:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%H:%M:%S")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%H:%M:%S")
        except ValueError:
            return value[:32]
    return ""


def breadcrumbs_view(data: dict[str, Any]) -> list[dict[str, Any]]:
    crumbs = (data.get("breadcrumbs") or {}).get("values") or []
    return [
        {
            "time": _when(c.get("timestamp")),
            "category": c.get("category") or c.get("type") or "",
            "level": c.get("level") or "info",
            "message": c.get("message") or "",
            "data": c.get("data") if isinstance(c.get("data"), dict) else None,
        }
        for c in crumbs
        if isinstance(c, dict)
    ]


def contexts_view(data: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Device, OS, app, OTA update … sections as (name, [(key, value)]), the ones users ask for first."""
    contexts = _mapping(data.get("contexts"))
    first = ["ota_updates", "device", "os", "app", "runtime"]
    names = [n for n in first if n in contexts] + sorted(n for n in contexts if n not in first)
    out = []
    for name in names:
        section = contexts[name]
        if isinstance(section, dict):
            pairs = [(str(k), v if isinstance(v, str) else str(v)) for k, v in section.items() if k != "type"]
            out.append((name, pairs))
    return out


def _hourly_points(series: list[tuple[datetime, int]], hours: int, now: datetime) -> list[tuple[str, float]]:
    """Every hour of the window (zero where nothing happened), labelled for the chart."""
    counts = {hour_of(h): n for h, n in series}
    start = hour_of(now - timedelta(hours=hours - 1))
    points = []
    for i in range(hours):
        hour = start + timedelta(hours=i)
        points.append((hour.strftime("%m-%d %H:00"), float(counts.get(hour, 0))))
    return points


async def _issue_context(access: PageAccess, issue_id: int, event_id: str | None, hours: int) -> dict[str, Any]:
    project_id = access.project.id
    now = utcnow()
    async with access.ctx.db.connect() as conn:
        row = await issues.get_issue(conn, project_id, issue_id)
        issue = await issues.describe_issue(conn, row)
        if event_id:
            event_row, data = await issues.get_event(conn, project_id, event_id[:36])
            if event_row.issue_id != issue_id:
                raise NotFound("event")
            chosen: tuple[Any, dict[str, Any]] | None = (event_row, data)
        else:
            chosen = await issues.latest_event(conn, issue_id)
        older = newer = None
        if chosen is not None:
            older, newer = await issues.event_neighbours(conn, issue_id, chosen[0].id)
        recent = (await issues.issue_events(conn, issue_id, limit=20))[:20]
        tags = await issues.tag_distribution(conn, issue_id, top=5)
        trend = await trends.issue_trend(conn, project_id, row, now=now)
        series = await issues.hourly_series(conn, issue_id, now - timedelta(hours=hours))
        feedback = await service.list_feedback(conn, project_id, issue_id=issue_id, limit=50)
        timeline = await issues.activity(conn, issue_id, limit=30)
        by_release = await trends.breakdown(
            conn, project_id, "release", since=now - timedelta(days=90), issue_id=issue_id, limit=8
        )
    event = None
    if chosen is not None:
        event_row, data = chosen
        event = {
            **issues.describe_event(event_row),
            "stack": stack_view(data),
            "breadcrumbs": breadcrumbs_view(data),
            "contexts": contexts_view(data),
            "user_data": data.get("user") if isinstance(data.get("user"), dict) else None,
            "tags": data.get("tags") if isinstance(data.get("tags"), dict) else {},
            "message": (data.get("logentry") or {}).get("formatted"),
            "is_latest": newer is None,
            "older": older,
            "newer": newer,
        }
    return {
        "issue": issue,
        "event": event,
        "recent_events": recent,
        "tags": tags,
        "trend": trend,
        "points": _hourly_points(series, hours, now),
        "hours": hours,
        "feedback": feedback,
        "timeline": timeline,
        "by_release": by_release,
    }


@router.get("/projects/{project}/errors/issues/{issue_id}")
async def issue_page(
    request: Request,
    issue_id: int,
    access: Viewer,
    event: Annotated[str, Query(max_length=36)] = "",
    hours: Annotated[str, Query(max_length=4)] = "72",
) -> HTMLResponse:
    return await _render_issue(request, access, issue_id, event or None, hours)


async def _render_issue(
    request: Request,
    access: PageAccess,
    issue_id: int,
    event_id: str | None,
    hours: str,
    *,
    error: str | None = None,
) -> HTMLResponse:
    context = await _issue_context(access, issue_id, event_id, CHART_HOURS.get(hours, 72))
    return await render(
        request,
        access,
        "errors/issue.html",
        status_code=400 if error else 200,
        error=error,
        can_act=access.can(Role.developer),
        ignore_minutes=IGNORE_MINUTES,
        chart_hours=CHART_HOURS,
        **context,
    )


async def _form_int(form: dict[str, Any], name: str) -> int | None:
    value = str(form.get(name) or "").strip()
    if not value:
        return None
    if not value.isdecimal() or len(value) > 9:
        raise ApiError(400, "bad_request", f"{name} must be a whole number")
    return int(value)


async def _action(access: PageAccess, issue_id: int, action: str, form: dict[str, Any]) -> None:
    ctx, project_id = access.ctx, access.project.id
    async with ctx.db.transaction() as conn:
        if action == "resolve":
            mode = str(form.get("resolution") or "now")
            release = str(form.get("release") or "").strip()[:250] or None
            await issues.resolve(conn, ctx, access.actor, project_id, issue_id, mode=mode, release=release)
        elif action == "ignore":
            mode = str(form.get("mode") or "forever")
            minutes = await _form_int(form, "minutes")
            count = await _form_int(form, "count")
            await issues.ignore(conn, ctx, access.actor, project_id, issue_id, mode=mode, minutes=minutes, count=count)
        elif action == "unresolve":
            await issues.unresolve(conn, ctx, access.actor, project_id, issue_id)
        elif action == "assign":
            assignee = str(form.get("assignee") or "").strip()[:320] or None
            await issues.assign(conn, ctx, access.actor, project_id, issue_id, assignee)
        else:
            raise NotFound("action")


@router.post("/projects/{project}/errors/issues/{issue_id}/{action}")
async def issue_action(request: Request, issue_id: int, action: str, access: Developer) -> Response:
    """resolve (now / in_next_release / in_release), ignore (forever / until / events / users),
    unresolve, assign; each audited by the issues service. A refused action re-renders the
    page with the reason (400)."""
    form = await verify_csrf(request, access)
    if action not in ("resolve", "ignore", "unresolve", "assign"):
        raise NotFound("action")
    try:
        await _action(access, issue_id, action, form)
    except NotFound:
        raise
    except ApiError as exc:
        return await _render_issue(request, access, issue_id, None, "72", error=exc.message)
    return RedirectResponse(f"{_base(access)}/issues/{issue_id}", status_code=303)


# --- release health ------------------------------------------------------------------------------


@router.get("/projects/{project}/errors/releases")
async def releases_page(
    request: Request,
    access: Viewer,
    environment: Annotated[str, Query(max_length=64)] = "",
    release: Annotated[str, Query(max_length=250)] = "",
    update_id: Annotated[str, Query(max_length=64)] = "",
    days: Annotated[int, Query(ge=1, le=90)] = 14,
) -> HTMLResponse:
    """Crash-free sessions and users per release and per OTA update, adoption, and the crash-free
    rate over time (of the whole project, or of the release / update chosen)."""
    project_id = access.project.id
    since = utcnow() - timedelta(days=days)
    env = environment or None
    async with access.ctx.db.connect() as conn:
        per_release = await health.by_release(conn, project_id, since, environment=env)
        by_update = await health.by_release(conn, project_id, since, environment=env, per_update=True)
        per_update = [r for r in by_update if r["update_id"]]
        total = await health.totals(
            conn, project_id, since, environment=env, release=release or None, update_id=update_id.lower() or None
        )
        series = await health.series(
            conn, project_id, since, environment=env, release=release or None, update_id=update_id.lower() or None
        )
        environments = await service.known_environments(conn, project_id)
    crash_free = [
        (s["hour"].strftime("%m-%d %H:00"), round(s["crash_free_sessions"] * 100, 2))
        for s in series
        if s["crash_free_sessions"] is not None
    ]
    sessions = [(s["hour"].strftime("%m-%d %H:00"), float(s["sessions"])) for s in series]
    return await render(
        request,
        access,
        "errors/releases.html",
        per_release=per_release,
        per_update=per_update,
        total=total,
        crash_free=crash_free,
        sessions=sessions,
        environments=environments,
        params={"environment": environment, "release": release, "update_id": update_id, "days": days},
    )
