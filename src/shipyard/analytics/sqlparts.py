"""Building blocks shared by every analytics query: date ranges and interval buckets,
property filters and breakdowns over JSON, on SQLite and PostgreSQL.

Times are epoch milliseconds; days are ``ts_ms // 86400000`` (UTC). Hour, day and week
buckets are integer arithmetic and render identically on both engines; month buckets
are a ``CASE`` over the month boundaries of the range. JSON access differs per engine
(``json_extract`` / ``json_type`` on SQLite, ``->>`` / ``jsonb_typeof`` on PostgreSQL),
so each filter is built for the connection's dialect — and numeric comparisons check
the JSON type first, because PostgreSQL raises on ``'abc'::float`` where SQLite says 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    true,
)
from sqlalchemy.sql.elements import ColumnElement

from shipyard.analytics.models import events, users
from shipyard.analytics.segment import DAY_MS
from shipyard.core.errors import BadRequest

HOUR_MS = 3_600_000
ANY_EVENT = "$any_event"
# Bookkeeping calls are stored as events but are not user actions.
NON_ACTIONS = ("$identify", "$alias", "$group")
EPOCH = date(1970, 1, 1)
_PROPERTY_NAME = re.compile(r"^[^\"\\\x00-\x1f]{1,200}$")

Interval = Literal["hour", "day", "week", "month"]


def _check_name(value: str) -> str:
    if not _PROPERTY_NAME.match(value):
        raise ValueError("property names cannot contain quotes, backslashes or control characters")
    return value


class PropertyFilter(BaseModel):
    """A condition on an event property, a user trait, or a context field (``os.name``)."""

    property: str = Field(min_length=1, max_length=200)
    scope: Literal["event", "user", "context"] = "event"
    op: Literal[
        "eq", "neq", "gt", "gte", "lt", "lte", "contains", "not_contains", "is_set", "is_not_set", "in", "not_in"
    ] = "eq"
    value: Any = None

    @field_validator("property")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return _check_name(value)

    @model_validator(mode="after")
    def _value_fits_op(self) -> PropertyFilter:
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"{self.op} needs a non-empty list value")
        elif self.op in ("gt", "gte", "lt", "lte"):
            if isinstance(self.value, bool) or not isinstance(self.value, int | float | str):
                raise ValueError(f"{self.op} needs a number (or an ISO date string)")
        elif self.op in ("contains", "not_contains"):
            if not isinstance(self.value, str):
                raise ValueError(f"{self.op} needs a string value")
        elif self.op in ("eq", "neq") and not isinstance(self.value, str | int | float | bool):
            raise ValueError(f"{self.op} needs a string, number or boolean value")
        return self


class Breakdown(BaseModel):
    property: str = Field(min_length=1, max_length=200)
    scope: Literal["event", "user", "context"] = "event"
    limit: int = Field(25, ge=1, le=100)

    @field_validator("property")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return _check_name(value)


# Rolling windows a query can name instead of fixed dates, resolved against the current UTC
# day each time the query runs (so a saved insight always shows the latest window).
DateWindow = Literal[
    "last_7_days", "last_14_days", "last_30_days", "last_90_days", "last_12_months", "month_to_date", "year_to_date"
]
DATE_WINDOWS: dict[str, str] = {
    "last_7_days": "last 7 days",
    "last_14_days": "last 14 days",
    "last_30_days": "last 30 days",
    "last_90_days": "last 90 days",
    "last_12_months": "last 12 months",
    "month_to_date": "month to date",
    "year_to_date": "year to date",
}
_WINDOW_DAYS = {"last_7_days": 7, "last_14_days": 14, "last_30_days": 30, "last_90_days": 90}


def window_dates(window: str, today: date) -> tuple[date, date]:
    """(first day, last day) of a rolling window ending ``today`` (inclusive)."""
    if window in _WINDOW_DAYS:
        return today - timedelta(days=_WINDOW_DAYS[window] - 1), today
    if window == "month_to_date":
        return today.replace(day=1), today
    if window == "year_to_date":
        return today.replace(month=1, day=1), today
    if window == "last_12_months":
        # The day after the same date a year earlier: a whole year of days.
        try:
            year_ago = today.replace(year=today.year - 1)
        except ValueError:  # 29 February
            year_ago = today.replace(year=today.year - 1, day=28)
        return year_ago + timedelta(days=1), today
    raise BadRequest(f"unknown date_window {window!r}; one of {', '.join(DATE_WINDOWS)}")


class DateRange(BaseModel):
    date_window: DateWindow | None = Field(
        None,
        description="A rolling window resolved each time the query runs, instead of date_from/date_to: "
        + ", ".join(DATE_WINDOWS)
        + ".",
    )
    date_from: date | None = Field(None, description="First day (UTC), default 29 days before date_to.")
    date_to: date | None = Field(None, description="Last day (UTC, inclusive), default today.")

    def dates(self, today: date | None = None) -> tuple[date, date]:
        """(first day, last day) this range covers when run on ``today`` (default: now, UTC)."""
        today = today or datetime.now(UTC).date()
        if self.date_window is not None:
            if self.date_from is not None or self.date_to is not None:
                raise BadRequest("give either date_window or date_from/date_to, not both")
            return window_dates(self.date_window, today)
        end = self.date_to or today
        start = self.date_from or end - timedelta(days=29)
        if start > end:
            raise BadRequest("date_from is after date_to")
        if (end - start).days > 3 * 366:
            raise BadRequest("the date range can span at most three years")
        return start, end

    def days(self, today: date | None = None) -> tuple[int, int]:
        """(first day, last day) as day numbers."""
        start, end = self.dates(today)
        return day_number(start), day_number(end)


def day_number(value: date) -> int:
    return (value - EPOCH).days


def day_date(day: int) -> date:
    return EPOCH + timedelta(days=day)


def month_key(day: int) -> int:
    d = day_date(day)
    return d.year * 12 + d.month - 1


def month_start_day(key: int) -> int:
    return day_number(date(key // 12, key % 12 + 1, 1))


# --- buckets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Buckets:
    """The interval buckets covering days ``first_day``..``last_day`` (inclusive)."""

    interval: str
    first_day: int
    last_day: int

    def __post_init__(self) -> None:
        if self.interval == "hour" and self.last_day - self.first_day > 62:
            raise BadRequest("hourly intervals are limited to 62 days; use day or week")

    @property
    def keys(self) -> list[int]:
        return list(range(self.key_of_day(self.first_day), self.key_of_day(self.last_day, end=True) + 1))

    def key_of_day(self, day: int, *, end: bool = False) -> int:
        if self.interval == "hour":
            return day * 24 + (23 if end else 0)
        if self.interval == "day":
            return day
        if self.interval == "week":
            return (day + 3) // 7  # Monday-based weeks (1970-01-01 was a Thursday)
        return month_key(day)

    def key_of_ts(self, ts_ms: int) -> int:
        if self.interval == "hour":
            return ts_ms // HOUR_MS
        return self.key_of_day(ts_ms // DAY_MS)

    def start_day(self, key: int) -> int:
        if self.interval == "hour":
            return key // 24
        if self.interval == "day":
            return key
        if self.interval == "week":
            return key * 7 - 3
        return month_start_day(key)

    def label(self, key: int) -> str:
        if self.interval == "hour":
            return datetime.fromtimestamp(key * 3600, UTC).strftime("%Y-%m-%dT%H:00Z")
        return day_date(self.start_day(key)).isoformat()

    def ts_expr(self, ts: Any) -> ColumnElement[Any]:
        """SQL bucket key of an epoch-milliseconds column."""
        if self.interval == "hour":
            return ts // const(HOUR_MS)
        return self.day_expr(day_of(ts))

    def day_expr(self, day: Any) -> ColumnElement[Any]:
        """SQL bucket key of a day-number expression."""
        if self.interval in ("day", "hour"):
            return day if self.interval == "day" else day * const(24)
        if self.interval == "week":
            return (day + const(3)) // const(7)
        keys = range(month_key(self.first_day) - 1, month_key(self.last_day) + 2)
        whens = [(day < const(month_start_day(k + 1)), const(k)) for k in keys]
        return case(*whens, else_=const(keys[-1] + 1))


def const(value: int) -> ColumnElement[Any]:
    """An integer rendered inline: PostgreSQL only matches a GROUP BY expression to the
    selected one when they are textually identical, which bound parameters are not."""
    return literal_column(str(int(value)), BigInteger)


def day_of(ts: Any) -> ColumnElement[Any]:
    return ts // const(DAY_MS)


def ts_range(first_day: int, last_day: int) -> tuple[int, int]:
    """[start, end) in epoch milliseconds for whole UTC days."""
    return first_day * DAY_MS, (last_day + 1) * DAY_MS


# --- JSON properties -------------------------------------------------------------------------------


class JsonField:
    """One property of a JSON column, rendered for the given dialect."""

    def __init__(self, column: Any, keys: tuple[str, ...], dialect: str) -> None:
        self.column = column
        self.keys = keys
        self.dialect = dialect
        self.path = "$" + "".join(f'."{k}"' for k in keys)

    def _pg(self) -> Any:
        return self.column[self.keys if len(self.keys) > 1 else self.keys[0]]

    def text(self) -> ColumnElement[Any]:
        """The value as text (strings unquoted; true/false for booleans)."""
        if self.dialect == "postgresql":
            return self._pg().as_string()
        kind = func.json_type(self.column, self.path)
        value = func.json_extract(self.column, self.path)
        return case((kind == "true", "true"), (kind == "false", "false"), else_=cast(value, String))

    def raw_text(self) -> ColumnElement[Any]:
        """Cheaper than :meth:`text` for string comparisons (numbers stay numbers on SQLite)."""
        if self.dialect == "postgresql":
            return self._pg().as_string()
        return func.json_extract(self.column, self.path)

    def json_type(self) -> ColumnElement[Any]:
        if self.dialect == "postgresql":
            return func.jsonb_typeof(self._pg())
        return func.json_type(self.column, self.path)

    def number(self) -> ColumnElement[Any]:
        """The value when it is a JSON number, else NULL (never an error)."""
        if self.dialect == "postgresql":
            return case((self.json_type() == "number", self._pg().as_float()))
        return case((self.json_type().in_(("integer", "real")), func.json_extract(self.column, self.path)))

    def is_set(self) -> ColumnElement[bool]:
        return and_(self.json_type().is_not(None), self.json_type() != "null")

    def is_boolean(self, value: bool) -> ColumnElement[bool]:
        return (
            self.json_type() == ("true" if value else "false")
            if self.dialect == "sqlite"
            else and_(self.json_type() == "boolean", self._pg().as_string() == ("true" if value else "false"))
        )


def json_field(scope: str, name: str, dialect: str) -> JsonField:
    if scope == "user":
        return JsonField(users.c.traits, (name,), dialect)
    if scope == "context":
        return JsonField(events.c.context, tuple(name.split(".")), dialect)
    return JsonField(events.c.properties, (name,), dialect)


def filter_clause(f: PropertyFilter, dialect: str) -> ColumnElement[bool]:
    field = json_field(f.scope, f.property, dialect)
    value = f.value
    if f.op == "is_set":
        return field.is_set()
    if f.op == "is_not_set":
        return not_(field.is_set())
    if f.op in ("eq", "neq"):
        if isinstance(value, bool):
            matched = field.is_boolean(value)
        elif isinstance(value, int | float):
            matched = field.number() == value
        else:
            matched = field.raw_text() == value
        return matched if f.op == "eq" else or_(not_(matched), not_(field.is_set()))
    if f.op in ("gt", "gte", "lt", "lte"):
        target = field.number() if isinstance(value, int | float) else field.raw_text()
        return {"gt": target > value, "gte": target >= value, "lt": target < value, "lte": target <= value}[f.op]
    if f.op in ("contains", "not_contains"):
        matched = field.raw_text().icontains(value, autoescape=True)
        return matched if f.op == "contains" else or_(not_(matched), not_(field.is_set()))
    values = [str(v) for v in value]
    matched = field.text().in_(values)
    return matched if f.op == "in" else or_(not_(matched), not_(field.is_set()))


def filters_clause(filters: list[PropertyFilter], dialect: str) -> ColumnElement[bool]:
    return and_(true(), *(filter_clause(f, dialect) for f in filters))


def needs_users(filters: list[PropertyFilter], breakdown: Breakdown | None = None) -> bool:
    return any(f.scope == "user" for f in filters) or (breakdown is not None and breakdown.scope == "user")


def events_from(with_users: bool) -> Any:
    """The FROM clause: events, joined to users when a user trait is filtered or broken down."""
    if not with_users:
        return events
    return events.outerjoin(
        users, and_(users.c.project_id == events.c.project_id, users.c.user_key == events.c.user_key)
    )


def event_clause(event: str, screen: str | None = None) -> ColumnElement[bool]:
    if event == ANY_EVENT:
        clause: ColumnElement[bool] = events.c.event.not_in(NON_ACTIONS)
    else:
        clause = events.c.event == event
    if screen is not None:
        clause = and_(clause, events.c.screen == screen)
    return clause


def breakdown_expr(breakdown: Breakdown, dialect: str) -> ColumnElement[Any]:
    return json_field(breakdown.scope, breakdown.property, dialect).text()


def breakdown_label(value: Any) -> str:
    return "(none)" if value is None else str(value)


def never() -> ColumnElement[bool]:
    return false()


def int_literal(value: int) -> ColumnElement[Any]:
    return literal(value, Integer)
