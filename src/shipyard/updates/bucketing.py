"""Deterministic rollout bucketing from the installation's ``EAS-Client-ID``.

``bucket = first 8 bytes of SHA-256(salt ":" client id) / 2**64`` is uniform in [0, 1),
the same for a device on every request, and a device is in a rollout when its bucket is
below the percentage: raising the percentage only ever adds devices. Each rollout has its
own salt, so the first 10 % of one rollout are not the first 10 % of every rollout.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def bucket(salt: str, client_id: str) -> float:
    digest = hashlib.sha256(f"{salt}:{client_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_rollout(salt: str, client_id: str | None, percentage: float) -> bool:
    """Devices that send no client id cannot be bucketed stably, so they get the control."""
    if client_id is None or percentage <= 0:
        return False
    if percentage >= 100:
        return True
    return bucket(salt, client_id) < percentage / 100.0
