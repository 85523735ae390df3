"""Device registration from the app: tokens, permission states, user binding (with and
without verified user tokens), topics, unregistering and stale-device pruning."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import update

from shipyard.core.jobs import Worker
from shipyard.push.models import devices
from tests.fakes.server import serve_app
from tests.push.conftest import admin, expo_token, register

JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters"


def user_token(sub: str, secret: str = JWT_SECRET, exp: int = 3600, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "exp": now + exp, "iat": now, "aud": "authenticated", **claims}, secret, "HS256")


async def test_register_update_and_unregister(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    r = await register(
        client,
        project,
        expo_token("abc"),
        user_id="u1",
        app_version="1.2.0",
        locale="de-DE",
        timezone="Europe/Berlin",
        permission="provisional",
    )
    assert r.status_code == 200, r.text
    device = r.json()
    assert device["provider"] == "expo" and device["user_id"] == "u1" and device["permission"] == "provisional"

    # Updating the same token changes it in place (no duplicate device).
    r = await register(client, project, expo_token("abc"), user_id="u1", permission="denied", app_version="1.3.0")
    assert r.json()["id"] == device["id"] and r.json()["permission"] == "denied"

    listed = (await admin(client, project, "GET", "/devices", params={"user_id": "u1"})).json()
    assert [d["app_version"] for d in listed["data"]] == ["1.3.0"]

    r = await client.delete(
        "/push/v1/devices", params={"token": expo_token("abc")}, headers={"X-Shipyard-Key": project["public_key"]}
    )
    assert r.status_code == 200 and r.json()["active"] is False
    got = (await admin(client, project, "GET", f"/devices/{device['id']}")).json()
    assert got["active"] is False and got["deactivated_reason"] == "unregistered by the app"


async def test_native_tokens_and_bad_input(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    apns = "a" * 64
    r = await register(client, project, apns, platform="ios")
    assert r.json()["provider"] == "apns"
    fcm = "dQw4w9WgXcQ:APA91bH" + "x" * 140
    r = await register(client, project, fcm, platform="android")
    assert r.json()["provider"] == "fcm"

    r = await register(client, project, "not a token!", platform="android")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_token"
    r = await register(client, project, expo_token("x"), timezone="Mars/Olympus")
    assert r.status_code == 400 and "timezone" in r.json()["error"]["message"]
    r = await register(client, project, expo_token("x"), permission="maybe")
    assert r.status_code == 422
    r = await client.post("/push/v1/devices", json={"token": expo_token("x"), "platform": "ios"})
    assert r.status_code == 401
    r = await client.post(
        "/push/v1/devices", json={"token": expo_token("x"), "platform": "ios"}, headers={"X-Shipyard-Key": "pk_nope"}
    )
    assert r.status_code == 401


async def test_binding_requires_a_valid_user_token_when_configured(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    r = await admin(client, project, "PUT", "/auth", json={"jwt_secret": JWT_SECRET, "audience": "authenticated"})
    assert r.status_code == 200 and r.json()["mode"] == "jwt_secret"
    assert JWT_SECRET not in r.text

    # Claiming a user without a token is refused; anonymous registration still works.
    r = await register(client, project, expo_token("1"), user_id="alice")
    assert r.status_code == 401
    r = await register(client, project, expo_token("1"))
    assert r.status_code == 200 and r.json()["user_id"] is None

    good = {"Authorization": f"Bearer {user_token('alice')}"}
    r = await register(client, project, expo_token("1"), headers=good)
    assert r.status_code == 200 and r.json()["user_id"] == "alice"

    r = await register(client, project, expo_token("1"), user_id="mallory", headers=good)
    assert r.status_code == 403
    for bad in (user_token("alice", exp=-120), user_token("alice", secret="x" * 40), user_token("alice", aud="other")):
        r = await register(client, project, expo_token("1"), headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad

    # Preferences from the app follow the same rule.
    r = await client.get(
        "/push/v1/preferences", params={"user_id": "alice"}, headers={"X-Shipyard-Key": project["public_key"]}
    )
    assert r.status_code == 401
    r = await client.get("/push/v1/preferences", headers={"X-Shipyard-Key": project["public_key"], **good})
    assert r.status_code == 200 and r.json()["user_id"] == "alice"


async def test_turning_user_tokens_on_applies_to_the_next_registration(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    r = await register(client, project, expo_token("early"), user_id="bob")
    assert r.status_code == 200 and r.json()["user_id"] == "bob"
    r = await admin(client, project, "PUT", "/auth", json={"jwt_secret": JWT_SECRET, "audience": "authenticated"})
    assert r.status_code == 200
    r = await register(client, project, expo_token("early"), user_id="bob")
    assert r.status_code == 401
    r = await admin(client, project, "PUT", "/auth", json={})
    assert r.status_code == 200 and r.json()["mode"] == "none"
    r = await register(client, project, expo_token("early"), user_id="bob")
    assert r.status_code == 200


async def test_binding_with_a_jwks_url(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid="k1", use="sig", alg="RS256")

    async def keys(_request: Any) -> JSONResponse:
        return JSONResponse({"keys": [jwk]})

    with serve_app(Starlette(routes=[Route("/.well-known/jwks.json", keys)])) as url:
        r = await admin(client, project, "PUT", "/auth", json={"jwks_url": f"{url}/.well-known/jwks.json"})
        assert r.status_code == 200 and r.json()["mode"] == "jwks"
        now = int(time.time())
        token = jwt.encode({"sub": "bob", "exp": now + 600}, key, "RS256", headers={"kid": "k1"})
        r = await register(client, project, expo_token("2"), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["user_id"] == "bob"
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode({"sub": "bob", "exp": now + 600}, other, "RS256", headers={"kid": "k1"})
        r = await register(client, project, expo_token("2"), headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401


async def test_topics(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    await register(client, project, expo_token("t"), topics=["news"])
    key = {"X-Shipyard-Key": project["public_key"]}
    r = await client.post(
        "/push/v1/topics/subscribe", json={"token": expo_token("t"), "topic": "grow-tips"}, headers=key
    )
    assert r.json()["topics"] == ["grow-tips", "news"]
    r = await client.post("/push/v1/topics/unsubscribe", json={"token": expo_token("t"), "topic": "news"}, headers=key)
    assert r.json()["topics"] == ["grow-tips"]
    r = await client.post(
        "/push/v1/topics/subscribe", json={"token": expo_token("t"), "topic": "bad topic"}, headers=key
    )
    assert r.status_code == 400
    r = await client.post("/push/v1/topics/subscribe", json={"token": expo_token("nope"), "topic": "x"}, headers=key)
    assert r.status_code == 404
    topics = (await admin(client, project, "GET", "/topics")).json()["data"]
    assert topics == [{"topic": "grow-tips", "devices": 1}]


async def test_registration_answers_with_the_devices_topics(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    r = await register(client, project, expo_token("tp"), topics=["news", "alerts", "news"])
    assert r.status_code == 200 and r.json()["topics"] == ["alerts", "news"]
    r = await register(client, project, expo_token("fresh"))
    assert r.status_code == 200 and r.json()["topics"] == []
    # Registering again (app start) keeps the subscriptions and reports them.
    r = await register(client, project, expo_token("tp"), app_version="2.0.0")
    assert r.status_code == 200 and r.json()["topics"] == ["alerts", "news"]
    assert r.json()["app_version"] == "2.0.0"


async def test_stale_devices_are_pruned(ctx: Any, client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    fresh = (await register(client, project, expo_token("fresh"))).json()
    stale = (await register(client, project, expo_token("stale"))).json()
    async with ctx.db.transaction() as conn:
        from shipyard.core.db import utcnow

        await conn.execute(
            update(devices)
            .where(devices.c.id == stale["id"])
            .values(last_seen_at=utcnow() - timedelta(days=ctx.settings.push_stale_device_days + 1))
        )
        from shipyard.core import jobs

        await jobs.enqueue(conn, "push.prune_devices", {})
    await Worker(ctx).run_until_idle()
    assert (await admin(client, project, "GET", f"/devices/{stale['id']}")).json()["active"] is False
    assert (await admin(client, project, "GET", f"/devices/{fresh['id']}")).json()["active"] is True
