"""Rollout policies: when a staged rollout's health trips a channel's thresholds, stop
offering the update, optionally roll back, raise an alert and write the audit trail.

Health comes from every registered signal (:mod:`shipyard.core.signals`): this feature
registers ``failed_launch_rate`` (from expo-updates' own reports); other features add
theirs (crash-free sessions from error monitoring) and are judged by the same policy.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import alerts, audit, projects
from shipyard.core.audit import Actor
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.errors import BadRequest
from shipyard.core.signals import SignalReading, read_signals, register_signal, signal_names
from shipyard.updates import cache, service, telemetry
from shipyard.updates.models import channels, deployments, policies, rollouts, updates

log = logging.getLogger("shipyard.updates.policy")
FAILED_LAUNCH_RATE = "failed_launch_rate"
register_signal(FAILED_LAUNCH_RATE, telemetry.failed_launch_signal)


@dataclass(frozen=True)
class Policy:
    enabled: bool = True
    min_devices: int = 50
    max_failed_launch_rate: float | None = 0.02
    max_margin_over_control: float | None = None
    rules: dict[str, dict[str, float]] = field(default_factory=dict)
    action: str = "halt"  # halt | rollback

    def check(self) -> None:
        if self.action not in ("halt", "rollback"):
            raise BadRequest("action must be halt or rollback")
        if self.min_devices < 1:
            raise BadRequest("min_devices must be at least 1")
        for value in (self.max_failed_launch_rate, self.max_margin_over_control):
            if value is not None and not 0 <= value <= 1:
                raise BadRequest("rates and margins are fractions between 0 and 1")
        for name, rule in self.rules.items():
            if not set(rule) <= {"max", "min", "margin", "min_samples"} or not rule:
                raise BadRequest(f"rule for {name!r} may only set max, min, margin and min_samples")


def default_policy(ctx: Context) -> Policy:
    return Policy(
        min_devices=ctx.settings.updates_default_min_devices,
        max_failed_launch_rate=ctx.settings.updates_default_max_failed_launch_rate,
    )


async def get_policy(conn: AsyncConnection, ctx: Context, channel_id: int) -> tuple[Policy, bool]:
    """The channel's policy, and whether it was configured (else the defaults apply)."""
    row = (await conn.execute(select(policies).where(policies.c.channel_id == channel_id))).first()
    if row is None:
        return default_policy(ctx), False
    return (
        Policy(
            enabled=row.enabled,
            min_devices=row.min_devices,
            max_failed_launch_rate=row.max_failed_launch_rate,
            max_margin_over_control=row.max_margin_over_control,
            rules=dict(row.rules or {}),
            action=row.action,
        ),
        True,
    )


async def set_policy(
    conn: AsyncConnection, ctx: Context, actor: Actor, project_id: int, channel: str, policy: Policy
) -> dict[str, Any]:
    policy.check()
    unknown = sorted(set(policy.rules) - set(signal_names()))
    if unknown:
        # A misspelt signal would never trip: refuse it and say which signals exist.
        raise BadRequest(
            f"no health signal named {', '.join(map(repr, unknown))}; registered signals: " + ", ".join(signal_names()),
            code="unknown_signal",
        )
    await service.ensure_defaults(conn, project_id)
    chan = await service.channel_row(conn, project_id, channel)
    values = {**asdict(policy), "updated_at": utcnow()}
    existing = (await conn.execute(select(policies.c.id).where(policies.c.channel_id == chan.id))).first()
    if existing is None:
        await conn.execute(policies.insert().values(project_id=project_id, channel_id=chan.id, **values))
    else:
        await conn.execute(update(policies).where(policies.c.id == existing.id).values(**values))
    await audit.record(
        conn,
        ctx,
        actor,
        "updates.policy.update",
        project_id=project_id,
        resource_type="channel",
        resource_id=chan.id,
        details={"channel": channel, **asdict(policy)},
    )
    return {"channel": channel, **asdict(policy)}


def breaches(policy: Policy, readings: dict[str, SignalReading]) -> list[str]:
    """Reasons the readings trip the policy (empty: healthy, or too little data to tell)."""
    reasons: list[str] = []
    for name, reading in sorted(readings.items()):
        rule = policy.rules.get(name, {})
        min_samples = int(rule.get("min_samples", policy.min_devices))
        if reading.sample_size < min_samples:
            continue
        worse = (lambda a, b: a < b) if reading.higher_is_better else (lambda a, b: a > b)
        limit: float | None = rule.get("min" if reading.higher_is_better else "max")
        if name == FAILED_LAUNCH_RATE and limit is None:
            limit = policy.max_failed_launch_rate
        if limit is not None and worse(reading.value, limit):
            reasons.append(f"{name} is {reading.value:.4g} over {reading.sample_size} devices (limit {limit:.4g})")
            continue
        margin = rule.get("margin", policy.max_margin_over_control)
        if margin is not None and reading.control_value is not None and reading.control_size >= min_samples:
            bound = reading.control_value - margin if reading.higher_is_better else reading.control_value + margin
            if worse(reading.value, bound):
                reasons.append(
                    f"{name} is {reading.value:.4g} over {reading.sample_size} devices against "
                    f"{reading.control_value:.4g} for the control update (allowed margin {margin:.4g})"
                )
    return reasons


async def evaluate_all(ctx: Context, project_id: int | None = None) -> list[dict[str, Any]]:
    """Evaluate every active rollout (of one project, or all); returns the actions taken."""
    async with ctx.db.connect() as conn:
        query = select(rollouts).where(rollouts.c.status == "active")
        if project_id is not None:
            query = query.where(rollouts.c.project_id == project_id)
        active = list(await conn.execute(query))
    actions = []
    for rollout in active:
        try:
            action = await evaluate_rollout(ctx, rollout)
        except Exception:
            log.exception("evaluating rollout of group %s failed", rollout.group_id)
            continue
        if action is not None:
            actions.append(action)
    return actions


async def evaluate_rollout(ctx: Context, rollout: Any) -> dict[str, Any] | None:
    async with ctx.db.connect() as conn:
        members = list(
            await conn.execute(
                select(updates.c.id, updates.c.platform, updates.c.control_update_id).where(
                    updates.c.group_id == rollout.group_id
                )
            )
        )
        chans = list(await conn.execute(select(channels).where(channels.c.branch_id == rollout.branch_id)))
        chan_policies = [(c.name, *(await get_policy(conn, ctx, c.id))) for c in chans]
    if not chan_policies:
        chan_policies = [("", default_policy(ctx), False)]
    readings_by_update: dict[str, dict[str, SignalReading]] = {}
    for member in members:
        readings_by_update[member.id] = await read_signals(
            ctx, rollout.project_id, member.id, member.control_update_id, rollout.started_at
        )
    await _snapshot(ctx, rollout, readings_by_update)
    for channel_name, policy, _configured in chan_policies:
        if not policy.enabled:
            continue
        reasons = [
            f"{platform_of(members, uid)}: {reason}"
            for uid, readings in readings_by_update.items()
            for reason in breaches(policy, readings)
        ]
        if reasons:
            return await _trip(ctx, rollout, channel_name, policy, reasons, readings_by_update)
    return None


def platform_of(members: list[Any], update_id: str) -> str:
    return next((m.platform for m in members if m.id == update_id), "?")


async def _snapshot(ctx: Context, rollout: Any, readings: dict[str, dict[str, SignalReading]]) -> None:
    """Keep the deployment history's devices-affected and error-rate current."""
    attempted = failed = 0.0
    for per_update in readings.values():
        reading = per_update.get(FAILED_LAUNCH_RATE)
        if reading is not None:
            attempted += reading.sample_size
            failed += reading.value * reading.sample_size
    if not attempted:
        return
    async with ctx.db.transaction() as conn:
        await conn.execute(
            update(deployments)
            .where(deployments.c.group_id == rollout.group_id)
            .values(devices_affected=int(attempted), error_rate=failed / attempted, updated_at=utcnow())
        )


async def _trip(
    ctx: Context,
    rollout: Any,
    channel: str,
    policy: Policy,
    reasons: list[str],
    readings: dict[str, dict[str, SignalReading]],
) -> dict[str, Any] | None:
    actor = Actor.system("updates.policy")
    reason = "; ".join(reasons)
    details = {
        "channel": channel,
        "policy": asdict(policy),
        "reasons": reasons,
        "readings": {uid: {n: asdict(r) for n, r in rs.items()} for uid, rs in readings.items()},
    }
    async with ctx.db.transaction() as conn:
        current = (await conn.execute(select(rollouts).where(rollouts.c.id == rollout.id))).first()
        if current is None or current.status != "active":
            return None  # someone acted first
        await service.halt_rollout_in(
            conn,
            ctx,
            actor,
            rollout.project_id,
            current,
            reason,
            history_status="failed",
            audit_action="updates.rollout.auto_halt",
            extra={"channel": channel, "reasons": reasons},
        )
        outcome = "halted"
        if policy.action == "rollback" and channel:
            await service.rollback_in(
                conn,
                ctx,
                actor,
                rollout.project_id,
                channel=channel,
                runtime_version=None,
                platforms=["ios", "android"],
                to_embedded=False,
                reason=f"automatic rollback: {reason}",
                only_group=rollout.group_id,
            )
            outcome = "rolled_back"
        project = await projects.get_project(conn, rollout.project_id)
        await alerts.raise_alert(
            conn,
            ctx,
            project_id=rollout.project_id,
            source="updates",
            dedup_key=f"updates.rollout.{rollout.group_id}",
            severity="critical" if outcome == "rolled_back" else "error",
            summary=(
                f"Rollout of update group {rollout.group_id[:8]} on {channel or 'its branch'} was "
                f"{outcome.replace('_', ' ')}: {reasons[0]}"
            ),
            details=details,
            link=f"{ctx.settings.public_base}/projects/{project.slug}/updates/rollouts/{rollout.group_id}",
        )
    cache.invalidate(ctx, rollout.project_id)
    log.warning("rollout of %s %s: %s", rollout.group_id, outcome, reason)
    return {"group_id": rollout.group_id, "outcome": outcome, "channel": channel, "reasons": reasons}
