"""Fuzzing the envelope parser and the whole ingest pipeline with hypothesis.

Random bytes, truncated envelopes, wrong lengths, mangled headers, random JSON payloads of
every item type and bad compressed bodies: the endpoint answers 200, 400, 413 or 415, never
a 5xx; and everything it accepted is processed by the digester without a failed envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import zlib
from pathlib import Path
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipyard.app import create_app
from shipyard.core import projects
from shipyard.errors import envelope as envelope_mod
from shipyard.errors import service
from tests.conftest import make_ctx, make_settings
from tests.errors.helpers import error_event, event_envelope, post, process

ITEM_TYPES = [
    "event",
    "transaction",
    "session",
    "sessions",
    "attachment",
    "user_report",
    "feedback",
    "client_report",
    "check_in",
    "profile",
    "nonsense",
]

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
# Keys an SDK really sends, so that random values land where the digester looks.
EVENT_KEYS = [
    "event_id",
    "timestamp",
    "level",
    "release",
    "environment",
    "exception",
    "message",
    "logentry",
    "fingerprint",
    "tags",
    "user",
    "contexts",
    "breadcrumbs",
    "request",
    "extra",
    "sid",
    "did",
    "init",
    "status",
    "errors",
    "started",
    "attrs",
    "aggregates",
    "spans",
    "start_timestamp",
    "measurements",
    "comments",
    "discarded_events",
    "platform",
    "transaction",
    "type",
]
payload_objects = st.dictionaries(st.sampled_from(EVENT_KEYS), json_values, max_size=10)
HEX = "0123456789abcdef"


@st.composite
def items(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(ITEM_TYPES))
    payload = draw(payload_objects)
    if kind in ("event", "transaction", "feedback") and draw(st.booleans()):
        payload["event_id"] = "".join(draw(st.lists(st.sampled_from(HEX), min_size=32, max_size=32)))
    if kind == "session" and draw(st.booleans()):
        payload["attrs"] = {"release": draw(st.text(min_size=1, max_size=20))}
    if kind == "sessions" and draw(st.booleans()):
        payload["aggregates"] = draw(st.lists(payload_objects, max_size=3))
    body = orjson.dumps(payload) if kind != "attachment" else draw(st.binary(max_size=64))
    header: dict[str, Any] = {"type": kind}
    choice = draw(st.integers(0, 3))
    if choice == 1:
        header["length"] = len(body)
    elif choice == 2:
        header["length"] = draw(st.integers(-5, len(body) + 20))
    elif choice == 3:
        header["length"] = draw(json_scalars)
    return orjson.dumps(header) + b"\n" + body


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    headers: dict[str, Any] = draw(st.dictionaries(st.sampled_from(["event_id", "dsn", "sent_at", "sdk"]), json_values))
    if draw(st.booleans()):
        headers["event_id"] = "".join(draw(st.lists(st.sampled_from(HEX), min_size=32, max_size=32)))
    body = b"\n".join([orjson.dumps(headers), *draw(st.lists(items(), max_size=4))])
    if draw(st.booleans()):
        body += b"\n"
    mangle = draw(st.integers(0, 4))
    if mangle == 1 and body:  # truncated
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif mangle == 2 and body:  # one byte changed
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    return body


bodies = st.one_of(st.binary(max_size=300), envelopes())


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_the_parser_only_ever_raises_envelope_errors(data: bytes) -> None:
    try:
        parsed = envelope_mod.parse(data)
    except envelope_mod.EnvelopeError as exc:
        assert exc.message
        return
    for item in parsed.items:
        assert isinstance(item.headers["type"], str)


class Harness:
    """An app on its own event loop, so that hypothesis (synchronous) can drive it."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.tmp_path = tmp_path

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def start(self) -> None:
        settings_ = make_settings(self.tmp_path, errors_max_envelope_bytes=256 * 1024)
        self.ctx = await make_ctx(settings_)
        self.stack.push_async_callback(self.ctx.close)
        async with self.ctx.db.transaction() as conn:
            self.project = await projects.create_project(conn, "Fuzz", public_base=self.ctx.settings.public_base)
        app = create_app(ctx=self.ctx)
        await self.stack.enter_async_context(app.router.lifespan_context(app))
        self.client = await self.stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        )

    def close(self) -> None:
        self.run(self.stack.aclose())
        self.loop.close()


def test_ingest_answers_4xx_never_5xx_and_processes_what_it_accepts(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.run(h.start())
    accepted = 0
    try:

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(bodies, st.sampled_from([None, "gzip", "deflate", "gzip-garbage"]))
        def check(body: bytes, encoding: str | None) -> None:
            nonlocal accepted
            headers = {}
            if encoding == "gzip":
                body, headers = gzip.compress(body), {"Content-Encoding": "gzip"}
            elif encoding == "deflate":
                body, headers = zlib.compress(body), {"Content-Encoding": "deflate"}
            elif encoding == "gzip-garbage":
                headers = {"Content-Encoding": "gzip"}
            response = h.run(post(h.client, h.project, body, headers=headers))
            assert response.status_code in (200, 400, 413), (response.status_code, response.text, body[:300])
            if response.status_code >= 400:
                assert response.json()["error"]["message"]
            else:
                accepted += 1

        check()
        # A compression bomb: a small gzip body that inflates far past the cap.
        bomb = gzip.compress(event_envelope(error_event()) + b"\n" * (20 * 1024 * 1024))
        response = h.run(post(h.client, h.project, bomb, headers={"Content-Encoding": "gzip"}))
        assert response.status_code == 413
        h.run(process(h.ctx))

        async def status() -> dict[str, Any]:
            async with h.ctx.db.connect() as conn:
                return await service.queue_status(conn, h.project["id"])

        queue = h.run(status())
        assert queue["failed"] == 0, queue["failures"][:3]
        assert queue["pending"] == 0
        assert accepted > 0  # the strategies do produce valid envelopes
    finally:
        h.close()


def test_an_error_message_quoting_any_unicode_still_fits_the_x_sentry_error_header(tmp_path: Path) -> None:
    """Found by the fuzz above: the message quoted a non-latin-1 length value, and putting
    it into X-Sentry-Error raised UnicodeEncodeError (a 500 instead of the 400)."""
    h = Harness(tmp_path)
    h.run(h.start())
    try:
        body = b'{}\n{"type":"event","length":"\xc4\x80"}\n{}\n'
        response = h.run(post(h.client, h.project, body))
        assert response.status_code == 400, response.text
        assert "\\u0100" in response.headers["x-sentry-error"]
        assert "Ā" in response.json()["error"]["message"]
    finally:
        h.close()
