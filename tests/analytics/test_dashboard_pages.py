"""The analytics dashboard's forms, in process against the real app and database: saving,
opening, pinning, renaming and deleting insights; the tracking-plan editor and its
enforcement switch; the overview's notification opens and crash-free rate read from the
push and errors features; and who may change what."""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from sqlalchemy import select

from shipyard.core import auth
from shipyard.core.auth import Role
from shipyard.core.context import Context
from shipyard.core.models import audit_log
from tests.analytics.helpers import basic, stored, track
from tests.conftest import admin_headers
from tests.dashboard.test_login import login
from tests.errors.helpers import process
from tests.errors.test_release_health import send_sessions, session
from tests.fakes.server import serve_app
from tests.push.conftest import expo_token, register, run_jobs, send, tune
from tests.push.fakes import FakeExpo

PASSWORD = "a long enough password"


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "page has no CSRF field"
    return match.group(1)


def _field(page: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert match, f"page has no {name} field"
    return html.unescape(match.group(1))


async def _member(ctx: Context, project: dict[str, Any], role: Role) -> str:
    email = f"{role.name}-{uuid.uuid4().hex[:6]}@example.com"
    async with ctx.db.transaction() as conn:
        user_id = await auth.create_user(conn, email, PASSWORD)
        await auth.set_role(conn, user_id, project["id"], role)
    return email


@pytest.fixture
def fake_expo(ctx: Context) -> Iterator[FakeExpo]:
    """The Expo push service, faked on loopback, as the push tests use it."""
    fake = FakeExpo()
    with serve_app(fake.app) as url:
        ctx.settings.push_expo_url = url
        tune(ctx)
        yield fake


@pytest.fixture
async def browser_for(app: Any, ctx: Context, project: dict[str, Any]) -> AsyncIterator[Any]:
    """Logged-in clients, one per role asked for: ``await browser_for(Role.viewer)``."""
    opened: list[httpx.AsyncClient] = []

    async def open_as(role: Role) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        opened.append(c)
        response = await login(c, await _member(ctx, project, role), PASSWORD)
        assert response.status_code == 303, response.text
        return c

    yield open_as
    for c in opened:
        await c.aclose()


async def _actions(ctx: Context, project_id: int) -> list[str]:
    async with ctx.db.connect() as conn:
        rows = await conn.execute(
            select(audit_log.c.action).where(audit_log.c.project_id == project_id).order_by(audit_log.c.id)
        )
        return [r.action for r in rows]


async def test_save_open_pin_rename_and_delete_an_insight(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], browser_for: Any
) -> None:
    sent = await client.post(
        "/v1/batch",
        json={"batch": [track("post_liked", "a"), track("post_liked", "b"), track("post_created", "a")]},
        headers=basic(project["write_key"]),
    )
    assert sent.status_code == 200
    base = f"/projects/{project['slug']}/analytics"
    dev = await browser_for(Role.developer)
    page = (await dev.get(f"{base}/trends", params={"events": "post_liked", "interval": "day"})).text
    assert 'id="save-insight"' in page
    form = {"csrf_token": _csrf(page), "kind": "trends", "query": _field(page, "query"), "name": "Likes"}
    saved = await dev.post(f"{base}/insights", data={**form, "rolling": "1", "pinned": "1"})
    assert saved.status_code == 303
    insight_url = saved.headers["location"]
    insight_id = int(insight_url.rsplit("/", 1)[1])

    opened = await dev.get(insight_url)
    assert opened.status_code == 200 and "Likes" in opened.text and "<svg" in opened.text
    assert "the last 30 days" in opened.text  # saved as a rolling range
    csv = await dev.get(insight_url, params={"format": "csv"})
    assert csv.text.splitlines()[0] == "series,breakdown_value,bucket,value"
    assert sum(int(line.rsplit(",", 1)[1]) for line in csv.text.splitlines()[1:]) == 2
    overview = (await dev.get(base)).text
    pinned = overview[overview.index('id="pinned"') :]
    assert "Likes" in pinned and "<svg" in pinned

    token = _csrf(opened.text)
    renamed = await dev.post(f"{base}/insights/{insight_id}/rename", data={"csrf_token": token, "name": "Post likes"})
    assert renamed.status_code == 303
    unpinned = await dev.post(f"{base}/insights/{insight_id}/pin", data={"csrf_token": token, "pinned": "false"})
    assert unpinned.status_code == 303
    listing = (await dev.get(f"{base}/insights")).text
    assert "Post likes" in listing and '<td class="pinned">no</td>' in listing
    assert "Post likes" not in (await dev.get(base)).text
    # A redirect target outside the analytics pages is ignored.
    away = await dev.post(
        f"{base}/insights/{insight_id}/pin", data={"csrf_token": token, "pinned": "true", "next": "https://evil.test/"}
    )
    assert away.headers["location"] == f"{base}/insights"
    deleted = await dev.post(f"{base}/insights/{insight_id}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303
    assert "No saved insights yet" in (await dev.get(f"{base}/insights")).text
    assert (await dev.get(insight_url)).status_code == 404
    assert (await _actions(ctx, project["id"]))[-5:] == [
        "analytics.insight.create",
        "analytics.insight.update",
        "analytics.insight.update",
        "analytics.insight.update",
        "analytics.insight.delete",
    ]

    # Bad input gets a clear 4xx.
    assert (await dev.post(f"{base}/insights", data={**form, "query": "{not json"})).status_code == 400
    assert (await dev.post(f"{base}/insights", data={**form, "name": " "})).status_code == 400
    assert (await dev.post(f"{base}/insights", data={**form, "kind": "crystal-ball"})).status_code == 404
    bad_funnel = {**form, "kind": "funnel", "query": '{"steps": []}'}
    assert (await dev.post(f"{base}/insights", data=bad_funnel)).status_code == 422
    assert (await dev.post(f"{base}/insights", data={**form, "csrf_token": "forged"})).status_code == 403


async def test_viewers_see_saved_insights_but_cannot_change_them(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], browser_for: Any
) -> None:
    base = f"/projects/{project['slug']}/analytics"
    dev = await browser_for(Role.developer)
    page = (await dev.get(f"{base}/retention")).text
    form = {"csrf_token": _csrf(page), "kind": "retention", "query": _field(page, "query"), "name": "Weekly"}
    insight_url = (await dev.post(f"{base}/insights", data={**form, "pinned": "1"})).headers["location"]

    # Kinds the pages have no form for (saved through the API) still open, with their CSV.
    api = f"/api/v1/projects/{project['id']}/analytics/saved-insights"
    for kind, query in (("top-events", {}), ("paths", {"anchor": "post_liked"}), ("sessions", {})):
        body = {"name": f"API {kind}", "kind": kind, "query": query, "pinned": True}
        created = await client.post(api, json=body, headers=admin_headers(project))
        assert created.status_code == 201, created.text
        opened = await dev.get(f"{base}/insights/{created.json()['id']}")
        assert opened.status_code == 200 and f"API {kind}" in opened.text
        assert (await dev.get(f"{base}/insights/{created.json()['id']}", params={"format": "csv"})).status_code == 200
    assert (await dev.get(base)).status_code == 200
    assert (await dev.get(f"{base}/insights/99999999999999999999")).status_code in (400, 404, 422)

    viewer = await browser_for(Role.viewer)
    trends = (await viewer.get(f"{base}/retention")).text
    assert 'id="save-insight"' not in trends
    opened = await viewer.get(insight_url)
    assert opened.status_code == 200 and "Weekly" in opened.text
    assert "Rename" not in opened.text and "Delete" not in opened.text
    assert "Weekly" in (await viewer.get(base)).text  # pinned: on the overview for everyone
    token = _csrf(opened.text)
    assert (await viewer.post(f"{base}/insights", data={**form, "csrf_token": token})).status_code == 403
    for action in ("pin", "rename", "range", "delete"):
        r = await viewer.post(f"{insight_url}/{action}", data={"csrf_token": token, "name": "x", "pinned": "false"})
        assert r.status_code == 403, action


def _trend_total(page: str) -> int:
    """The Total column of the trends table's only row."""
    table = page[page.index('id="trends-table"') :]
    return int(re.findall(r"<td>(\d+)</td></tr>", table)[0])


async def _send_plan_events(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    """a: plan pro on iOS, trait tier gold; b: plan free on Android; c: no plan."""
    batch = [
        {"type": "identify", "userId": "a", "messageId": str(uuid.uuid4()), "traits": {"tier": "gold"}},
        track("post_liked", "a", properties={"plan": "pro", "seats": 12}, context={"os": {"name": "iOS"}}),
        track("post_created", "a", properties={"plan": "pro"}),
        track("post_liked", "b", properties={"plan": "free", "seats": 2}, context={"os": {"name": "Android"}}),
        track("post_created", "b", properties={"plan": "free"}),
        track("post_liked", "c"),
    ]
    sent = await client.post("/v1/batch", json={"batch": batch}, headers=basic(project["write_key"]))
    assert sent.status_code == 200, sent.text


async def test_query_forms_filter_by_properties_and_round_trip_through_saved_insights(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], browser_for: Any
) -> None:
    await _send_plan_events(client, project)
    base = f"/projects/{project['slug']}/analytics"
    dev = await browser_for(Role.developer)
    trends = {"events": "post_liked", "interval": "day", "date_window": "last_7_days"}
    page = (await dev.get(f"{base}/trends", params=trends)).text
    assert _trend_total(page) == 3
    assert 'name="f0_prop"' in page  # a blank filter row is offered

    cases = [
        ({"f0_prop": "plan", "f0_op": "eq", "f0_value": "pro"}, 1),
        ({"f0_prop": "plan", "f0_op": "neq", "f0_value": "pro"}, 2),
        ({"f0_prop": "plan", "f0_op": "is_not_set"}, 1),
        ({"f0_prop": "plan", "f0_op": "in", "f0_value": "pro, free"}, 2),
        ({"f0_prop": "plan", "f0_op": "contains", "f0_value": "RE"}, 1),
        ({"f0_prop": "seats", "f0_op": "gt", "f0_value": "10"}, 1),
        ({"f0_prop": "os.name", "f0_scope": "context", "f0_op": "eq", "f0_value": "Android"}, 1),
        ({"f0_prop": "tier", "f0_scope": "user", "f0_op": "eq", "f0_value": "gold"}, 1),
        # Two rows narrow together; a blank row adds nothing.
        (
            {
                **{"f0_prop": "plan", "f0_op": "is_set", "f1_prop": "seats", "f1_op": "lt", "f1_value": "5"},
                **{"f2_prop": "", "f2_value": ""},
            },
            1,
        ),
    ]
    for filters, expected in cases:
        r = await dev.get(f"{base}/trends", params={**trends, **filters})
        assert r.status_code == 200, (filters, r.text)
        assert _trend_total(r.text) == expected, filters
    # The rows come back filled in, and the CSV link carries them.
    filtered = {**trends, "f0_prop": "tier", "f0_scope": "user", "f0_op": "eq", "f0_value": "gold"}
    page = (await dev.get(f"{base}/trends", params=filtered)).text
    assert _field(page, "f0_prop") == "tier" and _field(page, "f0_value") == "gold"
    assert '<option value="user" selected>' in page
    csv_url = html.unescape(re.search(r'id="csv" href="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert "f0_prop=tier" in csv_url
    csv = (await dev.get(csv_url)).text
    assert sum(int(line.rsplit(",", 1)[1]) for line in csv.splitlines()[1:]) == 1

    # Bad filter input: a clear error on the page, the row kept for correcting, never a 500.
    for bad, message in (
        ({"f0_prop": "plan", "f0_op": "sounds_like", "f0_value": "pro"}, "unknown operator"),
        ({"f0_prop": "plan", "f0_op": "eq", "f0_value": ""}, "equals needs a value"),
        ({"f0_prop": "", "f0_op": "eq", "f0_value": "pro"}, "choose the property"),
        ({"f0_prop": 'pl"an', "f0_value": "pro"}, "quotes"),
        ({"f0_prop": "plan", "f0_scope": "galaxy", "f0_value": "pro"}, "unknown scope"),
        ({"date_window": "last_fortnight"}, "unknown date range"),
    ):
        r = await dev.get(f"{base}/trends", params={**trends, **bad})
        assert r.status_code == 400, bad
        assert message in html.unescape(r.text[r.text.index('id="query-error"') :]), bad

    # Save the filtered trend as "last 7 days": stored relative, with its filter.
    page = (await dev.get(f"{base}/trends", params=filtered)).text
    form = {"csrf_token": _csrf(page), "kind": "trends", "query": _field(page, "query"), "name": "Gold likes"}
    assert '<option value="last_7_days" selected>' in page[page.index('id="save-insight"') :]
    saved = await dev.post(f"{base}/insights", data={**form, "date_window": "last_7_days", "pinned": "1"})
    assert saved.status_code == 303, saved.text
    insight_url = saved.headers["location"]
    stored = (
        await client.get(
            f"/api/v1/projects/{project['slug']}/analytics/saved-insights/{insight_url.rsplit('/', 1)[1]}",
            headers=admin_headers(project),
        )
    ).json()["query"]
    assert stored["date_window"] == "last_7_days" and not stored["date_from"]
    assert stored["filters"] == [{"property": "tier", "scope": "user", "op": "eq", "value": "gold"}]
    opened = (await dev.get(insight_url)).text
    today = datetime.now(UTC).date()
    assert f"the last 7 days ({(today - timedelta(days=6)).isoformat()} to {today.isoformat()}, rolling)" in opened
    assert "tier (user trait) equals gold" in html.unescape(opened)
    assert _trend_total(opened) == 1
    overview = (await dev.get(base)).text
    assert "Gold likes" in overview[overview.index('id="pinned"') :]
    listing = (await dev.get(f"{base}/insights")).text
    assert "the last 7 days" in listing

    # "Edit the query" opens the trends form with the filter and the window, same result.
    edit = html.unescape(re.search(r'id="edit-query" href="([^"]+)"', opened).group(1))  # type: ignore[union-attr]
    edit_params = dict(parse_qsl(urlsplit(edit).query))
    assert edit_params["date_window"] == "last_7_days" and edit_params["f0_scope"] == "user"
    reopened = (await dev.get(edit)).text
    assert _trend_total(reopened) == 1 and _field(reopened, "f0_value") == "gold"
    assert json.loads(_field(reopened, "query"))["filters"] == stored["filters"]

    # A trend saved through the API with only the required fields and a filter opens in the form.
    api_body = {
        "name": "API pro likes",
        "kind": "trends",
        "query": {"series": [{"event": "post_liked"}], "filters": [{"property": "plan", "value": "pro"}]},
    }
    api_saved = await client.post(
        f"/api/v1/projects/{project['slug']}/analytics/saved-insights", json=api_body, headers=admin_headers(project)
    )
    api_page = (await dev.get(f"{base}/insights/{api_saved.json()['id']}")).text
    assert "the last 30 days" in api_page
    api_edit = html.unescape(re.search(r'id="edit-query" href="([^"]+)"', api_page).group(1))  # type: ignore[union-attr]
    assert _trend_total((await dev.get(api_edit)).text) == 1

    # Fixed dates instead: the dates shown when saving, kept as they are.
    fixed = await dev.post(f"{base}/insights", data={**form, "name": "Gold likes (fixed)", "date_window": "fixed"})
    fixed_page = (await dev.get(fixed.headers["location"])).text
    assert f"{(today - timedelta(days=6)).isoformat()} to {today.isoformat()}</span>" in fixed_page
    # And a saved insight's range changes on its page.
    token = _csrf(opened)
    r = await dev.post(f"{insight_url}/range", data={"csrf_token": token, "date_window": "month_to_date"})
    assert r.status_code == 303
    assert "the month to date" in (await dev.get(insight_url)).text
    custom = {"csrf_token": token, "date_window": "custom", "date_from": "2026-01-01", "date_to": "2026-01-31"}
    r = await dev.post(f"{insight_url}/range", data=custom)
    assert r.status_code == 303
    assert "2026-01-01 to 2026-01-31</span>" in (await dev.get(insight_url)).text
    reversed_dates = {**custom, "date_from": "2026-02-01"}
    assert (await dev.post(f"{insight_url}/range", data=reversed_dates)).status_code == 400
    assert (await dev.post(f"{insight_url}/range", data={**custom, "date_window": "soon"})).status_code == 400


async def test_funnel_and_retention_forms_take_filters_too(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], browser_for: Any
) -> None:
    await _send_plan_events(client, project)
    base = f"/projects/{project['slug']}/analytics"
    dev = await browser_for(Role.developer)
    funnel = {"steps": "post_liked, post_created", "date_window": "last_30_days"}
    counts = re.compile(r'<td class="count">(\d+)</td>')
    assert counts.findall((await dev.get(f"{base}/funnel", params=funnel)).text) == ["3", "2"]
    pro = {"f0_prop": "plan", "f0_op": "eq", "f0_value": "pro"}
    page = (
        await dev.get(f"{base}/funnel", params={**funnel, **pro, "breakdown": "tier", "breakdown_scope": "user"})
    ).text
    assert counts.findall(page) == ["1", "1"]
    assert 'id="funnel-breakdown"' in page and "gold" in page

    retention = {"start_event": "post_liked", "return_event": "post_created", "interval": "day", "periods": "1"}
    size_cells = re.compile(r'<td class="size">(\d+)</td>')

    def sizes(page: str) -> int:
        return sum(int(n) for n in size_cells.findall(page))

    assert sizes((await dev.get(f"{base}/retention", params=retention)).text) == 3
    start_pro = {"sf0_prop": "plan", "sf0_op": "eq", "sf0_value": "pro"}
    page = (await dev.get(f"{base}/retention", params={**retention, **start_pro})).text
    assert sizes(page) == 1
    # Saved with its filters, it opens in its form again.
    form = {"csrf_token": _csrf(page), "kind": "retention", "query": _field(page, "query"), "name": "Pro retention"}
    insight_url = (await dev.post(f"{base}/insights", data=form)).headers["location"]
    opened = (await dev.get(insight_url)).text
    assert "start event: plan (event property) equals pro" in html.unescape(opened)
    edit = html.unescape(re.search(r'id="edit-query" href="([^"]+)"', opened).group(1))  # type: ignore[union-attr]
    assert sizes((await dev.get(edit)).text) == 1
    assert (
        await dev.get(f"{base}/retention", params={**retention, "rf0_prop": "x", "rf0_op": "gt"})
    ).status_code == 400


async def test_tracking_plan_editor(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], browser_for: Any
) -> None:
    base = f"/projects/{project['slug']}/analytics"
    dev = await browser_for(Role.developer)
    page = (await dev.get(f"{base}/plan")).text
    assert 'id="empty-plan"' in page
    token = _csrf(page)
    assert (await dev.post(f"{base}/plan/install-default", data={"csrf_token": token})).status_code == 303
    plan_page = (await dev.get(f"{base}/plan")).text
    for area in ("plant_management", "community", "strain_database", "diagnosis", "calendar_reminders"):
        assert f'data-area="{area}"' in plan_page
    edit = (await dev.get(f"{base}/plan/edit", params={"event": "care_task_completed"})).text
    assert _field(edit, "prop_name_1") == "task_type" and 'name="prop_required_1" value="1" checked' in edit

    new_schema = {
        "csrf_token": token,
        "event": "photo_uploaded",
        "description": "A grow photo was added.",
        "feature_area": "diagnosis",
        "prop_name_0": "plant_id",
        "prop_type_0": "string",
        "prop_required_0": "1",
        "prop_name_1": "size_kb",
        "prop_type_1": "integer",
        "prop_name_2": "",
        "prop_type_2": "any",
    }
    assert (await dev.post(f"{base}/plan/save", data=new_schema)).status_code == 303
    plan_page = (await dev.get(f"{base}/plan")).text
    assert 'data-event="photo_uploaded"' in plan_page
    assert "<code>plant_id</code>: string (required)" in plan_page
    wrong_type = await dev.post(f"{base}/plan/save", data={**new_schema, "prop_type_1": "decimal"})
    assert wrong_type.status_code == 400 and "unknown type" in wrong_type.text
    assert 'value="photo_uploaded"' in wrong_type.text  # the form comes back with what was typed
    twice = await dev.post(f"{base}/plan/save", data={**new_schema, "prop_name_1": "plant_id"})
    assert twice.status_code == 400 and "listed twice" in twice.text
    dollar = await dev.post(f"{base}/plan/save", data={**new_schema, "event": "$screen"})
    assert dollar.status_code == 400

    # Switching to block is an admin's decision; then violating events are refused and reported.
    assert (
        await dev.post(f"{base}/plan/enforcement", data={"csrf_token": token, "plan_enforcement": "block"})
    ).status_code == 403
    admin = await browser_for(Role.admin)
    admin_token = _csrf((await admin.get(f"{base}/plan")).text)
    bad_mode = await admin.post(f"{base}/plan/enforcement", data={"csrf_token": admin_token, "plan_enforcement": "x"})
    assert bad_mode.status_code == 400
    switched = await admin.post(
        f"{base}/plan/enforcement", data={"csrf_token": admin_token, "plan_enforcement": "block"}
    )
    assert switched.status_code == 303
    before = len(await stored(ctx, project["id"]))
    r = await client.post(
        "/v1/batch",
        json={
            "batch": [
                track("photo_uploaded", "g1", properties={"size_kb": 12}),
                track("photo_uploaded", "g1", properties={"plant_id": "p1"}),
            ]
        },
        headers=basic(project["write_key"]),
    )
    assert r.status_code == 200
    assert len(await stored(ctx, project["id"])) == before + 1  # only the valid one
    plan_page = (await dev.get(f"{base}/plan")).text
    assert 'id="enforcement-mode">recorded and not stored' in plan_page
    violations = plan_page[plan_page.index('id="violations"') :]
    assert "photo_uploaded" in violations and "missing_property" in violations
    edit = (await dev.get(f"{base}/plan/edit", params={"event": "photo_uploaded"})).text
    assert "missing_property" in edit[edit.index('id="event-violations"') :]

    deleted = await dev.post(f"{base}/plan/delete", data={"csrf_token": token, "event": "photo_uploaded"})
    assert deleted.status_code == 303
    assert 'data-event="photo_uploaded"' not in (await dev.get(f"{base}/plan")).text.split('id="violations"')[0]
    again = await dev.post(f"{base}/plan/delete", data={"csrf_token": token, "event": "photo_uploaded"})
    assert again.status_code == 404
    actions = await _actions(ctx, project["id"])
    for action in (
        "analytics.plan.install_default",
        "analytics.plan.schema.create",
        "analytics.settings.update",
        "analytics.plan.schema.delete",
    ):
        assert action in actions

    viewer = await browser_for(Role.viewer)
    seen = (await viewer.get(f"{base}/plan/edit", params={"event": "plant_created"})).text
    assert "Save schema" not in seen and "plant_id" in seen
    assert (await viewer.post(f"{base}/plan/save", data={**new_schema, "csrf_token": _csrf(seen)})).status_code == 403


async def test_overview_shows_notification_opens_and_crash_free_rate(
    client: httpx.AsyncClient,
    ctx: Context,
    project: dict[str, Any],
    fake_expo: FakeExpo,
    browser_for: Any,
) -> None:
    for n in range(2):
        await register(client, project, expo_token(f"o{n}"), user_id=f"u{n}")
    sent = await send(client, project, {"to": {"user_ids": ["u0", "u1"]}, "notification": {"title": "Water me"}})
    assert sent.status_code in (200, 201, 202), sent.text
    await run_jobs(ctx, until=lambda: _delivered(fake_expo, 2))
    message_id = fake_expo.received[0]["data"]["_sid"]
    opened = await client.post(
        "/push/v1/engagement",
        json={"message_id": message_id, "event": "opened"},
        headers={"X-Shipyard-Key": project["public_key"]},
    )
    assert opened.status_code == 200
    release = "app@1.0.0+1"
    await send_sessions(
        client, project, [session(release, "exited"), session(release, "exited"), session(release, "crashed")]
    )
    await process(ctx)
    await client.post(
        "/v1/batch", json={"batch": [track("Push Notification Opened", "u0")]}, headers=basic(project["write_key"])
    )

    page = (await (await browser_for(Role.viewer)).get(f"/projects/{project['slug']}/analytics")).text
    assert re.search(r'id="notification-opens">1<', page)
    assert re.search(r'id="notification-open-rate">2 · 50.0 %<', page)
    assert re.search(r'id="tracked-opens">1<', page)
    assert "66.7 %" in page[page.index('id="crash-free-sessions"') :][:80]


async def _delivered(fake: FakeExpo, count: int) -> bool:
    return len(fake.received) >= count
