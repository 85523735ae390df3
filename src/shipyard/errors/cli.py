"""``shipyard errors …``: list and triage issues, read release health, drain the queue, purge."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from shipyard.core import projects
from shipyard.core.audit import Actor
from shipyard.core.context import Context
from shipyard.core.db import utcnow

CLI_ACTOR = Actor(type="system", id="cli")


def _run(fn: Any) -> Any:
    from shipyard.cli import run_with_ctx

    return run_with_ctx(fn)


def _emit(data: Any, as_json: bool) -> None:
    from shipyard.cli import emit

    emit(data, as_json)


@click.group("errors", help="Error monitoring: issues, release health, ingest queue.")
def errors_group() -> None:
    pass


@errors_group.group("issues", help="List and triage issues.")
def issues_group() -> None:
    pass


@issues_group.command("list")
@click.option("--project", required=True, help="Project id or slug.")
@click.option("--status", type=click.Choice(["unresolved", "resolved", "ignored"]), default=None)
@click.option("--release", default=None)
@click.option("--environment", default=None)
@click.option("--level", default=None)
@click.option("--query", "-q", default=None, help="Text in the title or culprit.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option(
    "--sort",
    type=click.Choice(["last_seen", "first_seen", "events", "users", "impact"]),
    default="last_seen",
    show_default=True,
    help="Order: most recent, newest, most events, most users, or highest impact first.",
)
@click.option("--json", "as_json", is_flag=True)
def issues_list(
    project: str,
    status: str | None,
    release: str | None,
    environment: str | None,
    level: str | None,
    query: str | None,
    limit: int,
    sort: str,
    as_json: bool,
) -> None:
    """Issues, most recently seen first (or in the ``--sort`` order)."""
    from shipyard.errors import health, issues

    async def go(ctx: Context) -> list[dict[str, Any]]:
        async with ctx.db.connect() as conn:
            target = await projects.get_project(conn, project)
            active = (
                await health.active_users(conn, target.id, utcnow() - timedelta(hours=24)) if sort == "impact" else 0
            )
            rows, _ = await issues.list_issues(
                conn,
                target.id,
                status=status,
                release=release,
                environment=environment,
                level=level,
                query=query,
                limit=limit,
                sort=sort,
                active_users=active,
            )
            return [await issues.describe_issue(conn, r) for r in rows]

    data = _run(go)
    if as_json:
        _emit(data, True)
        return
    if not data:
        click.echo("no issues")
    for issue in data:
        state = issue["status"] + (f"/{issue['substatus']}" if issue["substatus"] else "")
        click.echo(
            f"{issue['id']:>6}  {state:<22} {issue['count']:>7} ev {issue['user_count']:>5} us  "
            f"{issue['level']:<7} {issue['title'][:80]}"
        )


def _action(project: str, fn_name: str, issue_id: int, **kwargs: Any) -> dict[str, Any]:
    from shipyard.errors import issues

    async def go(ctx: Context) -> dict[str, Any]:
        async with ctx.db.transaction() as conn:
            target = await projects.get_project(conn, project)
            result: dict[str, Any] = await getattr(issues, fn_name)(conn, ctx, CLI_ACTOR, target.id, issue_id, **kwargs)
            return result

    return _run(go)


@issues_group.command("resolve")
@click.argument("issue_id", type=int)
@click.option("--project", required=True)
@click.option("--in-next-release", is_flag=True, help="Resolved by the release after the newest one.")
@click.option("--in-release", default=None, help="Resolved in this release.")
@click.option("--json", "as_json", is_flag=True)
def issues_resolve(issue_id: int, project: str, in_next_release: bool, in_release: str | None, as_json: bool) -> None:
    """Resolve an issue (a later event regresses it)."""
    mode = "in_release" if in_release else ("in_next_release" if in_next_release else "now")
    result = _action(project, "resolve", issue_id, mode=mode, release=in_release)
    _emit(
        result
        if as_json
        else f"issue {issue_id} resolved ({mode}{', ' + str(result['resolved_in']) if result['resolved_in'] else ''})",
        as_json,
    )


@issues_group.command("ignore")
@click.argument("issue_id", type=int)
@click.option("--project", required=True)
@click.option("--minutes", type=int, default=None, help="Ignore for this long.")
@click.option("--events", type=int, default=None, help="Ignore until this many more events.")
@click.option("--users", type=int, default=None, help="Ignore until this many more users.")
@click.option("--json", "as_json", is_flag=True)
def issues_ignore(
    issue_id: int, project: str, minutes: int | None, events: int | None, users: int | None, as_json: bool
) -> None:
    """Ignore an issue (forever unless a limit is given)."""
    if minutes:
        mode, kwargs = "until", {"minutes": minutes}
    elif events:
        mode, kwargs = "events", {"count": events}
    elif users:
        mode, kwargs = "users", {"count": users}
    else:
        mode, kwargs = "forever", {}
    result = _action(project, "ignore", issue_id, mode=mode, **kwargs)
    _emit(result if as_json else f"issue {issue_id} ignored ({mode})", as_json)


@issues_group.command("unresolve")
@click.argument("issue_id", type=int)
@click.option("--project", required=True)
def issues_unresolve(issue_id: int, project: str) -> None:
    """Reopen an issue."""
    _action(project, "unresolve", issue_id)
    click.echo(f"issue {issue_id} reopened")


@issues_group.command("assign")
@click.argument("issue_id", type=int)
@click.argument("assignee", required=False)
@click.option("--project", required=True)
def issues_assign(issue_id: int, assignee: str | None, project: str) -> None:
    """Assign to a member by email (no ASSIGNEE unassigns)."""
    _action(project, "assign", issue_id, assignee=assignee)
    click.echo(f"issue {issue_id} {'assigned to ' + assignee if assignee else 'unassigned'}")


@errors_group.command("health")
@click.option("--project", required=True)
@click.option("--hours", type=int, default=24 * 14, show_default=True)
@click.option("--environment", default=None)
@click.option("--per-update", is_flag=True, help="One row per release and OTA update.")
@click.option("--json", "as_json", is_flag=True)
def health_cmd(project: str, hours: int, environment: str | None, per_update: bool, as_json: bool) -> None:
    """Crash-free sessions and users per release."""
    from shipyard.errors import health

    async def go(ctx: Context) -> list[dict[str, Any]]:
        async with ctx.db.connect() as conn:
            target = await projects.get_project(conn, project)
            return await health.by_release(
                conn, target.id, utcnow() - timedelta(hours=hours), environment=environment, per_update=per_update
            )

    rows = _run(go)
    if as_json:
        _emit(rows, True)
        return
    if not rows:
        click.echo("no sessions yet")
    for r in rows:
        label = r["release"] + (f" [{r['update_id']}]" if r.get("update_id") else "")
        cfs = "—" if r["crash_free_sessions"] is None else f"{r['crash_free_sessions'] * 100:.2f} %"
        cfu = "—" if r["crash_free_users"] is None else f"{r['crash_free_users'] * 100:.2f} %"
        click.echo(
            f"{label:<50} {r['environment']:<12} sessions {r['sessions']:>7}  crash-free {cfs:>9}  "
            f"users {r['users']:>6}  crash-free users {cfu:>9}  adoption {r['adoption_sessions_24h'] * 100:.1f} %"
        )


@errors_group.command("process")
def process_cmd() -> None:
    """Process every stored envelope now (normally the background worker does this)."""
    from shipyard.errors import digest

    handled = _run(lambda ctx: digest.drain(ctx, idle_seconds=0))
    click.echo(f"processed {handled} envelopes")


@errors_group.command("purge")
def purge_cmd() -> None:
    """Apply retention now: delete events past each project's retention and event cap."""
    from shipyard.errors import retention

    totals = _run(retention.purge)
    click.echo(", ".join(f"{k}: {v}" for k, v in totals.items()))
