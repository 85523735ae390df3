"""``shipyard push …``: send and manage notifications through a server's admin API with a
secret key (``--server``/``SHIPYARD_URL``, ``--key``/``SHIPYARD_SECRET_KEY``)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
import httpx


def _client(server: str | None, key: str | None) -> httpx.Client:
    server = server or os.environ.get("SHIPYARD_URL") or "http://127.0.0.1:8000"
    # SHIPYARD_KEY as `shipyard updates` uses it; SHIPYARD_SECRET_KEY only when it holds a
    # project key (on a server host that variable is the server's own secret).
    legacy = os.environ.get("SHIPYARD_SECRET_KEY", "")
    key = key or os.environ.get("SHIPYARD_KEY") or (legacy if legacy.startswith("sk_") else None)
    if not key or not key.startswith("sk_"):
        raise click.UsageError("give the project's secret key with --key or SHIPYARD_KEY (sk_…)")
    return httpx.Client(base_url=server.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {client.base_url}: {exc}") from None
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['code']}: {error['message']}"
        except Exception:
            message = response.text[:500]
        raise click.ClickException(f"{response.status_code} {message}")
    return response.json() if response.content else None


def _options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")(fn)
    fn = click.option("--key", default=None, help="Project secret key sk_… (default: SHIPYARD_KEY).")(fn)
    fn = click.option("--server", default=None, help="Server URL (default: SHIPYARD_URL or http://127.0.0.1:8000).")(fn)
    fn = click.option("--project", required=True, help="Project id or slug.")(fn)
    return fn


@click.group("push")
def push() -> None:
    """Send push notifications, manage scheduled sends, event rules and deep links."""


@push.command("send")
@_options
@click.option("--user", "users", multiple=True, help="User id to notify (repeatable).")
@click.option("--device", "device_ids", type=int, multiple=True, help="Device id (repeatable).")
@click.option("--token", "tokens", multiple=True, help="Push token (repeatable).")
@click.option("--topic", "topics", multiple=True, help="Topic (repeatable).")
@click.option("--segment", default=None, help='Users whose properties match, as JSON: \'{"plan": "pro"}\'.')
@click.option("--all", "everyone", is_flag=True, help="Every active device of the project.")
@click.option("--title", default=None)
@click.option("--body", default=None)
@click.option("--data", default=None, help="JSON object delivered to the app.")
@click.option("--category", default=None)
@click.option("--deep-link", default=None)
@click.option("--image", default=None)
@click.option("--badge", type=int, default=None)
@click.option("--sound", default=None)
@click.option("--template", default=None, help="Template name (instead of --title/--body).")
@click.option("--var", "variables", multiple=True, help="Template variable NAME=VALUE (repeatable).")
@click.option("--at", "at", default=None, help="Send at this ISO time (with offset, or local with --timezone).")
@click.option("--timezone", default=None, help="IANA zone for --at/--recurring, or `user` for each user's own.")
@click.option("--recurring", type=click.Choice(["daily", "weekly", "monthly"]), default=None)
@click.option("--time", "at_time", default=None, help="HH:MM for --recurring.")
@click.option("--days", default=None, help="Days of week for weekly, e.g. 0,2,4 (0 = Monday).")
@click.option("--day-of-month", type=int, default=None)
@click.option("--until", "end_date", default=None, help="Last date (YYYY-MM-DD) of a recurring send.")
@click.option("--idempotency-key", default=None, help="The same key never sends twice.")
@click.option("--campaign", default=None)
def send_cmd(project: str, server: str | None, key: str | None, as_json: bool, **o: Any) -> None:
    """Send (or schedule) a notification."""
    target: dict[str, Any] = {}
    for name, value in (
        ("user_ids", o["users"]),
        ("device_ids", o["device_ids"]),
        ("tokens", o["tokens"]),
        ("topics", o["topics"]),
    ):
        if value:
            target[name] = list(value)
    if o["segment"]:
        target["segment"] = _json_arg("--segment", o["segment"])
    if o["everyone"]:
        target["all"] = True
    body: dict[str, Any] = {"to": target}
    notification = {
        k: v
        for k, v in (
            ("title", o["title"]),
            ("body", o["body"]),
            ("category", o["category"]),
            ("deep_link", o["deep_link"]),
            ("image", o["image"]),
            ("badge", o["badge"]),
            ("sound", o["sound"]),
        )
        if v is not None
    }
    if o["data"]:
        notification["data"] = _json_arg("--data", o["data"])
    if notification:
        body["notification"] = notification
    if o["template"]:
        body["template"] = o["template"]
        body["variables"] = dict(_pair(v) for v in o["variables"])
    schedule: dict[str, Any] = {}
    if o["recurring"]:
        pattern: dict[str, Any] = {"frequency": o["recurring"], "time": o["at_time"] or ""}
        if o["days"]:
            pattern["days_of_week"] = [int(d) for d in o["days"].split(",")]
        if o["day_of_month"]:
            pattern["day_of_month"] = o["day_of_month"]
        if o["end_date"]:
            pattern["end_date"] = o["end_date"]
        schedule = {"trigger": "recurring", "recurring_pattern": pattern}
    elif o["at"]:
        schedule = {"trigger": "scheduled", "scheduled_time": o["at"]}
    if schedule and o["timezone"]:
        schedule["timezone"] = o["timezone"]
    if schedule:
        body["schedule"] = schedule
    for name in ("idempotency_key", "campaign"):
        if o[name]:
            body[name] = o[name]
    with _client(server, key) as client:
        result = _call(client, "POST", f"/api/v1/projects/{project}/push/sends", json=body)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    what = "already accepted (same idempotency key)" if result.get("duplicate") else "accepted"
    if result["status"] == "done":  # fanned out on acceptance: its messages are queued
        count = result["recipients"]
        click.echo(f"send {result['id']} {what}: {count} message{'' if count == 1 else 's'} queued")
    else:
        click.echo(f"send {result['id']} {what}: status {result['status']}, first run {result.get('next_run_at')}")


@push.command("list")
@_options
@click.option("--status", type=click.Choice(["queued", "scheduled", "recurring", "done", "cancelled", "failed"]))
def list_cmd(project: str, server: str | None, key: str | None, as_json: bool, status: str | None) -> None:
    """List sends (e.g. --status scheduled / recurring)."""
    params = {"status": status} if status else {}
    with _client(server, key) as client:
        result = _call(client, "GET", f"/api/v1/projects/{project}/push/sends", params=params)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    for s in result["data"]:
        title = (s.get("payload") or {}).get("title") or s.get("template") or ""
        click.echo(f"{s['id']:>6}  {s['status']:<10} next {s.get('next_run_at') or '—':<32} {title}")


@push.command("cancel")
@_options
@click.argument("send_id", type=int)
def cancel_cmd(project: str, server: str | None, key: str | None, as_json: bool, send_id: int) -> None:
    """Cancel a scheduled or recurring send."""
    with _client(server, key) as client:
        result = _call(client, "DELETE", f"/api/v1/projects/{project}/push/sends/{send_id}")
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    click.echo(f"send {send_id} cancelled; {result['dropped_messages']} queued messages dropped")


@push.command("status")
@_options
@click.argument("send_id", type=int)
def status_cmd(project: str, server: str | None, key: str | None, as_json: bool, send_id: int) -> None:
    """A send's delivery funnel: sent, delivered, opened, failed (with reasons)."""
    with _client(server, key) as client:
        result = _call(client, "GET", f"/api/v1/projects/{project}/push/sends/{send_id}")
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    f = result["funnel"]
    click.echo(f"send {send_id}: {result['status']}, {f['messages']} messages")
    for stage in ("sent", "delivered", "opened", "failed", "suppressed", "pending"):
        click.echo(f"  {stage:<10} {f[stage]}")
    for failure in f["failures"]:
        click.echo(f"  {failure['count']}x {failure['reason']}")


# --- event rules -----------------------------------------------------------------------------


@push.group("rules")
def rules() -> None:
    """Event rules: a domain event posted by your backend becomes a templated notification."""


@rules.command("list")
@_options
def rules_list_cmd(project: str, server: str | None, key: str | None, as_json: bool) -> None:
    """List the project's event rules."""
    with _client(server, key) as client:
        result = _call(client, "GET", f"/api/v1/projects/{project}/push/rules", params={"limit": 200})
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    if not result["data"]:
        click.echo("no event rules")
    for r in result["data"]:
        click.echo(_rule_line(r))


@rules.command("create")
@_options
@click.argument("name")
@click.option("--event", required=True, help="Event name, e.g. community.comment_created.")
@click.option("--template", required=True, help="Template that renders the notification.")
@click.option("--recipient-field", default="user_id", show_default=True, help="Event property naming the user.")
@click.option("--category", default=None, help="Category (default: the template's).")
@click.option("--delay", "delay_seconds", type=int, default=0, show_default=True, help="Seconds to wait first.")
@click.option("--digest-window", "digest_window_seconds", type=int, default=None, help="Collapse within N seconds.")
@click.option("--deep-link-route", default=None, help="Deep-link route filled from the event's properties.")
@click.option("--disabled", is_flag=True, help="Store the rule switched off.")
def rules_create_cmd(
    project: str, server: str | None, key: str | None, as_json: bool, name: str, disabled: bool, **o: Any
) -> None:
    """Create or replace the event rule NAME."""
    body = {k: v for k, v in o.items() if v is not None}
    body["enabled"] = not disabled
    with _client(server, key) as client:
        result = _call(client, "PUT", f"/api/v1/projects/{project}/push/rules/{name}", json=body)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    click.echo(f"rule saved: {_rule_line(result)}")


@rules.command("delete")
@_options
@click.argument("name")
def rules_delete_cmd(project: str, server: str | None, key: str | None, as_json: bool, name: str) -> None:
    """Delete the event rule NAME."""
    with _client(server, key) as client:
        _call(client, "DELETE", f"/api/v1/projects/{project}/push/rules/{name}")
    click.echo(json.dumps({"deleted": name}) if as_json else f"rule {name} deleted")


def _rule_line(r: dict[str, Any]) -> str:
    extras = [f"to {r['recipient_field']}"]
    if r.get("category"):
        extras.append(f"category {r['category']}")
    if r.get("delay_seconds"):
        extras.append(f"delay {r['delay_seconds']} s")
    if r.get("digest_window_seconds"):
        extras.append(f"digest {r['digest_window_seconds']} s")
    if r.get("deep_link_route"):
        extras.append(f"link {r['deep_link_route']}")
    state = "" if r.get("enabled", True) else "  (disabled)"
    return f"{r['name']:<24} {r['event']} -> {r['template']}  {', '.join(extras)}{state}"


# --- deep links -------------------------------------------------------------------------------


@push.group("links")
def links() -> None:
    """Deep-link routes and signed, expiring, tracked links."""


@links.group("routes")
def routes() -> None:
    """Per-project deep-link route templates, e.g. canabro://plants/{plantId}."""


@routes.command("list")
@_options
def routes_list_cmd(project: str, server: str | None, key: str | None, as_json: bool) -> None:
    """List the project's deep-link routes."""
    with _client(server, key) as client:
        result = _call(client, "GET", f"/api/v1/projects/{project}/push/links/routes")
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    if not result["data"]:
        click.echo("no deep-link routes")
    for r in result["data"]:
        click.echo(f"{r['name']:<24} {r['template']}")


@routes.command("create")
@_options
@click.argument("name")
@click.argument("template")
def routes_create_cmd(
    project: str, server: str | None, key: str | None, as_json: bool, name: str, template: str
) -> None:
    """Create or replace the route NAME with TEMPLATE (e.g. canabro://plants/{plantId})."""
    with _client(server, key) as client:
        result = _call(
            client, "PUT", f"/api/v1/projects/{project}/push/links/routes/{name}", json={"template": template}
        )
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    click.echo(f"route {result['name']} saved: {result['template']} (parameters: {', '.join(result['params'])})")


@routes.command("delete")
@_options
@click.argument("name")
def routes_delete_cmd(project: str, server: str | None, key: str | None, as_json: bool, name: str) -> None:
    """Delete the route NAME."""
    with _client(server, key) as client:
        _call(client, "DELETE", f"/api/v1/projects/{project}/push/links/routes/{name}")
    click.echo(json.dumps({"deleted": name}) if as_json else f"route {name} deleted")


@links.command("generate")
@_options
@click.argument("route")
@click.option("--param", "params", multiple=True, help="Route parameter NAME=VALUE (repeatable).")
@click.option("--campaign", default=None, help="Campaign the link's engagement is counted under.")
@click.option(
    "--source",
    type=click.Choice(["notification", "url", "qr_code", "share"]),
    default="notification",
    show_default=True,
    help="Where the link will be used.",
)
@click.option("--ttl-hours", type=int, default=None, help="Lifetime (default: SHIPYARD_PUSH_LINK_TTL_HOURS).")
def links_generate_cmd(
    project: str,
    server: str | None,
    key: str | None,
    as_json: bool,
    route: str,
    params: tuple[str, ...],
    campaign: str | None,
    source: str,
    ttl_hours: int | None,
) -> None:
    """Print a signed, expiring deep link for ROUTE with tracking parameters."""
    body: dict[str, Any] = {"route": route, "params": dict(_pair(p, "--param") for p in params), "source": source}
    if campaign:
        body["campaign"] = campaign
    if ttl_hours is not None:
        body["ttl_hours"] = ttl_hours
    with _client(server, key) as client:
        result = _call(client, "POST", f"/api/v1/projects/{project}/push/links", json=body)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    click.echo(result["url"])
    click.echo(f"  link {result['link_id']}, campaign {result.get('campaign') or '—'}, expires {result['expires_at']}")


def _json_arg(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from None


def _pair(value: str, option: str = "--var") -> tuple[str, str]:
    if "=" not in value:
        raise click.BadParameter("expected NAME=VALUE", param_hint=option)
    name, _, rest = value.partition("=")
    return name, rest


def command() -> click.Command:
    return push


if __name__ == "__main__":  # pragma: no cover
    push(sys.argv[1:])
