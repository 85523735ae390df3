"""Background work: rollout plan steps, policy evaluation and Prometheus gauges."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from shipyard.core import jobs
from shipyard.core.context import Context
from shipyard.updates import policy, service, telemetry
from shipyard.updates.models import devices, rollouts, updates

jobs.recurring("updates-rollout-plan", "* * * * *", "updates.advance_rollouts")
jobs.recurring("updates-policies", "* * * * *", "updates.evaluate_policies")
jobs.recurring("updates-metrics", "* * * * *", "updates.refresh_metrics")


async def _flush_local_reports(ctx: Context) -> None:
    # In `shipyard serve` the worker shares the process with the manifest endpoint: judge
    # on everything received so far, not on what the last flush happened to write.
    found = ctx.extras.get("updates_reports")
    if found is not None:
        await found.flush()


@jobs.handler("updates.advance_rollouts")
async def advance_rollouts(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    await service.advance_rollouts(ctx)


@jobs.handler("updates.evaluate_policies")
async def evaluate_policies(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    await _flush_local_reports(ctx)
    project_id = payload.get("project_id")
    await policy.evaluate_all(ctx, int(project_id) if project_id is not None else None)


@jobs.handler("updates.refresh_metrics")
async def refresh_metrics(ctx: Context, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    """Per-update adoption and launch-health gauges, and each channel's embedded/OTA split.

    Exported for updates under an active or halted rollout and for every update of this
    server that installations report running, so adoption of a plain release is visible too
    (updates nobody runs any more drop out instead of growing the label set forever)."""
    async with ctx.db.connect() as conn:
        live = list(await conn.execute(select(rollouts).where(rollouts.c.status.in_(service.ACTIVE_ROLLOUT))))
        for row in live:
            telemetry.ROLLOUT_PERCENTAGE.labels(str(row.project_id), row.group_id).set(row.percentage)
        watched: dict[str, int] = {}
        for group_id in {row.group_id for row in live}:
            for update_row in await conn.execute(
                select(updates.c.id, updates.c.project_id).where(updates.c.group_id == group_id)
            ):
                watched[update_row.id] = update_row.project_id
        running = await conn.execute(
            select(updates.c.id, updates.c.project_id).where(
                updates.c.id.in_(select(devices.c.current_update_id).where(devices.c.current_update_id.is_not(None)))
            )
        )
        for update_row in running:
            watched[update_row.id] = update_row.project_id
        for update_id, project_id in sorted(watched.items()):
            health = await telemetry.update_health(conn, update_id)
            labels = (str(project_id), update_id)
            telemetry.DEVICES_RUNNING.labels(*labels).set(health["devices_running"])
            telemetry.FAILED_LAUNCHES.labels(*labels).set(health["failed_launches"])
            telemetry.FAILED_LAUNCH_RATE.labels(*labels).set(health["failure_rate"] or 0.0)
        _forget_stale(watched)
        with_devices = [r[0] for r in await conn.execute(select(devices.c.project_id).distinct())]
        for project_id in with_devices:
            for split in await telemetry.channel_split(conn, project_id):
                for source in ("embedded", "ota"):
                    telemetry.DEVICES_BY_SOURCE.labels(str(project_id), split["channel"], source).set(split[source])


def _forget_stale(watched: dict[str, int]) -> None:
    """Drop gauge children of updates no longer watched (their last value would lie)."""
    keep = {(str(project_id), update_id) for update_id, project_id in watched.items()}
    for gauge in (telemetry.DEVICES_RUNNING, telemetry.FAILED_LAUNCHES, telemetry.FAILED_LAUNCH_RATE):
        exported = {
            (sample.labels["project"], sample.labels["update"])
            for metric in gauge.collect()
            for sample in metric.samples
        }
        for labels in exported - keep:
            gauge.remove(*labels)
