"""FCM HTTP v1: one ``messages:send`` request per token, OAuth2 access token minted from
the project's service-account JSON (JWT bearer grant) and cached until shortly before
it expires. Messages are data-only and shaped the way ``expo-notifications`` reads them
(a root ``notification`` key would bypass it)."""

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

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
CONCURRENCY = 50


class TokenError(Exception):
    def __init__(self, outcome: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.retry_after = retry_after


def destination(project_id: int) -> str:
    return f"push:fcm:{project_id}"


def check_service_account(account: dict[str, Any]) -> None:
    missing = [k for k in ("project_id", "client_email", "private_key") if not account.get(k)]
    if missing:
        raise ValueError(f"the service-account JSON lacks {', '.join(missing)}")
    if "PRIVATE KEY" not in str(account["private_key"]):
        raise ValueError("private_key is not a PEM private key")


async def access_token(ctx: Context, project_id: int, account: dict[str, Any], *, refresh: bool = False) -> str:
    cache: dict[tuple[Any, ...], tuple[float, str]] = ctx.extras.setdefault("push_fcm_tokens", {})
    key = (project_id, account["client_email"], account.get("private_key_id"))
    hit = cache.get(key)
    if hit and hit[0] > time.monotonic() and not refresh:
        return hit[1]
    token_uri = ctx.settings.push_fcm_token_url or account.get("token_uri") or GOOGLE_TOKEN_URI
    now = int(time.time())
    assertion = jwt.encode(
        {"iss": account["client_email"], "scope": SCOPE, "aud": token_uri, "iat": now, "exp": now + 3600},
        account["private_key"],
        algorithm="RS256",
        headers={"kid": account.get("private_key_id")} if account.get("private_key_id") else None,
    )
    try:
        response = await outbound(ctx).request(
            "POST",
            token_uri,
            destination=f"push:fcm-auth:{project_id}",
            retries=0,
            data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        )
    except CircuitOpen as exc:
        raise TokenError("retry", str(exc), exc.retry_after) from None
    except httpx.HTTPError as exc:
        raise TokenError("retry", f"token endpoint unreachable: {exc}") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise TokenError("retry", f"token endpoint answered {response.status_code}", retry_after_seconds(response))
    if response.status_code != 200:
        raise TokenError("credentials", f"service account rejected: {response.text[:300]}")
    body = response.json()
    token = str(body["access_token"])
    cache[key] = (time.monotonic() + max(60, int(body.get("expires_in", 3600)) - 120), token)
    return token


def to_fcm(item: Outgoing, meta: dict[str, Any]) -> dict[str, Any]:
    p = item.payload
    data: dict[str, str] = {"body": orjson.dumps(p.get("data") or {}).decode()}
    if p.get("title") is not None:
        data["title"] = str(p["title"])
    if p.get("body") is not None:
        data["message"] = str(p["body"])
    for ours, theirs in (
        ("channel_id", "channelId"),
        ("sound", "sound"),
        ("badge", "badge"),
        ("ios_category", "categoryId"),
    ):
        if p.get(ours) is not None:
            data[theirs] = str(p[ours])
    if p.get("deep_link"):
        data["link"] = str(p["deep_link"])
    if meta.get("experience_id"):
        data["experienceId"] = data["scopeKey"] = str(meta["experience_id"])
    android: dict[str, Any] = {"priority": "NORMAL" if p.get("priority") == "normal" else "HIGH"}
    if p.get("ttl") is not None:
        android["ttl"] = f"{int(p['ttl'])}s"
    if p.get("collapse_id"):
        android["collapse_key"] = p["collapse_id"]
    return {"message": {"token": item.token, "data": data, "android": android}}


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        err = response.json().get("error") or {}
    except Exception:
        return str(response.status_code), response.text[:300]
    code = str(err.get("status") or response.status_code)
    for detail in err.get("details") or []:
        if str(detail.get("@type", "")).endswith("FcmError") and detail.get("errorCode"):
            code = str(detail["errorCode"])
    return code, str(err.get("message") or "")


def classify(response: httpx.Response) -> tuple[str, str]:
    """(outcome, reason) for a non-200 FCM answer, per FCM's ErrorCode table."""
    code, message = _error(response)
    reason = f"{code}: {message}"
    status = response.status_code
    if code in ("UNREGISTERED", "SENDER_ID_MISMATCH") or status == 404:
        return "dead", reason
    if code == "INVALID_ARGUMENT" and "not a valid FCM registration token" in message:
        return "dead", reason
    if code in ("QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED") or status == 429 or status >= 500:
        return "retry", reason
    if code in ("THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED", "PERMISSION_DENIED") or status in (401, 403):
        return "credentials", reason
    return "failed", reason


async def send(ctx: Context, project_id: int, creds: ProviderCredentials, items: list[Outgoing]) -> list[Result]:
    account = creds.secret["service_account"]
    base = ctx.settings.push_fcm_url.rstrip("/")
    url = f"{base}/v1/projects/{account['project_id']}/messages:send"
    try:
        token = await access_token(ctx, project_id, account)
    except TokenError as exc:
        return [Result(i.id, exc.outcome, exc.reason, retry_after=exc.retry_after) for i in items]
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(item: Outgoing) -> Result:
        nonlocal token
        body = orjson.dumps(to_fcm(item, creds.meta))
        for attempt in range(2):
            try:
                async with sem:
                    response = await outbound(ctx).request(
                        "POST",
                        url,
                        destination=destination(project_id),
                        retries=0,
                        content=body,
                        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
                    )
            except CircuitOpen as exc:
                return Result(item.id, "retry", str(exc), retry_after=exc.retry_after, count_attempt=False)
            except httpx.HTTPError as exc:
                return Result(item.id, "retry", f"network error: {type(exc).__name__}: {exc}")
            if response.status_code == 200:
                return Result(item.id, "delivered", ticket_id=str(response.json().get("name", ""))[:64])
            outcome, reason = classify(response)
            if response.status_code == 401 and attempt == 0:  # our cached access token may have expired
                try:
                    token = await access_token(ctx, project_id, account, refresh=True)
                except TokenError as exc:
                    return Result(item.id, exc.outcome, exc.reason, retry_after=exc.retry_after)
                continue
            return Result(item.id, outcome, reason, retry_after=retry_after_seconds(response))
        return Result(item.id, "credentials", "FCM rejected a freshly minted access token")

    return list(await asyncio.gather(*(one(i) for i in items)))
