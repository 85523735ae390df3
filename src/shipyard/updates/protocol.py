"""Expo Updates protocol pieces that involve no database: request header parsing,
Expo-SFV (a subset of RFC 8941 structured fields), content negotiation and the
``multipart/mixed`` response body.

Spec: https://docs.expo.dev/technical-specs/expo-updates-1/ (v1) and the archived v0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from shipyard.core.errors import ApiError, BadRequest

PLATFORMS = ("ios", "android")
MAX_FATAL_ERROR = 1024  # the client truncates to this; we never store more
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")


class SfvError(ValueError):
    pass


# --- Expo-SFV ---------------------------------------------------------------------------------


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def key(self) -> str:
        match = _KEY.match(self.text, self.pos)
        if not match:
            raise SfvError(f"expected a key at position {self.pos}")
        self.pos = match.end()
        return match.group()

    def bare_item(self) -> str | int | float | bool:
        ch = self.peek()
        if ch == '"':
            return self._string()
        if ch == "?":
            value = self.text[self.pos + 1 : self.pos + 2]
            if value not in ("0", "1"):
                raise SfvError("invalid boolean")
            self.pos += 2
            return value == "1"
        if ch == "-" or ch.isdecimal():
            match = re.compile(r"-?\d{1,15}(\.\d{1,3})?").match(self.text, self.pos)
            if not match:
                raise SfvError("invalid number")
            self.pos = match.end()
            return float(match.group()) if match.group(1) else int(match.group())
        match = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~:/0-9A-Za-z]*").match(self.text, self.pos)
        if not match:
            raise SfvError(f"unexpected character at position {self.pos}")
        self.pos = match.end()
        return match.group()

    def _string(self) -> str:
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == "\\":
                if self.pos >= len(self.text) or self.text[self.pos] not in '"\\':
                    raise SfvError("invalid escape in string")
                out.append(self.text[self.pos])
                self.pos += 1
            elif ch == '"':
                return "".join(out)
            elif not (" " <= ch <= "~"):
                raise SfvError("invalid character in string")
            else:
                out.append(ch)
        raise SfvError("unterminated string")

    def parameters(self) -> None:
        # Parameters are allowed by RFC 8941 but carry nothing the protocol uses.
        while self.peek() == ";":
            self.pos += 1
            self.skip_ws()
            self.key()
            if self.peek() == "=":
                self.pos += 1
                self.bare_item()

    def member_separator(self) -> bool:
        self.skip_ws()
        if self.done():
            return False
        if self.peek() != ",":
            raise SfvError(f"expected ',' at position {self.pos}")
        self.pos += 1
        self.skip_ws()
        if self.done():
            raise SfvError("trailing comma")
        return True


def parse_dictionary(value: str) -> dict[str, str | int | float | bool]:
    """``sig, keyid="root", alg="rsa-v1_5-sha256"`` → ``{"sig": True, "keyid": "root", …}``."""
    reader = _Reader(value.strip())
    result: dict[str, str | int | float | bool] = {}
    if reader.done():
        return result
    while True:
        name = reader.key()
        item: str | int | float | bool = True
        if reader.peek() == "=":
            reader.pos += 1
            item = reader.bare_item()
        reader.parameters()
        result[name] = item
        if not reader.member_separator():
            return result


def parse_list(value: str) -> list[str | int | float | bool]:
    """``"a", "b"`` → ``["a", "b"]`` (inner lists are not used by the protocol and rejected)."""
    reader = _Reader(value.strip())
    items: list[str | int | float | bool] = []
    if reader.done():
        return items
    while True:
        if reader.peek() == "(":
            raise SfvError("inner lists are not supported here")
        items.append(reader.bare_item())
        reader.parameters()
        if not reader.member_separator():
            return items


def serialize_string(value: str) -> str:
    if any(not (" " <= ch <= "~") for ch in value):
        raise SfvError("SFV strings hold printable ASCII only")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def serialize_dictionary(values: dict[str, str]) -> str:
    return ", ".join(f"{key}={serialize_string(value)}" for key, value in values.items())


# --- request ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRequest:
    protocol: int
    platform: str
    runtime_version: str
    channel: str | None
    client_id: str | None
    current_update_id: str | None
    embedded_update_id: str | None
    failed_update_ids: tuple[str, ...]
    fatal_error: str | None
    expects_signature: bool
    expected_keyid: str | None
    accept: str
    app_version: str | None


def _uuid_header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if not value:
        return None
    value = value.strip().lower()
    if not _UUID.match(value):
        raise BadRequest(f"{name} must be a UUID, got {value[:60]!r}", code="invalid_header")
    return str(value)


def parse_request(headers: Mapping[str, str], default_channel: str | None = None) -> ManifestRequest:
    """Read and validate every header expo-updates sends; 400 says which one is wrong."""
    get = headers.get
    raw_protocol = get("expo-protocol-version")
    if raw_protocol is None or raw_protocol.strip() == "":
        protocol = 0  # v0 clients do not send the header
    elif raw_protocol.strip() in ("0", "1"):
        protocol = int(raw_protocol.strip())
    else:
        raise ApiError(
            406, "unsupported_protocol", f"expo-protocol-version {raw_protocol[:20]!r} is not supported; use 0 or 1"
        )
    platform = (get("expo-platform") or "").strip().lower()
    if not platform:
        raise BadRequest("missing expo-platform header (ios or android)", code="missing_platform")
    if platform not in PLATFORMS:
        raise BadRequest(f"expo-platform must be ios or android, got {platform[:40]!r}", code="invalid_platform")
    runtime_version = (get("expo-runtime-version") or "").strip()
    if not runtime_version:
        raise BadRequest("missing expo-runtime-version header", code="missing_runtime_version")
    if len(runtime_version) > 255:
        raise BadRequest("expo-runtime-version is longer than 255 characters", code="invalid_header")
    channel = (get("expo-channel-name") or "").strip() or default_channel
    client_id = (get("eas-client-id") or "").strip() or None
    if client_id is not None and len(client_id) > 64:
        raise BadRequest("eas-client-id is longer than 64 characters", code="invalid_header")
    failed: list[str] = []
    raw_failed = get("expo-recent-failed-update-ids")
    if raw_failed:
        try:
            items = parse_list(raw_failed)
        except SfvError as exc:
            raise BadRequest(
                f"expo-recent-failed-update-ids is not an SFV list: {exc}", code="invalid_header"
            ) from None
        for item in items[:10]:
            if not isinstance(item, str) or not _UUID.match(item):
                raise BadRequest("expo-recent-failed-update-ids must list quoted UUIDs", code="invalid_header")
            failed.append(item.lower())
    fatal = get("expo-fatal-error")
    expects_signature = False
    keyid: str | None = None
    raw_expect = get("expo-expect-signature")
    if raw_expect is not None:
        expects_signature = True
        keyid = _expected_keyid(raw_expect)
    return ManifestRequest(
        protocol=protocol,
        platform=platform,
        runtime_version=runtime_version,
        channel=channel,
        client_id=client_id,
        current_update_id=_uuid_header(headers, "expo-current-update-id"),
        embedded_update_id=_uuid_header(headers, "expo-embedded-update-id"),
        failed_update_ids=tuple(failed),
        fatal_error=fatal[:MAX_FATAL_ERROR] if fatal else None,
        expects_signature=expects_signature,
        expected_keyid=keyid,
        accept=get("accept") or "",
        app_version=_app_version(get),
    )


@lru_cache(maxsize=256)
def _expected_keyid(raw: str) -> str | None:
    """Every install of an app sends the same value: parse it once."""
    try:
        expect = parse_dictionary(raw)
    except SfvError as exc:
        raise BadRequest(f"expo-expect-signature is not an SFV dictionary: {exc}", code="invalid_header") from None
    alg = expect.get("alg")
    if isinstance(alg, str) and alg != "rsa-v1_5-sha256":
        raise BadRequest(f"unsupported signature algorithm {alg!r}; this server signs with rsa-v1_5-sha256")
    keyid = expect.get("keyid")
    return keyid if isinstance(keyid, str) else None


def _app_version(get: Callable[[str], str | None]) -> str | None:
    """The native app version, for updates with a minimum: a ``shipyard-app-version`` request
    header (set in ``updates.requestHeaders``) or ``app-version`` in Expo-Extra-Params."""
    value = get("shipyard-app-version")
    if value:
        return str(value).strip()[:50]
    extra = get("expo-extra-params")
    if extra:
        try:
            params = parse_dictionary(extra)
        except SfvError:
            return None
        version = params.get("app-version")
        if isinstance(version, str):
            return version[:50]
    return None


# --- negotiation ------------------------------------------------------------------------------

MULTIPART = "multipart/mixed"
EXPO_JSON = "application/expo+json"
JSON = "application/json"


@lru_cache(maxsize=512)
def negotiate(accept: str, protocol: int) -> str | None:
    """Pick the response type from ``accept`` (q-values honoured); None means 406.

    Without preferences, v1 gets multipart (it can carry directives) and v0 gets JSON.
    """
    preferred = [MULTIPART, EXPO_JSON, JSON] if protocol >= 1 else [EXPO_JSON, JSON, MULTIPART]
    if not accept.strip():
        return preferred[0]
    weights: dict[str, float] = {}
    for index, raw in enumerate(accept.split(",")):
        parts = [p.strip() for p in raw.split(";")]
        media = parts[0].lower()
        q = 1.0
        for param in parts[1:]:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        for candidate in preferred:
            if media == candidate or media == "*/*" or (media.endswith("/*") and candidate.startswith(media[:-1])):
                # Exact matches beat wildcards at equal q; the client's order is not a preference.
                score = q + (0.0001 if media == candidate else 0.0) - index * 1e-7
                weights[candidate] = max(weights.get(candidate, -1.0), score if q > 0 else -1.0)
    best = max(preferred, key=lambda c: (weights.get(c, -1.0), -preferred.index(c)))
    return best if weights.get(best, -1.0) > 0 else None


# --- response ---------------------------------------------------------------------------------


def iso_ms(value: datetime) -> str:
    """``2026-01-01T12:00:00.123Z``: the createdAt / commitTime format clients parse."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Part:
    name: str
    body: bytes
    content_type: str = "application/json"
    signature: str | None = None  # the expo-signature header value


def multipart_body(parts: list[Part], boundary: str) -> bytes:
    """RFC 2046 multipart/mixed with ``content-disposition: inline; name=…`` per part."""
    chunks: list[bytes] = []
    for part in parts:
        head = [
            f"--{boundary}",
            f"content-type: {part.content_type}",
            f'content-disposition: inline; name="{part.name}"',
        ]
        if part.signature is not None:
            head.append(f"expo-signature: {part.signature}")
        chunks.append(("\r\n".join(head) + "\r\n\r\n").encode() + part.body + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)
