"""Time arithmetic in users' own timezones: quiet hours, local-time schedules, recurrences.

All instants are aware UTC datetimes; wall-clock times are interpreted with :mod:`zoneinfo`.
Two DST rules apply everywhere:

* a wall-clock time that does not exist (the spring-forward gap) is moved forward by the
  gap, so 02:30 on that night means 03:30 — the notification is late, never skipped;
* a wall-clock time that exists twice (the fall-back hour) means its first occurrence,
  unless that instant has already passed, in which case the second one.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# The timezone whose wall clock is furthest ahead (Kiribati, UTC+14): a local date's
# HH:MM happens there first, so a per-user schedule starts its fan-out then.
EARLIEST_ZONE = ZoneInfo("Etc/GMT-14")


class TimingError(ValueError):
    """A bad time, timezone or schedule in a request."""


def parse_hhmm(value: str) -> time:
    match = _HHMM.match(value or "")
    if not match:
        raise TimingError(f"expected a 24-hour time HH:MM, got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    """The named IANA timezone; unknown or empty names fall back to ``default``."""
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default)


def check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimingError(f"unknown IANA timezone {name!r} (e.g. Europe/Berlin)") from None
    return name


def local_to_utc(day: date, at: time, tz: ZoneInfo, *, not_before: datetime | None = None) -> datetime:
    """The UTC instant of wall-clock ``day at`` in ``tz`` (gap → shifted forward, fold → first,
    or the second one when the first is before ``not_before``)."""
    candidates = []
    for fold in (0, 1):
        local = datetime.combine(day, at, tzinfo=tz).replace(fold=fold)
        instant = local.astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
            # Nonexistent wall time: astimezone normalised it; use the post-gap reading of the
            # same clock reading (fold=0 uses the pre-gap offset, which lands after the gap).
            instant = datetime.combine(day, at, tzinfo=tz).replace(fold=0).astimezone(UTC)
        candidates.append(instant)
    first, second = min(candidates), max(candidates)
    if not_before is not None and first < not_before <= second:
        return second
    return first


def quiet_until(now: datetime, start: str | None, end: str | None, tz: ZoneInfo) -> datetime | None:
    """When ``now`` falls within the quiet hours [start, end) in ``tz``, the instant they end;
    otherwise None. ``start > end`` spans midnight (22:00–07:00); ``start == end`` is no window."""
    if not start or not end:
        return None
    s, e = parse_hhmm(start), parse_hhmm(end)
    if s == e:
        return None
    local = now.astimezone(tz)
    clock = local.time().replace(tzinfo=None)
    today = local.date()
    if s < e:
        quiet = s <= clock < e
        end_day = today
    else:
        quiet = clock >= s or clock < e
        end_day = today + timedelta(days=1) if clock >= s else today
    if not quiet:
        return None
    until = local_to_utc(end_day, e, tz, not_before=now + timedelta(microseconds=1))
    if until <= now:  # the end's wall time was skipped or repeated around now
        return None
    return until


def local_day_start(now: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant the local calendar day containing ``now`` began (for daily caps)."""
    local = now.astimezone(tz)
    return local_to_utc(local.date(), time(0, 0), tz)


# --- schedules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Recurrence:
    frequency: str  # daily | weekly | monthly
    at: time
    days_of_week: tuple[int, ...] = ()  # 0 = Monday … 6 = Sunday (weekly)
    day_of_month: int = 1  # monthly; months without that day use their last day
    end_date: date | None = None  # inclusive, local

    def matches(self, day: date) -> bool:
        if self.end_date is not None and day > self.end_date:
            return False
        if self.frequency == "daily":
            return True
        if self.frequency == "weekly":
            return day.weekday() in self.days_of_week
        last = calendar.monthrange(day.year, day.month)[1]
        return day.day == min(self.day_of_month, last)

    def next_date(self, after: date) -> date | None:
        """The first local date strictly after ``after`` with an occurrence (None past the end)."""
        day = after + timedelta(days=1)
        for _ in range(400):  # a monthly rule matches within 31 days; 400 is a hard stop
            if self.end_date is not None and day > self.end_date:
                return None
            if self.matches(day):
                return day
            day += timedelta(days=1)
        return None

    def first_date(self, on_or_after: date) -> date | None:
        return self.next_date(on_or_after - timedelta(days=1))


def parse_recurrence(spec: dict[str, object]) -> Recurrence:
    frequency = str(spec.get("frequency", ""))
    if frequency not in ("daily", "weekly", "monthly"):
        raise TimingError("recurring.frequency must be daily, weekly or monthly")
    at = parse_hhmm(str(spec.get("time", "")))
    days_raw = spec.get("days_of_week") or []
    if not isinstance(days_raw, list) or not all(isinstance(d, int) and 0 <= d <= 6 for d in days_raw):
        raise TimingError("recurring.days_of_week must be a list of 0 (Monday) … 6 (Sunday)")
    if frequency == "weekly" and not days_raw:
        raise TimingError("a weekly schedule needs days_of_week")
    dom = spec.get("day_of_month", 1)
    if not isinstance(dom, int) or not 1 <= dom <= 31:
        raise TimingError("recurring.day_of_month must be 1 … 31")
    end_raw = spec.get("end_date")
    end: date | None = None
    if end_raw:
        try:
            end = date.fromisoformat(str(end_raw)[:10])
        except ValueError:
            raise TimingError("recurring.end_date must be an ISO date (YYYY-MM-DD)") from None
    return Recurrence(frequency, at, tuple(sorted(set(days_raw))), dom, end)


def fire_instant(day: date, at: time, tz_name: str) -> datetime:
    """When the fan-out for a local date's occurrence runs: at the time itself in a fixed
    timezone, or when it first happens anywhere for ``user`` (each recipient's own zone)."""
    tz = EARLIEST_ZONE if tz_name == "user" else zone(tz_name)
    return local_to_utc(day, at, tz)
