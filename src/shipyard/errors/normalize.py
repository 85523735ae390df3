"""Event normalisation: the many shapes SDKs send folded into one, plus the fields we index.

SDKs differ (tags as a map or a list of pairs, exceptions as ``{"values": [...]}`` or a
bare list, ``message`` as a string or an object, timestamps as RFC 3339 strings or epoch
floats). Everything downstream (scrubbing, grouping, storage, the UI) sees one shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

LEVELS = ("debug", "info", "warning", "error", "fatal")
_LEVEL_ALIASES = {"warn": "warning", "critical": "fatal", "log": "info", "exception": "error"}
MAX_FRAMES = 500
MAX_BREADCRUMBS = 200
MAX_TAGS = 100
OTA_TAG_UPDATE = "expo.updates.update_id"
OTA_TAG_CHANNEL = "expo.updates.channel"
OTA_TAG_RUNTIME = "expo.updates.runtime_version"


@dataclass
class EventFacts:
    """What we index about an event (columns of ``errors_events`` and tag counts)."""

    event_id: str
    timestamp: datetime
    level: str
    platform: str
    release: str | None
    dist: str | None
    environment: str
    title: str
    culprit: str | None
    error_type: str | None
    handled: bool | None
    update_id: str | None
    channel: str | None
    runtime_version: str | None
    os_name: str | None
    os_version: str | None
    device_model: str | None
    app_version: str | None
    user_ident: str | None
    tags: dict[str, str]

    @property
    def is_crash(self) -> bool:
        return self.handled is False or self.level == "fatal"


def obj(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (SDK payloads are untrusted)."""
    return value if isinstance(value, dict) else {}


def parse_timestamp(value: Any, fallback: datetime) -> datetime:
    """RFC 3339 string or epoch seconds; anything unusable (or far in the future) → ``fallback``."""
    moment: datetime | None = None
    try:
        if isinstance(value, bool):
            moment = None
        elif isinstance(value, int | float):
            moment = datetime.fromtimestamp(float(value), UTC)
        elif isinstance(value, str) and value:
            text = value.strip().replace("Z", "+00:00")
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            moment = moment.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        moment = None
    if moment is None or moment > fallback + timedelta(minutes=5) or moment.year < 2000:
        return fallback
    return moment


def _str(value: Any, limit: int = 250) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text[:limit] if text else None


def _values(container: Any) -> list[Any]:
    """``{"values": [...]}`` or a bare list → the list."""
    if isinstance(container, dict):
        container = container.get("values")
    return [v for v in container if isinstance(v, dict)] if isinstance(container, list) else []


def _normalize_frames(stacktrace: Any) -> dict[str, Any] | None:
    if not isinstance(stacktrace, dict):
        return None
    frames = [f for f in stacktrace.get("frames") or [] if isinstance(f, dict)]
    if len(frames) > MAX_FRAMES:  # keep both ends: the entry point and the crash site
        frames = frames[: MAX_FRAMES // 2] + frames[-MAX_FRAMES // 2 :]
    return {**stacktrace, "frames": frames}


def normalize_tags(tags: Any) -> dict[str, str]:
    pairs: list[tuple[Any, Any]] = []
    if isinstance(tags, dict):
        pairs = list(tags.items())
    elif isinstance(tags, list):
        pairs = [tuple(p) for p in tags if isinstance(p, list | tuple) and len(p) == 2]
    out: dict[str, str] = {}
    for key, value in pairs[:MAX_TAGS]:
        k, v = _str(key, 64), _str(value, 200)
        if k and v is not None:
            out[k] = v
    return out


def _message(event: dict[str, Any]) -> dict[str, Any] | None:
    """``logentry`` wins over ``message``; both may be a string or ``{formatted, message, params}``."""
    for name in ("logentry", "message"):
        value = event.get(name)
        if isinstance(value, str) and value:
            return {"formatted": value}
        if isinstance(value, dict) and (value.get("formatted") or value.get("message")):
            return {k: value[k] for k in ("formatted", "message", "params") if k in value}
    return None


def normalize(event: dict[str, Any], *, received_at: datetime, store_ip: bool, client_ip: str | None) -> EventFacts:
    """Normalise ``event`` in place and return its indexed facts."""
    event["timestamp"] = parse_timestamp(event.get("timestamp"), received_at).isoformat()
    level = str(event.get("level") or "error").lower()
    level = _LEVEL_ALIASES.get(level, level)
    event["level"] = level if level in LEVELS else "error"
    event["platform"] = _str(event.get("platform"), 32) or "other"
    event["environment"] = _str(event.get("environment"), 64) or "production"
    tags = normalize_tags(event.get("tags"))
    event["tags"] = tags
    exceptions = _values(event.get("exception"))
    for exc in exceptions:
        frames = _normalize_frames(exc.get("stacktrace"))
        if frames is not None:
            exc["stacktrace"] = frames
    if exceptions:
        event["exception"] = {"values": exceptions}
    else:
        event.pop("exception", None)
    threads = _values(event.get("threads"))
    for thread in threads:
        frames = _normalize_frames(thread.get("stacktrace"))
        if frames is not None:
            thread["stacktrace"] = frames
    if threads:
        event["threads"] = {"values": threads}
    crumbs = _values(event.get("breadcrumbs"))[-MAX_BREADCRUMBS:]
    if crumbs:
        event["breadcrumbs"] = {"values": crumbs}
    else:
        event.pop("breadcrumbs", None)
    message = _message(event)
    if message:
        event["logentry"] = message
    event.pop("message", None)
    contexts = obj(event.get("contexts"))
    event["contexts"] = contexts
    user = obj(event.get("user"))
    _apply_ip_policy(event, user, store_ip=store_ip, client_ip=client_ip)
    if user:
        event["user"] = user
    else:
        event.pop("user", None)
    return _facts(event, exceptions, message, contexts, user, tags)


def _apply_ip_policy(event: dict[str, Any], user: dict[str, Any], *, store_ip: bool, client_ip: str | None) -> None:
    if not store_ip:
        user.pop("ip_address", None)
        request = event.get("request")
        if isinstance(request, dict) and isinstance(request.get("env"), dict):
            request["env"].pop("REMOTE_ADDR", None)
        return
    if user.get("ip_address") == "{{auto}}":  # the SDK asks the server to fill in the client address
        if client_ip:
            user["ip_address"] = client_ip
        else:
            user.pop("ip_address", None)


def user_ident(user: dict[str, Any]) -> str | None:
    """Who an event happened to, in Sentry's order of preference: id, email, username, IP."""
    for field_name, prefix in (("id", "id"), ("email", "email"), ("username", "username"), ("ip_address", "ip")):
        value = _str(user.get(field_name), 240)
        if value:
            return f"{prefix}:{value}"
    return None


def _ctx(contexts: dict[str, Any], name: str, *keys: str) -> str | None:
    section = contexts.get(name)
    if not isinstance(section, dict):
        return None
    for key in keys:
        value = _str(section.get(key), 100)
        if value:
            return value
    return None


def _exception_title(exc: dict[str, Any]) -> str:
    kind = _str(exc.get("type"), 200)
    value = _str(exc.get("value"), 400)
    mechanism = obj(exc.get("mechanism"))
    if mechanism.get("synthetic") and value:
        return value
    if kind and value:
        return f"{kind}: {value.splitlines()[0] if value.splitlines() else value}"
    return kind or value or "<unknown error>"


def _handled(exceptions: list[dict[str, Any]]) -> bool | None:
    flags = [
        exc["mechanism"].get("handled")
        for exc in exceptions
        if isinstance(exc.get("mechanism"), dict) and isinstance(exc["mechanism"].get("handled"), bool)
    ]
    if not flags:
        return None
    return all(flags)


def culprit_of(event: dict[str, Any], exceptions: list[dict[str, Any]]) -> str | None:
    """The transaction, else the innermost in-app frame (``module in function``)."""
    transaction = _str(event.get("transaction"), 200)
    if transaction:
        return transaction
    for exc in reversed(exceptions):
        frames = (exc.get("stacktrace") or {}).get("frames") or []
        app_frames = [f for f in frames if f.get("in_app")] or frames
        if app_frames:
            top = app_frames[-1]
            where = _str(top.get("module"), 200) or _str(top.get("filename"), 200) or "?"
            return f"{where} in {_str(top.get('function'), 200) or '?'}"
    return None


def _facts(
    event: dict[str, Any],
    exceptions: list[dict[str, Any]],
    message: dict[str, Any] | None,
    contexts: dict[str, Any],
    user: dict[str, Any],
    tags: dict[str, str],
) -> EventFacts:
    if exceptions:
        main = exceptions[-1]  # chained oldest → newest; the newest is what was raised
        title = _exception_title(main)
        error_type = _str(main.get("type"), 200)
    elif message:
        text = str(message.get("formatted") or message.get("message") or "")
        title = text.strip().splitlines()[0][:500] if text.strip() else "<no message>"
        error_type = None
    else:
        title = _str(event.get("transaction"), 500) or "<unlabeled event>"
        error_type = None
    ota = obj(contexts.get("ota_updates"))
    # The SDK's tag or context first; else an update id (a UUID) inside the release (Sentry's
    # suggested `name@version+build#channel:updateId` for Expo) or the dist (legacy sentry-expo's
    # `dist = Updates.updateId`), the same attribution release health applies to sessions.
    update_id = (
        _str(tags.get(OTA_TAG_UPDATE), 64)
        or _str(ota.get("update_id"), 64)
        or _uuid_in(_str(event.get("release"), 250))
        or _uuid_in(_str(event.get("dist"), 64))
    )
    channel = _str(tags.get(OTA_TAG_CHANNEL), 100) or _str(ota.get("channel"), 100)
    runtime = _str(tags.get(OTA_TAG_RUNTIME), 100) or _str(ota.get("runtime_version"), 100)
    handled = _handled(exceptions)
    return EventFacts(
        event_id=str(event["event_id"]),
        timestamp=datetime.fromisoformat(event["timestamp"]),
        level=event["level"],
        platform=event["platform"],
        release=_str(event.get("release"), 250),
        dist=_str(event.get("dist"), 64),
        environment=event["environment"],
        title=title[:500],
        culprit=culprit_of(event, exceptions),
        error_type=error_type,
        handled=handled,
        update_id=update_id,
        channel=channel,
        runtime_version=runtime,
        os_name=_ctx(contexts, "os", "name"),
        os_version=_ctx(contexts, "os", "version"),
        device_model=_ctx(contexts, "device", "model", "family"),
        app_version=_ctx(contexts, "app", "app_version"),
        user_ident=user_ident(user),
        tags=tags,
    )


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _uuid_in(value: str | None) -> str | None:
    match = _UUID.search(value) if value else None
    return match.group(0).lower() if match else None


def breakdown_tags(facts: EventFacts) -> dict[str, str]:
    """The tags we count per issue: the event's own plus the dimensions the breakdowns use."""
    derived = {
        "level": facts.level,
        "environment": facts.environment,
        "release": facts.release,
        "dist": facts.dist,
        "os": " ".join(p for p in (facts.os_name, facts.os_version) if p) or None,
        "os.name": facts.os_name,
        "device": facts.device_model,
        "app.version": facts.app_version,
        OTA_TAG_UPDATE: facts.update_id,
        OTA_TAG_CHANNEL: facts.channel,
        OTA_TAG_RUNTIME: facts.runtime_version,
        "handled": None if facts.handled is None else ("yes" if facts.handled else "no"),
    }
    merged = dict(facts.tags)
    merged.update({k: v[:200] for k, v in derived.items() if v})
    return merged
