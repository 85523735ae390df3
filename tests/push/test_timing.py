"""Timezone arithmetic across DST changes: quiet hours, local-time instants, recurrences."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.push.timing import (
    EARLIEST_ZONE,
    Recurrence,
    fire_instant,
    local_day_start,
    local_to_utc,
    parse_recurrence,
    quiet_until,
)

ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/St_Johns",
    "Australia/Sydney",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/Santiago",
]
instants = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)
hhmm = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda t: f"{t[0]:02d}:{t[1]:02d}")


def in_window(clock: time, start: str, end: str) -> bool:
    s, e = time.fromisoformat(start), time.fromisoformat(end)
    return s <= clock < e if s < e else (clock >= s or clock < e)


def wall_exists(day: date, at: time, tz: ZoneInfo) -> bool:
    local = datetime.combine(day, at, tzinfo=tz)
    return local.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == local.replace(tzinfo=None)


@settings(max_examples=400, deadline=None)
@given(now=instants, start=hhmm, end=hhmm, zone_name=st.sampled_from(ZONES))
def test_quiet_hours_end_is_the_next_end_of_the_window(now: datetime, start: str, end: str, zone_name: str) -> None:
    tz = ZoneInfo(zone_name)
    until = quiet_until(now, start, end, tz)
    clock = now.astimezone(tz).time()
    if start == end or not in_window(clock, start, end):
        assert until is None
        return
    assert until is not None
    assert now < until <= now + timedelta(hours=25)
    end_local = until.astimezone(tz)
    end_wall = time.fromisoformat(end)
    if wall_exists(end_local.date(), end_wall, tz):
        assert end_local.time() == end_wall  # deferred exactly to the end of the quiet hours
        # …and not later than needed: a minute before, it was still quiet (unless that minute
        # belongs to the repeated or skipped hour of a DST change).
        before = (until - timedelta(minutes=1)).astimezone(tz)
        if before.utcoffset() == end_local.utcoffset():
            assert in_window(before.time(), start, end)
    else:  # the end fell into a spring-forward gap: shifted forward by the gap, never earlier
        assert end_local.time() > end_wall


@settings(max_examples=300, deadline=None)
@given(
    day=st.dates(min_value=date(2024, 1, 1), max_value=date(2030, 12, 31)),
    at=st.times(),
    zone_name=st.sampled_from(ZONES),
)
def test_local_to_utc_reads_the_wall_clock(day: date, at: time, zone_name: str) -> None:
    tz = ZoneInfo(zone_name)
    at = at.replace(microsecond=0)
    instant = local_to_utc(day, at, tz)
    local = instant.astimezone(tz).replace(tzinfo=None)
    wanted = datetime.combine(day, at)
    if wall_exists(day, at, tz):
        assert local == wanted
    else:
        assert wanted < local <= wanted + timedelta(hours=1)
    assert fire_instant(day, at, "user") <= instant  # a per-user schedule starts when the earliest zone gets there


def test_quiet_hours_on_dst_nights() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # Spring forward (2026-03-29 02:00 → 03:00): 22:00–07:00 lasts 8 wall hours but 7 real ones.
    now = datetime(2026, 3, 28, 21, 30, tzinfo=UTC)  # 22:30 CET
    assert quiet_until(now, "22:00", "07:00", berlin) == datetime(2026, 3, 29, 5, 0, tzinfo=UTC)
    # Fall back (2026-10-25 03:00 → 02:00): the same window lasts 10 real hours.
    now = datetime(2026, 10, 24, 20, 30, tzinfo=UTC)  # 22:30 CEST
    assert quiet_until(now, "22:00", "07:00", berlin) == datetime(2026, 10, 25, 6, 0, tzinfo=UTC)
    # A window ending inside the gap ends when the clock jumps past it (02:30 → 03:30 CEST).
    now = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 01:30 CET
    assert quiet_until(now, "01:00", "02:30", berlin) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    # In the repeated hour, the second 02:15 is still before the (second) 02:45.
    second_pass = datetime(2026, 10, 25, 1, 15, tzinfo=UTC)  # 02:15 CET, after 02:15 CEST already passed
    assert quiet_until(second_pass, "02:00", "02:45", berlin) == datetime(2026, 10, 25, 1, 45, tzinfo=UTC)
    # Midnight of a local day, for daily caps.
    assert local_day_start(datetime(2026, 3, 29, 12, tzinfo=UTC), berlin) == datetime(2026, 3, 28, 23, tzinfo=UTC)


def test_daily_recurrence_keeps_local_time_across_dst() -> None:
    rec = parse_recurrence({"frequency": "daily", "time": "09:00"})
    fires = []
    day = date(2026, 3, 27)
    for _ in range(4):
        fires.append(fire_instant(day, rec.at, "Europe/Berlin"))
        nxt = rec.next_date(day)
        assert nxt is not None
        day = nxt
    assert [f.hour for f in fires] == [8, 8, 7, 7]  # 09:00 CET, then 09:00 CEST


@settings(max_examples=200, deadline=None)
@given(
    start=st.dates(min_value=date(2024, 1, 1), max_value=date(2030, 12, 31)),
    days=st.sets(st.integers(0, 6), min_size=1),
    span=st.integers(1, 60),
)
def test_weekly_recurrence_hits_exactly_the_chosen_days(start: date, days: set[int], span: int) -> None:
    rec = Recurrence("weekly", time(9), tuple(sorted(days)), end_date=start + timedelta(days=span))
    seen = []
    day = rec.first_date(start)
    while day is not None:
        seen.append(day)
        day = rec.next_date(day)
    expected = [start + timedelta(days=i) for i in range(span + 1) if (start + timedelta(days=i)).weekday() in days]
    assert seen == expected


def test_monthly_recurrence_uses_the_last_day_of_short_months() -> None:
    rec = parse_recurrence({"frequency": "monthly", "time": "08:00", "day_of_month": 31, "end_date": "2026-06-30"})
    seen = []
    day = rec.first_date(date(2026, 1, 1))
    while day is not None:
        seen.append(day.isoformat())
        day = rec.next_date(day)
    assert seen == ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31", "2026-06-30"]


def test_earliest_zone_is_utc_plus_14() -> None:
    assert datetime(2026, 1, 1, tzinfo=EARLIEST_ZONE).utcoffset() == timedelta(hours=14)
