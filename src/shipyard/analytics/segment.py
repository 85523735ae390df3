"""The Segment HTTP Tracking API: authentication, limits, and turning messages into rows.

Pure functions (no database): the ingest pipeline in :mod:`shipyard.analytics.ingest`
calls them and decides what to store. Protocol facts (paths, fields, limits, clock-skew
correction) follow the Segment HTTP API documentation, summarised in
``shared/notes/analytics-and-flags.md``.
"""

from __future__ import annotations

import base64
import ipaddress
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from shipyard.core.errors import ApiError

MESSAGE_TYPES = ("track", "identify", "screen", "page", "group", "alias")
# Non-track calls are stored as events too (so a user's history is complete), under
# reserved names that cannot collide with a track event sent by an app.
EVENT_FOR_TYPE = {
    "screen": "$screen",
    "page": "$pageview",
    "identify": "$identify",
    "group": "$group",
    "alias": "$alias",
}
RESERVED_EVENTS = frozenset(EVENT_FOR_TYPE.values())
MAX_ID_LENGTH = 200
MAX_MESSAGE_ID_LENGTH = 100
MAX_NAME_LENGTH = 200
DAY_MS = 86_400_000
# Device identifiers dropped from stored context when an event is anonymised.
DEVICE_IDENTIFIERS = ("id", "advertisingId", "adTrackingEnabled", "token", "deviceId")
# isinstance() tuples built once: an ``a | b`` union in the call builds a new object on
# every call, and normalise runs per message.
_NUMBER = (int, float)
_ID_TYPES = (str, int, float)
_STR_OR_INT = (str, int)


class SegmentError(ApiError):
    """An error in Segment's shape: the SDKs read ``code`` and ``message`` at the top level."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, code, message, headers=headers)


class MessageError(Exception):
    """One message is unusable; the rest of its batch may still be stored."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- authentication ------------------------------------------------------------------------


def write_key_from(authorization: str | None, body: dict[str, Any] | None) -> str | None:
    """The write key from HTTP Basic (key as username, empty password) or the body's ``writeKey``."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic" and value:
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise SegmentError(401, "invalid_authorization", "the Basic credentials are not valid base64") from None
            username = decoded.partition(":")[0]
            if username:
                return username
    if body is not None:
        key = body.get("writeKey")
        if isinstance(key, str) and key:
            return key
    return None


# --- parsing ---------------------------------------------------------------------------------


def parse_json_object(raw: bytes, limit: int, what: str) -> dict[str, Any]:
    """Parse a request body (any content type: some SDKs send text/plain) as a JSON object."""
    if len(raw) > limit:
        raise SegmentError(400, "payload_too_large", f"{what} is {len(raw)} bytes; the limit is {limit} bytes")
    if not raw or raw.isspace():  # not raw.strip(): that copies the whole body
        raise SegmentError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SegmentError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise SegmentError(400, "invalid_json", "the request body must be a JSON object")
    return body


def parse_time_ms(value: Any, field_name: str) -> int | None:
    """ISO-8601 (what every SDK sends) or epoch seconds/milliseconds, as epoch milliseconds."""
    if type(value) is str and value:  # the common case first: one check instead of five
        return _iso_ms(value, field_name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise MessageError("invalid_timestamp", f"{field_name} must be an ISO-8601 string")
    if isinstance(value, _NUMBER):
        # Numbers above 1e11 can only be milliseconds (1e11 seconds is the year 5138).
        return int(value if value > 1e11 else value * 1000)
    if not isinstance(value, str):
        raise MessageError("invalid_timestamp", f"{field_name} must be an ISO-8601 string")
    return _iso_ms(value, field_name)


def _iso_ms(value: str, field_name: str) -> int:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MessageError("invalid_timestamp", f"{field_name} {value[:40]!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def corrected_time_ms(timestamp_ms: int | None, sent_at_ms: int | None, received_ms: int, max_future_ms: int) -> int:
    """Segment's clock-skew correction: ``receivedAt − (sentAt − originalTimestamp)``.

    The device's clock may be wrong, but the *difference* between when it created the
    event and when it sent it is right; anchoring that difference on the server's clock
    gives the true time. Without ``sentAt`` the timestamp is taken as is.
    """
    if timestamp_ms is None:
        return received_ms
    ts = timestamp_ms if sent_at_ms is None else received_ms - (sent_at_ms - timestamp_ms)
    if ts > received_ms + max_future_ms:
        return received_ms
    return ts


def _id(value: Any, field_name: str) -> str | None:
    if value is None or value == "":
        return None
    if type(value) is str:  # the common case first
        text = value
    elif isinstance(value, bool) or not isinstance(value, _ID_TYPES):
        raise MessageError("invalid_id", f"{field_name} must be a string")
    else:
        text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise MessageError("invalid_id", f"{field_name} is longer than {MAX_ID_LENGTH} characters")
    return text


def _object(value: Any, field_name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MessageError("invalid_field", f"{field_name} must be an object")
    return value


def _name(value: Any, field_name: str, *, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise MessageError(f"missing_{field_name}", f"a {field_name} is required")
        return None
    if not isinstance(value, str):
        raise MessageError("invalid_field", f"{field_name} must be a string")
    if len(value) > MAX_NAME_LENGTH:
        raise MessageError("invalid_field", f"{field_name} is longer than {MAX_NAME_LENGTH} characters")
    return value


def session_id_of(msg: dict[str, Any], context: dict[str, Any], properties: dict[str, Any]) -> str | None:
    """A client session id when the app sends one (seed's sessionId, PostHog's $session_id,
    the Amplitude session plugin's integration option); sessions are otherwise derived."""
    for value in (msg.get("sessionId"), context.get("sessionId"), properties.get("$session_id")):
        if value is not None and isinstance(value, _STR_OR_INT) and not isinstance(value, bool) and str(value):
            return str(value)[:100]
    integrations = msg.get("integrations")
    amplitude = integrations.get("Actions Amplitude") if isinstance(integrations, dict) else None
    value = amplitude.get("session_id") if isinstance(amplitude, dict) else None
    if isinstance(value, _STR_OR_INT) and not isinstance(value, bool) and str(value):
        return str(value)[:100]
    return None


def truncate_ip(ip: str | None, mode: str) -> str | None:
    """``full`` keeps the address, ``truncate`` zeroes the host part (IPv4 /24, IPv6 /48), ``none`` drops it."""
    if not ip or mode == "none":
        return None
    if mode == "full":
        return ip[:64]
    return _truncated_ip(ip)


@lru_cache(maxsize=65_536)
def _truncated_ip(ip: str) -> str | None:
    # Cached: every message of a batch carries the same address, and ipaddress costs
    # several microseconds per call — a sixth of the ingest's budget per event.
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


@dataclass(slots=True)
class Message:
    """One validated message, ready for the consent / plan / identity decisions."""

    type: str
    event: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    ts_ms: int
    received_ms: int
    properties: dict[str, Any]
    context: dict[str, Any]
    screen: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    group_id: str | None = None
    previous_id: str | None = None
    session_id: str | None = None
    ip: str | None = None
    size: int = 0


def normalise(
    msg: Any,
    *,
    forced_type: str | None,
    batch_context: dict[str, Any] | None,
    sent_at_ms: int | None,
    received_ms: int,
    request_ip: str | None,
    max_message_bytes: int,
    max_future_ms: int,
) -> Message:
    """Validate one message the way Segment does and compute its stored time."""
    return Normaliser(
        forced_type=forced_type,
        batch_context=batch_context,
        sent_at_ms=sent_at_ms,
        received_ms=received_ms,
        request_ip=request_ip,
        max_message_bytes=max_message_bytes,
        max_future_ms=max_future_ms,
    )(msg)


@dataclass(slots=True, kw_only=True)
class Normaliser:
    """:func:`normalise` with the values one request shares bound once: ingest calls it for
    every message, and eight keyword arguments per call were a measurable part of it.

    Each field is checked inline for its common shape (a non-empty string of a valid
    length, an object) and handed to the general validator otherwise, so the errors, and
    the order they are raised in, are those of the validators."""

    forced_type: str | None
    batch_context: dict[str, Any] | None
    sent_at_ms: int | None
    received_ms: int
    request_ip: str | None
    max_message_bytes: int
    max_future_ms: int

    def __call__(self, msg: Any) -> Message:
        if type(msg) is not dict and not isinstance(msg, dict):
            raise MessageError("invalid_message", "each message must be a JSON object")
        size = len(orjson.dumps(msg))
        if size > self.max_message_bytes:
            raise MessageError(
                "message_too_large", f"message is {size} bytes; the limit is {self.max_message_bytes} bytes"
            )
        get = msg.get
        kind = self.forced_type or get("type")
        if kind not in MESSAGE_TYPES:
            raise MessageError("invalid_type", f"type must be one of {', '.join(MESSAGE_TYPES)}; got {kind!r}")
        user_id = get("userId")
        if type(user_id) is not str or not 0 < len(user_id) <= MAX_ID_LENGTH:
            user_id = _id(user_id, "userId")
        anonymous_id = get("anonymousId")
        if type(anonymous_id) is not str or not 0 < len(anonymous_id) <= MAX_ID_LENGTH:
            anonymous_id = _id(anonymous_id, "anonymousId")
        if user_id is None and anonymous_id is None:
            raise MessageError("no_user_anon_id", "every message needs a userId or an anonymousId")
        message_id = get("messageId")
        if type(message_id) is not str or not 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH:
            message_id = _message_id(message_id)
        context = get("context")
        if type(context) is not dict:
            context = _object(context, "context")
        batch_context = self.batch_context
        if batch_context:
            context = {**batch_context, **context}
        properties = get("properties")
        if type(properties) is not dict:
            properties = _object(properties, "properties")
        own_sent_at = get("sentAt")
        if own_sent_at is not None:
            own_sent_at = parse_time_ms(own_sent_at, "sentAt")
        timestamp = parse_time_ms(get("timestamp") or get("originalTimestamp"), "timestamp")
        received_ms = self.received_ms
        if timestamp is None:
            ts_ms = received_ms
        else:  # corrected_time_ms, inline
            sent_at = own_sent_at if own_sent_at is not None else self.sent_at_ms
            ts_ms = timestamp if sent_at is None else received_ms - (sent_at - timestamp)
            if ts_ms > received_ms + self.max_future_ms:
                ts_ms = received_ms
        if ts_ms < 0:
            raise MessageError("invalid_timestamp", "timestamp is before 1970")
        screen = group_id = previous_id = None
        traits: dict[str, Any] = {}
        stored_properties = properties
        if kind == "track":
            event = get("event")
            if type(event) is not str or not 0 < len(event) <= MAX_NAME_LENGTH:
                event = _name(event, "event", required=True) or ""
            if event in RESERVED_EVENTS:
                raise MessageError("invalid_event", f"event names starting with $ like {event} are reserved")
        else:
            event = EVENT_FOR_TYPE[kind]
            if kind == "screen" or kind == "page":
                screen = get("name")
                if type(screen) is not str or not 0 < len(screen) <= MAX_NAME_LENGTH:
                    screen = _name(screen, "name", required=False) or _name(
                        properties.get("name"), "name", required=False
                    )
            elif kind == "identify":
                traits = _object(get("traits"), "traits") or _object(context.get("traits"), "context.traits")
                stored_properties = traits
            elif kind == "group":
                group_id = _id(get("groupId"), "groupId")
                if group_id is None:
                    raise MessageError("missing_groupId", "a group call needs a groupId")
                traits = _object(get("traits"), "traits")
                stored_properties = {"groupId": group_id, **traits}
            elif kind == "alias":
                previous_id = _id(get("previousId"), "previousId")
                if previous_id is None or user_id is None:
                    raise MessageError("missing_previousId", "an alias call needs a previousId and a userId")
                stored_properties = {"previousId": previous_id}
        # session_id_of, without its calls when the message carries no session id at all.
        if (
            get("sessionId") is None
            and context.get("sessionId") is None
            and properties.get("$session_id") is None
            and not get("integrations")
        ):
            session_id = None
        else:
            session_id = session_id_of(msg, context, properties)
        ip = context.get("ip")
        return Message(
            kind,
            event,
            message_id,
            user_id,
            anonymous_id,
            ts_ms,
            received_ms,
            stored_properties,
            context,
            screen,
            traits,
            group_id,
            previous_id,
            session_id,
            ip if isinstance(ip, str) and ip else self.request_ip,
            size,
        )


def _message_id(value: Any) -> str:
    if value is None or value == "":
        return "srv-" + uuid.uuid4().hex
    if not isinstance(value, _STR_OR_INT) or isinstance(value, bool):
        raise MessageError("invalid_message_id", "messageId must be a string")
    text = str(value)
    if len(text) > MAX_MESSAGE_ID_LENGTH:
        raise MessageError("invalid_message_id", f"messageId is longer than {MAX_MESSAGE_ID_LENGTH} characters")
    return text


def stored_context(context: dict[str, Any], *, anonymised: bool) -> dict[str, Any]:
    """The context kept with an event: no copy of traits (they live on the user) and no IP
    (its own column, truncated per project); anonymised events also lose device ids."""
    # A copy without them, in order: dict() and two pops cost a fifth of a comprehension.
    kept = dict(context)
    kept.pop("traits", None)
    kept.pop("ip", None)
    if anonymised:
        device = kept.get("device")
        if isinstance(device, dict):
            kept["device"] = {k: v for k, v in device.items() if k not in DEVICE_IDENTIFIERS}
    return kept


def device_info(context: dict[str, Any]) -> dict[str, Any]:
    """The parts of context that describe the user's device (the seed's DeviceInfo)."""
    info: dict[str, Any] = {}
    for key in ("app", "device", "os", "screen", "network"):
        value = context.get(key)
        if isinstance(value, dict):
            info[key] = {k: v for k, v in value.items() if k not in ("advertisingId", "token")}
    for key in ("locale", "timezone"):
        value = context.get(key)
        if isinstance(value, str):
            info[key] = value
    library = context.get("library")
    if isinstance(library, dict):
        info["library"] = library
    return info
