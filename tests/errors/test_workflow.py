"""The issue workflow: resolve (now / next release / in release), regressions with alerts,
ignore (forever / for a time / N events / N users), assignment, time to resolve, fix
verification, audit trail, roles, and the CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from shipyard.core import alerts, auth
from shipyard.core.auth import Role
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.models import audit_log, users
from shipyard.errors import jobs as errors_jobs
from shipyard.errors.models import issues
from tests.conftest import admin_headers
from tests.errors.helpers import error_event, process, send_events


def base(project: dict[str, Any]) -> str:
    return f"/api/v1/projects/{project['id']}/errors"


async def only_issue(client: httpx.AsyncClient, project: dict[str, Any]) -> dict[str, Any]:
    data = (await client.get(f"{base(project)}/issues", headers=admin_headers(project))).json()["data"]
    assert len(data) == 1, data
    detail = (await client.get(f"{base(project)}/issues/{data[0]['id']}", headers=admin_headers(project))).json()
    return dict(detail)


async def act(
    client: httpx.AsyncClient,
    project: dict[str, Any],
    issue_id: int,
    action: str,
    body: dict[str, Any] | None = None,
    status: int = 200,
) -> dict[str, Any]:
    response = await client.post(
        f"{base(project)}/issues/{issue_id}/{action}", json=body or {}, headers=admin_headers(project)
    )
    assert response.status_code == status, response.text
    return dict(response.json())


async def event_in(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], release: str | None, **kwargs: Any
) -> dict[str, Any]:
    await send_events(client, project, error_event(release=release, **kwargs))
    await process(ctx)
    return await only_issue(client, project)


async def test_resolve_in_next_release_regresses_only_on_a_newer_release(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    issue = await event_in(client, ctx, project, "app@1.0.0+1")
    assert issue["substatus"] == "new" and issue["first_release"] == "app@1.0.0+1"
    resolved = await act(client, project, issue["id"], "resolve", {"resolution": "in_next_release"})
    assert resolved["status"] == "resolved" and resolved["resolved_in"] == "app@1.0.0+1"
    # Old builds still crash: not a regression.
    still = await event_in(client, ctx, project, "app@1.0.0+1")
    assert still["status"] == "resolved" and still["count"] == 2
    regressed = await event_in(client, ctx, project, "app@1.1.0+7")
    assert regressed["status"] == "unresolved" and regressed["substatus"] == "regressed"
    assert regressed["regression_count"] == 1 and regressed["resolution"] is None
    async with ctx.db.connect() as conn:
        firing = await alerts.list_alerts(conn, project["id"], status="firing")
        actions = set((await conn.execute(select(audit_log.c.action))).scalars())
    assert any(a.summary.startswith("Regression: ValueError") for a in firing)
    assert any(a.summary.startswith("New issue: ValueError") for a in firing)
    assert {"errors.issue.resolve", "errors.issue.regressed"} <= actions
    timeline = (
        await client.get(f"{base(project)}/issues/{issue['id']}/activity", headers=admin_headers(project))
    ).json()["data"]
    assert [t["kind"] for t in timeline][:2] == ["regressed", "resolve"]


async def test_resolve_in_release_and_resolve_now(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    issue = await event_in(client, ctx, project, "app@1.0.0")
    await act(client, project, issue["id"], "resolve", {"resolution": "in_release", "release": "app@2.0.0"})
    assert (await event_in(client, ctx, project, "app@1.5.0"))["status"] == "resolved"
    assert (await event_in(client, ctx, project, None))["status"] == "resolved"  # no release: cannot tell
    assert (await event_in(client, ctx, project, "app@2.0.0"))["substatus"] == "regressed"
    await act(client, project, issue["id"], "resolve", {"resolution": "now"})
    again = await event_in(client, ctx, project, "app@1.0.0")
    assert again["substatus"] == "regressed" and again["regression_count"] == 2
    await act(client, project, issue["id"], "resolve", {"resolution": "in_release"}, status=400)


async def test_ignore_until_more_events_or_users_then_escalates(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    issue = await event_in(client, ctx, project, "a@1", user={"id": "u1"})
    ignored = await act(client, project, issue["id"], "ignore", {"mode": "events", "count": 2})
    assert ignored["status"] == "ignored" and ignored["ignore"]["target"] == 3
    assert (await event_in(client, ctx, project, "a@1", user={"id": "u1"}))["status"] == "ignored"
    woke = await event_in(client, ctx, project, "a@1", user={"id": "u1"})
    assert woke["status"] == "unresolved" and woke["substatus"] == "escalating"

    await act(client, project, issue["id"], "ignore", {"mode": "users", "count": 2})
    assert (await event_in(client, ctx, project, "a@1", user={"id": "u1"}))["status"] == "ignored"  # known user
    assert (await event_in(client, ctx, project, "a@1", user={"id": "u2"}))["status"] == "ignored"
    assert (await event_in(client, ctx, project, "a@1", user={"id": "u3"}))["status"] == "unresolved"

    await act(client, project, issue["id"], "ignore", {"mode": "forever"})
    assert (await event_in(client, ctx, project, "a@1", user={"id": "u9"}))["status"] == "ignored"
    await act(client, project, issue["id"], "ignore", {"mode": "events"}, status=400)


async def test_ignore_for_a_time_ends_by_itself(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    issue = await event_in(client, ctx, project, "a@1")
    ignored = await act(client, project, issue["id"], "ignore", {"mode": "until", "minutes": 30})
    assert ignored["status"] == "ignored"
    assert await errors_jobs.end_expired_ignores(ctx) == 0
    async with ctx.db.transaction() as conn:
        await conn.execute(
            update(issues).where(issues.c.id == issue["id"]).values(ignore_until=utcnow() - timedelta(seconds=1))
        )
    assert await errors_jobs.end_expired_ignores(ctx) == 1
    assert (await only_issue(client, project))["substatus"] == "escalating"


async def test_time_to_resolve_and_fix_verification(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    issue = await event_in(client, ctx, project, "a@1")
    async with ctx.db.transaction() as conn:  # pretend it has been open for two hours
        await conn.execute(
            update(issues).where(issues.c.id == issue["id"]).values(opened_at=utcnow() - timedelta(hours=2))
        )
    resolved = await act(client, project, issue["id"], "resolve")
    assert 7100 <= resolved["average_time_to_resolve_seconds"] <= 7300 and resolved["times_resolved"] == 1
    assert not resolved["fix_verified"]
    assert await errors_jobs.verify_fixes(ctx) == 0  # too early
    async with ctx.db.transaction() as conn:
        await conn.execute(
            update(issues).where(issues.c.id == issue["id"]).values(resolved_at=utcnow() - timedelta(days=8))
        )
    assert await errors_jobs.verify_fixes(ctx) == 1
    verified = await only_issue(client, project)
    assert verified["fix_verified"] and verified["verified_at"]
    # A regression undoes the verification.
    regressed = await event_in(client, ctx, project, "a@2")
    assert regressed["substatus"] == "regressed" and not regressed["fix_verified"]


async def test_assignment_and_unresolve(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    issue = await event_in(client, ctx, project, "a@1")
    async with ctx.db.connect() as conn:
        owner_email = (await conn.execute(select(users.c.email).where(users.c.id == project["owner_id"]))).scalar()
    assigned = await act(client, project, issue["id"], "assign", {"assignee": owner_email})
    assert assigned["assignee"] == owner_email
    listed = (await client.get(f"{base(project)}/issues?assignee={owner_email}", headers=admin_headers(project))).json()
    assert [i["id"] for i in listed["data"]] == [issue["id"]]
    async with ctx.db.transaction() as conn:
        await auth.create_user(conn, "stranger@example.com", "a long enough password")
    await act(client, project, issue["id"], "assign", {"assignee": "stranger@example.com"}, status=400)
    await act(client, project, issue["id"], "assign", {"assignee": "nobody@example.com"}, status=400)
    assert (await act(client, project, issue["id"], "assign", {"assignee": None}))["assignee"] is None
    await act(client, project, issue["id"], "unresolve", status=400)
    await act(client, project, issue["id"], "ignore")
    assert (await act(client, project, issue["id"], "unresolve"))["status"] == "unresolved"


async def test_roles_on_issue_actions(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    issue = await event_in(client, ctx, project, "a@1")
    async with ctx.db.transaction() as conn:
        _id, viewer = await auth.create_secret_key(conn, project["id"], "viewer", role=Role.viewer)
        _id, developer = await auth.create_secret_key(conn, project["id"], "dev", role=Role.developer)
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    as_developer = {"Authorization": f"Bearer {developer}"}
    assert (await client.get(f"{base(project)}/issues", headers=as_viewer)).status_code == 200
    denied = await client.post(f"{base(project)}/issues/{issue['id']}/resolve", json={}, headers=as_viewer)
    assert denied.status_code == 403
    allowed = await client.post(f"{base(project)}/issues/{issue['id']}/resolve", json={}, headers=as_developer)
    assert allowed.status_code == 200
    settings = await client.put(f"{base(project)}/settings", json={"store_ip": False}, headers=as_developer)
    assert settings.status_code == 403
    assert (await client.get(f"{base(project)}/issues")).status_code == 401
    assert (await client.get(f"{base(project)}/issues/999999", headers=as_viewer)).status_code == 404


async def test_filters_and_pagination(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    for index in range(5):
        await send_events(
            client,
            project,
            error_event(
                exc_type=f"Error{index}",
                release=f"app@1.{index}.0",
                environment="staging" if index % 2 else "production",
                level="warning" if index == 4 else "error",
                frames=[{"function": f"f{index}", "module": "m", "in_app": True}],
            ),
        )
    await process(ctx)
    headers = admin_headers(project)
    page1 = (await client.get(f"{base(project)}/issues?limit=2", headers=headers)).json()
    page2 = (await client.get(f"{base(project)}/issues?limit=2&cursor={page1['next_cursor']}", headers=headers)).json()
    page3 = (await client.get(f"{base(project)}/issues?limit=2&cursor={page2['next_cursor']}", headers=headers)).json()
    ids = [i["id"] for p in (page1, page2, page3) for i in p["data"]]
    assert len(ids) == 5 == len(set(ids)) and page3["next_cursor"] is None
    staging = (await client.get(f"{base(project)}/issues?environment=staging", headers=headers)).json()["data"]
    assert {i["type"] for i in staging} == {"Error1", "Error3"}
    by_release = (await client.get(f"{base(project)}/issues?release=app@1.2.0", headers=headers)).json()["data"]
    assert [i["type"] for i in by_release] == ["Error2"]
    warnings = (await client.get(f"{base(project)}/issues?level=warning", headers=headers)).json()["data"]
    assert [i["type"] for i in warnings] == ["Error4"]
    searched = (await client.get(f"{base(project)}/issues?q=Error3", headers=headers)).json()["data"]
    assert [i["type"] for i in searched] == ["Error3"]
    assert (await client.get(f"{base(project)}/issues?status=nope", headers=headers)).status_code == 400
    assert (await client.get(f"{base(project)}/issues?sort=nope", headers=headers)).status_code == 400


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHIPYARD_DATA_DIR", str(tmp_path / "cli-data"))
    monkeypatch.setenv("SHIPYARD_SECRET_KEY", "cli-secret-key-for-tests-0123456789")
    monkeypatch.delenv("SHIPYARD_DATABASE_URL", raising=False)
    return tmp_path


def test_cli_lists_and_triages_issues(cli_env: Path) -> None:
    import asyncio

    from shipyard.cli import main
    from shipyard.core.context import Context as Ctx
    from shipyard.errors import digest, ingest
    from shipyard.errors.envelope import parse
    from shipyard.settings import Settings
    from tests.errors.helpers import event_envelope

    runner = CliRunner()
    creds = json.loads(runner.invoke(main, ["init", "--json"]).output)
    slug = creds["project_slug"]

    async def seed() -> None:
        ctx = Ctx.create(Settings())
        try:
            from shipyard.core import projects

            async with ctx.db.connect() as conn:
                project = await projects.get_project(conn, slug)
            await ingest.ingest(ctx, project, parse(event_envelope(error_event(release="app@3.0.0"))), None)
            await asyncio.gather(*digest.digester(ctx).tasks)
        finally:
            await ctx.close()

    asyncio.run(seed())
    processed = runner.invoke(main, ["errors", "process"])
    assert processed.exit_code == 0 and "processed 1 envelopes" in processed.output
    listed = runner.invoke(main, ["errors", "issues", "list", "--project", slug, "--json"])
    assert listed.exit_code == 0, listed.output
    issue = json.loads(listed.output)[0]
    assert issue["title"] == "ValueError: bad value"
    by_impact = runner.invoke(main, ["errors", "issues", "list", "--project", slug, "--sort", "impact", "--json"])
    assert by_impact.exit_code == 0 and json.loads(by_impact.output)[0]["id"] == issue["id"]
    assert runner.invoke(main, ["errors", "issues", "list", "--project", slug, "--sort", "loud"]).exit_code != 0
    resolved = runner.invoke(
        main, ["errors", "issues", "resolve", str(issue["id"]), "--project", slug, "--in-next-release"]
    )
    assert resolved.exit_code == 0 and "in_next_release, app@3.0.0" in resolved.output
    text = runner.invoke(main, ["errors", "issues", "list", "--project", slug, "--status", "resolved"])
    assert "resolved" in text.output and "ValueError" in text.output
    again = runner.invoke(main, ["errors", "issues", "resolve", str(issue["id"]), "--project", slug])
    assert again.exit_code != 0 and "already resolved" in again.output
    assert (
        runner.invoke(
            main, ["errors", "issues", "ignore", str(issue["id"]), "--project", slug, "--minutes", "10"]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(
            main, ["errors", "issues", "assign", str(issue["id"]), creds["admin_email"], "--project", slug]
        ).exit_code
        == 0
    )
    assert runner.invoke(main, ["errors", "health", "--project", slug]).output.strip() == "no sessions yet"
    assert runner.invoke(main, ["audit", "verify"]).exit_code == 0
