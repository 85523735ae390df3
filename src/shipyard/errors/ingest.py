"""Sentry ingest: authenticate, bound, validate, apply quotas, store durably, answer.

The request path does only what the answer depends on. It parses the envelope (so a
malformed one gets a 400 that says what is wrong), checks the project's quotas (so an
over-quota client gets a 429 it can back off from), seals the envelope and hands it to the
group committer. The 200 goes out once that row is committed. Scrubbing, grouping and
aggregation happen later in the digester (:mod:`shipyard.errors.digest`).
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import Request
from limits import RateLimitItem
from limits import parse as parse_rate
from prometheus_client import Counter

from shipyard.core import projects
from shipyard.core.batching import group_committer
from shipyard.core.bodies import BodyTooLarge, decode_body
from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.deps import client_project
from shipyard.core.errors import ApiError, BadRequest
from shipyard.core.ratelimit import rate_limiter
from shipyard.errors import digest, envelope, outcomes
from shipyard.errors.config import ProjectConfig, project_config
from shipyard.errors.models import envelopes
from shipyard.errors.sealing import Sealer

ACCEPTED = Counter("shipyard_errors_envelopes_accepted_total", "Sentry envelopes stored for processing")
REJECTED = Counter("shipyard_errors_envelopes_rejected_total", "Sentry requests refused, by status", ["status"])
ITEMS = Counter("shipyard_errors_items_total", "Envelope items accepted, by item type", ["type"])

# Categories an event counts against, and the quotas that apply to each group.
EVENT_CATEGORIES = ("error", "default")
QUOTA_CATEGORIES = {"error": "events", "default": "events", "transaction": "transactions"}


class IngestForbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, "forbidden", message)


@dataclass
class IngestResult:
    event_id: str | None
    rate_limits: str | None = None  # X-Sentry-Rate-Limits value, when some categories are limited
    limited: bool = False  # the event/transaction itself was refused (answer 429)
    retry_after: int = 0
    items: list[str] = field(default_factory=list)


# --- authentication --------------------------------------------------------------------------


def _auth_header_key(value: str | None) -> str | None:
    """``Sentry sentry_key=…, sentry_version=7, …`` → the key."""
    if not value:
        return None
    scheme, _, params = value.strip().partition(" ")
    if scheme.lower() != "sentry":
        return None
    for part in params.split(","):
        name, _, val = part.strip().partition("=")
        if name.strip() == "sentry_key":
            return val.strip().strip('"') or None
    return None


def request_key(request: Request) -> str | None:
    """The public key from the query string or ``X-Sentry-Auth`` (or ``Authorization: Sentry …``)."""
    keys = {
        k
        for k in (
            request.query_params.get("sentry_key"),
            _auth_header_key(request.headers.get("x-sentry-auth")),
            _auth_header_key(request.headers.get("authorization")),
        )
        if k
    }
    if len(keys) > 1:
        raise IngestForbidden("the sentry_key in the query string and the X-Sentry-Auth header differ")
    return keys.pop() if keys else None


def dsn_key(dsn: Any) -> str | None:
    if not isinstance(dsn, str) or not dsn:
        return None
    try:
        return urlsplit(dsn).username or None
    except ValueError:
        return None


async def resolve_project(ctx: Context, project_id: str, public_key: str | None) -> projects.Project:
    """The project behind the key, which must be the project named in the URL."""
    if not project_id.isdecimal():
        raise BadRequest(f"project id {project_id[:40]!r} in the URL must be numeric (the last part of the DSN)")
    if not public_key:
        raise IngestForbidden(
            "missing authentication: send sentry_key in the query string, the X-Sentry-Auth header "
            "or the envelope's dsn header"
        )
    cache: dict[str, tuple[float, projects.Project]] = ctx.extras.setdefault("errors_key_cache", {})
    now = time.monotonic()
    hit = cache.get(public_key)
    if hit is None or hit[0] < now:
        try:
            project = await client_project(ctx, public_key)
        except ApiError:
            cache.pop(public_key, None)
            raise IngestForbidden("unknown or revoked DSN key") from None
        if len(cache) > 10_000:
            cache.clear()
        hit = cache[public_key] = (now + 5.0, project)
    project = hit[1]
    if project.id != int(project_id):
        raise IngestForbidden(f"this DSN key belongs to project {project.id}, not {project_id}")
    return project


# --- bodies ---------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdecimal() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes is larger than the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is larger than the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def limits_of(ctx: Context) -> envelope.Limits:
    cached = ctx.extras.get("errors_limits")
    if cached is None:
        s = ctx.settings
        cached = ctx.extras["errors_limits"] = envelope.Limits(
            event_bytes=s.errors_max_event_bytes, attachment_bytes=s.errors_max_attachment_bytes
        )
    return cached


def sealer(ctx: Context) -> Sealer:
    existing = ctx.extras.get("errors_sealer")
    if existing is None:
        existing = ctx.extras["errors_sealer"] = Sealer(
            ctx.settings.resolved_secret_key, ctx.settings.previous_secret_keys
        )
    return existing


def parse_envelope(ctx: Context, data: bytes) -> envelope.Envelope:
    try:
        return envelope.parse(data, limits_of(ctx))
    except envelope.EnvelopeError as exc:
        if exc.too_large:
            raise BodyTooLarge(exc.message) from None
        raise BadRequest(f"invalid envelope: {exc.message}", code="invalid_envelope") from None


# --- quotas ---------------------------------------------------------------------------------------


def _quota_rates(cfg: ProjectConfig, group: str) -> list[RateLimitItem]:
    if group == "events":
        pairs = ((cfg.events_per_minute, "minute"), (cfg.events_per_hour, "hour"))
    else:
        pairs = ((cfg.transactions_per_minute, "minute"), (cfg.transactions_per_hour, "hour"))
    return [parse_rate(f"{amount}/{unit}") for amount, unit in pairs if amount > 0]


@dataclass
class _ProjectIngest:
    """A project's ingest configuration and parsed quota rates, derived once per project object."""

    project: projects.Project
    cfg: ProjectConfig
    rates: dict[str, list[RateLimitItem]]


def ingest_config(ctx: Context, project: projects.Project) -> tuple[ProjectConfig, dict[str, list[RateLimitItem]]]:
    """The project's config and quota rates. Building them costs more than the rest of the
    quota check (a profile showed 7 % of an ingest request), and the project object is cached
    (see :func:`resolve_project`): a new object means the settings may have changed."""
    cache: dict[int, _ProjectIngest] = ctx.extras.setdefault("errors_ingest_config", {})
    hit = cache.get(project.id)
    if hit is None or hit.project is not project:
        cfg = project_config(ctx.settings, project.settings)
        rates = {group: _quota_rates(cfg, group) for group in ("events", "transactions")}
        if len(cache) > 10_000:
            cache.clear()
        hit = cache[project.id] = _ProjectIngest(project, cfg, rates)
    return hit.cfg, hit.rates


async def _over_quota(ctx: Context, project_id: int, rates: list[RateLimitItem], group: str) -> int:
    """0 when the item fits the project's quotas, else the whole seconds until it would."""
    limiter = rate_limiter(ctx)
    for rate in rates:
        seconds = await limiter.seconds_until_fits(rate, "errors-quota", str(project_id), group)
        if seconds:
            return seconds
    return 0


def _rate_limit_header(limited: dict[str, int]) -> str:
    """``<seconds>:<cat;cat>:project:<reason>``; integer seconds (sentry-python skips floats)."""
    by_seconds: dict[int, list[str]] = {}
    for category, seconds in limited.items():
        by_seconds.setdefault(seconds, []).append(category)
    return ", ".join(
        f"{seconds}:{';'.join(sorted(cats))}:project:quota_exceeded" for seconds, cats in sorted(by_seconds.items())
    )


# --- the ingest path ------------------------------------------------------------------------------


async def ingest(
    ctx: Context, project: projects.Project, parsed: envelope.Envelope, client_ip: str | None
) -> IngestResult:
    cfg, rates = ingest_config(ctx, project)
    event = parsed.event_item()
    result = IngestResult(event_id=parsed.event_id)
    keep = parsed.items
    if event is not None:
        category = event.category or "error"
        group = QUOTA_CATEGORIES.get(category, "events")
        retry_after = await _over_quota(ctx, project.id, rates[group], group)
        if retry_after:
            limited_categories = list(EVENT_CATEGORIES) if group == "events" else ["transaction"]
            result.limited = True
            result.retry_after = retry_after
            result.rate_limits = _rate_limit_header({c: retry_after for c in limited_categories})
            drop = outcomes.buffer(ctx)
            drop.record(project.id, "rate_limited", "project_quota", category)
            # The event's attachments and feedback go with it.
            dependent = {"attachment", "user_report", "feedback"}
            for item in parsed.items:
                if item is not event and item.type in dependent:
                    drop.record(project.id, "rate_limited", "project_quota", item.category or item.type)
            keep = [i for i in parsed.items if i is not event and i.type not in dependent]
    stored = [(i.headers, i.payload) for i in keep if i.type in envelope.SUPPORTED_TYPES]
    if not stored:
        return result
    body = envelope.serialize(parsed.headers, stored)
    row = {
        "project_id": project.id,
        "received_at": utcnow(),
        "event_id": parsed.event_id,
        "client_ip": client_ip if cfg.store_ip else None,
        "body": sealer(ctx).seal(body),
        "claimed_by": None,
        "claimed_until": None,
        "attempts": 0,
        "failed": False,
        "error": None,
    }
    await group_committer(ctx, "errors-ingest").insert(envelopes, row)
    ACCEPTED.inc()
    for item_headers, _payload in stored:
        ITEMS.labels(str(item_headers["type"])).inc()
    result.items = [str(h["type"]) for h, _ in stored]
    digest.kick(ctx)
    return result


# --- the legacy store endpoint --------------------------------------------------------------------


def decode_store_body(data: bytes, limit: int) -> dict[str, Any]:
    """A store body is event JSON; very old SDKs sent it base64-encoded and zlib-compressed."""
    stripped = data.lstrip()
    if not stripped.startswith(b"{"):
        try:
            stripped = base64.b64decode(stripped, validate=False)
            stripped = decode_body(stripped, "deflate", limit=limit) if stripped[:1] != b"{" else stripped
        except (binascii.Error, ValueError, zlib.error):
            raise BadRequest("store body is neither JSON nor base64-encoded zlib JSON", code="invalid_event") from None
    try:
        event = orjson.loads(stripped)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"store body is not valid JSON: {exc}", code="invalid_event") from None
    if not isinstance(event, dict):
        raise BadRequest("store body must be a JSON object (one event)", code="invalid_event")
    return event


def store_as_envelope(ctx: Context, event: dict[str, Any]) -> envelope.Envelope:
    """Wrap a legacy store event in an envelope so that one pipeline handles both endpoints."""
    if event.get("event_id") is None:
        event["event_id"] = uuid.uuid4().hex
    try:
        event_id = envelope.normalize_event_id(event["event_id"], "event")
    except envelope.EnvelopeError as exc:
        raise BadRequest(exc.message, code="invalid_event") from None
    item_type = "transaction" if event.get("type") == "transaction" else "event"
    payload = orjson.dumps(event)
    return parse_envelope(ctx, envelope.serialize({"event_id": event_id}, [({"type": item_type}, payload)]))
