"""The Sentry envelope format: parse, validate, serialise.

    Envelope = Headers { "\\n" Item } [ "\\n" ]
    Item     = Headers "\\n" Payload
    Payload  = exactly ``length`` bytes when the item header has ``length``, else up to the next "\\n"

Every header is one line of JSON. Parsing never trusts a length or a count: each problem is an
:class:`EnvelopeError` with a message that says where and what, answered as a 400 (or a 413 for
size limits) by the ingest route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

# Item types we process; everything else is skipped (the protocol says to skip unknown types).
EVENT_TYPES = ("event", "transaction")
JSON_TYPES = ("event", "transaction", "session", "sessions", "user_report", "feedback", "client_report")
SUPPORTED_TYPES = (*JSON_TYPES, "attachment")

# Data categories (for quotas, rate-limit headers and outcomes) per item type.
CATEGORY_BY_TYPE = {
    "event": "error",
    "transaction": "transaction",
    "attachment": "attachment",
    "session": "session",
    "sessions": "session",
    "user_report": "feedback",
    "feedback": "feedback",
    "client_report": "internal",
    "check_in": "monitor",
}

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class EnvelopeError(Exception):
    """The envelope is malformed (400) or over a size limit (413, ``too_large``)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


@dataclass(frozen=True)
class Limits:
    """Sentry's documented limits (envelopes.mdx, "Size Limits")."""

    event_bytes: int = 1024 * 1024
    attachment_bytes: int = 100 * 1024 * 1024
    check_in_bytes: int = 100 * 1024
    sessions_per_envelope: int = 100
    aggregates_per_item: int = 100
    other_item_bytes: int = 1024 * 1024


@dataclass
class Item:
    headers: dict[str, Any]
    payload: bytes
    parsed: Any = None  # the decoded JSON payload for JSON item types

    @property
    def type(self) -> str:
        return str(self.headers["type"])

    @property
    def category(self) -> str | None:
        if self.type == "event" and isinstance(self.parsed, dict) and not _has_exception(self.parsed):
            return "default"  # message events are the "default" category in Sentry's terms
        return CATEGORY_BY_TYPE.get(self.type)


@dataclass
class Envelope:
    headers: dict[str, Any]
    items: list[Item] = field(default_factory=list)

    @property
    def event_id(self) -> str | None:
        value = self.headers.get("event_id")
        return value if isinstance(value, str) else None

    def event_item(self) -> Item | None:
        return next((i for i in self.items if i.type in EVENT_TYPES), None)


def _has_exception(event: dict[str, Any]) -> bool:
    exc = event.get("exception")
    if isinstance(exc, dict):
        exc = exc.get("values")
    return bool(exc)


def normalize_event_id(value: Any, where: str) -> str:
    """Event ids are 32 lower-case hex characters; UUIDs with dashes are accepted and folded."""
    if not isinstance(value, str):
        raise EnvelopeError(f"{where}: event_id must be a string of 32 hex characters")
    folded = value.replace("-", "").lower()
    if not _HEX32.match(folded):
        raise EnvelopeError(f"{where}: event_id {value[:40]!r} is not 32 hex characters")
    return folded


def _json_line(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EnvelopeError(f"{where} must be a JSON object, not {type(value).__name__}")
    return value


def _item_limit(item_type: str, limits: Limits) -> int:
    if item_type in EVENT_TYPES or item_type == "feedback":
        return limits.event_bytes
    if item_type == "attachment":
        return limits.attachment_bytes
    if item_type == "check_in":
        return limits.check_in_bytes
    return limits.other_item_bytes if item_type in SUPPORTED_TYPES else limits.attachment_bytes


def parse(data: bytes, limits: Limits | None = None) -> Envelope:
    """Parse and validate an envelope; JSON payloads of supported types are decoded too."""
    limits = limits or Limits()
    if not data.strip():
        raise EnvelopeError("empty envelope: expected a header line")
    end = data.find(b"\n")
    header_line = data if end < 0 else data[:end]
    headers = _json_line(header_line, "envelope header")
    if "event_id" in headers and headers["event_id"] is not None:
        headers["event_id"] = normalize_event_id(headers["event_id"], "envelope header")
    envelope = Envelope(headers)
    pos = len(data) if end < 0 else end + 1
    index = 0
    while pos < len(data):
        line_end = data.find(b"\n", pos)
        line = data[pos:] if line_end < 0 else data[pos:line_end]
        if not line.strip():  # tolerate blank lines between items and a trailing newline
            pos = len(data) if line_end < 0 else line_end + 1
            continue
        index += 1
        where = f"item {index}"
        item_headers = _json_line(line, f"{where} header")
        item_type = item_headers.get("type")
        if not isinstance(item_type, str) or not item_type:
            raise EnvelopeError(f'{where} header has no "type"')
        where = f"item {index} ({item_type})"
        pos = len(data) if line_end < 0 else line_end + 1
        length = item_headers.get("length")
        if length is not None:
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise EnvelopeError(f"{where}: length must be a non-negative integer, got {length!r}")
            if length > _item_limit(item_type, limits):
                raise EnvelopeError(
                    f"{where} is {length} bytes; the limit is {_item_limit(item_type, limits)}", too_large=True
                )
            if pos + length > len(data):
                raise EnvelopeError(
                    f"{where}: length {length} runs past the end of the envelope ({len(data) - pos} bytes left)"
                )
            payload = data[pos : pos + length]
            pos += length
            if pos < len(data):
                if data[pos : pos + 1] != b"\n":
                    raise EnvelopeError(f"{where}: expected a newline after its {length}-byte payload")
                pos += 1
        else:
            payload_end = data.find(b"\n", pos)
            payload = data[pos:] if payload_end < 0 else data[pos:payload_end]
            pos = len(data) if payload_end < 0 else payload_end + 1
            if len(payload) > _item_limit(item_type, limits):
                raise EnvelopeError(
                    f"{where} is {len(payload)} bytes; the limit is {_item_limit(item_type, limits)}", too_large=True
                )
        item = Item(item_headers, payload)
        if item_type in JSON_TYPES:
            item.parsed = _json_line(payload, f"{where} payload")
        envelope.items.append(item)
    _validate(envelope, limits)
    return envelope


def _validate(envelope: Envelope, limits: Limits) -> None:
    counts: dict[str, int] = {}
    for item in envelope.items:
        counts[item.type] = counts.get(item.type, 0) + 1
    if counts.get("event", 0) + counts.get("transaction", 0) > 1:
        raise EnvelopeError("an envelope may carry at most one event or transaction item")
    if counts.get("session", 0) > limits.sessions_per_envelope:
        raise EnvelopeError(
            f"{counts['session']} session items; the limit is {limits.sessions_per_envelope}", too_large=True
        )
    for item in envelope.items:
        if item.type == "sessions":
            aggregates = item.parsed.get("aggregates")
            if not isinstance(aggregates, list):
                raise EnvelopeError('sessions item: "aggregates" must be a list')
            if len(aggregates) > limits.aggregates_per_item:
                raise EnvelopeError(
                    f"sessions item has {len(aggregates)} aggregates; the limit is {limits.aggregates_per_item}",
                    too_large=True,
                )
        elif item.type == "session" and (
            not isinstance(item.parsed.get("attrs"), dict) or not item.parsed["attrs"].get("release")
        ):
            raise EnvelopeError("session item: attrs.release is required")
    event = envelope.event_item()
    if event is None:
        return
    payload_id = event.parsed.get("event_id")
    if envelope.event_id is None:
        if payload_id is None:
            raise EnvelopeError(f"{event.type} item without an event_id in the envelope header or the payload")
        envelope.headers["event_id"] = normalize_event_id(payload_id, f"{event.type} payload")
    # The envelope header's id takes precedence over the payload's (protocol rule).
    event.parsed["event_id"] = envelope.event_id


def serialize(headers: dict[str, Any], items: list[tuple[dict[str, Any], bytes]]) -> bytes:
    """Build an envelope with explicit lengths (what the store endpoint and tests use)."""
    parts = [orjson.dumps(headers)]
    for item_headers, payload in items:
        parts.append(orjson.dumps({**item_headers, "length": len(payload)}))
        parts.append(payload)
    return b"\n".join(parts) + b"\n"


def only_supported(envelope: Envelope) -> list[tuple[dict[str, Any], bytes]]:
    """The items we keep (unknown types are skipped), ready for :func:`serialize`."""
    return [(i.headers, i.payload) for i in envelope.items if i.type in SUPPORTED_TYPES]
