"""Background jobs of the push feature (all durable in the core job table)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shipyard.core import audit, jobs
from shipyard.core.context import Context
from shipyard.core.jobs import JobInfo
from shipyard.push import delivery, sending
from shipyard.push import devices as devices_svc


@jobs.handler("push.fanout")
async def fanout(ctx: Context, payload: dict[str, Any], job: JobInfo) -> None:
    await sending.fanout(ctx, int(payload["send_id"]), str(payload.get("occurrence", "")))


@jobs.handler("push.deliver")
async def deliver(ctx: Context, payload: dict[str, Any], job: JobInfo) -> None:
    await delivery.deliver(ctx, int(payload["project_id"]), list(payload["ids"]))


@jobs.handler("push.receipts")
async def receipts(ctx: Context, payload: dict[str, Any], job: JobInfo) -> None:
    await delivery.check_receipts(ctx, int(payload["project_id"]), list(payload["tickets"]))


@jobs.handler("push.prune_devices")
async def prune_devices(ctx: Context, payload: dict[str, Any], job: JobInfo) -> None:
    """Deactivate devices that have not been seen for ``push_stale_device_days``."""
    async with ctx.db.transaction() as conn:
        pruned = await devices_svc.prune_stale(conn, timedelta(days=ctx.settings.push_stale_device_days))
        by_project: dict[int, int] = {}
        for project_id, _device in pruned:
            by_project[project_id] = by_project.get(project_id, 0) + 1
        for project_id, count in by_project.items():
            await audit.record(
                conn,
                ctx,
                audit.Actor.system("push.prune"),
                "push.devices.prune",
                project_id=project_id,
                resource_type="push_device",
                details={"deactivated": count, "older_than_days": ctx.settings.push_stale_device_days},
            )


jobs.recurring("push.prune_devices", "17 3 * * *", "push.prune_devices")
