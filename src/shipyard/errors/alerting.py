"""Issue and release-health alerts, raised through the alerts core.

Built in (per-project switches ``alert_new_issue`` / ``alert_regression``, on by default):
    * **new_issue** — the first event of a new issue;
    * **regression** — a resolved issue reopened by a new event.
Rules a project adds (``errors_alert_rules``):
    * **event_frequency** — an issue got more than ``threshold`` events in ``window_minutes``;
    * **user_frequency** — an issue hit more than ``threshold`` distinct users in ``window_minutes``;
    * **spike** — an issue's events in the last ``window_minutes`` exceed ``threshold`` × its average
      per window over the previous 24 hours, with at least ``min_count`` events;
    * **crash_free** — a release's crash-free session rate over ``window_minutes`` is under
      ``threshold`` with at least ``min_count`` sessions (checked every 5 minutes; the alert
      resolves itself when the rate recovers).
Each rule fires at most once per subject (issue or release) per ``interval_minutes``, so one
storm sends one alert, not a hundred.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core import alerts, projects
from shipyard.core.context import Context
from shipyard.core.db import upsert, utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.errors import health
from shipyard.errors.issues import IssueView, events_in_window
from shipyard.errors.models import alert_fires, alert_rules, issue_hourly, issue_users, session_hourly

RULE_KINDS = ("event_frequency", "user_frequency", "spike", "crash_free")
ISSUE_RULES = ("event_frequency", "user_frequency", "spike")
SOURCE = "errors"


def issue_link(slug: str, issue_id: int) -> str:
    return f"/projects/{slug}/errors/issues/{issue_id}"


# --- rules ---------------------------------------------------------------------------------------


def validate_rule(kind: str, threshold: float | None, window_minutes: int, interval_minutes: int) -> None:
    if kind not in RULE_KINDS:
        raise BadRequest(f"unknown rule kind {kind!r}; expected one of {', '.join(RULE_KINDS)}")
    if threshold is None or threshold <= 0:
        raise BadRequest("a rule needs a threshold > 0")
    if kind == "crash_free" and threshold >= 1:
        raise BadRequest("a crash_free threshold is a rate below 1, e.g. 0.99")
    if not 1 <= window_minutes <= 60 * 24 * 30:
        raise BadRequest("window_minutes must be between 1 and 43200")
    if not 1 <= interval_minutes <= 60 * 24 * 30:
        raise BadRequest("interval_minutes must be between 1 and 43200")


async def create_rule(conn: AsyncConnection, project_id: int, values: dict[str, Any]) -> dict[str, Any]:
    validate_rule(values["kind"], values.get("threshold"), values["window_minutes"], values["interval_minutes"])
    rule_id = (
        await conn.execute(
            alert_rules.insert()
            .values(project_id=project_id, created_at=utcnow(), enabled=True, **values)
            .returning(alert_rules.c.id)
        )
    ).scalar_one()
    return await get_rule(conn, project_id, int(rule_id))


async def get_rule(conn: AsyncConnection, project_id: int, rule_id: int) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(alert_rules).where(alert_rules.c.id == rule_id, alert_rules.c.project_id == project_id)
        )
    ).first()
    if row is None:
        raise NotFound("alert rule")
    return dict(row._mapping)


async def list_rules(conn: AsyncConnection, project_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(alert_rules).where(alert_rules.c.project_id == project_id).order_by(alert_rules.c.id)
    )
    return [dict(r._mapping) for r in rows]


async def update_rule(conn: AsyncConnection, project_id: int, rule_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Change some fields of a rule (the result is validated as a whole, like a new rule)."""
    merged = {**await get_rule(conn, project_id, rule_id), **changes}
    validate_rule(merged["kind"], merged["threshold"], merged["window_minutes"], merged["interval_minutes"])
    if changes:
        await conn.execute(
            alert_rules.update()
            .where(alert_rules.c.id == rule_id, alert_rules.c.project_id == project_id)
            .values(**changes)
        )
    return await get_rule(conn, project_id, rule_id)


async def delete_rule(conn: AsyncConnection, project_id: int, rule_id: int) -> None:
    result = await conn.execute(
        alert_rules.delete().where(alert_rules.c.id == rule_id, alert_rules.c.project_id == project_id)
    )
    if not result.rowcount:
        raise NotFound("alert rule")


# --- firing --------------------------------------------------------------------------------------


async def _may_fire(
    conn: AsyncConnection, project_id: int, rule_key: str, subject: str, interval: timedelta, now: datetime
) -> int | None:
    """Record a firing unless one happened within ``interval``; returns the firing's number."""
    row = (
        await conn.execute(
            select(alert_fires.c.fired_at, alert_fires.c.count).where(
                alert_fires.c.project_id == project_id,
                alert_fires.c.rule_key == rule_key,
                alert_fires.c.subject == subject,
            )
        )
    ).first()
    if row is not None and now - row.fired_at < interval:
        return None
    count = 1 if row is None else int(row._mapping["count"]) + 1
    await conn.execute(
        upsert(
            conn,
            alert_fires,
            {"project_id": project_id, "rule_key": rule_key, "subject": subject, "fired_at": now, "count": count},
            conflict_columns=["project_id", "rule_key", "subject"],
            update={"fired_at": now, "count": count},
        )
    )
    return count


async def issue_alerts(
    conn: AsyncConnection,
    ctx: Context,
    project: projects.Project,
    touched: list[IssueView],
    *,
    alert_new: bool,
    alert_regression: bool,
    environments: dict[int, set[str]],
    now: datetime,
) -> None:
    """Alerts for the issues a digest batch touched."""
    rules = [r for r in await list_rules(conn, project.id) if r["enabled"] and r["kind"] in ISSUE_RULES]
    for view in touched:
        link = issue_link(project.slug, view.id)
        if view.is_new and alert_new:
            await alerts.raise_alert(
                conn,
                ctx,
                project_id=project.id,
                source=SOURCE,
                dedup_key=f"errors:new_issue:{view.id}",
                severity="error" if view.is_crash else "warning",
                summary=f"New issue: {view.title}"[:300],
                details={
                    "issue_id": view.id,
                    "level": view.level,
                    "culprit": view.culprit,
                    "release": view.last_release,
                },
                link=link,
            )
        for kind, details in view.transitions:
            if kind == "regressed" and alert_regression:
                await alerts.raise_alert(
                    conn,
                    ctx,
                    project_id=project.id,
                    source=SOURCE,
                    dedup_key=f"errors:regression:{view.id}:{view.regression_count}",
                    severity="error",
                    summary=f"Regression: {view.title}"[:300],
                    details={"issue_id": view.id, **details},
                    link=link,
                )
        for rule in rules:
            if rule["environment"] and rule["environment"] not in environments.get(view.id, set()):
                continue
            await _issue_rule(conn, ctx, project, rule, view, link, now)


async def _issue_rule(
    conn: AsyncConnection,
    ctx: Context,
    project: projects.Project,
    rule: dict[str, Any],
    view: IssueView,
    link: str,
    now: datetime,
) -> None:
    window = timedelta(minutes=rule["window_minutes"])
    threshold = float(rule["threshold"])
    observed: float
    if rule["kind"] == "event_frequency":
        observed = await events_in_window(conn, view.id, now - window)
        fires = observed > threshold
        summary = f"{int(observed)} events in {rule['window_minutes']} min: {view.title}"
    elif rule["kind"] == "user_frequency":
        observed = int(
            (
                await conn.execute(
                    select(func.count())
                    .select_from(issue_users)
                    .where(issue_users.c.issue_id == view.id, issue_users.c.last_seen >= now - window)
                )
            ).scalar_one()
        )
        fires = observed > threshold
        summary = f"{int(observed)} users in {rule['window_minutes']} min: {view.title}"
    else:  # spike
        observed = await events_in_window(conn, view.id, now - window)
        baseline_hours = 24
        base_since = now - window - timedelta(hours=baseline_hours)
        base_total = (
            await conn.execute(
                select(func.coalesce(func.sum(issue_hourly.c.events), 0)).where(
                    issue_hourly.c.issue_id == view.id,
                    issue_hourly.c.hour >= base_since,
                    issue_hourly.c.hour < now - window,
                )
            )
        ).scalar_one()
        per_window = float(base_total) / (baseline_hours * 60 / rule["window_minutes"])
        fires = observed >= max(rule["min_count"], 1) and observed > threshold * per_window
        summary = (
            f"Spike: {int(observed)} events in {rule['window_minutes']} min (baseline {per_window:.1f}): {view.title}"
        )
    if not fires:
        return
    count = await _may_fire(
        conn, project.id, f"rule:{rule['id']}", f"issue:{view.id}", timedelta(minutes=rule["interval_minutes"]), now
    )
    if count is None:
        return
    await alerts.raise_alert(
        conn,
        ctx,
        project_id=project.id,
        source=SOURCE,
        dedup_key=f"errors:rule:{rule['id']}:issue:{view.id}:{count}",
        severity=rule["severity"],
        summary=summary[:300],
        details={
            "issue_id": view.id,
            "rule": rule["name"],
            "kind": rule["kind"],
            "observed": observed,
            "threshold": threshold,
        },
        link=link,
    )


async def evaluate_crash_free(ctx: Context, now: datetime | None = None) -> int:
    """Check every crash_free rule; returns how many alerts were raised."""
    now = now or utcnow()
    raised = 0
    async with ctx.db.connect() as conn:
        rules = (
            await conn.execute(select(alert_rules).where(alert_rules.c.kind == "crash_free", alert_rules.c.enabled))
        ).all()
    for rule in rules:
        since = now - timedelta(minutes=rule.window_minutes)
        async with ctx.db.connect() as conn:
            releases = (
                (
                    await conn.execute(
                        select(session_hourly.c.release)
                        .distinct()
                        .where(
                            session_hourly.c.project_id == rule.project_id,
                            session_hourly.c.hour >= health.hour_of(since),
                        )
                    )
                )
                .scalars()
                .all()
            )
            project = await projects.get_project(conn, rule.project_id)
        for release in releases:
            async with ctx.db.transaction() as conn:
                stats = await health.totals(conn, rule.project_id, since, release=release, environment=rule.environment)
                dedup = f"errors:crash_free:{rule.id}:{release}"
                rate = stats["crash_free_sessions"]
                if rate is None or stats["sessions"] < rule.min_count:
                    continue
                if rate >= rule.threshold:
                    await alerts.resolve_alert(conn, ctx, project_id=rule.project_id, dedup_key=dedup)
                    continue
                if (
                    await _may_fire(
                        conn,
                        rule.project_id,
                        f"rule:{rule.id}",
                        f"release:{release}",
                        timedelta(minutes=rule.interval_minutes),
                        now,
                    )
                    is None
                ):
                    continue
                await alerts.raise_alert(
                    conn,
                    ctx,
                    project_id=rule.project_id,
                    source=SOURCE,
                    dedup_key=dedup,
                    severity=rule.severity,
                    summary=f"Crash-free sessions of {release} at {rate * 100:.2f} % "
                    f"(under {rule.threshold * 100:.2f} %)",
                    details={"release": release, "rule": rule.name, **stats},
                    link=f"/projects/{project.slug}/errors/releases",
                )
                raised += 1
    return raised
