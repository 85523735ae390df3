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
    """Send push notifications and manage scheduled sends."""


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


def _json_arg(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from None


def _pair(value: str) -> tuple[str, str]:
    if "=" not in value:
        raise click.BadParameter("expected NAME=VALUE", param_hint="--var")
    name, _, rest = value.partition("=")
    return name, rest


def command() -> click.Command:
    return push


if __name__ == "__main__":  # pragma: no cover
    push(sys.argv[1:])
