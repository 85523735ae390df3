"""Staged rollouts as devices see them: buckets, control update, halt/resume/complete,
plans advanced by the job queue, and hotfixes while a rollout is active."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update

from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.jobs import Worker, enqueue
from shipyard.core.models import audit_log
from shipyard.updates.models import rollouts
from tests.conftest import admin_headers
from tests.updates.helpers import expo_headers, make_export, parse_multipart, publish_export

DEVICES = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(300)]


def ios_id(published: dict[str, Any]) -> str:
    return next(u["id"] for u in published["updates"] if u["platform"] == "ios")


async def served(client: httpx.AsyncClient, project: dict[str, Any], client_id: str | None, **kw: Any) -> str:
    headers = expo_headers(client_id=client_id, **kw)
    if client_id is None:
        headers.pop("EAS-Client-ID")
    response = await client.get(f"/updates/{project['id']}/manifest", headers=headers)
    assert response.status_code == 200, response.text
    parts = parse_multipart(response)
    if "manifest" in parts:
        return str(json.loads(parts["manifest"].body)["id"])
    return str(json.loads(parts["directive"].body)["type"])


async def census(client: httpx.AsyncClient, project: dict[str, Any]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for device in DEVICES:
        seen.setdefault(await served(client, project, device), set()).add(device)
    return seen


async def test_rollout_buckets_control_and_steering(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path, ctx: Context
) -> None:
    v1 = ios_id(await publish_export(client, project, make_export(tmp_path, "v1")))
    second = await publish_export(client, project, make_export(tmp_path, "v2"), rollout={"percentage": 20})
    v2 = ios_id(second)
    assert second["rollout_percentage"] == 20
    assert next(u for u in second["updates"] if u["platform"] == "ios")["control_update_id"] == v1
    seen = await census(client, project)
    assert set(seen) == {v1, v2}
    assert 0.10 < len(seen[v2]) / len(DEVICES) < 0.30
    assert await served(client, project, None) == v1  # no client id: the control
    for device in list(seen[v2])[:5]:
        assert await served(client, project, device) == v2  # stable
    base = f"/api/v1/projects/{project['id']}/updates/rollouts/{second['group_id']}"
    headers = admin_headers(project)
    raised = await client.patch(base, json={"percentage": 60}, headers=headers)
    assert raised.status_code == 200 and raised.json()["percentage"] == 60
    wider = await census(client, project)
    assert seen[v2] <= wider[v2]  # nobody who had it loses it
    assert len(wider[v2]) > len(seen[v2])
    halted = await client.post(f"{base}/halt", json={"reason": "looks odd"}, headers=headers)
    assert halted.status_code == 200 and halted.json()["status"] == "halted"
    on_v2 = next(iter(wider[v2]))
    assert await served(client, project, on_v2, current=v2) == "noUpdateAvailable"
    assert await served(client, project, on_v2) == v1  # a device not running it is not offered it
    assert (await client.post(f"{base}/halt", json={}, headers=headers)).status_code == 409
    resumed = await client.post(f"{base}/resume", headers=headers)
    assert resumed.json()["status"] == "active"
    assert await served(client, project, on_v2) == v2
    completed = await client.post(f"{base}/complete", headers=headers)
    assert completed.json()["status"] == "completed" and completed.json()["percentage"] == 100
    assert set(await census(client, project)) == {v2}
    async with ctx.db.connect() as conn:
        actions = {r[0] for r in await conn.execute(select(audit_log.c.action))}
    assert {
        "updates.publish",
        "updates.rollout.edit",
        "updates.rollout.halt",
        "updates.rollout.resume",
        "updates.rollout.complete",
    } <= actions


async def test_hotfix_during_rollout_must_say_what_happens(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path
) -> None:
    v1 = ios_id(await publish_export(client, project, make_export(tmp_path, "v1")))
    rolling = await publish_export(client, project, make_export(tmp_path, "v2"), rollout={"percentage": 30})
    v2 = ios_id(rolling)
    before = await census(client, project)
    refused = await publish_export(client, project, make_export(tmp_path, "v3"), expect=409)
    assert refused["error"]["code"] == "rollout_active"
    assert "--end-rollout" in refused["error"]["message"] and "--supersede-rollout" in refused["error"]["message"]
    # Supersede: the hotfix goes to exactly the devices that had v2, outsiders keep v1.
    hotfix = await publish_export(client, project, make_export(tmp_path, "v3"), on_active_rollout="supersede")
    v3 = ios_id(hotfix)
    assert hotfix["rollout_percentage"] == 30
    after = await census(client, project)
    assert after[v3] == before[v2] and after[v1] == before[v1]
    # End: the next publish goes to everybody.
    final = await publish_export(client, project, make_export(tmp_path, "v4"), on_active_rollout="end")
    assert set(await census(client, project)) == {ios_id(final)}
    rollouts_page = await client.get(
        f"/api/v1/projects/{project['id']}/updates/rollouts", headers=admin_headers(project)
    )
    statuses = {r["group_id"]: r["status"] for r in rollouts_page.json()["data"]}
    assert statuses[rolling["group_id"]] == "superseded" and statuses[hotfix["group_id"]] == "ended"


async def test_rollout_plan_advances_through_the_job_queue(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path, ctx: Context
) -> None:
    await publish_export(client, project, make_export(tmp_path, "v1"))
    plan = {"percentage": 10, "increment": 30, "interval_minutes": 60, "max_percentage": 100}
    rolling = await publish_export(client, project, make_export(tmp_path, "v2"), rollout=plan)

    async def step() -> dict[str, Any]:
        async with ctx.db.transaction() as conn:
            await conn.execute(
                update(rollouts)
                .where(rollouts.c.group_id == rolling["group_id"])
                .values(next_step_at=utcnow() - timedelta(seconds=1))
            )
            await enqueue(conn, "updates.advance_rollouts", {})
        await Worker(ctx).run_until_idle()
        response = await client.get(
            f"/api/v1/projects/{project['id']}/updates/rollouts/{rolling['group_id']}", headers=admin_headers(project)
        )
        return dict(response.json())

    assert (await step())["percentage"] == 40
    assert (await step())["percentage"] == 70
    last = await step()
    assert last["status"] == "completed" and last["percentage"] == 100
    history = await client.get(f"/api/v1/projects/{project['id']}/updates/history", headers=admin_headers(project))
    row = next(r for r in history.json()["data"] if r["group_id"] == rolling["group_id"])
    assert row["status"] == "active" and row["rollout_percentage"] == 100
    events = await client.get(
        f"/api/v1/projects/{project['id']}/updates/history/{row['id']}/events", headers=admin_headers(project)
    )
    kinds = [e["kind"] for e in events.json()["data"]]
    assert kinds == ["publish", "rollout_changed", "rollout_changed", "rollout_completed"]


async def test_bad_rollout_input(client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path) -> None:
    await publish_export(client, project, make_export(tmp_path, "v1"))
    bad = await publish_export(
        client, project, make_export(tmp_path, "v2"), rollout={"percentage": 10, "increment": 5}, expect=400
    )
    assert "interval" in bad["error"]["message"]
    over = await publish_export(client, project, make_export(tmp_path, "v3"), rollout={"percentage": 120}, expect=422)
    assert over["error"]["code"] == "invalid_request"
    missing = await client.post(
        f"/api/v1/projects/{project['id']}/updates/rollouts/{uuid.uuid4()}/halt",
        json={},
        headers=admin_headers(project),
    )
    assert missing.status_code == 404
