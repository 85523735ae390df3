"""Consent by purpose (requirement 3.5), suppression, IP handling and privacy mode."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from shipyard.analytics import consent
from shipyard.core.context import Context
from shipyard.core.models import audit_log
from tests.analytics.helpers import basic, stored, track
from tests.conftest import admin_headers


def _api(project: dict[str, Any]) -> str:
    return f"/api/v1/projects/{project['slug']}/analytics"


async def _settings(client: httpx.AsyncClient, project: dict[str, Any], **changes: Any) -> dict[str, Any]:
    r = await client.patch(f"{_api(project)}/settings", json=changes, headers=admin_headers(project))
    assert r.status_code == 200, r.text
    return r.json()


async def _send(client: httpx.AsyncClient, project: dict[str, Any], *batch: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/v1/batch", json={"batch": list(batch)}, headers=basic(project["write_key"]))
    assert r.status_code == 200, r.text
    return r.json()


async def test_consent_is_recorded_with_history_through_the_public_key(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    headers = basic(project["write_key"])
    r = await client.post(
        "/v1/consent",
        json={"anonymousId": "device-1", "purposes": {"analytics": True, "marketing": False}, "source": "banner"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"user": "device-1", "consent": {"analytics": True, "marketing": False}}
    # After login, the decision made on the device belongs to the user.
    await _send(client, project, {"type": "identify", "userId": "u1", "anonymousId": "device-1"})
    r = await client.post("/v1/consent", json={"userId": "u1", "purposes": {"analytics": False}}, headers=headers)
    assert r.json()["consent"] == {"analytics": False, "marketing": False}
    r = await client.get("/v1/consent", params={"userId": "u1"}, headers=headers)
    assert r.json()["consent"] == {"analytics": False, "marketing": False}
    r = await client.get(f"{_api(project)}/users/consent", params={"user_id": "u1"}, headers=admin_headers(project))
    history = r.json()["history"]
    assert [(h["purpose"], h["granted"], h["source"]) for h in history] == [
        ("analytics", True, "banner"),
        ("marketing", False, "banner"),
        ("analytics", False, "api"),
    ]
    async with ctx.db.connect() as conn:
        assert await consent.has_consent(conn, project["id"], "u1", "analytics") is False
        assert await consent.has_consent(conn, project["id"], "u1", "push") is None


async def test_consent_api_rejects_bad_input(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    headers = basic(project["write_key"])
    r = await client.post("/v1/consent", json={"userId": "u", "purposes": {"tracking": True}}, headers=headers)
    assert r.status_code == 400
    assert "unknown purpose 'tracking'" in r.json()["message"]
    r = await client.post("/v1/consent", json={"purposes": {"analytics": True}}, headers=headers)
    assert r.status_code == 400
    r = await client.post("/v1/consent", json={"userId": "u", "purposes": {"analytics": "yes"}}, headers=headers)
    assert r.status_code == 400
    r = await client.post("/v1/consent", json={"userId": "u", "purposes": {"analytics": True}})
    assert r.status_code == 401


async def test_opt_out_drops_events_of_users_who_withdrew(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    headers = basic(project["write_key"])
    await client.post("/v1/consent", json={"userId": "no", "purposes": {"analytics": False}}, headers=headers)
    body = await _send(client, project, track("a", "no"), track("b", "yes"), track("c", None, anonymous_id="anon"))
    assert body["not_stored"] == {"consent_dropped": 1}
    assert sorted(row.user_key for row in await stored(ctx, project["id"])) == ["anon", "yes"]
    r = await client.get(f"{_api(project)}/ingest-stats", headers=admin_headers(project))
    assert r.json()["not_stored"] == {"consent_dropped": 1}
    assert r.json()["stored"] == 2


async def test_opt_in_with_anonymise_keeps_no_identity(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    await _settings(client, project, consent_mode="opt_in", consent_action="anonymise")
    headers = basic(project["write_key"])
    await client.post("/v1/consent", json={"userId": "granted", "purposes": {"analytics": True}}, headers=headers)
    event = track(
        "a", "stranger", anonymous_id="dev-9", context={"ip": "198.51.100.7", "device": {"id": "X1", "model": "Pixel"}}
    )
    body = await _send(client, project, event, track("b", "granted"), track("c", "stranger", anonymous_id="dev-9"))
    assert body["not_stored"] == {"consent_anonymised": 2}
    rows = await stored(ctx, project["id"])
    anonymous = [row for row in rows if row.user_key != "granted"]
    assert len(anonymous) == 2
    assert anonymous[0].user_key.startswith("h:") and anonymous[0].user_key == anonymous[1].user_key
    assert anonymous[0].user_id is None and anonymous[0].anonymous_id is None and anonymous[0].ip is None
    assert anonymous[0].context["device"] == {"model": "Pixel"}
    # No identity was created for the stranger.
    r = await client.get(
        f"{_api(project)}/users/profile", params={"user_id": "stranger"}, headers=admin_headers(project)
    )
    assert r.status_code == 404


async def test_opt_in_drop(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    await _settings(client, project, consent_mode="opt_in")
    body = await _send(client, project, track("a", "unknown"))
    assert body["not_stored"] == {"consent_dropped": 1}
    assert await stored(ctx, project["id"]) == []


async def test_suppression_list_stops_ingest(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    url = f"{_api(project)}/suppressions"
    r = await client.post(url, json={"user_id": "bot-1", "reason": "load tester"}, headers=admin_headers(project))
    assert r.status_code == 201
    body = await _send(client, project, track("a", "bot-1"), track("b", None, anonymous_id="bot-1"), track("c", "ok"))
    assert body["not_stored"] == {"suppressed": 2}
    listing = (await client.get(url, headers=admin_headers(project))).json()
    assert [s["user_id"] for s in listing["data"]] == ["bot-1"]
    r = await client.delete(url, params={"user_id": "bot-1"}, headers=admin_headers(project))
    assert r.status_code == 204
    assert (await client.delete(url, params={"user_id": "bot-1"}, headers=admin_headers(project))).status_code == 404
    await _send(client, project, track("d", "bot-1"))
    assert [row.event for row in await stored(ctx, project["id"])] == ["c", "d"]
    async with ctx.db.connect() as conn:
        actions = [r.action for r in await conn.execute(select(audit_log.c.action).order_by(audit_log.c.seq))]
    assert "analytics.suppression.add" in actions and "analytics.suppression.remove" in actions


async def test_ip_modes(client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]) -> None:
    ipv6 = "2001:db8:85a3:1234:5678:8a2e:370:7334"
    await _send(client, project, track("a", context={"ip": ipv6}))
    await _settings(client, project, ip_mode="full")
    await _send(client, project, track("b", context={"ip": "203.0.113.9"}))
    await _settings(client, project, ip_mode="none")
    await _send(client, project, track("c", context={"ip": "203.0.113.9"}))
    assert [row.ip for row in await stored(ctx, project["id"])] == ["2001:db8:85a3::", "203.0.113.9", None]


async def test_privacy_mode_uses_daily_salted_hashes(
    client: httpx.AsyncClient, ctx: Context, project: dict[str, Any]
) -> None:
    await _settings(client, project, privacy_mode=True)
    await _send(
        client,
        project,
        {"type": "identify", "userId": "u1", "anonymousId": "d1", "traits": {"email": "a@b.c"}},
        track("a", "u1", anonymous_id="d1", context={"ip": "203.0.113.9"}),
        track("b", None, anonymous_id="d1"),
        track("c", None, anonymous_id="d2"),
    )
    rows = await stored(ctx, project["id"])
    keys = [row.user_key for row in rows]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert all(k.startswith("h:") for k in keys)
    assert all(row.user_id is None and row.anonymous_id is None and row.ip is None for row in rows)
    assert rows[0].properties == {}  # identify traits are not stored
    # The same id hashes differently under another day's salt, so days cannot be linked.
    assert consent.hashed_id("salt-monday", project["id"], "d1") != consent.hashed_id(
        "salt-tuesday", project["id"], "d1"
    )
    async with ctx.db.transaction() as conn:
        assert await consent.purge_salts(conn, before_day=10**9) == 1


async def test_settings_need_admin_and_validate(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    r = await client.post(
        f"/api/v1/projects/{project['slug']}/keys",
        json={"name": "ci", "role": "developer"},
        headers=admin_headers(project),
    )
    developer = {"Authorization": f"Bearer {r.json()['secret_key']}"}
    r = await client.patch(f"{_api(project)}/settings", json={"ip_mode": "full"}, headers=developer)
    assert r.status_code == 403
    assert (await client.get(f"{_api(project)}/settings", headers=developer)).json()["ip_mode"] == "truncate"
    r = await client.patch(
        f"{_api(project)}/settings", json={"consent_mode": "sometimes"}, headers=admin_headers(project)
    )
    assert r.status_code == 422
    assert (await client.get(f"{_api(project)}/settings")).status_code == 401
