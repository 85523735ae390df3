"""What happens to a message at delivery time: send, defer, suppress, cancel or fail.

Pure functions over the current state, evaluated when the message is due (not when it
was queued), so preference changes, cancellations and dead devices apply immediately.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shipyard.push.prefs import SYSTEM
from shipyard.push.timing import quiet_until, zone


@dataclass(frozen=True)
class Decision:
    action: str  # send | defer | suppress | cancel | fail
    reason: str | None = None
    until: datetime | None = None


SEND = Decision("send")


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
    sent_today: int,
    sent_today_in_category: int,
    now: datetime,
) -> Decision:
    """Decide one message. ``category_enabled`` is the user's explicit choice (None: the
    category's default); the counts are notifications already sent in the user's local day."""
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
    cap = (user or {}).get("daily_cap")
    if cap is not None and sent_today >= cap:
        return Decision("suppress", f"daily cap of {cap} notifications reached for this user")
    category_cap = (category or {}).get("daily_cap")
    if category_cap is not None and sent_today_in_category >= category_cap:
        return Decision("suppress", f"daily cap of {category_cap} {name!r} notifications reached for this user")
    return SEND
