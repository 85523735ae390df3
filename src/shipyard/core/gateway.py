"""The gateway every request passes through (pure ASGI, cheap on the hot path).

Layers, outermost first::

    Gateway          request id (accepted or generated, echoed), access log line, metrics,
                     a JSON 500 for anything unhandled
    CORS             Starlette's CORSMiddleware, only for client-facing routes with an Origin
    Guard            rate limits (per key and per IP), body size limit (413), decoding of
                     compressed bodies with a decompressed-size cap; Content-Encoding stripped
    the app

Routes fall into classes decided once per request from the path (one regex match):

* ``admin`` — ``/api/v1/…``: per-key and per-IP limits, never CORS.
* ``client`` — routes from features' public routers (ingest, manifests, flags…): CORS;
  the gateway applies no rate limit by default because each protocol enforces its own
  quotas (Sentry's ``X-Sentry-Rate-Limits``, per-project event quotas…) and thousands of
  app users share one carrier-NAT address. ``rate_limit_client_per_*`` turn them on.
* ``system`` — ``/healthz``, ``/readyz``, ``/metrics``: CORS, never limited (a probe that
  gets a 429 takes a healthy node out of its load balancer).
* ``web`` — the dashboard, the API docs and unknown paths: per-key (session) and per-IP.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from limits import RateLimitItem, parse
from prometheus_client import Counter, Histogram
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.core.bodies import decode_body
from shipyard.core.db import is_outage
from shipyard.core.errors import ApiError, error_body
from shipyard.core.logs import AccessLog
from shipyard.core.routes import RouteInfo
from shipyard.settings import Settings

HTTP_REQUESTS = Counter(
    "shipyard_http_requests_total",
    "HTTP requests answered, by route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "shipyard_http_request_duration_seconds",
    "Time from request start to the end of the response body, by route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RATE_LIMITED = Counter("shipyard_http_rate_limited_total", "Requests refused with 429 by the gateway", ["scope"])

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
SYSTEM_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
UNMATCHED = "<unmatched>"
# Compressed bodies smaller than this are decoded inline; larger ones in a thread.
_INLINE_DECODE = 64 * 1024


@dataclass(frozen=True)
class RouteClass:
    name: str
    cors: bool
    ip_rate: RateLimitItem | None
    key_rate: RateLimitItem | None


def _rate(value: str) -> RateLimitItem | None:
    return parse(value) if value.strip() else None


class RouteTable:
    """Classifies a request path into a :class:`RouteClass` with one compiled regex."""

    def __init__(self, settings: Settings, client_routes: Iterable[RouteInfo], all_routes: Iterable[RouteInfo]) -> None:
        # Metrics and logs label requests by full route template ("/api/v1/projects/{project}").
        self._templates = {id(r.original): r.path for r in all_routes}
        patterns = []
        for route in client_routes:
            regex = route.path_regex
            if regex is not None:
                # Named groups may repeat across routes; an alternation needs them anonymous.
                patterns.append(re.sub(r"\(\?P<[^>]+>", "(?:", regex.pattern))
        self._client = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self.admin = RouteClass("admin", False, _rate(settings.rate_limit_per_ip), _rate(settings.rate_limit_per_key))
        self.client = RouteClass(
            "client", True, _rate(settings.rate_limit_client_per_ip), _rate(settings.rate_limit_client_per_key)
        )
        self.system = RouteClass("system", True, None, None)
        self.web = RouteClass("web", False, _rate(settings.rate_limit_per_ip), _rate(settings.rate_limit_per_key))

    def template(self, route: Any) -> str:
        if route is None:
            return UNMATCHED
        return self._templates.get(id(route)) or getattr(route, "path", None) or UNMATCHED

    def classify(self, path: str) -> RouteClass:
        if path.startswith("/api/v1/") or path == "/api/v1":
            return self.admin
        if path in SYSTEM_PATHS:
            return self.system
        if self._client is not None and self._client.match(path):
            return self.client
        if path in ("/api/openapi.json", "/api/docs"):
            return RouteClass("web", True, self.web.ip_rate, None)
        return self.web


_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    """32 hex digits, unique per process by a counter and across processes by a random
    prefix: ids only need to be unique, and a UUID4 cost a random-number syscall per request."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):016x}"


async def send_json_error(
    send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    body = orjson.dumps(error_body(code, message))
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw.extend((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Gateway:
    """Outermost layer: request id, access log, metrics, last-resort JSON 500."""

    def __init__(self, app: ASGIApp, *, settings: Settings, routes: RouteTable) -> None:
        self.routes = routes
        self.access_log = AccessLog(settings.log_format) if settings.access_log else None
        self.errors = structlog.get_logger("shipyard.errors").bind()
        guard = Guard(app, settings=settings)
        self.inner: ASGIApp = guard
        self.cors = CORSMiddleware(
            guard,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "X-Sentry-Rate-Limits",
            ],
            max_age=600,
        )
        self._metric_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        origin = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name == b"origin":
                origin = True
        if request_id is None:
            request_id = new_request_id()
        route_class = self.routes.classify(scope["path"])
        scope.setdefault("state", {})["request_id"] = request_id
        scope["shipyard.route_class"] = route_class
        rid_header = (b"x-request-id", request_id.encode())
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            target = self.cors if origin and route_class.cors else self.inner
            await target(scope, receive, send_wrapper)
        except Exception as exc:  # last resort: never a bare 500 page, never a silent one
            if is_outage(exc):
                self.errors.warning("database unavailable", path=scope["path"], error=str(exc)[:300])
                if not response_started:
                    await send_json_error(
                        send_wrapper,
                        503,
                        "unavailable",
                        "the database is unavailable; retry shortly",
                        {"Retry-After": "5"},
                    )
            else:
                self.errors.exception("unhandled error", method=scope["method"], path=scope["path"])
                if not response_started:
                    await send_json_error(
                        send_wrapper, 500, "internal_error", f"internal error; quote request id {request_id}"
                    )
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
            self._observe(scope, status, time.perf_counter() - started, request_id)

    def _observe(self, scope: Scope, status: int, elapsed: float, request_id: str) -> None:
        template = self.routes.template(scope.get("route"))
        method = scope["method"]
        key = (method, template, status)
        children = self._metric_children.get(key)
        if children is None:
            children = (HTTP_REQUESTS.labels(method, template, str(status)), HTTP_LATENCY.labels(method, template))
            if len(self._metric_children) < 10_000:
                self._metric_children[key] = children
        children[0].inc()
        children[1].observe(elapsed)
        if self.access_log is not None:
            client = scope.get("client")
            self.access_log.write(
                {
                    "method": method,
                    "route": template,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "request_id": request_id,
                    "ip": client[0] if client else None,
                }
            )


class Guard:
    """Rate limits, then the body limit and decompression, in front of the app."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.max_decoded = settings.max_decompressed_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route_class: RouteClass | None = scope.get("shipyard.route_class")
        content_length = -1
        encoding: str | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                content_length = int(value) if value.isdigit() else -2
            elif name == b"content-encoding":
                encoding = value.decode("latin-1").strip().lower()
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if route_class is not None and (route_class.ip_rate or route_class.key_rate):
            limit_headers = await self._check_limits(scope, route_class, send)
            if limit_headers is None:
                return  # answered 429
            if limit_headers:
                send = _with_headers(send, limit_headers)
        if content_length == -2:
            await send_json_error(send, 400, "bad_request", "Content-Length is not a number")
            return
        if content_length > self.max_body:
            await send_json_error(send, 413, "payload_too_large", f"request body is larger than {self.max_body} bytes")
            return
        if encoding and encoding != "identity":
            await self._decoded(scope, receive, send, encoding)
            return
        if chunked:  # no Content-Length to check up front: count as it arrives
            receive = self._capped(receive)
        await self.app(scope, receive, send)

    # --- bodies ---------------------------------------------------------------------------------

    def _capped(self, receive: Receive) -> Receive:
        """A receive that refuses to hand over more than ``max_body`` bytes (bodies without a length)."""
        seen = 0
        limit = self.max_body

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    from shipyard.core.bodies import BodyTooLarge

                    raise BodyTooLarge(f"request body is larger than {limit} bytes")
            return message

        return capped

    async def _decoded(self, scope: Scope, receive: Receive, send: Send, encoding: str) -> None:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await send_json_error(
                    send, 413, "payload_too_large", f"request body is larger than {self.max_body} bytes"
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            if len(raw) > _INLINE_DECODE:
                body = await asyncio.to_thread(decode_body, raw, encoding, limit=self.max_decoded)
            else:
                body = decode_body(raw, encoding, limit=self.max_decoded)
        except ApiError as exc:
            await send_json_error(send, exc.status, exc.code, exc.message)
            return
        # Routes see a plain body: no Content-Encoding, the decoded length.
        scope["headers"] = [
            (k, v)
            for k, v in scope["headers"]
            if k not in (b"content-encoding", b"content-length", b"transfer-encoding")
        ] + [(b"content-length", str(len(body)).encode())]
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    # --- rate limits ----------------------------------------------------------------------------

    async def _check_limits(
        self, scope: Scope, route_class: RouteClass, send: Send
    ) -> list[tuple[bytes, bytes]] | None:
        """Spend from the key's and the IP's budgets; None when a 429 was sent."""
        from shipyard.core.ratelimit import rate_limiter

        app = scope.get("app")
        ctx = getattr(getattr(app, "state", None), "ctx", None)
        if ctx is None:
            return []
        limiter = rate_limiter(ctx)
        checks: list[tuple[str, RateLimitItem, str]] = []
        if route_class.key_rate is not None:
            key = request_key(scope)
            if key is not None:
                checks.append(("key", route_class.key_rate, key))
        if route_class.ip_rate is not None:
            client = scope.get("client")
            if client:
                checks.append(("ip", route_class.ip_rate, client[0]))
        tightest = None
        for kind, rate, identity in checks:
            try:
                decision = await limiter.hit(rate, "gw", route_class.name, kind, identity)
            except Exception:  # a Redis outage must not take the API down: fail open
                structlog.get_logger("shipyard.ratelimit").warning("rate limiter unavailable", exc_info=True)
                return []
            if not decision.allowed:
                RATE_LIMITED.labels(kind).inc()
                await send_json_error(
                    send,
                    429,
                    "rate_limited",
                    f"too many requests for this {'API key' if kind == 'key' else 'address'}; "
                    f"retry in {decision.reset_after} s",
                    decision.headers(),
                )
                return None
            if tightest is None or decision.remaining < tightest.remaining:
                tightest = decision
        if tightest is None:
            return []
        return [(k.lower().encode(), v.encode()) for k, v in tightest.headers().items()]


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return wrapped


def request_key(scope: Scope) -> str | None:
    """The API key a request carries, hashed (raw keys never reach Redis or logs).

    Bearer tokens (secret keys, OFREP public keys), HTTP Basic user names (Segment write
    keys), Sentry's ``sentry_key`` (``X-Sentry-Auth``, ``Authorization: Sentry …`` or the
    query string), and the dashboard session cookie.
    """
    raw: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, rest = value.partition(b" ")
            scheme = scheme.lower()
            if scheme == b"bearer":
                raw = rest.strip()
            elif scheme == b"basic":
                try:
                    raw = base64.b64decode(rest.strip(), validate=True).partition(b":")[0]
                except ValueError:
                    raw = rest.strip()
            elif scheme == b"sentry" or scheme == b"dsn":
                raw = _sentry_key(rest)
        elif name == b"x-sentry-auth":
            raw = _sentry_key(value)
        elif name == b"cookie" and raw is None:
            for part in value.split(b";"):
                k, _, v = part.strip().partition(b"=")
                if k == b"shipyard_session" and v:
                    raw = b"session:" + v
        if raw:
            break
    if not raw:
        query = scope.get("query_string", b"")
        if b"sentry_key=" in query:
            raw = query.split(b"sentry_key=", 1)[1].split(b"&", 1)[0]
    if not raw:
        return None
    return hashlib.sha256(raw).hexdigest()[:32]


def _sentry_key(value: bytes) -> bytes | None:
    for part in value.replace(b"Sentry ", b"").split(b","):
        k, _, v = part.strip().partition(b"=")
        if k == b"sentry_key":
            return v.strip()
    return None
