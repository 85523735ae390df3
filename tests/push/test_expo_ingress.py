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
    check_rules_and_links_cli(live_push[0])


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


def check_rules_and_links_cli(server: LiveServer) -> None:
    """`shipyard push rules …` and `shipyard push links …`: what they store is what the API
    then uses (a generated link validates in the app; an event fires the rule)."""
    runner = CliRunner()
    base = ["--project", str(server.creds["project_id"]), "--server", server.url, "--key", server.creds["secret_key"]]
    admin_url = f"{server.url}/api/v1/projects/{server.creds['project_id']}/push"
    headers = {"Authorization": f"Bearer {server.creds['secret_key']}"}
    r = httpx.put(
        f"{admin_url}/templates/new_comment",
        json={"texts": {"en": {"title": "New comment", "body": "{commenter} commented"}}},
        headers=headers,
    )
    assert r.status_code == 200, r.text

    out = runner.invoke(push_cli, ["links", "routes", "create", *base, "post", "canabro://community/posts/{postId}"])
    assert out.exit_code == 0, out.output
    assert out.output == "route post saved: canabro://community/posts/{postId} (parameters: postId)\n"
    listed = runner.invoke(push_cli, ["links", "routes", "list", *base])
    assert "post" in listed.output and "canabro://community/posts/{postId}" in listed.output

    link = runner.invoke(
        push_cli, ["links", "generate", *base, "post", "--param", "postId=p-7", "--campaign", "launch"]
    )
    assert link.exit_code == 0, link.output
    url = link.output.splitlines()[0]
    assert url.startswith("canabro://community/posts/p-7?") and "sy_sig=" in url
    checked = httpx.post(
        f"{server.url}/push/v1/links/validate",
        json={"url": url},
        headers={"X-Shipyard-Key": server.creds["public_key"]},
    ).json()
    assert checked["valid"] is True and checked["campaign"] == "launch" and checked["params"] == {"postId": "p-7"}
    missing = runner.invoke(push_cli, ["links", "generate", *base, "post"])
    assert missing.exit_code != 0 and "postId" in missing.output
    bad_param = runner.invoke(push_cli, ["links", "generate", *base, "post", "--param", "postId"])
    assert bad_param.exit_code != 0 and "NAME=VALUE" in bad_param.output

    created = runner.invoke(
        push_cli,
        [
            "rules", "create", *base, "comment-to-author",
            "--event", "community.comment_created",
            "--template", "new_comment",
            "--recipient-field", "authorId",
            "--deep-link-route", "post",
            "--delay", "60",
        ],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert "comment-to-author" in created.output and "community.comment_created -> new_comment" in created.output
    listed = runner.invoke(push_cli, ["rules", "list", *base])
    assert "to authorId" in listed.output and "delay 60 s" in listed.output and "link post" in listed.output
    event = httpx.post(
        f"{admin_url}/events",
        json={
            "event": "community.comment_created",
            "properties": {"authorId": "a-1", "postId": "p-7", "commenter": "x"},
        },
        headers=headers,
    ).json()
    assert [c["rule"] for c in event["created"]] == ["comment-to-author"]
    unknown = runner.invoke(push_cli, ["rules", "create", *base, "r2", "--event", "e", "--template", "nope"])
    assert unknown.exit_code != 0 and "nope" in unknown.output

    deleted = runner.invoke(push_cli, ["rules", "delete", *base, "comment-to-author"])
    assert deleted.exit_code == 0 and deleted.output == "rule comment-to-author deleted\n"
    assert runner.invoke(push_cli, ["rules", "list", *base]).output == "no event rules\n"
    again = runner.invoke(push_cli, ["rules", "delete", *base, "comment-to-author"])
    assert again.exit_code != 0 and "404" in again.output
    deleted = runner.invoke(push_cli, ["links", "routes", "delete", *base, "post"])
    assert deleted.exit_code == 0 and deleted.output == "route post deleted\n"
