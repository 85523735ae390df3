"""Device reports: buffered off the hot path, written at flush and at shutdown, exposed as
Prometheus metrics."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from shipyard.app import create_app
from shipyard.core import projects
from shipyard.core.context import Context
from shipyard.core.jobs import Worker, enqueue
from shipyard.updates.models import devices
from shipyard.updates.telemetry import reports
from tests.conftest import make_ctx, make_settings
from tests.updates.helpers import expo_headers, make_export, publish_export


async def test_reports_survive_shutdown_and_feed_metrics(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, updates_report_flush_seconds=3600.0)  # only shutdown flushes
    ctx = await make_ctx(settings)
    async with ctx.db.transaction() as conn:
        project: dict[str, Any] = await projects.create_project(conn, "Fleet", public_base="http://testserver")
    app = create_app(ctx=ctx)
    label = str(project["id"])
    before = REGISTRY.get_sample_value(
        "shipyard_updates_manifest_requests_total", {"project": label, "platform": "ios", "outcome": "manifest"}
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            published = await publish_export(client, project, make_export(tmp_path, "v1"))
            update_id = next(u["id"] for u in published["updates"] if u["platform"] == "ios")
            for _ in range(25):
                response = await client.get(
                    f"/updates/{project['id']}/manifest",
                    headers=expo_headers(client_id=str(uuid.uuid4()), current=update_id, embedded=str(uuid.uuid4())),
                )
                assert response.status_code == 200
    after = REGISTRY.get_sample_value(
        "shipyard_updates_manifest_requests_total", {"project": label, "platform": "ios", "outcome": "no_update"}
    )
    assert after is not None and after >= 25
    assert before is None or before >= 0
    await ctx.close()  # flushes what the requests buffered

    reopened = await make_ctx(settings)
    try:
        async with reopened.db.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(devices))).scalar_one()
        assert count == 25
        async with reopened.db.transaction() as conn:
            await enqueue(conn, "updates.refresh_metrics", {})
        await Worker(reopened).run_until_idle()
        ota = REGISTRY.get_sample_value(
            "shipyard_updates_channel_devices", {"project": label, "channel": "production", "source": "ota"}
        )
        assert ota == 25
        # Adoption of a plain release (no rollout) is exported per update too.
        running = REGISTRY.get_sample_value("shipyard_updates_devices_running", {"project": label, "update": update_id})
        assert running == 25
        rate = REGISTRY.get_sample_value("shipyard_updates_failed_launch_rate", {"project": label, "update": update_id})
        assert rate == 0.0
    finally:
        await reopened.close()


async def test_repeated_checks_are_not_rewritten(ctx: Context) -> None:
    from shipyard.updates.protocol import parse_request

    buffer = reports(ctx)
    device = str(uuid.uuid4())
    headers = {"expo-platform": "ios", "expo-runtime-version": "1", "eas-client-id": device}
    for _ in range(5):
        buffer.record(1, "production", parse_request(headers), None)
    assert len(buffer.buffer.devices) == 1
    buffer.buffer.devices.clear()
    buffer.record(1, "production", parse_request(headers), None)
    assert not buffer.buffer.devices  # same state within the minute: nothing to write
    buffer.record(1, "production", parse_request({**headers, "expo-current-update-id": str(uuid.uuid4())}), None)
    assert len(buffer.buffer.devices) == 1  # state changed


async def _device_reports_land(ctx: Context, tmp_path: Path) -> None:
    """Devices, served/ran/failed marks and fatal errors go through the driver-level upsert
    the flush uses, and a second report for the same device updates its row in place."""
    from shipyard.updates.models import device_updates, fatal_errors

    async with ctx.db.transaction() as conn:
        project: dict[str, Any] = await projects.create_project(conn, "Fleet", public_base="http://testserver")
    app = create_app(ctx=ctx)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            published = await publish_export(client, project, make_export(tmp_path, "v1"))
            update_id = next(u["id"] for u in published["updates"] if u["platform"] == "ios")
            embedded = str(uuid.uuid4())
            url = f"/updates/{project['id']}/manifest"
            fresh, crashed = str(uuid.uuid4()), str(uuid.uuid4())
            first = await client.get(url, headers=expo_headers(client_id=fresh, current=embedded, embedded=embedded))
            assert first.status_code == 200
            await reports(ctx).flush()
            # The same device, now running the update; another one that failed to launch it.
            await client.get(url, headers=expo_headers(client_id=fresh, current=update_id, embedded=embedded))
            failed_headers = {
                **expo_headers(client_id=crashed, current=embedded, embedded=embedded),
                "expo-recent-failed-update-ids": f'"{update_id}"',
                "expo-fatal-error": "TypeError: undefined is not a function",
            }
            await client.get(url, headers=failed_headers)
            await reports(ctx).flush()
    async with ctx.db.connect() as conn:
        rows = {r.client_id: r for r in await conn.execute(select(devices))}
        marks = {r.client_id: r for r in await conn.execute(select(device_updates))}
        fatal = (await conn.execute(select(fatal_errors))).all()
    assert set(rows) == {fresh, crashed}
    assert rows[fresh].current_update_id == update_id  # updated in place, not duplicated
    assert rows[fresh].last_seen >= rows[fresh].first_seen
    assert rows[fresh].first_seen.tzinfo is not None
    assert marks[fresh].served_at is not None and marks[fresh].ran_at is not None
    assert marks[fresh].served_at <= marks[fresh].ran_at  # the earliest served time is kept
    assert marks[crashed].failed_at is not None
    assert [(f.update_id, f.message, f.count) for f in fatal] == [
        (update_id, "TypeError: undefined is not a function", 1)
    ]


async def test_device_reports_land_on_sqlite(ctx: Context, tmp_path: Path) -> None:
    await _device_reports_land(ctx, tmp_path)


async def test_device_reports_land_on_postgresql(pg_ctx: Context, tmp_path: Path) -> None:
    await _device_reports_land(pg_ctx, tmp_path)
