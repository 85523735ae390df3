"""The dashboard's query forms and the insight queries they stand for, both ways.

A form is a flat set of URL parameters (so a result is a shareable link and its CSV link
is the same URL with ``format=csv``); a query is the JSON the insight API takes. Property
filters are numbered rows: ``f0_prop``, ``f0_scope``, ``f0_op``, ``f0_value`` for the
query's ``filters`` (retention has ``sf…`` for its start event and ``rf…`` for its return
event). :func:`page_params` turns a stored query back into the form, so a saved insight
opens in its editor; it answers None only for what the forms cannot show (per-series or
per-step filters, screens, labels), which stay API-only.

A filter value typed in a form is text; it is read the way a user means it: ``42`` and
``4.5`` are numbers, ``true``/``false`` booleans (for equals / not equals), anything else
text, and a value in double quotes is always text (``"42"`` matches the string "42").
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from shipyard.analytics import insights
from shipyard.analytics.sqlparts import DATE_WINDOWS, DateRange, PropertyFilter
from shipyard.core.errors import ApiError, BadRequest

OPERATORS: dict[str, str] = {
    "eq": "equals",
    "neq": "does not equal",
    "contains": "contains",
    "not_contains": "does not contain",
    "gt": "greater than",
    "gte": "at least",
    "lt": "less than",
    "lte": "at most",
    "is_set": "is set",
    "is_not_set": "is not set",
    "in": "is one of",
    "not_in": "is none of",
}
SCOPES: dict[str, str] = {"event": "event property", "user": "user trait", "context": "device context"}
NO_VALUE = ("is_set", "is_not_set")
MAX_FILTERS = 20
CUSTOM = "custom"
DEFAULT_WINDOW = "last_30_days"
DEFAULT_BREAKDOWN_LIMIT = 25
# Which filter lists each page's form edits: (URL prefix, query field, heading).
FILTER_GROUPS: dict[str, list[tuple[str, str, str]]] = {
    "trends": [("f", "filters", "Filters")],
    "funnel": [("f", "filters", "Filters (every step)")],
    "retention": [("sf", "start_filters", "Start event filters"), ("rf", "return_filters", "Return event filters")],
}
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$")


# --- filters -------------------------------------------------------------------------------------------


def _typed_value(op: str, text: str) -> Any:
    """The JSON value a form's text stands for, under the given operator."""
    text = text.strip()
    if op in ("in", "not_in"):
        return [v.strip() for v in text.split(",") if v.strip()]
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    if op in ("contains", "not_contains"):
        return text
    if op in ("eq", "neq") and text in ("true", "false"):
        return text == "true"
    if _NUMBER.match(text):
        return float(text) if "." in text else int(text)
    return text


def value_text(op: str, value: Any) -> str:
    """The form's text for a stored value; reading it back gives the same value."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    return text if _typed_value(op, text) == text and text == text.strip() else f'"{text}"'


def _row_indexes(params: dict[str, str], prefix: str) -> list[int]:
    pattern = re.compile(rf"^{prefix}([0-9]{{1,3}})_(prop|value)$")
    return sorted({int(m.group(1)) for key in params if (m := pattern.match(key))})


def filters_from_params(params: dict[str, str], prefix: str) -> list[dict[str, Any]]:
    """The filter rows of a form; blank rows (the one offered for a new filter) are skipped.

    Raises BadRequest naming the row and what is wrong with it."""
    filters: list[dict[str, Any]] = []
    for position, i in enumerate(_row_indexes(params, prefix), start=1):
        prop = (params.get(f"{prefix}{i}_prop") or "").strip()
        op = params.get(f"{prefix}{i}_op") or "eq"
        scope = params.get(f"{prefix}{i}_scope") or "event"
        text = params.get(f"{prefix}{i}_value") or ""
        if not prop and not text.strip():
            continue
        where = f"filter {position}" + (f" ({prop})" if prop else "")
        if not prop:
            raise BadRequest(f"{where}: choose the property to filter on")
        if op not in OPERATORS:
            raise BadRequest(f"{where}: unknown operator {op[:40]!r}; one of {', '.join(OPERATORS)}")
        if scope not in SCOPES:
            raise BadRequest(f"{where}: unknown scope {scope[:40]!r}; one of {', '.join(SCOPES)}")
        value = None if op in NO_VALUE else _typed_value(op, text)
        if op not in NO_VALUE and value in ("", []):
            raise BadRequest(f"{where}: {OPERATORS[op]} needs a value")
        try:
            checked = PropertyFilter.model_validate({"property": prop, "scope": scope, "op": op, "value": value})
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            raise BadRequest(f"{where}: {problem}") from None
        filters.append(checked.model_dump(mode="json"))
        if len(filters) > MAX_FILTERS:
            raise BadRequest(f"at most {MAX_FILTERS} filters")
    return filters


def filter_rows(params: dict[str, str], prefix: str) -> list[dict[str, str]]:
    """The rows a form shows: what was submitted (valid or not, to be corrected) plus one blank."""
    rows = [
        {
            "prop": params.get(f"{prefix}{i}_prop") or "",
            "scope": params.get(f"{prefix}{i}_scope") or "event",
            "op": params.get(f"{prefix}{i}_op") or "eq",
            "value": params.get(f"{prefix}{i}_value") or "",
        }
        for i in _row_indexes(params, prefix)
    ]
    rows = [r for r in rows if r["prop"].strip() or r["value"].strip()]
    return [*rows, {"prop": "", "scope": "event", "op": "eq", "value": ""}]


def filters_to_params(filters: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, f in enumerate(filters):
        op = f.get("op") or "eq"
        out[f"{prefix}{i}_prop"] = str(f["property"])
        out[f"{prefix}{i}_scope"] = f.get("scope") or "event"
        out[f"{prefix}{i}_op"] = op
        out[f"{prefix}{i}_value"] = value_text(op, f.get("value"))
    return out


# --- date range ----------------------------------------------------------------------------------------


def range_from_params(params: dict[str, str]) -> dict[str, Any]:
    """The query's dates: a rolling window, or fixed dates when the form says "custom" (or
    gives dates without a window, as links made before windows existed do)."""
    window = params.get("date_window") or ""
    dates = {k: params[k] for k in ("date_from", "date_to") if params.get(k)}
    if window == CUSTOM or (not window and dates):
        return dates
    if window and window not in DATE_WINDOWS:
        raise BadRequest(f"unknown date range {window[:40]!r}; one of {', '.join([*DATE_WINDOWS, CUSTOM])}")
    return {"date_window": window or DEFAULT_WINDOW}


def range_to_params(query: dict[str, Any]) -> dict[str, str]:
    if query.get("date_window"):
        return {"date_window": str(query["date_window"])}
    dates = {k: str(query[k]) for k in ("date_from", "date_to") if query.get(k)}
    # A stored query without any dates always covered the 30 days up to the day it ran.
    return {"date_window": CUSTOM, **dates} if dates else {"date_window": DEFAULT_WINDOW}


def range_label(query: dict[str, Any]) -> str:
    """How a stored query's dates read: "last 7 days (2026-11-28 to 2026-12-04)" or fixed dates."""
    try:
        start, end = DateRange.model_validate(query).dates()
    except (ValidationError, BadRequest):
        return "an invalid date range"
    window = query.get("date_window") or ("" if query.get("date_from") or query.get("date_to") else DEFAULT_WINDOW)
    if window:
        return f"the {DATE_WINDOWS[window]} ({start.isoformat()} to {end.isoformat()}, rolling)"
    return f"{start.isoformat()} to {end.isoformat()}"


def shown_dates(query: dict[str, Any]) -> dict[str, str]:
    """The dates a form's date inputs show: the ones a rolling window resolves to today."""
    try:
        start, end = DateRange.model_validate(query).dates()
    except (ValidationError, BadRequest):
        return {}
    return {"date_from": start.isoformat(), "date_to": end.isoformat()}


# --- breakdown -----------------------------------------------------------------------------------------


def breakdown_from_params(params: dict[str, str]) -> dict[str, Any] | None:
    prop = (params.get("breakdown") or "").strip()
    if not prop:
        return None
    scope = params.get("breakdown_scope") or "event"
    if scope not in SCOPES:
        raise BadRequest(f"unknown breakdown scope {scope[:40]!r}; one of {', '.join(SCOPES)}")
    return {"property": prop, "scope": scope}


def breakdown_to_params(breakdown: dict[str, Any] | None) -> dict[str, str] | None:
    """None when the form cannot show it (a non-default group limit)."""
    if not breakdown:
        return {}
    if breakdown.get("limit", DEFAULT_BREAKDOWN_LIMIT) != DEFAULT_BREAKDOWN_LIMIT:
        return None
    return {"breakdown": str(breakdown["property"]), "breakdown_scope": breakdown.get("scope") or "event"}


# --- the three pages -------------------------------------------------------------------------------------


def _events_list(text: str | None, default: str = "") -> list[str]:
    return [e.strip() for e in (text or default).split(",") if e.strip()]


def trends_query(p: dict[str, str]) -> dict[str, Any]:
    query: dict[str, Any] = {
        **range_from_params(p),
        "interval": p.get("interval") or "day",
        "series": [{"event": e, "math": p.get("math") or "total"} for e in _events_list(p.get("events"), "$any_event")],
        "filters": filters_from_params(p, "f"),
    }
    breakdown = breakdown_from_params(p)
    if breakdown:
        query["breakdown"] = breakdown
    return query


def funnel_query(p: dict[str, str]) -> dict[str, Any]:
    query: dict[str, Any] = {
        **range_from_params(p),
        "steps": [{"event": e} for e in _events_list(p.get("steps"))],
        "window_value": p.get("window_value") or 14,
        "window_unit": p.get("window_unit") or "day",
        "filters": filters_from_params(p, "f"),
    }
    breakdown = breakdown_from_params(p)
    if breakdown:
        query["breakdown"] = breakdown
    return query


def retention_query(p: dict[str, str]) -> dict[str, Any]:
    query: dict[str, Any] = {
        **range_from_params(p),
        "start_event": p.get("start_event") or "$any_event",
        "return_event": p.get("return_event") or "$any_event",
        "interval": p.get("interval") or "week",
        "periods": p.get("periods") or 8,
        "criterion": p.get("criterion") or "on",
        "cohort_type": p.get("cohort_type") or "first_time",
        "start_filters": filters_from_params(p, "sf"),
        "return_filters": filters_from_params(p, "rf"),
    }
    breakdown = breakdown_from_params(p)
    if breakdown:
        query["breakdown"] = breakdown
    return query


PAGES = {"trends": trends_query, "funnel": funnel_query, "retention": retention_query}


def _plain(items: list[dict[str, Any]], name_key: str) -> bool:
    """Whether series or steps carry nothing but what the form shows."""
    return all(not i.get("filters") and not i.get("screen") and not i.get("label") and i.get(name_key) for i in items)


def page_params(kind: str, query: dict[str, Any]) -> dict[str, str] | None:
    """The page form's fields for a stored query, so a saved insight opens in its editor.

    None when the page's form cannot express the query: another kind, or what only the
    API sets (per-series or per-step filters, screens, labels, a breakdown's group limit)."""
    if kind not in PAGES:
        return None
    try:
        # With every default filled in: a query saved through the API may leave fields out.
        query = insights.parse_query(kind, query).model_dump(mode="json")
    except ApiError:
        return None
    breakdown = breakdown_to_params(query.get("breakdown"))
    if breakdown is None:
        return None
    common = {**range_to_params(query), **breakdown}
    if kind == "trends":
        series = query.get("series") or []
        maths = {s.get("math") or "total" for s in series}
        if not series or len(maths) > 1 or not _plain(series, "event"):
            return None
        out = {"events": ", ".join(s["event"] for s in series), "math": maths.pop(), "interval": query["interval"]}
        return {**out, **filters_to_params(query.get("filters") or [], "f"), **common}
    if kind == "funnel":
        steps = query.get("steps") or []
        if not _plain(steps, "event"):
            return None
        out = {
            "steps": ", ".join(s["event"] for s in steps),
            "window_value": str(query["window_value"]),
            "window_unit": query["window_unit"],
        }
        return {**out, **filters_to_params(query.get("filters") or [], "f"), **common}
    keys = ("start_event", "return_event", "interval", "periods", "criterion", "cohort_type")
    out = {k: str(query[k]) for k in keys if query.get(k) is not None}
    filters = {
        **filters_to_params(query.get("start_filters") or [], "sf"),
        **filters_to_params(query.get("return_filters") or [], "rf"),
    }
    return {**out, **filters, **common}


def describe_filters(query: dict[str, Any]) -> list[str]:
    """Each filter of a stored query as a line a person reads: "start event: plan equals pro"."""
    lists = [("", "filters"), ("start event: ", "start_filters"), ("return event: ", "return_filters")]
    lines = []
    for heading, key in lists:
        for f in query.get(key) or []:
            op = f.get("op") or "eq"
            scope = SCOPES.get(f.get("scope") or "event", "")
            value = "" if op in NO_VALUE else " " + value_text(op, f.get("value"))
            lines.append(f"{heading}{f['property']} ({scope}) {OPERATORS.get(op, op)}{value}")
    return lines
