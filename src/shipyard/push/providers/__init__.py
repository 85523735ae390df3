"""Delivery providers: Expo Push API (relay), FCM HTTP v1 and APNs HTTP/2 (direct).

Each provider turns a batch of :class:`Outgoing` messages into one :class:`Result` per
message, mapping the provider's errors into the classes of the research notes (§7):

* ``sent``        — the provider accepted it (``ticket_id`` set for Expo, receipts follow);
* ``dead``        — the token is dead: deactivate the device;
* ``retry``       — rate limit, 5xx, network or an open circuit: try again later;
* ``failed``      — the message itself is bad (too big, invalid): never retried;
* ``credentials`` — the project's credentials are wrong: pause the provider and alert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Outgoing:
    id: str
    token: str
    environment: str
    payload: dict[str, Any]
    registered_at: float = 0.0  # epoch seconds the device last registered (APNs 410 timestamps)


@dataclass
class Result:
    id: str
    outcome: str  # sent | delivered | dead | retry | failed | credentials
    reason: str | None = None
    ticket_id: str | None = None
    retry_after: float | None = None
    count_attempt: bool = True  # an open circuit is not the message's fault


@dataclass
class ProviderCredentials:
    provider: str
    secret: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    paused_reason: str | None = None


class CredentialsMissing(Exception):  # noqa: N818
    pass
