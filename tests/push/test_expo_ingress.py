"""The Expo-compatible ingress: Expo's request and answer formats, preferences applied on
the way, and the real ``exponent_server_sdk`` PushClient pointed at a Shipyard server."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from click.testing import CliRunner
from exponent_server_sdk import DeviceNotRegisteredError, PushClient, PushMessage

from shipyard.core.context import Context
from shipyard.push.cli import push as push_cli
from tests.conftest import LiveServer
from tests.fakes.server import serve_app
from tests.push.conftest import admin, expo_token, register, run_jobs
from tests.push.fakes import FakeExpo


def _headers(project: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {project['secret_key']}", "content-type": "application/json", **extra}


async def test_expo_formats_and_errors(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    url = "/--/api/v2/push/send"
    r = await client.post(url, json={"to": expo_token("x")})
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    r = await client.post(
        url, json={"to": expo_token("x")}, headers={"Authorization": f"Bearer {project['public_key']}"}
    )
    assert r.status_code == 401
    too_many = [{"to": [expo_token(i) for i in range(60)]}, {"to": [expo_token(i) for i in range(60, 101)]}]
    r = await client.post(url, json=too_many, headers=_headers(project))
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "PUSH_TOO_MANY_NOTIFICATIONS"
    r = await client.post(url, json={"title": "no to"}, headers=_headers(project))
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "API_ERROR"
    r = await client.post(url, content=b"{nope", headers=_headers(project))
    assert r.status_code == 400 and "errors" in r.json()

    # A single message object; gzip like the Node SDK; one invalid token answered per ticket.
    body = [{"to": [expo_token("g1"), "not-a-token"], "title": "Hello", "data": {"a": 1}}]
    r = await client.post(
        url, content=gzip.compress(json.dumps(body).encode()), headers=_headers(project, **{"content-encoding": "gzip"})
    )
    assert r.status_code == 200, r.text
    tickets = r.json()["data"]
    assert tickets[0]["status"] == "ok" and tickets[1]["details"]["error"] == "DeviceNotRegistered"
    await run_jobs(ctx)
    assert [m["to"] for m in expo.received] == [expo_token("g1")]
    r = await client.post(
        "/--/api/v2/push/getReceipts", json={"ids": [tickets[0]["id"], "unknown"]}, headers=_headers(project)
    )
    assert r.json() == {"data": {tickets[0]["id"]: {"status": "ok"}}}
    r = await client.post("/--/api/v2/push/getReceipts", json={"ids": ["x"] * 1001}, headers=_headers(project))
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "PUSH_TOO_MANY_RECEIPTS"


async def test_ingress_applies_preferences(
    ctx: Context, client: httpx.AsyncClient, project: dict[str, Any], expo: FakeExpo
) -> None:
    await admin(client, project, "PUT", "/categories/marketing", json={})
    await register(client, project, expo_token("m"), user_id="opted-out")
    await admin(client, project, "PUT", "/users/opted-out/preferences", json={"categories": {"marketing": False}})
    r = await client.post(
        "/--/api/v2/push/send",
        json=[
            {"to": expo_token("m"), "title": "Sale!", "categoryId": "marketing"},
            {"to": expo_token("m"), "title": "Hi"},
        ],
        headers=_headers(project),
    )
    ids = [t["id"] for t in r.json()["data"]]
    await run_jobs(ctx)
    assert [m["title"] for m in expo.received] == ["Hi"]
    r = await client.post("/--/api/v2/push/getReceipts", json={"ids": ids}, headers=_headers(project))
    receipts = r.json()["data"]
    assert receipts[ids[0]]["status"] == "error" and "turned off" in receipts[ids[0]]["message"]
    assert receipts[ids[1]] == {"status": "ok"}


@pytest.fixture(scope="module")
def live_push(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, FakeExpo]]:
    """A real Shipyard process relaying to a fake Expo (shared by the tests below)."""
    fake = FakeExpo()
    with serve_app(fake.app) as expo_url:
        server = LiveServer(
            tmp_path_factory.mktemp("push-live") / "live",
            {
                "SHIPYARD_SECRET_KEY": "live-" + uuid.uuid4().hex,
                "SHIPYARD_ALLOW_PRIVATE_OUTBOUND": "true",
                "SHIPYARD_JOB_POLL_INTERVAL": "0.1",
                "SHIPYARD_PUSH_EXPO_URL": expo_url,
                "SHIPYARD_PUSH_RECEIPT_DELAY_SECONDS": "0",
            },
        )
        server.data_dir.mkdir(parents=True)
        server.init()
        server.start()
        try:
            yield server, fake
        finally:
            server.stop()


def test_real_server_with_the_python_sdk_and_the_cli(live_push: tuple[LiveServer, FakeExpo]) -> None:
    """One real server process (started once: it takes seconds) for both client proofs."""
    check_exponent_server_sdk(*live_push)
    check_cli(*live_push)


def check_exponent_server_sdk(server: LiveServer, fake: FakeExpo) -> None:
    """The unchanged Python SDK, pointed at a real Shipyard process relaying to (fake) Expo."""
    creds = server.creds
    dead = expo_token("uninstalled")
    fake.receipt_errors[dead] = "DeviceNotRegistered"
    session = requests.Session()
    session.headers.update(
        {
            "Authorization": f"Bearer {creds['secret_key']}",
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "content-type": "application/json",
        }
    )
    push = PushClient(host=server.url, session=session)
    tokens = [expo_token(f"sdk{i}") for i in range(3)] + [dead]
    tickets = push.publish_multiple(
        [PushMessage(to=t, title="Plant care", body="Water Blue Dream", data={"plantId": "p1"}) for t in tokens]
    )
    for ticket in tickets:
        ticket.validate_response()  # all accepted

    deadline = time.monotonic() + 30
    receipts: list[Any] = []
    while time.monotonic() < deadline:
        receipts = push.check_receipts_multiple(tickets)
        if len(receipts) == len(tickets):
            break
        time.sleep(0.2)
    assert len(receipts) == 4, receipts
    by_id = {r.id: r for r in receipts}
    for ticket, token in zip(tickets, tokens, strict=True):
        receipt = by_id[ticket.id]
        if token == dead:
            with pytest.raises(DeviceNotRegisteredError):
                receipt.validate_response()
        else:
            receipt.validate_response()
    sdk_received = [m for m in fake.received if m["to"] in tokens]
    assert sorted(m["to"] for m in sdk_received) == sorted(tokens)
    assert all(m["data"]["plantId"] == "p1" for m in sdk_received)
    # The same token again is now answered DeviceNotRegistered right away.
    again = push.publish(PushMessage(to=dead, title="again"))
    assert again.details == {"error": "DeviceNotRegistered", "expoPushToken": dead}


def check_cli(server: LiveServer, fake: FakeExpo) -> None:
    """`shipyard push send/list/cancel` with a secret key against the same server."""
    key = server.creds["secret_key"]
    project = str(server.creds["project_id"])
    r = httpx.post(
        f"{server.url}/push/v1/devices",
        json={"token": expo_token("cli"), "platform": "android", "user_id": "cli-user"},
        headers={"X-Shipyard-Key": server.creds["public_key"]},
    )
    assert r.status_code == 200
    runner = CliRunner()
    base = ["--project", project, "--server", server.url, "--key", key]
    result = runner.invoke(
        push_cli,
        [
            "send",
            *base,
            "--user",
            "cli-user",
            "--title",
            "From the CLI",
            "--data",
            '{"x": 1}',
            "--idempotency-key",
            "cli-1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output
    again = runner.invoke(
        push_cli,
        [
            "send",
            *base,
            "--user",
            "cli-user",
            "--title",
            "From the CLI",
            "--data",
            '{"x": 1}',
            "--idempotency-key",
            "cli-1",
        ],
    )
    assert "already accepted" in again.output
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(m.get("title") == "From the CLI" for m in fake.received):
        time.sleep(0.1)
    assert [m["to"] for m in fake.received if m.get("title") == "From the CLI"] == [expo_token("cli")]

    result = runner.invoke(
        push_cli,
        [
            "send",
            *base,
            "--user",
            "cli-user",
            "--title",
            "Daily",
            "--recurring",
            "daily",
            "--time",
            "09:00",
            "--timezone",
            "user",
        ],
    )
    assert result.exit_code == 0, result.output
    send_id = result.output.split()[1]
    listed = runner.invoke(push_cli, ["list", *base, "--status", "recurring"])
    assert send_id in listed.output and "recurring" in listed.output
    cancelled = runner.invoke(push_cli, ["cancel", *base, send_id])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    bad = runner.invoke(push_cli, ["send", *base, "--title", "nobody"])
    assert bad.exit_code != 0 and "recipients" in bad.output
    wrong_key = runner.invoke(
        push_cli, ["send", "--project", project, "--server", server.url, "--key", "sk_wrong", "--all", "--title", "x"]
    )
    assert wrong_key.exit_code != 0 and "401" in wrong_key.output
