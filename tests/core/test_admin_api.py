"""Jobs, audit, alerts and users through the admin API: filters, pagination, exports, audited changes."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from shipyard.core import alerts, audit, auth, jobs
from shipyard.core.models import alert_channels, audit_log
from tests.core.conftest import AppClient
from tests.core.test_gateway import bearer, make_project


@jobs.handler("test.admin.fails")
async def _fails(ctx: Any, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    raise RuntimeError("upstream said no")


@jobs.handler("test.admin.ok")
async def _ok(ctx: Any, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    return None


async def instance_admin_cookie(ctx: Any) -> dict[str, str]:
    async with ctx.db.transaction() as conn:
        user_id = await auth.create_user(conn, "root@example.com", "a long root password", instance_admin=True)
        token, _csrf = await auth.create_session(
            conn, user_id, timedelta(hours=1), mfa_passed=True, ip=None, user_agent="t"
        )
    return {"Cookie": f"shipyard_session={token}"}


async def actions(ctx: Any) -> list[str]:
    async with ctx.db.connect() as conn:
        return [r.action for r in (await conn.execute(select(audit_log.c.action).order_by(audit_log.c.seq))).all()]


async def test_jobs_api_lists_dead_letters_retries_and_cancels(app_client: AppClient) -> None:
    async with app_client() as (client, ctx):
        project = await make_project(ctx)
        other = await make_project(ctx, "Other")
        async with ctx.db.transaction() as conn:
            dead_id = await jobs.enqueue(conn, "test.admin.fails", {"n": 1}, max_attempts=1, project_id=project["id"])
            queued_id = await jobs.enqueue(
                conn, "test.admin.ok", {}, project_id=project["id"], run_at=jobs.utcnow() + timedelta(hours=1)
            )
            foreign_id = await jobs.enqueue(conn, "test.admin.ok", {}, project_id=other["id"])
            await jobs.enqueue(conn, "test.admin.ok", {"system": True})
        await jobs.Worker(ctx).run_until_idle()
        base = f"/api/v1/projects/{project['id']}/jobs"
        headers = bearer(project["secret_key"])

        dead = (await client.get(base, params={"status": "dead"}, headers=headers)).json()["data"]
        assert [j["id"] for j in dead] == [dead_id] and "upstream said no" in dead[0]["last_error"]
        listed = (await client.get(base, params={"kind": "test.admin."}, headers=headers)).json()["data"]
        assert {j["id"] for j in listed} == {dead_id, queued_id}  # not the other project's, not system jobs
        assert (await client.get(f"{base}/{foreign_id}", headers=headers)).status_code == 404

        retried = await client.post(f"{base}/{dead_id}/retry", headers=headers)
        assert retried.status_code == 200 and retried.json()["status"] == "queued" and retried.json()["attempts"] == 0
        assert (await client.post(f"{base}/{dead_id}/retry", headers=headers)).status_code == 409
        cancelled = await client.post(f"{base}/{queued_id}/cancel", headers=headers)
        assert cancelled.json()["status"] == "cancelled"
        conflict = await client.post(f"{base}/{queued_id}/cancel", headers=headers)
        assert conflict.status_code == 409 and "only queued" in conflict.json()["error"]["message"]
        assert [a for a in await actions(ctx) if a.startswith("job.")] == ["job.retry", "job.cancel"]

        page = (await client.get(base, params={"limit": 1}, headers=headers)).json()
        assert len(page["data"]) == 1 and page["next_cursor"]

        # Instance-wide listing: instance admins only; it includes system jobs.
        assert (await client.get("/api/v1/jobs", headers=headers)).status_code == 403
        every = (await client.get("/api/v1/jobs", headers=await instance_admin_cookie(ctx))).json()["data"]
        assert any(j["project_id"] is None for j in every) and any(j["id"] == foreign_id for j in every)


async def test_audit_api_filters_paginates_and_exports(app_client: AppClient) -> None:
    async with app_client() as (client, ctx):
        project = await make_project(ctx)
        headers = bearer(project["secret_key"])
        for n in range(3):
            assert (
                await client.post(f"/api/v1/projects/{project['id']}/keys", json={"name": f"k{n}"}, headers=headers)
            ).is_success
        async with ctx.db.transaction() as conn:
            await audit.record(
                conn,
                ctx,
                audit.Actor.system("test"),
                "updates.rollback",
                project_id=project["id"],
                resource_type="update",
                resource_id='=HYPERLINK("http://evil")',
                outcome="failure",
                details={"reason": "crash rate", "token": "must-not-leak"},
            )
        base = f"/api/v1/projects/{project['id']}/audit"
        keys = (await client.get(base, params={"action": "key."}, headers=headers)).json()
        assert [r["action"] for r in keys["data"]] == ["key.create"] * 3
        assert keys["data"][0]["seq"] > keys["data"][-1]["seq"]  # newest first
        failed = (await client.get(base, params={"outcome": "failure"}, headers=headers)).json()["data"]
        assert [r["action"] for r in failed] == ["updates.rollback"] and failed[0]["details"]["token"] == "[redacted]"
        first = (await client.get(base, params={"limit": 2}, headers=headers)).json()
        rest = (await client.get(base, params={"cursor": first["next_cursor"]}, headers=headers)).json()
        assert len(first["data"]) == 2 and len(rest["data"]) == 2 and first["data"][-1]["seq"] > rest["data"][0]["seq"]
        assert (await client.get(base, params={"since": "yesterday"}, headers=headers)).status_code == 422

        export = await client.get(f"{base}/export", params={"action": "key."}, headers=headers)
        assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
        lines = [json.loads(line) for line in export.text.splitlines()]
        assert [r["action"] for r in lines] == ["key.create"] * 3 and lines[0]["seq"] < lines[-1]["seq"]
        assert all(len(r["hash"]) == 64 for r in lines)

        as_csv = await client.get(f"{base}/export", params={"format": "csv"}, headers=headers)
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        rollback = next(r for r in rows if r["action"] == "updates.rollback")
        assert rollback["resource_id"].startswith("'=")  # a spreadsheet will not run it
        assert "must-not-leak" not in as_csv.text
        # Taking a copy of the trail is itself on the trail.
        assert (await actions(ctx)).count("audit.export") == 2


@pytest.mark.parametrize(
    "url",
    [
        'http://\ud825\ude1c\u0007"\u00de9[H',  # found by the schemathesis fuzz: was a 500
        "http://[not-ipv6/",
        "http://hooks.example.com:port/",
        "http://hooks.example.com:70000/",
        "http://bad\u0007host.example/",
    ],
)
async def test_alert_channel_with_a_malformed_url_is_a_400(app_client: AppClient, url: str) -> None:
    async with app_client() as (client, ctx):
        project = await make_project(ctx)
        response = await client.post(
            f"/api/v1/projects/{project['id']}/alert-channels",
            # json.dumps escapes lone surrogates (\\ud825), as the fuzzer's client sent them.
            content=json.dumps({"name": "ops", "url": url}),
            headers={**bearer(project["secret_key"]), "Content-Type": "application/json"},
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "blocked_destination"


async def test_alerts_api_resolves_and_manages_channels_with_secret_shown_once(app_client: AppClient) -> None:
    async with app_client() as (client, ctx):
        project = await make_project(ctx)
        headers = bearer(project["secret_key"])
        base = f"/api/v1/projects/{project['id']}"
        async with ctx.db.transaction() as conn:
            for key, severity in (("a", "warning"), ("b", "critical")):
                await alerts.raise_alert(
                    conn, ctx, project_id=project["id"], source="updates", dedup_key=key, severity=severity, summary=key
                )
        firing = (await client.get(f"{base}/alerts", params={"status": "firing"}, headers=headers)).json()["data"]
        assert {a["dedup_key"] for a in firing} == {"a", "b"}
        severe = (await client.get(f"{base}/alerts", params={"severity": "error"}, headers=headers)).json()["data"]
        assert [a["dedup_key"] for a in severe] == ["b"]
        alert_id = severe[0]["id"]
        resolved = await client.post(f"{base}/alerts/{alert_id}/resolve", headers=headers)
        assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"
        assert (await client.post(f"{base}/alerts/{alert_id}/resolve", headers=headers)).status_code == 409

        created = await client.post(
            f"{base}/alert-channels",
            json={"name": "ops", "url": "https://hooks.example.com/shipyard", "min_severity": "error"},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        channel = created.json()
        assert channel["secret"].startswith("whsec_")
        listed = (await client.get(f"{base}/alert-channels", headers=headers)).json()["data"]
        assert listed and all("secret" not in c for c in listed)
        async with ctx.db.connect() as conn:
            stored = (await conn.execute(select(alert_channels.c.secret))).scalar_one()
        assert channel["secret"] not in stored and ctx.box.decrypt(stored) == channel["secret"]

        patched = await client.patch(
            f"{base}/alert-channels/{channel['id']}", json={"enabled": False, "name": "ops-paused"}, headers=headers
        )
        assert patched.json()["enabled"] is False and patched.json()["name"] == "ops-paused"
        assert (
            await client.patch(f"{base}/alert-channels/{channel['id']}", json={}, headers=headers)
        ).status_code == 400
        rotated = (await client.post(f"{base}/alert-channels/{channel['id']}/rotate-secret", headers=headers)).json()
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != channel["secret"]
        assert (await client.delete(f"{base}/alert-channels/{channel['id']}", headers=headers)).status_code == 204
        assert (await client.get(f"{base}/alert-channels/{channel['id']}", headers=headers)).status_code == 404
        trail = await actions(ctx)
        assert [a for a in trail if a.startswith("alert")] == [
            "alert.resolve",
            "alert_channel.create",
            "alert_channel.update",
            "alert_channel.rotate_secret",
            "alert_channel.delete",
        ]
        assert channel["secret"] not in json.dumps(trail) and rotated["secret"] not in str(
            (await client.get(f"{base}/audit", headers=headers)).json()
        )


async def test_alert_channels_refuse_internal_destinations(app_client: AppClient) -> None:
    async with app_client(allow_private_outbound=False) as (client, ctx):
        project = await make_project(ctx)
        r = await client.post(
            f"/api/v1/projects/{project['id']}/alert-channels",
            json={"name": "ssrf", "url": "http://127.0.0.1:6379/"},
            headers=bearer(project["secret_key"]),
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "blocked_destination"


async def test_users_list_is_for_instance_admins(app_client: AppClient) -> None:
    async with app_client() as (client, ctx):
        project = await make_project(ctx)
        assert (await client.get("/api/v1/users", headers=bearer(project["secret_key"]))).status_code == 403
        cookie = await instance_admin_cookie(ctx)
        users = (await client.get("/api/v1/users", headers=cookie)).json()["data"]
        assert [u["email"] for u in users] == ["root@example.com"] and users[0]["is_instance_admin"] is True
        assert "password_hash" not in users[0] and "totp_secret" not in users[0]


async def test_unicode_digits_and_altered_cursors_are_client_errors(app_client: AppClient) -> None:
    """ "²".isdigit() is True but int("²") fails: ids, cursors and form keys that look
    numeric only to isdigit() were 500s (found by the schemathesis fuzz)."""
    import base64

    def cursor(value: str) -> str:
        return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")

    async with app_client() as (client, ctx):
        project = await make_project(ctx)
        headers = bearer(project["secret_key"])
        assert (await client.get("/api/v1/projects/%C2%B2/alerts", headers=headers)).status_code in (403, 404)
        base = f"/api/v1/projects/{project['id']}"
        for value in ("²", "2026-13-99T00:00:00|1", "x|²", "\U0009e605"):
            response = await client.get(f"{base}/errors/issues", params={"cursor": cursor(value)}, headers=headers)
            assert response.status_code == 400, (value, response.text)
        assert (
            await client.get(f"{base}/errors/issues", params={"cursor": "%F2%9E%98%85"}, headers=headers)
        ).status_code == 400
        listed = await client.get(
            f"{base}/errors/issues", params={"sort": "impact", "cursor": cursor("²")}, headers=headers
        )
        assert listed.status_code == 400
        assert (await client.get(f"{base}/audit", params={"cursor": cursor("²")}, headers=headers)).status_code == 400
