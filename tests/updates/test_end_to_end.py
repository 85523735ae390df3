"""The issue's end-to-end scenario: v1 live, v2 rolled out at 10 %, devices report failed
launches of v2 on their manifest requests, the channel's policy halts v2 and rolls back,
an alert is raised and the audit trail says why."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from shipyard.core import signals
from shipyard.core.context import Context
from shipyard.core.jobs import Worker
from shipyard.core.models import alerts, audit_log
from shipyard.core.signals import SignalReading
from shipyard.updates.telemetry import reports
from tests.conftest import admin_headers
from tests.updates.helpers import expo_headers, make_export, parse_multipart, publish_export

EMBEDDED = str(uuid.uuid4())
CRASH = "TypeError: undefined is not an object (evaluating 'plant.schedule.next')"


def ids(published: dict[str, Any]) -> dict[str, str]:
    return {u["platform"]: u["id"] for u in published["updates"]}


async def check(client: httpx.AsyncClient, project: dict[str, Any], device: str, platform: str, **kw: Any) -> Any:
    response = await client.get(
        f"/updates/{project['id']}/manifest",
        headers=expo_headers(platform=platform, client_id=device, embedded=EMBEDDED, **kw),
    )
    assert response.status_code == 200, response.text
    parts = parse_multipart(response)
    if "manifest" in parts:
        return json.loads(parts["manifest"].body)
    return json.loads(parts["directive"].body)


async def simulate_fleet(
    client: httpx.AsyncClient, project: dict[str, Any], v1: dict[str, str], v2: dict[str, str], *, crash_every: int
) -> int:
    """Devices on v1 check for updates; those offered v2 launch it, and some crash before first render."""
    offered = 0
    for n in range(400):
        device = str(uuid.UUID(int=n * 104729 + 3))
        platform = "ios" if n % 2 else "android"
        got = await check(client, project, device, platform, current=v1[platform])
        if got.get("id") != v2[platform]:
            continue
        offered += 1
        if offered % crash_every == 0:
            # expo-updates marks v2 failed, falls back to v1 and reports it on the next check.
            await check(client, project, device, platform, current=v1[platform], failed=[v2[platform]], fatal=CRASH)
        else:
            await check(client, project, device, platform, current=v2[platform])
    return offered


async def test_failed_launches_halt_and_roll_back(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path, ctx: Context
) -> None:
    headers = admin_headers(project)
    base = f"/api/v1/projects/{project['id']}/updates"
    policy = {"min_devices": 10, "max_failed_launch_rate": 0.02, "action": "rollback"}
    assert (await client.put(f"{base}/policies/production", json=policy, headers=headers)).status_code == 200
    first = await publish_export(client, project, make_export(tmp_path, "v1"), message="v1")
    v1 = ids(first)
    second = await publish_export(
        client, project, make_export(tmp_path, "v2"), message="v2 new watering UI", rollout={"percentage": 10}
    )
    v2 = ids(second)
    offered = await simulate_fleet(client, project, v1, v2, crash_every=3)
    assert 20 <= offered <= 70  # ≈10 % of 400
    await reports(ctx).flush()  # what the background flush does every second
    await Worker(ctx).run_until_idle()  # the evaluation job the failure reports enqueued

    rollout = (await client.get(f"{base}/rollouts/{second['group_id']}", headers=headers)).json()
    assert rollout["status"] == "rolled_back"
    assert "failed_launch_rate" in rollout["reason"]
    # Every device, including those that run v2, is now offered v1 again under a new id and a
    # later createdAt, so expo-updates accepts it.
    for platform in ("ios", "android"):
        device = str(uuid.uuid4())
        manifest = await check(client, project, device, platform, current=v2[platform])
        assert manifest["id"] not in (v1[platform], v2[platform])
        assert (
            manifest["launchAsset"]["hash"]
            == (await check(client, project, device, platform, protocol=1))["launchAsset"]["hash"]
        )
        created = datetime.fromisoformat(manifest["createdAt"].replace("Z", "+00:00"))
        assert created > datetime.fromisoformat(second["created_at"].replace("Z", "+00:00"))
    republished = (await client.get(f"{base}/groups", headers=headers)).json()["data"][0]
    assert republished["kind"] == "rollback" and republished["source_group_id"] == first["group_id"]

    async with ctx.db.connect() as conn:
        alert = (await conn.execute(select(alerts).where(alerts.c.project_id == project["id"]))).one()
        records = list(
            await conn.execute(
                select(audit_log).where(audit_log.c.project_id == project["id"]).order_by(audit_log.c.seq)
            )
        )
    assert alert.source == "updates" and alert.severity == "critical" and alert.status == "firing"
    assert "rolled back" in alert.summary and second["group_id"][:8] in alert.summary
    by_action = {r.action: r for r in records}
    halt = by_action["updates.rollout.auto_halt"]
    assert halt.actor_type == "system" and halt.actor_id == "updates.policy"
    assert "failed_launch_rate" in halt.details["reason"]
    rollback = by_action["updates.rollback"]
    assert rollback.actor_id == "updates.policy" and rollback.details["rolled_back_groups"] == [second["group_id"]]

    history = (await client.get(f"{base}/history", headers=headers)).json()["data"]
    v2_row = next(r for r in history if r["group_id"] == second["group_id"])
    assert v2_row["status"] == "rolled_back" and v2_row["rolled_back_at"] is not None
    assert v2_row["devices_affected"] >= 10 and 0.2 < v2_row["error_rate"] < 0.5
    insights = (await client.get(f"{base}/insights/updates/{v2['ios']}", headers=headers)).json()
    assert insights["failed_launches"] >= 1 and insights["devices_checked"] >= insights["devices_attempted"]
    assert insights["top_fatal_errors"][0]["message"] == CRASH
    split = (await client.get(f"{base}/insights/channels", headers=headers)).json()["data"]
    assert split == [{"channel": "production", "embedded": 0, "ota": split[0]["ota"]}] and split[0]["ota"] > 300


async def test_margin_over_control_halts_without_rollback(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path, ctx: Context
) -> None:
    headers = admin_headers(project)
    base = f"/api/v1/projects/{project['id']}/updates"
    policy = {"min_devices": 10, "max_failed_launch_rate": None, "max_margin_over_control": 0.05, "action": "halt"}
    assert (await client.put(f"{base}/policies/production", json=policy, headers=headers)).status_code == 200
    v1 = ids(await publish_export(client, project, make_export(tmp_path, "v1")))
    second = await publish_export(client, project, make_export(tmp_path, "v2"), rollout={"percentage": 10})
    v2 = ids(second)
    await simulate_fleet(client, project, v1, v2, crash_every=4)
    await reports(ctx).flush()
    await Worker(ctx).run_until_idle()
    rollout = (await client.get(f"{base}/rollouts/{second['group_id']}", headers=headers)).json()
    assert rollout["status"] == "halted" and "control update" in rollout["reason"]
    device = str(uuid.uuid4())
    assert (await check(client, project, device, "ios", current=v1["ios"]))["type"] == "noUpdateAvailable"
    history = (await client.get(f"{base}/history", headers=headers)).json()["data"]
    assert next(r for r in history if r["group_id"] == second["group_id"])["status"] == "failed"


async def test_other_features_signals_join_the_policy(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path, ctx: Context
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def crash_free(
        ctx: Context, project_id: int, update_id: str, control_id: str | None, since: datetime
    ) -> SignalReading:
        seen.append((update_id, control_id))
        return SignalReading(0.91, 500, 0.995, 5000, True, "crash-free sessions")

    signals.register_signal("test_crash_free_sessions", crash_free)
    try:
        headers = admin_headers(project)
        base = f"/api/v1/projects/{project['id']}/updates"
        policy = {"min_devices": 100, "rules": {"test_crash_free_sessions": {"min": 0.98}}, "action": "halt"}
        assert (await client.put(f"{base}/policies/production", json=policy, headers=headers)).status_code == 200
        v1 = ids(await publish_export(client, project, make_export(tmp_path, "v1")))
        second = await publish_export(client, project, make_export(tmp_path, "v2"), rollout={"percentage": 5})
        from shipyard.updates import policy as policy_mod

        actions = await policy_mod.evaluate_all(ctx, project["id"])
        assert actions and actions[0]["outcome"] == "halted"
        assert "test_crash_free_sessions" in actions[0]["reasons"][0]
        assert (ids(second)["ios"], v1["ios"]) in seen
        listed = (await client.get(f"{base}/signals", headers=headers)).json()["data"]
        assert {"failed_launch_rate", "test_crash_free_sessions"} <= set(listed)
        # A misspelt signal would never trip: refused, naming the ones that exist.
        typo = {"rules": {"crash_free_sesions": {"min": 0.98}}}
        refused = await client.put(f"{base}/policies/production", json=typo, headers=headers)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "unknown_signal"
        assert "test_crash_free_sessions" in refused.json()["error"]["message"]
    finally:
        signals._signals.pop("test_crash_free_sessions", None)


async def test_policy_waits_for_enough_devices(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path, ctx: Context
) -> None:
    from shipyard.updates import policy as policy_mod

    v1 = ids(await publish_export(client, project, make_export(tmp_path, "v1")))
    second = await publish_export(client, project, make_export(tmp_path, "v2"), rollout={"percentage": 10})
    await simulate_fleet(client, project, v1, ids(second), crash_every=2)
    await reports(ctx).flush()
    # Default policy: at least 50 devices before acting; ~40 have tried v2.
    assert await policy_mod.evaluate_all(ctx, project["id"]) == []


async def test_history_shows_devices_and_error_rate_without_a_rollout(
    client: httpx.AsyncClient, project: dict[str, Any], tmp_path: Path, ctx: Context
) -> None:
    published = ids(await publish_export(client, project, make_export(tmp_path, "v1"), message="1.4.0 spring"))
    for n in range(8):
        device = str(uuid.UUID(int=n + 7))
        got = await check(client, project, device, "ios")
        assert got["id"] == published["ios"]
        if n < 2:  # two installations crash before first render and say so on the next check
            await check(client, project, device, "ios", failed=[published["ios"]], fatal=CRASH)
        else:
            await check(client, project, device, "ios", current=published["ios"])
    await reports(ctx).flush()
    history = (
        await client.get(f"/api/v1/projects/{project['id']}/updates/history", headers=admin_headers(project))
    ).json()["data"]
    row = next(r for r in history if r["version"] == "1.4.0 spring")
    assert row["channel"] == "production" and row["status"] == "active" and row["rollout_percentage"] == 100
    assert row["devices_affected"] == 8
    assert row["error_rate"] == 0.25
