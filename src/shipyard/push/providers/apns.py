"""APNs provider API over HTTP/2 with token-based auth.

The provider token is an ES256 JWT (``kid`` = key id, ``iss`` = team id) reused for
30 minutes: Apple wants it refreshed no more than every 20 and no later than every 60
minutes. One request per device token: ``POST /3/device/<token>``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import orjson

from shipyard.core.context import Context
from shipyard.core.http import CircuitOpen, outbound, retry_after_seconds
from shipyard.push.providers import Outgoing, ProviderCredentials, Result

TOKEN_TTL = 30 * 60
PRODUCTION = "https://api.push.apple.com"
SANDBOX = "https://api.sandbox.push.apple.com"
CONCURRENCY = 50
DEAD = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
CREDENTIALS = {
    "InvalidProviderToken",
    "MissingProviderToken",
    "BadCertificate",
    "BadCertificateEnvironment",
    "Forbidden",
    "TopicDisallowed",
    "BadTopic",
    "MissingTopic",
}


def destination(project_id: int) -> str:
    return f"push:apns:{project_id}"


def check_key(key_p8: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(key_p8.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("an APNs key is a P-256 (ES256) private key in PEM (.p8)")


def provider_token(ctx: Context, project_id: int, creds: ProviderCredentials, *, refresh: bool = False) -> str:
    cache: dict[tuple[Any, ...], tuple[float, str]] = ctx.extras.setdefault("push_apns_tokens", {})
    key = (project_id, creds.meta["key_id"], creds.meta["team_id"])
    hit = cache.get(key)
    if hit and hit[0] > time.monotonic() and not refresh:
        return hit[1]
    token = jwt.encode(
        {"iss": creds.meta["team_id"], "iat": int(time.time())},
        creds.secret["key_p8"],
        algorithm="ES256",
        headers={"kid": creds.meta["key_id"]},
    )
    cache[key] = (time.monotonic() + TOKEN_TTL, token)
    return token


def to_apns(item: Outgoing) -> tuple[dict[str, Any], dict[str, str]]:
    """(payload, headers without authorization) for one message."""
    p = item.payload
    alert = {k: p[k] for k in ("title", "subtitle", "body") if p.get(k) is not None}
    aps: dict[str, Any] = {}
    push_type = "alert" if alert else "background"
    if alert:
        aps["alert"] = alert
        if p.get("sound") is not None:
            aps["sound"] = p["sound"]
    else:
        aps["content-available"] = 1
    if p.get("badge") is not None:
        aps["badge"] = p["badge"]
    if p.get("ios_category"):
        aps["category"] = p["ios_category"]
    if p.get("image"):
        aps["mutable-content"] = 1
    # expo-notifications reads custom data from a top-level `body` object.
    payload = {"aps": aps, "body": p.get("data") or {}}
    priority = "5" if push_type == "background" or p.get("priority") == "normal" else "10"
    headers = {
        "apns-push-type": push_type,
        "apns-priority": priority,
        "apns-id": item.id,
        "content-type": "application/json",
    }
    if p.get("ttl") is not None:
        headers["apns-expiration"] = str(int(time.time()) + int(p["ttl"]))
    if p.get("collapse_id"):
        headers["apns-collapse-id"] = str(p["collapse_id"])[:64]
    return payload, headers


def base_url(ctx: Context, environment: str) -> str:
    if ctx.settings.push_apns_url:
        return ctx.settings.push_apns_url.rstrip("/")
    return SANDBOX if environment == "development" else PRODUCTION


def classify(status: int, reason: str, timestamp: int | None, registered_at: float) -> str:
    if reason in ("Unregistered", "ExpiredToken") and timestamp and registered_at * 1000 > timestamp:
        return "failed"  # the app registered the token again after APNs invalidated it
    if reason in DEAD or status == 410:
        return "dead"
    if status == 429 or status >= 500:
        return "retry"
    if reason in CREDENTIALS or status == 403:
        return "credentials"
    return "failed"  # PayloadTooLarge, BadCollapseId, BadExpirationDate, PayloadEmpty, …


async def send(ctx: Context, project_id: int, creds: ProviderCredentials, items: list[Outgoing]) -> list[Result]:
    sem = asyncio.Semaphore(CONCURRENCY)
    topic = creds.meta["bundle_id"]

    async def one(item: Outgoing) -> Result:
        payload, headers = to_apns(item)
        headers["apns-topic"] = topic
        body = orjson.dumps(payload)
        if len(body) > 4096:
            return Result(item.id, "failed", f"PayloadTooLarge: {len(body)} bytes exceeds APNs' 4096")
        url = f"{base_url(ctx, item.environment)}/3/device/{item.token}"
        for attempt in range(2):
            token = provider_token(ctx, project_id, creds, refresh=attempt > 0)
            try:
                async with sem:
                    response = await outbound(ctx).request(
                        "POST",
                        url,
                        destination=destination(project_id),
                        retries=0,
                        content=body,
                        headers={**headers, "authorization": f"bearer {token}"},
                    )
            except CircuitOpen as exc:
                return Result(item.id, "retry", str(exc), retry_after=exc.retry_after, count_attempt=False)
            except httpx.HTTPError as exc:
                return Result(item.id, "retry", f"network error: {type(exc).__name__}: {exc}")
            if response.status_code == 200:
                return Result(item.id, "delivered", ticket_id=response.headers.get("apns-id"))
            try:
                err = orjson.loads(response.content or b"{}")
            except orjson.JSONDecodeError:
                err = {}
            reason = str(err.get("reason") or response.status_code)
            if reason == "ExpiredProviderToken" and attempt == 0:
                continue  # mint a fresh provider token once
            outcome = classify(response.status_code, reason, err.get("timestamp"), item.registered_at)
            return Result(
                item.id, outcome, f"{response.status_code} {reason}", retry_after=retry_after_seconds(response)
            )
        return Result(item.id, "credentials", "403 ExpiredProviderToken even with a fresh provider token")

    return list(await asyncio.gather(*(one(i) for i in items)))
