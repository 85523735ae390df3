"""User feedback (``user_report`` and the newer ``feedback`` item) attached to its event and
issue, also when it arrives before the event; and the retention purge, by age and by the
per-project event cap, which keeps every issue's counts, users and tags."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.errors import retention
from shipyard.errors.models import event_data, events, feedback
from tests.conftest import admin_headers
from tests.dashboard.test_login import login
from tests.errors.helpers import envelope, error_event, frame, new_id, post, process, send_events
from tests.errors.test_dashboard import _email as owner_email


def base(project: dict[str, Any]) -> str:
    return f"/api/v1/projects/{project['id']}/errors"


def crash(kind: str, **kwargs: Any) -> dict[str, Any]:
    return error_event(exc_type=kind, value="x", frames=[frame(kind.lower(), "app.mod")], **kwargs)


async def issue_of(client: httpx.AsyncClient, project: dict[str, Any], event_id: str) -> int:
    detail = (await client.get(f"{base(project)}/events/{event_id}", headers=admin_headers(project))).json()
    return int(detail["issue_id"])


async def test_feedback_items_attach_to_their_event_and_issue(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    saving, loading = crash("SaveError"), crash("LoadError")
    late = crash("SaveError")  # its feedback arrives first (the SDK sent it from another envelope)
    modern_feedback = {
        "event_id": new_id(),
        "type": "feedback",
        "contexts": {
            "feedback": {
                "message": "Saving my grow log did nothing",
                "contact_email": "ann@example.com",
                "name": "Ann",
                "url": "app://grow-log",
                "associated_event_id": saving["event_id"],
            }
        },
    }
    report = {"event_id": late["event_id"], "name": "Bo", "comments": "Crashed again on save"}
    assert (await post(client, project, envelope([({"type": "user_report"}, report)]))).status_code == 200
    await process(ctx)
    await send_events(client, project, saving, loading)
    body = envelope([({"type": "feedback"}, modern_feedback)])
    assert (await post(client, project, body)).status_code == 200
    await send_events(client, project, late)
    await process(ctx)

    headers = admin_headers(project)
    save_issue = await issue_of(client, project, saving["event_id"])
    load_issue = await issue_of(client, project, loading["event_id"])
    assert await issue_of(client, project, late["event_id"]) == save_issue
    on_issue = (await client.get(f"{base(project)}/issues/{save_issue}/feedback", headers=headers)).json()["data"]
    by_comment = {f["comments"]: f for f in on_issue}
    assert set(by_comment) == {"Saving my grow log did nothing", "Crashed again on save"}
    modern = by_comment["Saving my grow log did nothing"]
    assert modern["event_id"] == saving["event_id"] and modern["source"] == "feedback"
    assert modern["email"] == "ann@example.com" and modern["url"] == "app://grow-log"
    assert by_comment["Crashed again on save"]["event_id"] == late["event_id"]
    assert (await client.get(f"{base(project)}/issues/{load_issue}/feedback", headers=headers)).json()["data"] == []
    detail = (await client.get(f"{base(project)}/issues/{save_issue}", headers=headers)).json()
    assert detail["feedback_count"] == 2


async def test_feedback_without_comments_is_not_stored(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    report = {"event_id": new_id(), "name": "Bo", "comments": "   "}
    assert (await post(client, project, envelope([({"type": "user_report"}, report)]))).status_code == 200
    await process(ctx)
    async with ctx.db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(feedback))).scalar_one() == 0


async def test_retention_purges_old_events_and_keeps_issue_counts(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    headers = admin_headers(project)
    settings = await client.put(f"{base(project)}/settings", json={"retention_days": 30}, headers=headers)
    assert settings.status_code == 200, settings.text
    old = [crash("OldError", user={"id": f"u{n}"}) for n in range(3)]
    await send_events(client, project, *old, crash("MixedError", user={"id": "u9"}))
    await process(ctx)
    report = {"event_id": old[0]["event_id"], "comments": "old feedback"}
    assert (await post(client, project, envelope([({"type": "user_report"}, report)]))).status_code == 200
    await process(ctx)
    # Those events were received 31 days ago.
    long_ago = utcnow() - timedelta(days=31)
    async with ctx.db.transaction() as conn:
        await conn.execute(update(events).values(received_at=long_ago))
        await conn.execute(update(feedback).values(created_at=long_ago))
    recent = crash("MixedError", user={"id": "u10"})
    await send_events(client, project, recent)
    await process(ctx)
    before = {i["title"]: i for i in (await client.get(f"{base(project)}/issues", headers=headers)).json()["data"]}

    purged = await retention.purge(ctx)
    assert purged["events"] == 4 and purged["feedback"] == 1

    after = {i["title"]: i for i in (await client.get(f"{base(project)}/issues", headers=headers)).json()["data"]}
    for title in ("OldError: x", "MixedError: x"):
        for key in ("count", "user_count", "first_seen", "last_seen", "first_release"):
            assert after[title][key] == before[title][key], (title, key)
    assert after["OldError: x"]["count"] == 3 and after["MixedError: x"]["count"] == 2
    old_issue = after["OldError: x"]["id"]
    detail = (await client.get(f"{base(project)}/issues/{old_issue}", headers=headers)).json()
    assert detail["latest_event"] is None and detail["tags"]["release"][0]["count"] == 3
    events_left = (await client.get(f"{base(project)}/issues/{old_issue}/events", headers=headers)).json()["data"]
    assert events_left == []
    gone = await client.get(f"{base(project)}/events/{old[0]['event_id']}", headers=headers)
    assert gone.status_code == 404
    kept = await client.get(f"{base(project)}/events/{recent['event_id']}", headers=headers)
    assert kept.status_code == 200
    async with ctx.db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(event_data))).scalar_one() == 1
        owner = await owner_email(conn, project["owner_id"])
    # The dashboard still shows the issue and its counts, and says where the events went.
    await login(client, owner, project["owner_password"])
    page = await client.get(f"/projects/{project['slug']}/errors/issues/{old_issue}")
    assert page.status_code == 200 and "purged by retention" in page.text
    assert 'id="issue-count">3<' in page.text


async def test_the_event_cap_keeps_the_newest_events(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    headers = admin_headers(project)
    assert (await client.put(f"{base(project)}/settings", json={"max_events": 100}, headers=headers)).is_success
    sent = [crash("CapError") for _ in range(130)]
    await send_events(client, project, *sent)
    await process(ctx)
    purged = await retention.purge(ctx)
    assert purged["events"] == 30
    async with ctx.db.connect() as conn:
        kept = set((await conn.execute(select(events.c.event_id))).scalars())
    # The newest 100 stay; the issue still counts all 130.
    assert len(kept) == 100 and sent[-1]["event_id"] in kept and sent[0]["event_id"] not in kept
    issue = (await client.get(f"{base(project)}/issues", headers=headers)).json()["data"][0]
    assert issue["count"] == 130
