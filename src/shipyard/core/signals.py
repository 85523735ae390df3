"""Rollout health signals: a registry through which features feed staged rollouts.

The OTA rollout policy asks every registered signal how an update is doing against its
control update (e.g. failed launches from the updates protocol, crash-free sessions from
error monitoring). Features register here so none reads another's tables.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from shipyard.core.context import Context

log = logging.getLogger("shipyard.signals")


@dataclass(frozen=True)
class SignalReading:
    value: float  # e.g. 0.987 crash-free sessions, or 0.03 failed-launch rate
    sample_size: int  # sessions / devices behind ``value``
    control_value: float | None  # the same measure for the control update, when known
    control_size: int
    higher_is_better: bool
    description: str


SignalFn = Callable[[Context, int, str, "str | None", datetime], Awaitable["SignalReading | None"]]
_signals: dict[str, SignalFn] = {}


def register_signal(name: str, fn: SignalFn) -> None:
    """``fn(ctx, project_id, update_id, control_update_id, since)`` → reading or None (no data)."""
    _signals[name] = fn


def signal_names() -> list[str]:
    return sorted(_signals)


async def read_signals(
    ctx: Context, project_id: int, update_id: str, control_update_id: str | None, since: datetime
) -> dict[str, SignalReading]:
    """Every signal's reading; a signal that fails is logged and left out, never fatal."""
    readings: dict[str, SignalReading] = {}
    for name, fn in _signals.items():
        try:
            reading = await fn(ctx, project_id, update_id, control_update_id, since)
        except Exception as exc:
            log.warning("health signal %s failed: %s", name, exc)
            continue
        if reading is not None:
            readings[name] = reading
    return readings
