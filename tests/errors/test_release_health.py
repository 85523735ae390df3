"""Release health: session updates and aggregates → crash-free sessions and users per release
and per OTA update → the rollout signal that halts an OTA rollout."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from shipyard.core import signals
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.updates import policy as updates_policy
from tests.conftest import admin_headers
from tests.errors.helpers import envelope, error_event, event_envelope, post, process
from tests.updates.helpers import make_export, publish_export


def release_for(update_id: str | None) -> str:
    """The release format Sentry suggests for Expo apps, with the OTA update id in it."""
    base = "com.example.app@1.0.0+1"
    return f"{base}#production:{update_id}" if update_id else f"{base}#production"


def session(release: str, status: str = "exited", *, did: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "sid": str(uuid.uuid4()),
        "did": did or str(uuid.uuid4()),
        "init": True,
        "started": utcnow().isoformat(),
        "timestamp": utcnow().isoformat(),
        "status": status,
        "errors": 1 if status == "crashed" else 0,
        "duration": 12.5,
        "attrs": {"release": release, "environment": "production"},
        **extra,
    }


async def send_sessions(client: httpx.AsyncClient, project: dict[str, Any], sessions: list[dict[str, Any]]) -> None:
    for start in range(0, len(sessions), 100):  # the protocol allows 100 sessions per envelope
        chunk = sessions[start : start + 100]
        response = await post(client, project, envelope([({"type": "session"}, s) for s in chunk]))
        assert response.status_code == 200, response.text


async def test_session_updates_and_aggregates_give_crash_free_rates(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    release = "app@2.0.0+20"
    ok = session(release, "ok", did="u1")
    # A session goes ok → errored → crashed; later updates of a terminal session change nothing.
    crashing = session(release, "ok", did="u2")
    updates = [
        {**crashing, "init": False, "seq": 1, "errors": 1, "status": "ok"},
        {**crashing, "init": False, "seq": 2, "errors": 2, "status": "crashed"},
        {**crashing, "init": False, "seq": 3, "status": "exited"},
    ]
    await send_sessions(client, project, [ok, crashing, *updates, {**ok, "init": False, "status": "exited"}])
    aggregates = {
        "attrs": {"release": release, "environment": "production"},
        "aggregates": [{"started": utcnow().replace(second=0).isoformat(), "exited": 6, "errored": 1, "crashed": 1}],
    }
    response = await post(client, project, envelope([({"type": "sessions"}, aggregates)]))
    assert response.status_code == 200
    await process(ctx)
    body = (
        await client.get(f"/api/v1/projects/{project['id']}/errors/releases", headers=admin_headers(project))
    ).json()
    row = next(r for r in body["data"] if r["release"] == release)
    assert row["sessions"] == 2 + 8
    assert row["sessions_crashed"] == 1 + 1
    assert row["sessions_errored"] == 1  # the aggregate's errored bucket; the crashed one counts as crashed
    assert row["crash_free_sessions"] == 0.8
    assert row["users"] == 2 and row["users_crashed"] == 1 and row["crash_free_users"] == 0.5
    assert row["adoption_sessions_24h"] == 1.0
    series = (
        await client.get(
            f"/api/v1/projects/{project['id']}/errors/releases/series",
            params={"release": release},
            headers=admin_headers(project),
        )
    ).json()["data"]
    assert sum(p["sessions"] for p in series) == 10 and sum(p["crashed"] for p in series) == 2


async def test_crash_free_rates_per_ota_update(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    sessions = [session(release_for(good)) for _ in range(9)] + [session(release_for(good), "crashed")]
    sessions += [session(release_for(bad)) for _ in range(3)] + [session(release_for(bad), "crashed")]
    # An app that names the update in the session attributes instead of the release.
    sessions += [session("com.example.app@1.0.0+1", "crashed", attrs={"release": "x@1", "update_id": bad})]
    await send_sessions(client, project, sessions)
    await process(ctx)
    rows = (
        await client.get(
            f"/api/v1/projects/{project['id']}/errors/releases",
            params={"per_update": "true"},
            headers=admin_headers(project),
        )
    ).json()["data"]
    by_update: dict[str, dict[str, int]] = {}
    for r in rows:
        entry = by_update.setdefault(r["update_id"], {"sessions": 0, "crashed": 0})
        entry["sessions"] += r["sessions"]
        entry["crashed"] += r["sessions_crashed"]
    assert by_update[good] == {"sessions": 10, "crashed": 1}
    assert by_update[bad] == {"sessions": 5, "crashed": 2}
    # Events name their update the same way: a crash in the bad update is counted against it.
    crash = error_event(release=release_for(bad))
    assert (await post(client, project, event_envelope(crash))).status_code == 200
    await process(ctx)
    by_update_events = (
        await client.get(
            f"/api/v1/projects/{project['id']}/errors/breakdowns",
            params={"by": "update_id"},
            headers=admin_headers(project),
        )
    ).json()
    assert [(r["value"], r["events"]) for r in by_update_events["data"]] == [(bad, 1)], by_update_events
    reading = await signals.read_signals(ctx, project["id"], bad, good, utcnow() - timedelta(hours=1))
    crash_free = reading["crash_free_sessions"]
    assert crash_free.value == 0.6 and crash_free.sample_size == 5
    assert crash_free.control_value == 0.9 and crash_free.control_size == 10 and crash_free.higher_is_better


async def test_crashing_sessions_of_an_update_halt_its_rollout(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any], tmp_path: Path
) -> None:
    """Sessions with crashes for an OTA update → crash_free_sessions signal → the policy halts it."""
    headers = admin_headers(project)
    base = f"/api/v1/projects/{project['id']}/updates"
    policy = {
        "min_devices": 20,
        "max_failed_launch_rate": None,
        "rules": {"crash_free_sessions": {"min": 0.95}},
        "action": "halt",
    }
    assert (await client.put(f"{base}/policies/production", json=policy, headers=headers)).status_code == 200
    await publish_export(client, project, make_export(tmp_path, "v1"))
    second = await publish_export(client, project, make_export(tmp_path, "v2"), rollout={"percentage": 10})
    v2_ios = next(u["id"] for u in second["updates"] if u["platform"] == "ios")

    # Too few sessions yet: no verdict, the rollout goes on.
    await send_sessions(client, project, [session(release_for(v2_ios), "crashed") for _ in range(3)])
    await process(ctx)
    assert await updates_policy.evaluate_all(ctx, project["id"]) == []

    # 40 sessions, 6 crashed: 85 % crash-free, under the 95 % the channel requires.
    await send_sessions(
        client,
        project,
        [session(release_for(v2_ios)) for _ in range(34)] + [session(release_for(v2_ios), "crashed") for _ in range(3)],
    )
    await process(ctx)
    actions = await updates_policy.evaluate_all(ctx, project["id"])
    assert len(actions) == 1 and actions[0]["outcome"] == "halted"
    assert "crash_free_sessions is 0.85 over 40" in actions[0]["reasons"][0]
    rollout = (await client.get(f"{base}/rollouts/{second['group_id']}", headers=headers)).json()
    assert rollout["status"] == "halted" and "crash_free_sessions" in rollout["reason"]
