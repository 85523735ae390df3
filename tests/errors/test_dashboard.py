"""The errors pages in-process: the issue list's filters, sorting and pages; an issue's stack
trace, breadcrumbs, contexts, OTA update and feedback for the latest and a chosen event; the
workflow forms with their CSRF and role checks (a viewer sees no action and cannot post one);
release health per release and per OTA update."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from sqlalchemy import select

from shipyard.core import auth
from shipyard.core.auth import Role
from shipyard.core.context import Context
from shipyard.core.models import audit_log
from tests.conftest import admin_headers
from tests.dashboard.test_login import _csrf, login
from tests.errors.helpers import envelope, error_event, frame, new_id, post, process, send_events
from tests.errors.test_release_health import send_sessions, session

UPDATE_ID = "6f1e2a52-8c1d-4d1e-9f5e-2b7c3a9d0e11"


def crash_event(value: str, **extra: Any) -> dict[str, Any]:
    """A React Native style crash: in-app frames with source context, breadcrumbs, contexts."""
    frames = [
        frame("runApplication", "node_modules/react-native/Libraries/AppRegistry", 20, in_app=False),
        frame(
            "onSave",
            "app/screens/PlantEditor",
            88,
            pre_context=["function onSave(plant) {", "  const name = plant.name;"],
            context_line="  return api.save(plant.strain.id);",
            post_context=["}"],
        ),
    ]
    return error_event(
        exc_type="TypeError",
        value=value,
        frames=frames,
        handled=False,
        release="com.example.grow@2.1.0+41",
        user={"id": "grower-7", "email": "grower7@example.com"},
        tags={"expo.updates.update_id": UPDATE_ID, "expo.updates.channel": "production"},
        breadcrumbs={
            "values": [
                {"timestamp": 1700000000, "category": "navigation", "message": "PlantList -> PlantEditor"},
                {"timestamp": 1700000003, "category": "ui.click", "message": "Save button"},
            ]
        },
        contexts={
            "device": {"model": "iPhone15,2", "family": "iOS"},
            "os": {"name": "iOS", "version": "17.4"},
            "app": {"app_version": "2.1.0"},
            "ota_updates": {"update_id": UPDATE_ID, "channel": "production", "runtime_version": "2.1"},
        },
        **extra,
    )


async def _email(conn: Any, user_id: int) -> str:
    from shipyard.core.models import users

    return str((await conn.execute(select(users.c.email).where(users.c.id == user_id))).scalar_one())


async def add_member(ctx: Context, project: dict[str, Any], role: Role) -> tuple[str, str, int]:
    email, password = f"{role.name}-{uuid.uuid4().hex[:6]}@example.com", "a long enough password"
    async with ctx.db.transaction() as conn:
        user_id = await auth.create_user(conn, email, password)
        await auth.set_role(conn, user_id, project["id"], role)
    return email, password, user_id


async def seed(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> dict[str, Any]:
    first = crash_event("Cannot read property 'id' of undefined")
    latest = crash_event("Cannot read property 'id' of undefined", environment="staging")
    latest["contexts"]["os"]["version"] = "17.5"
    await send_events(client, project, first)
    await process(ctx)
    await send_events(client, project, latest)
    warning = error_event(exc_type="SlowRender", value="render took long", level="warning")
    await send_events(client, project, warning)
    feedback = {"event_id": latest["event_id"], "name": "Ann", "comments": "The app closed when I saved my plant"}
    assert (await post(client, project, envelope([({"type": "user_report"}, feedback)]))).status_code == 200
    release = "com.example.grow@2.1.0+41#production:" + UPDATE_ID
    await send_sessions(client, project, [session(release) for _ in range(9)] + [session(release, "crashed")])
    await process(ctx)
    data = (
        await client.get(f"/api/v1/projects/{project['id']}/errors/issues?sort=events", headers=admin_headers(project))
    ).json()["data"]
    crash = next(i for i in data if i["type"] == "TypeError")
    return {"first": first, "latest": latest, "crash_id": crash["id"]}


async def test_issue_list_filters_sorts_and_pages(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    await seed(client, ctx, project)
    await login(client, await _email_of(ctx, project), project["owner_password"])
    base = f"/projects/{project['slug']}/errors"
    page = await client.get(base)
    assert page.status_code == 200
    assert "TypeError: Cannot read property" in page.text and "SlowRender" in page.text
    assert 'href="/projects/{}/errors/releases"'.format(project["slug"]) in page.text  # menu entries are back
    only_warnings = (await client.get(base, params={"level": "warning"})).text
    assert "SlowRender" in only_warnings and "TypeError" not in only_warnings
    searched = (await client.get(base, params={"q": "property 'id'"})).text
    assert "TypeError" in searched and "SlowRender" not in searched
    staging = (await client.get(base, params={"environment": "staging"})).text
    assert "TypeError" in staging and "SlowRender" not in staging
    one_update = (await client.get(base, params={"update_id": UPDATE_ID.upper()})).text
    assert "TypeError" in one_update and "SlowRender" not in one_update
    by_release = (await client.get(base, params={"release": "app@1.0.0+1"})).text
    assert "SlowRender" in by_release and "TypeError" not in by_release
    # Impact: the unhandled crash ranks above the warning whatever their recency.
    impact = (await client.get(base, params={"sort": "impact"})).text
    assert impact.index("TypeError") < impact.index("SlowRender")
    assert (await client.get(base, params={"status": "resolved"})).text.count('class="issue-title"') == 0
    paged = await client.get(base, params={"sort": "events"})
    assert paged.text.index("TypeError") < paged.text.index("SlowRender")
    bad = await client.get(base, params={"sort": "loudest"})
    assert bad.status_code == 400 and "unknown sort" in bad.text


async def _email_of(ctx: Context, project: dict[str, Any]) -> str:
    async with ctx.db.connect() as conn:
        return await _email(conn, project["owner_id"])


async def test_issue_list_paginates(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    events = [error_event(exc_type=f"Error{n}", value="x", frames=[frame(f"fn{n}", "app.mod")]) for n in range(27)]
    await send_events(client, project, *events)
    await process(ctx)
    await login(client, await _email_of(ctx, project), project["owner_password"])
    base = f"/projects/{project['slug']}/errors"
    for sort in ("last_seen", "impact"):
        first = await client.get(base, params={"sort": sort})
        titles = set(re.findall(r'class="issue-title">(Error\d+)', first.text))
        assert len(titles) == 25
        next_url = re.search(r'href="([^"]+)" id="next-page"', first.text)
        assert next_url is not None
        second = await client.get(next_url.group(1).replace("&amp;", "&"))
        rest = set(re.findall(r'class="issue-title">(Error\d+)', second.text))
        assert len(rest) == 2 and not rest & titles
        assert 'id="next-page"' not in second.text


async def test_issue_page_shows_the_crash_and_any_chosen_event(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    seeded = await seed(client, ctx, project)
    await login(client, await _email_of(ctx, project), project["owner_password"])
    url = f"/projects/{project['slug']}/errors/issues/{seeded['crash_id']}"
    page = (await client.get(url)).text
    assert seeded["latest"]["event_id"] in page and "Latest event" in page
    assert 'class="frame in-app"' in page and 'class="frame system"' in page
    assert "return api.save(plant.strain.id);" in page  # the context line, marked current
    assert re.search(r'class="current">\s*88  ', page)
    assert "PlantList -&gt; PlantEditor" in page and "Save button" in page  # breadcrumbs
    assert "iPhone15,2" in page and "17.5" in page and UPDATE_ID in page
    assert re.search(r'id="event-channel">production<', page)
    assert "grower7@example.com" in page
    assert "The app closed when I saved my plant" in page  # feedback attached to the issue
    assert 'aria-label="Events per hour of this issue"' in page and "<polyline" in page
    assert re.search(r'id="issue-impact">(medium|high|critical)<', page)
    assert 'id="older-event"' in page and 'id="newer-event"' not in page
    chosen = (await client.get(url, params={"event": seeded["first"]["event_id"]})).text
    assert seeded["first"]["event_id"] in chosen and "17.4" in chosen and "17.5" not in chosen.split('id="tag')[0]
    assert 'id="newer-event"' in chosen
    other = await client.get(url, params={"event": new_id()})
    assert other.status_code == 404
    assert (await client.get(f"/projects/{project['slug']}/errors/issues/999999")).status_code == 404


async def test_actions_need_csrf_and_the_developer_role(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    seeded = await seed(client, ctx, project)
    issue_url = f"/projects/{project['slug']}/errors/issues/{seeded['crash_id']}"
    viewer_email, viewer_password, _ = await add_member(ctx, project, Role.viewer)
    await login(client, viewer_email, viewer_password)
    page = await client.get(issue_url)
    assert page.status_code == 200 and 'id="actions"' not in page.text and 'id="resolve"' not in page.text
    refused = await client.post(f"{issue_url}/resolve", data={"csrf_token": _csrf(page.text), "resolution": "now"})
    assert refused.status_code == 403

    client.cookies.clear()
    dev_email, dev_password, _ = await add_member(ctx, project, Role.developer)
    await login(client, dev_email, dev_password)
    page = await client.get(issue_url)
    token = _csrf(page.text)
    assert 'id="resolve"' in page.text
    forged = await client.post(f"{issue_url}/resolve", data={"csrf_token": "forged", "resolution": "now"})
    assert forged.status_code == 403
    missing = await client.post(f"{issue_url}/resolve", data={"csrf_token": token, "resolution": "in_release"})
    assert missing.status_code == 400 and "needs the release" in missing.text
    unknown = await client.post(f"{issue_url}/ignore", data={"csrf_token": token, "mode": "events", "count": "x"})
    assert unknown.status_code == 400 and "whole number" in unknown.text

    done = await client.post(
        f"{issue_url}/resolve", data={"csrf_token": token, "resolution": "in_release", "release": "app@2.2.0"}
    )
    assert done.status_code == 303 and done.headers["location"] == issue_url
    page = (await client.get(issue_url)).text
    assert re.search(r'id="issue-status">resolved<', page) and "in_release (app@2.2.0)" in page
    assert (await client.post(f"{issue_url}/unresolve", data={"csrf_token": token})).status_code == 303
    ignored = await client.post(f"{issue_url}/ignore", data={"csrf_token": token, "mode": "users", "count": "5"})
    assert ignored.status_code == 303
    page = (await client.get(issue_url)).text
    assert re.search(r'id="issue-status">ignored<', page) and 'id="issue-ignore">users until' in page
    assert (await client.post(f"{issue_url}/unresolve", data={"csrf_token": token})).status_code == 303
    assert (
        await client.post(f"{issue_url}/assign", data={"csrf_token": token, "assignee": dev_email})
    ).status_code == 303
    assert f'id="issue-assignee">{dev_email}<' in (await client.get(issue_url)).text
    stranger = await client.post(f"{issue_url}/assign", data={"csrf_token": token, "assignee": "nobody@example.com"})
    assert stranger.status_code == 400 and "no user" in stranger.text
    assert (await client.post(f"{issue_url}/explode", data={"csrf_token": token})).status_code == 404
    async with ctx.db.connect() as conn:
        actions = list((await conn.execute(select(audit_log.c.action, audit_log.c.actor_id))).all())
    done_by_dev = {a for a, actor in actions if actor == dev_email}  # the audit names users by email
    assert {
        "errors.issue.resolve",
        "errors.issue.unresolve",
        "errors.issue.ignore",
        "errors.issue.assign",
    } <= done_by_dev


async def test_release_health_page(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    await seed(client, ctx, project)
    await login(client, await _email_of(ctx, project), project["owner_password"])
    base = f"/projects/{project['slug']}/errors/releases"
    page = (await client.get(base)).text
    assert re.search(r'id="total-crash-free-sessions">90.0 %<', page)
    assert re.search(r'<td class="crash-free-sessions">90.0 %</td>', page)
    assert UPDATE_ID in page and "com.example.grow@2.1.0+41#production:" + UPDATE_ID in page
    assert 'aria-label="Crash-free sessions per hour, percent"' in page
    one_update = (await client.get(base, params={"update_id": UPDATE_ID})).text
    assert re.search(r'id="total-sessions">10 ', one_update)
    nothing = (await client.get(base, params={"update_id": str(uuid.uuid4())})).text
    assert re.search(r'id="total-sessions">0 ', nothing)
    assert (await client.get(base, params={"days": "0"})).status_code in (400, 422)
