"""The admin API: events and users, data-subject export/erase, tracking plan, insights, saved insights."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from shipyard.analytics import rollups, sqlparts
from shipyard.analytics.models import daily_counts, insights
from shipyard.core.context import Context
from shipyard.core.models import audit_log
from tests.analytics.helpers import basic, iso, stored, track
from tests.conftest import admin_headers


def _api(project: dict[str, Any]) -> str:
    return f"/api/v1/projects/{project['slug']}/analytics"


async def _send(client: httpx.AsyncClient, project: dict[str, Any], *batch: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/v1/batch", json={"batch": list(batch)}, headers=basic(project["write_key"]))
    assert r.status_code == 200, r.text
    return r.json()


async def _actions(ctx: Context) -> list[str]:
    async with ctx.db.connect() as conn:
        return [r.action for r in await conn.execute(select(audit_log.c.action).order_by(audit_log.c.seq))]


async def test_events_and_users_are_paginated(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    await _send(client, project, *[track(f"e{i}", f"user-{i % 3}") for i in range(5)])
    headers = admin_headers(project)
    r = await client.get(f"{_api(project)}/events", params={"limit": 2}, headers=headers)
    page1 = r.json()
    assert [e["event"] for e in page1["data"]] == ["e4", "e3"]
    r = await client.get(
        f"{_api(project)}/events", params={"limit": 2, "cursor": page1["next_cursor"]}, headers=headers
    )
    assert [e["event"] for e in r.json()["data"]] == ["e2", "e1"]
    r = await client.get(f"{_api(project)}/events", params={"user": "user-1"}, headers=headers)
    assert [e["event"] for e in r.json()["data"]] == ["e4", "e1"]
    r = await client.get(f"{_api(project)}/events", params={"cursor": "!!"}, headers=headers)
    assert r.status_code == 400
    await _send(client, project, {"type": "identify", "userId": "user-0", "traits": {"plantCount": 2}})
    r = await client.get(f"{_api(project)}/users", params={"limit": 10}, headers=headers)
    assert [u["user_key"] for u in r.json()["data"]] == ["user-0"]  # others appear once rolled up
    r = await client.get(f"{_api(project)}/users/profile", params={"user_id": "user-0"}, headers=headers)
    assert r.json()["traits"] == {"plantCount": 2}
    assert r.json()["events"] == 3


async def test_export_and_erase_a_user(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    headers = basic(project["write_key"])
    await _send(client, project, track("strain_searched", None, anonymous_id="dev-1"))
    await client.post("/v1/consent", json={"anonymousId": "dev-1", "purposes": {"analytics": True}}, headers=headers)
    await _send(
        client,
        project,
        {"type": "identify", "userId": "gdpr-1", "anonymousId": "dev-1", "traits": {"email": "g@example.com"}},
        {"type": "group", "userId": "gdpr-1", "groupId": "club"},
        track("post_created", "other"),
    )
    await rollups.run_rollup(ctx)
    url = f"{_api(project)}/users"
    r = await client.get(f"{url}/export", params={"user_id": "dev-1"}, headers=admin_headers(project))
    assert r.status_code == 200
    exported = r.json()
    assert exported["user_key"] == "gdpr-1"
    assert sorted(exported["ids"]) == ["dev-1", "gdpr-1"]
    assert exported["profile"]["traits"] == {"email": "g@example.com"}
    assert exported["consent"] == {"analytics": True}
    assert exported["groups"] == ["club"]
    assert [e["event"] for e in exported["events"]] == ["strain_searched", "$identify", "$group"]
    r = await client.delete(url, params={"user_id": "gdpr-1"}, headers=admin_headers(project))
    assert r.status_code == 200
    assert r.json()["rows_erased"] >= 7
    assert [row.user_key for row in await stored(ctx, project["id"])] == ["other"]
    async with ctx.db.connect() as conn:
        total = (await conn.execute(select(func.sum(daily_counts.c.count)))).scalar()
    assert total == 1  # the rolled-up counts no longer include the erased user's events
    r = await client.get(f"{url}/export", params={"user_id": "gdpr-1"}, headers=admin_headers(project))
    assert r.json()["events"] == [] and r.json()["profile"] is None
    assert {"analytics.user.export", "analytics.user.erase"} <= set(await _actions(ctx))


async def test_tracking_plan_violations_and_blocking(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    api, headers = _api(project), admin_headers(project)
    r = await client.post(f"{api}/tracking-plan/install-default", headers=headers)
    assert len(r.json()["added"]) == 12
    assert (await client.post(f"{api}/tracking-plan/install-default", headers=headers)).json()["added"] == []
    plan_page = (await client.get(f"{api}/tracking-plan", params={"limit": 100}, headers=headers)).json()
    assert {s["event"] for s in plan_page["data"]} >= {"plant_created", "diagnosis_result_viewed", "calendar_viewed"}
    body = await _send(
        client,
        project,
        track("plant_created", properties={"plant_id": "p1", "strain": "Haze"}),  # fine
        track("plant_created", properties={"strain": 7}),  # missing plant_id, strain not a string
        track("plant_deleted", properties={}),  # not in the plan
    )
    assert "not_stored" not in body  # recorded, not blocked
    report = (await client.get(f"{api}/tracking-plan/violations", headers=headers)).json()["data"]
    found = {(v["event"], v["kind"], v["property"]): v["count"] for v in report}
    assert found == {
        ("plant_created", "missing_property", "plant_id"): 1,
        ("plant_created", "wrong_type", "strain"): 1,
        ("plant_deleted", "unplanned_event", None): 1,
    }
    r = await client.patch(f"{api}/settings", json={"plan_enforcement": "block"}, headers=headers)
    assert r.status_code == 200
    body = await _send(client, project, track("plant_deleted"), track("calendar_viewed", properties={"view": "week"}))
    assert body["not_stored"] == {"plan_blocked": 1}
    assert [row.event for row in await stored(ctx, project["id"])][-1] == "calendar_viewed"
    settings = (await client.get(f"/v1/projects/{project['write_key']}/settings")).json()
    assert settings["plan"]["track"]["__default"]["enabled"] is False
    assert settings["plan"]["track"]["calendar_viewed"]["enabled"] is True
    # A custom schema, then bad schemas.
    schema = {
        "description": "Grow journal entry",
        "feature_area": "journal",
        "properties": [{"name": "words", "type": "integer", "required": True}],
    }
    r = await client.put(f"{api}/tracking-plan/events/journal_written", json=schema, headers=headers)
    assert r.status_code == 201
    assert (
        await client.put(f"{api}/tracking-plan/events/journal_written", json=schema, headers=headers)
    ).status_code == 200
    bad = {"properties": [{"name": "x", "type": "date"}]}
    assert (await client.put(f"{api}/tracking-plan/events/x", json=bad, headers=headers)).status_code == 422
    dup = {"properties": [{"name": "x"}, {"name": "x"}]}
    assert (await client.put(f"{api}/tracking-plan/events/x", json=dup, headers=headers)).status_code == 400
    assert (await client.delete(f"{api}/tracking-plan/events/journal_written", headers=headers)).status_code == 204
    assert (await client.delete(f"{api}/tracking-plan/events/journal_written", headers=headers)).status_code == 404
    assert "analytics.plan.schema.create" in await _actions(ctx)


async def test_insights_json_csv_and_errors(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    api, headers = _api(project), admin_headers(project)
    start = datetime.now(UTC) - timedelta(days=2)
    await _send(
        client,
        project,
        track("plant_created", "a", timestamp=iso(start)),
        track("care_task_completed", "a", timestamp=iso(start + timedelta(minutes=10))),
        track("plant_created", "b", timestamp=iso(start)),
    )
    today = date.today().isoformat()
    funnel = {
        "date_from": (date.today() - timedelta(days=6)).isoformat(),
        "date_to": today,
        "steps": [{"event": "plant_created"}, {"event": "care_task_completed"}],
    }
    r = await client.post(f"{api}/insights/funnel", json=funnel, headers=headers)
    assert r.status_code == 200, r.text
    assert [s["count"] for s in r.json()["steps"]] == [2, 1]
    r = await client.post(f"{api}/insights/funnel", params={"format": "csv"}, json=funnel, headers=headers)
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(r.text)))
    assert table[0][:4] == ["breakdown_value", "step", "label", "users"]
    assert [row[3] for row in table[1:]] == ["2", "1"]
    r = await client.post(f"{api}/insights/trends", json={"series": [{"event": "plant_created"}]}, headers=headers)
    assert r.json()["series"][0]["total"] == 2
    r = await client.post(f"{api}/insights/funnel", json={"steps": [{"event": "x"}]}, headers=headers)
    assert r.status_code == 422
    r = await client.post(
        f"{api}/insights/trends",
        json={"series": [{"event": "x"}], "date_from": today, "date_to": "2020-01-01"},
        headers=headers,
    )
    assert r.status_code == 400
    bad_filter = {"series": [{"event": "x", "filters": [{"property": 'a"b', "value": 1}]}]}
    assert (await client.post(f"{api}/insights/trends", json=bad_filter, headers=headers)).status_code == 422
    for kind in ("active-users", "stickiness", "top-events", "top-screens", "sessions", "lifecycle", "feature-areas"):
        r = await client.post(f"{api}/insights/{kind}", json={}, headers=headers)
        assert r.status_code == 200, (kind, r.text)
        r = await client.post(f"{api}/insights/{kind}", params={"format": "csv"}, json={}, headers=headers)
        assert r.status_code == 200, (kind, r.text)
    r = await client.post(f"{api}/insights/paths", json={"anchor": "plant_created"}, headers=headers)
    assert r.json()["top"][0]["item"] == "care_task_completed"
    r = await client.post(f"{api}/insights/retention", json={"start_event": "plant_created"}, headers=headers)
    assert r.status_code == 200
    r = await client.post(f"{api}/insights/feature-adoption", json={"feature_area": "nope"}, headers=headers)
    assert r.status_code == 400
    r = await client.get(f"{api}/overview", headers=headers)
    assert r.json()["events_last_7_days"] == 3
    assert r.json()["top_events"][0] == {"event": "plant_created", "count": 2}


async def test_saved_insights(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    api, headers = _api(project), admin_headers(project)
    await _send(client, project, track("post_liked", "a"))
    body = {"name": "Likes", "kind": "trends", "query": {"series": [{"event": "post_liked"}]}, "pinned": True}
    r = await client.post(f"{api}/saved-insights", json=body, headers=headers)
    assert r.status_code == 201
    saved = r.json()
    r = await client.get(f"{api}/saved-insights/{saved['id']}/result", headers=headers)
    assert r.json()["series"][0]["total"] == 1
    r = await client.get(f"{api}/saved-insights/{saved['id']}/result", params={"format": "csv"}, headers=headers)
    assert r.text.splitlines()[0] == "series,breakdown_value,bucket,value"
    r = await client.patch(
        f"{api}/saved-insights/{saved['id']}", json={"name": "Post likes", "pinned": False}, headers=headers
    )
    assert (r.json()["name"], r.json()["pinned"]) == ("Post likes", False)
    bad = {"name": "Broken", "kind": "funnel", "query": {"steps": []}}
    assert (await client.post(f"{api}/saved-insights", json=bad, headers=headers)).status_code == 422
    unknown = {"name": "?", "kind": "crystal-ball", "query": {}}
    assert (await client.post(f"{api}/saved-insights", json=unknown, headers=headers)).status_code == 404
    listing = (await client.get(f"{api}/saved-insights", headers=headers)).json()
    assert [i["name"] for i in listing["data"]] == ["Post likes"]
    assert (await client.delete(f"{api}/saved-insights/{saved['id']}", headers=headers)).status_code == 204
    assert (await client.get(f"{api}/saved-insights/{saved['id']}", headers=headers)).status_code == 404
    assert {"analytics.insight.create", "analytics.insight.update", "analytics.insight.delete"} <= set(
        await _actions(ctx)
    )


async def test_viewer_reads_but_cannot_write(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    r = await client.post(
        f"/api/v1/projects/{project['slug']}/keys",
        json={"name": "ro", "role": "viewer"},
        headers=admin_headers(project),
    )
    viewer = {"Authorization": f"Bearer {r.json()['secret_key']}"}
    api = _api(project)
    assert (await client.post(f"{api}/insights/top-events", json={}, headers=viewer)).status_code == 200
    assert (await client.get(f"{api}/tracking-plan", headers=viewer)).status_code == 200
    assert (await client.post(f"{api}/tracking-plan/install-default", headers=viewer)).status_code == 403
    assert (
        await client.post(f"{api}/saved-insights", json={"name": "x", "kind": "trends"}, headers=viewer)
    ).status_code == 403
    assert (await client.get(f"{api}/users/export", params={"user_id": "u"}, headers=viewer)).status_code == 403
    assert (
        await client.post(f"{api}/insights/top-events", json={}, headers=basic(project["write_key"]))
    ).status_code == 401


# --- saved insights with filters and rolling windows, on SQLite and PostgreSQL -------------------------


class _Clock:
    """Moves the day rolling windows resolve against (sqlparts reads ``datetime.now``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.shift = timedelta(0)
        clock = self

        class ShiftedDatetime(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> ShiftedDatetime:
                real = datetime.now(tz)
                return cls.fromtimestamp(real.timestamp() + clock.shift.total_seconds(), tz)

        monkeypatch.setattr(sqlparts, "datetime", ShiftedDatetime)


async def test_saved_insight_with_filters_and_a_rolling_window_shows_the_current_window(
    any_client: httpx.AsyncClient, any_ctx: Context, any_project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, project = any_client, any_project
    api, headers = _api(project), admin_headers(project)
    now = datetime.now(UTC)
    await _send(
        client,
        project,
        *(
            track("plant_created", "a", timestamp=iso(now - timedelta(days=d)), properties={"plan": "pro"})
            for d in (0, 1, 5, 20)
        ),
        track("plant_created", "b", timestamp=iso(now), properties={"plan": "free"}),
        track("plant_created", "c", timestamp=iso(now - timedelta(days=2)), properties={"seats": 12}),
    )
    query = {
        "date_window": "last_7_days",
        "series": [{"event": "plant_created"}],
        "filters": [{"property": "plan", "op": "eq", "value": "pro"}],
    }
    r = await client.post(
        f"{api}/saved-insights",
        json={"name": "Pro plants", "kind": "trends", "query": query, "pinned": True},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    saved = r.json()
    # Stored as relative: no dates are frozen in.
    assert saved["query"]["date_window"] == "last_7_days"
    assert not saved["query"].get("date_from") and not saved["query"].get("date_to")

    clock = _Clock(monkeypatch)
    today = sqlparts.datetime.now(UTC).date()
    r = await client.get(f"{api}/saved-insights/{saved['id']}/result", headers=headers)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["buckets"][0] == (today - timedelta(days=6)).isoformat()
    assert result["buckets"][-1] == today.isoformat() and len(result["buckets"]) == 7
    assert result["series"][0]["total"] == 3  # days 0, 1 and 5 of plan=pro; not day 20, not b's free plan

    # Three days later the same insight covers the three days after, and its days 5 drops out.
    clock.shift = timedelta(days=3)
    result = (await client.get(f"{api}/saved-insights/{saved['id']}/result", headers=headers)).json()
    assert result["buckets"][0] == (today - timedelta(days=3)).isoformat()
    assert result["buckets"][-1] == (today + timedelta(days=3)).isoformat()
    assert result["series"][0]["total"] == 2
    csv_text = (
        await client.get(f"{api}/saved-insights/{saved['id']}/result", params={"format": "csv"}, headers=headers)
    ).text
    assert sum(int(line.rsplit(",", 1)[1]) for line in csv_text.splitlines()[1:]) == 2
    clock.shift = timedelta(0)

    # Other windows, on the ad-hoc endpoint too; other filter operators.
    numeric = {"series": [{"event": "plant_created"}], "filters": [{"property": "seats", "op": "gt", "value": 10}]}
    for window, first in (
        ("last_14_days", today - timedelta(days=13)),
        ("last_90_days", today - timedelta(days=89)),
        ("month_to_date", today.replace(day=1)),
    ):
        r = await client.post(f"{api}/insights/trends", json={**numeric, "date_window": window}, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["buckets"][0] == first.isoformat(), window
        assert r.json()["series"][0]["total"] == 1
    r = await client.post(
        f"{api}/insights/trends",
        json={**numeric, "date_window": "last_12_months", "interval": "month"},
        headers=headers,
    )
    assert r.status_code == 200 and r.json()["series"][0]["total"] == 1
    missing = {"series": [{"event": "plant_created"}], "filters": [{"property": "plan", "op": "is_not_set"}]}
    assert (await client.post(f"{api}/insights/trends", json=missing, headers=headers)).json()["series"][0][
        "total"
    ] == 1

    # Switching a saved insight to fixed dates, and back to a window.
    fixed = {
        **query,
        "date_window": None,
        "date_from": (today - timedelta(days=30)).isoformat(),
        "date_to": today.isoformat(),
    }
    r = await client.patch(f"{api}/saved-insights/{saved['id']}", json={"query": fixed}, headers=headers)
    assert r.status_code == 200, r.text
    result = (await client.get(f"{api}/saved-insights/{saved['id']}/result", headers=headers)).json()
    assert result["series"][0]["total"] == 4 and len(result["buckets"]) == 31

    # Contradictory or unknown ranges are refused with a clear 4xx.
    both = {**query, "date_from": today.isoformat()}
    r = await client.patch(f"{api}/saved-insights/{saved['id']}", json={"query": both}, headers=headers)
    assert r.status_code == 400 and "either date_window or date_from" in r.json()["error"]["message"]
    r = await client.post(f"{api}/insights/trends", json={**query, "date_window": "last_3_fortnights"}, headers=headers)
    assert r.status_code == 422
    body = {"name": "x", "kind": "trends", "query": {**query, "date_window": "yesterday"}}
    r = await client.post(f"{api}/saved-insights", json=body, headers=headers)
    assert r.status_code == 422 and "date_window" in r.json()["error"]["message"]
    bad_op = {**query, "filters": [{"property": "plan", "op": "sounds_like", "value": "pro"}]}
    r = await client.post(
        f"{api}/saved-insights", json={"name": "x", "kind": "trends", "query": bad_op}, headers=headers
    )
    assert r.status_code == 422


async def test_insights_saved_before_rolling_windows_still_run(
    any_client: httpx.AsyncClient, any_ctx: Context, any_project: dict[str, Any]
) -> None:
    api, headers = _api(any_project), admin_headers(any_project)
    await _send(any_client, any_project, track("plant_created", "a", timestamp=iso(datetime.now(UTC))))
    today = datetime.now(UTC).date()
    old_queries = {
        "fixed": {"date_from": (today - timedelta(days=2)).isoformat(), "date_to": today.isoformat()},
        "no dates": {},
    }
    async with any_ctx.db.transaction() as conn:
        for name, dates in old_queries.items():
            await conn.execute(
                insights.insert().values(
                    project_id=any_project["id"],
                    name=name,
                    kind="trends",
                    query={"interval": "day", "series": [{"event": "plant_created"}], **dates},
                    pinned=False,
                    created_at=datetime.now(UTC),
                    updated_at=datetime.now(UTC),
                )
            )
    listing = (await any_client.get(f"{api}/saved-insights", headers=headers)).json()["data"]
    lengths = {}
    for saved in listing:
        r = await any_client.get(f"{api}/saved-insights/{saved['id']}/result", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["series"][0]["total"] == 1
        lengths[saved["name"]] = len(r.json()["buckets"])
    assert lengths == {"fixed": 3, "no dates": 30}
