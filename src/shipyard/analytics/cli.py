"""``shipyard analytics …``: run trends, funnel and retention queries, export and import the
tracking plan, and answer data-subject requests (export or erase everything about a user).

Like ``shipyard updates``, every command talks to a running server's admin API with a
project secret key (``--url``/``SHIPYARD_URL``, ``--key``/``SHIPYARD_KEY``), so it works from
CI or a laptop and every change lands in the audit trail. Query results print as a table,
or as the server's CSV with ``--csv`` (the same file the dashboard's "Download CSV" gives),
or as JSON with ``--json``. Exporting and erasing a user need a key with the admin role;
changing the plan needs developer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args
from urllib.parse import quote

import click
import httpx

from shipyard.analytics.sqlparts import DATE_WINDOWS, PropertyFilter
from shipyard.updates.cli import Api

PREFIX = "/api/v1/projects/{project}/analytics"


def _server_options(fn: Any) -> Any:
    fn = click.option("--key", envvar="SHIPYARD_KEY", help="Project secret key (sk_…); or SHIPYARD_KEY.")(fn)
    fn = click.option("--url", envvar="SHIPYARD_URL", help="Server base URL; or SHIPYARD_URL.")(fn)
    fn = click.option("--project", "-p", required=True, help="Project id or slug.")(fn)
    return fn


def _conn(project: str, url: str | None, key: str | None) -> Api:
    """The `shipyard updates` API client (same URL/key handling and error messages), pointed
    at this project's analytics admin API."""
    api = Api(url, key, project)
    api.client.base_url = api.client.base_url.copy_with(path=PREFIX.format(project=quote(project, safe="")))
    return api


def _range_options(fn: Any) -> Any:
    fn = click.option(
        "--range",
        "date_window",
        type=click.Choice(list(DATE_WINDOWS)),
        help="A rolling window instead of --from/--to (e.g. last_7_days, month_to_date).",
    )(fn)
    fn = click.option("--to", "date_to", help="Last day, YYYY-MM-DD (UTC, inclusive); default today.")(fn)
    fn = click.option("--from", "date_from", help="First day, YYYY-MM-DD (UTC); default 29 days before --to.")(fn)
    return fn


def _output_options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")(fn)
    fn = click.option("--csv", "as_csv", is_flag=True, help="Print the result as CSV (the dashboard's download).")(fn)
    return fn


FILTER_OPS: tuple[str, ...] = get_args(PropertyFilter.model_fields["op"].annotation)
_OP_SYMBOLS = {"=": "eq", "==": "eq", "!=": "neq", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
_SCOPES = ("event", "user", "context")
FILTER_HELP = (
    "'[user:|context:]PROPERTY OP [VALUE]', e.g. 'plan = pro', 'user:plant_count >= 3', "
    "'context:os.name in iOS,Android', 'email is_set' (repeatable; all must hold). "
    f'OP: = != > >= < <= or {", ".join(FILTER_OPS)}. A VALUE reads as JSON when it can (3, true, "007").'
)


def parse_filter(text: str) -> dict[str, Any]:
    """One ``--where`` condition as the API's filter object (the server validates it
    further, e.g. that ``gt`` has a number)."""
    parts = text.split(None, 2)
    if len(parts) < 2:
        raise click.BadParameter(f"{text!r}: expected PROPERTY OP [VALUE]")
    name, op = parts[0], _OP_SYMBOLS.get(parts[1], parts[1])
    if op not in FILTER_OPS:
        raise click.BadParameter(f"{text!r}: unknown operator {parts[1]!r}")
    scope, colon, rest = name.partition(":")
    found: dict[str, Any] = {"property": rest, "scope": scope} if colon and scope in _SCOPES else {"property": name}
    found["op"] = op
    if op in ("is_set", "is_not_set"):
        if len(parts) == 3:
            raise click.BadParameter(f"{text!r}: {op} takes no value")
        return found
    if len(parts) < 3:
        raise click.BadParameter(f"{text!r}: {op} needs a value")
    value = parts[2]
    found["value"] = (
        [_filter_value(v.strip()) for v in value.split(",")] if op in ("in", "not_in") else _filter_value(value)
    )
    return found


def _filter_value(text: str) -> Any:
    """A number, boolean or quoted string as JSON reads it; anything else as typed."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str | int | float | bool) else text


def _filters(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> list[dict[str, Any]]:
    return [parse_filter(v) for v in values]


def _where_option(*names: str, help_prefix: str = "Only events where") -> Any:
    return click.option(*names, multiple=True, callback=_filters, help=f"{help_prefix} {FILTER_HELP}")


def _dates(date_from: str | None, date_to: str | None, date_window: str | None) -> dict[str, str]:
    given = (("date_from", date_from), ("date_to", date_to), ("date_window", date_window))
    return {k: v for k, v in given if v}


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    click.echo(line(headers))
    click.echo(line(["-" * w for w in widths]))
    for row in cells:
        click.echo(line(row))


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _is_number(value: Any) -> bool:
    """Numbers, percentages and gaps line up on the right."""
    if isinstance(value, str):
        return value == "–" or (value.endswith("%") and value[:-1].replace(".", "", 1).isdigit())
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _run_query(api: Api, kind: str, body: dict[str, Any], as_csv: bool, as_json: bool) -> dict[str, Any] | None:
    """Run an insight; prints CSV or JSON itself and returns None then, else the result."""
    if as_csv:
        try:
            response = api.client.post(f"/insights/{kind}", params={"format": "csv"}, json=body)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach the server: {exc}") from None
        if response.status_code >= 400:
            api.call("POST", f"/insights/{kind}", json=body)  # raises with the server's message
        click.echo(response.text, nl=False)
        return None
    result: dict[str, Any] = api.call("POST", f"/insights/{kind}", json=body)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return None
    return result


@click.group("analytics", help="Product analytics: queries, tracking plan, data-subject requests.")
def analytics_group() -> None:
    pass


# --- queries ---------------------------------------------------------------------------------------------


@analytics_group.command("trends")
@_server_options
@click.option("--event", "-e", "events", multiple=True, help="Event to count (repeatable); default every event.")
@click.option(
    "--math",
    type=click.Choice(["total", "unique_users"]),
    default="total",
    show_default=True,
    help="Count events, or the distinct users who sent them.",
)
@click.option(
    "--interval",
    type=click.Choice(["hour", "day", "week", "month"]),
    default="day",
    show_default=True,
    help="Bucket size.",
)
@click.option("--breakdown", help="Split each series by this event property.")
@_where_option("--where", "-w", "where")
@_range_options
@_output_options
def trends_cmd(
    project: str,
    url: str | None,
    key: str | None,
    events: tuple[str, ...],
    math: str,
    interval: str,
    breakdown: str | None,
    where: list[dict[str, Any]],
    date_from: str | None,
    date_to: str | None,
    date_window: str | None,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Event counts (or unique users) per interval, one column per series."""
    body: dict[str, Any] = {
        **_dates(date_from, date_to, date_window),
        "interval": interval,
        "series": [{"event": e, "math": math} for e in (events or ("$any_event",))],
        "filters": where,
    }
    if breakdown:
        body["breakdown"] = {"property": breakdown}
    result = _run_query(_conn(project, url, key), "trends", body, as_csv, as_json)
    if result is None:
        return
    series = result["series"]
    rows = [[bucket, *(s["data"][i] for s in series)] for i, bucket in enumerate(result["buckets"])]
    rows.append(["total", *(s["total"] for s in series)])
    print_table([result["interval"], *(s["label"] for s in series)], rows)


@analytics_group.command("funnel")
@_server_options
@click.option("--step", "-s", "steps", multiple=True, required=True, help="Event of a step, in order (repeatable).")
@click.option(
    "--window", "window_value", type=click.IntRange(1), default=14, show_default=True, help="Conversion window."
)
@click.option(
    "--window-unit",
    type=click.Choice(["minute", "hour", "day", "week"]),
    default="day",
    show_default=True,
    help="Unit of --window.",
)
@_where_option("--where", "-w", "where", help_prefix="Only events (of every step) where")
@_range_options
@_output_options
def funnel_cmd(
    project: str,
    url: str | None,
    key: str | None,
    steps: tuple[str, ...],
    window_value: int,
    window_unit: str,
    where: list[dict[str, Any]],
    date_from: str | None,
    date_to: str | None,
    date_window: str | None,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Users who did the steps in order within the window: per-step conversion and drop-off."""
    body = {
        **_dates(date_from, date_to, date_window),
        "steps": [{"event": s} for s in steps],
        "window_value": window_value,
        "window_unit": window_unit,
        "filters": where,
    }
    result = _run_query(_conn(project, url, key), "funnel", body, as_csv, as_json)
    if result is None:
        return
    rows = [
        [
            s["step"],
            s["label"],
            s["count"],
            _pct(s["conversion_from_first"]),
            _pct(s["conversion_from_previous"]),
            s["dropped_from_previous"],
            s["median_seconds_from_previous"],
        ]
        for s in result["steps"]
    ]
    print_table(["step", "event", "users", "from first", "from previous", "dropped", "median s"], rows)
    click.echo(f"conversion {_pct(result['conversion_rate'])}")


@analytics_group.command("retention")
@_server_options
@click.option("--start-event", default="$any_event", show_default=True, help="Event that puts a user in a cohort.")
@click.option("--return-event", default="$any_event", show_default=True, help="Event that counts as coming back.")
@click.option(
    "--interval",
    type=click.Choice(["day", "week", "month"]),
    default="week",
    show_default=True,
    help="Cohort and period size.",
)
@click.option("--periods", type=click.IntRange(1, 90), default=8, show_default=True, help="Periods after the first.")
@click.option(
    "--criterion",
    type=click.Choice(["on", "on_or_after"]),
    default="on",
    show_default=True,
    help="Returned in that period, or in it or any later one.",
)
@_where_option("--start-where", "start_where", help_prefix="Only start events where")
@_where_option("--return-where", "return_where", help_prefix="Only return events where")
@_range_options
@_output_options
def retention_cmd(
    project: str,
    url: str | None,
    key: str | None,
    start_event: str,
    return_event: str,
    interval: str,
    periods: int,
    criterion: str,
    start_where: list[dict[str, Any]],
    return_where: list[dict[str, Any]],
    date_from: str | None,
    date_to: str | None,
    date_window: str | None,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Cohorts by first occurrence of the start event, and the share returning in each period."""
    body = {
        **_dates(date_from, date_to, date_window),
        "start_event": start_event,
        "return_event": return_event,
        "interval": interval,
        "periods": periods,
        "criterion": criterion,
        "start_filters": start_where,
        "return_filters": return_where,
    }
    result = _run_query(_conn(project, url, key), "retention", body, as_csv, as_json)
    if result is None:
        return
    headers = ["cohort", "users", *(f"{result['interval']} {p}" for p in range(result["periods"] + 1))]
    for group in result["groups"]:
        if group["breakdown_value"] is not None:
            click.echo(f"{group['breakdown_value']}:")
        rows = [[c["cohort"], c["size"], *(_pct(p["rate"]) for p in c["periods"])] for c in group["cohorts"]]
        print_table(headers, rows)


# --- tracking plan ----------------------------------------------------------------------------------------

SCHEMA_FIELDS = ("event", "description", "feature_area", "properties", "allow_additional")


@analytics_group.group("plan", help="Export and import the tracking plan as JSON.")
def plan_group() -> None:
    pass


def _all_schemas(api: Api) -> list[dict[str, Any]]:
    schemas: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = api.call("GET", "/tracking-plan", params=params)
        schemas += page["data"]
        cursor = page.get("next_cursor")
        if not cursor:
            return schemas


@plan_group.command("export")
@_server_options
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead of stdout."
)
def plan_export(project: str, url: str | None, key: str | None, output: Path | None) -> None:
    """The plan's event schemas as JSON ({"events": [...]}), ready for `plan import`."""
    schemas = [{k: s[k] for k in SCHEMA_FIELDS} for s in _all_schemas(_conn(project, url, key))]
    text = json.dumps({"events": schemas}, indent=2, ensure_ascii=False) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"{len(schemas)} event schemas written to {output}", err=True)
    else:
        click.echo(text, nl=False)


def _read_plan(source: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read {source}: {exc}") from None
    schemas = data.get("events") if isinstance(data, dict) else data
    if not isinstance(schemas, list) or not all(isinstance(s, dict) and s.get("event") for s in schemas):
        raise click.ClickException(f'{source}: expected {{"events": [{{"event": "…", …}}, …]}} as `plan export` writes')
    return schemas


@plan_group.command("import")
@_server_options
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Also delete schemas of events that are not in SOURCE.")
@click.option("--dry-run", is_flag=True, help="Say what would change without changing anything.")
def plan_import(project: str, url: str | None, key: str | None, source: Path, replace: bool, dry_run: bool) -> None:
    """Create or replace the event schemas in SOURCE (a `plan export` file)."""
    schemas = _read_plan(source)
    api = _conn(project, url, key)
    existing = {s["event"]: s for s in _all_schemas(api)}
    created = updated = unchanged = 0
    for schema in schemas:
        event = schema["event"]
        body = {k: schema[k] for k in SCHEMA_FIELDS[1:] if k in schema}
        current = existing.get(event)
        if current is not None and all(current.get(k) == v for k, v in body.items()):
            unchanged += 1
            continue
        if current is None:
            created += 1
        else:
            updated += 1
        click.echo(f"{'create' if current is None else 'update'} {event}")
        if not dry_run:
            api.call("PUT", f"/tracking-plan/events/{quote(event, safe='')}", json=body)
    removed = sorted(set(existing) - {s["event"] for s in schemas}) if replace else []
    for event in removed:
        click.echo(f"delete {event}")
        if not dry_run:
            api.call("DELETE", f"/tracking-plan/events/{quote(event, safe='')}")
    prefix = "would change: " if dry_run else ""
    click.echo(f"{prefix}{created} created, {updated} updated, {len(removed)} deleted, {unchanged} unchanged")


# --- data-subject requests -------------------------------------------------------------------------------


@analytics_group.group("events", help="A user's events and profile: export or erase (data-subject requests).")
def events_group() -> None:
    pass


@events_group.command("export")
@_server_options
@click.option("--user", "user_id", required=True, help="User id or anonymous id (its aliases are included).")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead of stdout."
)
def events_export(project: str, url: str | None, key: str | None, user_id: str, output: Path | None) -> None:
    """Everything analytics stores about a user, as JSON (needs an admin key; audited)."""
    exported = _conn(project, url, key).call("GET", "/users/export", params={"user_id": user_id})
    text = json.dumps(exported, indent=2, ensure_ascii=False) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"{len(exported.get('events', []))} events of {exported['user_key']} written to {output}", err=True)
    else:
        click.echo(text, nl=False)


@events_group.command("erase")
@_server_options
@click.option("--user", "user_id", required=True, help="User id or anonymous id (its aliases are erased too).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def events_erase(project: str, url: str | None, key: str | None, user_id: str, yes: bool) -> None:
    """Erase everything analytics stores about a user (needs an admin key; audited)."""
    if not yes:
        click.confirm(f"Erase every analytics record of {user_id!r} in project {project}?", abort=True)
    erased = _conn(project, url, key).call("DELETE", "/users", params={"user_id": user_id})
    click.echo(f"erased {erased['rows_erased']} rows of {erased['user_key']}")
