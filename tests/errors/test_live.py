"""End to end against a real `shipyard serve` process: the real `sentry-sdk` from PyPI with
its DSN pointed at Shipyard, and a SIGKILL in the middle of a flood of envelopes."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
from sentry_sdk.utils import event_from_exception

from tests.conftest import LiveServer
from tests.errors.helpers import auth_header, error_event, event_envelope, frame

pytestmark = pytest.mark.slow


def _api(server: LiveServer) -> httpx.Client:
    creds = server.creds
    return httpx.Client(
        base_url=f"{server.url}/api/v1/projects/{creds['project_id']}/errors",
        headers={"Authorization": f"Bearer {creds['secret_key']}"},
        timeout=30,
    )


def _wait_until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.2)


# --- the real sentry-sdk ------------------------------------------------------------------------


class CartEmpty(Exception):
    pass


def checkout(cart_id: int) -> None:
    items: list[str] = []
    if not items:
        raise CartEmpty(f"cart {cart_id} is empty")


def apply_discount(total: int) -> float:
    return total / 0


def test_sentry_sdk_errors_messages_transactions_and_sessions(live_server: LiveServer) -> None:
    creds = live_server.creds
    release = "shop@1.2.0+12"
    sentry_sdk.init(
        dsn=creds["dsn"],
        release=release,
        environment="production",
        traces_sample_rate=1.0,
        default_integrations=False,
        auto_session_tracking=False,
    )
    try:
        client = sentry_sdk.get_client()
        scope = sentry_sdk.get_isolation_scope()
        # Session 1: two handled errors from the same crash site, called from different lines.
        scope.start_session(session_mode="application")
        sentry_sdk.set_user({"id": "user-1", "email": "ada@example.com"})
        try:
            checkout(1)
        except CartEmpty:
            sentry_sdk.capture_exception()
        try:
            checkout(2)  # another caller line and another number: the same issue
        except CartEmpty:
            sentry_sdk.capture_exception()
        sentry_sdk.capture_message("payment provider answered 503 after 30 s", level="warning")
        with (
            sentry_sdk.start_transaction(op="http.server", name="POST /checkout") as txn,
            txn.start_child(op="db", description="SELECT cart"),
        ):
            time.sleep(0.01)
        scope.end_session()
        # Session 2: an unhandled crash (a different call path: another issue) ends it crashed.
        scope.start_session(session_mode="application")
        sentry_sdk.set_user({"id": "user-2"})
        try:
            apply_discount(10)
        except ZeroDivisionError:
            event, hint = event_from_exception(
                sys.exc_info(), client_options=client.options, mechanism={"type": "excepthook", "handled": False}
            )
            sentry_sdk.capture_event(event, hint=hint)
        scope.end_session()
        sentry_sdk.flush(timeout=10)
    finally:
        sentry_sdk.get_client().close(timeout=10)

    api = _api(live_server)

    def issues_ready() -> list[dict[str, Any]] | None:
        data = api.get("/issues").json()["data"]
        return data if sum(i["count"] for i in data) >= 4 else None

    issues = {i["type"] or i["title"]: i for i in _wait_until(issues_ready)}
    assert set(issues) == {"CartEmpty", "ZeroDivisionError", "payment provider answered 503 after 30 s"}, issues
    cart = issues["CartEmpty"]
    assert cart["count"] == 2 and cart["user_count"] == 1
    assert cart["title"].startswith("CartEmpty: cart 1 is empty")
    assert cart["grouping"]["method"] == "stacktrace", cart["grouping"]
    assert "checkout" in str(cart["grouping"]["components"])
    crash = issues["ZeroDivisionError"]
    assert crash["is_crash"] is True and crash["count"] == 1
    assert issues["payment provider answered 503 after 30 s"]["level"] == "warning"
    # The stack trace of the latest event is there, in-app frames included.
    detail = api.get(f"/issues/{cart['id']}").json()
    frames = detail["latest_event"]["data"]["exception"]["values"][-1]["stacktrace"]["frames"]
    assert [f["function"] for f in frames if f.get("in_app")][-1] == "checkout"
    assert detail["latest_event"]["release"] == release

    transactions = _wait_until(lambda: api.get("/transactions").json()["data"])
    assert transactions[0]["name"] == "POST /checkout"
    spans = api.get(f"/transactions/{transactions[0]['event_id']}").json()["spans"]
    assert [s["op"] for s in spans] == ["db"]

    def health_ready() -> dict[str, Any] | None:
        rows = api.get("/releases").json()["data"]
        return rows[0] if rows and rows[0]["sessions"] >= 2 else None

    row = _wait_until(health_ready)
    assert row["release"] == release
    assert row["sessions"] == 2 and row["sessions_crashed"] == 1
    assert row["crash_free_sessions"] == 0.5
    assert row["users"] == 2 and row["crash_free_users"] == 0.5


# --- SIGKILL during a flood -----------------------------------------------------------------------


def test_sigkill_during_a_flood_loses_no_acknowledged_envelope(tmp_path: Path) -> None:
    server = LiveServer(
        tmp_path / "live",
        {
            "SHIPYARD_SECRET_KEY": "live-" + uuid.uuid4().hex,
            "SHIPYARD_JOB_POLL_INTERVAL": "0.1",
            "SHIPYARD_ERRORS_CLAIM_SECONDS": "1",  # a batch claimed by the killed process is retaken soon
            "SHIPYARD_ERRORS_EVENTS_PER_MINUTE": "0",
            "SHIPYARD_ERRORS_EVENTS_PER_HOUR": "0",
            "SHIPYARD_RATE_LIMIT_PER_IP": "1000000/minute",
            "SHIPYARD_RATE_LIMIT_PER_KEY": "1000000/minute",
        },
    )
    server.data_dir.mkdir(parents=True)
    creds = server.init()
    server.start()
    acknowledged: list[str] = []
    stop = threading.Event()

    async def sender(n: int) -> None:
        headers = {**auth_header(creds["public_key"]), "Content-Type": "application/x-sentry-envelope"}
        async with httpx.AsyncClient(timeout=10) as client:
            i = 0
            while not stop.is_set():
                i += 1
                event = error_event(
                    value=f"flood {n}/{i}", frames=[frame("main", "app.main"), frame(f"worker{n % 4}", "app.jobs")]
                )
                try:
                    response = await client.post(
                        f"{server.url}/api/{creds['project_id']}/envelope/",
                        content=event_envelope(event),
                        headers=headers,
                    )
                except httpx.HTTPError:
                    continue  # the server is gone: this one was never acknowledged
                if response.status_code == 200:
                    acknowledged.append(response.json()["id"])

    async def flood() -> None:
        await asyncio.gather(*(sender(n) for n in range(16)))

    thread = threading.Thread(target=lambda: asyncio.run(flood()))
    thread.start()
    try:
        _wait_until(lambda: len(acknowledged) >= 150, timeout=60)
        server.kill(signal.SIGKILL)  # mid-flood: requests in flight, a digest batch likely under way
        stop.set()
        thread.join(timeout=30)
        assert len(acknowledged) >= 150
        server.start()
        api = _api(server)
        _wait_until(lambda: api.get("/ingest").json()["pending"] == 0, timeout=120)
        assert api.get("/ingest").json()["failed"] == 0
        missing = [eid for eid in acknowledged if api.get(f"/events/{eid}").status_code != 200]
        assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged events are missing"
    finally:
        stop.set()
        thread.join(timeout=30)
        server.stop()
