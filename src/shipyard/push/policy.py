"""What happens to a message at delivery time: send, defer, suppress, cancel or fail.

Pure functions over the current state, evaluated when the message is due (not when it
was queued), so preference changes, cancellations and dead devices apply immediately.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shipyard.push.prefs import SYSTEM
from shipyard.push.timing import quiet_until, zone


@dataclass(frozen=True)
class Decision:
    action: str  # send | defer | suppress | cancel | fail
    reason: str | None = None
    until: datetime | None = None


SEND = Decision("send")
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Recent:
    """Notifications the user already got, each counted once however many devices got it:
    counts since the user's local midnight, and send times within the last 60 minutes."""

    today: int = 0
    today_in_category: int = 0
    last_hour: tuple[datetime, ...] = ()  # oldest first
    last_hour_in_category: tuple[datetime, ...] = ()


def user_timezone(user: dict[str, Any] | None, device: dict[str, Any]) -> str | None:
    return (user or {}).get("timezone") or device.get("timezone")


def decide(
    *,
    message: dict[str, Any],
    device: dict[str, Any] | None,
    send_status: str,
    user: dict[str, Any] | None,
    category: dict[str, Any] | None,
    category_enabled: bool | None,
    recent: Recent,
    now: datetime,
) -> Decision:
    """Decide one message. ``category_enabled`` is the user's explicit choice (None: the
    category's default); ``recent`` is what the user already got."""
    if send_status == "cancelled":
        return Decision("cancel", "send cancelled")
    if device is None or not device["active"]:
        reason = (device or {}).get("deactivated_reason") or "device removed"
        return Decision("fail", f"device inactive: {reason}")
    if device["permission"] == "denied":
        return Decision("suppress", "notifications are not permitted on this device (permission denied)")
    name = message.get("category")
    critical = bool(category and category["critical"])
    if category is not None and name != SYSTEM:
        enabled = category["default_enabled"] if category_enabled is None else category_enabled
        if not enabled:
            return Decision("suppress", f"the user turned off {name!r} notifications")
    if critical or name == SYSTEM:
        return SEND
    if user and user.get("quiet_start") and user.get("quiet_end"):
        tz_name = user.get("quiet_timezone") or user_timezone(user, device)
        until = quiet_until(now, user["quiet_start"], user["quiet_end"], zone(tz_name))
        if until is not None:
            return Decision(
                "defer", f"quiet hours {user['quiet_start']}–{user['quiet_end']} ({tz_name or 'UTC'})", until
            )
    return _caps(user or {}, category or {}, name, recent)


def _caps(user: dict[str, Any], category: dict[str, Any], name: str | None, recent: Recent) -> Decision:
    """Daily caps suppress (the day's budget is spent); hourly caps defer the message until
    the oldest notification of the last 60 minutes leaves the window (a throttle, not a drop)."""
    cap = user.get("daily_cap")
    if cap is not None and recent.today >= cap:
        return Decision("suppress", f"daily cap of {cap} notifications reached for this user")
    category_cap = category.get("daily_cap")
    if category_cap is not None and recent.today_in_category >= category_cap:
        return Decision("suppress", f"daily cap of {category_cap} {name!r} notifications reached for this user")
    own_cap = (user.get("category_caps") or {}).get(name or "")
    if own_cap is not None and recent.today_in_category >= own_cap:
        return Decision("suppress", f"the user's own daily cap of {own_cap} {name!r} notifications reached")
    hourly = user.get("hourly_cap")
    if hourly and len(recent.last_hour) >= hourly:
        until = recent.last_hour[len(recent.last_hour) - hourly] + HOUR
        return Decision("defer", f"hourly cap of {hourly} notifications reached for this user", until)
    hourly = category.get("hourly_cap")
    if hourly and len(recent.last_hour_in_category) >= hourly:
        until = recent.last_hour_in_category[len(recent.last_hour_in_category) - hourly] + HOUR
        return Decision("defer", f"hourly cap of {hourly} {name!r} notifications reached for this user", until)
    return SEND
